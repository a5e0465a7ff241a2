"""ERes2Net student (3D-Speaker / wespeaker ERes2Net as S-SONDO configures it: 1,368,068 parameters, 1024-d).

Res2Net-style blocks with two 3x3 branches; the deeper stages fuse the branches with attentional feature
fusion (AFF), and the stage outputs are fused bottom-up (``fuse_mode12`` ... ``fuse_mode12345``) before
temporal statistics pooling over the final (channels x frequency) map. BatchNorm uses PyTorch defaults
(eps 1e-5, momentum 0.1) and the weights PyTorch's default initialisation, as upstream.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import flatten_segments

ERES2NET_BN_EPS = 1e-5


def _bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=ERES2NET_BN_EPS, momentum=momentum)


def _clipped_relu(x: torch.Tensor) -> torch.Tensor:
    # ERes2Net's block activation is a ReLU clipped at 20 (Hardtanh(0, 20)).
    return F.hardtanh(x, 0.0, 20.0)


class AFF(nn.Module):
    """Attentional feature fusion of two maps of ``channels`` channels: a 2-layer 1x1 attention on their
    concatenation weights ``x`` by (1 + tanh(a)) and ``y`` by (1 - tanh(a))."""

    def __init__(self, channels: int, r: int = 4, bn_momentum: float = 0.1) -> None:
        super().__init__()
        inter = channels // r
        self.local_att = nn.Sequential(
            nn.Conv2d(channels * 2, inter, kernel_size=1),
            _bn(inter, bn_momentum),
            nn.SiLU(),
            nn.Conv2d(inter, channels, kernel_size=1),
            _bn(channels, bn_momentum),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        att = 1.0 + torch.tanh(self.local_att(torch.cat((x, y), dim=1)))
        return x * att + y * (2.0 - att)


class ERes2NetBlock(nn.Module):
    """Basic ERes2Net block (expansion 2): 1x1 -> ``scale`` chained 3x3 branches -> 1x1, plus shortcut.

    With ``fuse=True`` the branches are merged with AFF (``fuse_models``) instead of addition.
    """

    expansion = 2

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        base_width: int = 32,
        scale: int = 2,
        fuse: bool = False,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        width = int(math.floor(planes * (base_width / 64.0)))
        self.width, self.scale = width, scale
        self.conv1 = nn.Conv2d(in_planes, width * scale, kernel_size=1, stride=stride, bias=False)
        self.bn1 = _bn(width * scale, bn_momentum)
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False) for _ in range(scale)
        )
        self.bns = nn.ModuleList(_bn(width, bn_momentum) for _ in range(scale))
        self.fuse_models = (
            nn.ModuleList(AFF(width, bn_momentum=bn_momentum) for _ in range(scale - 1)) if fuse else None
        )
        out_planes = planes * self.expansion
        self.conv3 = nn.Conv2d(width * scale, out_planes, kernel_size=1, bias=False)
        self.bn3 = _bn(out_planes, bn_momentum)
        if stride != 1 or in_planes != out_planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                _bn(out_planes, bn_momentum),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _clipped_relu(self.bn1(self.conv1(x)))
        splits = torch.split(out, self.width, dim=1)
        branches = []
        sp = splits[0]
        for i in range(self.scale):  # the few Res2Net branches, not the batch
            if i > 0:
                sp = (
                    self.fuse_models[i - 1](sp, splits[i]) if self.fuse_models is not None else sp + splits[i]
                )
            sp = _clipped_relu(self.bns[i](self.convs[i](sp)))
            branches.append(sp)
        out = self.bn3(self.conv3(torch.cat(branches, dim=1)))
        return _clipped_relu(out + self.shortcut(x))


def temporal_stats_pool(x: torch.Tensor, kind: str = "TSTP") -> torch.Tensor:
    """(N, C, F, T) -> statistics over T flattened over (C, F): TAP mean, TSDP std, TSTP [mean, std].

    The std is sqrt(unbiased var + 1e-8), as wespeaker.
    """
    mean = x.mean(dim=-1).flatten(1)
    if kind == "TAP":
        return mean
    std = torch.sqrt(torch.var(x, dim=-1) + 1e-8).flatten(1)
    if kind == "TSDP":
        return std
    return torch.cat((mean, std), dim=1)


class ERes2Net(nn.Module):
    """ERes2Net backbone; forward (B, S, F, T) -> (B, S, emb_size).

    Args:
        m_channels: stem width (16 in S-SONDO).
        feat_dim: number of mel bands (128); sets the pooled size.
        num_blocks: blocks per stage (5 entries when ``add_layer``).
        pooling_func: "TSTP" (mean + std), "TAP" (mean) or "TSDP" (std).
        add_layer: add the fifth stage and its fusion (S-SONDO: True).
        base_width, scale: Res2Net branch width factor and number of branches.
        bn_momentum: BatchNorm momentum (PyTorch default 0.1, as upstream); eps is 1e-5.
    """

    def __init__(
        self,
        m_channels: int = 16,
        feat_dim: int = 128,
        num_blocks: tuple[int, ...] | list[int] = (3, 4, 6, 3, 3),
        pooling_func: str = "TSTP",
        add_layer: bool = True,
        base_width: int = 32,
        scale: int = 2,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if pooling_func not in ("TSTP", "TAP", "TSDP"):
            raise ValueError(f"pooling_func must be TSTP, TAP or TSDP, got {pooling_func!r}")
        if len(num_blocks) < (5 if add_layer else 4):
            raise ValueError(f"num_blocks needs {5 if add_layer else 4} entries, got {list(num_blocks)}")
        self.add_layer = add_layer
        self.pooling_func = pooling_func
        self._in_planes = m_channels
        self._bn_momentum = bn_momentum
        self._base_width, self._scale = base_width, scale
        m = m_channels
        self.conv1 = nn.Conv2d(1, m, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = _bn(m, bn_momentum)
        self.layer1 = self._make_layer(m, num_blocks[0], stride=1, fuse=False)
        self.layer2 = self._make_layer(m * 2, num_blocks[1], stride=2, fuse=False)
        self.layer3 = self._make_layer(m * 4, num_blocks[2], stride=2, fuse=True)
        self.layer4 = self._make_layer(m * 8, num_blocks[3], stride=2, fuse=True)
        if add_layer:
            self.layer5 = self._make_layer(m * 2, num_blocks[4], stride=2, fuse=True)

        def down(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1, bias=False)

        self.layer1_downsample = down(m * 2, m * 4)
        self.layer2_downsample = down(m * 4, m * 8)
        self.layer3_downsample = down(m * 8, m * 16)
        if add_layer:
            self.layer4_downsample = down(m * 16, m * 4)
        self.fuse_mode12 = AFF(m * 4, bn_momentum=bn_momentum)
        self.fuse_mode123 = AFF(m * 8, bn_momentum=bn_momentum)
        self.fuse_mode1234 = AFF(m * 16, bn_momentum=bn_momentum)
        if add_layer:
            self.fuse_mode12345 = AFF(m * 4, bn_momentum=bn_momentum)
        # Final map: add_layer -> 4m channels over feat_dim / 16 bands; else 16m channels over feat_dim / 8.
        stats_dim = int(feat_dim / 16) * m * 2 if add_layer else int(feat_dim / 8) * m * 8
        n_stats = 1 if pooling_func in ("TAP", "TSDP") else 2
        self.emb_size = stats_dim * ERes2NetBlock.expansion * n_stats

    def _make_layer(self, planes: int, n: int, stride: int, fuse: bool) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(
                ERes2NetBlock(
                    self._in_planes, planes, s, self._base_width, self._scale, fuse, self._bn_momentum
                )
            )
            self._in_planes = planes * ERes2NetBlock.expansion
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, F, T) or (B, F, T) log-mel -> (B, S, emb_size) pooled statistics."""
        flat, b, s = flatten_segments(x)
        h = F.relu(self.bn1(self.conv1(flat)))  # the stem uses a plain ReLU upstream
        out1 = self.layer1(h)
        out2 = self.layer2(out1)
        fused = self.fuse_mode12(out2, self.layer1_downsample(out1))
        out3 = self.layer3(out2)
        fused = self.fuse_mode123(out3, self.layer2_downsample(fused))
        out4 = self.layer4(out3)
        fused = self.fuse_mode1234(out4, self.layer3_downsample(fused))
        if self.add_layer:
            out5 = self.layer5(out4)
            fused = self.fuse_mode12345(out5, self.layer4_downsample(fused))
        return temporal_stats_pool(fused, self.pooling_func).reshape(b, s, -1)
