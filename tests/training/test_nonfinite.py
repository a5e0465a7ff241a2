"""Non-finite losses stop training (or skip the batch, by policy); NaN checkpoints are never 'best'."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ssondo_train.losses import build_loss
from ssondo_train.students import build_student_with_projector
from ssondo_train.students.frontend import StudentFrontEnd
from ssondo_train.training.module import (
    DistillModule,
    NonFiniteError,
    NonFinitePolicy,
    OptimConfig,
    TargetNorm,
)

DIM = 8
BATCH = 2


class _Windows(Dataset):
    """Eight one-second windows; the targets of window ``poisoned`` are NaN (a corrupt store row)."""

    def __init__(self, poisoned: int | None) -> None:
        gen = torch.Generator().manual_seed(0)
        self.audio = torch.randn(8, 32000, generator=gen) * 0.1
        self.target = torch.randn(8, DIM, generator=gen)
        if poisoned is not None:
            self.target[poisoned] = float("nan")

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "audio": self.audio[i],
            "target": self.target[i],
            "cluster": torch.tensor(0),
            "index": torch.tensor(i),
        }


def _train(policy: NonFinitePolicy, poisoned: int | None) -> DistillModule:
    torch.manual_seed(0)
    student = build_student_with_projector("mobilenetv3", teacher_dim=DIM, width_mult=0.4, hidden_dim=16)
    module = DistillModule(
        student,
        StudentFrontEnd(),
        build_loss("cosine"),
        TargetNorm("none", dim=DIM),
        OptimConfig(updates_per_epoch=4),
        nonfinite=policy,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, DataLoader(_Windows(poisoned), batch_size=BATCH, shuffle=False))
    return module


def test_a_nan_loss_stops_training_naming_the_step_and_its_windows() -> None:
    with pytest.raises(
        NonFiniteError, match=r"non-finite loss \(nan\) at step 2 \(epoch 0, batch 2\).*windows: 4 5"
    ):
        _train(NonFinitePolicy("stop"), poisoned=5)


def test_skip_drops_the_batch_counts_it_and_keeps_the_weights_finite() -> None:
    module = _train(NonFinitePolicy("skip"), poisoned=5)
    assert module.nonfinite_skipped == 1
    assert module.batches_trained == 4
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_skip_stops_after_too_many_skipped_batches() -> None:
    with pytest.raises(NonFiniteError, match="max_nonfinite_skips=0"):
        _train(NonFinitePolicy("skip", max_skips=0), poisoned=1)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="on_nonfinite"):
        NonFinitePolicy("ignore")


def test_a_checkpoint_with_nan_weights_is_never_chosen_as_best(tmp_path: Path) -> None:
    from ssondo_train.stages.base import StageError
    from ssondo_train.stages.distill import _finite_best

    def save(name: str, value: float) -> str:
        path = tmp_path / name
        torch.save({"state_dict": {"student.w": torch.full((3,), value)}}, path)
        return str(path)

    nan_ckpt, good = save("epoch001.ckpt", float("nan")), save("epoch000.ckpt", 1.0)
    last = Path(save("last.ckpt", 1.0))
    # the NaN checkpoint had the lower (better) validation loss on record
    checkpointer = SimpleNamespace(
        best_k_models={nan_ckpt: torch.tensor(0.1), good: torch.tensor(0.5)}, mode="min"
    )
    assert _finite_best(checkpointer, last) == good
    checkpointer.best_k_models = {nan_ckpt: torch.tensor(0.1)}
    assert _finite_best(checkpointer, last) == ""
    save("last.ckpt", float("nan"))
    with pytest.raises(StageError, match="NaN/inf weights"):
        _finite_best(checkpointer, last)
