"""Sampling weights and the epoch sampler: masses, streams per rank/epoch, reproducibility, scale."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ssondo_train.sampling import (
    EpochSampler,
    class_balanced_weights,
    cluster_balanced_weights,
    draw_indices,
    label_matrix_from_indices,
    uniform_weights,
)

# 5 non-empty clusters of very different sizes; ids 2 and 6 are empty.
SIZES = {0: 10, 1: 2000, 3: 300, 4: 5, 5: 7685}
CLUSTER_IDS = np.random.default_rng(7).permutation(np.repeat(list(SIZES), list(SIZES.values())))


def _cluster_mass(indices: np.ndarray) -> dict[int, float]:
    counts = np.bincount(CLUSTER_IDS[indices], minlength=7)
    return {c: counts[c] / len(indices) for c in SIZES}


def test_cluster_balanced_weights_values() -> None:
    w = cluster_balanced_weights(CLUSTER_IDS)
    assert w.dtype == np.float64 and w.shape == CLUSTER_IDS.shape
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    for c, size in SIZES.items():
        assert w[CLUSTER_IDS == c] == pytest.approx(np.full(size, 1 / (5 * size)))


def test_bds_draws_give_each_cluster_equal_mass() -> None:
    idx = EpochSampler(cluster_balanced_weights(CLUSTER_IDS), num_samples=100_000, seed=3).indices()
    assert len(idx) == 100_000
    mass = _cluster_mass(idx)
    for c in SIZES:
        assert abs(mass[c] - 0.2) / 0.2 < 0.02, (c, mass[c])
    # within a cluster draws are uniform: the 10 items of cluster 0 each get ~1/10 of its draws
    inside = np.bincount(idx[CLUSTER_IDS[idx] == 0], minlength=len(CLUSTER_IDS))[CLUSTER_IDS == 0]
    assert inside.min() > 0.8 * inside.mean() and inside.max() < 1.2 * inside.mean()


def test_empty_clusters_are_ignored() -> None:
    w = cluster_balanced_weights(CLUSTER_IDS)
    # K counts the 5 non-empty clusters, not the 7 ids up to the max
    assert w[CLUSTER_IDS == 4][0] == pytest.approx(1 / (5 * 5))
    sparse_ids = np.array([0, 0, 10, 10, 10, 10])
    assert cluster_balanced_weights(sparse_ids).tolist() == pytest.approx(
        [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    )


def test_uniform_weights_give_mass_proportional_to_cluster_size() -> None:
    w = uniform_weights(len(CLUSTER_IDS))
    assert w.sum() == pytest.approx(1.0) and np.all(w == w[0])
    mass = _cluster_mass(draw_indices(w, 100_000, seed=5, epoch=0))
    for c, size in SIZES.items():
        expected = size / len(CLUSTER_IDS)
        assert abs(mass[c] - expected) < 4 * math.sqrt(expected * (1 - expected) / 100_000) + 1e-4, c


def test_zero_weight_items_are_never_drawn() -> None:
    w = np.array([0.0, 1.0, 0.0, 0.0, 3.0, 0.0])
    idx = draw_indices(w, 50_000, seed=0, epoch=0)
    assert set(np.unique(idx).tolist()) == {1, 4}
    assert np.mean(idx == 4) == pytest.approx(0.75, abs=0.01)


def test_ranks_get_distinct_streams_of_ceil_length() -> None:
    w = cluster_balanced_weights(CLUSTER_IDS)
    samplers = [EpochSampler(w, num_samples=1001, seed=1, rank=r, world_size=4) for r in range(4)]
    streams = [list(s) for s in samplers]
    assert [len(s) for s in samplers] == [251] * 4
    assert [len(s) for s in streams] == [251] * 4
    for a in range(4):
        for b in range(a + 1, 4):
            assert streams[a] != streams[b]
            # not merely shifted or reordered copies: the overlap is what independent draws give
            assert np.mean(np.array(streams[a]) == np.array(streams[b])) < 0.05
    assert np.array_equal(draw_indices(w, 1001, seed=1, epoch=0, rank=2, world_size=4), np.array(streams[2]))


def test_same_seed_and_epoch_reproducible_epoch_changes_stream() -> None:
    w = cluster_balanced_weights(CLUSTER_IDS)
    a = EpochSampler(w, num_samples=500, seed=9)
    b = EpochSampler(w, num_samples=500, seed=9)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating twice in one epoch gives the same stream
    first = list(a)
    a.set_epoch(4)
    assert list(a) != first
    assert list(EpochSampler(w, num_samples=500, seed=10)) != list(EpochSampler(w, num_samples=500, seed=9))


def test_large_n_is_vectorised() -> None:
    # 2 M items and 2 M draws: must stay well under a second (no Python loop over N).
    ids = np.random.default_rng(0).integers(0, 50, size=2_000_000)
    w = cluster_balanced_weights(ids)
    idx = EpochSampler(w, num_samples=2_000_000, seed=0).indices()
    assert idx.shape == (2_000_000,) and idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < 2_000_000


def test_sampler_argument_validation() -> None:
    w = uniform_weights(10)
    with pytest.raises(ValueError, match="rank"):
        EpochSampler(w, 10, rank=2, world_size=2)
    with pytest.raises(ValueError, match="num_samples"):
        EpochSampler(w, 0)
    with pytest.raises(ValueError, match="sum to 0"):
        EpochSampler(np.zeros(4), 10)
    with pytest.raises(ValueError, match="finite and >= 0"):
        draw_indices(np.array([1.0, -1.0]), 3, seed=0, epoch=0)
    with pytest.raises(ValueError, match=">= 0"):
        cluster_balanced_weights(np.array([0, -1]))


def test_class_balanced_weights_multi_label() -> None:
    # class 0 on 3 items, class 1 on 1 item, class 2 on none
    labels = label_matrix_from_indices([[0], [0, 1], [0], []], n_classes=3)
    assert labels.tolist() == [[True, False, False], [True, True, False], [True, False, False], [False] * 3]
    w = class_balanced_weights(labels)
    w0, w1 = 1000 / (100 + 3), 1000 / (100 + 1)
    assert w.tolist() == pytest.approx([w0, w0 + w1, w0, 0.0])
