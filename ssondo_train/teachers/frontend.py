"""Log-mel front-ends of the teachers (M2D, MATPAC++, Whisper), built on torch.stft only."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["FLOAT32_EPS", "LogMelFrontEnd", "WhisperLogMel", "slaney_mel_filterbank"]

# Upstream writes torch.finfo().eps, which follows the default dtype; the float32 value is what the
# teachers were trained with.
FLOAT32_EPS = 1.1920928955078125e-07


def _hz_to_mel_slaney(hz: Tensor) -> Tensor:
    f_sp = 200.0 / 3.0
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return torch.where(hz >= min_log_hz, min_log_mel + torch.log(hz / min_log_hz) / logstep, hz / f_sp)


def _mel_to_hz_slaney(mel: Tensor) -> Tensor:
    f_sp = 200.0 / 3.0
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return torch.where(mel >= min_log_mel, min_log_hz * torch.exp(logstep * (mel - min_log_mel)), mel * f_sp)


def slaney_mel_filterbank(
    n_freqs: int,
    f_min: float,
    f_max: float,
    n_mels: int,
    sample_rate: int,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Triangular Slaney-scale mel filters with Slaney area normalisation, ``(n_freqs, n_mels)``.

    Same formula as librosa / torchaudio ``melscale_fbanks(norm="slaney", mel_scale="slaney")``. Computed in
    float64 by default: nnAudio (M2D) and librosa (Whisper) build theirs in float64 too, and the float32 build
    is the largest single source of front-end rounding differences.
    """
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    m_min = _hz_to_mel_slaney(torch.tensor(float(f_min), dtype=torch.float64))
    m_max = _hz_to_mel_slaney(torch.tensor(float(f_max), dtype=torch.float64))
    f_pts = _mel_to_hz_slaney(torch.linspace(float(m_min), float(m_max), n_mels + 2, dtype=torch.float64))
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = torch.clamp(torch.minimum(down, up), min=0.0)
    fb = fb * (2.0 / (f_pts[2 : n_mels + 2] - f_pts[:n_mels])).unsqueeze(0)
    return fb.to(dtype)


class LogMelFrontEnd(nn.Module):
    """Power mel spectrogram -> ``log(x + eps)`` -> ``(x - mean) / std``.

    Args:
        center: ``True`` pads ``n_fft // 2`` on both sides with reflection (M2D), ``False`` frames without
            padding (MATPAC++).
        filterbank: ``(n_fft // 2 + 1, n_mels)`` float32 mel filters.
        mean, std: normalisation constants.

    Input ``(B, N)`` float32; output ``(B, n_mels, T)`` with ``T = 1 + N // hop`` (centred) or
    ``1 + (N - n_fft) // hop``.
    """

    def __init__(
        self,
        filterbank: Tensor,
        *,
        n_fft: int = 400,
        hop_length: int = 160,
        center: bool,
        mean: float | Tensor,
        std: float | Tensor,
        log_offset: float = FLOAT32_EPS,
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.center = center
        self.log_offset = log_offset
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("filterbank", filterbank.to(torch.float32).contiguous(), persistent=False)
        self.register_buffer(
            "norm", torch.tensor([float(mean), float(std)], dtype=torch.float32), persistent=False
        )

    def set_norm(self, mean: float, std: float) -> None:
        self.norm.copy_(torch.tensor([mean, std], dtype=torch.float32))

    def forward(self, wav: Tensor) -> Tensor:
        spec = torch.stft(
            wav,
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=self.center,
            pad_mode="reflect",
            return_complex=True,
        )
        # |X| then square, as torchaudio and nnAudio do (re^2 + im^2 rounds differently).
        power = spec.abs().pow(2.0)
        # (B, F, T) -> (B, T, F) @ (F, M) -> (B, M, T), the order torchaudio uses.
        mel = torch.matmul(power.transpose(-1, -2), self.filterbank).transpose(-1, -2)
        return (torch.log(mel + self.log_offset) - self.norm[0]) / self.norm[1]


class WhisperLogMel(nn.Module):
    """OpenAI Whisper's log-mel: 16 kHz, n_fft 400, hop 160, centred, 80 Slaney mels (0-8 kHz).

    ``log10(max(mel, 1e-10))``, floored at ``max - 8`` per example, then ``(x + 4) / 4``. Like the reference,
    the last STFT frame is dropped, so ``T = N // 160``. Input ``(B, N)``, output ``(B, 80, T)``.
    """

    def __init__(
        self, n_mels: int = 80, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        fb = slaney_mel_filterbank(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate)
        self.register_buffer("filterbank", fb.to(torch.float32).contiguous(), persistent=False)

    def forward(self, wav: Tensor) -> Tensor:
        spec = torch.stft(
            wav,
            self.n_fft,
            self.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = spec[..., :-1].abs().pow(2.0)
        mel = torch.matmul(power.transpose(-1, -2), self.filterbank).transpose(-1, -2)
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(-2, -1), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        return (log_spec + 4.0) / 4.0
