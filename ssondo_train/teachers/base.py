"""The teacher interface: a frozen audio encoder that turns waveforms into one embedding per window."""

from __future__ import annotations

import abc
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Teacher", "slice_windows"]


class Teacher(nn.Module, abc.ABC):
    """Abstract frozen teacher.

    Every teacher takes mono float32 waveforms at :attr:`sample_rate`, shaped ``(B, N)``, and returns tensors
    detached from autograd (computed under ``torch.inference_mode`` and cloned, so they may be used as targets
    in a training graph).

    Attributes:
        name: registry name (``"m2d"``, ``"matpac"``, ``"whisper_tiny"``).
        sample_rate: expected input sample rate in Hz.
        embed_dim: size of the pooled embedding returned by :meth:`embed`.
        num_layers: number of entries of :meth:`embed_layers`' layer axis.
    """

    name: str
    sample_rate: int
    embed_dim: int
    num_layers: int

    def __init__(self) -> None:
        super().__init__()
        self.checkpoint_path: str | None = None
        self.checkpoint_sha256: str | None = None

    @abc.abstractmethod
    def embed(self, wav: Tensor) -> Tensor:
        """One pooled embedding per input window.

        Args:
            wav: ``(B, N)`` float32 waveform at :attr:`sample_rate`.

        Returns:
            ``(B, embed_dim)`` float32.
        """

    def embed_layers(self, wav: Tensor) -> Tensor:
        """Per-layer pooled embeddings ``(B, num_layers, embed_dim)``; not every teacher supports it."""
        raise NotImplementedError(f"teacher {self.name!r} does not expose per-layer embeddings")

    @abc.abstractmethod
    def frames(self, wav: Tensor) -> Tensor:
        """Frame-level features before pooling: ``(B, T, D)`` float32."""

    def metadata(self) -> dict[str, Any]:
        """What produced the embeddings: enough to tell two teacher stores apart."""
        return {
            "name": self.name,
            "sample_rate": self.sample_rate,
            "embed_dim": self.embed_dim,
            "num_layers": self.num_layers,
            "checkpoint_path": self.checkpoint_path,
            "checkpoint_sha256": self.checkpoint_sha256,
        }

    def _prepare(self, wav: Tensor) -> Tensor:
        """Validate ``(B, N)`` and move to the teacher's device as float32."""
        if not isinstance(wav, Tensor):
            raise TypeError(f"expected a torch.Tensor waveform, got {type(wav).__name__}")
        if wav.dim() != 2:
            raise ValueError(f"teacher {self.name!r} expects a (B, N) waveform, got shape {tuple(wav.shape)}")
        if not wav.is_floating_point():
            raise TypeError(f"expected a floating-point waveform, got {wav.dtype}")
        return wav.to(device=self._device(), dtype=torch.float32)

    def _device(self) -> torch.device:
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")


def slice_windows(wav: Tensor, win: int, step: int, add_last: bool = True) -> Tensor:
    """Cut ``(B, N)`` into windows ``(B, S, win)`` the way S-SONDO's SliceAudio does.

    Windows start at ``0, step, 2*step, ...``; with ``add_last`` a final window starting at the next step is
    added (zero-padded on the right) when the regular windows do not reach the end. An input no longer than
    ``win`` gives one window (zero-padded if shorter).
    """
    batch, n = wav.shape
    if n <= win:
        count = 1
    else:
        count = 1 + (n - win) // step
        if add_last and (count - 1) * step + win < n:
            count += 1
    total = (count - 1) * step + win
    if total > n:
        wav = torch.nn.functional.pad(wav, (0, total - n))
    return wav.unfold(1, win, step)[:, :count]
