"""ONNX export: conv-DFT log-mel equals the torch.stft front-end; ONNX Runtime equals PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssondo_train.export import PreprocessSpec, export_onnx
from ssondo_train.export.onnx_graph import DftLogMel
from ssondo_train.inference import SsondoModel
from ssondo_train.students import StudentFrontEnd
from tests.inference.helpers import audio, golden_student

ort = pytest.importorskip("onnxruntime")


def _rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| scaled by max(1, max |ref|): float32 error grows with the output scale."""
    return float(np.abs(ours - ref).max() / max(1.0, float(np.abs(ref).max())))


def test_dft_logmel_matches_stft_frontend() -> None:
    spec = PreprocessSpec()
    wav = audio(2, 1.5, seed=1)
    with torch.no_grad():
        ref = StudentFrontEnd()(wav)
        ours = DftLogMel(spec)(wav)
    assert ours.shape == ref.shape == (2, 128, 1 + (48_000 - 1024) // 512)
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.slow
def test_onnx_waveform_matches_pytorch(tmp_path: Path) -> None:
    student = golden_student("mn10")
    path = export_onnx(tmp_path / "model.onnx", student)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["waveform"]
    assert [o.name for o in sess.get_outputs()] == ["embedding", "projection", "segment_embeddings"]
    meta = sess.get_modelmeta().custom_metadata_map
    assert meta["input"] == "waveform" and meta["embedding_dim"] == "960"
    assert PreprocessSpec.from_dict(json.loads(meta["preprocess"])) == PreprocessSpec()
    model = SsondoModel(student).eval()  # PyTorch reference: torch.stft front-end, tail="pad"
    errors = []
    for batch, seconds in [(1, 10.0), (3, 10.0), (1, 13.0), (3, 4.0)]:
        wav = audio(batch, seconds, seed=batch)
        emb, proj, seg = sess.run(None, {"waveform": wav.numpy()})
        with torch.no_grad():
            ref_seg = model(wav)
            ref_proj = model.project(wav)
        n_seg = max(1, int(np.ceil(seconds / 10)))
        assert seg.shape == (batch, n_seg, 960) and emb.shape == (batch, 960) and proj.shape == (batch, 3840)
        errors += [
            _rel_err(seg, ref_seg.numpy()),
            _rel_err(emb, ref_seg.mean(1).numpy()),
            _rel_err(proj, ref_proj.numpy()),
        ]
    assert max(errors) < 1e-4, errors


@pytest.mark.slow
def test_onnx_logmel_input(tmp_path: Path) -> None:
    student = golden_student("mn10")
    path = export_onnx(tmp_path / "lm.onnx", student, input="logmel")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 128, 624), (2, 3, 128, 624)]:
        logmel = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0])) - 3.0
        emb, proj, seg = sess.run(None, {"logmel": logmel.numpy()})
        with torch.no_grad():
            ref_proj, ref_seg = student(logmel)
        assert seg.shape == (shape[0], shape[1], 960)
        assert _rel_err(seg, ref_seg.numpy()) < 1e-4 and _rel_err(proj, ref_proj.numpy()) < 1e-4


def test_onnx_rejects_overlapping_windows(tmp_path: Path) -> None:
    from ssondo_train.students import build_student_with_projector

    with pytest.raises(ValueError, match="non-overlapping"):
        export_onnx(
            tmp_path / "x.onnx",
            build_student_with_projector("mobilenetv3", teacher_dim=8),
            preprocess=PreprocessSpec(window_s=2.0, hop_s=1.0),
        )
    assert not (tmp_path / "x.onnx").exists()


def test_dymn_is_refused(tmp_path: Path) -> None:
    from ssondo_train.students import build_student_with_projector

    with pytest.raises(NotImplementedError, match="DyMN"):
        export_onnx(tmp_path / "d.onnx", build_student_with_projector("dymn", teacher_dim=16))
    assert not (tmp_path / "d.onnx").exists()


@pytest.mark.slow
def test_bundle_skips_onnx_for_dymn(tmp_path: Path) -> None:
    from ssondo_train.export import export_student, ssondo_training_config
    from ssondo_train.students import build_student_with_projector

    student = build_student_with_projector("dymn", teacher_dim=16)
    files = export_student(tmp_path / "bundle", student, ssondo_training_config("dymn", teacher_dim=16))
    assert "onnx" not in files and not (tmp_path / "bundle" / "model.onnx").exists()
    assert files["safetensors"].is_file() and files["ssondo_ckpt"].is_file()
    with pytest.raises(NotImplementedError):
        export_student(
            tmp_path / "strict", student, ssondo_training_config("dymn", teacher_dim=16), onnx=True
        )


@pytest.mark.slow
def test_bundle_onnx_outputs_teacher_space(tmp_path: Path) -> None:
    from ssondo_train.export import backbone_spec_from_ssondo_config, export_student, ssondo_training_config
    from tests.golden import training_config

    student = golden_student("mn10")
    name, kwargs = backbone_spec_from_ssondo_config(training_config("mn10"))
    mean, std = torch.randn(3840), torch.rand(3840) + 0.5
    files = export_student(tmp_path, student, ssondo_training_config(name, kwargs), None, mean, std)
    sess = ort.InferenceSession(str(files["onnx"]), providers=["CPUExecutionProvider"])
    wav = audio(1, 10.0)
    proj = sess.run(["projection"], {"waveform": wav.numpy()})[0]
    with torch.no_grad():
        expected = SsondoModel(student).project(wav) * std + mean
    assert _rel_err(proj, expected.numpy()) < 1e-4
