"""Append-only JSONL log of clips that could not be processed (decode errors, too short, teacher failure)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FailureRecord:
    clip_id: str
    path: str
    reason: str
    error: str


class FailureLog:
    """JSONL failure log; one process per file (use one file per rank, e.g. ``failures.rank0.jsonl``).

    Each :meth:`append` is one ``write`` of a whole line on an ``O_APPEND`` descriptor, followed by fsync,
    so a crash loses at most the line being written; a torn last line is skipped when reading. A resumed run
    may log a clip again: :meth:`read` keeps one record per clip (the last one).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def append(self, clip_id: str, path: str | Path, reason: str, error: str | BaseException = "") -> None:
        """Record a failure: ``reason`` is a short machine-friendly tag, ``error`` the message/exception."""
        if isinstance(error, BaseException):
            error = f"{type(error).__name__}: {error}"
        line = json.dumps(asdict(FailureRecord(clip_id, str(path), reason, str(error))), ensure_ascii=False)
        data = (
            ("\n" + line + "\n").encode("utf-8") if self._needs_newline() else (line + "\n").encode("utf-8")
        )
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self._fd, data)
        os.fsync(self._fd)

    def _needs_newline(self) -> bool:
        """After a crash mid-line the file may not end with a newline; start a fresh line then."""
        if self._fd is not None or not self.path.exists() or self.path.stat().st_size == 0:
            return False
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FailureLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self) -> list[FailureRecord]:
        """Records deduplicated by clip id (last record wins), in order of first appearance."""
        return read_failures([self.path])

    def clip_ids(self) -> set[str]:
        return {r.clip_id for r in self.read()}


def read_failures(paths: list[str | Path]) -> list[FailureRecord]:
    """Merge several failure logs (e.g. one per rank): dedupe by clip id, last record wins."""
    out: dict[str, FailureRecord] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = FailureRecord(**json.loads(line))
                except (ValueError, TypeError):
                    log.warning("%s:%d: skipping unreadable line (torn write?)", path, n)
                    continue
                out[rec.clip_id] = rec  # dict keeps the first position, value = last record
    return list(out.values())
