"""Students against the upstream (ssondo 0.3.1) outputs on the golden synthetic weights."""

from __future__ import annotations

import pytest
import torch

from ssondo_train.students import StudentWithProjector, student_from_ssondo_config
from ssondo_train.students.frontend import SEGMENT_SAMPLES, StudentFrontEnd, segment_windows
from tests.golden import assert_close, expected, golden_input, golden_state_dict, training_config


@pytest.fixture(scope="module")
def ref() -> dict:
    return expected("student")


@pytest.fixture(scope="module")
def logmel() -> torch.Tensor:
    """Our front-end on the 25-s input, upstream segmentation: (1, 2, 128, 624)."""
    wav = torch.from_numpy(golden_input("student_input_32k_25s"))
    with torch.no_grad():
        return StudentFrontEnd()(segment_windows(wav, tail="drop"))


def golden_student(name: str) -> StudentWithProjector:
    model = student_from_ssondo_config(training_config(name))
    state = {k.removeprefix("student_model."): v for k, v in golden_state_dict(name).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_mn10_golden(logmel: torch.Tensor, ref: dict) -> None:
    with torch.no_grad():
        proj, emb = golden_student("mn10")(logmel)
    assert_close(emb, "student", "mn10_emb", ref["mn10_emb"])
    assert_close(proj, "student", "mn10_proj", ref["mn10_proj"])


def test_dymn10_golden_first_window(ref: dict) -> None:
    wav = torch.from_numpy(golden_input("student_input_32k_25s"))[:, :SEGMENT_SAMPLES]
    model = golden_student("dymn10")
    assert model.model.temperature == 30.0
    with torch.no_grad():
        lm = StudentFrontEnd()(segment_windows(wav))
        assert_close(lm, "student", "logmel", ref["logmel"][:, :1])
        proj, emb = model(lm)
    assert_close(emb, "student", "dymn10_emb", ref["dymn10_emb"])
    assert_close(proj, "student", "dymn10_proj", ref["dymn10_proj"])


@pytest.mark.slow
def test_eres2net_golden(logmel: torch.Tensor, ref: dict) -> None:
    with torch.no_grad():
        proj, emb = golden_student("eres2net")(logmel)
    assert_close(emb, "student", "eres2net_emb", ref["eres2net_emb"])
    assert_close(proj, "student", "eres2net_proj", ref["eres2net_proj"])
