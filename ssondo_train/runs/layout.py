"""The run layout: every artifact name of a run, and typed readers of earlier stages' outputs.

One run (``run_name``) is one corpus and one teacher store. Stages after the store are *variants*: several
clusterings, students and ablations of one store live side by side, each in a folder named after what it
changes (``ssondo_train.runs.variants``)::

    <output_root>/<run>/
        run.json                    the run's base configuration (written by precompute; names variants)
        prepare/                    corpus.csv, tasks/                                  (one per run)
        precompute/                 store/, splits.json, failures.rank*.jsonl           (one per run)
        cluster/<variant>/          assignments.csv, centroids.npy, metrics.json, cluster_sizes.png
        distill/<variant>/          checkpoints/{last,best}.ckpt, logs/metrics.csv
        probe/<variant>/            results.{json,csv,md,png}, heads/<model>/<task>.pth
        probe/<v1>+<v2>+.../        a comparison of several variants in one table
        export/<variant>/           ssondo.ckpt, model.safetensors, config.json, model.onnx, heads/
        cache/probe/<model digest>/ clip embeddings shared by every probe of the run
        multirun/<date>/            multirun.yaml of each sweep (-m)

Every stage folder holds ``done.json`` when finished, ``config.yaml`` (the composed configuration of its last
run) and ``<stage>.log``. Stages find each other's outputs only through this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssondo_train.data.manifest import CORPUS_MANIFEST, TASK_MANIFEST_DIR
from ssondo_train.store.format import INDEX_FILE as STORE_INDEX
from ssondo_train.store.format import META_FILE as STORE_META
from ssondo_train.store.format import StoreError

# --- names
RUN_FILE = "run.json"
DONE_FILE = "done.json"
# What the work in a stage folder is being made with (identity, inputs): unfinished work continues only
# under the same, or is refused with the differences.
STARTED_FILE = "started.json"
CONFIG_SNAPSHOT = "config.yaml"
LOCK_FILE = ".lock"
RUN_FORMAT_VERSION = 1

RUN_SCOPED_STAGES: tuple[str, ...] = ("prepare", "precompute")
VARIANT_STAGES: tuple[str, ...] = ("cluster", "distill", "probe", "export")
DEFAULT_VARIANT = "default"
# Folder names a variant may not take (run-level folders next to the stage folders, or reserved words).
RESERVED_VARIANT_NAMES = frozenset({"all", "cache", "multirun"})

# prepare: CORPUS_MANIFEST, TASK_MANIFEST_DIR (the manifest format's names)
# precompute (STORE_INDEX, STORE_META: the store format's names)
STORE_DIR = "store"
SPLITS_FILE = "splits.json"
FAILURES_GLOB = "failures*.jsonl"
RANKS_DIR = "_ranks"
# cluster
ASSIGNMENTS_FILE = "assignments.csv"
CENTROIDS_FILE = "centroids.npy"
CLUSTER_METRICS_FILE = "metrics.json"
CLUSTER_SIZES_PNG = "cluster_sizes.png"
# distill
CHECKPOINT_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
LOGS_DIR = "logs"
WANDB_ID_FILE = "wandb_run_id.txt"
# probe
RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
RESULTS_PNG = "results.png"
HEADS_DIR = "heads"
PROBE_CACHE_DIR = "cache/probe"


class LayoutError(RuntimeError):
    """An earlier stage's output is missing, unreadable or of another layout."""


def file_digest(path: str | Path, length: int = 16) -> str:
    """Short sha256 of a file's bytes (the identity of a ``done.json`` or of a store index)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:length]


@dataclass(frozen=True)
class StoreInfo:
    """The teacher store of a run, as precompute left it.

    Attributes:
        root: the store folder (``meta.json``, ``index.json``, shards).
        window_seconds, hop_seconds, tail: how clips were cut, from the store's own ``meta.json``.
        teacher: the teacher metadata recorded in the store (name, dim, sample_rate, checkpoint hash, ...).
        digest: short sha256 of ``index.json`` (it lists every part with its md5): the store's identity.
        done: precompute's ``done.json``.
        verify: how :meth:`open` checks the parts (``store.verify``: none, size, md5 or cached).
    """

    root: Path
    window_seconds: float
    hop_seconds: float
    tail: str
    teacher: dict[str, Any]
    digest: str
    done: dict[str, Any]
    verify: str = "cached"

    @property
    def manifest(self) -> str | None:
        """The corpus manifest precompute read (``None`` = the prepare stage's ``corpus.csv``)."""
        return (self.done.get("config") or {}).get("precompute", {}).get("manifest")

    def open(self, verify: str | None = None):
        """The :class:`~ssondo_train.store.EmbeddingStore`, its parts checked with ``verify`` (default: the
        mode this info was made with, see :meth:`RunLayout.store_info`).

        Raises:
            StoreCorruptError: a part fails verification or ``index.json`` is unreadable (the message says how
                to repair it). StoreError: not a store.
        """
        from ssondo_train.store import open_store

        return open_store(self.root, verify=self.verify if verify is None else verify)


class RunLayout:
    """Paths and readers of one run folder ``<output_root>/<run_name>``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)

    @property
    def name(self) -> str:
        return self.root.name

    # --- folders
    def stage_dir(self, stage: str, variant: str | None = None) -> Path:
        """``<run>/<stage>`` for run-level stages, ``<run>/<stage>/<variant>`` for the others."""
        if stage in VARIANT_STAGES:
            if not variant:
                raise ValueError(f"stage {stage!r} lives in variant folders: give the variant")
            return self.root / stage / variant
        return self.root / stage

    def done_path(self, stage: str, variant: str | None = None) -> Path:
        return self.stage_dir(stage, variant) / DONE_FILE

    def read_done(self, stage: str, variant: str | None = None) -> dict[str, Any] | None:
        path = self.done_path(stage, variant)
        return _read_json(path) if path.is_file() else None

    def variants(self, stage: str) -> list[str]:
        """Finished variants of ``stage`` (folders with a ``done.json``), sorted with ``default`` first."""
        folder = self.root / stage
        if not folder.is_dir():
            return []
        names = [p.name for p in folder.iterdir() if (p / DONE_FILE).is_file()]
        return sorted(names, key=lambda n: (n != DEFAULT_VARIANT, n))

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    def read_run(self) -> dict[str, Any] | None:
        """``run.json`` (the base configuration variants are named against), or None before precompute."""
        return _read_json(self.run_file) if self.run_file.is_file() else None

    @property
    def probe_cache_dir(self) -> Path:
        return self.root / PROBE_CACHE_DIR

    # --- older layouts
    def legacy_stages(self) -> list[str]:
        """Stages written by ssondo-train 0.1 (one result per stage, ``<stage>/done.json``)."""
        old = [s for s in VARIANT_STAGES if (self.root / s / DONE_FILE).is_file()]
        pre = self.read_done("precompute")
        if pre is not None and "identity" not in pre:
            old.insert(0, "precompute")
        return old

    # --- prepare
    def corpus_manifest(self) -> Path:
        return self.stage_dir("prepare") / CORPUS_MANIFEST

    def task_manifest_dir(self) -> Path:
        return self.stage_dir("prepare") / TASK_MANIFEST_DIR

    # --- precompute
    def store_dir(self) -> Path:
        return self.stage_dir("precompute") / STORE_DIR

    def store_info(self, verify: str = "cached") -> StoreInfo:
        """The run's finished store.

        Args:
            verify: how :meth:`StoreInfo.open` checks the parts (none, size, md5 or cached; ``store.verify``).

        Raises:
            LayoutError: precompute has not finished, or the store's ``meta.json`` is unreadable.
        """
        from ssondo_train.store.index import read_store_json

        done = self.read_done("precompute")
        root = self.store_dir()
        if done is None or not (root / STORE_INDEX).is_file():
            raise LayoutError(f"run '{self.name}' has no finished teacher store ({root})")
        try:
            meta = read_store_json(root / STORE_META)
        except (OSError, StoreError) as err:
            raise LayoutError(str(err)) from None
        extra = meta.get("extra") or {}
        recorded = (done.get("config") or {}).get("precompute", {})
        window = extra.get("window_seconds", recorded.get("window_seconds"))
        if window is None:
            raise LayoutError(f"{root / STORE_META}: no window_seconds")
        return StoreInfo(
            root=root,
            window_seconds=float(window),
            hop_seconds=float(extra.get("hop_seconds", recorded.get("hop_seconds", window))),
            tail=str(extra.get("tail", recorded.get("tail", "pad"))),
            teacher=dict(meta.get("teacher") or {}),
            digest=file_digest(root / STORE_INDEX),
            done=done,
            verify=verify,
        )

    def store_digest(self) -> str | None:
        index = self.store_dir() / STORE_INDEX
        return file_digest(index) if index.is_file() else None

    def splits(self) -> dict[str, str]:
        """clip id -> ``train`` | ``valid`` of the stored clips."""
        path = self.stage_dir("precompute") / SPLITS_FILE
        if not path.is_file():
            raise LayoutError(f"run '{self.name}': {path} is missing")
        return _read_json(path)

    def failures_files(self) -> list[Path]:
        return sorted(self.stage_dir("precompute").glob(FAILURES_GLOB))

    # --- cluster
    def cluster_ids(self, variant: str, keys: list[tuple[str, int]]):
        """Cluster id per stored window ``(N,)`` int64 and the number of clusters, from ``assignments.csv``.

        Raises:
            LayoutError: the file is missing or a stored window has no cluster id.
        """
        import csv

        import numpy as np

        path = self.stage_dir("cluster", variant) / ASSIGNMENTS_FILE
        if not path.is_file():
            raise LayoutError(f"{path} is missing")
        lookup: dict[tuple[str, int], int] = {}
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                lookup[(row["clip_id"], int(row["window"]))] = int(row["cluster"])
        missing = [k for k in keys if k not in lookup]
        if missing:
            raise LayoutError(
                f"{len(missing)} stored windows have no cluster id in {path} (e.g. {missing[0]}); "
                "the clusters belong to another store"
            )
        ids = np.array([lookup[k] for k in keys], dtype=np.int64)
        return ids, int(ids.max()) + 1 if len(ids) else 0

    # --- distill
    def checkpoint_dir(self, variant: str) -> Path:
        return self.stage_dir("distill", variant) / CHECKPOINT_DIR

    def checkpoint(self, variant: str, which: str = "last") -> Path:
        """A distill checkpoint of ``variant``: ``last``, ``best`` (from its done.json) or a ``.ckpt`` path.

        Raises:
            LayoutError: the variant has not finished, names no best checkpoint, or the file is missing.
        """
        if which not in ("last", "best"):
            path = Path(which)
        else:
            done = self.read_done("distill", variant)
            if done is None:
                raise LayoutError(f"run '{self.name}' has no finished distill variant '{variant}'")
            if which == "best":
                best = (done.get("checkpoints") or {}).get("best")
                if not best:
                    raise LayoutError(f"distill variant '{variant}' names no best checkpoint; use last")
                path = self.root / best
            else:
                path = self.checkpoint_dir(variant) / LAST_CKPT
        if not path.is_file():
            raise LayoutError(f"distill checkpoint {path} does not exist")
        return path

    # --- probe
    def probe_heads(self, variant: str, model: str = "student") -> Path | None:
        """Folder of the probe heads fitted for ``model`` of ``variant``: the variant's own probe first,
        then the newest comparison that probed it (``heads/<model>[<variant>]``)."""
        own = self.stage_dir("probe", variant) / HEADS_DIR / model
        if own.is_dir():
            return own
        candidates = [
            p / HEADS_DIR / f"{model}[{variant}]"
            for p in (self.root / "probe").glob("*")
            if (p / DONE_FILE).is_file()
        ]
        found = [c for c in candidates if c.is_dir()]
        return max(found, key=lambda c: c.stat().st_mtime) if found else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LayoutError(f"{path}: unreadable ({err})") from None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out
