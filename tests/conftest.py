"""Shared fixtures: tiny audio (chirps, noise, tones) and tiny configs, all made in tmp_path."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


def make_signal(kind: str, seconds: float, sr: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """A test signal ``(n,)`` or ``(n, channels)`` float32 in [-0.5, 0.5]: chirp, tone, noise or silence."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    if kind == "chirp":
        f0, f1 = 100.0, min(6000.0, sr / 2 * 0.9)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(seconds, 1e-6))))
    elif kind == "tone":
        x = np.sin(2 * np.pi * 440.0 * t)
    elif kind == "noise":
        x = rng.standard_normal(n)
    elif kind == "silence":
        x = np.zeros(n)
    else:
        raise ValueError(kind)
    x = (
        (0.5 * x / max(np.abs(x).max(), 1e-9)).astype(np.float32)
        if kind != "silence"
        else x.astype(np.float32)
    )
    if channels > 1:
        x = np.stack([x * (1.0 - 0.3 * c) for c in range(channels)], axis=1)
    return x


@pytest.fixture
def write_audio(tmp_path: Path) -> Callable[..., Path]:
    """Write a test signal to ``tmp_path/name`` (format from the extension) and return the path."""

    def _write(
        name: str,
        kind: str = "chirp",
        seconds: float = 1.0,
        sr: int = 16000,
        channels: int = 1,
        seed: int = 0,
        subtype: str | None = None,
    ) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = make_signal(kind, seconds, sr, seed, channels)
        fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}[path.suffix]
        if subtype is None:
            subtype = {"WAV": "FLOAT", "FLAC": "PCM_16", "OGG": "VORBIS"}[fmt]
        sf.write(str(path), data, sr, format=fmt, subtype=subtype)
        return path

    return _write


@pytest.fixture
def compose() -> Callable[..., object]:
    """Compose ``configs/config.yaml`` with overrides, as the entry point does (no run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    def _compose(overrides: list[str]):
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=False)

    return _compose
