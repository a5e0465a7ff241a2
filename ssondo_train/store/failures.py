"""Append-only JSONL log of clips that could not be processed (decode errors, too short, teacher failure),
and the failure-rate tally a job checks against its ``max_failure_rate``.

Two kinds of records share the log. *Failures* mean something is broken: the file is missing or does not
decode, the audio or the teacher's output holds NaN/inf, an unexpected exception. *Policy skips*
(:data:`POLICY_SKIP_REASONS`: digital silence, shorter than the configured minimum) are clips left out on
purpose; they are recorded too, but do not count towards the failure rate, because a corpus may legitimately
hold some.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Reasons of clips left out by a configured policy (see the module docstring): recorded, never counted.
POLICY_SKIP_REASONS = frozenset({"silent", "too_short"})
# Default of ``precompute.max_failure_rate``: a job stops when more than this fraction of its clips fail.
DEFAULT_MAX_FAILURE_RATE = 0.05


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


def counts_as_failure(reason: str) -> bool:
    """Whether a record with ``reason`` counts towards the failure rate (policy skips do not)."""
    return reason not in POLICY_SKIP_REASONS


@dataclass(frozen=True)
class ReasonCount:
    """One failure reason, how many clips it hit and the first of them (for messages)."""

    reason: str
    count: int
    example: FailureRecord


def common_reasons(records: Iterable[FailureRecord], top: int = 3) -> list[ReasonCount]:
    """The ``top`` most frequent reasons of ``records`` (ties: alphabetical), each with its first record."""
    records = list(records)
    counts = Counter(r.reason for r in records)
    first: dict[str, FailureRecord] = {}
    for r in records:
        first.setdefault(r.reason, r)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [ReasonCount(reason, n, first[reason]) for reason, n in ranked]


@dataclass
class FailureTally:
    """Running count of attempted clips and of failures among them (policy skips excluded).

    Attributes:
        max_rate: the largest acceptable fraction of failed clips; 1.0 disables the check.
        attempted: clips tried so far (stored, failed or skipped by policy).
        failures: the counted failure records, in order.
        skipped: clips left out by policy.

    Raises:
        ValueError: on construction, when ``max_rate`` is outside [0, 1].
    """

    max_rate: float
    attempted: int = 0
    failures: list[FailureRecord] = field(default_factory=list)
    skipped: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_rate <= 1.0:
            raise ValueError(
                f"max_failure_rate must be in [0, 1] (1.0 turns the check off), got {self.max_rate}"
            )

    def add(self, record: FailureRecord | None = None) -> None:
        """Count one attempted clip: ``None`` for a clip that succeeded, else its failure record."""
        self.attempted += 1
        if record is None:
            return
        if counts_as_failure(record.reason):
            self.failures.append(record)
        else:
            self.skipped += 1

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def rate(self) -> float:
        """Failed / attempted (0 before the first clip)."""
        return self.failed / self.attempted if self.attempted else 0.0

    def exceeded(self, min_attempted: int = 1) -> bool:
        """True when at least ``min_attempted`` clips were tried and the rate is above ``max_rate``."""
        return self.max_rate < 1.0 and self.attempted >= max(1, min_attempted) and self.rate > self.max_rate
