"""Our exports loaded by the real PyPI client ``ssondo==0.3.1`` (test-only dependency)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from ssondo_train.export import (
    backbone_spec_from_ssondo_config,
    save_head,
    ssondo_training_config,
    write_ssondo_checkpoint,
)
from ssondo_train.inference import get_ssondo
from tests.golden import golden_input, training_config
from tests.inference.helpers import SHORT, audio, golden_student, make_hf_cache, use_hf_cache

ssondo = pytest.importorskip("ssondo")

pytestmark = pytest.mark.slow

# The golden input is 25 s: ssondo drops the last 5 s, and so does tail="drop" on our side.
CASES = [
    ("mn10", 1e-5, (10, 25)),
    ("eres2net", 1e-5, (10, 25)),
    # ssondo's DyMN handles one segment only. Our DyMN follows the same arithmetic (measured max diff 0.0).
    ("dymn10", 1e-5, (10,)),
]


@pytest.mark.parametrize(("golden", "atol", "lengths"), CASES)
def test_ssondo_client_loads_our_checkpoint(
    golden: str, atol: float, lengths: tuple[int, ...], tmp_path: Path
) -> None:
    student = golden_student(golden)
    name, kwargs = backbone_spec_from_ssondo_config(training_config(golden))
    path = write_ssondo_checkpoint(tmp_path / "s.ckpt", student, ssondo_training_config(name, kwargs))
    theirs = ssondo.get_ssondo(str(path))  # strict load inside
    ours = get_ssondo(path, tail="drop")
    wav = torch.from_numpy(golden_input("student_input_32k_25s"))
    with torch.no_grad():
        for seconds in lengths:
            x = wav[:, : seconds * 32_000]
            a, b = theirs(x), ours(x)
            assert a.shape == b.shape == (1, seconds // 10, student.emb_size)
            assert (a - b).abs().max().item() <= atol


def test_ssondo_pretrained_head_path_accepts_our_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    student = golden_student("mn10")
    name, kwargs = backbone_spec_from_ssondo_config(training_config("mn10"))
    ckpt = write_ssondo_checkpoint(
        tmp_path / "m.ckpt", student, ssondo_training_config(name, kwargs, preprocess=SHORT)
    )
    torch.manual_seed(0)
    head = nn.Linear(960, 50)
    with torch.no_grad():
        head.weight.mul_(0.1)
    files = save_head(tmp_path / "esc50.pth", head, {"task": "esc50"})
    hub = use_hf_cache(monkeypatch, tmp_path / "hf")
    make_hf_cache(hub, {"matpac_mobilenetv3.ckpt": ckpt, "heads/esc50.pth": files["head"]})
    theirs = ssondo.get_ssondo("matpac-mobilenetv3", head="esc50")
    ours = get_ssondo("matpac-mobilenetv3", head="esc50")
    x = audio(2, 3.0)
    with torch.no_grad():
        a, b = theirs(x), ours(x)
        expected = head(ours.get_embeddings(x))
    assert a.shape == b.shape == (2, 50)
    assert (a - b).abs().max().item() <= 1e-5 * max(1.0, a.abs().max().item())
    assert torch.allclose(b, expected, atol=1e-5)
