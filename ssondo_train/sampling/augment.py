"""Batch augmentations of the student input: mixup and per-example SpecAugment.

Random numbers come from a ``numpy.random.Generator`` passed by the caller (as upstream drew λ with NumPy);
seed it per step and rank, e.g. ``np.random.default_rng((seed, rank, global_step))``, for reproducible runs.
Only small (B, n_masks) parameter arrays are drawn on the host; masks are built on the input's device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ssondo_train.losses.base import MixInfo


def mixup(x: Tensor, alpha: float, generator: np.random.Generator) -> tuple[Tensor, MixInfo]:
    """Mix each example with a random partner: ``x_i ← lam_i x_i + (1 - lam_i) x_perm(i)``.

    ``lam_i ~ Beta(alpha, alpha)`` then ``lam_i = max(lam_i, 1 - lam_i)`` so each example keeps the larger
    share of itself. The targets are not mixed: hand the returned :class:`MixInfo` to the loss instead.

    Args:
        x: (B, ...) batch (e.g. log-mel (B, S, F, T)).
        alpha: Beta parameter > 0; ``alpha == 0`` switches mixup off (lam = 1, identity permutation).
        generator: NumPy random generator.

    Returns:
        (x_mixed (B, ...) same dtype/device as x, MixInfo(lam (B,) float32, perm (B,) long) on x's device).
    """
    if not alpha >= 0.0:
        raise ValueError(f"mixup: alpha must be >= 0, got {alpha!r}")
    b = x.shape[0]
    if alpha == 0.0:
        lam_np = np.ones(b)
        perm_np = np.arange(b)
    else:
        lam_np = generator.beta(alpha, alpha, size=b)
        lam_np = np.maximum(lam_np, 1.0 - lam_np)
        perm_np = generator.permutation(b)
    lam = torch.as_tensor(lam_np, dtype=torch.float32, device=x.device)
    perm = torch.as_tensor(perm_np, dtype=torch.long, device=x.device)
    shape = (b,) + (1,) * (x.ndim - 1)
    w = lam.to(x.dtype).view(shape)
    mixed = w * x + (1.0 - w) * x[perm]
    return mixed, MixInfo(lam, perm)


def _band_masks(
    size: int, max_width: int, n_masks: int, n_rows: int, generator: np.random.Generator, device: torch.device
) -> Tensor:
    """(n_rows, size) bool: the union of ``n_masks`` bands per row, widths uniform in [0, max_width]."""
    max_width = min(max_width, size)
    width = generator.integers(0, max_width + 1, size=(n_rows, n_masks))
    start = np.floor(generator.random(size=(n_rows, n_masks)) * (size - width + 1)).astype(np.int64)
    width_t = torch.as_tensor(width, device=device)
    start_t = torch.as_tensor(start, device=device)
    pos = torch.arange(size, device=device)
    inside = (pos >= start_t[..., None]) & (pos < (start_t + width_t)[..., None])  # (rows, n_masks, size)
    return inside.any(dim=1)


def spec_augment(
    logmel: Tensor,
    freq_mask: int,
    time_mask: int,
    n_masks: int,
    generator: np.random.Generator,
    mask_value: float = 0.0,
) -> Tensor:
    """Frequency and time masking with masks drawn independently for every example (and segment).

    Upstream used torchaudio's maskers, which share one mask across the whole batch (§9 item 19).

    Args:
        logmel: (..., F, T), e.g. (B, S, F, T); every (b, s) slice gets its own masks.
        freq_mask: maximum width of a frequency mask in bins (0 disables frequency masking).
        time_mask: maximum width of a time mask in frames (0 disables time masking).
        n_masks: number of frequency masks and of time masks per slice.
        generator: NumPy random generator.
        mask_value: value written into masked bins (0 is the mean of a normalised log-mel).

    Returns:
        masked copy of ``logmel`` (same shape, dtype and device).
    """
    if logmel.ndim < 2:
        raise ValueError(f"spec_augment: input must be (..., F, T), got {tuple(logmel.shape)}")
    if freq_mask < 0 or time_mask < 0 or n_masks < 0:
        raise ValueError("spec_augment: freq_mask, time_mask and n_masks must be >= 0")
    *lead, n_freq, n_time = logmel.shape
    rows = int(np.prod(lead)) if lead else 1
    flat = logmel.reshape(rows, n_freq, n_time)
    mask = torch.zeros(rows, n_freq, n_time, dtype=torch.bool, device=logmel.device)
    if n_masks > 0 and freq_mask > 0:
        mask |= _band_masks(n_freq, freq_mask, n_masks, rows, generator, logmel.device)[:, :, None]
    if n_masks > 0 and time_mask > 0:
        mask |= _band_masks(n_time, time_mask, n_masks, rows, generator, logmel.device)[:, None, :]
    return flat.masked_fill(mask, mask_value).reshape(logmel.shape)


def filter_augment(logmel: Tensor, max_db: float, n_points: int, generator: np.random.Generator) -> Tensor:
    """Random smooth equalisation, drawn independently for every example (and segment).

    A gain curve over the frequency bands, linear between ``n_points`` control points at random band positions
    plus both ends, each gain uniform in ``[-max_db, max_db]`` dB, is added to the natural-log mel (a gain on
    the band power: ``dB * ln(10) / 10``). The student then maps differently coloured versions of a window to
    the same teacher target, which favours timbre features that survive a change of microphone, room or
    synthesiser (the idea of FilterAugment, Nam et al., ICASSP 2022).

    Args:
        logmel: (..., F, T) natural-log mel.
        max_db: largest gain magnitude in dB (0 returns the input unchanged).
        n_points: interior control points of the curve (0: one linear tilt between the two ends).
        generator: NumPy random generator.

    Returns:
        equalised copy of ``logmel`` (same shape, dtype and device).
    """
    if logmel.ndim < 2:
        raise ValueError(f"filter_augment: input must be (..., F, T), got {tuple(logmel.shape)}")
    if max_db < 0 or n_points < 0:
        raise ValueError("filter_augment: max_db and n_points must be >= 0")
    if max_db == 0:
        return logmel.clone()
    *lead, n_freq, n_time = logmel.shape
    rows = int(np.prod(lead)) if lead else 1
    bands = np.arange(n_freq, dtype=np.float64)
    inner = np.sort(generator.uniform(0.0, n_freq - 1.0, size=(rows, n_points)), axis=1)
    gains_db = generator.uniform(-max_db, max_db, size=(rows, n_points + 2))
    curves = np.stack(
        [
            np.interp(bands, np.concatenate([[0.0], inner[r], [n_freq - 1.0]]), gains_db[r])
            for r in range(rows)
        ]
    )
    shift = torch.as_tensor(curves * (np.log(10.0) / 10.0), dtype=logmel.dtype, device=logmel.device)
    return (logmel.reshape(rows, n_freq, n_time) + shift[:, :, None]).reshape(logmel.shape)
