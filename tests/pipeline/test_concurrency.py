"""Two processes on one run: one precompute works, the other is refused with the holder named, and the store
is the store of a single run (nothing missing, nothing written twice)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ssondo_train.stages.base import StageError, folder_lock
from ssondo_train.store import open_store
from tests.conftest import REPO_ROOT
from tests.pipeline.conftest import cli, write_tiny_corpus
from tests.pipeline.test_precompute_stage import args

pytestmark = pytest.mark.slow

STAGE_START = "stage 'precompute' of run 't' -> "  # the line run_stage logs when a stage begins its work


class Job:
    """``python -m ssondo_train ...`` in the background, its stdout / stderr kept in files."""

    def __init__(self, folder: Path, name: str, *cli_args: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / f"{name}.out", folder / f"{name}.err"
        env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ssondo_train", *cli_args],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 600) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.err.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    """Jobs a test starts; any still running when it ends (a failed assertion) are stopped."""
    started: list[Job] = []
    yield started
    for job in started:
        job.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    # 48 clips: the stage runs long enough (tens of seconds) for a second process to meet the first.
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"), n_clips=48)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("single")
    res = cli(*args(corpus, root))
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def store_windows(root: Path) -> tuple[list[str], np.ndarray]:
    keys, emb = open_store(root / "t" / "precompute" / "store").read_all_embeddings()
    return [str(k) for k in keys], emb


def assert_one_store_like_a_single_run(root: Path, reference: Path) -> None:
    keys, emb = store_windows(root)
    ref_keys, ref_emb = store_windows(reference)
    done = json.loads((root / "t" / "precompute" / "done.json").read_text())
    ref_done = json.loads((reference / "t" / "precompute" / "done.json").read_text())
    assert len(set(keys)) == len(keys), "a window was stored twice"
    assert len(keys) == len(ref_keys) == done["counts"]["windows"] == ref_done["counts"]["windows"] > 48
    assert keys == ref_keys
    np.testing.assert_array_equal(emb, ref_emb)
    assert done["counts"]["stored_clips"] == 48 and done["counts"]["failed_clips"] == 2
    log = (root / "t" / "precompute" / "precompute.log").read_text()
    assert log.count(STAGE_START) == 1, "only one process may have started the stage's work"


def assert_refused_naming(loser: Job, winner: Job) -> None:
    err = loser.stderr()
    assert loser.proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("error: stage 'precompute' of run 't' is being written by ")
    assert f"is being written by pid {winner.pid} on {socket.gethostname()} since " in lines[0], lines[0]
    assert lines[0].endswith("wait for it to finish (or stop it) and rerun")


def test_two_precomputes_started_together(corpus, reference, tmp_path, jobs):
    root = tmp_path / "out"
    jobs += [Job(tmp_path, f"job{i}", *args(corpus, root)) for i in range(2)]
    codes = [job.wait() for job in jobs]
    assert sorted(codes) == [0, 2], [job.stderr()[-2000:] for job in jobs]
    winner, loser = jobs if codes[0] == 0 else jobs[::-1]
    assert_refused_naming(loser, winner)
    assert "precompute: 48 clips" in winner.out.read_text()
    assert_one_store_like_a_single_run(root, reference)


def test_a_second_precompute_while_the_first_runs(corpus, reference, tmp_path, jobs):
    root = tmp_path / "out"
    lock = root / "t" / "precompute" / ".lock"
    first = Job(tmp_path, "first", *args(corpus, root))
    jobs.append(first)
    deadline = time.time() + 300
    while not (lock.is_file() and f"pid {first.pid} on" in lock.read_text()):
        assert first.proc.poll() is None, first.stderr()[-3000:]
        assert time.time() < deadline, "the first process never took the lock"
        time.sleep(0.1)
    time.sleep(1.0)  # the first is into its work
    # Paused (not ended) while the second starts, whatever the speed of this machine: its lock stays held.
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = Job(tmp_path, "second", *args(corpus, root))
        jobs.append(second)
        second.wait()
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert_refused_naming(second, first)
    assert first.wait() == 0, first.stderr()[-3000:]
    assert_one_store_like_a_single_run(root, reference)


# ------------------------------------------------------------------ the lock itself, under a real race
def _take_lock(folder: str, barrier, results) -> None:
    barrier.wait()
    try:
        with folder_lock(Path(folder), "the folder"):
            time.sleep(0.05)
        results.put("held")
    except StageError as err:
        results.put(str(err))


def test_a_refused_process_always_names_the_holder(tmp_path):
    ctx = mp.get_context("fork")
    messages = []
    for i in range(40):
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [
            ctx.Process(target=_take_lock, args=(str(tmp_path / str(i)), barrier, results)) for _ in "ab"
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        outcome = [results.get(timeout=10) for _ in procs]
        assert outcome.count("held") == 1, outcome  # exactly one holds the folder
        messages += [m for m in outcome if m != "held"]
    unnamed = [m for m in messages if "is being written by pid " not in m]
    assert not unnamed, f"{len(unnamed)} of {len(messages)} refusals did not name the holder: {unnamed[0]}"
