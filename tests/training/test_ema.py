"""training.ema: the weight average's update rule, its warm-up, and its place in the DistillModule."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ssondo_train.losses import build_loss
from ssondo_train.students import build_student_with_projector
from ssondo_train.students.frontend import StudentFrontEnd
from ssondo_train.training.ema import ema_decay_at, ema_update
from ssondo_train.training.module import DistillModule, OptimConfig, TargetNorm


def test_decay_warms_up_then_stays_at_its_value() -> None:
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.999, 100_000) == 0.999
    with pytest.raises(ValueError, match="EMA decay"):
        ema_decay_at(1.0, 5)


def test_update_averages_floats_and_copies_counters() -> None:
    torch.manual_seed(0)
    trained = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    average = copy.deepcopy(trained)
    before = {k: v.clone() for k, v in average.state_dict().items()}
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    trained(torch.randn(8, 3))  # moves BN running stats, bumps num_batches_tracked
    ema_update(average, trained, 0.75)
    new = trained.state_dict()
    for k, v in average.state_dict().items():
        if v.dtype.is_floating_point:
            torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * new[k], msg=k)
        else:
            assert torch.equal(v, new[k]), k
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Linear(3, 4), nn.Sequential(nn.Linear(3, 4)), 0.5)


def test_module_keeps_a_frozen_copy_and_validates_it() -> None:
    torch.manual_seed(0)
    student = build_student_with_projector("mobilenetv3", teacher_dim=8, width_mult=0.4, hidden_dim=16)
    norm = TargetNorm("zscore", torch.zeros(8), torch.ones(8))
    module = DistillModule(
        student, StudentFrontEnd(), build_loss("cosine"), norm, OptimConfig(), ema_decay=0.99
    )
    assert module.evaluated_student is module.student_ema
    assert all(not p.requires_grad for p in module.student_ema.parameters())
    trainable = {id(p) for p in module.trainable_parameters()}
    assert not any(id(p) in trainable for p in module.student_ema.parameters())
    keys = module.state_dict().keys()
    assert {k.removeprefix("student_ema.") for k in keys if k.startswith("student_ema.")} == {
        k.removeprefix("student.") for k in keys if k.startswith("student.")
    }
    plain = DistillModule(
        copy.deepcopy(student), StudentFrontEnd(), build_loss("cosine"), norm, OptimConfig()
    )
    assert plain.student_ema is None and plain.evaluated_student is plain.student
