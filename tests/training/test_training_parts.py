"""Schedule, BatchNorm recalibration and target normalisation of the distillation module."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ssondo_train.training.batchnorm import recalibrate_batchnorm
from ssondo_train.training.module import TargetNorm
from ssondo_train.training.schedule import WarmupRampdown


def test_schedule_matches_the_efficientat_values():
    s = WarmupRampdown()  # warm-up 8, ramp-down 80 -> 175, floor 0.01
    expected = {
        0: 0.01234,
        1: 0.02175,
        2: 0.0600,
        4: 0.2865,
        7: 0.9249,
        8: 1.0,
        80: 1.0,
        100: 0.7916,
        150: 0.2705,
        174: 0.0204,
        175: 0.01,
        300: 0.01,
    }
    for epoch, value in expected.items():
        assert s(epoch) == pytest.approx(value, abs=6e-5), epoch


def test_schedule_is_continuous_between_epochs():
    s = WarmupRampdown(2, 6, 6, 0.01)
    values = [s(e / 10) for e in range(0, 130)]
    assert max(abs(a - b) for a, b in zip(values, values[1:], strict=False)) < 0.1
    assert values[-1] == pytest.approx(0.01)


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.01), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
    )


def test_recalibration_sets_running_stats_to_the_data_statistics():
    torch.manual_seed(0)
    net = _net()
    data = [torch.randn(16, 1, 8, 8) * 3 + 2 for _ in range(8)]
    bn = net[1]
    with torch.no_grad():
        feats = torch.cat([net[0](x) for x in data])
    assert not torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-2)  # stale after init
    net.eval()
    seen = recalibrate_batchnorm(net, iter(data), max_items=10_000)
    assert seen == 128 and not net.training and bn.momentum == 0.01
    torch.testing.assert_close(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-4, rtol=0)
    # Cumulative average of per-batch unbiased variances == data variance up to the batch bias.
    assert torch.allclose(bn.running_var, feats.var((0, 2, 3)), rtol=0.05)


def test_recalibration_with_no_data_changes_nothing():
    net = _net()
    before = net[1].running_mean.clone()
    assert recalibrate_batchnorm(net, iter([])) == 0
    torch.testing.assert_close(net[1].running_mean, before)


@pytest.mark.parametrize("mode", ["none", "center", "zscore"])
def test_target_norm_round_trip(mode):
    torch.manual_seed(0)
    targets = torch.randn(500, 16) * torch.linspace(0.5, 3, 16) + 5
    norm = TargetNorm(mode, targets.mean(0), targets.std(0, unbiased=False))
    z = norm(targets)
    torch.testing.assert_close(norm.inverse(z), targets, atol=1e-4, rtol=0)
    if mode == "zscore":
        torch.testing.assert_close(z.mean(0), torch.zeros(16), atol=1e-4, rtol=0)
        assert float(norm.target_rms) == pytest.approx(4.0)  # sqrt(16)
        # Mean length of z-scored vectors is close to sqrt(D).
        assert float(z.norm(dim=1).mean()) == pytest.approx(4.0, rel=0.1)


def test_scale_brings_free_length_predictions_back_to_the_target_length():
    torch.manual_seed(0)
    targets = torch.randn(400, 32) + 10.0
    norm = TargetNorm("zscore", targets.mean(0), targets.std(0, unbiased=False))
    z = norm(targets)
    pred = 7.0 * z  # a cosine-trained projector: right direction, arbitrary length
    cos_unscaled = nn.functional.cosine_similarity(norm.inverse(pred), targets).mean()
    norm.set_scale_from_norm(float(pred.norm(dim=1).mean()))
    cos_scaled = nn.functional.cosine_similarity(norm.inverse(pred), targets).mean()
    assert float(norm.scale) == pytest.approx(1 / 7, rel=0.05)
    assert float(cos_scaled) > 0.999 > float(cos_unscaled)
    assert math.isclose(float(norm.scale * 7), 1.0, rel_tol=0.05)
