"""Audio I/O: formats, channels, rates, lengths and every bad-input case with its error type."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssondo_train.audio import (
    AudioContentError,
    AudioDecodeError,
    audio_info,
    cut_windows,
    load_audio,
    resample,
    window_starts,
)


@pytest.mark.parametrize("ext", [".wav", ".flac", ".ogg"])
@pytest.mark.parametrize("sr", [8000, 16000, 22050, 44100, 48000])
def test_formats_and_rates_resample_to_target(write_audio, ext, sr):
    path = write_audio(f"clip{ext}", "chirp", seconds=0.5, sr=sr)
    info = audio_info(path)
    assert (info.sample_rate, info.channels) == (sr, 1)
    assert info.frames == pytest.approx(0.5 * sr, abs=2)
    wav, out_sr = load_audio(path, 32000)
    assert out_sr == 32000 and wav.dtype == torch.float32 and wav.dim() == 1
    assert wav.shape[0] == pytest.approx(16000, abs=2)
    assert 0.3 < float(wav.abs().max()) < 0.7


def test_stereo_is_downmixed_to_the_channel_mean(write_audio):
    path = write_audio("stereo.wav", "tone", seconds=0.25, sr=16000, channels=2)
    both, _ = load_audio(path, mono=False)
    assert both.shape == (2, 4000)
    mono, _ = load_audio(path)
    torch.testing.assert_close(mono, both.mean(0))


def test_resample_preserves_a_tone_frequency():
    sr, new_sr = 48000, 16000
    t = torch.arange(sr) / sr
    x = torch.sin(2 * torch.pi * 1000 * t)
    y = resample(x, sr, new_sr)
    assert y.shape[0] == new_sr
    peak_bin = int(torch.fft.rfft(y).abs().argmax())
    assert peak_bin == 1000  # 1 s of signal: bin k = k Hz


def test_short_and_long_files(write_audio):
    short, _ = load_audio(write_audio("short.flac", "noise", seconds=0.2, sr=16000))
    assert short.shape[0] == 3200
    long, _ = load_audio(write_audio("long.flac", "chirp", seconds=90.0, sr=16000), 16000)
    assert long.shape[0] == 90 * 16000
    w = cut_windows(long, 160000, 160000, "drop")
    assert w.audio.shape == (9, 160000) and w.starts[-1] == 8 * 160000


def test_too_short_is_a_content_error(write_audio):
    with pytest.raises(AudioContentError) as err:
        load_audio(write_audio("short.wav", "noise", seconds=0.2), min_seconds=1.0)
    assert err.value.reason == "too_short"


def test_empty_file_is_a_content_error(tmp_path):
    import soundfile as sf

    path = tmp_path / "empty.wav"
    sf.write(str(path), np.zeros(0, np.float32), 16000)
    assert audio_info(path).frames == 0
    with pytest.raises(AudioContentError) as err:
        load_audio(path)
    assert err.value.reason == "empty"


def test_silent_file_is_a_content_error(write_audio):
    with pytest.raises(AudioContentError) as err:
        load_audio(write_audio("silence.wav", "silence", seconds=0.5))
    assert err.value.reason == "silent"
    wav, _ = load_audio(write_audio("silence2.wav", "silence", seconds=0.5), validate=False)
    assert wav.abs().max() == 0


def test_nan_samples_are_a_content_error(tmp_path):
    import soundfile as sf

    data = np.full(1600, 0.1, np.float32)
    data[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(str(path), data, 16000, subtype="FLOAT")
    with pytest.raises(AudioContentError) as err:
        load_audio(path)
    assert err.value.reason == "non_finite"


@pytest.mark.parametrize("content", [b"", b"RIFF\x00\x00\x00\x00WAVEjunk", b"not audio at all" * 100])
def test_corrupt_files_are_decode_errors(tmp_path, content):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioDecodeError):
        audio_info(path)
    with pytest.raises(AudioDecodeError) as err:
        load_audio(path)
    assert err.value.reason == "decode_error" and "bad.wav" in str(err.value)


def test_truncated_flac_is_a_decode_error(write_audio):
    path = write_audio("trunc.flac", "noise", seconds=2.0)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(AudioDecodeError, match="trunc.flac"):
        load_audio(path)


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(AudioDecodeError):
        load_audio(tmp_path / "nope.wav")


@pytest.mark.parametrize(
    ("n", "tail", "starts", "lengths"),
    [
        (25, "drop", [0, 10], [10, 10]),
        (25, "pad", [0, 10, 20], [10, 10, 5]),
        (25, "keep", [0, 10, 20], [10, 10, 5]),
        (20, "pad", [0, 10], [10, 10]),
        (4, "pad", [0], [4]),
        (4, "drop", [], []),
        (0, "pad", [], []),
    ],
)
def test_window_policies(n, tail, starts, lengths):
    wav = torch.arange(1, n + 1, dtype=torch.float32)
    w = cut_windows(wav, 10, 10, tail)
    assert w.starts == starts and w.lengths == lengths
    if tail == "keep":
        assert [len(a) for a in w.audio] == lengths
    else:
        assert w.audio.shape == (len(starts), 10)
        for row, s, length in zip(w.audio, starts, lengths, strict=False):
            torch.testing.assert_close(row[:length], wav[s : s + length])
            assert bool((row[length:] == 0).all())


def test_overlapping_windows():
    assert window_starts(30, 10, 5, "drop") == [0, 5, 10, 15, 20]
    w = cut_windows(torch.arange(32, dtype=torch.float32), 10, 5, "pad")
    assert w.starts == [0, 5, 10, 15, 20, 25] and w.lengths[-1] == 7


def test_bad_window_arguments():
    with pytest.raises(ValueError):
        window_starts(10, 0, 1, "pad")
    with pytest.raises(ValueError):
        window_starts(10, 5, 5, "wrap")  # type: ignore[arg-type]
