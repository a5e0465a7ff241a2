"""Export formats: S-SONDO checkpoint, safetensors + config.json, heads, target-norm folding, safe loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ssondo_train.export import (
    FORMAT_NAME,
    PreprocessSpec,
    UnsafeCheckpointError,
    backbone_spec_from_ssondo_config,
    export_student,
    fold_target_norm,
    load_export_config,
    load_head,
    load_safetensors,
    load_ssondo_checkpoint,
    safe_torch_load,
    save_head,
    save_safetensors,
    ssondo_training_config,
    write_ssondo_checkpoint,
)
from ssondo_train.students import Projector, build_student_with_projector
from tests.golden import training_config
from tests.inference.helpers import SHORT, golden_student


@pytest.fixture(scope="module")
def mn10():
    return golden_student("mn10")


@pytest.fixture(scope="module")
def logmel() -> torch.Tensor:
    return torch.randn(2, 2, 128, 61, generator=torch.Generator().manual_seed(3))


class _Payload:
    """Unpickling this runs ``touch <marker>``: the shape of a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


# ------------------------------------------------------------------------------------ target norm
def test_fold_target_norm_outputs_teacher_space() -> None:
    torch.manual_seed(0)
    proj = Projector(16, 8, 12).eval()
    mean, std = torch.randn(8), torch.rand(8) + 0.5
    folded = fold_target_norm(proj, mean, std).eval()
    x = torch.randn(3, 4, 16)
    with torch.no_grad():
        expected = proj(x) * std + mean
        got = folded(x)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(got, proj(x), atol=1e-2)  # the fold changed something
    # scalars broadcast
    scalar = fold_target_norm(proj, 2.0, 3.0)
    with torch.no_grad():
        assert torch.allclose(scalar(x), proj(x) * 3.0 + 2.0, atol=1e-5)
    with pytest.raises(ValueError, match="scalars or"):
        fold_target_norm(proj, torch.zeros(7), torch.ones(7))


def test_fold_target_norm_leaves_input_unchanged() -> None:
    proj = Projector(4, 3, 5)
    before = {k: v.clone() for k, v in proj.state_dict().items()}
    fold_target_norm(proj, torch.ones(3), torch.full((3,), 2.0))
    assert all(torch.equal(before[k], v) for k, v in proj.state_dict().items())


# --------------------------------------------------------------------------------- training_config
@pytest.mark.parametrize("golden", ["mn10", "dymn10", "eres2net"])
def test_ssondo_training_config_matches_upstream_layout(golden: str) -> None:
    ref = training_config(golden)
    name, kwargs = backbone_spec_from_ssondo_config(ref)
    ours = ssondo_training_config(name, kwargs)
    assert ours["preprocess"] == {**ref["preprocess"], "normalize": {"mean": 0.0, "std": 1.0}}
    for key, value in ref["student_model"].items():
        if key != "pretrained_name":
            assert ours["student_model"][key] == value, key
    head = {k: v for k, v in ref["classification_head"].items() if k != "hidden_features_size"}
    assert ours["classification_head"] == {**head, "hidden_features_size": 1280}


def test_ssondo_training_config_rejects_what_ssondo_cannot_express() -> None:
    with pytest.raises(ValueError, match="dyconv_k"):
        ssondo_training_config("dymn", {"dyconv_k": 2})
    with pytest.raises(ValueError, match="unknown student"):
        ssondo_training_config("resnet")
    with pytest.raises(ValueError, match="unknown kwargs"):
        ssondo_training_config("mobilenetv3", {"depth": 3})
    # training-only kwargs are fine
    assert (
        ssondo_training_config("dymn", {"bn_momentum": 0.1, "temperature": 12.0})["student_model"][
            "pretrain_final_temp"
        ]
        == 12.0
    )


def test_preprocess_spec_round_trips_through_ssondo_config() -> None:
    spec = PreprocessSpec(window_s=2.0, hop_s=1.0, n_mels=64, f_min=20.0, norm_mean=-4.0, norm_std=2.0)
    cfg = ssondo_training_config("eres2net", {"feat_dim": 64}, preprocess=spec)
    assert PreprocessSpec.from_ssondo_config(cfg) == spec
    assert spec.window_samples == 64_000 and spec.hop_samples == 32_000
    with pytest.raises(ValueError, match="norm_std"):
        PreprocessSpec(norm_std=0.0)


# ---------------------------------------------------------------------------------- ssondo checkpoint
def test_ssondo_checkpoint_round_trip(mn10, logmel, tmp_path: Path) -> None:
    path = write_ssondo_checkpoint(tmp_path / "s.ckpt", mn10, training_config("mn10"))
    raw = torch.load(path, weights_only=True)  # plain values and tensors only
    assert set(raw) >= {"training_config", "state_dict"}
    assert len(raw["state_dict"]) == 312  # upstream's measured count for MobileNetV3
    assert all(k.startswith("student_model.") for k in raw["state_dict"])
    loaded, cfg = load_ssondo_checkpoint(path)
    assert cfg == training_config("mn10")
    with torch.no_grad():
        for a, b in zip(loaded(logmel), mn10(logmel), strict=True):
            assert torch.equal(a, b)


def test_ssondo_checkpoint_refuses_mismatched_config(mn10, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not describe this student"):
        write_ssondo_checkpoint(tmp_path / "x.ckpt", mn10, training_config("eres2net"))
    # ssondo sizes the projector hidden layer from last_channel: a 512-wide one would not load there
    odd = build_student_with_projector("mobilenetv3", hidden_dim=512)
    cfg = ssondo_training_config("mobilenetv3", hidden_dim=512)
    with pytest.raises(ValueError, match="last_channel"):
        write_ssondo_checkpoint(tmp_path / "y.ckpt", odd, cfg)
    assert not (tmp_path / "x.ckpt").exists() and not (tmp_path / "y.ckpt").exists()


# ------------------------------------------------------------------------------------------ safetensors
def test_safetensors_round_trip(mn10, logmel, tmp_path: Path) -> None:
    name, kwargs = backbone_spec_from_ssondo_config(training_config("mn10"))
    files = save_safetensors(
        tmp_path / "exp",
        mn10,
        {
            "backbone": {"name": name, "kwargs": kwargs},
            "preprocess": SHORT,
            "teacher": {"name": "m2d", "dim": 3840},
            "target_norm_folded": True,
        },
    )
    assert {p.name for p in files.values()} == {"model.safetensors", "config.json"}
    with open(files["safetensors"], "rb") as fh:  # safetensors: 8-byte header length then a JSON header
        header_len = int.from_bytes(fh.read(8), "little")
        assert json.loads(fh.read(header_len))["__metadata__"]["ssondo_train_format"] == FORMAT_NAME
    cfg = load_export_config(tmp_path / "exp")
    assert cfg["format"] == FORMAT_NAME and cfg["format_version"] == 1
    assert cfg["backbone"] == {"name": "mobilenetv3", "kwargs": kwargs, "emb_size": 960}
    assert cfg["projector"] == {"in_dim": 960, "hidden_dim": 1280, "out_dim": 3840, "dropout": 0.2}
    assert PreprocessSpec.from_dict(cfg["preprocess"]) == SHORT
    assert cfg["teacher"] == {"name": "m2d", "dim": 3840} and cfg["target_norm_folded"] is True
    loaded = load_safetensors(tmp_path / "exp")
    assert not loaded.training
    for key, value in mn10.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(loaded(logmel)[1], mn10(logmel)[1])


def test_safetensors_keeps_dymn_temperature(tmp_path: Path) -> None:
    student = build_student_with_projector("dymn", teacher_dim=32, temperature=7.0)
    save_safetensors(tmp_path, student, {"backbone": {"name": "dymn", "kwargs": {"temperature": 7.0}}})
    assert load_safetensors(tmp_path).model.temperature == 7.0
    with pytest.raises(ValueError, match="does not rebuild"):
        save_safetensors(tmp_path / "bad", student, {"backbone": {"name": "mobilenetv3", "kwargs": {}}})


# ----------------------------------------------------------------------------------------------- heads
def test_head_round_trip_in_ssondo_format(tmp_path: Path) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(960, 50)
    files = save_head(tmp_path / "heads" / "esc50.pth", linear, {"task": "esc50", "classes": ["dog"] * 50})
    raw = torch.load(files["head"], weights_only=True)
    assert set(raw) == {"probe.linear_probe.weight", "probe.linear_probe.bias"}
    assert raw["probe.linear_probe.weight"].shape == (50, 960)
    loaded, meta = load_head(files["head"])
    assert torch.equal(loaded.weight, linear.weight) and torch.equal(loaded.bias, linear.bias)
    assert meta["task"] == "esc50" and meta["n_classes"] == 50 and meta["in_dim"] == 960
    torch.save({"weight": torch.zeros(2, 3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a head file"):
        load_head(tmp_path / "other.pth")


# ----------------------------------------------------------------------------------------- safe load
def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    for name, obj in {
        "evil.ckpt": {"training_config": {}, "state_dict": {}, "callbacks": _Payload(marker)},
        "evil_head.pth": {"probe.linear_probe.weight": torch.zeros(2, 3), "x": _Payload(marker)},
    }.items():
        torch.save(obj, tmp_path / name)
    with pytest.raises(UnsafeCheckpointError, match="refused to load.*system"):
        load_ssondo_checkpoint(tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeCheckpointError):
        load_head(tmp_path / "evil_head.pth")
    assert not marker.exists()
    # the payload is real: an unsafe load does run it
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert marker.exists()


def test_safe_load_accepts_lightning_style_values(tmp_path: Path) -> None:
    obj = {
        "state_dict": {"a": torch.ones(2)},
        "strides": (2, 2),
        "score": np.float64(0.5),
        "dirpath": Path("runs/x"),
        "dtype": np.dtype("float32"),
    }
    torch.save(obj, tmp_path / "ok.ckpt")
    back = safe_torch_load(tmp_path / "ok.ckpt")
    assert back["strides"] == (2, 2) and float(back["score"]) == 0.5 and back["dirpath"] == Path("runs/x")
    with pytest.raises(FileNotFoundError):
        safe_torch_load(tmp_path / "missing.ckpt")


# ------------------------------------------------------------------------------------------ bundle
def test_export_student_writes_every_artefact(mn10, logmel, tmp_path: Path) -> None:
    mean, std = torch.randn(3840), torch.rand(3840) + 0.5
    heads = {"esc50": nn.Linear(960, 50), "us8k": (nn.Linear(960, 10), {"classes": list("abcdefghij")})}
    files = export_student(
        tmp_path, mn10, training_config("mn10"), {"name": "matpac"}, mean, std, heads, onnx=False
    )
    assert {k: p.relative_to(tmp_path).as_posix() for k, p in files.items()} == {
        "ssondo_ckpt": "ssondo.ckpt",
        "safetensors": "model.safetensors",
        "config": "config.json",
        "heads/esc50": "heads/esc50.pth",
        "heads/esc50.json": "heads/esc50.json",
        "heads/us8k": "heads/us8k.pth",
        "heads/us8k.json": "heads/us8k.json",
    }
    with torch.no_grad():
        expected = mn10(logmel)[0] * std + mean
        from_ckpt = load_ssondo_checkpoint(files["ssondo_ckpt"])[0](logmel)[0]
        from_st = load_safetensors(tmp_path)(logmel)[0]
    assert torch.allclose(from_ckpt, expected, atol=1e-4 * expected.abs().max().item())
    assert torch.equal(from_ckpt, from_st)
    cfg = load_export_config(tmp_path)
    assert cfg["target_norm_folded"] is True and cfg["heads"] == ["esc50", "us8k"]
    assert cfg["teacher"] == {"name": "matpac"}
    assert load_head(files["heads/us8k"])[1]["classes"] == list("abcdefghij")
    with pytest.raises(ValueError, match="both"):
        export_student(tmp_path / "b", mn10, training_config("mn10"), target_mean=mean)
