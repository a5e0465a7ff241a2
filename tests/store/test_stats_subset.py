"""``EmbeddingStore.compute_stats(indices=...)``: normalisation statistics of the training windows only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ssondo_train.store import StoreCorruptError, StoreError, merge_indexes, open_store

from .helpers import build_store, clip_ids, make_writer, records
from .test_integrity import poke_nan

CLIPS = clip_ids(12)
HELD_OUT = frozenset(CLIPS[::4])  # 3 of 12 clips
SHIFT = 5.0  # held-out embeddings sit far from the training ones


def build_split_store(root: Path, backend: str, dtype: str = "float32") -> dict:
    """A store of several parts whose held-out clips' embeddings are shifted by ``SHIFT``."""
    w = make_writer(root, backend, dtype, max_count=3)
    for plan in w.plan_shards(CLIPS, 4, 0, 1):
        recs = (
            dataclasses.replace(r, embedding=r.embedding + SHIFT) if r.clip_id in HELD_OUT else r
            for r in records(plan.clip_ids)
        )
        w.write_shard(plan, recs)
    return merge_indexes(root)


def train_indices(store) -> np.ndarray:
    return np.array([i for i, (clip, _) in enumerate(store.keys()) if clip not in HELD_OUT], dtype=np.int64)


@pytest.mark.parametrize("backend", ["wds", "h5"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_subset_stats_equal_numpy_over_those_rows(tmp_path: Path, backend: str, dtype: str) -> None:
    build_split_store(tmp_path, backend, dtype)
    store = open_store(tmp_path)
    assert len(store.parts) > 3  # the subset spans several parts, some only partly
    _, x = store.read_all_embeddings(np.float64)
    train = train_indices(store)
    assert 0 < len(train) < len(store)
    stats = store.compute_stats(indices=train)
    assert stats.count == len(train)
    assert stats.mean.dtype == stats.std.dtype == np.float64
    np.testing.assert_allclose(stats.mean, x[train].mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.std, x[train].std(0, ddof=0), rtol=1e-12, atol=1e-12)
    # The held-out windows are not in them: the all-window statistics are far off.
    everything = store.compute_stats()
    assert everything.count == len(store)
    np.testing.assert_allclose(everything.mean, x.mean(0), rtol=1e-12, atol=1e-12)
    assert np.abs(everything.mean - stats.mean).min() > 0.5
    assert np.abs(everything.std - stats.std).max() > 0.5


def test_subset_order_repeats_and_negative_indices_do_not_matter(tmp_path: Path) -> None:
    build_split_store(tmp_path, "wds")
    store = open_store(tmp_path)
    train = train_indices(store)
    ref = store.compute_stats(indices=train, cache=False)
    shuffled = np.random.default_rng(0).permutation(np.concatenate([train, train[:5]]))
    shuffled[0] -= len(store)  # the same window, counted from the end
    got = store.compute_stats(indices=shuffled.tolist(), cache=False)
    assert got.count == ref.count
    np.testing.assert_array_equal(got.mean, ref.mean)
    np.testing.assert_array_equal(got.std, ref.std)


def test_subset_cache_is_keyed_by_the_subset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_split_store(tmp_path, "wds")
    store = open_store(tmp_path)
    train = train_indices(store)
    held = np.setdiff1d(np.arange(len(store)), train)
    everything = store.compute_stats()
    a = store.compute_stats(indices=train)
    b = store.compute_stats(indices=held)
    assert len(list((tmp_path / ".cache").glob("stats-*.npz"))) == 2
    assert not np.allclose(a.mean, b.mean)

    def no_reads(self):
        raise AssertionError("the parts were read although the statistics are cached")

    monkeypatch.setattr(type(store), "_iter_parts", no_reads)
    again = open_store(tmp_path)
    for idx, want in ((None, everything), (train, a), (held, b)):
        got = again.compute_stats(indices=idx)
        np.testing.assert_array_equal(got.mean, want.mean)
        np.testing.assert_array_equal(got.std, want.std)
        assert got.count == want.count


def test_subset_refuses_non_finite_values_and_empty_or_bad_indices(tmp_path: Path) -> None:
    build_store(tmp_path, "wds", CLIPS, clips_per_shard=4)
    store = open_store(tmp_path)
    with pytest.raises(StoreError, match="no statistics"):
        store.compute_stats(indices=[])
    with pytest.raises(IndexError):
        store.compute_stats(indices=[len(store)])
    clip, window, part = poke_nan(tmp_path, 7)
    store = open_store(tmp_path)
    # Window 7 is outside the subset: the store is still refused, as the all-window statistics would be.
    with pytest.raises(StoreCorruptError, match=f"holds 1 window.*{part}"):
        store.compute_stats(indices=[0, 1, 2])
    assert not list((tmp_path / ".cache").glob("stats-*.npz"))
