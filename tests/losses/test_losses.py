"""Behaviour of the distillation losses beyond the golden values: validation, gradients, mixup, masking."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssondo_train.losses import (
    LOSSES,
    ClusterAwareLoss,
    CombinedLoss,
    HybridLoss,
    LabelLoss,
    MixInfo,
    NegClustersLoss,
    build_loss,
    cross_cluster_loss,
    loss_params,
)

CLUSTERS = torch.tensor([3, 3, 7, 7, 7, 1])


def _batch(b: int = 6, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(b, d, generator=gen)
    student = 0.5 * teacher + torch.randn(b, d, generator=gen)
    return student, teacher


def _build(name: str):
    return build_loss(name, temperature=0.5) if "temperature" in loss_params(name) else build_loss(name)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize(
    "clusters", [[3, 3, 7, 7, 7, 1], [2] * 6, [0, 1, 2, 3, 4, 5]], ids=["mixed", "one", "singletons"]
)
@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mix"])
def test_gradients_finite(name: str, clusters: list[int], mixed: bool) -> None:
    student, teacher = _batch()
    student.requires_grad_(True)
    mix = (
        MixInfo(torch.tensor([0.9, 0.6, 1.0, 0.75, 0.5, 0.8]), torch.tensor([2, 0, 1, 5, 4, 3]))
        if mixed
        else None
    )
    value = _build(name)(student, teacher, torch.tensor(clusters), mix)
    value.backward()
    assert torch.isfinite(value)
    assert student.grad is not None and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_half_precision_inputs_computed_in_float32(name: str) -> None:
    student, teacher = _batch()
    ref = _build(name)(student, teacher, CLUSTERS)
    value = _build(name)(student.half(), teacher.half(), CLUSTERS)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(ref.item(), abs=2e-2)


@pytest.mark.parametrize("name", ["contrastive", "neg_clusters", "cluster_aware"])
def test_single_sample_batch_gives_zero_with_finite_grad(name: str) -> None:
    student, teacher = _batch(b=1)
    student.requires_grad_(True)
    value = _build(name)(student, teacher, torch.tensor([0]))
    value.backward()
    assert value.item() == 0.0
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("name", ["kl", "clap", "contrastive", "neg_clusters", "cluster_aware", "hybrid"])
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_temperature_must_be_positive(name: str, bad: float) -> None:
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        build_loss(name, temperature=bad)


def test_kl_is_batchmean_times_t_squared() -> None:
    student, teacher = _batch()
    t = 2.0
    ref = F.kl_div(F.log_softmax(student / t, -1), F.softmax(teacher / t, -1), reduction="batchmean") * t * t
    assert build_loss("kl", temperature=t)(student, teacher).item() == pytest.approx(ref.item(), rel=1e-6)


def test_clap_equals_symmetric_cross_entropy() -> None:
    student, teacher = _batch()
    logits = F.normalize(student, dim=1) @ F.normalize(teacher, dim=1).T / 0.3
    target = torch.arange(6)
    ref = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert build_loss("clap", temperature=0.3)(student, teacher).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["cluster_aware", "neg_clusters", "hybrid"])
def test_cluster_losses_require_clusters(name: str) -> None:
    student, teacher = _batch()
    with pytest.raises(ValueError, match="needs cluster ids"):
        build_loss(name)(student, teacher)
    with pytest.raises(ValueError, match="integer"):
        build_loss(name)(student, teacher, CLUSTERS.float())


def test_masked_entries_are_excluded_not_counted_as_one() -> None:
    golden = json.loads((Path(__file__).parents[1] / "fixtures" / "losses_golden.json").read_text())
    inputs, upstream = golden["inputs"], golden["upstream_buggy"]
    student = torch.tensor(inputs["student"], dtype=torch.float64)
    teacher = torch.tensor(inputs["teacher"], dtype=torch.float64)
    clusters = torch.tensor(inputs["clusters"][upstream["clusters"]])
    for name in ("neg_clusters", "cluster_aware"):
        ours = build_loss(name, **upstream["params"])(student, teacher, clusters).item()
        # upstream's e^0 = 1 terms move the value by far more than numerical noise on this batch
        assert abs(ours - upstream[name]) > 0.1, name


def test_neg_clusters_row_ignores_same_cluster_samples() -> None:
    # Fixed formula: a same-cluster sample takes no part in another row's loss (upstream added e^0 = 1).
    student, teacher = _batch(b=3)
    loss = NegClustersLoss(temperature=0.5)
    two, _ = loss.pair_losses(student[:2], teacher[:2], torch.tensor([0, 1]))
    three, valid = loss.pair_losses(student, teacher, torch.tensor([0, 1, 0]))
    assert valid.tolist() == [True, True, True]
    assert three[0].item() == pytest.approx(two[0].item(), abs=1e-6)
    logits = F.normalize(student[:2], dim=1) @ F.normalize(teacher[:2], dim=1).T / 0.5
    assert two[0].item() == pytest.approx(F.cross_entropy(logits[:1], torch.tensor([0])).item(), abs=1e-6)


def test_cluster_aware_skips_rows_without_positives() -> None:
    student, teacher = _batch()
    loss = ClusterAwareLoss(temperature=0.5)
    values, valid = loss.pair_losses(student, teacher, CLUSTERS)
    assert valid.tolist() == [True, True, True, True, True, False]  # cluster 1 is a singleton
    assert loss(student, teacher, CLUSTERS).item() == pytest.approx(values[:5].mean().item(), abs=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_mix_with_lam_one_is_unmixed(name: str) -> None:
    student, teacher = _batch()
    mix = MixInfo(torch.ones(6), torch.tensor([5, 4, 3, 2, 1, 0]))
    loss = _build(name)
    assert loss(student, teacher, CLUSTERS, mix).item() == pytest.approx(
        loss(student, teacher, CLUSTERS).item(), abs=1e-6
    )


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_mix_with_lam_zero_targets_the_partner(name: str) -> None:
    student, teacher = _batch()
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    loss = _build(name)
    mixed = loss(student, teacher, CLUSTERS, MixInfo(torch.zeros(6), perm))
    partner = loss(student, teacher[perm], CLUSTERS[perm])
    assert mixed.item() == pytest.approx(partner.item(), abs=1e-6)
    assert abs(mixed.item() - loss(student, teacher, CLUSTERS).item()) > 1e-3


def test_mix_per_sample_formula() -> None:
    student, teacher = _batch()
    lam = torch.tensor([0.9, 0.6, 1.0, 0.75, 0.5, 0.8])
    perm = torch.tensor([2, 0, 1, 5, 4, 3])
    own = 1 - F.cosine_similarity(student, teacher)
    other = 1 - F.cosine_similarity(student, teacher[perm])
    ref = (lam * own + (1 - lam) * other).mean()
    assert build_loss("cosine")(student, teacher, mix=MixInfo(lam, perm)).item() == pytest.approx(
        ref.item(), 1e-6
    )


def test_hybrid_is_weighted_sum_of_parts() -> None:
    student, teacher = _batch()
    cos = build_loss("cosine")(student, teacher).item()
    ca = build_loss("cluster_aware", temperature=0.5)(student, teacher, CLUSTERS).item()
    cc = cross_cluster_loss(student, teacher, CLUSTERS).item()
    hybrid = HybridLoss(
        alignment_weight=0.5, contrastive_weight=2.0, cross_cluster_weight=0.25, temperature=0.5
    )
    assert hybrid(student, teacher, CLUSTERS).item() == pytest.approx(
        0.5 * cos + 2.0 * ca + 0.25 * cc, abs=1e-5
    )
    only_cos = HybridLoss(alignment_weight=1.0, contrastive_weight=0.0, cross_cluster_weight=0.0)
    assert only_cos(student, teacher, CLUSTERS).item() == pytest.approx(cos, abs=1e-6)


@pytest.mark.parametrize(
    "weights, match",
    [
        ({"alignment_weight": -0.1}, "alignment_weight must be a finite number >= 0"),
        ({"contrastive_weight": math.nan}, "contrastive_weight"),
        ({"cross_cluster_weight": math.inf}, "cross_cluster_weight"),
        ({"alignment_weight": 0, "contrastive_weight": 0, "cross_cluster_weight": 0}, "at least one"),
    ],
)
def test_hybrid_weight_validation(weights: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_loss("hybrid", **weights)


def test_cross_cluster_is_minus_one_for_perfect_student() -> None:
    _, teacher = _batch()
    assert cross_cluster_loss(teacher * 3.0, teacher, CLUSTERS).item() == pytest.approx(-1.0, abs=1e-6)


def test_build_loss_errors_name_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"unknown loss 'cos'.*'cosine'"):
        build_loss("cos")
    with pytest.raises(
        ValueError, match=r"unknown parameter\(s\) \['temprature'\]; allowed: \['temperature'\]"
    ):
        build_loss("kl", temprature=1.0)
    with pytest.raises(ValueError, match="allowed: none"):
        build_loss("cosine", temperature=1.0)
    assert type(build_loss()).__name__ == "CosineLoss"


def test_shape_and_mix_validation() -> None:
    student, teacher = _batch()
    with pytest.raises(ValueError, match="equal shapes"):
        build_loss("cosine")(student, teacher[:, :4])
    with pytest.raises(ValueError, match="MixInfo is for batch 3"):
        build_loss("cosine")(student, teacher, mix=MixInfo(torch.ones(3), torch.arange(3)))
    with pytest.raises(ValueError, match="perm must be an integer"):
        MixInfo(torch.ones(3), torch.zeros(3))


def test_cosine_zero_for_parallel_vectors() -> None:
    _, teacher = _batch()
    assert build_loss("cosine")(2.0 * teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------- label / combined
def test_label_loss_mix_equals_mixed_targets() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, generator=gen)
    y = (torch.rand(4, 5, generator=gen) < 0.4).float()
    lam, perm = torch.tensor([0.5, 0.7, 0.9, 1.0]), torch.tensor([1, 2, 3, 0])
    mixed_targets = lam[:, None] * y + (1 - lam[:, None]) * y[perm]
    ref = F.binary_cross_entropy_with_logits(logits, mixed_targets)
    assert LabelLoss("bce")(logits, y, MixInfo(lam, perm)).item() == pytest.approx(ref.item(), abs=1e-6)
    with pytest.raises(ValueError, match="kind must be"):
        LabelLoss("focal")  # type: ignore[arg-type]


def test_combined_loss_validation_and_separate_head() -> None:
    student, teacher = _batch()
    with pytest.raises(ValueError, match=r"label_weight must be in \[0, 1\]"):
        CombinedLoss(build_loss("cosine"), LabelLoss(), label_weight=1.5)
    with pytest.raises(ValueError, match="needs a label loss"):
        CombinedLoss(build_loss("cosine"), None, label_weight=0.5)
    with pytest.raises(ValueError, match="needs a distillation loss"):
        CombinedLoss(None, LabelLoss(), label_weight=0.5)
    combined = CombinedLoss(build_loss("cosine"), LabelLoss(), label_weight=0.5)
    with pytest.raises(ValueError, match="labels need their own head"):
        combined(student, teacher, label_logits=student, labels=torch.zeros(6, 8))
    kd_only = CombinedLoss(build_loss("cosine"))(student, teacher)
    assert kd_only.label is None and kd_only.total.item() == pytest.approx(
        build_loss("cosine")(student, teacher).item()
    )
    label_only = CombinedLoss(None, LabelLoss("ce"), label_weight=1.0)(
        None, None, label_logits=student, labels=torch.arange(6)
    )
    assert label_only.kd is None
    assert label_only.total.item() == pytest.approx(
        F.cross_entropy(student, torch.arange(6)).item(), abs=1e-6
    )
