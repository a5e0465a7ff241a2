"""Per-item sampling weights: Balanced Data Sampling over teacher clusters, uniform, class-balanced.

All functions are vectorised (``np.bincount`` / a matrix-vector product): building weights for the ~2 M
AudioSet items takes milliseconds (upstream looped over the items in Python, UPSTREAM.md §9 item 21).
Weights are data: a stage can write them next to the store and the sampler only draws from them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLASS_WEIGHT_SCALE = 1000.0
CLASS_WEIGHT_OFFSET = 100.0


def uniform_weights(n: int) -> np.ndarray:
    """(n,) float64 weights 1/n (the "random", no-BDS sampler)."""
    if n <= 0:
        raise ValueError(f"uniform_weights: n must be > 0, got {n}")
    return np.full(n, 1.0 / n, dtype=np.float64)


def cluster_balanced_weights(cluster_ids: np.ndarray) -> np.ndarray:
    """Balanced Data Sampling weights: every non-empty cluster gets total mass 1/K, uniform inside it.

    Args:
        cluster_ids: (N,) non-negative integer cluster id of each item. Cluster ids with no item (empty
            clusters) get no mass: K counts the non-empty clusters only.

    Returns:
        (N,) float64 weights summing to 1; item i gets ``1 / (K_nonempty * count(c_i))``.
    """
    ids = np.asarray(cluster_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise ValueError(
            f"cluster_balanced_weights: cluster_ids must be a non-empty (N,) array, got {ids.shape}"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"cluster_balanced_weights: cluster_ids must be integers, got {ids.dtype}")
    if ids.min() < 0:
        raise ValueError(f"cluster_balanced_weights: cluster ids must be >= 0, got min {ids.min()}")
    counts = np.bincount(ids)
    n_nonempty = int(np.count_nonzero(counts))
    return 1.0 / (n_nonempty * counts[ids].astype(np.float64))


def class_balanced_weights(label_matrix: np.ndarray) -> np.ndarray:
    """Class-balanced weights of the supervised baseline (PaSST/EfficientAT style).

    Per-class weight ``1000 / (100 + n_c)`` with n_c the number of items carrying class c; an item's weight
    is the **sum** over its labels (multi-label; upstream kept only one label per item, §9 item 8).

    Args:
        label_matrix: (N, C) multi-hot matrix (bool or 0/1; a ``scipy.sparse`` matrix also works).

    Returns:
        (N,) float64 un-normalised weights (items without any label get 0).
    """
    if label_matrix.ndim != 2:
        raise ValueError(f"class_balanced_weights: label_matrix must be (N, C), got {label_matrix.shape}")
    labels = label_matrix.astype(np.float64)
    n_per_class = np.asarray(labels.sum(axis=0)).ravel()
    per_class = CLASS_WEIGHT_SCALE / (CLASS_WEIGHT_OFFSET + n_per_class)
    return np.asarray(labels @ per_class).ravel()


def label_matrix_from_indices(label_indices: Sequence[Sequence[int]], n_classes: int) -> np.ndarray:
    """(N, n_classes) bool multi-hot matrix from each item's list of class indices."""
    lengths = np.fromiter((len(x) for x in label_indices), dtype=np.int64, count=len(label_indices))
    flat = np.fromiter((c for x in label_indices for c in x), dtype=np.int64, count=int(lengths.sum()))
    if flat.size and (flat.min() < 0 or flat.max() >= n_classes):
        raise ValueError(f"label_matrix_from_indices: class index out of [0, {n_classes})")
    matrix = np.zeros((len(label_indices), n_classes), dtype=bool)
    matrix[np.repeat(np.arange(len(label_indices)), lengths), flat] = True
    return matrix
