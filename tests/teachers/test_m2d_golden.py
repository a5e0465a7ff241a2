"""M2D teacher against the golden fixtures, loaded through the real path (torch.save -> load_m2d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssondo_train.teachers import M2DTeacher, load_m2d
from ssondo_train.teachers.checkpoint import sha256_file
from tests.golden import assert_close, expected, golden_input, golden_state_dict
from tests.teachers._golden_vit import run_all_outputs

pytestmark = pytest.mark.slow
GOLDEN = expected("m2d")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("m2d") / "M2D_ssl.pth"
    torch.save(golden_state_dict("m2d"), path)
    return path


@pytest.fixture(scope="module")
def teacher(checkpoint) -> M2DTeacher:
    return load_m2d(checkpoint)


@pytest.fixture(scope="module")
def outputs(teacher: M2DTeacher) -> dict[str, np.ndarray]:
    return run_all_outputs(teacher)


def test_every_golden_array_is_checked(outputs):
    assert sorted(outputs) == sorted(GOLDEN)


@pytest.mark.parametrize("array", sorted(GOLDEN))
def test_matches_golden(outputs, array):
    # lms_* are stored with the channel axis the encoder adds: (1, 1, 80, T).
    ours = outputs[array].reshape(GOLDEN[array].shape) if array.startswith("lms") else outputs[array]
    assert_close(ours, "m2d", array, GOLDEN[array])


def test_layout_and_metadata(teacher, checkpoint, outputs):
    assert outputs["lms_10s"].shape == (1, 80, 1001)
    assert outputs["frames_last_10s"].shape == (1, 63, 3840)
    meta = teacher.metadata()
    assert meta["name"] == "m2d" and meta["embed_dim"] == 3840 and meta["sample_rate"] == 16000
    assert meta["checkpoint_sha256"] == sha256_file(checkpoint)
    assert meta["norm_stats"] == pytest.approx([-7.1, 4.2])
    assert meta["pooling"] == "mean_time" and meta["layer"] == -1


def test_nested_prefixed_checkpoint_without_norm_stats(tmp_path, teacher):
    """Full-checkpoint layout: weights under "model", runtime prefix, no norm_stats (-> default)."""
    state = golden_state_dict("m2d")
    del state["norm_stats"]
    path = tmp_path / "ckpt.pth"
    torch.save({"model": {"module.ar.runtime.backbone." + k: v for k, v in state.items()}}, path)
    other = load_m2d(path)
    assert other.norm_stats == pytest.approx((-7.1, 4.2))
    for key, value in teacher.encoder.state_dict().items():
        torch.testing.assert_close(other.encoder.state_dict()[key], value, rtol=0, atol=0)


def test_embed_frames_and_layers_agree(teacher, outputs):
    x = torch.from_numpy(golden_input("teacher_input_16k_10s"))
    np.testing.assert_allclose(teacher.frames(x).numpy(), outputs["frames_last_10s"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["layers_10s"][:, -1], outputs["emb_10s"], rtol=0, atol=1e-6)
