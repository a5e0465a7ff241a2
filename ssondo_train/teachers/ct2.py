"""Reader for CTranslate2 ``model.bin`` files (no ctranslate2 needed at run time).

Layout (little-endian): uint32 binary version; string spec name; uint32 spec revision; uint32 variable count;
per variable: string name, uint8 rank, rank x uint32 dims, uint8 dtype id, uint32 byte count, raw bytes;
then optionally uint32 alias count and (alias, target) string pairs. A string is a uint16 length that
counts a trailing NUL, followed by the bytes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssondo_train.teachers.checkpoint import CheckpointFormatError

__all__ = ["CT2Model", "read_ct2_model"]

SUPPORTED_BINARY_VERSIONS = (5, 6)
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
_MAX_VARIABLES = 100_000


@dataclass
class CT2Model:
    """Parsed ``model.bin``: header fields and variables as NumPy arrays (views of the file bytes)."""

    binary_version: int
    spec_name: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """Variable ``name`` (following aliases). Raises KeyError naming the variable if absent."""
        name = self.aliases.get(name, name)
        if name not in self.variables:
            raise KeyError(f"variable {name!r} not in CTranslate2 model ({self.spec_name})")
        return self.variables[name]


class _Cursor:
    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise CheckpointFormatError(
                f"{self.source}: truncated or corrupt CTranslate2 file: needed {n} bytes for {what} "
                f"at offset {self.pos}, file has {len(self.data)}"
            )
        view = memoryview(self.data)[self.pos : end]
        self.pos = end
        return view

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("<H", f"length of {what}")
        raw = bytes(self.take(length, what))
        if length == 0 or raw[-1] != 0:
            raise CheckpointFormatError(
                f"{self.source}: corrupt string for {what} at offset {self.pos - length}"
            )
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CheckpointFormatError(f"{self.source}: non-UTF-8 string for {what}") from exc


def read_ct2_model(path: str | os.PathLike) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (or the folder that holds it).

    Raises:
        FileNotFoundError: no such file.
        CheckpointFormatError: unsupported version, bad header, unknown dtype, inconsistent sizes, or a
            truncated file; the message says what and where.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise FileNotFoundError(f"CTranslate2 model not found: {path}")
    cur = _Cursor(path.read_bytes(), str(path))
    version = cur.unpack("<I", "binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        raise CheckpointFormatError(
            f"{path}: unsupported CTranslate2 binary version {version} "
            f"(supported: {SUPPORTED_BINARY_VERSIONS})"
        )
    spec_name = cur.string("spec name")
    revision = cur.unpack("<I", "spec revision")
    count = cur.unpack("<I", "variable count")
    if count > _MAX_VARIABLES:
        raise CheckpointFormatError(f"{path}: implausible variable count {count}")
    variables: dict[str, np.ndarray] = {}
    for index in range(count):
        name = cur.string(f"name of variable {index}")
        rank = cur.unpack("<B", f"rank of {name!r}")
        dims = tuple(cur.unpack("<I", f"dim {d} of {name!r}") for d in range(rank))
        dtype_id = cur.unpack("<B", f"dtype of {name!r}")
        if dtype_id not in _DTYPES:
            raise CheckpointFormatError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        dtype = _DTYPES[dtype_id]
        nbytes = cur.unpack("<I", f"byte count of {name!r}")
        if nbytes != int(np.prod(dims, dtype=np.int64)) * dtype.itemsize:
            raise CheckpointFormatError(
                f"{path}: variable {name!r} declares {nbytes} bytes for shape {dims} of {dtype} "
                "(corrupt header)"
            )
        raw = cur.take(nbytes, f"data of {name!r}")
        variables[name] = np.frombuffer(raw, dtype=dtype).reshape(dims)
    aliases: dict[str, str] = {}
    if cur.pos < len(cur.data):
        n_alias = cur.unpack("<I", "alias count")
        if n_alias > _MAX_VARIABLES:
            raise CheckpointFormatError(f"{path}: implausible alias count {n_alias}")
        for index in range(n_alias):
            alias = cur.string(f"alias {index}")
            aliases[alias] = cur.string(f"target of alias {alias!r}")
    return CT2Model(version, spec_name, revision, variables, aliases)
