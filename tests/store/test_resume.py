"""Resume after a crash, multi-rank equivalence, corruption detection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from ssondo_train.store import (
    StoreCorruptError,
    StoreIncompleteError,
    merge_indexes,
    open_store,
)

from .helpers import build_store, clip_ids, make_writer, records

CLIPS = clip_ids(14)


def content(root: Path) -> tuple[list, np.ndarray, np.ndarray]:
    store = open_store(root, verify="md5")
    keys, emb = store.read_all_embeddings()
    return keys, emb, np.stack([store.get_audio(i) for i in range(len(store))])


def final_parts(root: Path) -> dict[str, tuple[int, int]]:
    """Final-named part files -> (inode, mtime_ns): tells which files a rerun rewrote."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in root.iterdir()
        if p.name.startswith("shard-") and p.suffix in (".tar", ".h5")
    }


@pytest.mark.parametrize("backend", ["wds", "h5"])
def test_resume_rewrites_only_missing_and_partial(tmp_path: Path, backend: str) -> None:
    ref_root, root = tmp_path / "ref", tmp_path / "run"
    ref_index = build_store(ref_root, backend, CLIPS, clips_per_shard=3, audio="flac", max_count=4)
    build_store(root, backend, CLIPS, clips_per_shard=3, audio="flac", max_count=4)
    ext = ".tar" if backend == "wds" else ".h5"
    # simulated crash: shard 1 lost a part and its commit; shard 3 was being written (a .partial is
    # left, its commit marker never written); shard 4 renamed its part but crashed before committing
    os.remove(root / f"shard-000001-000{ext}")
    os.remove(root / "_commits/shard-000001.json")
    os.remove(root / "_commits/shard-000003.json")
    p3 = root / f"shard-000003-000{ext}"
    p3.rename(p3.with_name(p3.name + ".partial"))
    with open(p3.with_name(p3.name + ".partial"), "r+b") as f:
        f.truncate(700)
    os.remove(root / "_commits/shard-000004.json")
    (root / "index.json").unlink()
    with pytest.raises(StoreIncompleteError, match="3 of 5 planned shards|shards 1, 3, 4"):
        merge_indexes(root)
    before = final_parts(root)

    w = make_writer(root, backend, audio="flac", max_count=4)
    plans = w.plan_shards(CLIPS, 3)
    todo = w.pending(plans)
    assert [p.shard for p in todo] == [1, 3, 4]
    for plan in todo:
        w.write_shard(plan, records(plan.clip_ids, audio=True))
    assert w.pending(plans) == []
    after = final_parts(root)
    rewritten = {n for n in after if before.get(n) != after[n]}
    assert {n.split("-")[1] for n in rewritten} == {"000001", "000003", "000004"}
    assert not list(root.glob("*.partial"))

    index = merge_indexes(root)
    assert [p["name"] for p in index["parts"]] == [p["name"] for p in ref_index["parts"]]
    if backend == "wds":  # tars are byte-reproducible
        assert [p["md5"] for p in index["parts"]] == [p["md5"] for p in ref_index["parts"]]
    k1, e1, a1 = content(ref_root)
    k2, e2, a2 = content(root)
    assert k1 == k2
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_array_equal(a1, a2)


def test_exception_mid_shard_leaves_no_final_partial(tmp_path: Path) -> None:
    w = make_writer(tmp_path, "wds", max_count=2)
    (plan,) = w.plan_shards(CLIPS[:6], 6)

    def boom():
        yield from list(records(plan.clip_ids))[:5]
        raise RuntimeError("teacher crashed")

    with pytest.raises(RuntimeError, match="teacher crashed"):
        w.write_shard(plan, boom())
    # two full parts were renamed (complete files), the third was aborted; no commit => shard pending
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == [
        "shard-000000-000.tar",
        "shard-000000-001.tar",
    ]
    assert not w.shard_complete(plan)
    for p in tmp_path.glob("shard-*.tar"):
        import tarfile

        with tarfile.open(p) as t:
            assert len(t.getnames()) == 4  # 2 windows x (json + emb)


@pytest.mark.parametrize("backend", ["wds", "h5"])
def test_two_ranks_equal_one_rank(tmp_path: Path, backend: str) -> None:
    one = build_store(tmp_path / "one", backend, CLIPS, clips_per_shard=3, world_size=1)
    two = build_store(tmp_path / "two", backend, CLIPS, clips_per_shard=3, world_size=2)
    assert two["complete"] and two["num_samples"] == one["num_samples"]
    assert [p["name"] for p in two["parts"]] == [p["name"] for p in one["parts"]]
    s1, s2 = open_store(tmp_path / "one"), open_store(tmp_path / "two")
    k1, e1 = s1.read_all_embeddings()
    k2, e2 = s2.read_all_embeddings()
    assert k1 == k2 and len(set(k1)) == len(k1)
    np.testing.assert_array_equal(e1, e2)


def test_merge_with_a_rank_missing(tmp_path: Path) -> None:
    w = make_writer(tmp_path, "wds")
    for plan in w.plan_shards(CLIPS, 3, rank=0, world_size=2):
        w.write_shard(plan, records(plan.clip_ids))
    with pytest.raises(StoreIncompleteError, match="2 of 5"):
        merge_indexes(tmp_path)
    index = merge_indexes(tmp_path, allow_missing=True)
    assert not index["complete"] and index["missing_shards"] == [1, 3]
    with pytest.raises(StoreIncompleteError):
        open_store(tmp_path)
    assert len(open_store(tmp_path, require_complete=False)) == index["num_samples"]


@pytest.mark.parametrize("backend", ["wds", "h5"])
def test_corrupt_shard_detected(tmp_path: Path, backend: str) -> None:
    index = build_store(tmp_path, backend, CLIPS, clips_per_shard=5)
    part = index["parts"][1]
    path = tmp_path / part["name"]
    if backend == "h5":
        with h5py.File(path, "r") as f:
            offset = f["embedding"].id.get_offset() + 10
    else:
        offset = 512 * 3 + 10  # inside the first embedding payload (after json header+data, emb header)
    with open(path, "r+b") as f:  # flip one byte: same size, so only the md5 can tell
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
    open_store(tmp_path)  # default verification (sizes) cannot see it
    with pytest.raises(
        StoreCorruptError, match=f"{part['name']}.*md5 [0-9a-f]{{32}}, index says {part['md5']}"
    ):
        open_store(tmp_path, verify="md5")
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(StoreCorruptError, match="bytes, index says"):
        open_store(tmp_path)
    idx = json.loads((tmp_path / "index.json").read_text())
    assert idx["parts"][1]["md5"] == part["md5"]
