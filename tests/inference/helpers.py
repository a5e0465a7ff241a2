"""Shared builders for the export and inference tests: golden students, short front-ends, a local HF cache."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch

from ssondo_train.export import PreprocessSpec
from ssondo_train.students import StudentWithProjector, student_from_ssondo_config
from tests.golden import golden_state_dict, training_config

HF_REPO_DIR = "models--mohammedali2501--ssondo"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# 1-s windows keep CPU tests fast; everything else is S-SONDO's front-end.
SHORT = PreprocessSpec(window_s=1.0, hop_s=1.0)


def golden_student(name: str) -> StudentWithProjector:
    """Student ``mn10`` / ``dymn10`` / ``eres2net`` with the golden synthetic weights, eval mode."""
    model = student_from_ssondo_config(training_config(name))
    model.load_state_dict({k.removeprefix("student_model."): v for k, v in golden_state_dict(name).items()})
    return model.eval()


def audio(batch: int, seconds: float, sr: int = 32_000, seed: int = 0) -> torch.Tensor:
    """(batch, n) noise plus a chirp, float32 in about [-0.6, 0.6]."""
    g = torch.Generator().manual_seed(seed)
    n = int(round(seconds * sr))
    t = torch.arange(n, dtype=torch.float64) / sr
    chirp = torch.sin(2 * torch.pi * (200 * t + 400 * t**2)).float()
    return 0.1 * torch.randn(batch, n, generator=g) + 0.5 * chirp


def make_hf_cache(hub_dir: Path, files: dict[str, Path], commit: str = COMMIT) -> Path:
    """Lay out a Hugging Face hub cache for ``mohammedali2501/ssondo`` with ``files`` (repo path -> source).

    Same layout as huggingface_hub writes: ``refs/main`` names the commit, ``snapshots/<commit>/<path>``
    are symlinks to content-addressed ``blobs/<sha256>``.
    """
    repo = hub_dir / HF_REPO_DIR
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, src in files.items():
        digest = hashlib.sha256(Path(src).read_bytes()).hexdigest()
        blob = repo / "blobs" / digest
        shutil.copyfile(src, blob)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return hub_dir


def use_hf_cache(monkeypatch: pytest.MonkeyPatch, hf_home: Path, offline: bool = True) -> Path:
    """Point the environment and huggingface_hub's import-time constants at ``hf_home``; return hub dir."""
    import huggingface_hub.constants as hf_constants

    hub = hf_home / "hub"
    hub.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", offline)
    return hub
