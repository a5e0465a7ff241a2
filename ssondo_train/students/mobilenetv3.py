"""MobileNetV3 student (EfficientAT ``mn`` family; ``mn10`` = width 1.0, 2,971,664 parameters, 960-d).

State-dict layout (EfficientAT / S-SONDO): ``features.0`` stem, ``features.{1..15}.block.{j}`` inverted
residuals (squeeze-excitation at ``block.2.conc_se_layers.{i}.fc{1,2}``), ``features.16`` final 1x1 conv.
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import (
    MN_BN_EPS,
    MN_BN_MOMENTUM,
    BlockSpec,
    ConvBNAct,
    conv_out_size,
    flatten_segments,
    init_efficientat_,
    last_channel_for,
    make_divisible,
    mobilenet_block_table,
)

_SE_AXES = {"c": 1, "f": 2, "t": 3}


class SqueezeExcitation(nn.Module):
    """Squeeze-excitation along one axis (channel, frequency or time): mean over the other two axes,
    Linear -> ReLU -> Linear -> sigmoid, then rescale the input along that axis."""

    def __init__(self, size: int, squeeze: int, axis: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(size, squeeze)
        self.fc2 = nn.Linear(squeeze, size)
        self.axis = axis
        self.reduce_axes = tuple(a for a in (1, 2, 3) if a != axis)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, F, T) -> broadcastable scale with the size of ``x`` along ``axis`` only."""
        pooled = x.mean(self.reduce_axes, keepdim=True)
        shape = pooled.shape
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(pooled.reshape(shape[0], -1)))))
        return s.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class ConcurrentSE(nn.Module):
    """One or several SE layers on different axes, aggregated elementwise (EfficientAT's concurrent SE)."""

    def __init__(self, channels: int, f_dim: int, t_dim: int, se_dims: str, se_r: int, se_agg: str) -> None:
        super().__init__()
        sizes = {1: channels, 2: f_dim, 3: t_dim}
        self.conc_se_layers = nn.ModuleList()
        for letter in se_dims:
            axis = _SE_AXES[letter]
            self.conc_se_layers.append(
                SqueezeExcitation(sizes[axis], make_divisible(sizes[axis] // se_r, 8), axis)
            )
        if se_agg not in ("max", "avg", "add", "min"):
            raise ValueError(f"se_agg must be one of max, avg, add, min; got {se_agg!r}")
        self.se_agg = se_agg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.conc_se_layers) == 1:
            return self.conc_se_layers[0](x)
        outs = torch.stack([layer(x) for layer in self.conc_se_layers])
        if self.se_agg == "max":
            return outs.amax(0)
        if self.se_agg == "min":
            return outs.amin(0)
        if self.se_agg == "avg":
            return outs.mean(0)
        return outs.sum(0)


class InvertedResidual(nn.Module):
    """Expand 1x1 (skipped when expanded == input) -> depthwise k x k -> [SE] -> project 1x1 (+ residual)."""

    def __init__(
        self,
        spec: BlockSpec,
        f_dim: int,
        t_dim: int,
        se_dims: str | None,
        se_r: int,
        se_agg: str,
        bn_momentum: float,
    ) -> None:
        super().__init__()
        act = nn.Hardswish if spec.use_hs else nn.ReLU
        kw = {"bn_eps": MN_BN_EPS, "bn_momentum": bn_momentum}
        layers: list[nn.Module] = []
        if spec.exp_ch != spec.in_ch:
            layers.append(ConvBNAct(spec.in_ch, spec.exp_ch, 1, activation=act, **kw))
        layers.append(
            ConvBNAct(
                spec.exp_ch,
                spec.exp_ch,
                spec.kernel,
                stride=spec.depth_stride,
                groups=spec.exp_ch,
                dilation=spec.dilation,
                activation=act,
                **kw,
            )
        )
        if spec.use_se and se_dims:
            layers.append(ConcurrentSE(spec.exp_ch, f_dim, t_dim, se_dims, se_r, se_agg))
        layers.append(ConvBNAct(spec.exp_ch, spec.out_ch, 1, activation=None, **kw))
        self.block = nn.Sequential(*layers)
        self.use_residual = spec.stride == 1 and spec.in_ch == spec.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


class MobileNetV3(nn.Module):
    """MobileNetV3 backbone for log-mel input; forward (B, S, F, T) -> (B, S, emb_size).

    Args:
        width_mult: channel multiplier (1.0 = ``mn10``).
        strides: the four stride-2 positions of MobileNetV3-Large.
        reduced_tail: halve the channels of the last three blocks.
        dilated: dilate (instead of striding) the last three blocks.
        relu_only: ReLU everywhere instead of Hardswish.
        input_dim_f, input_dim_t: input size, only used to size frequency/time squeeze-excitation.
        se_dims: axes of squeeze-excitation, letters of "cft", or "none".
        se_agg: aggregation of concurrent SE layers (max, avg, add, min).
        se_r: SE reduction ratio.
        bn_momentum: BatchNorm momentum (EfficientAT 0.01); eps is fixed at 1e-3 as upstream.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        strides: tuple[int, int, int, int] | list[int] = (2, 2, 2, 2),
        reduced_tail: bool = False,
        dilated: bool = False,
        relu_only: bool = False,
        input_dim_f: int = 128,
        input_dim_t: int = 1000,
        se_dims: str = "c",
        se_agg: str = "max",
        se_r: int = 4,
        bn_momentum: float = MN_BN_MOMENTUM,
    ) -> None:
        super().__init__()
        se_dims_used = None if se_dims == "none" else se_dims
        if se_dims_used is not None and (
            not se_dims_used or len(se_dims_used) > 3 or any(c not in _SE_AXES for c in se_dims_used)
        ):
            raise ValueError(f"se_dims must be letters of 'cft' or 'none', got {se_dims!r}")
        table = mobilenet_block_table(width_mult, strides, reduced_tail, dilated, relu_only)
        stem_act = nn.ReLU if relu_only else nn.Hardswish
        kw = {"bn_eps": MN_BN_EPS, "bn_momentum": bn_momentum}
        layers: list[nn.Module] = [ConvBNAct(1, table[0].in_ch, 3, stride=2, activation=stem_act, **kw)]
        # Track the feature-map size so frequency/time SE layers get the right widths.
        f_dim, t_dim = conv_out_size(input_dim_f, 3, 2), conv_out_size(input_dim_t, 3, 2)
        for spec in table:
            f_dim = conv_out_size(f_dim, spec.kernel, spec.stride, spec.dilation)
            t_dim = conv_out_size(t_dim, spec.kernel, spec.stride, spec.dilation)
            layers.append(InvertedResidual(spec, f_dim, t_dim, se_dims_used, se_r, se_agg, bn_momentum))
        last_in = table[-1].out_ch
        self.emb_size = 6 * last_in
        layers.append(ConvBNAct(last_in, self.emb_size, 1, activation=stem_act, **kw))
        self.features = nn.Sequential(*layers)
        self.last_channel = last_channel_for(width_mult, reduced_tail)
        init_efficientat_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, F, T) or (B, F, T) log-mel -> (B, S, emb_size) time-frequency mean-pooled embeddings."""
        flat, b, s = flatten_segments(x)
        feats = self.features(flat)
        return feats.mean((2, 3)).reshape(b, s, -1)
