"""Whisper tiny.en teacher: CTranslate2 model.bin reader, front-end, and a cross-check against ctranslate2."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from ssondo_train.teachers import CheckpointFormatError, WhisperTeacher, build_teacher
from ssondo_train.teachers.ct2 import read_ct2_model
from ssondo_train.teachers.frontend import slaney_mel_filterbank
from ssondo_train.teachers.whisper import default_whisper_model_path, load_whisper

SR = 16000


def _signal(seconds: float, f0: float, f1: float, tone: float, seed: int) -> np.ndarray:
    """Log chirp + tone + -30 dB noise, peak 0.5 (like the golden teacher inputs)."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    dur, k = n / SR, f1 / f0
    x = np.sin(2 * np.pi * f0 * dur / np.log(k) * (k ** (t / dur) - 1)) + 0.5 * np.sin(2 * np.pi * tone * t)
    x += 10 ** (-30 / 20) * np.random.default_rng(seed).standard_normal(n)
    return (x * 0.5 / np.abs(x).max()).astype(np.float32)


@pytest.fixture(scope="module")
def model_bin():
    return default_whisper_model_path() / "model.bin"


@pytest.fixture(scope="module")
def teacher() -> WhisperTeacher:
    return load_whisper()


def test_reader_parses_the_wheel(model_bin):
    model = read_ct2_model(model_bin)
    assert (model.binary_version, model.spec_name, model.spec_revision) == (6, "WhisperSpec", 3)
    assert len(model.variables) == 148
    assert model.get("encoder/conv1/weight").shape == (384, 80, 3)
    assert model.get("encoder/conv1/weight").dtype == np.float16
    assert int(model.get("encoder/num_heads")) == 6
    assert model.get("encoder/position_encodings/encodings").shape == (1500, 384)


@pytest.mark.parametrize("keep", [3, 40, 5_000_000, -7])
def test_reader_rejects_truncated_files(model_bin, tmp_path, keep):
    data = model_bin.read_bytes()
    path = tmp_path / "model.bin"
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointFormatError, match="truncated"):
        read_ct2_model(path)
    with pytest.raises(CheckpointFormatError):
        load_whisper(tmp_path)


def test_reader_rejects_bad_headers(model_bin, tmp_path):
    data = bytearray(model_bin.read_bytes()[:4096])
    path = tmp_path / "model.bin"
    path.write_bytes(struct.pack("<I", 99) + data[4:])
    with pytest.raises(CheckpointFormatError, match="binary version 99"):
        read_ct2_model(path)
    # Byte count of the first variable no longer matches its shape -> corrupt header, not a silent misread.
    spec_len = struct.unpack_from("<H", data, 4)[0]
    first = 4 + 2 + spec_len + 8  # version, spec string, revision, count
    name_len = struct.unpack_from("<H", data, first)[0]
    rank = data[first + 2 + name_len]
    nbytes_at = first + 2 + name_len + 1 + 4 * rank + 1
    struct.pack_into("<I", data, nbytes_at, 12345)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointFormatError, match="corrupt header"):
        read_ct2_model(path)
    path.write_bytes(b"")
    with pytest.raises(CheckpointFormatError, match="truncated"):
        read_ct2_model(path)


def test_filterbank_matches_torchaudio():
    import torchaudio

    ours = slaney_mel_filterbank(201, 0.0, 8000.0, 80, SR)
    ref = torchaudio.functional.melscale_fbanks(201, 0.0, 8000.0, 80, SR, norm="slaney", mel_scale="slaney")
    assert float((ours - ref.double()).abs().max()) < 1e-7
    assert float(ours.max()) > 0.02  # non-trivial weights


def test_log_mel_shape_and_dynamic_range(teacher):
    wav = torch.from_numpy(
        np.stack([_signal(1.0, 100, 6000, 440, 0), 0.01 * _signal(1.0, 200, 3000, 1000, 1)])
    )
    with torch.inference_mode():
        mel = teacher.log_mel(wav)
    assert mel.shape == (2, 80, 100)  # N // 160: the last STFT frame is dropped, as in Whisper
    # Per-example floor at max - 8 (in log10 units), i.e. 2.0 after (x + 4) / 4.
    span = mel.amax(dim=(1, 2)) - mel.amin(dim=(1, 2))
    assert torch.all(span <= 2.0 + 1e-6) and torch.all(span > 1.0)
    # Scaling the input by 0.01 shifts the log10 power by -4 -> -1 after /4, except where floored.
    assert float(mel[0].max() - mel[1].max()) > 0.5


def _ct2_encode(features: torch.Tensor) -> np.ndarray:
    ctranslate2 = pytest.importorskip("ctranslate2")
    model = ctranslate2.models.Whisper(
        str(default_whisper_model_path()), device="cpu", compute_type="float32"
    )
    view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy()))
    return np.array(model.encode(view, to_cpu=True))


@pytest.mark.parametrize("seconds", [1.0, 2.0])
def test_frames_match_ctranslate2_on_short_windows(teacher, seconds):
    """ctranslate2 accepts features shorter than 3000 frames and uses the first positions, like we do."""
    wav = torch.from_numpy(
        np.stack([_signal(seconds, 100, 6000, 440, 0), _signal(seconds, 300, 7000, 2200, 1)])
    )
    with torch.inference_mode():
        mel = teacher.log_mel(wav)
    ours = teacher.frames(wav).numpy()
    ref = _ct2_encode(mel)
    assert ours.shape == ref.shape == (2, int(seconds * 50), 384)
    assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.slow
def test_frames_match_ctranslate2_on_standard_30s_input(teacher):
    """Whisper's own layout: a 10 s clip zero-padded to 30 s, features (1, 80, 3000)."""
    wav = torch.from_numpy(np.pad(_signal(10.0, 100, 6000, 440, 0), (0, 20 * SR)))[None]
    with torch.inference_mode():
        mel = teacher.log_mel(wav)
    assert mel.shape == (1, 80, 3000)
    ref = _ct2_encode(mel)
    ours = teacher.frames(wav).numpy()
    assert ours.shape == ref.shape == (1, 1500, 384)
    assert np.abs(ours - ref).max() <= 1e-4


def test_pooling_and_layers(teacher):
    wav = torch.from_numpy(np.stack([_signal(1.5, 100, 6000, 440, 0), _signal(1.5, 300, 7000, 880, 1)]))
    meanstd = teacher
    mean = WhisperTeacher(teacher.encoder, pooling="mean")
    block1 = build_teacher("whisper_tiny", pooling="mean", layer=1)
    frames = meanstd.frames(wav)
    assert frames.shape == (2, 75, 384)
    emb = meanstd.embed(wav)
    assert emb.shape == (2, 768) and meanstd.embed_dim == 768 and mean.embed_dim == 384
    torch.testing.assert_close(emb[:, :384], frames.mean(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(emb[:, 384:], frames.std(1, correction=0), rtol=0, atol=1e-5)
    torch.testing.assert_close(mean.embed(wav), emb[:, :384], rtol=0, atol=0)
    layers = mean.embed_layers(wav)
    assert layers.shape == (2, 4, 384) and mean.num_layers == 4
    torch.testing.assert_close(layers[:, -1], mean.embed(wav), rtol=0, atol=1e-6)
    torch.testing.assert_close(layers[:, 1], block1.embed(wav), rtol=0, atol=1e-6)
    assert not torch.allclose(layers[:, 1], layers[:, -1], atol=1e-2)
    # Different inputs give clearly different embeddings (the weights are real, not degenerate).
    cos = torch.nn.functional.cosine_similarity(emb[0], emb[1], dim=0)
    assert cos < 0.999
    meta = block1.metadata()
    assert meta["name"] == "whisper_tiny" and meta["pooling"] == "mean" and meta["layer"] == 1
    assert meta["embed_dim"] == 384 and len(meta["checkpoint_sha256"]) == 64
    with pytest.raises(ValueError, match="pooling"):
        WhisperTeacher(teacher.encoder, pooling="max")
    with pytest.raises(ValueError, match="layer"):
        WhisperTeacher(teacher.encoder, layer=4)
