"""MATPAC++ teacher against the golden fixtures, loaded through the real path (torch.save -> load_matpac)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssondo_train.teachers import CheckpointFormatError, MATPACTeacher, load_matpac
from ssondo_train.teachers.checkpoint import sha256_file
from tests.golden import assert_close, expected, golden_state_dict
from tests.teachers._golden_vit import run_all_outputs

pytestmark = pytest.mark.slow
GOLDEN = expected("matpac")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("matpac") / "matpac_plus_6s_2048_enconly.pt"
    torch.save(golden_state_dict("matpac"), path)
    return path


@pytest.fixture(scope="module")
def teacher(checkpoint) -> MATPACTeacher:
    return load_matpac(checkpoint)


@pytest.fixture(scope="module")
def outputs(teacher: MATPACTeacher) -> dict[str, np.ndarray]:
    return run_all_outputs(teacher)


def test_every_golden_array_is_checked(outputs):
    assert sorted(outputs) == sorted(GOLDEN)


@pytest.mark.parametrize("array", sorted(GOLDEN))
def test_matches_golden(outputs, array):
    assert_close(outputs[array], "matpac", array, GOLDEN[array])


def test_layout_and_metadata(teacher, checkpoint, outputs):
    assert outputs["lms_10s"].shape == (1, 80, 998)
    assert outputs["frames_last_10s"].shape == (1, 63, 3840)
    # The MATPAC wrapper keeps the window axis on inputs longer than 10 s.
    assert outputs["emb_13s7_wrapper_sliced"].shape == (1, 2, 3840)
    sliced_layers, sliced_emb = outputs["layers_13s7_wrapper_sliced"], outputs["emb_13s7_wrapper_sliced"]
    np.testing.assert_array_equal(sliced_layers[:, -1], sliced_emb)
    meta = teacher.metadata()
    assert meta["name"] == "matpac" and meta["embed_dim"] == 3840 and meta["num_layers"] == 12
    assert meta["checkpoint_sha256"] == sha256_file(checkpoint)


def test_inference_model_state_dict_layout_is_accepted(tmp_path, teacher):
    """The 152-key layout of MATPAC's own inference model (150 + two front-end buffers) loads too."""
    import torchaudio

    state = golden_state_dict("matpac")
    state["log_mel.MelSpectrogram.spectrogram.window"] = torch.hann_window(400)
    state["log_mel.MelSpectrogram.mel_scale.fb"] = torchaudio.functional.melscale_fbanks(
        201, 50.0, 8000.0, 80, 16000, norm="slaney", mel_scale="slaney"
    )
    path = tmp_path / "model_state.pt"
    torch.save(state, path)
    other = load_matpac(path)
    for key, value in teacher.encoder.state_dict().items():
        torch.testing.assert_close(other.encoder.state_dict()[key], value, rtol=0, atol=0)

    state["log_mel.MelSpectrogram.mel_scale.fb"] = state["log_mel.MelSpectrogram.mel_scale.fb"] * 1.01
    torch.save(state, path)
    with pytest.raises(CheckpointFormatError, match="mel_scale.fb"):
        load_matpac(path)


def test_embed_and_layers_agree(outputs):
    np.testing.assert_allclose(outputs["layers_10s"][:, -1], outputs["emb_10s"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(outputs["frames_last_10s"].mean(1), outputs["emb_10s"], rtol=0, atol=1e-6)
