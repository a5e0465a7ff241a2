"""Student front-end: segmentation rules and the log-mel against the golden fixture."""

from __future__ import annotations

import pytest
import torch

from ssondo_train.students.frontend import StudentFrontEnd, segment_windows
from tests.golden import assert_close, expected, golden_input


def test_segment_drop_matches_upstream_count_and_content() -> None:
    wav = torch.arange(2 * 100, dtype=torch.float32).reshape(2, 100)
    seg = segment_windows(wav, window=30, hop=30, tail="drop")
    assert seg.shape == (2, 3, 30)  # 1 + (100 - 30) // 30; the last 10 samples are dropped
    assert torch.equal(seg[1, 2], wav[1, 60:90])
    assert torch.equal(segment_windows(wav[:, :90], 30, 30).reshape(2, 90), wav[:, :90])


def test_segment_drop_rejects_short_audio() -> None:
    with pytest.raises(ValueError, match="shorter than one window"):
        segment_windows(torch.zeros(1, 29), window=30, hop=30, tail="drop")


def test_segment_pad_covers_every_sample() -> None:
    wav = torch.randn(2, 100)
    seg = segment_windows(wav, window=30, hop=30, tail="pad")
    assert seg.shape == (2, 4, 30)
    assert torch.equal(seg[:, 3, :10], wav[:, 90:])
    assert torch.count_nonzero(seg[:, 3, 10:]) == 0
    short = segment_windows(wav[:, :7], window=30, hop=30, tail="pad")
    assert short.shape == (2, 1, 30)
    assert torch.equal(short[:, 0, :7], wav[:, :7]) and torch.count_nonzero(short[:, 0, 7:]) == 0
    exact = segment_windows(wav[:, :90], window=30, hop=30, tail="pad")
    assert exact.shape == (2, 3, 30)  # no extra all-zero window when the length is a multiple


def test_segment_overlapping_hop() -> None:
    wav = torch.arange(1, 56, dtype=torch.float32).unsqueeze(0)  # 55 samples, values 1..55
    seg = segment_windows(wav, window=20, hop=10, tail="pad")
    assert seg.shape == (1, 5, 20)  # starts 0, 10, 20, 30, 40; the last window is padded to 60
    assert seg[0, 4, 0].item() == 41.0 and seg[0, 4, 14].item() == 55.0
    assert torch.count_nonzero(seg[0, 4, 15:]) == 0
    assert segment_windows(wav, window=20, hop=10, tail="drop").shape == (1, 4, 20)


def test_segment_rejects_unknown_tail() -> None:
    with pytest.raises(ValueError, match="tail"):
        segment_windows(torch.zeros(1, 40), 30, 30, tail="wrap")  # type: ignore[arg-type]


def test_frontend_shapes_and_no_state() -> None:
    fe = StudentFrontEnd()
    assert fe.state_dict() == {}  # window and filterbank must not leak into checkpoints
    assert fe.num_frames(320_000) == 624
    out = fe(torch.randn(3, 2, 32_000))
    assert out.shape == (3, 2, 128, fe.num_frames(32_000))
    assert torch.isfinite(out).all()
    # Silence hits the log offset exactly: log(0 + 1e-3).
    silent = fe(torch.zeros(1, 4096))
    assert torch.allclose(silent, torch.full_like(silent, torch.log(torch.tensor(1e-3)).item()))


def test_frontend_matches_golden_logmel() -> None:
    wav = torch.from_numpy(golden_input("student_input_32k_25s"))
    seg = segment_windows(wav, tail="drop")
    assert seg.shape == (1, 2, 320_000)
    ref = expected("student")["logmel"]
    assert_close(StudentFrontEnd()(seg), "student", "logmel", ref)
