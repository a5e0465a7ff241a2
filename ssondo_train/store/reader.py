"""Reading a teacher-embedding store: random access by global window index, bulk reads, statistics.

Global window index i runs over the parts of ``index.json`` in order, and within a part over its rows, i.e.
the order of the writer's ordered clip list. Samplers (BDS) draw such indices.

Random access design:
- wds: the tar headers (and the tiny ``.json`` members) are scanned once into a table of byte offsets,
  cached as ``.cache/wds-table-<index hash>.npz`` in the store (or ``cache_dir``). Each tar is memory-mapped
  and viewed as overlapping rows of D values starting at every 512-byte block (tar payloads start on block
  boundaries and embeddings are raw little-endian), so a batch of embeddings is one numpy gather
  ``rows[offset // 512]``; audio is one ``os.pread`` at its offset.
- h5: the small columns (clip_id, window, start, end) are read on first use; the contiguous ``embedding``
  dataset of each part is memory-mapped at its HDF5 byte offset (h5py is bypassed on the hot path);
  layers/audio rows are read through h5py.
File descriptors / h5py handles are opened lazily per process and never pickled, so a store (or a dataset
holding one) can be handed to DataLoader workers (fork or spawn).
"""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssondo_train.store.format import (
    DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    META_FILE,
    STATS_FILE,
    StoreCorruptError,
    StoreError,
    StoreIncompleteError,
    decode_audio,
)
from ssondo_train.store.fsutil import atomic_write_bytes
from ssondo_train.store.index import VERIFIED_FILE, read_store_json, verify_parts

log = logging.getLogger(__name__)

VERIFY_MODES = ("none", "size", "md5", "cached")
_SHOWN_KEYS = 5  # non-finite windows named in an error message
_TAR_BLOCK = 512


@dataclass(frozen=True)
class StoreStats:
    """Per-dimension statistics over all windows or a subset of them (``compute_stats(indices=...)``, e.g. the
    training split), population std (ddof=0), computed in float64."""

    mean: np.ndarray  # (D,) float64
    std: np.ndarray  # (D,) float64
    count: int


@dataclass
class _Table:
    clip_names: list[str]  # unique clip ids in store order
    clip_of: np.ndarray  # (N,) int32 -> clip_names
    window: np.ndarray  # (N,) int64
    start: np.ndarray  # (N,) float64
    end: np.ndarray  # (N,) float64
    part_of: np.ndarray  # (N,) int32
    row: np.ndarray  # (N,) int64, row within its part
    emb_off: np.ndarray | None = None  # wds: (N,) int64
    layers_off: np.ndarray | None = None
    audio_off: np.ndarray | None = None
    audio_size: np.ndarray | None = None

    _WDS_ARRAYS = ("emb_off", "layers_off", "audio_off", "audio_size")

    def to_npz_bytes(self) -> bytes:
        blob = "\0".join(self.clip_names).encode("utf-8")
        arrays = {k: getattr(self, k) for k in ("clip_of", "window", "start", "end", "part_of", "row")}
        arrays.update({k: getattr(self, k) for k in self._WDS_ARRAYS if getattr(self, k) is not None})
        buf = io.BytesIO()
        np.savez(
            buf,
            clip_blob=np.frombuffer(blob, dtype=np.uint8),
            num_clips=np.int64(len(self.clip_names)),
            **arrays,
        )
        return buf.getvalue()

    @classmethod
    def from_npz(cls, path: Path) -> _Table:
        with np.load(path, allow_pickle=False) as z:
            names = bytes(z["clip_blob"]).decode("utf-8").split("\0") if int(z["num_clips"]) else []
            kw = {k: z[k] for k in z.files if k not in ("clip_blob", "num_clips")}
        return cls(clip_names=names, **kw)


def _build_table(parts: list[dict[str, Any]], columns: list[dict[str, Any]], wds: bool) -> _Table:
    """Concatenate per-part columns (clip_ids, window, start, end[, offsets]) into one table."""
    names: list[str] = []
    name_pos: dict[str, int] = {}
    clip_of = []
    for col in columns:
        ids = np.empty(len(col["clip_ids"]), dtype=np.int32)
        for j, c in enumerate(col["clip_ids"]):
            k = name_pos.get(c)
            if k is None:
                k = name_pos[c] = len(names)
                names.append(c)
            ids[j] = k
        clip_of.append(ids)

    def cat(key: str) -> np.ndarray:
        return np.concatenate([c[key] for c in columns]) if columns else np.zeros(0, np.int64)

    n_per = [len(c["clip_ids"]) for c in columns]
    table = _Table(
        clip_names=names,
        clip_of=np.concatenate(clip_of) if clip_of else np.zeros(0, np.int32),
        window=cat("window").astype(np.int64),
        start=cat("start").astype(np.float64),
        end=cat("end").astype(np.float64),
        part_of=np.repeat(np.arange(len(parts), dtype=np.int32), n_per),
        row=np.concatenate([np.arange(n, dtype=np.int64) for n in n_per]) if n_per else np.zeros(0, np.int64),
    )
    if wds:
        for k in _Table._WDS_ARRAYS:
            setattr(table, k, cat(k).astype(np.int64))
    return table


class EmbeddingStore:
    """A finished store (``meta.json`` + ``index.json`` + parts). Create with :func:`open_store`.

    Attributes:
        root: store folder. meta: ``meta.json`` dict. index: ``index.json`` dict.
        backend: ``"wds"`` | ``"h5"``. dim: D. dtype: storage dtype name. audio_codec: codec or None.
        num_layers: L or None. audio_sample_rate: rate of stored audio or None.
    """

    def __init__(self, root: str | Path, verify: str = "size", cache_dir: str | Path | None = None) -> None:
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.root = Path(root)
        for name in (META_FILE, INDEX_FILE):
            if not (self.root / name).exists():
                hint = " (run merge_indexes(root) after all writers finished)" if name == INDEX_FILE else ""
                raise StoreError(f"{self.root} is not a store: {name} is missing{hint}")
        self.meta: dict[str, Any] = read_store_json(self.root / META_FILE)
        index_bytes = (self.root / INDEX_FILE).read_bytes()
        self.index: dict[str, Any] = read_store_json(self.root / INDEX_FILE, index_bytes)
        self.index_sha256 = hashlib.sha256(index_bytes).hexdigest()
        for d in (self.meta, self.index):
            if d.get("format") != FORMAT_NAME:
                raise StoreError(f"{self.root}: not a {FORMAT_NAME} store (format={d.get('format')!r})")
            if d.get("version") != FORMAT_VERSION:
                raise StoreError(
                    f"{self.root}: store format version {d.get('version')} is not supported "
                    f"(this code reads version {FORMAT_VERSION})"
                )
        if self.index["plan_id"] != self.meta["plan"]["plan_id"]:
            raise StoreError(f"{self.root}: index.json and meta.json describe different shard plans")
        if not self.index["complete"]:
            log.warning(
                "%s: store is incomplete (missing shards %s)", self.root, self.index["missing_shards"]
            )
        self.backend: str = self.meta["backend"]
        self.dim: int = int(self.meta["dim"])
        self.dtype: str = self.meta["dtype"]
        self.np_dtype = np.dtype(DTYPES[self.dtype]).newbyteorder("<")
        audio = self.meta.get("audio")
        self.audio_codec: str | None = audio["codec"] if audio else None
        self.audio_sample_rate: int | None = audio["sample_rate"] if audio else None
        layers = self.meta.get("layers")
        self.num_layers: int | None = layers["num_layers"] if layers else None
        self.parts: list[dict[str, Any]] = self.index["parts"]
        self.part_starts = np.concatenate([[0], np.cumsum([p["samples"] for p in self.parts])]).astype(
            np.int64
        )
        self._cache_dir = Path(cache_dir) if cache_dir is not None else self.root / ".cache"
        if verify != "none":
            record = self._cache_dir / VERIFIED_FILE if verify == "cached" else None
            verify_parts(self.root, self.index, md5=verify in ("md5", "cached"), record=record)
        self._table: _Table | None = None
        self._key_pos: dict[tuple[str, int], int] | None = None
        self._pid = os.getpid()
        self._fds: dict[int, int] = {}
        self._h5: dict[int, Any] = {}
        self._h5mm: dict[int, np.ndarray | None] = {}
        self._wds_rows: dict[tuple[int, int], np.ndarray] = {}

    # ------------------------------------------------------------------ process-local handles
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fds"], state["_h5"], state["_h5mm"], state["_key_pos"] = {}, {}, {}, None
        state["_wds_rows"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _check_pid(self) -> None:
        # After a fork the inherited handles belong to the parent: h5py handles must not be reused.
        if os.getpid() != self._pid:
            self._fds, self._h5, self._h5mm, self._pid = {}, {}, {}, os.getpid()
            self._wds_rows = {}

    def _fd(self, part: int) -> int:
        self._check_pid()
        fd = self._fds.get(part)
        if fd is None:
            fd = self._fds[part] = os.open(self.root / self.parts[part]["name"], os.O_RDONLY)
        return fd

    def _h5file(self, part: int) -> Any:
        self._check_pid()
        f = self._h5.get(part)
        if f is None:
            import h5py

            # 4 MiB chunk cache per file: random reads hit neighbouring chunks often enough to pay off.
            f = self._h5[part] = h5py.File(self.root / self.parts[part]["name"], "r", rdcc_nbytes=4 << 20)
        return f

    def _h5_embeddings(self, part: int) -> np.ndarray | Any:
        """The part's (n, D) embeddings as a memmap, or the h5py dataset if it cannot be mapped."""
        self._check_pid()
        if part not in self._h5mm:
            from ssondo_train.store.h5 import embedding_memmap

            self._h5mm[part] = embedding_memmap(self.root / self.parts[part]["name"], self._h5file(part))
        mm = self._h5mm[part]
        return mm if mm is not None else self._h5file(part)["embedding"]

    def _wds_block_rows(self, part: int, width: int) -> np.ndarray:
        """Read-only strided view (n_blocks, width) of a memory-mapped tar: row r = ``width`` values of the
        store dtype starting at byte 512 * r (every tar payload starts on a 512-byte block)."""
        self._check_pid()
        key = (part, width)
        rows = self._wds_rows.get(key)
        if rows is None:
            mm = np.memmap(self.root / self.parts[part]["name"], dtype=np.uint8, mode="r")
            row_bytes = width * self.np_dtype.itemsize
            n = (mm.shape[0] - row_bytes) // _TAR_BLOCK + 1
            flat = mm[: (n - 1) * _TAR_BLOCK + row_bytes].view(self.np_dtype)
            rows = np.lib.stride_tricks.as_strided(
                flat, shape=(n, width), strides=(_TAR_BLOCK, self.np_dtype.itemsize), writeable=False
            )
            self._wds_rows[key] = rows
        return rows

    def _wds_gather(self, offsets: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
        """out[j] = the payload of width out.shape[1:] at ``offsets[idx[j]]`` in its part."""
        width = int(np.prod(out.shape[1:]))
        flat_out = out.reshape(len(out), width)
        parts, offs = self.table.part_of[idx], offsets[idx]
        for part in np.unique(parts).tolist():
            sel = np.flatnonzero(parts == part)
            flat_out[sel] = self._wds_block_rows(part, width)[offs[sel] // _TAR_BLOCK]

    def close(self) -> None:
        """Close this process's file descriptors / h5py handles (reopened lazily if used again)."""
        if os.getpid() == self._pid:
            for fd in self._fds.values():
                os.close(fd)
            for f in self._h5.values():
                f.close()
        self._fds, self._h5, self._h5mm, self._wds_rows = {}, {}, {}, {}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # ------------------------------------------------------------------ table
    @property
    def table(self) -> _Table:
        if self._table is None:
            self._table = self._load_table()
        return self._table

    def _load_table(self) -> _Table:
        if self.backend == "h5":
            from ssondo_train.store.h5 import read_h5_table

            cols = [read_h5_table(self.root / p["name"]) for p in self.parts]
            table = _build_table(self.parts, cols, wds=False)
        else:
            cache = self._cache_dir / f"wds-table-{self.index_sha256[:16]}.npz"
            if cache.exists():
                try:
                    table = _Table.from_npz(cache)
                    if len(table.window) == self.part_starts[-1]:
                        return table
                except (OSError, ValueError, KeyError):
                    pass
                log.warning("ignoring unreadable table cache %s", cache)
            from ssondo_train.store.wds import scan_tar

            cols = []
            for p in self.parts:
                t = scan_tar(self.root / p["name"], self.dtype, self.audio_codec, self.num_layers is not None)
                cols.append(t.__dict__)
            table = _build_table(self.parts, cols, wds=True)
            try:
                self._cache_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(cache, table.to_npz_bytes())
            except OSError as e:  # read-only store: keep the table in memory only
                log.info("cannot cache the wds table in %s (%s)", self._cache_dir, e)
        for k, p in enumerate(self.parts):
            n = int(np.count_nonzero(table.part_of == k))
            if n != p["samples"]:
                raise StoreCorruptError(f"part {p['name']} holds {n} samples, index says {p['samples']}")
        return table

    # ------------------------------------------------------------------ keys
    def __len__(self) -> int:
        return int(self.part_starts[-1])

    def keys(self) -> list[tuple[str, int]]:
        """``[(clip_id, window), ...]`` in global index order."""
        t = self.table
        names = t.clip_names
        return [(names[c], int(w)) for c, w in zip(t.clip_of.tolist(), t.window.tolist(), strict=True)]

    def key(self, i: int) -> tuple[str, int]:
        t = self.table
        return t.clip_names[int(t.clip_of[i])], int(t.window[i])

    def clip_ids(self) -> list[str]:
        """Unique clip ids in store order."""
        return list(self.table.clip_names)

    def index_of(self, clip_id: str, window: int) -> int:
        """Global index of ``(clip_id, window)``; KeyError if absent."""
        if self._key_pos is None:
            self._key_pos = {k: i for i, k in enumerate(self.keys())}
        return self._key_pos[(clip_id, int(window))]

    def spans(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(start, end)`` seconds of the given windows, float64 (n,)."""
        idx = np.asarray(indices, dtype=np.int64)
        return self.table.start[idx], self.table.end[idx]

    # ------------------------------------------------------------------ random access
    def _check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"window index out of range for a store of {n} windows")
        return np.where(idx < 0, idx + n, idx)

    def get_embeddings(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Embeddings of global indices (any order, repeats allowed) -> (n, D) in the store dtype."""
        idx = self._check_indices(indices)
        t = self.table
        out = np.empty((idx.size, self.dim), dtype=self.np_dtype)
        if self.backend == "wds":
            assert t.emb_off is not None
            self._wds_gather(t.emb_off, idx, out)
            return out
        parts, rows = t.part_of[idx], t.row[idx]
        for part in np.unique(parts).tolist():
            sel = np.flatnonzero(parts == part)
            src = self._h5_embeddings(part)
            if isinstance(src, np.ndarray):
                out[sel] = src[rows[sel]]
            else:  # h5py dataset: row by row (fancy indexing is far slower for scattered rows)
                for j, r in zip(sel.tolist(), rows[sel].tolist(), strict=True):
                    out[j] = src[r]
        return out

    def get_layers(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Per-layer embeddings -> (n, L, D) in the store dtype."""
        if self.num_layers is None:
            raise StoreError(f"{self.root} has no layers")
        idx = self._check_indices(indices)
        out = np.empty((idx.size, self.num_layers, self.dim), dtype=self.np_dtype)
        if self.backend == "wds":
            assert self.table.layers_off is not None
            self._wds_gather(self.table.layers_off, idx, out)
            return out
        t = self.table
        for j, (part, r) in enumerate(zip(t.part_of[idx].tolist(), t.row[idx].tolist(), strict=True)):
            out[j] = self._h5file(part)["layers"][r]
        return out

    def get_audio(self, i: int) -> np.ndarray:
        """Waveform of window ``i`` -> (T,) float32 at ``audio_sample_rate``."""
        if self.audio_codec is None:
            raise StoreError(f"{self.root} has no audio")
        i = int(self._check_indices([i])[0])
        t = self.table
        part = int(t.part_of[i])
        if self.backend == "wds":
            assert t.audio_off is not None and t.audio_size is not None
            data = os.pread(self._fd(part), int(t.audio_size[i]), int(t.audio_off[i]))
        else:
            data = self._h5file(part)["audio"][int(t.row[i])].tobytes()
        return decode_audio(data, self.audio_codec)

    # ------------------------------------------------------------------ bulk reads
    def iter_part_embeddings(self) -> Iterator[np.ndarray]:
        """Yield each part's embeddings, in order, as (n_part, D) arrays in the store dtype."""
        for _, block in self._iter_parts():
            yield block

    def _iter_parts(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(part number, (n_part, D) embeddings)`` of every non-empty part, in order."""
        for k, p in enumerate(self.parts):
            if p["samples"] == 0:
                continue
            if self.backend == "h5":
                import h5py

                # A short-lived handle: bulk reads often run in the parent before DataLoader workers fork.
                with h5py.File(self.root / p["name"], "r") as f:
                    yield k, f["embedding"][:]
                continue
            t = self.table
            lo, hi = self.part_starts[k], self.part_starts[k + 1]
            out = np.empty((hi - lo, self.dim), dtype=self.np_dtype)
            with (
                open(self.root / p["name"], "rb") as f,
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm,
            ):
                assert t.emb_off is not None
                for j, off in enumerate(t.emb_off[lo:hi].tolist()):
                    out[j] = np.frombuffer(mm, dtype=self.np_dtype, count=self.dim, offset=off)
            yield k, out

    def read_all_embeddings(
        self, dtype: type[np.floating] | str = np.float32
    ) -> tuple[list[tuple[str, int]], np.ndarray]:
        """All embeddings in global index order -> ``(keys, (N, D) array of dtype)`` (e.g. for k-means).

        Values are returned as stored; :meth:`check_finite` refuses NaN/inf.
        """
        out = np.empty((len(self), self.dim), dtype=dtype)
        pos = 0
        for block in self.iter_part_embeddings():
            out[pos : pos + len(block)] = block
            pos += len(block)
        if pos != len(self):
            raise StoreCorruptError(f"read {pos} embeddings, index says {len(self)}")
        return self.keys(), out

    def check_finite(self, embeddings: np.ndarray | None = None) -> None:
        """Refuse a store with NaN/inf embedding values.

        Args:
            embeddings: all embeddings in global index order, ``(N, D)`` (as from :meth:`read_all_embeddings`,
                so a caller that holds them pays one pass); ``None`` reads the parts.

        Raises:
            StoreCorruptError: naming the number of non-finite windows and the first few ``(clip_id, window)``
                with their part files.
            ValueError: ``embeddings`` is not ``(N, D)`` for this store.
        """
        if embeddings is not None:
            if embeddings.shape != (len(self), self.dim):
                raise ValueError(f"embeddings of shape {embeddings.shape} != ({len(self)}, {self.dim})")
            bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
        else:
            found = [
                self.part_starts[k] + np.flatnonzero(~np.isfinite(block).all(axis=1))
                for k, block in self._iter_parts()
            ]
            bad = np.concatenate(found) if found else np.zeros(0, np.int64)
        if bad.size:
            raise self._non_finite_error(bad)

    def _non_finite_error(self, bad: np.ndarray) -> StoreCorruptError:
        """The error for the windows ``bad`` (global indices, sorted) whose embeddings hold NaN/inf."""
        t = self.table
        shown = ", ".join(
            f"({self.key(int(i))[0]!r}, {self.key(int(i))[1]}) in {self.parts[int(t.part_of[i])]['name']}"
            for i in bad[:_SHOWN_KEYS]
        )
        more = f" and {bad.size - _SHOWN_KEYS} more" if bad.size > _SHOWN_KEYS else ""
        return StoreCorruptError(
            f"store {self.root} holds {bad.size} window(s) with NaN/inf embedding values: {shown}{more}; "
            "delete those part files and rerun stage=precompute force=true (shards with a missing part are "
            "rewritten; clips whose teacher output is not finite are then recorded as failures)"
        )

    def compute_stats(
        self, cache: bool = True, indices: Sequence[int] | np.ndarray | None = None
    ) -> StoreStats:
        """Per-dimension mean/std over all windows, or over ``indices`` (float64, parts merged with Chan's
        formula).

        The distill stage passes its training windows, so held-out windows never shape the target
        normalisation. Every part is read and checked for NaN/inf whatever ``indices`` selects.

        Cached in ``stats.npz`` for all windows, in ``<cache_dir>/stats-<digest>.npz`` for a subset (the
        digest covers the index hash and the subset), so a rebuilt store or another subset recomputes; a
        read-only store just skips the cache write.

        Args:
            cache: read and write the cache.
            indices: global window indices (negative ones count from the end; repeats count once);
                ``None`` = all windows.

        Returns:
            ``StoreStats`` with ``mean``, ``std`` ``(D,)`` float64 and the window count.

        Raises:
            StoreCorruptError: an embedding holds NaN/inf (names the windows and their parts).
            StoreError: the store (or ``indices``) holds no windows.
            IndexError: an index is out of range.
        """
        subset: np.ndarray | None = None
        digest = self.index_sha256
        path = self.root / STATS_FILE
        if indices is not None:
            subset = np.unique(self._check_indices(indices))
            digest = hashlib.sha256(self.index_sha256.encode() + subset.astype("<i8").tobytes()).hexdigest()
            path = self._cache_dir / f"stats-{digest[:16]}.npz"
        if cache and path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if (
                        str(z["index_sha256"]) == digest
                        and np.isfinite(z["mean"]).all()
                        and np.isfinite(z["std"]).all()
                    ):
                        return StoreStats(mean=z["mean"], std=z["std"], count=int(z["count"]))
            except (OSError, ValueError, KeyError):
                log.warning("ignoring unreadable stats cache %s", path)
        n = 0
        mean = np.zeros(self.dim, dtype=np.float64)
        m2 = np.zeros(self.dim, dtype=np.float64)
        bad: list[np.ndarray] = []
        for k, block in self._iter_parts():
            x = block.astype(np.float64)
            rows = np.flatnonzero(~np.isfinite(x).all(axis=1))
            if rows.size:
                bad.append(self.part_starts[k] + rows)
                continue
            if subset is not None:
                lo, hi = np.searchsorted(subset, self.part_starts[k : k + 2])
                x = x[subset[lo:hi] - self.part_starts[k]]
            nb = x.shape[0]
            if nb == 0:
                continue
            mb = x.mean(axis=0)
            m2b = ((x - mb) ** 2).sum(axis=0)
            delta = mb - mean
            tot = n + nb
            mean = mean + delta * (nb / tot)
            m2 = m2 + m2b + delta**2 * (n * nb / tot)
            n = tot
        if bad:
            raise self._non_finite_error(np.concatenate(bad))
        if n == 0:
            which = "the selected windows" if subset is not None else "windows"
            raise StoreError(f"{self.root} holds no {which}: no statistics")
        stats = StoreStats(mean=mean, std=np.sqrt(m2 / n), count=n)
        if cache:
            buf = io.BytesIO()
            np.savez(
                buf,
                mean=stats.mean,
                std=stats.std,
                count=np.int64(n),
                index_sha256=np.str_(digest),
            )
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, buf.getvalue())
            except OSError as e:
                log.info("cannot cache stats in %s (%s)", path, e)
        return stats

    def verify(self, md5: bool = True) -> None:
        """Check all parts against the index (size, and md5 when ``md5``); raises StoreCorruptError."""
        verify_parts(self.root, self.index, md5=md5)

    # ------------------------------------------------------------------ torch datasets
    def dataset(self, fields: Sequence[str] = ("embedding",), **kwargs: Any):
        """Map-style torch Dataset over windows (see :class:`datasets.StoreWindowDataset`)."""
        from ssondo_train.store.datasets import StoreWindowDataset

        return StoreWindowDataset(self, fields=fields, **kwargs)

    def stream(self, fields: Sequence[str] = ("embedding",), **kwargs: Any):
        """Streaming torch IterableDataset (see :class:`datasets.StoreStreamDataset`)."""
        from ssondo_train.store.datasets import StoreStreamDataset

        return StoreStreamDataset(self, fields=fields, **kwargs)


def open_store(
    root: str | Path, verify: str = "size", cache_dir: str | Path | None = None, require_complete: bool = True
) -> EmbeddingStore:
    """Open a finished store.

    Args:
        root: store folder (with ``meta.json`` and ``index.json``).
        verify: how the parts are checked against ``index.json``: ``"none"``; ``"size"`` (default: every part
            exists with its indexed size; a changed byte passes); ``"md5"`` (also hash every part: reads the
            whole store on every open); ``"cached"`` (hash a part once and record it in
            ``<cache_dir>/verified.json``; later opens hash only parts whose size, mtime or inode changed).
        cache_dir: where the wds offset table and the verification record live (default ``<root>/.cache``).
        require_complete: raise if the index was built with missing shards (``allow_missing=True``).

    Raises:
        StoreError: not a store / unsupported version. StoreCorruptError: ``meta.json``/``index.json`` is not
            valid JSON, or a part fails verification (the message names it and how to repair it).
        StoreIncompleteError: missing shards and ``require_complete``. ValueError: unknown ``verify``.
    """
    store = EmbeddingStore(root, verify=verify, cache_dir=cache_dir)
    if require_complete and not store.index["complete"]:
        raise StoreIncompleteError(f"{root}: shards {store.index['missing_shards']} are missing")
    return store
