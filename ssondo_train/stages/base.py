"""What every stage shares: its run folder, its ``done.json`` marker and the skip-if-finished rule.

A stage is a plain function ``run(ctx) -> dict``; the dict holds the stage's key figures and lands in
``done.json`` beside the config hash and package version. Stages find earlier stages' outputs through
``ctx.stage_dir(name)``, never through copied paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssondo_train.utils.io import atomic_write_json, read_json
from ssondo_train.version import __version__

log = logging.getLogger(__name__)

DONE_FILE = "done.json"
DONE_FORMAT_VERSION = 1


class StageError(RuntimeError):
    """A stage cannot run: missing inputs, a config conflict with finished work, ..."""


@dataclass(frozen=True)
class Stage:
    """A registered stage.

    Attributes:
        name: the ``stage=`` value.
        run: ``run(ctx) -> dict`` of key figures.
        config_keys: top-level config keys whose values define the stage's result (hashed into done.json).
        requires: stages whose ``done.json`` must exist in the same run before this one starts.
        description: one line for ``--help``.
    """

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    config_keys: Sequence[str]
    requires: Sequence[str] = ()
    description: str = ""


@dataclass
class StageContext:
    """Where a stage reads and writes, and its configuration."""

    stage: Stage
    cfg: DictConfig
    run_dir: Path
    force: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def out_dir(self) -> Path:
        return self.run_dir / self.stage.name

    def stage_dir(self, other: str) -> Path:
        """Output folder of stage ``other`` in the same run."""
        return self.run_dir / other

    def require_done(self, other: str) -> dict[str, Any]:
        """The ``done.json`` of stage ``other``; ``StageError`` with the command to run if it is missing."""
        marker = self.stage_dir(other) / DONE_FILE
        if not marker.exists():
            run_name = self.run_dir.name
            raise StageError(
                f"stage '{self.name}' needs the outputs of stage '{other}' for run '{run_name}', but "
                f"{marker} does not exist. Run: python -m ssondo_train stage={other} run_name={run_name}"
            )
        return read_json(marker)


def stage_config(cfg: DictConfig, keys: Sequence[str]) -> dict[str, Any]:
    """The resolved part of ``cfg`` that a stage's result depends on."""
    return {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in keys
        if k in cfg
    }


def config_hash(cfg: DictConfig, keys: Sequence[str]) -> str:
    blob = json.dumps(stage_config(cfg, keys), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_stage(stage: Stage, cfg: DictConfig, run_dir: Path, force: bool = False) -> dict[str, Any]:
    """Run ``stage`` unless it already finished with the same config; write ``done.json`` atomically.

    Returns:
        The content of ``done.json`` (new or existing).

    Raises:
        StageError: a required stage has not finished, or the stage finished with a different config and
            ``force`` is false.
    """
    ctx = StageContext(stage=stage, cfg=cfg, run_dir=run_dir, force=force)
    digest = config_hash(cfg, stage.config_keys)
    marker = ctx.out_dir / DONE_FILE
    if marker.exists() and not force:
        done = read_json(marker)
        if done.get("config_hash") == digest:
            log.info(
                "stage '%s' of run '%s' is already done (%s); use force=true to redo it",
                stage.name,
                run_dir.name,
                marker,
            )
            return done
        raise StageError(
            f"stage '{stage.name}' of run '{run_dir.name}' already finished with a different configuration "
            f"(hash {done.get('config_hash')} vs {digest} now). Use force=true to redo it, or a new run_name."
        )
    for other in stage.requires:
        ctx.require_done(other)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    if marker.exists():
        marker.unlink()
    started = time.time()
    figures = stage.run(ctx) or {}
    if figures.get("_rank_only"):
        # A non-zero rank of a distributed stage: rank 0 writes the marker.
        return figures
    done = {
        "format_version": DONE_FORMAT_VERSION,
        "stage": stage.name,
        "run_name": run_dir.name,
        "config_hash": digest,
        "config": stage_config(cfg, stage.config_keys),
        "package_version": __version__,
        "python": platform.python_version(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 3),
        **figures,
    }
    atomic_write_json(marker, done)
    log.info("stage '%s' done in %.1f s -> %s", stage.name, done["seconds"], ctx.out_dir)
    return done
