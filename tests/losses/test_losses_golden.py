"""Every loss against the independent NumPy reference in tests/fixtures/losses_golden.json.

Regenerate the fixture with ``python scripts/make_loss_golden.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ssondo_train.losses import LOSSES, CombinedLoss, LabelLoss, MixInfo, build_loss, cross_cluster_loss

GOLDEN = json.loads((Path(__file__).parents[1] / "fixtures" / "losses_golden.json").read_text())
INPUTS = GOLDEN["inputs"]
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, MixInfo]:
    student = torch.tensor(INPUTS["student"], dtype=dtype)
    teacher = torch.tensor(INPUTS["teacher"], dtype=dtype)
    mix = MixInfo(torch.tensor(INPUTS["lam"], dtype=dtype), torch.tensor(INPUTS["perm"]))
    return student, teacher, mix


def _case_id(case: dict) -> str:
    params = ",".join(f"{k}={v}" for k, v in case["params"].items())
    return f"{case['loss']}[{params}]-{case['clusters']}-{'mix' if case['mix'] else 'plain'}"


def test_fixture_covers_every_registered_loss() -> None:
    assert set(LOSSES) <= {case["loss"] for case in GOLDEN["cases"]}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", GOLDEN["cases"], ids=_case_id)
def test_loss_matches_golden(case: dict, dtype: torch.dtype) -> None:
    student, teacher, mix = _inputs(dtype)
    clusters = None if case["clusters"] is None else torch.tensor(INPUTS["clusters"][case["clusters"]])
    used_mix = mix if case["mix"] else None
    if case["loss"] == "cross_cluster":
        value = cross_cluster_loss(student, teacher, clusters, used_mix)
    else:
        value = build_loss(case["loss"], **case["params"])(student, teacher, clusters, used_mix)
    assert value.ndim == 0
    assert value.item() == pytest.approx(case["value"], abs=TOLERANCE[dtype], rel=0)


@pytest.mark.parametrize("case", GOLDEN["label_cases"], ids=lambda c: f"{c['kind']}-{c['mix']}")
def test_label_loss_matches_golden(case: dict) -> None:
    _, _, mix = _inputs(torch.float32)
    logits = torch.tensor(INPUTS["label_logits"], dtype=torch.float32)
    targets = torch.tensor(INPUTS[case["targets"]])
    value = LabelLoss(case["kind"])(logits, targets, mix if case["mix"] else None)
    assert value.item() == pytest.approx(case["value"], abs=1e-5, rel=0)


def test_combined_loss_matches_golden() -> None:
    ref = GOLDEN["combined"]
    student, teacher, _ = _inputs(torch.float32)
    combined = CombinedLoss(build_loss(ref["kd"]), LabelLoss(ref["label"]), label_weight=ref["label_weight"])
    out = combined(
        student,
        teacher,
        label_logits=torch.tensor(INPUTS["label_logits"], dtype=torch.float32),
        labels=torch.tensor(INPUTS["multi_hot"]),
    )
    assert out.total.item() == pytest.approx(ref["value"], abs=1e-5, rel=0)
    assert out.kd is not None and out.label is not None
    lam = ref["label_weight"]
    assert out.total.item() == pytest.approx(lam * out.label.item() + (1 - lam) * out.kd.item(), abs=1e-6)
