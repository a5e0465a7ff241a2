"""Store corruption and non-finite values are caught, cheaply, with one-line messages that say what to do:
changed bytes (``verify="cached"`` hashes a part once, again only when it changes), truncated JSON files,
NaN/inf embeddings (statistics, k-means, the cluster stage) and the writer's last line of defence."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import ssondo_train.store.index as store_index
from ssondo_train.clustering import fit_kmeans
from ssondo_train.store import StoreCorruptError, merge_indexes, open_store
from ssondo_train.store.fsutil import md5_file

from .helpers import DIM, build_store, clip_ids, make_writer, record

CLIPS = clip_ids(12)
VERIFIED = ".cache/verified.json"


def parts_of(root: Path) -> list[Path]:
    return [root / p["name"] for p in json.loads((root / "index.json").read_text())["parts"]]


def age(paths: list[Path], seconds: float = 100.0) -> None:
    """Give files an mtime ``seconds`` in the past: a part modified just now is hashed again on the next
    open (its mtime could still change within the same clock tick), an older one is recorded."""
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t))


def flip_byte(path: Path, offset: int) -> None:
    """Change one byte in place: same size, new mtime."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def embedding_offset(root: Path, i: int) -> tuple[Path, int]:
    """The part file and byte offset of the embedding of window ``i`` (float16 or float32 values)."""
    store = open_store(root, verify="none")
    part = int(store.table.part_of[i])
    path = root / store.parts[part]["name"]
    if store.backend == "wds":
        return path, int(store.table.emb_off[i])
    with h5py.File(path, "r") as f:
        start = f["embedding"].id.get_offset()
    return path, start + int(store.table.row[i]) * DIM * store.np_dtype.itemsize


def poke_nan(root: Path, i: int, value: int = 3) -> tuple[str, int, str]:
    """Overwrite value ``value`` of window ``i``'s float16 embedding with NaN (0x7E00) and put the part's new
    md5 into ``index.json`` (a store a writer without the non-finite check could have made).

    Returns:
        ``(clip_id, window, part name)`` of the window.
    """
    key = open_store(root, verify="none").key(i)
    path, offset = embedding_offset(root, i)
    with open(path, "r+b") as f:
        f.seek(offset + 2 * value)
        f.write(np.array([0x7E00], dtype="<u2").tobytes())
    index = json.loads((root / "index.json").read_text())
    for p in index["parts"]:
        if p["name"] == path.name:
            p["md5"] = md5_file(path)
    (root / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return key[0], key[1], path.name


@pytest.fixture
def hashed(monkeypatch) -> list[str]:
    """The names of the parts whose md5 is computed while verifying, in order."""
    calls: list[str] = []

    def counting_md5(path, *args, **kwargs):
        calls.append(Path(path).name)
        return md5_file(path, *args, **kwargs)

    monkeypatch.setattr(store_index, "md5_file", counting_md5)
    return calls


# ---------------------------------------------------------------- (a) a changed byte
@pytest.mark.parametrize("backend", ["wds", "h5"])
def test_a_changed_byte_is_caught_by_md5_and_cached_but_not_by_size(tmp_path: Path, backend: str) -> None:
    index = build_store(tmp_path, backend, CLIPS, clips_per_shard=4)
    age(parts_of(tmp_path))
    open_store(tmp_path, verify="cached")  # verified once and recorded
    part = index["parts"][1]
    path, offset = embedding_offset(tmp_path, sum(p["samples"] for p in index["parts"][:1]))
    assert path.name == part["name"]
    size, mtime = path.stat().st_size, path.stat().st_mtime_ns
    flip_byte(path, offset + 1)
    assert path.stat().st_size == size and path.stat().st_mtime_ns != mtime

    open_store(tmp_path, verify="size")  # a stat cannot see it
    for mode in ("md5", "cached"):
        with pytest.raises(StoreCorruptError) as err:
            open_store(tmp_path, verify=mode)
        msg = str(err.value)
        assert part["name"] in msg and f"index says {part['md5']}" in msg
        assert f"md5 {md5_file(path)}" in msg
        assert "stage=precompute force=true" in msg and "\n" not in msg
    # The repair the message gives: delete the part, rerun the writer (as precompute force=true does).
    path.unlink()
    build_store(tmp_path, backend, CLIPS, clips_per_shard=4)
    assert md5_file(path) == part["md5"]
    open_store(tmp_path, verify="cached")


# ---------------------------------------------------------------- (b) hashed once, again only when changed
def test_cached_hashes_each_part_once_and_again_only_when_it_changes(
    tmp_path: Path, hashed: list[str], caplog
) -> None:
    index = build_store(tmp_path, "wds", CLIPS, clips_per_shard=3)
    parts = parts_of(tmp_path)
    assert len(parts) == 4
    age(parts)
    with caplog.at_level(logging.INFO, logger="ssondo_train.store.index"):
        open_store(tmp_path, verify="cached")
    assert hashed == [p.name for p in parts]
    total = sum(p["bytes"] for p in index["parts"])
    assert f"hashing 4 part(s) of {tmp_path} ({total / 1e6:.1f} MB)" in caplog.text
    assert "verified the md5 of 4 part(s)" in caplog.text
    record = json.loads((tmp_path / VERIFIED).read_text())
    assert record["format"] == "ssondo-store-verified" and record["version"] == 1
    for p, entry in zip(parts, index["parts"], strict=True):
        st = p.stat()
        assert record["parts"][p.name] == {
            "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ino": st.st_ino,
            "md5": entry["md5"],
        }

    hashed.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ssondo_train.store.index"):
        open_store(tmp_path, verify="cached")
        open_store(tmp_path, verify="cached")
    assert hashed == [] and "hashing" not in caplog.text

    age([parts[2]], 50.0)  # touched: only this part is hashed again
    open_store(tmp_path, verify="cached")
    assert hashed == [parts[2].name]
    open_store(tmp_path, verify="cached")
    assert hashed == [parts[2].name]

    hashed.clear()  # md5 hashes everything on every open, whatever the record says
    open_store(tmp_path, verify="md5")
    assert hashed == [p.name for p in parts]

    hashed.clear()  # modified just now: hashed, but not trusted until its mtime is old enough
    os.utime(parts[0])
    open_store(tmp_path, verify="cached")
    open_store(tmp_path, verify="cached")
    assert hashed == [parts[0].name, parts[0].name]

    hashed.clear()  # a copy keeps size and mtime (cp -a, rsync) but is another file: hashed again
    copy = parts[3].with_name("copy.tmp")
    copy.write_bytes(parts[3].read_bytes())
    st = parts[3].stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(copy, parts[3])
    open_store(tmp_path, verify="cached")
    assert hashed == [parts[0].name, parts[3].name]


def test_an_unreadable_record_is_rebuilt_and_a_rebuilt_index_is_verified_again(
    tmp_path: Path, hashed: list[str]
) -> None:
    build_store(tmp_path, "h5", CLIPS, clips_per_shard=6)
    parts = parts_of(tmp_path)
    age(parts)
    (tmp_path / ".cache").mkdir()
    (tmp_path / VERIFIED).write_text('{"format": "ssondo-store-verif')
    open_store(tmp_path, verify="cached")
    assert hashed == [p.name for p in parts]
    assert set(json.loads((tmp_path / VERIFIED).read_text())["parts"]) == {p.name for p in parts}
    hashed.clear()
    index = json.loads((tmp_path / "index.json").read_text())
    index["parts"][0]["md5"] = "0" * 32  # the index now expects other content: the record does not vouch
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(
        StoreCorruptError, match=f"{parts[0].name} is corrupt: md5 [0-9a-f]{{32}}, index says 0{{32}}"
    ):
        open_store(tmp_path, verify="cached")
    assert hashed == [parts[0].name]


def _open_cached(root: str) -> int:
    for _ in range(3):
        open_store(root, verify="cached")
    return os.getpid()


def test_concurrent_readers_leave_a_valid_record(tmp_path: Path) -> None:
    build_store(tmp_path, "wds", clip_ids(40), clips_per_shard=2)
    parts = parts_of(tmp_path)
    age(parts)
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pids = pool.map(_open_cached, [str(tmp_path)] * 4)
    assert len(pids) == 4
    record = json.loads((tmp_path / VERIFIED).read_text())
    assert set(record["parts"]) == {p.name for p in parts}
    assert not [p for p in (tmp_path / ".cache").iterdir() if p.name != "verified.json"]


# ---------------------------------------------------------------- (c) truncated JSON
@pytest.mark.parametrize("name", ["index.json", "meta.json"])
def test_a_truncated_json_file_is_named_in_one_line(tmp_path: Path, name: str) -> None:
    build_store(tmp_path, "wds", CLIPS, clips_per_shard=4)
    path = tmp_path / name
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(StoreCorruptError) as err:
        open_store(tmp_path, verify="none")
    msg = str(err.value)
    assert msg.startswith(f"{path} is not valid JSON (truncated?): ") and "\n" not in msg
    assert "stage=precompute force=true" in msg
    if name == "index.json":
        assert f"merge_indexes('{tmp_path}')" in msg
        merge_indexes(tmp_path)  # the repair the message gives: the same index, from the commit markers
        assert path.read_bytes() == good


def test_a_truncated_meta_json_is_named_when_indexing(tmp_path: Path) -> None:
    build_store(tmp_path, "wds", CLIPS, clips_per_shard=4)
    (tmp_path / "meta.json").write_text('{"format": "ssondo-teacher-st')
    with pytest.raises(StoreCorruptError, match="meta.json is not valid JSON"):
        merge_indexes(tmp_path)


# ---------------------------------------------------------------- (d) NaN in a stored embedding
@pytest.mark.parametrize("backend", ["wds", "h5"])
def test_a_nan_in_the_store_stops_statistics_naming_the_window(tmp_path: Path, backend: str) -> None:
    build_store(tmp_path, backend, CLIPS, clips_per_shard=4)
    clip, window, part = poke_nan(tmp_path, 7)
    store = open_store(tmp_path, verify="md5")  # the index vouches for the NaN: only a value check sees it
    with pytest.raises(StoreCorruptError) as err:
        store.compute_stats()
    msg = str(err.value)
    assert f"holds 1 window(s) with NaN/inf embedding values: ({clip!r}, {window}) in {part}" in msg
    assert "stage=precompute force=true" in msg and "\n" not in msg
    assert not (tmp_path / "stats.npz").exists()
    with pytest.raises(StoreCorruptError, match="holds 1 window"):
        store.check_finite()
    keys, x = store.read_all_embeddings()
    assert np.isnan(x[7, 3]) and np.isfinite(np.delete(x, 7, axis=0)).all()
    with pytest.raises(StoreCorruptError, match=f"holds 1 window.*{part}"):
        store.check_finite(x)


def test_many_non_finite_windows_are_counted_and_the_first_named(tmp_path: Path) -> None:
    build_store(tmp_path, "wds", CLIPS, clips_per_shard=4)
    n = len(open_store(tmp_path))
    for i in range(0, n, 2):
        poke_nan(tmp_path, i, value=0)
    store = open_store(tmp_path)
    with pytest.raises(StoreCorruptError) as err:
        store.compute_stats(cache=False)
    bad = len(range(0, n, 2))
    assert f"holds {bad} window(s)" in str(err.value) and f"and {bad - 5} more" in str(err.value)
    assert f"({store.key(0)[0]!r}, {store.key(0)[1]})" in str(err.value)


def test_k_means_refuses_non_finite_rows() -> None:
    x = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    x[17, 2] = np.nan
    x[30, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 row\(s\) with NaN/inf values \(rows 17, 30\)"):
        fit_kmeans(x, k=3, n_init=1)


def test_the_writer_refuses_non_finite_embeddings_and_layers(tmp_path: Path) -> None:
    w = make_writer(tmp_path, "wds", layers=True)
    (plan,) = w.plan_shards(CLIPS[:2], 2)
    good = record(CLIPS[1], 0, False, True)
    emb = good.embedding.copy()
    emb[4] = np.nan
    with pytest.raises(ValueError, match=re.escape(f"clip {CLIPS[1]!r} window 0: embedding has 1 NaN/inf")):
        w.write_shard(plan, [type(good)(good.clip_id, 0, 0.0, 1.0, emb, layers=good.layers)])
    layers = good.layers.copy()
    layers[1, 2] = np.inf
    with pytest.raises(ValueError, match=re.escape(f"clip {CLIPS[1]!r} window 0: layers has 1 NaN/inf")):
        w.write_shard(plan, [type(good)(good.clip_id, 0, 0.0, 1.0, good.embedding, layers=layers)])
    assert not w.shard_complete(plan)


# ---------------------------------------------------------------- (e) the cluster stage, end to end
@pytest.fixture(scope="module")
def precomputed(tmp_path_factory) -> tuple[Path, list[str]]:
    """A run with a finished store (no clusters yet); returns (output root, the run's overrides)."""
    from tests.pipeline.conftest import TINY_WINDOW, cli, write_tiny_corpus

    folder = tmp_path_factory.mktemp("integrity")
    manifest = write_tiny_corpus(folder / "corpus", n_clips=8, bad=False)
    base = [
        "run_name=t",
        f"paths.output_root={folder / 'out'}",
        f"precompute.manifest={manifest}",
        "precompute.clips_per_shard=3",
        "precompute.num_workers=0",
        *TINY_WINDOW,
        "cluster.k=2",
    ]
    res = cli("stage=precompute", *base)
    assert res.returncode == 0, res.stderr[-3000:]
    return folder / "out", base


def run_copy(precomputed, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the precomputed run (parts aged, so that verification records them)."""
    import shutil

    root, base = precomputed
    shutil.copytree(root, tmp_path / "out")
    store = tmp_path / "out" / "t" / "precompute" / "store"
    age(parts_of(store))
    return store, [o.replace(str(root), str(tmp_path / "out")) for o in base]


def refused(res) -> str:
    """The one error line of a refused command (no traceback)."""
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_the_cluster_stage_verifies_the_store_once_and_store_verify_is_not_an_identity(precomputed, tmp_path):
    from tests.pipeline.conftest import cli

    store, base = run_copy(precomputed, tmp_path)
    res = cli("stage=cluster", *base)
    assert res.returncode == 0, res.stderr[-3000:]
    assert set(json.loads((store / VERIFIED).read_text())["parts"]) == {p.name for p in parts_of(store)}
    res = cli("stage=cluster", *base, "store.verify=md5")  # how the store is checked is not what it holds
    assert res.returncode == 0 and "is already done" in res.stdout + res.stderr, res.stderr[-3000:]
    res = cli("stage=cluster", *base, "store.verify=sha1")
    assert "store.verify='sha1' is not allowed; choose one of: none, size, md5, cached" in refused(res)


@pytest.mark.slow
def test_the_cluster_stage_refuses_a_store_with_a_nan(precomputed, tmp_path):
    from tests.pipeline.conftest import cli

    store, base = run_copy(precomputed, tmp_path)
    clip, window, part = poke_nan(store, 4)
    line = refused(cli("stage=cluster", *base))
    assert f"holds 1 window(s) with NaN/inf embedding values: ({clip!r}, {window}) in {part}" in line
    assert "stage=precompute force=true" in line
    assert not (store.parents[2] / "t" / "cluster" / "default").exists()  # refused: no folder left behind


@pytest.mark.slow
def test_the_cluster_stage_refuses_a_corrupt_part_and_a_truncated_index(precomputed, tmp_path):
    from tests.pipeline.conftest import cli

    store, base = run_copy(precomputed, tmp_path)
    part = json.loads((store / "index.json").read_text())["parts"][1]
    flip_byte(store / part["name"], 1000)
    line = refused(cli("stage=cluster", *base))
    assert f"part {store / part['name']} is corrupt: md5 {md5_file(store / part['name'])}" in line
    assert f"index says {part['md5']}; delete it and rerun stage=precompute force=true" in line
    flip_byte(store / part["name"], 1000)

    good = (store / "index.json").read_bytes()
    (store / "index.json").write_bytes(good[:100])
    line = refused(cli("stage=cluster", *base))
    assert line.startswith(f"error: {store / 'index.json'} is not valid JSON (truncated?): ")
    assert "merge_indexes" in line
