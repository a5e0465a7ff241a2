"""HDF5 backend: one file per shard part with row-aligned, chunked datasets.

Datasets of a part file (N rows):

========== ================== ===============================================
name       shape / dtype      notes
========== ================== ===============================================
embedding  (N, D) <f2 or <f4   CONTIGUOUS, unfiltered: readers memory-map it (see below)
clip_id    (N,) vlen utf-8
window     (N,) int64
start      (N,) float64       seconds
end        (N,) float64       seconds
layers     (N, L, D) f2/f4    only when the store has layers; chunks (1, L, D)
audio      (N,) vlen uint8    only with audio: encoded bytes (codec in meta)
========== ================== ===============================================

``embedding`` is deliberately not chunked: a contiguous unfiltered dataset has one byte offset in the file
(``Dataset.id.get_offset()``), so readers memory-map it and a random row costs a memcpy instead of an h5py
selection (h5py fancy indexing measured ~0.5 ms per row on 3840-d rows). The writer therefore keeps a part's
embeddings in memory until the part is closed (bounded by the writer's ``max_bytes``). The other datasets are
chunked and appended as rows arrive. Handles are never shared across processes: readers open files lazily,
per process (see ``reader.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from ssondo_train.store.format import FORMAT_NAME, FORMAT_VERSION

_STR = h5py.string_dtype("utf-8")
_VLEN_U8 = h5py.vlen_dtype(np.uint8)


class H5PartWriter:
    """Append rows to one HDF5 part file at ``path`` (a temporary name); buffered, flushed every 256 rows."""

    _FLUSH = 256

    def __init__(self, path: Path, dim: int, dtype: str, num_layers: int | None, with_audio: bool) -> None:
        self.path = path
        self.dim = dim
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.num_layers = num_layers
        self.with_audio = with_audio
        # libver "latest": chunk index in an extensible array (cheaper random reads than the v1 B-tree).
        self._f = h5py.File(path, "w", libver="latest")
        self._f.attrs["format"] = FORMAT_NAME
        self._f.attrs["version"] = FORMAT_VERSION
        f = self._f
        f.create_dataset("clip_id", (0,), dtype=_STR, maxshape=(None,), chunks=(1024,))
        f.create_dataset("window", (0,), dtype=np.int64, maxshape=(None,), chunks=(1024,))
        f.create_dataset("start", (0,), dtype=np.float64, maxshape=(None,), chunks=(1024,))
        f.create_dataset("end", (0,), dtype=np.float64, maxshape=(None,), chunks=(1024,))
        if num_layers is not None:
            f.create_dataset(
                "layers",
                (0, num_layers, dim),
                dtype=self.dtype,
                maxshape=(None, num_layers, dim),
                chunks=(1, num_layers, dim),
            )
        if with_audio:
            f.create_dataset("audio", (0,), dtype=_VLEN_U8, maxshape=(None,), chunks=(64,))
        self._buf: dict[str, list] = {
            k: [] for k in ("embedding", "clip_id", "window", "start", "end", "layers", "audio")
        }
        self._emb_blocks: list[np.ndarray] = []
        self.samples = 0
        self.first_key: str | None = None
        self.last_key: str | None = None

    def add(
        self,
        key: str,
        clip_id: str,
        window: int,
        start: float,
        end: float,
        emb: np.ndarray,
        layers: np.ndarray | None,
        audio: bytes | None,
    ) -> None:
        b = self._buf
        b["embedding"].append(emb)
        b["clip_id"].append(clip_id)
        b["window"].append(int(window))
        b["start"].append(float(start))
        b["end"].append(float(end))
        if self.num_layers is not None:
            b["layers"].append(layers)
        if self.with_audio:
            b["audio"].append(np.frombuffer(audio, dtype=np.uint8))
        self.samples += 1
        if self.first_key is None:
            self.first_key = key
        self.last_key = key
        if len(b["embedding"]) >= self._FLUSH:
            self._flush()

    def _flush(self) -> None:
        b = self._buf
        n = len(b["embedding"])
        if n == 0:
            return
        n0 = self._f["window"].shape[0]
        self._emb_blocks.append(np.stack(b["embedding"]))
        arrays: dict[str, np.ndarray] = {
            "clip_id": np.array(b["clip_id"], dtype=object),
            "window": np.asarray(b["window"], dtype=np.int64),
            "start": np.asarray(b["start"], dtype=np.float64),
            "end": np.asarray(b["end"], dtype=np.float64),
        }
        if self.num_layers is not None:
            arrays["layers"] = np.stack(b["layers"])
        for name, arr in arrays.items():
            ds = self._f[name]
            ds.resize(n0 + n, axis=0)
            ds[n0 : n0 + n] = arr
        if self.with_audio:
            ds = self._f["audio"]
            ds.resize(n0 + n, axis=0)
            for j, a in enumerate(b["audio"]):  # row by row: h5py would broadcast equal-length rows to 2-D
                ds[n0 + j] = a
        for v in b.values():
            v.clear()

    def close(self) -> None:
        self._flush()
        emb = np.concatenate(self._emb_blocks) if self._emb_blocks else np.zeros((0, self.dim), self.dtype)
        self._f.create_dataset("embedding", data=emb.astype(self.dtype, copy=False))  # contiguous
        self._emb_blocks = []
        self._f.close()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            self.path.unlink(missing_ok=True)


def embedding_memmap(path: Path, f: h5py.File) -> np.ndarray | None:
    """Read-only memmap of ``embedding`` (N, D) of an open part file, or None if it cannot be mapped
    (empty, chunked or filtered dataset); callers then fall back to h5py reads."""
    ds = f["embedding"]
    if ds.chunks is not None or ds.compression is not None or ds.shape[0] == 0:
        return None
    offset = ds.id.get_offset()
    if offset is None:
        return None
    return np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)


def read_h5_table(path: Path) -> dict[str, np.ndarray | list[str]]:
    """Read the small per-row columns of a part: clip_id (list[str]), window, start, end."""
    with h5py.File(path, "r") as f:
        return {
            "clip_ids": [s.decode("utf-8") if isinstance(s, bytes) else s for s in f["clip_id"][:]],
            "window": f["window"][:].astype(np.int64),
            "start": f["start"][:].astype(np.float64),
            "end": f["end"][:].astype(np.float64),
        }
