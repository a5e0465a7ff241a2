"""Every loss computes in float32 under bf16 autocast, as the module docstring of losses/base.py promises."""

from __future__ import annotations

import pytest
import torch

from ssondo_train.losses import LOSSES, ClapLoss, LabelLoss, MixInfo, build_loss, loss_params

CLUSTERS = torch.tensor([3, 3, 7, 7, 7, 1, 1, 2])


def _batch(b: int = 8, d: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(b, d, generator=gen)
    student = 0.5 * teacher + torch.randn(b, d, generator=gen)
    return student, teacher


def _build(name: str):
    return build_loss(name, temperature=0.1) if "temperature" in loss_params(name) else build_loss(name)


def _bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mix"])
def test_every_loss_is_float32_under_bf16_autocast(name: str, mixed: bool) -> None:
    student, teacher = _batch()
    mix = MixInfo(torch.linspace(0.5, 1.0, 8), torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])) if mixed else None
    loss = _build(name)
    reference = loss(student, teacher, CLUSTERS, mix)
    with _bf16_autocast():
        value = loss(student, teacher, CLUSTERS, mix)
    assert reference.dtype == value.dtype == torch.float32
    torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-7)


def test_the_check_has_teeth_bf16_clap_differs() -> None:
    """CLAP with autocast left on (``compute`` bypasses forward) moves by far more than the tolerance."""
    student, teacher = _batch()
    loss = ClapLoss(temperature=0.1)
    fp32 = loss(student, teacher)
    with _bf16_autocast():
        bf16 = loss.compute(student, teacher, None, None)
    assert (bf16.float() - fp32).abs().item() > 1e-4


@pytest.mark.parametrize("kind", ["bce", "ce"])
def test_label_loss_is_float32_under_bf16_autocast(kind: str) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = 3.0 * torch.randn(8, 50, generator=gen)
    targets = (torch.rand(8, 50, generator=gen) > 0.8).float() if kind == "bce" else torch.arange(8) % 50
    # A bf16 input (as a bf16 label head would give): up-cast, and no autocast inside.
    logits_bf16 = logits.to(torch.bfloat16)
    loss = LabelLoss(kind)
    reference = loss(logits_bf16.float(), targets)
    with _bf16_autocast():
        value = loss(logits_bf16, targets)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-7)
