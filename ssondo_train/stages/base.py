"""What every stage shares: its output folder, its ``done.json`` marker and the skip-if-finished rule.

A stage is a plain function ``run(ctx) -> dict``; the dict holds the stage's key figures and lands in
``done.json`` beside the stage's *identity* (the configuration its result depends on, see
:mod:`ssondo_train.runs.variants`), the digests of the earlier results it used (``inputs``), the package
version and the command line. Run-level stages (prepare, precompute) write ``<run>/<stage>/``; the others
write ``<run>/<stage>/<variant>/`` (:mod:`ssondo_train.runs.layout`), so students and ablations of one store
live side by side.

Rerunning a finished stage with the same identity and inputs skips it; a different identity under the same
folder is refused with the keys that differ; new inputs (a retrained student behind a probe) redo cheap
stages and are refused by expensive ones. ``force=true`` redoes the addressed folder only. One process at a
time works in a folder (a lock file), so parallel sweep jobs never race.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import platform
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ssondo_train.runs import variants as rv
from ssondo_train.runs.layout import (
    CONFIG_SNAPSHOT,
    DONE_FILE,
    LOCK_FILE,
    RUN_SCOPED_STAGES,
    STARTED_FILE,
    VARIANT_STAGES,
    LayoutError,
    RunLayout,
    StoreInfo,
    file_digest,
)
from ssondo_train.utils.io import atomic_write_json, atomic_write_text, read_json
from ssondo_train.version import __version__

log = logging.getLogger(__name__)

DONE_FORMAT_VERSION = 2
# Overrides that never address a result: dropped from the commands printed in messages.
_NOT_ADDRESSING = ("stage", "force", "hydra.", "hydra/")


class StageError(RuntimeError):
    """A stage cannot run: missing inputs, a config conflict with finished work, ..."""


@dataclass(frozen=True)
class Stage:
    """A registered stage.

    Attributes:
        name: the ``stage=`` value.
        run: ``run(ctx) -> dict`` of key figures.
        description: one line for ``--help``.
        inputs: ``inputs(ctx) -> {name: digest}`` of the earlier results the stage reads; raises
            :class:`StageError` when one is missing or belongs to another configuration.
        redo_on_new_inputs: redo a finished stage whose inputs changed (cheap stages) instead of refusing.
        address: ``address(ctx) -> folder name`` for variant stages (default: the distill variant of ``cfg``).
        identity: ``identity(ctx) -> dict`` (default: the stage's config sections, execution keys removed).
        resumes: an unfinished run of the stage continues where it stopped (distill, precompute); it then
            continues only under the identity and inputs it was started with (``started.json``).
    """

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    description: str = ""
    inputs: Callable[[StageContext], dict[str, str]] | None = None
    redo_on_new_inputs: bool = False
    address: Callable[[StageContext], str] | None = None
    identity: Callable[[StageContext], dict[str, Any]] | None = None
    resumes: bool = False


@dataclass
class StageContext:
    """Where a stage reads and writes, and its configuration.

    Attributes:
        choices: the config-group options of this command line (``student: dymn``), for variant names.
        overrides: the command-line overrides, repeated in the commands that messages suggest.
    """

    stage: Stage
    cfg: DictConfig
    layout: RunLayout
    force: bool = False
    choices: Mapping[str, Any] = field(default_factory=dict)
    overrides: Sequence[str] = ()
    variant: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    @property
    def out_dir(self) -> Path:
        return self.layout.stage_dir(self.stage.name, self.variant)

    def addressing_overrides(self) -> list[str]:
        """This command line's overrides without those that never address a result (stage, force, hydra)."""
        return [o for o in self.overrides if not o.lstrip("+~").startswith(_NOT_ADDRESSING)]

    def command(self, stage: str, *extra: str) -> str:
        """The command that runs ``stage`` with this command line's overrides."""
        keep = self.addressing_overrides()
        if not any(o.startswith("run_name=") for o in keep):
            keep.insert(0, f"run_name={self.layout.name}")
        return " ".join(["python -m ssondo_train", f"stage={stage}", *keep, *extra])

    def require_done(self, other: str, variant: str | None = None) -> dict[str, Any]:
        """The ``done.json`` of stage ``other``; :class:`StageError` with the command to run if missing."""
        done = self.layout.read_done(other, variant)
        if done is None:
            what = f"stage '{other}'" + (f" (variant '{variant}')" if variant else "")
            raise StageError(
                f"stage '{self.name}' needs the outputs of {what} for run '{self.layout.name}', but "
                f"{self.layout.done_path(other, variant)} does not exist. Run: {self.command(other)}"
            )
        return done

    # --- the run's store and the distill variant this command line addresses
    def store(self) -> StoreInfo:
        """The run's finished store, after checking it was built with this command line's precompute config.

        Raises:
            StageError: no store, or one built with a different precompute / teacher / store config.
        """
        done = self.require_done("precompute")
        want = rv.identity(self.cfg, "precompute")
        have = rv.normalized(done.get("identity", {}))
        diffs = rv.differences(have, want)
        if diffs:
            run = self.layout.read_run() or {}
            store_keys = ("experiment", "precompute", "teacher", "store", "data")
            hint = " ".join(o for o in run.get("overrides", []) if o.lstrip("+~").startswith(store_keys))
            raise StageError(
                f"the teacher store of run '{self.layout.name}' was built with another configuration: "
                f"{rv.describe_differences(diffs, 'store', 'now')}. Give the overrides the store was made "
                "with" + (f" ({hint})" if hint else "") + ", or use another run_name."
            )
        try:
            return self.layout.store_info(verify=OmegaConf.select(self.cfg, "store.verify", default="cached"))
        except LayoutError as err:
            raise StageError(str(err)) from None

    def _derived_variant(self, which: str) -> str:
        from ssondo_train.config.location import CONFIG_DIR

        try:
            return rv.derive_name(
                self.cfg, which, self.layout.read_run(), self.choices, rv.option_defaults_from(CONFIG_DIR)
            )
        except rv.VariantError as err:
            raise StageError(str(err)) from None

    def distill_variant(self) -> str:
        """The distill variant this command line addresses (explicit ``variant=`` or derived)."""
        return self._derived_variant("distill")

    def cluster_variant(self) -> str:
        """The clustering this command line addresses (named by its ``cluster.*`` settings)."""
        return self._derived_variant("cluster")

    def cluster_input(self) -> tuple[str, str]:
        """``(cluster variant, digest)`` of the clusters this command line needs, checked against the store.

        Raises:
            StageError: the clustering has not run, was run with other settings under that name, or on
                another store.
        """
        name = self.cluster_variant()
        done = self.require_done("cluster", name)
        want = rv.identity(self.cfg, "cluster")
        diffs = rv.differences(rv.normalized(done.get("identity", {})), want)
        if diffs:
            raise StageError(
                f"cluster/{name} of run '{self.layout.name}' was computed with other settings: "
                f"{rv.describe_differences(diffs, 'done', 'now')}. "
                f"Run: {self.command('cluster', 'force=true')}"
            )
        store = self.layout.store_digest()
        if done.get("inputs", {}).get("store") != store:
            raise StageError(
                f"cluster/{name} of run '{self.layout.name}' was computed on another teacher store (the "
                f"store was rebuilt since). Run: {self.command('cluster', 'force=true')}"
            )
        return name, file_digest(self.layout.done_path("cluster", name))


def stage_config(cfg: DictConfig, keys: Sequence[str]) -> dict[str, Any]:
    """The resolved part of ``cfg`` under the top-level ``keys``."""
    return {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in keys
        if k in cfg
    }


@contextlib.contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``.lock`` inside it) while the block runs.

    Raises:
        StageError: another process holds it (the message names that process).
    """
    import fcntl

    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fh = open(path, "a+")
    locked = False
    try:
        try:
            # A POSIX record lock belongs to this process: DataLoader workers forked while it is held do not
            # keep it, so a killed job's folder is free again at once (flock would stay held by its workers).
            fcntl.lockf(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            # The holder writes its name just after taking the lock: give it a moment to appear.
            holder = ""
            for _ in range(50):
                fh.seek(0)
                holder = fh.read().strip()
                if holder:
                    break
                time.sleep(0.02)
            holder = holder or "another process"
            raise StageError(
                f"{what} is being written by {holder}; wait for it to finish (or stop it) and rerun"
            ) from None
        locked = True
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        fh.flush()
        yield
    finally:
        # A folder this call created and left empty (the stage refused to start) is removed again.
        if locked and created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            path.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()
        fh.close()  # closing releases the lock


@contextlib.contextmanager
def stage_log(path: Path) -> Iterator[None]:
    """Append this process's log records to ``path`` (the stage's ``<stage>.log``) while the block runs."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def _record_start(
    ctx: StageContext,
    where: str,
    ident: dict[str, Any],
    inputs: dict[str, str],
    overrides: list[str],
    marker_existed: bool,
) -> list[str]:
    """Write ``started.json`` (identity and inputs the work in this folder is made with) and, for a stage
    that resumes, refuse to continue unfinished work under another identity or on other inputs.

    ``resume_with_changes=true`` continues under the new settings anyway; the changes are returned (for
    ``done.json``) and kept in ``started.json``.

    Raises:
        StageError: unfinished work of another configuration or on other inputs.
    """
    path = ctx.out_dir / STARTED_FILE
    record = read_json(path) if path.is_file() else None
    changes: list[str] = []
    if record is not None and ctx.stage.resumes and not ctx.force and marker_existed:
        diffs = rv.differences(rv.normalized(record.get("identity", {})), ident)
        if record.get("inputs", {}) != inputs:
            changed = sorted(
                k
                for k in set(inputs) | set(record.get("inputs", {}))
                if inputs.get(k) != record.get("inputs", {}).get(k)
            )
            raise StageError(
                f"{where} holds unfinished work made from other earlier results ({', '.join(changed)} "
                f"changed since it started, {record.get('started_at')}); it cannot continue on them. Use "
                "force=true to start it again from scratch"
            )
        if diffs:
            described = rv.describe_differences(diffs, "started", "now")
            if not bool(ctx.cfg.get("resume_with_changes", False)):
                raise StageError(
                    f"{where} holds unfinished work started with another configuration: {described}. Rerun "
                    "with the settings it was started with to continue it, force=true to start it again "
                    "from scratch, or resume_with_changes=true to continue it under the new settings "
                    "(recorded in done.json)"
                )
            log.warning(
                "%s continues under changed settings (resume_with_changes=true): %s", where, described
            )
            changes = [*record.get("resumed_with_changes", []), described]
    if record is None or ctx.force or changes or not ctx.stage.resumes or not marker_existed:
        atomic_write_json(
            path,
            {
                "identity": ident,
                "inputs": inputs,
                "overrides": overrides,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **({"resumed_with_changes": changes} if changes else {}),
            },
        )
    return changes


@contextlib.contextmanager
def _reported_failures(where: str, folder: Path) -> Iterator[None]:
    """Log a stage's unexpected failure into its log; a full disk becomes a one-line :class:`StageError`."""
    import shutil

    from ssondo_train.store import StoreError

    try:
        yield
    except StageError as err:
        log.error("%s refused: %s", where, err)
        raise
    except StoreError as err:  # a damaged store: its message says how to repair it
        log.error("%s refused: %s", where, err)
        raise StageError(str(err)) from None
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            log.exception("%s failed", where)
            raise
        target = err.filename or folder
        try:
            free = f"{shutil.disk_usage(folder).free / 1e6:.0f} MB free there now"
        except OSError:
            free = "free space unknown"
        message = (
            f"no space left on the device while {where} was writing {target} ({free}). Free some space (or "
            "point paths.output_root elsewhere) and rerun the same command: finished parts are kept"
        )
        log.error("%s", message)
        raise StageError(message) from None
    except BaseException:
        log.exception("%s failed", where)
        raise


def _legacy_message(layout: RunLayout, stages: list[str]) -> str:
    return (
        f"run folder {layout.root} was written by ssondo-train 0.1 (one result per stage: "
        f"{', '.join(stages)}); convert it in place, keeping its store and results, with: "
        f"python -m ssondo_train.runs migrate {layout.root}"
    )


def run_stage(
    stage: Stage,
    cfg: DictConfig,
    run_dir: Path,
    force: bool = False,
    choices: Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Run ``stage`` unless it already finished with the same identity and inputs; write ``done.json``.

    Args:
        choices: config-group options of the command line (``HydraConfig.runtime.choices``), so that variant
            names read ``student=dymn`` rather than every key of the student section.
        overrides: the command-line overrides (recorded, and repeated in suggested commands).

    Returns:
        The content of ``done.json`` (new or existing).

    Raises:
        StageError: an input is missing or belongs to another configuration, the folder finished with a
            different configuration (the differing keys are listed), or another process is writing it.
    """
    from ssondo_train.utils.dist import is_secondary_process

    layout = RunLayout(run_dir)
    try:
        legacy = layout.legacy_stages()
    except LayoutError as err:
        raise StageError(str(err)) from None
    if legacy:
        raise StageError(_legacy_message(layout, legacy))
    ctx = StageContext(
        stage=stage,
        cfg=cfg,
        layout=layout,
        force=force,
        choices=dict(choices or {}),
        overrides=list(overrides),
    )
    if stage.name in VARIANT_STAGES:
        ctx.variant = stage.address(ctx) if stage.address else ctx.distill_variant()
    elif stage.name not in RUN_SCOPED_STAGES:
        raise StageError(f"stage {stage.name!r} has no place in the run layout")
    where = f"stage '{stage.name}' of run '{layout.name}'" + (
        f" (variant '{ctx.variant}')" if ctx.variant else ""
    )
    ident = stage.identity(ctx) if stage.identity else rv.identity(cfg, stage.name)
    digest = rv.identity_hash(ident)
    marker = ctx.out_dir / DONE_FILE
    secondary = is_secondary_process()
    fresh = not ctx.out_dir.exists()
    lock = contextlib.nullcontext() if secondary else folder_lock(ctx.out_dir, where)
    with lock:
        inputs: dict[str, str] | None = None
        if marker.exists() and not force:
            done = read_json(marker)
            recorded = done.get("identity")
            same = done.get("config_hash") == digest or (
                recorded is not None and rv.identity_hash(recorded) == digest
            )
            if not same:
                diffs = rv.differences(rv.normalized(recorded or {}), ident)
                raise StageError(
                    f"{where} already finished with a different configuration: "
                    f"{rv.describe_differences(diffs, 'done', 'now')}. Use force=true to redo it"
                    + (", or variant=<name> to keep both" if ctx.variant else ", or another run_name")
                )
            inputs = stage.inputs(ctx) if stage.inputs else {}
            if done.get("inputs", {}) == inputs:
                log.info("%s is already done (%s); force=true redoes it", where, marker)
                return done
            changed = sorted(
                k for k in set(inputs) | set(done.get("inputs", {})) if inputs.get(k) != done["inputs"].get(k)
            )
            if not stage.redo_on_new_inputs:
                raise StageError(
                    f"{where} was made from earlier results that have changed since ({', '.join(changed)}). "
                    "Use force=true to redo it"
                )
            log.info("%s: %s changed since it ran; redoing it", where, ", ".join(changed))
        if inputs is None:
            inputs = stage.inputs(ctx) if stage.inputs else {}
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        if marker.exists() and not secondary:
            marker.unlink()
        changes: list[str] = []
        if not secondary:
            changes = _record_start(ctx, where, ident, inputs, list(overrides), marker_existed=not fresh)
        started = time.time()
        log_file = ctx.out_dir / f"{stage.name}.log"
        log_ctx = contextlib.nullcontext() if secondary else stage_log(log_file)
        try:
            with log_ctx, _reported_failures(where, ctx.out_dir):
                if not secondary:
                    atomic_write_text(ctx.out_dir / CONFIG_SNAPSHOT, OmegaConf.to_yaml(cfg, resolve=True))
                log.info("%s -> %s", where, ctx.out_dir)
                figures = stage.run(ctx) or {}
                if figures.get("_rank_only"):
                    # A non-zero rank of a distributed stage: rank 0 writes the marker.
                    return figures
                done = {
                    "format_version": DONE_FORMAT_VERSION,
                    "stage": stage.name,
                    "run_name": layout.name,
                    "variant": ctx.variant,
                    "config_hash": digest,
                    "identity": ident,
                    "inputs": inputs,
                    "config": stage_config(cfg, rv.STAGE_SECTIONS[stage.name]),
                    "overrides": list(overrides),
                    "package_version": __version__,
                    "python": platform.python_version(),
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                    "seconds": round(time.time() - started, 3),
                    **({"resumed_with_changes": changes} if changes else {}),
                    **figures,
                }
                atomic_write_json(marker, done)
                log.info("%s done in %.1f s -> %s", where, done["seconds"], ctx.out_dir)
        except StageError:
            # Refused before producing anything: a new folder holding only the runner's own files goes again.
            if (
                fresh
                and not secondary
                and {p.name for p in ctx.out_dir.iterdir()}
                <= {
                    LOCK_FILE,
                    CONFIG_SNAPSHOT,
                    STARTED_FILE,
                    log_file.name,
                }
            ):
                for name in (CONFIG_SNAPSHOT, STARTED_FILE, log_file.name):
                    (ctx.out_dir / name).unlink(missing_ok=True)
            raise
    return done
