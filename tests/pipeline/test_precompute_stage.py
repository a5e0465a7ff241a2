"""stage=precompute end to end: bad clips recorded, SIGKILL/resume identical, 2 ranks == 1 rank."""

from __future__ import annotations

import json
import random
import signal
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from ssondo_train.store import open_store
from tests.pipeline.conftest import TINY_WINDOW, cli, popen

pytestmark = pytest.mark.slow


def args(manifest: Path, root: Path, *extra: str, window: Sequence[str] = tuple(TINY_WINDOW)) -> list[str]:
    """A precompute of the tiny corpus in shards of two clips (1-s windows unless ``window`` says)."""
    return [
        "stage=precompute",
        "run_name=t",
        f"paths.output_root={root}",
        f"precompute.manifest={manifest}",
        "precompute.clips_per_shard=2",
        "precompute.batch_size=8",
        "precompute.num_workers=1",
        *window,
        *extra,
    ]


def store_content(root: Path) -> tuple[list, np.ndarray, list]:
    store = open_store(root / "t" / "precompute" / "store")
    keys, emb = store.read_all_embeddings()
    audio = [store.get_audio(i) for i in range(len(store))]
    return keys, emb, audio


def assert_same_store(a: Path, b: Path) -> None:
    ka, ea, aa = store_content(a)
    kb, eb, ab = store_content(b)
    assert ka == kb
    np.testing.assert_array_equal(ea, eb)
    for x, y in zip(aa, ab, strict=False):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ref")
    res = cli(*args(tiny_corpus, root))
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def test_precompute_records_bad_clips_and_counts(reference):
    done = json.loads((reference / "t" / "precompute" / "done.json").read_text())
    counts = done["counts"]
    assert counts["manifest_clips"] == 26 and counts["stored_clips"] == 24 and counts["failed_clips"] == 2
    assert counts["failures_by_reason"] == {"decode_error": 1, "silent": 1}
    keys, emb, audio = store_content(reference)
    # 1-s windows, tail padded: a clip of d seconds gives ceil(d) windows.
    assert len(keys) == counts["windows"] >= 24
    assert emb.shape[1] == 768 and np.isfinite(emb).all()
    assert all(a.shape == (32000,) for a in audio)
    failures = [
        json.loads(line)
        for line in (reference / "t" / "precompute" / "failures.rank0.jsonl").read_text().splitlines()
    ]
    assert sorted(f["clip_id"] for f in failures) == ["corrupt", "silent"]


def test_rerun_is_skipped(reference):
    res = cli(*args(Path("unused"), reference))
    # A finished stage with a different config is refused, the same config is skipped.
    assert res.returncode == 2 and "different configuration" in res.stderr


def test_sigkill_at_three_moments_then_resume_gives_the_same_store(tiny_corpus, reference, tmp_path):
    rng = random.Random(1234)
    root = tmp_path / "killed"
    commits = root / "t" / "precompute" / "store" / "_commits"
    store_dir = commits.parent
    killed_mid_run = 0
    for _ in range(3):
        # Kill at a random moment: after a random number of newly committed shards plus a random delay.
        before = len(list(commits.glob("*.json"))) if commits.exists() else 0
        target = before + rng.randint(0, 3)
        proc = popen(*args(tiny_corpus, root))
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            if commits.exists() and len(list(commits.glob("*.json"))) >= target:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            killed_mid_run += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # No file under a final shard name is ever partial: every final-named part reads completely.
        for part in store_dir.glob("shard-*.tar"):
            with tarfile.open(part) as tf:
                for member in tf.getmembers():
                    assert len(tf.extractfile(member).read()) == member.size
    assert killed_mid_run >= 2, "the kills should land while the job runs"
    res = cli(*args(tiny_corpus, root))
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_store(reference, root)


def test_two_ranks_give_the_same_store_as_one(tiny_corpus, reference, tmp_path):
    root = tmp_path / "ddp"
    procs = [
        popen(
            *args(tiny_corpus, root, "precompute.merge_timeout_s=300"),
            env={"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)},
        )
        for r in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=600) == 0
    assert_same_store(reference, root)
    done = json.loads((root / "t" / "precompute" / "done.json").read_text())
    assert done["counts"]["failed_clips"] == 2


def test_clip_shorter_than_a_window_with_tail_drop_is_recorded(write_audio):
    from ssondo_train.stages.precompute import _ClipDataset

    short = write_audio("short.flac", "chirp", seconds=0.5, sr=32000)
    long = write_audio("long.flac", "chirp", seconds=2.5, sr=32000)
    ds = _ClipDataset([("s", str(short)), ("l", str(long))], 16000, 1.0, 1.0, "drop", 0.1, True)
    item = ds[0]
    assert item.reason == "too_short" and item.teacher is None and "window" in item.error
    item = ds[1]
    assert item.error is None and item.teacher.shape == (2, 16000) and item.student.shape == (2, 32000)
    assert item.starts == [0.0, 1.0] and item.ends == [1.0, 2.0]
