"""A CSV logger whose history survives a resume.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder is not empty, so a resumed run kept only the
epochs after the kill. :class:`ContinuedCSVLogger` keeps the rows logged before the checkpoint the run resumes
from and drops the later ones (the resumed run logs those steps again), so the file reads as one run.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

log = logging.getLogger(__name__)


def keep_rows_before(path: str | Path, step: int) -> tuple[list[str], int]:
    """Rewrite the CSV ``path`` keeping the rows whose ``step`` is below ``step``.

    A row logged at step s belongs to the batch that made update s + 1, so a checkpoint taken after
    ``step`` updates covers exactly the rows with s < ``step``.

    Returns:
        (the header, the number of rows kept); ([], 0) when the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        return [], 0
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = [r for r in reader if _step(r) < step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return header, len(rows)


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or math.inf)
    except ValueError:
        return math.inf


class _ContinuedWriter(ExperimentWriter):
    """Appends to the rows kept from before the resume instead of deleting the file."""

    def __init__(self, log_dir: str, header: list[str]) -> None:
        self._header = header
        super().__init__(log_dir)
        self.metrics_keys = sorted(header)

    def _check_log_dir_exists(self) -> None:  # keep the earlier history
        return None


class ContinuedCSVLogger(CSVLogger):
    """``CSVLogger`` writing ``<save_dir>/<name>/metrics.csv`` that continues the history of a resumed run.

    Args:
        resume_step: the ``global_step`` of the checkpoint the run resumes from (None: a new run; an
            existing ``metrics.csv`` is then replaced).
    """

    def __init__(self, save_dir: str, name: str, resume_step: int | None = None) -> None:
        super().__init__(save_dir=save_dir, name=name, version="")
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        metrics = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        header: list[str] = []
        if self._resume_step is not None:
            header, kept = keep_rows_before(metrics, self._resume_step)
            log.info("metrics history: %d rows before step %d kept in %s", kept, self._resume_step, metrics)
        elif metrics.is_file():
            metrics.unlink()
        os.makedirs(self.log_dir, exist_ok=True)
        self._experiment = _ContinuedWriter(self.log_dir, header)
        return self._experiment
