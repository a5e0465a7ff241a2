"""get_ssondo / SsondoModel: loading, shapes, padding, resampling, input checks, freezing, heads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from torch import nn

from ssondo_train.export import (
    PreprocessSpec,
    UnsafeCheckpointError,
    backbone_spec_from_ssondo_config,
    save_head,
    save_safetensors,
    ssondo_training_config,
    write_ssondo_checkpoint,
)
from ssondo_train.inference import SsondoModel, get_ssondo, list_heads, list_models
from tests.golden import training_config
from tests.inference.helpers import SHORT, audio, golden_student

SR = 32_000
WIN = SHORT.window_samples  # 1-s windows keep these tests fast


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    """Equal up to float32 noise (different batch/segment counts pick different conv kernels)."""
    return a.shape == b.shape and (a - b).abs().max().item() <= rel * max(1.0, b.abs().max().item())


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Golden mn10 exported twice: safetensors folder and an ssondo.ckpt, both with 1-s windows."""
    root = tmp_path_factory.mktemp("export")
    student = golden_student("mn10")
    name, kwargs = backbone_spec_from_ssondo_config(training_config("mn10"))
    save_safetensors(root, student, {"backbone": {"name": name, "kwargs": kwargs}, "preprocess": SHORT})
    write_ssondo_checkpoint(
        root / "ssondo.ckpt", student, ssondo_training_config(name, kwargs, preprocess=SHORT)
    )
    return root


@pytest.fixture(scope="module")
def model(export_dir: Path) -> SsondoModel:
    return get_ssondo(export_dir)


def test_registry_names_match_ssondo() -> None:
    assert list(list_models()) == [
        "matpac-mobilenetv3",
        "matpac-dymn",
        "matpac-eres2net",
        "m2d-mobilenetv3",
        "m2d-dymn",
        "m2d-eres2net",
    ]
    assert list(list_heads()) == ["gtzan", "openmic", "nsynth", "esc50", "us8k", "magna-tag-a-tune", "fsd50k"]
    ssondo = pytest.importorskip("ssondo")
    assert ssondo.list_models() == list_models() and ssondo.list_heads() == list_heads()


def test_import_stays_light() -> None:
    code = (
        "import sys, ssondo_train; ssondo_train.get_ssondo; "
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'hydra', 'wandb') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_every_source_gives_the_same_model(export_dir: Path, model: SsondoModel, tmp_path: Path) -> None:
    x = audio(2, 2.0)
    ckpt_dir = tmp_path / "ckpt_only"
    ckpt_dir.mkdir()
    shutil.copy(export_dir / "ssondo.ckpt", ckpt_dir / "ssondo.ckpt")
    with torch.no_grad():
        ref = model(x)
        for source in (export_dir / "model.safetensors", export_dir / "ssondo.ckpt", ckpt_dir):
            assert torch.equal(get_ssondo(source)(x), ref), source
    with pytest.raises(ValueError, match="available models: matpac-mobilenetv3"):
        get_ssondo("no-such-model")


def test_shapes_and_parts(model: SsondoModel) -> None:
    assert not model.training and model.embedding_dim == 960 and model.projection_dim == 3840
    assert model.backbone is model.student.model and model.projector is model.student.classification_head
    with torch.no_grad():
        assert model(audio(1, 2.0)[0]).shape == (1, 2, 960)  # 1-D input gets a batch dim
        seg = model(audio(3, 2.0))
        emb = model.get_embeddings(audio(3, 2.0))
        proj = model.project(audio(3, 2.0))
    assert seg.shape == (3, 2, 960) and emb.shape == (3, 960) and proj.shape == (3, 3840)
    assert torch.allclose(emb, seg.mean(1)) and torch.allclose(proj, model.projector(seg))
    assert model.preprocess(audio(1, 2.0)).shape == (1, 2, 128, 1 + (WIN - 1024) // 512)


def test_short_audio_is_one_padded_segment(model: SsondoModel) -> None:
    x = audio(2, 0.3)
    padded = torch.nn.functional.pad(x, (0, WIN - x.shape[1]))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 1, 960)
        assert torch.equal(out, model(padded))
    model.tail = "drop"
    try:
        with pytest.raises(ValueError, match="shorter than one window"):
            model(x)
    finally:
        model.tail = "pad"


def test_trailing_remainder_is_a_padded_segment(export_dir: Path, model: SsondoModel) -> None:
    x = audio(1, 2.5)
    dropper = get_ssondo(export_dir, tail="drop")
    with torch.no_grad():
        padded, dropped = model(x), dropper(x)
        last = model(x[:, 2 * WIN :])
    assert padded.shape == (1, 3, 960) and dropped.shape == (1, 2, 960)
    assert close(padded[:, :2], dropped)
    assert close(padded[:, 2:], last)
    assert (padded[:, 2] - padded[:, 1]).abs().max() > 1e-3  # the tail is real content, not a copy


@pytest.mark.slow
def test_dymn_handles_several_segments(tmp_path: Path) -> None:
    student = golden_student("dymn10")
    name, kwargs = backbone_spec_from_ssondo_config(training_config("dymn10"))
    save_safetensors(tmp_path, student, {"backbone": {"name": name, "kwargs": kwargs}, "preprocess": SHORT})
    model = get_ssondo(tmp_path)
    assert model.backbone.temperature == 30.0
    x = audio(1, 2.5, seed=4)
    with torch.no_grad():
        out = model(x)
        singles = [model(x[:, i * WIN : (i + 1) * WIN]) for i in range(3)]
    assert out.shape == (1, 3, 960)
    for i, single in enumerate(singles):
        assert close(out[:, i], single[:, 0]), i


def test_other_sample_rates_are_resampled(export_dir: Path, model: SsondoModel) -> None:
    x16 = audio(2, 1.7, sr=16_000)
    at16 = get_ssondo(export_dir, sample_rate=16_000)
    with torch.no_grad():
        got = at16(x16)
        expected = model(AF.resample(x16, 16_000, SR))
        wrong = model(x16)  # the same samples read as 32 kHz
    assert got.shape == (2, 2, 960) and wrong.shape == (2, 1, 960)
    assert torch.equal(got, expected)


def test_input_validation(model: SsondoModel) -> None:
    with pytest.raises(ValueError, match=r"mono \(n,\) or \(batch, n\).*\(2, 1, 32000\)"):
        model(torch.zeros(2, 1, SR))
    with pytest.raises(TypeError, match="floating point.*int16"):
        model(torch.zeros(1, SR, dtype=torch.int16))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(0))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(3, 0))
    bad = audio(1, 1.0)
    bad[0, 100] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(bad)
    with pytest.raises(TypeError, match="torch.Tensor or numpy"):
        model([0.0] * SR)
    x = audio(1, 1.0)
    with torch.no_grad():  # numpy and float64 are accepted and equal to float32 tensors
        assert torch.equal(model(x.numpy()), model(x))
        assert torch.equal(model(x.double()), model(x))


def test_normalisation_is_applied(export_dir: Path, tmp_path: Path) -> None:
    spec = PreprocessSpec(window_s=1.0, hop_s=1.0, norm_mean=-2.0, norm_std=3.0)
    student = golden_student("mn10")
    name, kwargs = backbone_spec_from_ssondo_config(training_config("mn10"))
    save_safetensors(tmp_path, student, {"backbone": {"name": name, "kwargs": kwargs}, "preprocess": spec})
    x = audio(1, 1.0)
    with torch.no_grad():
        raw = get_ssondo(export_dir).preprocess(x)
        normed = get_ssondo(tmp_path).preprocess(x)
    assert torch.allclose(normed, (raw + 2.0) / 3.0, atol=1e-6)


def test_freeze_backbone_keeps_batchnorm_statistics(export_dir: Path) -> None:
    model = get_ssondo(export_dir, head="linear", n_classes=5)
    bn = next(m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    x = audio(2, 1.0)

    model.train()  # control: without freezing, a train-mode forward moves the running statistics
    before = bn.running_mean.clone()
    model(x)
    assert not torch.equal(bn.running_mean, before)

    model.freeze_backbone()
    model.train()
    assert model.training and model.head.training
    assert not model.backbone.training and not model.projector.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not any(p.requires_grad for p in model.projector.parameters())
    frozen_stats = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    loss = model(x).square().mean()
    loss.backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    assert all(torch.equal(v, frozen_stats[k]) for k, v in model.backbone.state_dict().items())

    model.unfreeze_backbone()
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())
    model.freeze_backbone(projector=False)
    assert (
        any(p.requires_grad for p in model.projector.parameters()) and model.eval().train().projector.training
    )


def test_fresh_heads(export_dir: Path) -> None:
    with pytest.raises(ValueError, match="needs n_classes"):
        get_ssondo(export_dir, head="linear")
    with pytest.raises(ValueError, match="head must be"):
        get_ssondo(export_dir, head="esc51")
    linear = get_ssondo(export_dir, head="linear", n_classes=7)
    mlp = get_ssondo(export_dir, head="mlp", n_classes=7, hidden_sizes=[32, 16])
    assert [m.out_features for m in mlp.head if isinstance(m, nn.Linear)] == [32, 16, 7]
    x = audio(2, 1.5)
    with torch.no_grad():
        assert linear(x).shape == mlp(x).shape == (2, 7)
        assert torch.equal(linear(x), linear.head(linear.get_embeddings(x)))


def test_head_file(export_dir: Path, model: SsondoModel, tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = nn.Linear(960, 4)
    path = save_head(tmp_path / "task.pth", head, {"task": "toy", "classes": ["a", "b", "c", "d"]})["head"]
    with_head = get_ssondo(export_dir, head=str(path))
    assert with_head.meta["head"]["classes"] == ["a", "b", "c", "d"]
    x = audio(2, 1.0)
    with torch.no_grad():
        assert torch.allclose(with_head(x), head(model.get_embeddings(x)), atol=1e-6)
    with pytest.raises(ValueError, match="n_classes=3 but head"):
        get_ssondo(export_dir, head=str(path), n_classes=3)
    save_head(tmp_path / "wide.pth", nn.Linear(1024, 4))
    with pytest.raises(ValueError, match="expects 1024-d"):
        get_ssondo(export_dir, head=str(tmp_path / "wide.pth"))


def test_malicious_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save(
        {"training_config": training_config("mn10"), "state_dict": {}, "loops": Payload()},
        tmp_path / "evil.ckpt",
    )
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        get_ssondo(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_device_and_determinism(model: SsondoModel) -> None:
    x = audio(1, 1.0)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert np.isfinite(model(x).detach().numpy()).all()


def test_chunked_evaluation_equals_one_call(model: SsondoModel) -> None:
    x = audio(3, 2.0, seed=5)
    outs = {}
    try:
        for chunk in (None, 1, 4):
            model.chunk_size = chunk
            with torch.no_grad():
                outs[chunk] = model(x)
        model.train()  # training-mode backbones see the whole batch (BatchNorm statistics)
        assert len(model._chunks(torch.zeros(3, 2, 5))) == 1
    finally:
        model.chunk_size = 4
        model.eval()
    assert outs[None].shape == (3, 2, 960)
    assert close(outs[1], outs[None]) and close(outs[4], outs[None])
    with pytest.raises(ValueError, match="chunk_size"):
        SsondoModel(model.student, chunk_size=0)
