"""What export and probe refuse (diverged, NaN/inf checkpoints) and the file modes of what they write."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssondo_train.export import export_student
from ssondo_train.probe import models as pm
from ssondo_train.stages import get_stage, run_stage
from ssondo_train.stages.base import StageError
from ssondo_train.training.checkpoint import (
    DivergedCheckpointError,
    load_distill_checkpoint,
    nonfinite_tensors,
    verify_distill_checkpoint,
)
from tests.conftest import REPO_ROOT
from tests.golden import training_config
from tests.inference.helpers import golden_student
from tests.stages.test_probe_stage import write_task

TEACHER_DIM = 12
STUDENT_CFG = {
    "name": "mobilenetv3",
    "pretrained": None,
    "projector_hidden": 32,
    "projector_dropout": 0.2,
    "kwargs": {"width_mult": 0.4, "bn_momentum": 0.01},
}


def write_distill_checkpoint(path: Path, ema: bool = False, poison: tuple[str, ...] = ()) -> dict:
    """A distill-like Lightning checkpoint; every key in ``poison`` gets a NaN (an inf for the 2nd on)."""
    from ssondo_train.students import build_student_from_section

    torch.manual_seed(3)
    student = build_student_from_section(STUDENT_CFG, TEACHER_DIM)
    state = {f"student.{k}": v.clone() for k, v in student.state_dict().items()}
    if ema:
        state.update({f"student_ema.{k}": v.clone() for k, v in student.state_dict().items()})
    state["target_norm.mean"] = torch.linspace(-1, 1, TEACHER_DIM)
    state["target_norm.std"] = torch.linspace(0.5, 2, TEACHER_DIM)
    for i, key in enumerate(poison):
        state[key] = state[key].clone()
        state[key].view(-1)[0] = float("nan") if i == 0 else float("inf")
    ckpt = {
        "epoch": 1,
        "global_step": 4,
        "state_dict": state,
        "ssondo_train_config": {"student": STUDENT_CFG, "seed": 42, "distill": {"target_norm": "zscore"}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return state


W = "student.model.features.0.0.weight"  # the first conv of the backbone
B = "student.classification_head.mlp.3.bias"


# ------------------------------------------------------------------------------------ NaN / inf weights
def test_nonfinite_tensors_names_keys_with_nan_or_inf_in_order() -> None:
    state = {
        "a": torch.ones(3),
        "b": torch.tensor([1.0, float("nan")]),
        "steps": torch.tensor(5),  # integer buffers are never reported
        "c": torch.tensor([float("-inf")], dtype=torch.float16),
        "d": torch.zeros(0),
        "note": "not a tensor",
    }
    assert nonfinite_tensors(state) == ["b", "c"]
    assert nonfinite_tensors({"a": torch.ones(2)}) == []


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path: Path) -> None:
    state = write_distill_checkpoint(tmp_path / "checkpoints" / "last.ckpt", poison=(W, B))
    (tmp_path / "checkpoints" / "epoch=0-step=2.ckpt").write_bytes(b"")
    n = sum(k.startswith(("student.", "target_norm.")) for k in state)
    with pytest.raises(DivergedCheckpointError) as info:  # a ValueError
        load_distill_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert info.value.keys == [W, B] and [p.name for p in info.value.others] == ["epoch=0-step=2.ckpt"]
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'checkpoints' / 'last.ckpt'}: 2 of {n} weight tensors")
    assert f"hold NaN/inf (e.g. {W}); the training diverged" in msg
    assert "epoch=0-step=2.ckpt" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="2 of"):
        verify_distill_checkpoint(tmp_path / "checkpoints" / "last.ckpt")


def test_nan_target_norm_is_refused(tmp_path: Path) -> None:
    write_distill_checkpoint(tmp_path / "last.ckpt", poison=("target_norm.std",))
    with pytest.raises(ValueError, match=r"1 of \d+ weight tensors .* \(e.g. target_norm.std\).*retrain"):
        load_distill_checkpoint(tmp_path / "last.ckpt")


def test_only_the_weights_that_would_be_loaded_are_checked(tmp_path: Path) -> None:
    # A NaN in the trained weights while the weight average is finite: the average (the default) loads,
    # the trained weights are refused.
    path = tmp_path / "last.ckpt"
    write_distill_checkpoint(path, ema=True, poison=(W,))
    assert load_distill_checkpoint(path).weights == "ema"
    verify_distill_checkpoint(path)
    with pytest.raises(ValueError, match="trained student"):
        load_distill_checkpoint(path, weights="trained")
    write_distill_checkpoint(path, ema=True, poison=("student_ema." + W.removeprefix("student."),))
    with pytest.raises(ValueError, match="weight-average student"):
        load_distill_checkpoint(path)
    assert load_distill_checkpoint(path, weights="trained").weights == "trained"


def test_a_truncated_checkpoint_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    write_distill_checkpoint(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        load_distill_checkpoint(path)


def _finished_distill(run_dir: Path, cfg, poison: tuple[str, ...]) -> Path:
    """A run whose store and distill variant ``default`` look finished, with a (poisoned) last.ckpt."""
    from ssondo_train.runs.variants import identity

    pre = run_dir / "precompute"
    (pre / "store").mkdir(parents=True)
    done = {"identity": identity(cfg, "precompute"), "config": {}, "teacher": {"name": "whisper_tiny"}}
    (pre / "done.json").write_text(json.dumps(done))
    (pre / "store" / "meta.json").write_text(json.dumps({"extra": {"window_seconds": 1.0}}))
    (pre / "store" / "index.json").write_text(json.dumps({"parts": []}))
    ckpt = run_dir / "distill" / "default" / "checkpoints" / "last.ckpt"
    write_distill_checkpoint(ckpt, poison=poison)
    (run_dir / "distill" / "default" / "done.json").write_text(
        json.dumps({"checkpoints": {"last": "x", "best": None}})
    )
    return ckpt


def test_export_and_probe_stages_refuse_a_nan_checkpoint(tmp_path: Path, compose) -> None:
    out_root = tmp_path / "outputs"
    run_dir = out_root / "r"
    common = ["run_name=r", f"paths.output_root={out_root}"]
    cfg = compose(["stage=export", *common])
    ckpt = _finished_distill(run_dir, cfg, poison=(W,))
    with pytest.raises(
        StageError, match=r"^export: .*last.ckpt: 1 of \d+ weight tensors .* diverged"
    ) as info:
        run_stage(get_stage("export"), cfg, run_dir)
    assert "retrain (no other checkpoint in" in str(info.value) and "export.checkpoint" not in str(info.value)
    (ckpt.parent / "epoch=3-step=12.ckpt").write_bytes(b"")
    with pytest.raises(StageError, match=r"epoch=3-step=12.ckpt in .*; export.checkpoint=<file> exports"):
        run_stage(get_stage("export"), cfg, run_dir)
    assert not (run_dir / "export" / "default").exists()  # refused before writing anything

    manifest = write_task(tmp_path / "task", per_class=5, bad=False)
    cfg = compose(["stage=probe", *common, f"probe.tasks=[manifest:{manifest}]", "probe.models=[student]"])
    with pytest.raises(FileNotFoundError):  # control: the checks of the stage itself come first
        pm.checkpoint_embedder(tmp_path / "missing.ckpt", "backbone", 1.0)
    with pytest.raises(ValueError, match="diverged"):
        pm.checkpoint_embedder(ckpt, "backbone", 1.0)
    with pytest.raises(StageError, match=r"probe model 'student': .*1 of \d+ weight tensors"):
        run_stage(get_stage("probe"), cfg, run_dir)


@pytest.mark.slow
def test_export_of_a_nan_checkpoint_is_one_line_on_the_command_line(tmp_path: Path, compose) -> None:
    out_root = tmp_path / "outputs"
    args = ["stage=export", "run_name=r", f"paths.output_root={out_root}"]
    _finished_distill(out_root / "r", compose(args), poison=(W,))
    res = subprocess.run(
        [sys.executable, "-m", "ssondo_train", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "WANDB_MODE": "offline"},
        timeout=300,
    )
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert "Traceback" not in res.stderr and len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith("error: export: ") and "the training diverged" in lines[0]


# ------------------------------------------------------------------------------------------ permissions
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)], ids=["umask022", "umask027"])
def test_exported_files_get_the_usual_permissions(tmp_path: Path, umask: int, mode: int) -> None:
    student = golden_student("mn10")
    heads = {"toy": torch.nn.Linear(student.emb_size, 3)}
    old = os.umask(umask)
    try:
        files = export_student(tmp_path, student, training_config("mn10"), heads=heads, onnx=False)
    finally:
        os.umask(old)
    assert {"ssondo_ckpt", "safetensors", "config", "heads/toy", "heads/toy.json"} <= set(files)
    modes = {name: oct(stat.S_IMODE(Path(p).stat().st_mode)) for name, p in files.items()}
    assert modes == dict.fromkeys(files, oct(mode))
    assert not [p.name for p in tmp_path.rglob(".*")]  # no temporary file left behind
