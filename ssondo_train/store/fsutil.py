"""Crash-safe file helpers of the store: fsync, compact atomic JSON, md5."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

# Atomic writes and JSON reading are the package's own (utils.io); re-exported for the store modules.
from ssondo_train.utils.io import atomic_write_bytes, fsync_dir, read_json

__all__ = ["atomic_write_bytes", "atomic_write_json", "fsync_dir", "fsync_file", "md5_file", "read_json"]


def fsync_file(path: str | Path) -> None:
    """fsync a file's data (a read-only descriptor is enough on Linux/macOS)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON (keys in insertion order)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def md5_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex md5 of a file, read in 4 MiB chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
