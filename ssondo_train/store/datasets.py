"""torch datasets over a store: map-style (random access, for samplers drawing window indices with
replacement) and streaming (sequential shard reads split by rank and worker).

Every item is a dict::

    {"index": int, "clip_id": str, "window": int, "start": float, "end": float,
     "embedding": (D,) tensor, ["audio": (T,) float32 tensor], ["layers": (L, D) tensor]}

``default_collate`` turns a list of items into a batch (strings -> list, numbers/tensors -> stacked).
:meth:`StoreWindowDataset.get_batch` builds the same batch directly (one gather, no per-item objects), and
:meth:`StoreWindowDataset.loader` makes a DataLoader that uses it (batch sampler + ``batch_size=None``).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    get_worker_info,
)

from ssondo_train.store.format import EXT_AUDIO, EXT_EMB, EXT_JSON, EXT_LAYERS, decode_audio
from ssondo_train.store.reader import EmbeddingStore, open_store

log = logging.getLogger(__name__)

FIELDS = ("embedding", "audio", "layers")


def _as_store(store: EmbeddingStore | str | Path) -> EmbeddingStore:
    return store if isinstance(store, EmbeddingStore) else open_store(store)


def _check_fields(store: EmbeddingStore, fields: Sequence[str]) -> tuple[str, ...]:
    bad = [f for f in fields if f not in FIELDS]
    if bad:
        raise ValueError(f"fields must be a subset of {FIELDS}, got {list(fields)}")
    if "audio" in fields and store.audio_codec is None:
        raise ValueError(f"{store.root} stores no audio")
    if "layers" in fields and store.num_layers is None:
        raise ValueError(f"{store.root} stores no layers")
    return tuple(fields)


class StoreWindowDataset(Dataset):
    """Map-style dataset: item i = global window i of the store.

    Implements ``__getitems__`` so that a DataLoader with a batch sampler fetches a whole batch with one
    grouped read (per-part sorted h5 reads; one pread per window for wds).

    Args:
        store: an open :class:`EmbeddingStore` or a store root.
        fields: payloads to load, subset of ``("embedding", "audio", "layers")``.
        embedding_dtype: torch dtype of ``embedding`` / ``layers`` (default float32); ``None`` keeps the store
            dtype: with a float16 store this halves what workers send (measured ~2x samples/s on 2 cores);
            upcast on the device (``batch["embedding"].cuda().float()``).
    """

    def __init__(
        self,
        store: EmbeddingStore | str | Path,
        fields: Sequence[str] = ("embedding",),
        embedding_dtype: torch.dtype | None = torch.float32,
    ) -> None:
        self.store = _as_store(store)
        self.fields = _check_fields(self.store, fields)
        self.embedding_dtype = embedding_dtype
        _ = self.store.table  # build (or load) the table now, in the parent, not once per worker

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def get_batch(self, indices: Sequence[int], as_numpy: bool = False) -> dict[str, Any]:
        """Collated batch of the given windows (repeats allowed)::

            {"index": (B,) int64, "clip_id": list[str], "window": (B,) int64, "start", "end": (B,) float64,
             "embedding": (B, D), ["layers": (B, L, D)],
             ["audio": (B, T) float32, or a list if lengths differ]}

        Tensors, or numpy arrays when ``as_numpy`` (what :meth:`loader` workers send: see there).
        """
        s = self.store
        idx = s._check_indices(indices)
        t = s.table
        batch: dict[str, Any] = {
            "index": idx,
            "clip_id": [t.clip_names[c] for c in t.clip_of[idx].tolist()],
            "window": t.window[idx],
            "start": t.start[idx],
            "end": t.end[idx],
        }
        # torch's half->float cast is vectorised (numpy's is not); workers run torch single-threaded.
        if "embedding" in self.fields:
            batch["embedding"] = _cast(torch.from_numpy(s.get_embeddings(idx)), self.embedding_dtype)
        if "layers" in self.fields:
            batch["layers"] = _cast(torch.from_numpy(s.get_layers(idx)), self.embedding_dtype)
        if "audio" in self.fields:
            waves = [s.get_audio(i) for i in idx.tolist()]
            batch["audio"] = np.stack(waves) if len({w.shape[0] for w in waves}) == 1 else waves
        return _numpy_batch(batch) if as_numpy else _torch_batch(batch)

    def loader(
        self,
        batch_size: int,
        sampler: Sampler[int] | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> StoreLoader:
        """DataLoader yielding :meth:`get_batch` batches (tensors): ``sampler`` (e.g. a WeightedRandomSampler
        drawing window indices with replacement) is grouped by a BatchSampler and a worker reads a whole
        batch.

        Workers send numpy arrays, converted to tensors (zero-copy) in the main process: torch tensors cross
        process boundaries as shared-memory file descriptors, one socket round trip per tensor, which was
        the bottleneck (measured ~4x fewer samples/s on 2 cores than pickled arrays through the pipe).

        ``kwargs`` go to DataLoader (num_workers, persistent_workers, ...). Under DDP pass a sampler that
        already yields this rank's indices (Lightning cannot re-wrap a batch sampler); pin memory on the
        training side if wanted (``pin_memory`` here would pin numpy-free tensors only after conversion).
        """
        if sampler is None:
            sampler = RandomSampler(self, generator=generator) if shuffle else SequentialSampler(self)
        return StoreLoader(
            _BatchView(self),
            batch_size=None,
            sampler=BatchSampler(sampler, batch_size, drop_last),
            collate_fn=_identity,
            **kwargs,
        )

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        s = self.store
        idx = s._check_indices(indices)
        t = s.table
        emb = (
            _cast(torch.from_numpy(s.get_embeddings(idx)), self.embedding_dtype)
            if "embedding" in self.fields
            else None
        )
        layers = (
            _cast(torch.from_numpy(s.get_layers(idx)), self.embedding_dtype)
            if "layers" in self.fields
            else None
        )
        items = []
        for j, i in enumerate(idx.tolist()):
            item: dict[str, Any] = {
                "index": i,
                "clip_id": t.clip_names[int(t.clip_of[i])],
                "window": int(t.window[i]),
                "start": float(t.start[i]),
                "end": float(t.end[i]),
            }
            if emb is not None:
                item["embedding"] = emb[j]
            if layers is not None:
                item["layers"] = layers[j]
            if "audio" in self.fields:
                item["audio"] = torch.from_numpy(s.get_audio(i))
            items.append(item)
        return items


def _cast(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return x if dtype is None else x.to(dtype)


def _identity(batch: Any) -> Any:
    return batch


def _numpy_batch(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _torch_batch(batch: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(v)
        elif k == "audio" and isinstance(v, list):
            out[k] = [torch.from_numpy(w) for w in v]
        else:
            out[k] = v
    return out


class _BatchView(Dataset):
    """Dataset whose item is a list of indices -> numpy :meth:`StoreWindowDataset.get_batch` (``loader``)."""

    def __init__(self, ds: StoreWindowDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any]:
        return self.ds.get_batch(indices, as_numpy=True)


class StoreLoader(DataLoader):
    """DataLoader over :class:`_BatchView` whose iterator turns the workers' numpy batches into tensors."""

    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        return (_torch_batch(b) for b in super().__iter__())


def split_parts(
    parts: Sequence[int], rank: int, world_size: int, worker_id: int, num_workers: int
) -> list[int]:
    """Explicit node + worker splitter: consumer ``rank * num_workers + worker_id`` of
    ``world_size * num_workers`` takes every such-th part. Disjoint, and the union is all parts."""
    consumers = world_size * num_workers
    me = rank * num_workers + worker_id
    return list(parts[me::consumers])


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class StoreStreamDataset(IterableDataset):
    """Streaming dataset: reads whole parts sequentially; parts are split by rank, then by worker.

    With ``world_size * num_workers`` consumers, consumer c reads parts ``order[c::consumers]`` where
    ``order`` is the part order, shuffled per epoch (``seed + epoch``) when ``shuffle``. Ranks get different
    numbers of windows when parts are uneven: under DDP, bound the epoch by steps (e.g.
    ``limit_train_batches``) rather than relying on every rank's stream ending together.

    Args:
        store: an open :class:`EmbeddingStore` or a store root.
        fields: subset of ``("embedding", "audio", "layers")``.
        rank, world_size: explicit node split; default: torch.distributed if initialised, else 0 / 1.
        shuffle: shuffle the part order per epoch, and windows inside a ``shuffle_buffer``.
        seed: base seed; call :meth:`set_epoch` each epoch.
        shuffle_buffer: size of the window shuffle buffer (0 = windows in part order).
        embedding_dtype: torch dtype of ``embedding`` / ``layers``; ``None`` keeps the store dtype.
    """

    def __init__(
        self,
        store: EmbeddingStore | str | Path,
        fields: Sequence[str] = ("embedding",),
        rank: int | None = None,
        world_size: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 0,
        embedding_dtype: torch.dtype | None = torch.float32,
    ) -> None:
        self.store = _as_store(store)
        self.fields = _check_fields(self.store, fields)
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, seed, shuffle_buffer
        self.embedding_dtype = embedding_dtype
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _consumer(self) -> tuple[int, int, int, int]:
        """(rank, world_size, worker_id, num_workers) of the calling process."""
        rank, world = (self.rank, self.world_size) if self.rank is not None else _dist_rank_world()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world or 1, wid, nw

    def my_parts(self) -> list[int]:
        """Parts this (rank, worker) reads this epoch."""
        rank, world, wid, nw = self._consumer()
        order = list(range(len(self.store.parts)))
        if self.shuffle:
            random.Random(self.seed + self.epoch).shuffle(order)
        if len(order) < world * nw:
            log.warning("%d parts for %d consumers: some workers get no data", len(order), world * nw)
        return split_parts(order, rank, world, wid, nw)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Items with tensors (see module docstring)."""
        for item in self._iter_items():
            yield self._to_torch(item)

    def loader(self, batch_size: int, drop_last: bool = False, **kwargs: Any) -> StoreLoader:
        """DataLoader of batches built in the workers (numpy across processes, tensors on output; the same
        batch layout as :meth:`StoreWindowDataset.get_batch`). ``kwargs`` go to DataLoader."""
        return StoreLoader(
            _StreamBatches(self, batch_size, drop_last), batch_size=None, collate_fn=_identity, **kwargs
        )

    def _to_torch(self, item: dict[str, Any]) -> dict[str, Any]:
        for k in ("embedding", "layers"):
            if k in item:
                item[k] = _cast(torch.from_numpy(np.array(item[k])), self.embedding_dtype)
        if "audio" in item:
            item["audio"] = torch.from_numpy(item["audio"])
        return item

    def _iter_items(self) -> Iterator[dict[str, Any]]:
        """Raw items (numpy payloads in the store dtype), shuffled through the buffer if asked."""
        parts = self.my_parts()
        gen = (item for p in parts for item in self._iter_part(p))
        if not (self.shuffle and self.shuffle_buffer > 1):
            yield from gen
            return
        rank, _, wid, _ = self._consumer()
        rng = random.Random(((self.seed * 1_000_003 + self.epoch) * 1009 + rank) * 1009 + wid)
        buf: list[dict[str, Any]] = []
        for item in gen:
            if len(buf) < self.shuffle_buffer:
                buf.append(item)
                continue
            k = rng.randrange(len(buf))
            buf[k], item = item, buf[k]
            yield item
        rng.shuffle(buf)
        yield from buf

    def _iter_part(self, part: int) -> Iterator[dict[str, Any]]:
        s = self.store
        base = int(s.part_starts[part])
        path = s.root / s.parts[part]["name"]
        if s.backend == "wds":
            yield from self._iter_tar(path, base)
        else:
            yield from self._iter_h5(path, base)

    def _item(
        self,
        index: int,
        clip_id: str,
        window: int,
        start: float,
        end: float,
        emb: np.ndarray,
        layers: np.ndarray | None,
        audio: np.ndarray | None,
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            "index": index,
            "clip_id": clip_id,
            "window": int(window),
            "start": float(start),
            "end": float(end),
        }
        if "embedding" in self.fields:
            item["embedding"] = emb
        if "layers" in self.fields and layers is not None:
            item["layers"] = layers
        if "audio" in self.fields and audio is not None:
            item["audio"] = audio
        return item

    def _iter_tar(self, path: Path, base: int) -> Iterator[dict[str, Any]]:
        from ssondo_train.store.wds import check_key, iter_tar_samples

        s = self.store
        emb_ext, lay_ext = EXT_EMB[s.dtype], EXT_LAYERS[s.dtype]
        aud_ext = EXT_AUDIO[s.audio_codec] if s.audio_codec else None
        with open(path, "rb") as f:
            for n, (key, members) in enumerate(iter_tar_samples(f)):
                meta = json.loads(members[EXT_JSON])
                check_key(key, meta)
                emb = np.frombuffer(members[emb_ext], dtype=s.np_dtype)
                layers = None
                if "layers" in self.fields:
                    layers = np.frombuffer(members[lay_ext], dtype=s.np_dtype).reshape(s.num_layers, s.dim)
                audio = (
                    decode_audio(members[aud_ext], s.audio_codec)
                    if "audio" in self.fields and aud_ext
                    else None
                )
                yield self._item(
                    base + n, meta["clip_id"], meta["window"], meta["start"], meta["end"], emb, layers, audio
                )

    def _iter_h5(self, path: Path, base: int, block: int = 1024) -> Iterator[dict[str, Any]]:
        import h5py

        s = self.store
        with h5py.File(path, "r") as f:
            n = f["embedding"].shape[0]
            for lo in range(0, n, block):
                hi = min(n, lo + block)
                emb = f["embedding"][lo:hi]
                clip = f["clip_id"][lo:hi]
                win, st, en = f["window"][lo:hi], f["start"][lo:hi], f["end"][lo:hi]
                lay = f["layers"][lo:hi] if "layers" in self.fields else None
                aud = f["audio"][lo:hi] if "audio" in self.fields else None
                for j in range(hi - lo):
                    c = clip[j].decode("utf-8") if isinstance(clip[j], bytes) else clip[j]
                    audio = decode_audio(aud[j].tobytes(), s.audio_codec) if aud is not None else None
                    yield self._item(
                        base + lo + j,
                        c,
                        win[j],
                        st[j],
                        en[j],
                        emb[j],
                        lay[j] if lay is not None else None,
                        audio,
                    )


class _StreamBatches(IterableDataset):
    """Groups a :class:`StoreStreamDataset`'s items into numpy batches inside each worker."""

    def __init__(self, stream: StoreStreamDataset, batch_size: int, drop_last: bool) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.stream, self.batch_size, self.drop_last = stream, batch_size, drop_last

    def __iter__(self) -> Iterator[dict[str, Any]]:
        buf: list[dict[str, Any]] = []
        for item in self.stream._iter_items():
            buf.append(item)
            if len(buf) == self.batch_size:
                yield self._collate(buf)
                buf = []
        if buf and not self.drop_last:
            yield self._collate(buf)

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        dt = self.stream.embedding_dtype
        batch: dict[str, Any] = {
            "index": np.array([it["index"] for it in items], dtype=np.int64),
            "clip_id": [it["clip_id"] for it in items],
            "window": np.array([it["window"] for it in items], dtype=np.int64),
            "start": np.array([it["start"] for it in items], dtype=np.float64),
            "end": np.array([it["end"] for it in items], dtype=np.float64),
        }
        for k in ("embedding", "layers"):
            if k in items[0]:
                batch[k] = _cast(torch.from_numpy(np.stack([it[k] for it in items])), dt).numpy()
        if "audio" in items[0]:
            waves = [it["audio"] for it in items]
            batch["audio"] = np.stack(waves) if len({w.shape[0] for w in waves}) == 1 else waves
        return batch
