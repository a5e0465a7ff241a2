"""Safe checkpoint reading shared by the teachers: errors, hashing, strict key checks."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

__all__ = [
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointKeyError",
    "check_state_dict",
    "load_torch_state_dict",
    "sha256_file",
]


class CheckpointError(ValueError):
    """Base class of every error raised while reading teacher weights."""


class CheckpointFormatError(CheckpointError):
    """The file is not a readable, safe checkpoint of the expected format.

    Raised for corrupt or truncated files and for pickles that need code to load.
    """


class CheckpointKeyError(CheckpointError):
    """The checkpoint keys (or shapes) do not match the model exactly.

    Attributes:
        missing: keys the model needs that the checkpoint lacks.
        unexpected: keys of the checkpoint the model does not have.
        mismatched: ``{key: (checkpoint shape, model shape)}`` for keys present in both with different shapes.
    """

    def __init__(
        self,
        source: str,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
    ) -> None:
        self.source = source
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = dict(mismatched or {})
        parts = [f"checkpoint {source!r} does not match the model"]
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {self.missing}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {self.unexpected}")
        for key, (got, want) in sorted(self.mismatched.items()):
            parts.append(f"shape mismatch for {key!r}: checkpoint {list(got)} vs model {list(want)}")
        super().__init__("; ".join(parts))


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (recorded in teacher metadata so stored targets name their weights)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def load_torch_state_dict(path: str | os.PathLike) -> dict:
    """Load a ``torch.save`` file without executing code (``weights_only=True``) onto the CPU.

    Raises:
        FileNotFoundError: the file does not exist.
        CheckpointFormatError: the file is not a torch checkpoint, is corrupt, or contains pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses arbitrary globals: a file that needs them is not loaded, by design.
        raise CheckpointFormatError(
            f"refusing to load {path}: it is not a plain tensor checkpoint (weights_only=True rejected it: "
            f"{str(exc).splitlines()[0]})"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointFormatError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return dict(obj)


def check_state_dict(
    source: str,
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    *,
    allow_unexpected: bool = False,
) -> None:
    """Raise :class:`CheckpointKeyError` unless ``state`` has exactly the keys and shapes of ``expected``.

    Args:
        source: name used in the error message (usually the file path).
        state: tensors read from the checkpoint, already renamed to the model's key names.
        expected: the model's ``state_dict()`` (keys and shapes to match).
        allow_unexpected: tolerate extra checkpoint keys (they are then simply not loaded).
    """
    missing = [k for k in expected if k not in state]
    unexpected = [] if allow_unexpected else [k for k in state if k not in expected]
    non_tensor = [k for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    if non_tensor:
        raise CheckpointFormatError(f"checkpoint {source!r}: entries {non_tensor} are not tensors")
    mismatched = {
        k: (tuple(state[k].shape), tuple(v.shape))
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    }
    if missing or unexpected or mismatched:
        raise CheckpointKeyError(source, missing, unexpected, mismatched)
