"""ViT-Base/16 audio encoder shared by M2D and MATPAC++, and the teacher built on it.

Geometry is explicit configuration (:class:`ViTConfig`, ViT-B defaults), never parsed from file or
folder names.
"""

from __future__ import annotations

import abc
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssondo_train.teachers.base import Teacher, slice_windows

__all__ = ["AudioViTEncoder", "ViTConfig", "ViTTeacher", "encoder_from_state"]


@dataclass(frozen=True)
class ViTConfig:
    """Encoder geometry; defaults = the released M2D/MATPAC++ ViT-B (80 x 608 input, 16 x 16 patches)."""

    n_mels: int = 80
    chunk_frames: int = 608
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.n_mels % self.patch_size or self.chunk_frames % self.patch_size:
            raise ValueError(
                f"n_mels ({self.n_mels}) and chunk_frames ({self.chunk_frames}) must be multiples of "
                f"patch_size ({self.patch_size})"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")

    @property
    def freq_patches(self) -> int:
        return self.n_mels // self.patch_size

    @property
    def time_patches(self) -> int:
        return self.chunk_frames // self.patch_size

    @property
    def frame_dim(self) -> int:
        """Size of one time step's feature: the frequency tokens concatenated (3840 for ViT-B)."""
        return self.freq_patches * self.embed_dim

    @classmethod
    def from_any(cls, value: ViTConfig | dict[str, Any] | None) -> ViTConfig:
        if value is None:
            return cls()
        if isinstance(value, ViTConfig):
            return value
        return cls(**dict(value))


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU, as timm's default
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.attn = _Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.mlp = _Mlp(cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class AudioViTEncoder(nn.Module):
    """Patch-embedded ViT over a log-mel image, with M2D's parameter names.

    State-dict keys: ``cls_token`` (1, 1, D), ``pos_embed`` (1, 1 + F'·T', D),
    ``patch_embed.proj.{weight,bias}``,
    ``blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.{weight,bias}``, ``norm.{weight,bias}``.
    """

    def __init__(self, cfg: ViTConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ViTConfig()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.freq_patches * cfg.time_patches, cfg.embed_dim))
        self.patch_embed = _PatchEmbed(cfg)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _encode_chunk(self, chunk: Tensor, all_layers: bool) -> Tensor:
        """One chunk ``(B, 1, n_mels, frames)`` -> ``(B, L, t, F'·D)``; L = depth, or 1 without all_layers."""
        cfg = self.cfg
        x = self.patch_embed(chunk)  # (B, D, F', t)
        b, d, fp, t = x.shape
        x = x.flatten(2).transpose(1, 2)  # frequency-major tokens: index f·t + τ
        # Crop the (F', T') grid per frequency row; truncating the flat 190 tokens would be wrong.
        pos = self.pos_embed[:, 1:].reshape(1, fp, cfg.time_patches, d)[:, :, :t].reshape(1, fp * t, d)
        x = x + pos
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        outputs: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if all_layers and i < len(self.blocks) - 1:
                outputs.append(x)
        outputs.append(self.norm(x))  # the last "layer result" is the post-norm output
        stacked = torch.stack([o[:, 1:] for o in outputs], dim=1)  # (B, L, F'·t, D), CLS dropped
        n_layers = stacked.shape[1]
        # (B, L, F', t, D) -> (B, L, t, F', D) -> (B, L, t, F'·D): frequency outer, channel inner.
        return stacked.reshape(b, n_layers, fp, t, d).permute(0, 1, 3, 2, 4).reshape(b, n_layers, t, fp * d)

    def forward(self, lms: Tensor, all_layers: bool = True) -> Tensor:
        """Encode a normalised log-mel of any length.

        The frame axis is zero-padded on the right to a multiple of the patch size and cut into chunks of
        ``chunk_frames``; the chunk count is ``ceil(frames / chunk_frames)`` of the unpadded count. Chunks are
        encoded independently (full chunks batched together) and concatenated along time.

        Args:
            lms: ``(B, n_mels, T)`` or ``(B, 1, n_mels, T)``.
            all_layers: return all block outputs (last one post-norm) or only the post-norm output.

        Returns:
            ``(B, L, t, F'·D)`` with ``t = ceil(T / patch)`` and L = depth (or 1).
        """
        cfg = self.cfg
        if lms.dim() == 3:
            lms = lms.unsqueeze(1)
        b, _, n_mels, frames = lms.shape
        if n_mels != cfg.n_mels:
            raise ValueError(f"expected {cfg.n_mels} mel bins, got {n_mels}")
        n_chunks = math.ceil(frames / cfg.chunk_frames)
        padded = math.ceil(frames / cfg.patch_size) * cfg.patch_size
        lms = F.pad(lms, (0, padded - frames))
        n_full = min(padded // cfg.chunk_frames, n_chunks)
        parts: list[Tensor] = []
        if n_full:
            full = lms[..., : n_full * cfg.chunk_frames].reshape(b, 1, n_mels, n_full, cfg.chunk_frames)
            full = full.permute(0, 3, 1, 2, 4).reshape(b * n_full, 1, n_mels, cfg.chunk_frames)
            out = self._encode_chunk(full, all_layers)  # (B·k, L, t, C)
            _, n_layers, t, c = out.shape
            parts.append(
                out.reshape(b, n_full, n_layers, t, c).permute(0, 2, 1, 3, 4).reshape(b, n_layers, -1, c)
            )
        for start in range(n_full * cfg.chunk_frames, padded, cfg.chunk_frames):
            parts.append(self._encode_chunk(lms[..., start : start + cfg.chunk_frames], all_layers))
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]


def encoder_from_state(
    source: str, config: ViTConfig, state: dict[str, Tensor], *, allow_unexpected: bool = False
) -> AudioViTEncoder:
    """Build an encoder directly from checkpoint tensors (in encoder naming), strictly checked.

    The module is created on the meta device and the tensors are assigned, so no random initialisation
    of 85 M parameters is wasted.
    """
    from ssondo_train.teachers.checkpoint import check_state_dict

    with torch.device("meta"):
        encoder = AudioViTEncoder(config)
    expected = encoder.state_dict()
    check_state_dict(source, state, expected, allow_unexpected=allow_unexpected)
    tensors = {k: state[k].detach().to(torch.float32).contiguous() for k in expected}
    encoder.load_state_dict(tensors, strict=True, assign=True)
    return encoder


class ViTTeacher(Teacher):
    """S-SONDO target semantics on top of :class:`AudioViTEncoder`.

    ``embed`` = mean over time of the last layer (post-norm), ``(B, 3840)``; ``embed_layers`` = the same for
    all 12 layers, ``(B, 12, 3840)``; ``frames`` = last-layer time steps ``(B, t, 3840)``.
    """

    sample_rate = 16000
    window_samples = 160000  # S-SONDO's 10-s teacher window (used only by :meth:`ssondo_wrapper`)

    def __init__(
        self, config: ViTConfig | dict[str, Any] | None = None, encoder: AudioViTEncoder | None = None
    ) -> None:
        super().__init__()
        self.config = ViTConfig.from_any(config)
        if encoder is not None and encoder.cfg != self.config:
            raise ValueError(f"encoder geometry {encoder.cfg} differs from config {self.config}")
        self.encoder = encoder if encoder is not None else AudioViTEncoder(self.config)
        self.embed_dim = self.config.frame_dim
        self.num_layers = self.config.depth

    @abc.abstractmethod
    def log_mel(self, wav: Tensor) -> Tensor:
        """Normalised log-mel ``(B, n_mels, T)`` of a ``(B, N)`` waveform."""

    def _layer_frames(self, wav: Tensor, all_layers: bool) -> Tensor:
        return self.encoder(self.log_mel(self._prepare(wav)), all_layers=all_layers)

    def layer_frames(self, wav: Tensor) -> Tensor:
        """All layers before pooling: ``(B, L, t, 3840)``."""
        with torch.inference_mode():
            out = self._layer_frames(wav, True)
        return out.clone()

    def frames(self, wav: Tensor) -> Tensor:
        """Last-layer (post-norm) frame features ``(B, t, 3840)``."""
        with torch.inference_mode():
            out = self._layer_frames(wav, False)[:, 0]
        return out.clone()

    def embed_layers(self, wav: Tensor) -> Tensor:
        """Per-layer time means ``(B, L, 3840)``; the last layer equals :meth:`embed`."""
        with torch.inference_mode():
            out = self._layer_frames(wav, True).mean(dim=2)
        return out.clone()

    def embed(self, wav: Tensor) -> Tensor:
        """S-SONDO target: time mean of the last (post-norm) layer, ``(B, 3840)``."""
        with torch.inference_mode():
            out = self._layer_frames(wav, False)[:, 0].mean(dim=1)
        return out.clone()

    def _windows_layers(self, wav: Tensor) -> Tensor:
        """S-SONDO wrapper windowing: per-window pooled layers ``(B, S, L, 3840)``."""
        wav = self._prepare(wav)
        if wav.shape[1] > self.window_samples:
            windows = slice_windows(wav, self.window_samples, self.window_samples, add_last=True)
        else:
            windows = wav.unsqueeze(1)
        b, s, n = windows.shape
        with torch.inference_mode():
            layers = self.encoder(self.log_mel(windows.reshape(b * s, n)), all_layers=True).mean(dim=2)
        return layers.reshape(b, s, *layers.shape[1:]).clone()

    @abc.abstractmethod
    def ssondo_wrapper(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """Upstream S-SONDO extraction wrapper on a ``(B, N)`` clip (compatibility/testing only)."""

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(pooling="mean_time", layer=-1, vit=asdict(self.config))
        return meta
