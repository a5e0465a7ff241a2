"""Mixup and per-example SpecAugment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssondo_train.sampling import mixup, spec_augment


def _x(b: int = 8) -> torch.Tensor:
    return torch.randn(b, 2, 16, 20, generator=torch.Generator().manual_seed(0))


def test_mixup_formula_and_lambda_range() -> None:
    x = _x()
    mixed, info = mixup(x, alpha=0.3, generator=np.random.default_rng(1))
    assert mixed.shape == x.shape and mixed.dtype == x.dtype
    assert info.lam.shape == (8,) and info.perm.dtype == torch.long
    assert torch.all(info.lam >= 0.5) and torch.all(info.lam <= 1.0)
    assert sorted(info.perm.tolist()) == list(range(8))
    lam = info.lam.view(8, 1, 1, 1)
    torch.testing.assert_close(mixed, lam * x + (1 - lam) * x[info.perm])
    assert not torch.allclose(mixed, x)


def test_mixup_reproducible_with_same_generator_seed() -> None:
    x = _x()
    a, ia = mixup(x, 0.3, np.random.default_rng(5))
    b, ib = mixup(x, 0.3, np.random.default_rng(5))
    assert torch.equal(a, b) and torch.equal(ia.lam, ib.lam) and torch.equal(ia.perm, ib.perm)


def test_mixup_identity_limits() -> None:
    x = _x()
    off, info = mixup(x, 0.0, np.random.default_rng(0))
    assert torch.equal(off, x) and torch.all(info.lam == 1) and info.perm.tolist() == list(range(8))
    # alpha -> 0: Beta(α, α) concentrates on {0, 1}, so max(λ, 1 - λ) -> 1 and the batch is (almost) unchanged
    tiny, info = mixup(x, 1e-4, np.random.default_rng(0))
    assert torch.all(info.lam > 0.999)
    torch.testing.assert_close(tiny, x, atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="alpha"):
        mixup(x, -1.0, np.random.default_rng(0))


def test_spec_augment_masks_differ_across_examples() -> None:
    x = torch.ones(6, 2, 32, 50)
    out = spec_augment(x, freq_mask=8, time_mask=10, n_masks=2, generator=np.random.default_rng(3))
    assert out.shape == x.shape and torch.equal(x, torch.ones_like(x))  # input untouched
    masked = out == 0
    patterns = {tuple(masked[b, s].flatten().tolist()) for b in range(6) for s in range(2)}
    assert len(patterns) >= 10  # 12 slices, masks drawn independently
    # masked cells form whole frequency rows and time columns, no more than the maximum widths allow
    for b in range(6):
        for s in range(2):
            m = masked[b, s]
            full_rows = m.all(dim=1)
            full_cols = m.all(dim=0)
            assert torch.equal(m, full_rows[:, None] | full_cols[None, :])
            assert full_rows.sum() <= 2 * 8 and full_cols.sum() <= 2 * 10
    assert 0.05 < masked.float().mean().item() < 0.6


def test_spec_augment_disabled_and_mask_value() -> None:
    x = _x()
    assert torch.equal(spec_augment(x, 0, 0, 2, np.random.default_rng(0)), x)
    assert torch.equal(spec_augment(x, 8, 8, 0, np.random.default_rng(0)), x)
    only_time = spec_augment(torch.ones(4, 16, 20), 0, 20, 1, np.random.default_rng(1), mask_value=-5.0)
    assert set(torch.unique(only_time).tolist()) <= {1.0, -5.0}
    # a time-only mask blanks whole frequency columns
    m = only_time == -5.0
    assert torch.equal(m, m.any(dim=1, keepdim=True).expand_as(m))
    with pytest.raises(ValueError, match=">= 0"):
        spec_augment(x, -1, 0, 1, np.random.default_rng(0))


def test_filter_augment_is_a_bounded_smooth_gain_per_example() -> None:
    from ssondo_train.sampling.augment import filter_augment

    x = torch.randn(6, 1, 128, 50)
    out = filter_augment(x, 6.0, 3, np.random.default_rng(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    shift = out - x
    # one gain per band, constant over time, within +-6 dB (natural-log units), different per example
    torch.testing.assert_close(shift, shift[..., :1].expand_as(shift))
    curve = shift[:, 0, :, 0]
    assert float(curve.abs().max()) <= 6.0 * np.log(10) / 10 + 1e-6
    assert float(curve.abs().max()) > 0.3 and not torch.allclose(curve[0], curve[1])
    # piecewise linear: second differences vanish except at the (at most 3) interior control points
    kinks = (curve.diff(dim=1).diff(dim=1).abs() > 1e-5).sum(dim=1)
    assert int(kinks.max()) <= 2 * 3
    # reproducible from the generator; 0 dB is the identity; n_points=0 is a straight tilt
    torch.testing.assert_close(out, filter_augment(x, 6.0, 3, np.random.default_rng(0)))
    torch.testing.assert_close(filter_augment(x, 0.0, 3, np.random.default_rng(1)), x)
    tilt = (filter_augment(x, 6.0, 0, np.random.default_rng(2)) - x)[:, 0, :, 0]
    assert float(tilt.diff(dim=1).diff(dim=1).abs().max()) < 1e-5
    with pytest.raises(ValueError):
        filter_augment(x, -1.0, 3, np.random.default_rng(0))
