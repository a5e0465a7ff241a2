"""A DyMN trained with ``distill.dymn_anneal=true`` keeps its final temperature through checkpoint, probe
loading and export, and the real ``ssondo`` client runs it at that temperature.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssondo_train.export import export_student, load_safetensors, ssondo_training_config
from ssondo_train.inference import get_ssondo
from ssondo_train.students import build_student_from_section
from ssondo_train.students._layers import last_channel_for
from ssondo_train.students.dymn import TEMPERATURE_KEY, DyMN, dymn_temperature
from ssondo_train.training.checkpoint import load_distill_checkpoint
from tests.golden import expected
from tests.inference.helpers import audio, golden_student

TEACHER_DIM = 16
WIDTH = 1.0  # dymn10: the golden weights make outputs that depend on the temperature
STUDENT_CFG = {
    "name": "dymn",
    "pretrained": None,
    "projector_hidden": last_channel_for(WIDTH, False),
    "projector_dropout": 0.2,
    "kwargs": {"width_mult": WIDTH},  # the start temperature is the default, 30
}
LAST_EPOCH = 29  # EfficientAT's schedule from 30 reaches 1 here
START = 30.0


def annealed_student():
    """Golden dymn10 backbone + projector after ``anneal`` for every epoch up to the last: temperature ~1."""
    torch.manual_seed(11)
    student = build_student_from_section(STUDENT_CFG, TEACHER_DIM, pretrained=False)
    student.model.load_state_dict(golden_student("dymn10").model.state_dict(), strict=True)
    for epoch in range(LAST_EPOCH + 1):
        student.model.anneal(epoch)
    return student.eval()


FINAL = dymn_temperature(LAST_EPOCH)


def write_distill_checkpoint(path: Path, student, drop_temperature: bool = False) -> None:
    """A distill-like Lightning checkpoint (trained and EMA weights) of ``student``."""
    sd = {k: v.clone() for k, v in student.state_dict().items()}
    if drop_temperature:  # as written before the temperature travelled with the weights
        sd = {k: v for k, v in sd.items() if not k.endswith(TEMPERATURE_KEY)}
    state = {f"student.{k}": v for k, v in sd.items()}
    state.update({f"student_ema.{k}": v.clone() for k, v in sd.items()})
    state["target_norm.mean"] = torch.zeros(TEACHER_DIM)
    state["target_norm.std"] = torch.ones(TEACHER_DIM)
    ckpt = {
        "epoch": LAST_EPOCH,
        "global_step": 30,
        "state_dict": state,
        "ssondo_train_config": {
            "student": STUDENT_CFG,
            "seed": 1,
            "distill": {"target_norm": "none", "dymn_anneal": True},
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)


def _logmel() -> torch.Tensor:
    return torch.from_numpy(expected("student")["logmel"][..., :100]).contiguous()  # a real log-mel


def test_schedule_ends_near_one() -> None:
    assert FINAL == pytest.approx(1.0) and FINAL < START


def test_state_dict_holds_the_annealed_temperature_only() -> None:
    fresh = DyMN(width_mult=WIDTH)
    assert TEMPERATURE_KEY not in fresh.state_dict()  # EfficientAT / ssondo key set unchanged
    model = annealed_student().model
    assert model.temperature == FINAL
    sd = model.state_dict()
    assert float(sd[TEMPERATURE_KEY]) == FINAL
    fresh.load_state_dict(sd, strict=True)
    assert fresh.temperature == FINAL
    # A state dict without the entry means the constructor's temperature, also for an annealed model.
    model.load_state_dict(DyMN(width_mult=WIDTH).state_dict(), strict=True)
    assert model.temperature == START
    bad = dict(sd)
    bad[TEMPERATURE_KEY] = torch.tensor(float("nan"))
    with pytest.raises(RuntimeError, match=TEMPERATURE_KEY):
        DyMN(width_mult=WIDTH).load_state_dict(bad)


@pytest.mark.parametrize("weights", ["trained", "ema"])
def test_load_distill_checkpoint_rebuilds_at_the_final_temperature(tmp_path: Path, weights: str) -> None:
    student = annealed_student()
    write_distill_checkpoint(tmp_path / "last.ckpt", student)
    loaded = load_distill_checkpoint(tmp_path / "last.ckpt", weights=weights)
    assert loaded.student.model.temperature == FINAL
    x = _logmel()
    with torch.no_grad():
        want = student(x)[1]
        got = loaded.student(x)[1]
        hot = build_student_from_section(STUDENT_CFG, TEACHER_DIM, pretrained=False).eval()
        hot.load_state_dict(loaded.student.state_dict())
        hot.model.set_temperature(START)
        at_start = hot(x)[1]
    assert torch.equal(got, want)
    assert (at_start - want).abs().max().item() > 0.1  # the temperature matters for these weights


def test_checkpoint_without_the_entry_loads_at_the_start_temperature(tmp_path: Path) -> None:
    write_distill_checkpoint(tmp_path / "old.ckpt", annealed_student(), drop_temperature=True)
    assert load_distill_checkpoint(tmp_path / "old.ckpt").student.model.temperature == START


@pytest.mark.slow
def test_ssondo_runs_the_export_at_the_final_temperature(tmp_path: Path) -> None:
    ssondo = pytest.importorskip("ssondo")
    from ssondo.models.dymn.dy_block import DynamicConv as SsondoDynamicConv

    write_distill_checkpoint(tmp_path / "last.ckpt", annealed_student())
    loaded = load_distill_checkpoint(tmp_path / "last.ckpt")
    # As the export stage builds it: from the run config, whose temperature is the start one.
    training_config = ssondo_training_config(
        "dymn", STUDENT_CFG["kwargs"], teacher_dim=TEACHER_DIM, hidden_dim=STUDENT_CFG["projector_hidden"]
    )
    assert training_config["student_model"]["pretrain_final_temp"] == START
    out = tmp_path / "export"
    files = export_student(out, loaded.student, training_config, onnx=False)
    written = torch.load(files["ssondo_ckpt"], weights_only=True)
    assert written["training_config"]["student_model"]["pretrain_final_temp"] == FINAL
    assert not any(k.endswith(TEMPERATURE_KEY) for k in written["state_dict"])
    assert load_safetensors(out).model.temperature == FINAL

    theirs = ssondo.get_ssondo(str(files["ssondo_ckpt"]))  # strict load inside
    temps = {m.temperature for m in theirs.modules() if isinstance(m, SsondoDynamicConv)}
    assert temps == {FINAL}
    ours_ckpt = get_ssondo(files["ssondo_ckpt"], tail="drop")
    ours_dir = get_ssondo(str(out), tail="drop")
    assert ours_ckpt.student.model.temperature == ours_dir.student.model.temperature == FINAL
    x = audio(1, 10.0)  # ssondo's DyMN handles one segment
    with torch.no_grad():
        a, b, c = theirs(x), ours_ckpt(x), ours_dir(x)
        ours_ckpt.student.model.set_temperature(START)
        at_start = ours_ckpt(x)
    assert a.shape == b.shape == c.shape == (1, 1, loaded.student.emb_size)
    assert (a - b).abs().max().item() <= 1e-5
    assert (a - c).abs().max().item() <= 1e-5
    assert (a - at_start).abs().max().item() > 0.1  # what ssondo computed before the fix
