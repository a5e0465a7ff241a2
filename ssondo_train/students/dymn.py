"""DyMN student (EfficientAT dynamic MobileNet; ``dymn10`` = width 1.0, 8,643,312 parameters, 960-d).

Every inverted-residual block is dynamic: a context generator summarises the block input into a context
vector (which parameterises K-kernel dynamic convolutions and Dy-ReLU) and frequency/time sequences
(coordinate attention). The softmax temperature of the kernel attention is an explicit constructor argument:
S-SONDO trains and infers at 30.0 (EfficientAT's pretrained final value), and a wrong value moves the
outputs by orders of magnitude. A temperature that differs from the constructor's (after :meth:`DyMN.anneal`)
travels with the weights as the state-dict entry ``dyconv_temperature``; at the constructor's temperature the
state dict has EfficientAT's / ssondo's exact keys, so their files load both ways.

Unlike upstream S-SONDO, the forward pass accepts several segments: (B, S, F, T) is folded into B*S.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._layers import (
    MN_BN_EPS,
    MN_BN_MOMENTUM,
    BlockSpec,
    ConvBNAct,
    flatten_segments,
    init_efficientat_,
    last_channel_for,
    make_divisible,
    mobilenet_block_table,
)


def dymn_temperature(
    epoch: float, t_max: float = 30.0, t_min: float = 1.0, t0_slope: float = 1.0, t1_slope: float = 0.02
) -> float:
    """EfficientAT's linear annealing of the dynamic-conv temperature for ``epoch``.

    The maximum of two lines, ``t_max - t0_slope * epoch`` and ``1 + t1_slope * (t_max - 1) / t0_slope -
    t1_slope * epoch`` (both reach 1 at the same epoch), floored at ``t_min``.
    """
    steep = t_max - t0_slope * epoch
    shallow = 1.0 + t1_slope * (t_max - 1.0) / t0_slope - t1_slope * epoch
    return float(max(steep, shallow, t_min))


# State-dict entry (under the DyMN's prefix) of a temperature that differs from the constructor's.
TEMPERATURE_KEY = "dyconv_temperature"


class DynamicConv(nn.Module):
    """Convolution whose kernel is a per-example softmax mixture of ``k`` kernels.

    ``weight`` holds the kernel bank as (1, 1, k, out * in/groups * kh * kw) (EfficientAT layout, one
    attention group); ``residuals.0`` maps the context vector to the k attention logits.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        context_dim: int,
        kernel: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        k: int = 4,
        temperature: float = 30.0,
    ) -> None:
        super().__init__()
        if in_ch % groups:
            raise ValueError(f"in_ch={in_ch} not divisible by groups={groups}")
        self.in_ch, self.out_ch, self.kernel = in_ch, out_ch, kernel
        self.stride, self.dilation, self.groups, self.k = stride, dilation, groups, k
        self.padding = (kernel - 1) // 2 * dilation
        self.temperature = float(temperature)
        self.residuals = nn.Sequential(nn.Linear(context_dim, k))
        bank = torch.empty(k, out_ch, in_ch // groups, kernel, kernel)
        for i in range(k):
            nn.init.kaiming_normal_(bank[i], mode="fan_out")
        self.weight = nn.Parameter(bank.reshape(1, 1, k, -1))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (N, in, F, T), context (N, H) -> (N, out, F', T')."""
        n, _, f, t = x.shape
        attention = torch.softmax(self.residuals(context) / self.temperature, dim=-1)  # (N, k)
        # Broadcast (N, 1, 1, k) @ (1, 1, k, M) rather than a 2-D (N, k) @ (k, M): torch runs it as a batched
        # product with one row per example, so each example's kernel does not depend on the batch size
        # (a 2-D GEMM changes its blocking from N = 4 on) and the rounding is EfficientAT's.
        kernels = (attention[:, None, None, :] @ self.weight).view(n, -1)  # (N, out * in/groups * kh * kw)
        # Per-example kernels: fold the batch into the channel axis and use a grouped convolution, also for
        # 1x1 kernels. A bmm is no faster on CPU (measured) and, with more than one thread, rounds
        # differently from the grouped convolution that EfficientAT/ssondo run (up to 6e-5 at the output).
        w = kernels.view(n * self.out_ch, self.in_ch // self.groups, self.kernel, self.kernel)
        out = F.conv2d(
            x.reshape(1, n * self.in_ch, f, t),
            w,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups * n,
        )
        return out.view(n, self.out_ch, out.shape[-2], out.shape[-1])


class DyReLUB(nn.Module):
    """Dy-ReLU-B: per-example, per-channel max over ``m`` affine maps with coefficients from the context."""

    def __init__(self, channels: int, context_dim: int, m: int = 2) -> None:
        super().__init__()
        self.channels, self.m = channels, m
        self.coef_net = nn.Sequential(nn.Linear(context_dim, 2 * m * channels))
        # Constructor constants that EfficientAT stores as buffers (they are in the checkpoints).
        self.register_buffer("lambdas", torch.tensor([1.0] * m + [0.5] * m))
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * m - 1)))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (N, C, F, T), context (N, H) -> (N, C, F, T)."""
        n = x.shape[0]
        theta = 2.0 * torch.sigmoid(self.coef_net(context)) - 1.0
        coefs = theta.view(n, self.channels, 1, 1, 2 * self.m) * self.lambdas + self.init_v
        out = x * coefs[..., 0] + coefs[..., self.m]
        for j in range(1, self.m):  # loop over the few linear pieces, not over the batch
            out = torch.maximum(out, x * coefs[..., j] + coefs[..., self.m + j])
        return out


class ContextGen(nn.Module):
    """Context generation: frequency and time profiles -> shared 1x1 conv -> context vector + CA sequences."""

    def __init__(
        self, context_dim: int, in_ch: int, exp_ch: int, stride: int, bn_momentum: float = MN_BN_MOMENTUM
    ) -> None:
        super().__init__()
        self.joint_conv = nn.Conv2d(in_ch, context_dim, kernel_size=1, bias=False)
        self.joint_norm = nn.BatchNorm2d(context_dim, eps=MN_BN_EPS, momentum=bn_momentum)
        self.joint_act = nn.Hardswish()
        self.conv_f = nn.Conv2d(context_dim, exp_ch, kernel_size=1)
        self.conv_t = nn.Conv2d(context_dim, exp_ch, kernel_size=1)
        if stride > 1:
            # The attention sequences must match the strided depthwise output.
            self.pool_f: nn.Module = nn.AvgPool2d((3, 1), stride=(stride, 1), padding=(1, 0))
            self.pool_t: nn.Module = nn.AvgPool2d((1, 3), stride=(1, stride), padding=(0, 1))
        else:
            self.pool_f = nn.Identity()
            self.pool_t = nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C, F, T) -> (context (N, H), a_f logits (N, E, F', 1), a_t logits (N, E, 1, T'))."""
        f, t = x.shape[2], x.shape[3]
        # Adaptive average pooling, not Tensor.mean: on CPU it sums each row sequentially in float32 before
        # dividing, whereas mean() uses a vectorised pairwise sum. The ~1e-6 relative difference in these
        # profiles is the only rounding gap to EfficientAT/ssondo, and the dynamic blocks amplify it to ~3e-5
        # at the embedding. Both are per-(example, channel) reductions, so the result is batch-independent.
        freq_profile = F.adaptive_avg_pool2d(x, (None, 1))  # (N, C, F, 1)
        time_profile = F.adaptive_avg_pool2d(x, (1, None)).transpose(2, 3)  # (N, C, T, 1)
        joint = self.joint_act(
            self.joint_norm(self.joint_conv(torch.cat([freq_profile, time_profile], dim=2)))
        )
        h_f, h_t = torch.split(joint, [f, t], dim=2)
        context = joint.mean(dim=(2, 3))  # mean over the F + T positions
        g_f = self.conv_f(self.pool_f(h_f))
        g_t = self.conv_t(self.pool_t(h_t.transpose(2, 3)))
        return context, g_f, g_t


class DyBlock(nn.Module):
    """Dynamic inverted residual: [dyn 1x1 expand + BN + act] -> dyn depthwise + BN + Dy-ReLU -> coordinate
    attention -> dyn 1x1 project + BN (+ residual)."""

    def __init__(
        self,
        spec: BlockSpec,
        width_mult: float,
        context_ratio: int,
        max_context_size: int,
        min_context_size: int,
        dyrelu_k: int,
        dyconv_k: int,
        temperature: float,
        bn_momentum: float,
    ) -> None:
        super().__init__()
        context_dim = int(
            np.clip(
                make_divisible(spec.exp_ch // context_ratio, 8),
                make_divisible(min_context_size * width_mult, 8),
                make_divisible(max_context_size * width_mult, 8),
            )
        )
        self.context_dim = context_dim
        act = nn.Hardswish if spec.use_hs else nn.ReLU

        def bn(c: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(c, eps=MN_BN_EPS, momentum=bn_momentum)

        self.has_expand = spec.exp_ch != spec.in_ch
        if self.has_expand:
            self.exp_conv = DynamicConv(
                spec.in_ch, spec.exp_ch, context_dim, 1, k=dyconv_k, temperature=temperature
            )
            self.exp_norm = bn(spec.exp_ch)
            self.exp_act = act()
        self.depth_conv = DynamicConv(
            spec.exp_ch,
            spec.exp_ch,
            context_dim,
            spec.kernel,
            stride=spec.depth_stride,
            dilation=spec.dilation,
            groups=spec.exp_ch,
            k=dyconv_k,
            temperature=temperature,
        )
        self.depth_norm = bn(spec.exp_ch)
        self.depth_act = DyReLUB(spec.exp_ch, context_dim, m=dyrelu_k)
        self.proj_conv = DynamicConv(
            spec.exp_ch, spec.out_ch, context_dim, 1, k=dyconv_k, temperature=temperature
        )
        self.proj_norm = bn(spec.out_ch)
        self.context_gen = ContextGen(context_dim, spec.in_ch, spec.exp_ch, spec.depth_stride, bn_momentum)
        self.use_residual = spec.stride == 1 and spec.in_ch == spec.out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context, g_f, g_t = self.context_gen(x)
        out = x
        if self.has_expand:
            out = self.exp_act(self.exp_norm(self.exp_conv(out, context)))
        out = self.depth_act(self.depth_norm(self.depth_conv(out, context)), context)
        out = out * torch.sigmoid(g_f) * torch.sigmoid(g_t)  # coordinate attention
        out = self.proj_norm(self.proj_conv(out, context))
        return out + x if self.use_residual else out


class DyMN(nn.Module):
    """Dynamic MobileNet backbone; forward (B, S, F, T) -> (B, S, emb_size).

    Args:
        width_mult: channel multiplier (1.0 = ``dymn10``).
        strides: the four stride-2 positions of MobileNetV3-Large.
        reduced_tail, dilated: EfficientAT tail variants.
        context_ratio, max_context_size, min_context_size: context size H = clip(expanded // ratio, min, max).
        dyrelu_k: number of affine pieces of Dy-ReLU.
        dyconv_k: number of kernels of each dynamic convolution.
        temperature: softmax temperature of the kernel attention (30.0 for S-SONDO and EfficientAT's
            pretrained ``dymn10_im``); also the start ``t_max`` of :meth:`anneal`.
        t_min, t0_slope, t1_slope: annealing schedule (EfficientAT defaults), used only by :meth:`anneal`.
        bn_momentum: BatchNorm momentum (EfficientAT 0.01); eps is fixed at 1e-3.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        strides: tuple[int, int, int, int] | list[int] = (2, 2, 2, 2),
        reduced_tail: bool = False,
        dilated: bool = False,
        context_ratio: int = 4,
        max_context_size: int = 128,
        min_context_size: int = 32,
        dyrelu_k: int = 2,
        dyconv_k: int = 4,
        temperature: float = 30.0,
        t_min: float = 1.0,
        t0_slope: float = 1.0,
        t1_slope: float = 0.02,
        bn_momentum: float = MN_BN_MOMENTUM,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        table = mobilenet_block_table(width_mult, strides, reduced_tail, dilated, relu_only=False)
        kw = {"bn_eps": MN_BN_EPS, "bn_momentum": bn_momentum}
        # Registration order reproduces EfficientAT's state-dict key order (layers, in_c, out_c).
        self.layers = nn.ModuleList(
            DyBlock(
                spec,
                width_mult,
                context_ratio,
                max_context_size,
                min_context_size,
                dyrelu_k,
                dyconv_k,
                temperature,
                bn_momentum,
            )
            for spec in table
        )
        self.in_c = ConvBNAct(1, table[0].in_ch, 3, stride=2, activation=nn.Hardswish, **kw)
        self.emb_size = 6 * table[-1].out_ch
        self.out_c = ConvBNAct(table[-1].out_ch, self.emb_size, 1, activation=nn.Hardswish, **kw)
        self.last_channel = last_channel_for(width_mult, reduced_tail)
        self.t_max, self.t_min, self.t0_slope, self.t1_slope = float(temperature), t_min, t0_slope, t1_slope
        init_efficientat_(self)

    @property
    def temperature(self) -> float:
        """Current kernel-attention temperature (the same in every dynamic convolution).

        Saved in the state dict as ``dyconv_temperature`` when it differs from the constructor's; loading a
        state dict without that entry sets the constructor's temperature.
        """
        return next(m.temperature for m in self.modules() if isinstance(m, DynamicConv))

    def set_temperature(self, temperature: float) -> None:
        """Set the kernel-attention temperature of every dynamic convolution."""
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        for m in self.modules():
            if isinstance(m, DynamicConv):
                m.temperature = float(temperature)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # Only an annealed temperature is written: a model at its constructor temperature keeps the
        # EfficientAT / ssondo key set (ImageNet files, ssondo checkpoints and their strict loads).
        if self.temperature != self.t_max:
            destination[prefix + TEMPERATURE_KEY] = torch.tensor(self.temperature, dtype=torch.float64)

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + TEMPERATURE_KEY
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        value = state_dict.get(key)
        if value is None:  # written at the constructor temperature (or before the entry existed)
            self.set_temperature(self.t_max)
            return
        temp = float(value.reshape(-1)[0]) if isinstance(value, torch.Tensor) and value.numel() == 1 else None
        if temp is None or not np.isfinite(temp) or temp <= 0:
            error_msgs.append(f"{key}: expected one finite temperature > 0, got {value!r}")
            return
        self.set_temperature(temp)

    def anneal(
        self,
        epoch: float,
        t_max: float | None = None,
        t_min: float | None = None,
        t0_slope: float | None = None,
        t1_slope: float | None = None,
    ) -> float:
        """Set the temperature for ``epoch`` from :func:`dymn_temperature` and return it.

        Unset arguments default to the constructor's schedule (``t_max`` = the constructor temperature).
        S-SONDO never anneals (constant 30.0); EfficientAT anneals once per epoch when training from scratch.
        """
        temp = dymn_temperature(
            epoch,
            self.t_max if t_max is None else t_max,
            self.t_min if t_min is None else t_min,
            self.t0_slope if t0_slope is None else t0_slope,
            self.t1_slope if t1_slope is None else t1_slope,
        )
        self.set_temperature(temp)
        return temp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, F, T) or (B, F, T) log-mel -> (B, S, emb_size) mean-pooled embeddings."""
        flat, b, s = flatten_segments(x)
        h = self.in_c(flat)
        for layer in self.layers:
            h = layer(h)
        h = self.out_c(h)
        return h.mean((2, 3)).reshape(b, s, -1)
