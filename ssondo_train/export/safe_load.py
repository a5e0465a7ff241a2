"""Loading torch-pickled files (S-SONDO ``.ckpt`` checkpoints, ``heads/*.pth``) without running their code.

Every ``.ckpt``/``.pth`` we did not write ourselves is untrusted: it is read with
``torch.load(weights_only=True)``, which only rebuilds tensors, containers and plain Python values. A
file whose pickle names any other callable (``os.system``, ``subprocess.Popen``, a class with a malicious
``__reduce__``) is refused with :class:`UnsafeCheckpointError` before anything is executed.

Lightning checkpoints sometimes carry harmless non-tensor values that the weights-only unpickler does not
know: numpy scalars / dtypes (metrics logged as ``np.float64``) and ``pathlib`` paths (run folders in
callback states). Those constructors cannot execute code, so they form the small allowlist below; anything
else is refused and named in the error.
"""

from __future__ import annotations

import logging
import pathlib
import pickle
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """The file's pickle references globals outside the weights-only allowlist; nothing was executed."""


def _allowed_globals() -> list[Any]:
    allowed: list[Any] = [
        pathlib.PosixPath,
        pathlib.PurePosixPath,
        pathlib.WindowsPath,
        pathlib.PureWindowsPath,
    ]
    try:
        import numpy as np
    except ImportError:  # numpy is a torch dependency in practice; stay importable without it
        return allowed
    allowed.append(np.dtype)
    allowed.extend(type(np.dtype(code)) for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1"))
    try:  # numpy >= 2 moved the scalar reconstructor; numpy 1.x keeps it in numpy.core
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed.append(scalar)
    return allowed


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with the small allowlist above.

    Args:
        path: a torch-pickled file (zip or legacy format).
        map_location: where tensors are placed.

    Returns:
        The unpickled object (dicts, lists, tuples, tensors, plain values).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the pickle needs globals outside the allowlist (they are listed in the
            message when torch can enumerate them); no code from the file ran.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _unsafe_globals(path)
        names = f" ({', '.join(found)})" if found else ""
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the file's pickle references code outside the weights-only allowlist"
            f"{names}. Such a file can execute arbitrary code when unpickled, so it is not loaded. If you "
            f"trust its origin, convert it once with torch.load(..., weights_only=False) and re-save the "
            f"tensors. Details: {err}"
        ) from None


def _unsafe_globals(path: Path) -> list[str]:
    """Globals the pickle would import, read without executing it (zip-format files only)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) pickles cannot be scanned this way; the error message suffices
        return []
