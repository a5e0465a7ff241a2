"""SIGKILL a writer at random moments, rerun, and compare with an uninterrupted run."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssondo_train.store import open_store
from ssondo_train.store.fsutil import md5_file, read_json

REPO = Path(__file__).resolve().parents[2]


def run_writer(root: Path, backend: str, kill_after: int | None = None, delay: float = 0.0) -> bool:
    """Run the writer subprocess; with ``kill_after``, SIGKILL it ``delay`` s after its n-th commit.

    Returns True if the writer finished (it may finish before the kill lands)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.store._kill_writer", str(root), backend],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    done = 0
    for line in proc.stdout:
        if line.startswith("done"):
            done += 1
            if kill_after is not None and done >= kill_after:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    if kill_after is None:
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return proc.returncode == 0


def check_no_partial_final_files(root: Path, backend: str) -> int:
    """Every file under a final part name is a complete, readable part; committed parts match their md5."""
    n = 0
    for p in sorted(root.glob("shard-*")):
        if p.name.endswith(".partial"):
            continue
        n += 1
        if backend == "wds":
            with tarfile.open(p) as t:
                names = t.getnames()
            assert names and len(names) % 3 == 0  # json + emb + audio per window
        else:
            with h5py.File(p, "r") as f:
                assert f["embedding"].shape[0] == f["clip_id"].shape[0] == f["audio"].shape[0] > 0
    for c in (root / "_commits").glob("*.json"):
        for part in read_json(c)["parts"]:
            assert md5_file(root / part["name"]) == part["md5"]
    return n


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["wds", "h5"])
def test_sigkill_and_resume_match_uninterrupted(tmp_path: Path, backend: str) -> None:
    rng = random.Random(1234 if backend == "wds" else 4321)
    ref, root = tmp_path / "ref", tmp_path / "run"
    assert run_writer(ref, backend)
    kills = mid_shard = 0
    for _ in range(3):
        finished = run_writer(root, backend, kill_after=rng.randint(2, 12), delay=rng.uniform(0.0, 0.03))
        kills += not finished
        assert check_no_partial_final_files(root, backend) > 0
        # killed while a shard was being written: a temporary file, or parts of an uncommitted shard
        with_parts = {p.name.rsplit("-", 1)[0] for p in root.glob("shard-*") if p.suffix in (".tar", ".h5")}
        committed = {p.stem for p in (root / "_commits").glob("*.json")}
        mid_shard += bool(list(root.glob("*.partial"))) or bool(with_parts - committed)
    assert kills == 3  # each run was really interrupted (60 shards, at most 36 committed by then)
    assert mid_shard >= 1
    assert run_writer(root, backend)
    assert not list(root.glob("*.partial"))

    a, b = open_store(ref, verify="md5"), open_store(root, verify="md5")
    assert a.index["num_samples"] == b.index["num_samples"] > 0
    assert [p["name"] for p in a.parts] == [p["name"] for p in b.parts]
    if backend == "wds":
        assert [p["md5"] for p in a.parts] == [p["md5"] for p in b.parts]
    ka, ea = a.read_all_embeddings()
    kb, eb = b.read_all_embeddings()
    assert ka == kb
    np.testing.assert_array_equal(ea, eb)
    for i in (0, len(a) // 2, len(a) - 1):
        np.testing.assert_array_equal(a.get_audio(i), b.get_audio(i))
