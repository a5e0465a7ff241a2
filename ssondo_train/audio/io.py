"""Audio decoding, down-mixing, resampling and windowing on float32 tensors.

Every failure mode of a real corpus maps to one exception type so long jobs can record it and move on:
``AudioDecodeError`` (unreadable or corrupt file) and ``AudioContentError`` (decodes, but is empty, silent,
too short, or holds NaN/Inf).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf
import torch

TailPolicy = Literal["pad", "drop", "keep"]
TAIL_POLICIES: tuple[str, ...] = ("pad", "drop", "keep")
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".opus", ".oga", ".aiff", ".aif")

# Peak below this (about -100 dBFS) is treated as digital silence.
SILENCE_PEAK = 1e-5


class AudioError(Exception):
    """Base class of audio problems that a job records and skips."""

    reason: str = "audio_error"


class AudioDecodeError(AudioError):
    """The file cannot be opened or decoded (missing, corrupt, unsupported format)."""

    reason = "decode_error"


class AudioContentError(AudioError):
    """The file decodes but its content is unusable (empty, silent, NaN/Inf, too short)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file."""

    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def audio_info(path: str | Path) -> AudioInfo:
    """Read the header of ``path`` without decoding the samples.

    Raises:
        AudioDecodeError: the file is missing or not a readable audio file.
    """
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError, OSError)
        raise AudioDecodeError(f"cannot read audio header of {path}: {err}") from err
    return AudioInfo(sample_rate=int(info.samplerate), channels=int(info.channels), frames=int(info.frames))


def decode(path: str | Path) -> tuple[torch.Tensor, int]:
    """Decode a file to a float32 tensor ``(channels, frames)`` in [-1, 1] and its sample rate.

    Raises:
        AudioDecodeError: unreadable or corrupt file.
    """
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioDecodeError(f"cannot decode {path}: {err}") from err
    return torch.from_numpy(np.ascontiguousarray(data.T)), int(sr)


def to_mono(wav: torch.Tensor) -> torch.Tensor:
    """Average channels: ``(C, N)`` or ``(N,)`` -> ``(N,)``."""
    if wav.dim() == 1:
        return wav
    if wav.dim() != 2:
        raise ValueError(f"expected (channels, samples) or (samples,), got shape {tuple(wav.shape)}")
    return wav.mean(dim=0) if wav.shape[0] > 1 else wav[0]


@lru_cache(maxsize=32)
def _resampler(orig_sr: int, new_sr: int):
    import torchaudio

    return torchaudio.transforms.Resample(orig_sr, new_sr)


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (torchaudio's windowed sinc); identity if rates match."""
    if orig_sr == new_sr:
        return wav
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    return _resampler(int(orig_sr), int(new_sr))(wav)


def check_content(wav: torch.Tensor, min_samples: int = 1) -> None:
    """Raise ``AudioContentError`` if ``wav`` is empty, shorter than ``min_samples``, non-finite or silent."""
    n = wav.shape[-1]
    if n == 0:
        raise AudioContentError("empty", "audio has no samples")
    if n < min_samples:
        raise AudioContentError("too_short", f"audio has {n} samples, fewer than the {min_samples} required")
    if not bool(torch.isfinite(wav).all()):
        raise AudioContentError("non_finite", "audio contains NaN or Inf samples")
    if float(wav.abs().max()) < SILENCE_PEAK:
        raise AudioContentError("silent", f"audio peak is below {SILENCE_PEAK:g} (digital silence)")


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    *,
    mono: bool = True,
    validate: bool = True,
    min_seconds: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """Decode, optionally down-mix and resample, and validate one file.

    Args:
        path: audio file (wav, flac, ogg vorbis, opus, ...).
        sample_rate: target rate; ``None`` keeps the file's rate.
        mono: average channels to one.
        validate: raise ``AudioContentError`` for empty / silent / NaN / too-short audio.
        min_seconds: with ``validate``, the shortest acceptable duration.

    Returns:
        ``(wav, sr)``: ``wav`` is ``(N,)`` float32 if ``mono`` else ``(C, N)``.
    """
    wav, sr = decode(path)
    if mono:
        wav = to_mono(wav)
    if validate:
        check_content(wav, max(1, math.ceil(min_seconds * sr)))
    if sample_rate is not None and sample_rate != sr:
        wav = resample(wav, sr, sample_rate).contiguous()
        sr = sample_rate
    return wav, sr


@dataclass(frozen=True)
class Windows:
    """Fixed-length windows cut from one signal.

    ``audio`` is ``(W, window)`` for the pad/drop policies; with ``keep`` the last window may be shorter, so
    ``audio`` is a list of tensors. ``starts``/``lengths`` are in samples; ``lengths`` counts real (unpadded)
    samples.
    """

    audio: torch.Tensor | list[torch.Tensor]
    starts: list[int]
    lengths: list[int]

    def __len__(self) -> int:
        return len(self.starts)


def window_starts(n: int, window: int, hop: int, tail: TailPolicy) -> list[int]:
    """Start offsets of the windows of a signal of ``n`` samples.

    Full windows start at 0, hop, 2·hop, ... while they fit. A remainder that no full window covers yields
    one more window (``pad``: zero-padded, ``keep``: shorter) unless ``tail`` is ``drop``. A signal shorter
    than one window yields one window under ``pad``/``keep`` and none under ``drop``.
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    if tail not in TAIL_POLICIES:
        raise ValueError(f"tail must be one of {TAIL_POLICIES}, got {tail!r}")
    if n <= 0:
        return []
    starts = list(range(0, n - window + 1, hop)) if n >= window else []
    covered = starts[-1] + window if starts else 0
    if covered < n and tail != "drop":
        starts.append(starts[-1] + hop if starts else 0)
    return starts


def cut_windows(wav: torch.Tensor, window: int, hop: int, tail: TailPolicy = "pad") -> Windows:
    """Cut ``wav`` ``(N,)`` into windows of ``window`` samples every ``hop`` samples (``window_starts``)."""
    if wav.dim() != 1:
        raise ValueError(f"cut_windows expects a mono (N,) signal, got shape {tuple(wav.shape)}")
    n = wav.shape[0]
    starts = window_starts(n, window, hop, tail)
    lengths = [min(window, n - s) for s in starts]
    if tail == "keep":
        return Windows(
            [wav[s : s + length] for s, length in zip(starts, lengths, strict=False)], starts, lengths
        )
    if not starts:
        return Windows(wav.new_zeros((0, window)), [], [])
    need = starts[-1] + window
    padded = torch.nn.functional.pad(wav, (0, need - n)) if need > n else wav
    # Every start is a multiple of hop and the padded signal ends exactly at the last window.
    frames = padded.unfold(0, window, hop)
    return Windows(frames[: len(starts)].contiguous(), starts, lengths)
