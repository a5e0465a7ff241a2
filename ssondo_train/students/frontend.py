"""Student input front-end: 10-s segmentation and the 32 kHz, 128-band log-mel that S-SONDO students see."""

from __future__ import annotations

from typing import Literal

import torch
import torchaudio.functional as AF
from torch import nn

STUDENT_SAMPLE_RATE = 32_000
SEGMENT_SAMPLES = 320_000  # 10 s at 32 kHz


class StudentFrontEnd(nn.Module):
    """Log-mel spectrogram equal to upstream S-SONDO's student preprocessing.

    torchaudio-style ``MelSpectrogram`` (periodic Hann, ``center=False``, power 2, Slaney mel scale and
    Slaney area normalisation) followed by the natural ``log(x + log_offset)``. No normalisation.
    The window and filterbank are non-persistent buffers, so the module adds nothing to a state dict.
    """

    def __init__(
        self,
        sample_rate: int = STUDENT_SAMPLE_RATE,
        n_fft: int = 1024,
        hop_length: int = 512,
        n_mels: int = 128,
        f_min: float = 50.0,
        f_max: float = 16_000.0,
        log_offset: float = 1e-3,
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.n_mels = n_mels
        self.log_offset = log_offset
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        fbank = AF.melscale_fbanks(
            n_freqs=n_fft // 2 + 1,
            f_min=f_min,
            f_max=f_max,
            n_mels=n_mels,
            sample_rate=sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        self.register_buffer("fbank", fbank, persistent=False)  # (n_fft // 2 + 1, n_mels)

    def num_frames(self, n_samples: int) -> int:
        """Frames produced for ``n_samples`` (624 for 10 s)."""
        return 1 + (n_samples - self.n_fft) // self.hop_length

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """(..., n) waveform at 32 kHz -> (..., n_mels, frames) log-mel; frames = 1 + (n - n_fft) // hop."""
        if wav.shape[-1] < self.n_fft:
            raise ValueError(f"need at least n_fft={self.n_fft} samples, got {wav.shape[-1]}")
        lead = wav.shape[:-1]
        flat = wav.reshape(-1, wav.shape[-1])
        spec = torch.stft(
            flat,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        power = spec.abs().pow(2.0)  # (N, freqs, frames)
        mel = torch.matmul(power.transpose(-1, -2), self.fbank).transpose(-1, -2)  # (N, mels, frames)
        logmel = torch.log(mel + self.log_offset)
        return logmel.reshape(*lead, self.n_mels, logmel.shape[-1])


def segment_windows(
    wav: torch.Tensor,
    window: int = SEGMENT_SAMPLES,
    hop: int = SEGMENT_SAMPLES,
    tail: Literal["drop", "pad"] = "drop",
) -> torch.Tensor:
    """Cut (B, n) audio into (B, S, window) segments.

    ``tail="drop"`` is upstream behaviour: S = 1 + (n - window) // hop and the remainder is discarded
    (audio shorter than one window is an error, where upstream would silently give S = 0).
    ``tail="pad"`` zero-pads the remainder into one last window, and pads audio shorter than one window to
    exactly one window, so every sample is covered.
    """
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got {window}, {hop}")
    n = wav.shape[-1]
    if tail == "drop":
        if n < window:
            raise ValueError(f"audio of {n} samples is shorter than one window ({window}); use tail='pad'")
    elif tail == "pad":
        n_seg = 1 if n <= window else 1 + -(-(n - window) // hop)  # ceil division
        target = (n_seg - 1) * hop + window
        if target > n:
            wav = torch.nn.functional.pad(wav, (0, target - n))
    else:
        raise ValueError(f"tail must be 'drop' or 'pad', got {tail!r}")
    return wav.unfold(-1, window, hop)
