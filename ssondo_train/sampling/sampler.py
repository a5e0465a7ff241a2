"""Weighted sampling with replacement, a fixed number of draws per epoch, reproducible and DDP-aware.

Each (seed, epoch, rank) triple seeds its own NumPy stream, so every epoch differs, reruns are identical, and
no two ranks share a stream. Each rank draws ``ceil(num_samples / world_size)`` indices: the epoch length is
the same whatever the number of GPUs (upstream's Lightning wrapping changed it per rank, §9 item 21).

Drawing is inverse-CDF sampling (``searchsorted`` of sorted uniforms on a cumulative sum), vectorised; unlike
``torch.multinomial`` it has no 2^24-category limit and, unlike ``Generator.choice(p=...)``, it needs no
normalised float64 probabilities.

With Lightning, pass ``use_distributed_sampler=False`` to the Trainer so it does not wrap this sampler, and
give it ``rank=trainer.global_rank, world_size=trainer.world_size``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def _cumulative_weights(weights: np.ndarray) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"sampling weights must be a non-empty (N,) array, got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sampling weights must be finite and >= 0")
    cdf = np.cumsum(w)
    if cdf[-1] <= 0:
        raise ValueError("sampling weights sum to 0")
    return cdf


def _per_rank(num_samples: int, rank: int, world_size: int) -> int:
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return math.ceil(num_samples / world_size)


def _rng(seed: int, epoch: int, rank: int) -> np.random.Generator:
    # SeedSequence mixes the three integers into independent, well-separated streams.
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(rank)]))


def _draw_from_cdf(cdf: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    # Sorted uniforms straight from normalised exponential spacings (the order statistics of n uniforms):
    # sorted queries make searchsorted cache-friendly (~10x faster than random ones for N = 2 M), and the
    # final shuffle restores an i.i.d. order.
    spacings = np.cumsum(rng.standard_exponential(n + 1))
    u = spacings[:-1] * (cdf[-1] / spacings[-1])
    idx = np.searchsorted(cdf, u, side="right")
    rng.shuffle(idx)
    # u * total can round up to total; the last positive-weight item then owns it, never a zero-weight tail.
    last_positive = int(np.searchsorted(cdf, cdf[-1], side="left"))
    return np.minimum(idx, last_positive).astype(np.int64)


def draw_indices(
    weights: np.ndarray,
    n: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> np.ndarray:
    """This rank's indices for one epoch, drawn with replacement proportionally to ``weights``.

    For iterable pipelines (webdataset) that cannot take a Sampler: the same stream as :class:`EpochSampler`.

    Args:
        weights: (N,) non-negative weights (need not be normalised).
        n: total draws per epoch over all ranks.
        seed, epoch, rank: select the stream.
        world_size: number of ranks.

    Returns:
        (ceil(n / world_size),) int64 indices in [0, N).
    """
    count = _per_rank(n, rank, world_size)
    return _draw_from_cdf(_cumulative_weights(weights), count, _rng(seed, epoch, rank))


class EpochSampler(Sampler[int]):
    """``num_samples`` weighted draws with replacement per epoch, split over ranks.

    Args:
        weights: (N,) non-negative item weights (e.g. :func:`cluster_balanced_weights`).
        num_samples: draws per epoch over all ranks.
        seed: base seed; the stream of an epoch is fixed by (seed, epoch, rank).
        rank, world_size: this process's rank and the number of ranks.

    Call :meth:`set_epoch` before each epoch (Lightning does it for samplers that have it).
    """

    def __init__(
        self,
        weights: np.ndarray,
        num_samples: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self._cdf = _cumulative_weights(weights)
        self.num_samples = int(num_samples)
        self.per_rank = _per_rank(self.num_samples, rank, world_size)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """(len(self),) int64 indices of the current epoch for this rank."""
        return _draw_from_cdf(self._cdf, self.per_rank, _rng(self.seed, self.epoch, self.rank))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.per_rank
