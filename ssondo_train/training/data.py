"""Distillation data: teacher-store windows paired with the student audio of the same span.

Every example is one stored window: its teacher embedding and the student-rate (32 kHz) waveform of exactly
the same time span of the same clip (upstream paired a central crop for the teacher with the first 10 s for
the student). The audio comes from the store when precompute kept it, otherwise from the manifest's file.
Training draws a fixed number of windows per epoch with replacement (BDS, uniform or class-balanced), split
across ranks. When the run trains a label head, each window also carries its clip's multi-hot labels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssondo_train.sampling import EpochSampler, cluster_balanced_weights, uniform_weights
from ssondo_train.sampling.weights import class_balanced_weights

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

log = logging.getLogger(__name__)

STUDENT_SAMPLE_RATE = 32000


def window_label_matrix(
    keys: Sequence[tuple[str, int]],
    clip_labels: Mapping[str, Sequence[str]],
    class_names: Sequence[str],
) -> csr_matrix:
    """Multi-hot labels per stored window: a window inherits the labels of its clip.

    Args:
        keys: (N,) ``(clip_id, window)`` of every stored window, in store order.
        clip_labels: clip_id -> label names (clips missing here, or with no label, get an all-zero row).
        class_names: the class order (column c is ``class_names[c]``).

    Returns:
        (N, C) ``scipy.sparse.csr_matrix`` of float32 0/1 (sparse: AudioSet has ~2 M windows x 527 classes).

    Raises:
        ValueError: a clip carries a label that is not in ``class_names``.
    """
    from scipy.sparse import csr_matrix

    column = {name: c for c, name in enumerate(class_names)}
    per_clip: dict[str, list[int]] = {}
    for clip_id, names in clip_labels.items():
        unknown = [n for n in names if n not in column]
        if unknown:
            raise ValueError(f"clip {clip_id}: labels {unknown} are not in the class list")
        per_clip[clip_id] = sorted(column[n] for n in names)
    rows = [per_clip.get(clip_id, []) for clip_id, _ in keys]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    indices = np.fromiter((c for r in rows for c in r), dtype=np.int32, count=int(indptr[-1]))
    values = np.ones(len(indices), dtype=np.float32)
    return csr_matrix((values, indices, indptr), shape=(len(rows), len(class_names)))


class WindowDataset(Dataset):
    """Global window index -> {"audio" (n,), "target" (D,), "cluster" (), "index" ()} (+ "labels" (C,)).

    Args:
        store_root: teacher store folder (opened lazily in each worker).
        clusters: (N,) cluster id per window (zeros when unknown).
        window_samples: student samples per window (audio is padded/cut to this length).
        clip_paths: clip_id -> audio file, used when the store holds no audio.
        labels: (N, C) sparse multi-hot labels per window (:func:`window_label_matrix`) or None.
    """

    def __init__(
        self,
        store_root: str | Path,
        clusters: np.ndarray,
        window_samples: int,
        clip_paths: dict[str, str] | None = None,
        labels: csr_matrix | None = None,
    ) -> None:
        self.store_root = str(store_root)
        self.clusters = clusters.astype(np.int64)
        self.window_samples = int(window_samples)
        self.clip_paths = clip_paths or {}
        self.labels = labels
        self._store = None

    @property
    def store(self):
        if self._store is None:
            from ssondo_train.store import open_store

            self._store = open_store(self.store_root, verify="none")
        return self._store

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_store"] = None  # re-opened per worker
        return state

    def __len__(self) -> int:
        return len(self.clusters)

    def _audio(self, i: int) -> np.ndarray:
        store = self.store
        if store.audio_codec is not None:
            return store.get_audio(i)
        from ssondo_train.audio import load_audio

        clip_id, _ = store.key(i)
        starts, _ = store.spans([i])
        wav, _ = load_audio(self.clip_paths[clip_id], STUDENT_SAMPLE_RATE, validate=False)
        begin = int(round(float(starts[0]) * STUDENT_SAMPLE_RATE))
        return wav[begin : begin + self.window_samples].numpy()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        audio = self._audio(int(i)).astype(np.float32, copy=False)
        n = self.window_samples
        if audio.shape[0] < n:
            audio = np.pad(audio, (0, n - audio.shape[0]))
        target = self.store.get_embeddings([int(i)])[0].astype(np.float32)
        if not np.isfinite(target).all():
            clip_id, window = self.store.key(int(i))
            raise ValueError(
                f"teacher store window {int(i)} (clip {clip_id}, window {window}) holds NaN/inf values: the "
                "store is corrupt; rebuild it with stage=precompute force=true"
            )
        item = {
            "audio": torch.from_numpy(np.ascontiguousarray(audio[:n])),
            "target": torch.from_numpy(target),
            "cluster": torch.tensor(self.clusters[i]),
            "index": torch.tensor(int(i)),
        }
        if self.labels is not None:
            item["labels"] = torch.from_numpy(self.labels[int(i)].toarray()[0].astype(np.float32))
        return item


class _IndexMap(torch.utils.data.Sampler[int]):
    """Maps sampler positions (into a subset) to global window indices, resuming where training stopped.

    Args:
        inner: the epoch sampler over the subset.
        subset: (n,) global window index of each subset position.
        batch_size: windows per training batch.
        position: ``() -> batches trained so far`` (all epochs, this rank), read when an epoch's iteration
            starts. The epoch and the first window follow from it, so an epoch resumed from a mid-epoch
            checkpoint continues the same stream after the batches it already trained, and the first epoch
            after a resume draws its own stream whatever the loader prefetched before Lightning's
            ``set_epoch``. None: the epoch given by :meth:`set_epoch`, from its start.
    """

    def __init__(
        self,
        inner: EpochSampler,
        subset: np.ndarray,
        batch_size: int = 1,
        position: Callable[[], int] | None = None,
    ) -> None:
        self.inner = inner
        self.subset = subset
        self.batch_size = int(batch_size)
        self.position = position

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.inner) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        if self.position is None:
            self.inner.set_epoch(epoch)

    def start(self) -> tuple[int, int]:
        """``(epoch, first batch)`` the next iteration starts at."""
        if self.position is None:
            return self.inner.epoch, 0
        return divmod(int(self.position()), self.batches_per_epoch)

    def __iter__(self):
        epoch, batch = self.start()
        self.inner.set_epoch(epoch)
        for pos in self.inner.indices()[batch * self.batch_size :]:
            yield int(self.subset[pos])

    def __len__(self) -> int:
        # The full epoch: Lightning counts the batches a resumed epoch already trained.
        return len(self.inner)


@dataclass
class DistillData:
    """What the stage resolved about the data: indices per split, cluster ids, optional labels.

    ``labels`` is the (N, C) sparse multi-hot matrix over all stored windows (None when the run uses no
    labels) and ``class_names`` its column order.
    """

    store_root: Path
    train_idx: np.ndarray
    val_idx: np.ndarray
    clusters: np.ndarray
    window_samples: int
    clip_paths: dict[str, str]
    labels: csr_matrix | None = None
    class_names: list[str] = field(default_factory=list)


class DistillDataModule(L.LightningDataModule):
    """Train loader: ``sampler`` draws ``num_samples`` training windows per epoch with replacement
    (``bds``: equal mass per cluster; ``random``: uniform; ``class_balanced``: per-class weight
    1000 / (100 + n_c) summed over a window's labels), split across ranks. Val loader: every held-out
    window once."""

    def __init__(
        self,
        data: DistillData,
        sampler: str,
        num_samples: int,
        batch_size: int,
        num_workers: int,
        seed: int,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.data = data
        self.sampler_name = sampler
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.pin_memory = pin_memory
        self.dataset = WindowDataset(
            data.store_root, data.clusters, data.window_samples, data.clip_paths, data.labels
        )

    def train_weights(self) -> np.ndarray:
        """(n_train,) sampling weights of the training windows (not necessarily normalised)."""
        if self.sampler_name == "bds":
            return cluster_balanced_weights(self.data.clusters[self.data.train_idx])
        if self.sampler_name == "class_balanced":
            if self.data.labels is None:
                raise ValueError("sampler=class_balanced needs per-window labels")
            # Windows of unlabelled clips get weight 0 and are never drawn.
            return class_balanced_weights(self.data.labels[self.data.train_idx])
        return uniform_weights(len(self.data.train_idx))

    def _loader(self, sampler, shuffle: bool = False) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=shuffle,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory,
            prefetch_factor=4 if workers > 0 else None,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        inner = EpochSampler(
            self.train_weights(), self.num_samples, seed=self.seed, rank=rank, world_size=world
        )
        module = self.trainer.lightning_module if self.trainer is not None else None
        position = (
            (lambda: module.batches_trained)
            if module is not None and hasattr(module, "batches_trained")
            else None
        )
        return self._loader(_IndexMap(inner, self.data.train_idx, self.batch_size, position))

    def val_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        # Each rank validates a disjoint strided slice; metrics are averaged with sync_dist.
        return self._loader(list(self.data.val_idx[rank::world]))

    def recalibration_batches(self, items: int):
        """Training audio batches ``(B, n)`` for BatchNorm recalibration (a fixed, seeded draw)."""
        rng = np.random.default_rng(self.seed + 7)
        idx = self.data.train_idx[
            rng.choice(len(self.data.train_idx), size=min(items, len(self.data.train_idx)), replace=False)
        ]
        for start in range(0, len(idx), self.batch_size):
            yield torch.stack([self.dataset[int(i)]["audio"] for i in idx[start : start + self.batch_size]])
