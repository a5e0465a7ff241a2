from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssondo_train.store import StoreMismatchError, merge_indexes, open_store
from ssondo_train.store.format import quantize_pcm16

from .helpers import DIM, LAYERS, build_store, clip_ids, make_writer, record, records, windows_of

CLIPS = clip_ids(11)


def expected(clips, audio=False, layers=False):
    return [r for r in records(clips, audio, layers)]


@pytest.mark.parametrize("backend", ["wds", "h5"])
@pytest.mark.parametrize(
    "dtype,audio,layers",
    [
        ("float16", None, False),
        ("float32", "flac", True),
        ("float16", "pcm16", True),
        ("float32", "float32", False),
    ],
)
def test_round_trip(tmp_path: Path, backend: str, dtype: str, audio: str | None, layers: bool) -> None:
    index = build_store(
        tmp_path, backend, CLIPS, clips_per_shard=4, dtype=dtype, audio=audio, layers=layers, max_count=3
    )
    want = expected(CLIPS, audio is not None, layers)
    n = len(want)
    assert n == sum(windows_of(c) for c in CLIPS)
    # 3 shards of <= 4 clips, each split in parts of <= 3 windows
    assert index["num_samples"] == n and index["num_clips"] == 11 and index["num_shards"] == 3
    assert all(p["samples"] <= 3 for p in index["parts"]) and len(index["parts"]) >= n // 3
    assert [p["shard"] for p in index["parts"]] == sorted(p["shard"] for p in index["parts"])

    store = open_store(tmp_path, verify="md5")
    assert store.meta["teacher"]["name"] == "M2D" and store.meta["teacher"]["checkpoint_sha256"] == "ab" * 32
    assert store.meta["dtype"] == dtype and store.meta["dim"] == DIM
    assert store.meta["counts"]["windows"] == n and store.meta["counts"]["clips"] == 11
    assert store.meta["extra"] == {"source": "tests"}
    assert len(store) == n
    assert store.keys() == [(r.clip_id, r.window) for r in want]
    assert store.clip_ids() == CLIPS

    np_dtype = np.float16 if dtype == "float16" else np.float32
    ref = np.stack([r.embedding.astype(np_dtype).astype(np.float32) for r in want])
    keys, emb = store.read_all_embeddings()
    assert emb.dtype == np.float32 and emb.shape == (n, DIM)
    np.testing.assert_array_equal(emb, ref)
    perm = np.random.default_rng(1).integers(0, n, size=2 * n)  # with replacement, as BDS draws
    np.testing.assert_array_equal(store.get_embeddings(perm).astype(np.float32), ref[perm])
    start, end = store.spans(perm)
    np.testing.assert_array_equal(start, [want[i].start for i in perm])
    np.testing.assert_array_equal(end, [want[i].end for i in perm])
    assert store.index_of(want[5].clip_id, want[5].window) == 5

    if layers:
        got = store.get_layers(perm[:7])
        assert got.shape == (7, LAYERS, DIM)
        np.testing.assert_array_equal(got, np.stack([want[i].layers.astype(np_dtype) for i in perm[:7]]))
    if audio:
        for i in perm[:5]:
            a = store.get_audio(int(i))
            exact = want[i].audio if audio == "float32" else quantize_pcm16(want[i].audio) / np.float32(32768)
            np.testing.assert_array_equal(a, exact.astype(np.float32))

    fields = ("embedding",) + (("audio",) if audio else ()) + (("layers",) if layers else ())
    ds = store.dataset(fields=fields)
    item = ds[4]
    assert item["clip_id"] == want[4].clip_id and item["window"] == want[4].window
    assert item["embedding"].dtype == torch.float32
    np.testing.assert_array_equal(item["embedding"].numpy(), ref[4])
    batch = ds.get_batch([3, 3, 0])
    assert batch["clip_id"] == [want[3].clip_id, want[3].clip_id, want[0].clip_id]
    np.testing.assert_array_equal(batch["embedding"].numpy(), ref[[3, 3, 0]])
    if audio:
        assert batch["audio"].shape == (3, want[0].audio.shape[0])
    raw = store.dataset(embedding_dtype=None).get_batch([1, 2])["embedding"]
    assert raw.dtype == (torch.float16 if dtype == "float16" else torch.float32)
    np.testing.assert_array_equal(raw.float().numpy(), ref[[1, 2]])


@pytest.mark.parametrize("backend", ["wds", "h5"])
def test_torch_loaders(tmp_path: Path, backend: str) -> None:
    build_store(tmp_path, backend, CLIPS, clips_per_shard=3, audio="flac", max_count=4)
    store = open_store(tmp_path)
    _, ref = store.read_all_embeddings()
    n = len(store)
    ds = store.dataset(fields=("embedding", "audio"))
    sampler = torch.utils.data.WeightedRandomSampler(
        torch.ones(n), 10 * n, replacement=True, generator=torch.Generator().manual_seed(0)
    )
    seen = []
    for b in ds.loader(8, sampler=sampler, num_workers=2):
        np.testing.assert_array_equal(b["embedding"].numpy(), ref[b["index"].numpy()])
        assert b["audio"].shape == (len(b["index"]), 200)
        seen += b["index"].tolist()
    assert len(seen) == 10 * n and set(seen) == set(range(n))
    # standard DataLoader path (__getitems__ + default_collate)
    dl = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=True, num_workers=2)
    got = {}
    for b in dl:
        for i, e, c in zip(b["index"].tolist(), b["embedding"], b["clip_id"], strict=True):
            got[i] = (e.numpy(), c)
    assert sorted(got) == list(range(n))
    keys = store.keys()
    for i, (e, c) in got.items():
        np.testing.assert_array_equal(e, ref[i])
        assert c == keys[i][0]
    # streaming: each (rank, worker) reads disjoint parts, together all windows once
    parts = len(store.parts)
    assert parts >= 4
    union = []
    for rank in range(2):
        st = store.stream(
            fields=("embedding",), rank=rank, world_size=2, shuffle=True, seed=3, shuffle_buffer=4
        )
        st.set_epoch(1)
        idx = [
            i
            for b in torch.utils.data.DataLoader(st, batch_size=4, num_workers=2)
            for i in b["index"].tolist()
        ]
        union += idx
        for b in torch.utils.data.DataLoader(st, batch_size=4, num_workers=0):
            np.testing.assert_array_equal(b["embedding"].numpy(), ref[b["index"].numpy()])
    assert sorted(union) == list(range(n))
    # streaming batches built in the workers
    st = store.stream(fields=("embedding", "audio"), shuffle=True, shuffle_buffer=6)
    got_idx = []
    for b in st.loader(5, num_workers=2):
        assert b["embedding"].dtype == torch.float32 and b["audio"].shape == (len(b["index"]), 200)
        np.testing.assert_array_equal(b["embedding"].numpy(), ref[b["index"].numpy()])
        assert b["clip_id"] == [keys[i][0] for i in b["index"].tolist()]
        got_idx += b["index"].tolist()
    assert sorted(got_idx) == list(range(n)) and got_idx != sorted(got_idx)


def test_stats_and_cache(tmp_path: Path) -> None:
    build_store(tmp_path, "wds", CLIPS, dtype="float32")
    store = open_store(tmp_path)
    _, x = store.read_all_embeddings(np.float64)
    stats = store.compute_stats()
    assert stats.count == len(store)
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.std, x.std(0), rtol=1e-10)
    assert (tmp_path / "stats.npz").exists()
    again = open_store(tmp_path).compute_stats()  # from the cache
    np.testing.assert_array_equal(again.mean, stats.mean)
    assert len(list((tmp_path / ".cache").glob("wds-table-*.npz"))) == 1


def test_webdataset_library_reads_our_tars(tmp_path: Path) -> None:
    import webdataset as wds

    build_store(tmp_path, "wds", CLIPS, dtype="float16", audio="flac")
    index = json.loads((tmp_path / "index.json").read_text())
    urls = [str(tmp_path / p["name"]) for p in index["parts"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    want = expected(CLIPS, audio=True)
    assert len(samples) == len(want)
    for s, r in zip(samples, want, strict=True):
        assert set(s) >= {"__key__", "json", "emb.f16", "audio.flac"}
        meta = json.loads(s["json"])
        assert (meta["clip_id"], meta["window"], meta["start"], meta["end"]) == (
            r.clip_id,
            r.window,
            r.start,
            r.end,
        )
        np.testing.assert_array_equal(np.frombuffer(s["emb.f16"], "<f2"), r.embedding.astype(np.float16))
    assert index["parts"][0]["first_key"] == samples[0]["__key__"]


def test_writer_validates_records_and_layout(tmp_path: Path) -> None:
    w = make_writer(tmp_path, "wds")
    (plan,) = w.plan_shards(CLIPS[:3], 3)
    with pytest.raises(ValueError, match="out of order"):
        w.write_shard(plan, [record(CLIPS[1], 0, False, False), record(CLIPS[0], 0, False, False)])
    with pytest.raises(ValueError, match="not in shard"):
        w.write_shard(plan, [record(CLIPS[5], 0, False, False)])
    bad = record(CLIPS[0], 0, False, False)
    with pytest.raises(ValueError, match="shape"):
        w.write_shard(plan, [type(bad)(bad.clip_id, 0, 0.0, 1.0, np.zeros(DIM + 1, np.float32))])
    with pytest.raises(ValueError, match="NaN/inf"):
        w.write_shard(plan, [type(bad)(bad.clip_id, 0, 0.0, 1.0, np.full(DIM, 1e6, np.float32))])
    with pytest.raises(ValueError, match="audio"):
        w.write_shard(plan, [record(CLIPS[0], 0, True, False)])
    # nothing of the failed attempts is left under a final name, and the shard is not complete
    assert not list(tmp_path.glob("shard-*")) and not w.shard_complete(plan)
    w.write_shard(plan, records(plan.clip_ids))
    assert w.shard_complete(plan)
    # another layout or plan in the same root is refused
    with pytest.raises(StoreMismatchError, match="dtype"):
        make_writer(tmp_path, "wds", dtype="float32").plan_shards(CLIPS[:3], 3)
    with pytest.raises(StoreMismatchError, match="plan"):
        make_writer(tmp_path, "wds").plan_shards(CLIPS[:4], 3)
    assert merge_indexes(tmp_path)["num_samples"] == sum(windows_of(c) for c in CLIPS[:3])


def test_failed_clips_and_empty_shard(tmp_path: Path) -> None:
    skip = frozenset(CLIPS[4:8])  # the whole second shard fails
    index = build_store(tmp_path, "h5", CLIPS, clips_per_shard=4, skip=skip)
    assert index["num_clips"] == 7 and index["complete"]
    assert {p["shard"] for p in index["parts"]} == {0, 2}
    store = open_store(tmp_path)
    assert store.clip_ids() == [c for c in CLIPS if c not in skip]
