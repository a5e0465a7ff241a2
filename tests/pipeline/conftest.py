"""A tiny corpus and helpers to run stages of a named run in a temporary output root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO_ROOT, make_signal

TINY_WINDOW = ["precompute.window_seconds=1.0", "precompute.hop_seconds=1.0"]
# A few updates of 4 one-second windows: enough to train, validate and checkpoint in seconds.
TINY_TRAINING = [
    "distill.batch_size=4",
    "sampler.num_samples=16",
    "distill.warm_up_len=1",
    "trainer.num_workers=0",
    "distill.bn_recalibration_items=16",
]


def write_tiny_corpus(folder: Path, n_clips: int = 24, seed: int = 0, bad: bool = True) -> Path:
    """``n_clips`` FLAC clips (tones, chirps, noise; 0.6-2.6 s; 16/32/44.1 kHz; some stereo) plus a corrupt
    and a silent file; returns the manifest path."""
    rng = np.random.default_rng(seed)
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rows = []
    kinds = ["tone", "chirp", "noise"]
    for i in range(n_clips):
        sr = [16000, 32000, 44100][i % 3]
        channels = 2 if i % 5 == 0 else 1
        seconds = float(rng.uniform(0.6, 2.6))
        x = make_signal(kinds[i % 3], seconds, sr, seed=i, channels=channels)
        if kinds[i % 3] == "tone":  # vary the pitch so clips differ
            t = np.arange(x.shape[0]) / sr
            tone = 0.4 * np.sin(2 * np.pi * (200 + 40 * i) * t).astype(np.float32)
            x = tone if channels == 1 else np.stack([tone, tone], 1)
        name = f"clip{i:03d}.flac"
        sf.write(str(audio / name), x, sr)
        rows.append(f"clip{i:03d},{name},{seconds:.6f},{sr},{channels},,,,test,CC0-1.0")
    if bad:
        (audio / "corrupt.wav").write_bytes(b"RIFF0000WAVEnot really" * 10)
        rows.append("corrupt,corrupt.wav,1.0,16000,1,,,,test,CC0-1.0")
        sf.write(str(audio / "silent.wav"), np.zeros(16000, np.float32), 16000)
        rows.append("silent,silent.wav,1.0,16000,1,,,,test,CC0-1.0")
    manifest = folder / "corpus.csv"
    header = (
        "# ssondo-manifest v1 root=audio\n"
        "clip_id,path,duration,sample_rate,channels,labels,split,fold,source,license\n"
    )
    manifest.write_text(header + "\n".join(rows) + "\n")
    return manifest


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ssondo_train", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=full_env,
        timeout=timeout,
    )


def popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "ssondo_train", *args],
        cwd=REPO_ROOT,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def store_overrides(root: Path, run: str = "t") -> list[str]:
    """The overrides the run's store was built with (from run.json), as a user repeats them (or their
    experiment=) on the commands of later stages; run_name and paths.* excluded."""
    import json

    overrides = json.loads((root / run / "run.json").read_text())["overrides"]
    return [o for o in overrides if not o.startswith(("run_name=", "paths."))]
