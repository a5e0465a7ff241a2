"""Building blocks shared by the MobileNetV3 and DyMN students.

The block table and the channel rounding follow EfficientAT's MobileNetV3 variant (the layout of the
``mn10_im.pt`` / ``dymn10_im.pt`` ImageNet files and of the S-SONDO checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# EfficientAT's BatchNorm settings for MobileNetV3 and DyMN (eps matters numerically: 1e-5 moves mn10 by ~1).
MN_BN_EPS = 1e-3
MN_BN_MOMENTUM = 0.01


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going more than 10 % below it."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def conv_out_size(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Output length of a 'same'-padded convolution ((kernel - 1) // 2 * dilation padding)."""
    padding = (kernel - 1) // 2 * dilation
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-residual block: channels already scaled by the width multiplier."""

    in_ch: int
    kernel: int
    exp_ch: int
    out_ch: int
    use_se: bool
    use_hs: bool  # Hardswish, else ReLU
    stride: int
    dilation: int

    @property
    def depth_stride(self) -> int:
        # A dilated tail replaces the stride (EfficientAT/torchvision convention).
        return 1 if self.dilation > 1 else self.stride


def mobilenet_block_table(
    width_mult: float = 1.0,
    strides: tuple[int, int, int, int] | list[int] = (2, 2, 2, 2),
    reduced_tail: bool = False,
    dilated: bool = False,
    relu_only: bool = False,
) -> list[BlockSpec]:
    """The 15 MobileNetV3-Large blocks as EfficientAT configures them for audio.

    ``strides`` are the four positions that are stride 2 in the original network (blocks 1, 3, 6, 12).
    """
    if len(strides) != 4:
        raise ValueError(f"strides must have 4 entries, got {list(strides)}")
    div = 2 if reduced_tail else 1
    dil = 2 if dilated else 1
    hs = not relu_only
    s0, s1, s2, s3 = (int(s) for s in strides)
    # (in, kernel, expanded, out, SE, Hardswish, stride, dilation), channels before width scaling.
    raw = [
        (16, 3, 16, 16, False, False, 1, 1),
        (16, 3, 64, 24, False, False, s0, 1),
        (24, 3, 72, 24, False, False, 1, 1),
        (24, 5, 72, 40, True, False, s1, 1),
        (40, 5, 120, 40, True, False, 1, 1),
        (40, 5, 120, 40, True, False, 1, 1),
        (40, 3, 240, 80, False, hs, s2, 1),
        (80, 3, 200, 80, False, hs, 1, 1),
        (80, 3, 184, 80, False, hs, 1, 1),
        (80, 3, 184, 80, False, hs, 1, 1),
        (80, 3, 480, 112, True, hs, 1, 1),
        (112, 3, 672, 112, True, hs, 1, 1),
        (112, 5, 672, 160 // div, True, hs, s3, dil),
        (160 // div, 5, 960 // div, 160 // div, True, hs, 1, dil),
        (160 // div, 5, 960 // div, 160 // div, True, hs, 1, dil),
    ]
    table = []
    for in_ch, k, exp_ch, out_ch, se, use_hs, stride, dilation in raw:
        if stride not in (1, 2):
            raise ValueError(f"block stride must be 1 or 2, got {stride}")
        table.append(
            BlockSpec(
                in_ch=make_divisible(in_ch * width_mult),
                kernel=k,
                exp_ch=make_divisible(exp_ch * width_mult),
                out_ch=make_divisible(out_ch * width_mult),
                use_se=se,
                use_hs=use_hs,
                stride=stride,
                dilation=dilation,
            )
        )
    return table


def last_channel_for(width_mult: float, reduced_tail: bool = False) -> int:
    """Hidden size of EfficientAT's classifier (1280 at width 1.0); S-SONDO uses it for the projector."""
    return make_divisible(1280 // (2 if reduced_tail else 1) * width_mult)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> optional activation; state-dict keys ``0.*`` and ``1.*``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        activation: type[nn.Module] | None = nn.Hardswish,
        bn_eps: float = MN_BN_EPS,
        bn_momentum: float = MN_BN_MOMENTUM,
    ) -> None:
        padding = (kernel - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


def init_efficientat_(model: nn.Module) -> None:
    """EfficientAT initialisation: kaiming-normal (fan_out) convs, unit BN, N(0, 0.01) linears."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm | nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def flatten_segments(x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(B, S, F, T) or (B, F, T) log-mel -> ((B*S, 1, F, T), B, S); a 3-D input is one segment per item."""
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"expected log-mel of shape (B, S, F, T) or (B, F, T), got {tuple(x.shape)}")
    b, s, f, t = x.shape
    return x.reshape(b * s, 1, f, t), b, s
