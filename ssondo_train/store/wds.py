"""webdataset tar backend: part writer, header scanner (random-access table) and streaming reader.

Tars are written with :mod:`tarfile` (not ``webdataset.ShardWriter``) so that the writer controls the
temporary name, fsync and rename, and so that archives are byte-reproducible (mtime 0, uid/gid 0, no user
names): a rerun of a shard gives the same md5. The layout is what ``webdataset.WebDataset`` reads: members
``<key>.<ext>`` grouped by key, in order.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssondo_train.store.format import (
    EXT_AUDIO,
    EXT_EMB,
    EXT_JSON,
    EXT_LAYERS,
    StoreCorruptError,
    WindowRecord,
    parse_sample_key,
    sample_key,
)

_BLOCK = tarfile.BLOCKSIZE


def _padded(n: int) -> int:
    return (n + _BLOCK - 1) // _BLOCK * _BLOCK


def encode_members(
    rec: WindowRecord,
    emb: np.ndarray,
    layers: np.ndarray | None,
    dtype: str,
    audio_codec: str | None,
    audio: bytes | None,
) -> list[tuple[str, bytes]]:
    """Members of one sample as ``(extension, payload)``.

    ``emb`` (D,) / ``layers`` (L, D) are already cast to the store dtype; ``audio`` is already encoded.
    """
    meta = {
        "clip_id": rec.clip_id,
        "window": int(rec.window),
        "start": float(rec.start),
        "end": float(rec.end),
    }
    out = [(EXT_JSON, json.dumps(meta, separators=(",", ":")).encode("utf-8"))]
    # Raw little-endian bytes: 3840 * 2 or 4 bytes is a whole number of 512-byte tar blocks, so an
    # embedding costs exactly one header block plus its data (an .npy header would add a padded block).
    out.append((EXT_EMB[dtype], emb.astype(emb.dtype.newbyteorder("<"), copy=False).tobytes()))
    if layers is not None:
        out.append((EXT_LAYERS[dtype], layers.astype(layers.dtype.newbyteorder("<"), copy=False).tobytes()))
    if audio_codec is not None:
        assert audio is not None
        out.append((EXT_AUDIO[audio_codec], audio))
    return out


class TarPartWriter:
    """Writes one tar part to ``path`` (a temporary name); the caller renames it after :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "wb")
        self._tar = tarfile.open(fileobj=self._f, mode="w", format=tarfile.PAX_FORMAT)
        self.samples = 0
        self.first_key: str | None = None
        self.last_key: str | None = None

    @staticmethod
    def record_bytes(members: list[tuple[str, bytes]]) -> int:
        """Exact bytes a sample adds to the archive (headers + padded payloads; ASCII names < 100 chars)."""
        return sum(_BLOCK + _padded(len(data)) for _, data in members)

    @property
    def bytes_written(self) -> int:
        return self._f.tell()

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        for ext, data in members:
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1
        if self.first_key is None:
            self.first_key = key
        self.last_key = key

    def close(self) -> None:
        self._tar.close()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def abort(self) -> None:
        try:
            self._f.close()
        finally:
            self.path.unlink(missing_ok=True)


@dataclass
class TarTable:
    """Random-access table of one tar part (one row per sample, in archive order)."""

    clip_ids: list[str]
    window: np.ndarray  # (n,) int64
    start: np.ndarray  # (n,) float64
    end: np.ndarray  # (n,) float64
    emb_off: np.ndarray  # (n,) int64 byte offset of the embedding payload
    layers_off: np.ndarray  # (n,) int64, -1 when absent
    audio_off: np.ndarray  # (n,) int64, -1 when absent
    audio_size: np.ndarray  # (n,) int64


def scan_tar(path: Path, dtype: str, audio_codec: str | None, with_layers: bool) -> TarTable:
    """Read the headers (and the small ``.json`` members) of a tar part -> :class:`TarTable`.

    Raises:
        StoreCorruptError: a sample misses its ``.json`` or embedding member, or a member is unexpected.
    """
    emb_ext, lay_ext = EXT_EMB[dtype], EXT_LAYERS[dtype]
    aud_ext = EXT_AUDIO[audio_codec] if audio_codec else None
    rows: dict[str, list] = {k: [] for k in ("clip", "win", "start", "end", "emb", "lay", "aud", "auds")}
    cur_key: str | None = None
    cur: dict[str, tuple[int, int]] = {}
    js: dict | None = None

    def flush() -> None:
        if cur_key is None:
            return
        if js is None or emb_ext not in cur:
            raise StoreCorruptError(f"{path.name}: sample {cur_key!r} lacks its .json or .{emb_ext} member")
        rows["clip"].append(js["clip_id"])
        rows["win"].append(js["window"])
        rows["start"].append(js["start"])
        rows["end"].append(js["end"])
        rows["emb"].append(cur[emb_ext][0])
        rows["lay"].append(cur[lay_ext][0] if lay_ext in cur else -1)
        a = cur.get(aud_ext, (-1, 0)) if aud_ext else (-1, 0)
        rows["aud"].append(a[0])
        rows["auds"].append(a[1])

    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                if key != cur_key:
                    flush()
                    cur_key, cur, js = key, {}, None
                if ext == EXT_JSON:
                    f = tar.extractfile(info)
                    assert f is not None
                    js = json.loads(f.read())
                elif ext in (emb_ext, lay_ext) or ext == aud_ext:
                    cur[ext] = (info.offset_data, info.size)
                else:
                    raise StoreCorruptError(f"{path.name}: unexpected member {info.name!r}")
            flush()
    except (tarfile.TarError, json.JSONDecodeError, KeyError) as e:
        raise StoreCorruptError(f"{path}: cannot parse tar part ({e})") from e
    if with_layers and -1 in rows["lay"]:
        raise StoreCorruptError(f"{path.name}: some samples lack the .{lay_ext} member")
    if audio_codec and -1 in rows["aud"]:
        raise StoreCorruptError(f"{path.name}: some samples lack the .{aud_ext} member")
    return TarTable(
        clip_ids=rows["clip"],
        window=np.asarray(rows["win"], dtype=np.int64),
        start=np.asarray(rows["start"], dtype=np.float64),
        end=np.asarray(rows["end"], dtype=np.float64),
        emb_off=np.asarray(rows["emb"], dtype=np.int64),
        layers_off=np.asarray(rows["lay"], dtype=np.int64),
        audio_off=np.asarray(rows["aud"], dtype=np.int64),
        audio_size=np.asarray(rows["auds"], dtype=np.int64),
    )


def iter_tar_samples(fileobj: io.BufferedReader) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Stream ``(key, {ext: payload})`` from an open tar file, sequentially (no seeks)."""
    cur_key: str | None = None
    cur: dict[str, bytes] = {}
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            if key != cur_key:
                if cur_key is not None:
                    yield cur_key, cur
                cur_key, cur = key, {}
            f = tar.extractfile(info)
            assert f is not None
            cur[ext] = f.read()
    if cur_key is not None:
        yield cur_key, cur


def check_key(key: str, meta: dict) -> None:
    """Consistency check between a sample key and its ``.json`` (catches a mis-written archive)."""
    clip, win = parse_sample_key(key)
    if clip != meta["clip_id"] or win != meta["window"]:
        raise StoreCorruptError(f"key {key!r} does not match its json {meta}")


__all__ = [
    "TarPartWriter",
    "TarTable",
    "check_key",
    "encode_members",
    "iter_tar_samples",
    "sample_key",
    "scan_tar",
]
