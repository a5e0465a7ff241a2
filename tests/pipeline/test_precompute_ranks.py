"""stage=precompute across attempts: rank markers of an earlier attempt never start the merge, and a store
made with another windowing is refused, or rebuilt from scratch with force=true."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from ssondo_train.store import open_store
from tests.pipeline.conftest import cli, popen
from tests.pipeline.test_precompute_stage import args

pytestmark = pytest.mark.slow

HALF_WINDOW = ["precompute.window_seconds=0.5", "precompute.hop_seconds=0.5"]


def stage_dir(root: Path) -> Path:
    return root / "t" / "precompute"


def store_content(root: Path) -> tuple[list, np.ndarray, list]:
    store = open_store(stage_dir(root) / "store")
    keys, emb = store.read_all_embeddings()
    return keys, emb, [store.get_audio(i) for i in range(len(store))]


def assert_same_store(a: Path, b: Path) -> None:
    ka, ea, aa = store_content(a)
    kb, eb, ab = store_content(b)
    assert ka == kb
    np.testing.assert_array_equal(ea, eb)
    assert len(aa) == len(ab)
    for x, y in zip(aa, ab, strict=True):
        np.testing.assert_array_equal(x, y)


def wait_for(path: Path, proc, what: str, limit: float = 300) -> None:
    deadline = time.time() + limit
    while not path.exists():
        assert proc.poll() is None, f"rank 0 ended (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory) -> Path:
    """A single-process store of 1-s windows."""
    root = tmp_path_factory.mktemp("ref")
    res = cli(*args(tiny_corpus, root))
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def test_a_stale_rank_marker_does_not_start_the_merge(tiny_corpus, reference, tmp_path):
    root = tmp_path / "ranks"
    ranks = stage_dir(root) / "_ranks"
    ranks.mkdir(parents=True)
    # Left by an earlier attempt (an older version's marker, without plan or attempt).
    (ranks / "rank1.json").write_text(json.dumps({"rank": 1, "clips": 12, "windows": 20, "failed": 1}))
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517"}
    rank0 = popen(
        *args(tiny_corpus, root, "precompute.merge_timeout_s=300"),
        env={**env, "RANK": "0", "LOCAL_RANK": "0"},
    )
    rank1 = None
    try:
        meta = stage_dir(root) / "store" / "meta.json"
        wait_for(meta, rank0, "the store was planned")
        # A marker of this very plan, from an attempt whose rank 1 never wrote its shards.
        plan_id = json.loads(meta.read_text())["plan"]["plan_id"]
        stale = {"rank": 1, "world_size": 2, "plan_id": plan_id, "attempt": None, "clips": 12}
        (ranks / "rank1.json").write_text(json.dumps(stale))
        wait_for(ranks / "rank0.json", rank0, "rank 0 finished its shards")
        time.sleep(3.0)  # rank 0 looks at the markers every second
        assert rank0.poll() is None, f"rank 0 merged without rank 1 (rc {rank0.returncode})"
        assert not (stage_dir(root) / "store" / "index.json").exists()
        assert not (stage_dir(root) / "done.json").exists()
        rank1 = popen(*args(tiny_corpus, root), env={**env, "RANK": "1", "LOCAL_RANK": "1"})
        assert rank1.wait(timeout=600) == 0
        assert rank0.wait(timeout=600) == 0
    finally:
        for proc in (rank0, rank1):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert_same_store(reference, root)
    done = json.loads((stage_dir(root) / "done.json").read_text())
    assert done["counts"]["stored_clips"] == 24 and done["counts"]["failed_clips"] == 2
    assert not ranks.exists()  # this attempt's markers are removed once merged


def test_force_with_another_window_rebuilds_the_store(tiny_corpus, reference, tmp_path):
    root = tmp_path / "rewindow"
    shutil.copytree(reference, root)
    store_dir = stage_dir(root) / "store"
    old_parts = {p.name: p.stat().st_mtime_ns for p in store_dir.glob("shard-*")}
    (stage_dir(root) / "_ranks").mkdir(exist_ok=True)
    (stage_dir(root) / "_ranks" / "rank1.json").write_text(json.dumps({"rank": 1}))
    res = cli(*args(tiny_corpus, root, "force=true", window=HALF_WINDOW))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "keeping the stored one" not in res.stdout + res.stderr

    meta = json.loads((store_dir / "meta.json").read_text())
    assert meta["extra"]["window_seconds"] == 0.5 and meta["extra"]["hop_seconds"] == 0.5
    assert meta["plan"]["content"]["window_seconds"] == 0.5
    store = open_store(store_dir)
    keys = store.keys()
    starts, ends = store.spans(np.arange(len(store)))
    np.testing.assert_allclose(starts % 0.5, 0.0, atol=1e-9)
    assert np.all(ends - starts <= 0.5 + 1e-9)
    last = [i + 1 == len(keys) or keys[i + 1][0] != keys[i][0] for i in range(len(keys))]
    full = ~np.asarray(last)  # every window but a clip's padded tail spans exactly 0.5 s
    np.testing.assert_allclose((ends - starts)[full], 0.5, atol=1e-9)
    assert all(store.get_audio(i).shape == (16000,) for i in range(len(store)))
    # Nothing of the 1-s store is left: every part was written anew, for the new plan.
    for commit in (store_dir / "_commits").glob("*.json"):
        assert json.loads(commit.read_text())["plan_id"] == meta["plan"]["plan_id"]
    assert not any(
        p.name in old_parts and p.stat().st_mtime_ns == old_parts[p.name] for p in store_dir.glob("shard-*")
    )
    assert not list(root.rglob(".store.removing-*"))
    assert not (stage_dir(root) / "_ranks").exists()
    done = json.loads((stage_dir(root) / "done.json").read_text())
    assert done["config"]["precompute"]["window_seconds"] == 0.5
    assert done["counts"]["windows"] == len(store) > len(open_store(stage_dir(reference) / "store"))

    fresh = tmp_path / "fresh"
    res = cli(*args(tiny_corpus, fresh, window=HALF_WINDOW))
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_store(fresh, root)


def test_another_window_without_force_is_refused(tiny_corpus, reference, tmp_path):
    root = tmp_path / "refused"
    shutil.copytree(reference, root)
    # An unfinished 1-s store (no done.json), continued under changed settings.
    (stage_dir(root) / "done.json").unlink()
    before = {p.name: p.read_bytes() for p in (stage_dir(root) / "store").rglob("*") if p.is_file()}
    res = cli(*args(tiny_corpus, root, "resume_with_changes=true", window=HALF_WINDOW))
    assert res.returncode == 2, res.stderr[-3000:]
    assert "window_seconds: store has 1.0, writer wants 0.5" in res.stderr
    assert "force=true" in res.stderr
    after = {p.name: p.read_bytes() for p in (stage_dir(root) / "store").rglob("*") if p.is_file()}
    assert after == before
