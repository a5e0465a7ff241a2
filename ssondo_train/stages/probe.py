"""stage=probe: linear probes of frozen models (teacher, baselines, students, exports) on labelled tasks.

For every model of ``probe.models`` and task of ``probe.tasks`` (spec strings: ``configs/stage/probe.yaml``):

1. embed every clip once (windows batched across clips, mean over windows) and cache the result in
   ``<run>/cache/probe/<model digest>/<task>.npz``; the digest covers the weights (checkpoint sha256), the
   model config and the window length, so a rerun (also with ``force=true``) and every other probe of the
   run (other variants, comparisons) reuse it: teacher, log-mel and untrained rows are embedded once per run;
2. run the probe protocol of :func:`ssondo_train.probe.evaluate.run_probe` (standardised features, weight
   decay chosen on the validation split, never on the test split; accuracy or mAP);
3. fit one deployment head per (model, task) with the same protocol on the non-test clips and export it in
   ssondo's head format (normalisation folded in) to ``heads/<model>/<task>.pth`` + ``.json``.

Students come from distill variants: by default the variant the command line addresses (outputs in
``<run>/probe/<variant>/``); ``probe.variants=all`` (or a list) compares several in one table, with rows
``student[<variant>]`` (outputs in ``<run>/probe/<v1>+<v2>+.../``).

Outputs: ``results.json``, ``results.csv``, ``results.md`` (the paper's Table-1 layout with retention = model
/ teacher, and the paper's own rows beside ours for Table-1 tasks), ``results.png`` (bar chart), ``heads/``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssondo_train.runs.layout import (
    HEADS_DIR,
    RESULTS_CSV,
    RESULTS_JSON,
    RESULTS_MD,
    RESULTS_PNG,
    LayoutError,
)
from ssondo_train.stages.base import Stage, StageContext, StageError

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 1
MAX_COMPARISON_NAME = 100
TEACHER_LABEL = "teacher"
CSV_COLUMNS = (
    "model",
    "task",
    "metric",
    "mean",
    "ci95",
    "retention_pct",
    "n_clips",
    "n_skipped",
    "embedding_dim",
    "seeds",
    "cache_hit",
    "error",
)


# --- tasks
@dataclass
class TaskEntry:
    """A resolved task: its spec, the :class:`ProbeTask` and where it came from (demo/manifest/benchmark)."""

    spec: str
    source: str
    task: Any  # ProbeTask
    digest: str


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_task_spec(spec: Any) -> tuple[str, str, str | None, dict[str, Any]]:
    """``(source, name, root, options)`` of a task spec.

    ``"<demo task>"`` -> ``("demo", name, None, {})``; ``"manifest:<csv>"`` -> ``("manifest", "manifest",
    csv, {})``; ``"<benchmark>:<root>[;key=value...]"`` -> ``("benchmark", benchmark, root, options)``; a
    mapping ``{task, root, **options}`` is read the same way.
    """
    from ssondo_train.probe.tasks import TASK_ALIASES, TASK_BUILDERS

    if isinstance(spec, Mapping):
        opts = dict(spec)
        kind = str(opts.pop("task", opts.pop("name", "")) or "")
        root = opts.pop("root", None)
        if not kind:
            raise StageError(f"probe task {spec!r}: a mapping needs 'task' (and 'root')")
        if root is None:
            if opts:
                raise StageError(f"probe task {spec!r}: options without 'root'")
            return "demo", kind, None, {}
        text = f"{kind}:{root}"
    else:
        text, opts = str(spec).strip(), {}
    head, sep, rest = text.partition(":")
    if not sep:
        if not head:
            raise StageError("empty probe task spec")
        return "demo", head, None, {}
    key = TASK_ALIASES.get(head.strip().lower(), head.strip().lower())
    if key not in TASK_BUILDERS:
        raise StageError(
            f"probe task {spec!r}: unknown task kind {head!r}; use a demo task name, manifest:<csv> "
            f"or one of {', '.join(k for k in TASK_BUILDERS if k != 'manifest')}:<root>"
        )
    root, *options = rest.split(";")
    for opt in options:
        k, eq, v = opt.partition("=")
        if not eq or not k.strip():
            raise StageError(f"probe task {spec!r}: option {opt!r} is not key=value")
        opts[k.strip()] = _parse_value(v.strip())
    if not root.strip():
        raise StageError(
            f"probe task {spec!r}: give the {'CSV file' if key == 'manifest' else 'dataset folder'}"
        )
    return ("manifest" if key == "manifest" else "benchmark"), key, root.strip(), opts


def task_digest(task: Any) -> str:
    """What a task's embeddings depend on: clip ids, audio files and splits (splits drive BN calibration).

    A file counts by its path relative to the clips' common folder and its size, so a dataset moved or
    reached through a symbolic link keeps its cached embeddings, while a re-rendered or replaced file (new
    size) or a changed split does not.
    """
    import os

    from ssondo_train.probe.models import digest_of

    paths = [Path(c.path) for c in task.clips]
    try:
        root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    except ValueError:  # no common folder (different drives): keep full paths
        root = None

    def identity(path: Path) -> list[Any]:
        try:
            size = path.stat().st_size
        except OSError:  # missing or unreadable: embedding records it as skipped
            size = -1
        return [(path.relative_to(root) if root is not None else path).as_posix(), size]

    return digest_of(
        {
            "name": task.name,
            "clips": [
                [c.clip_id, *identity(p), str(c.split)] for c, p in zip(task.clips, paths, strict=True)
            ],
        }
    )


def resolve_task(ctx: StageContext, spec: Any) -> TaskEntry:
    """Build the :class:`ProbeTask` of one spec (demo tasks need stage=prepare of this run)."""
    from ssondo_train.probe.tasks import build_task, load_any_manifest

    source, name, root, opts = parse_task_spec(spec)
    try:
        if source == "demo":
            ctx.require_done("prepare")
            folder = ctx.layout.task_manifest_dir()
            path = folder / f"{name}.csv"
            if not path.is_file():
                found = sorted(p.stem for p in folder.glob("*.csv"))
                raise StageError(
                    f"probe task {name!r}: no {path}; demo tasks of this run: {', '.join(found) or 'none'}"
                    " (use manifest:<csv> or <benchmark>:<root> for other tasks)"
                )
            task = load_any_manifest(path, name)
        elif source == "manifest":
            assert root is not None
            task = load_any_manifest(root, opts.pop("name", None), **opts)
        else:
            assert root is not None
            task = build_task(name, root, **opts)
    except StageError:
        raise
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise StageError(f"probe task {spec!r}: {err}") from None
    return TaskEntry(str(spec), source, task, task_digest(task))


# --- models
def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run_window_seconds(ctx: StageContext, override: float | None) -> float | None:
    """``probe.window_seconds`` if set, else the window of the run's store, else None (no store)."""
    if override:
        return float(override)
    if ctx.layout.read_done("precompute") is None:
        return None
    return ctx.store().window_seconds


# --- variants
def wants_students(pcfg: Any) -> bool:
    from ssondo_train.probe.models import STUDENT_KINDS, parse_model_spec

    return any(parse_model_spec(m).kind in STUDENT_KINDS for m in pcfg.models)


def resolve_variants(ctx: StageContext) -> list[str]:
    """The distill variants whose students this probe embeds (empty when no student model is asked for).

    Raises:
        StageError: a named variant has not been trained, or ``all`` finds none.
    """
    pcfg = ctx.cfg.probe
    if not wants_students(pcfg):
        return []
    trained = ctx.layout.variants("distill")
    if pcfg.variants is None:
        names = [ctx.distill_variant()]
    elif pcfg.variants == "all":
        if not trained:
            raise StageError(
                f"probe.variants=all: run '{ctx.layout.name}' has no trained distill variant yet"
            )
        names = trained
    else:
        names = list(dict.fromkeys(str(v) for v in pcfg.variants))
    missing = [n for n in names if n not in trained]
    if missing:
        if pcfg.variants is None:
            ctx.require_done("distill", missing[0])  # raises with the distill command of this command line
        raise StageError(
            f"probe.variants: run '{ctx.layout.name}' has no trained distill variant "
            f"{', '.join(map(repr, missing))}; trained: {', '.join(trained) or 'none'}"
        )
    return names


def address(ctx: StageContext) -> str:
    """Folder of this probe: the one variant's name, or ``<v1>+<v2>+...`` for a comparison."""
    names = resolve_variants(ctx)
    ctx.extra["variants"] = names
    if len(names) <= 1:
        return names[0] if names else ctx.distill_variant()
    joined = "+".join(names)
    if len(joined) <= MAX_COMPARISON_NAME:
        return joined
    from ssondo_train.probe.models import digest_of

    return f"compare-{len(names)}-{digest_of(names, 8)}"


def identity(ctx: StageContext) -> dict[str, Any]:
    from ssondo_train.runs.variants import identity as config_identity

    return {**config_identity(ctx.cfg, "probe"), "variants": ctx.extra.get("variants", [])}


def inputs(ctx: StageContext) -> dict[str, str]:
    """The store (when the run has one: window and teacher) and the distill results of the variants."""
    from ssondo_train.runs.layout import file_digest

    found: dict[str, str] = {}
    if ctx.layout.read_done("precompute") is not None:
        found["store"] = ctx.store().digest
    for name in ctx.extra.get("variants", []):
        found[f"distill/{name}"] = file_digest(ctx.layout.done_path("distill", name))
    return found


def _variant_student(ctx: StageContext, variant: str | None) -> Any:
    """The ``student`` config section of a variant (from its done.json), or of this command line."""
    from omegaconf import OmegaConf

    from ssondo_train.config.groups import StudentConfig
    from ssondo_train.config.schema import to_schema

    node = ctx.cfg.student
    if variant is not None:
        done = ctx.layout.read_done("distill", variant) or {}
        section = (done.get("config") or {}).get("student")
        if section:
            node = OmegaConf.create(section)
    return to_schema("student", node, StudentConfig)


def build_embedders(
    ctx: StageContext, pcfg: Any, variants: list[str] | None = None
) -> tuple[dict[str, Any], dict[str, str], dict[str, str], dict[str, dict[str, Any]]]:
    """``(label -> ClipEmbedder, label -> spec, skipped label -> reason, label -> row info)``.

    With several variants, ``student`` / ``student_proj`` give one row per variant (``student[<variant>]``)
    and ``untrained`` one row per distinct student configuration; teacher, log-mel and exports give one row.
    """
    import dataclasses
    import json

    from ssondo_train.config.groups import TeacherConfig
    from ssondo_train.config.schema import to_schema
    from ssondo_train.probe import models as pm
    from ssondo_train.training.checkpoint import DivergedCheckpointError

    variants = list(variants or [])
    multi = len(variants) > 1
    specs = [pm.parse_model_spec(m) for m in pcfg.models]
    window = run_window_seconds(ctx, pcfg.window_seconds)
    default_window = window or pm.DEFAULT_WINDOW_SECONDS
    if window is None and any(s.kind != "export" for s in specs):
        log.info(
            "probe: no precompute stage in this run and probe.window_seconds unset: %g s windows",
            default_window,
        )
    embedders: dict[str, Any] = {}
    spec_of: dict[str, str] = {}
    skipped: dict[str, str] = {}
    info: dict[str, dict[str, Any]] = {}
    for s in specs:
        if s.kind == "teacher":
            tcfg = to_schema("teacher", ctx.cfg.teacher, TeacherConfig)
            embedders[s.label] = pm.teacher_embedder(tcfg, default_window)
            spec_of[s.label], info[s.label] = s.spec, {"kind": "teacher", "teacher": tcfg.name}
        elif s.kind == "logmel":
            embedders[s.label] = pm.logmel_embedder(default_window)
            spec_of[s.label], info[s.label] = s.spec, {"kind": "baseline"}
        elif s.kind == "untrained":
            configs: dict[str, tuple[Any, list[str | None]]] = {}
            for v in variants or [None]:
                scfg = _variant_student(ctx, v)
                key = json.dumps(dataclasses.asdict(scfg), sort_keys=True, default=str)
                configs.setdefault(key, (scfg, []))[1].append(v)
            names = [c.name for c, _ in configs.values()]
            for scfg, used_by in configs.values():
                if len(configs) == 1:
                    label = s.label
                elif names.count(scfg.name) == 1:
                    label = f"{s.label}[{scfg.name}]"
                else:
                    label = f"{s.label}[{used_by[0]}]"
                embedders[label] = pm.untrained_embedder(
                    scfg,
                    int(ctx.cfg.seed),
                    default_window,
                    int(pcfg.bn_recalibration_items),
                    int(pcfg.batch_size),
                )
                spec_of[label], info[label] = s.spec, {"kind": "baseline", "student": scfg.name}
        elif s.kind in pm.STUDENT_KINDS:
            output = "backbone" if s.kind == "student" else "projector"
            for v in variants:
                label = f"{s.label}[{v}]" if multi else s.label
                try:
                    ckpt = ctx.layout.checkpoint(v, pcfg.checkpoint)
                except LayoutError as err:
                    raise StageError(f"{err} (probe.checkpoint={pcfg.checkpoint})") from None
                try:
                    embedders[label] = pm.checkpoint_embedder(ckpt, output, default_window)
                except DivergedCheckpointError as err:
                    hint = "; probe.checkpoint=<file> probes another one" if err.others else ""
                    raise StageError(f"probe model {label!r}: {err}{hint}") from None
                except (OSError, ValueError) as err:
                    raise StageError(f"probe model {label!r}: {err}") from None
                done = ctx.layout.read_done("distill", v) or {}
                spec_of[label] = s.spec
                info[label] = {
                    "kind": "student" if s.kind == "student" else "projector",
                    "variant": v,
                    "student": done.get("student"),
                    "sampler": done.get("sampler"),
                    "label_weight": done.get("label_weight", 0.0),
                    "checkpoint": str(ckpt.relative_to(ctx.run_dir))
                    if ckpt.is_relative_to(ctx.run_dir)
                    else str(ckpt),
                }
        else:
            assert s.arg is not None
            spec_of[s.label], info[s.label] = s.spec, {"kind": "export", "path": s.arg}
            try:
                embedders[s.label] = pm.export_embedder(s.arg, pcfg.window_seconds)
            except ImportError as err:
                skipped[s.label] = f"ssondo_train.export is not available ({err}); {s.spec} skipped"
                log.warning("probe: %s", skipped[s.label])
            except (OSError, ValueError) as err:
                raise StageError(f"probe model {s.spec!r}: {err}") from None
    return embedders, spec_of, skipped, info


# --- embedding cache
def _save_cache(path: Path, emb: Any, model_digest: str, tdigest: str) -> None:
    from ssondo_train.utils.io import atomic_path

    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            format_version=np.int64(CACHE_FORMAT_VERSION),
            model_digest=np.str_(model_digest),
            task_digest=np.str_(tdigest),
            clip_ids=np.array(emb.clip_ids, dtype=str),
            embeddings=emb.x.astype(np.float32),
            skipped_ids=np.array(list(emb.skipped), dtype=str),
            skipped_reasons=np.array(list(emb.skipped.values()), dtype=str),
            windows=np.int64(emb.windows),
            calibration_windows=np.int64(emb.calibration_windows),
        )


def load_cache(path: Path, model_digest: str, tdigest: str, check_only: bool = False) -> Any | None:
    """The cached :class:`EmbeddedClips` if ``path`` holds this model's embeddings of this task, else None.

    ``check_only``: return True instead, after reading only the small digest entries (not the embeddings).
    """
    from ssondo_train.probe.models import EmbeddedClips

    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if (
                int(z["format_version"]) != CACHE_FORMAT_VERSION
                or str(z["model_digest"]) != model_digest
                or str(z["task_digest"]) != tdigest
            ):
                log.info("probe: cache %s is stale (model or task changed); recomputing", path)
                return None
            if check_only:
                return True
            return EmbeddedClips(
                [str(c) for c in z["clip_ids"]],
                z["embeddings"].astype(np.float32),
                dict(zip(map(str, z["skipped_ids"]), map(str, z["skipped_reasons"]), strict=True)),
                int(z["windows"]),
                0.0,
                int(z["calibration_windows"]),
            )
    except (OSError, KeyError, ValueError) as err:
        log.warning("probe: unreadable cache %s (%s); recomputing", path, err)
        return None


def task_embeddings(
    embedder: Any, entry: TaskEntry, cache_root: Path, pcfg: Any, device: str, seed: int
) -> tuple[Any, bool, Path]:
    """Embeddings of ``entry``'s clips with ``embedder``: from the cache, or computed and cached.

    Returns ``(EmbeddedClips, cache_hit, cache_path)``.
    """
    from ssondo_train.probe.models import calibration_batches, embed_clips
    from ssondo_train.utils.io import atomic_write_json

    digest = embedder.digest()
    path = cache_root / digest / f"{entry.task.name}.npz"
    cached = load_cache(path, digest, entry.digest)
    if cached is not None:
        log.info("probe: %s / %s from cache %s", embedder.kind, entry.task.name, path)
        return cached, True, path
    embedder.load(device)
    task = entry.task
    clips = [(c.clip_id, str(c.path)) for c in task.clips]
    n_cal = 0
    if embedder.needs_calibration:
        # fold tasks have no training split of their own: every fold is training data for the others
        train = [str(c.path) for c in task.clips if task.protocol == "folds" or c.split == "train"]
        items = embedder.calibration_items
        n_cal = embedder.calibrate(
            calibration_batches(
                train,
                embedder.sample_rate,
                embedder.window_samples,
                embedder.calibration_batch_size,
                items,
                seed,
                int(pcfg.num_workers),
            ),
            items,
        )
        log.info(
            "probe: %s BatchNorm statistics recalibrated on %d training windows of %s",
            embedder.kind,
            n_cal,
            task.name,
        )
    emb = embed_clips(embedder, clips, int(pcfg.batch_size), int(pcfg.num_workers), progress=True)
    emb.calibration_windows = n_cal
    _save_cache(path, emb, digest, entry.digest)
    atomic_write_json(path.parent / "model.json", embedder.describe())
    log.info(
        "probe: %s / %s: %d clips (%d windows, %d skipped) in %.1f s",
        embedder.kind,
        task.name,
        len(emb.clip_ids),
        emb.windows,
        len(emb.skipped),
        emb.seconds,
    )
    return emb, False, path


def joint_student_embeddings(
    embedders: Mapping[str, Any], first: str, entry: TaskEntry, cache_root: Path, pcfg: Any, device: str
) -> str | None:
    """Embed ``entry`` once for a ``student`` / ``student_proj`` pair and cache both results.

    ``first`` is the label about to be embedded; when the other output of the same checkpoint is also
    requested and neither is cached, one forward pass computes both. Returns the partner's label when it
    did, else None (the caller then embeds ``first`` on its own, or reads its cache).
    """
    from ssondo_train.probe.models import JointStudentEmbedder, can_embed_jointly, embed_clips
    from ssondo_train.utils.io import atomic_write_json

    pair = None
    for other, emb in embedders.items():
        if other == first:
            continue
        if can_embed_jointly(embedders[first], emb):
            pair = (first, other)
        elif can_embed_jointly(emb, embedders[first]):
            pair = (other, first)
    if pair is None:
        return None
    parts = [embedders[label] for label in pair]
    paths = [cache_root / p.digest() / f"{entry.task.name}.npz" for p in parts]
    if any(
        load_cache(path, p.digest(), entry.digest, check_only=True) is not None
        for path, p in zip(paths, parts, strict=True)
    ):
        return None
    joint = JointStudentEmbedder(*parts)
    joint.load(device)
    clips = [(c.clip_id, str(c.path)) for c in entry.task.clips]
    try:
        result = embed_clips(joint, clips, int(pcfg.batch_size), int(pcfg.num_workers), progress=True)
        for part, path, emb in zip(parts, paths, joint.split(result), strict=True):
            _save_cache(path, emb, part.digest(), entry.digest)
            atomic_write_json(path.parent / "model.json", part.describe())
    finally:
        joint.unload()
    for part in parts:
        part.calls += joint.calls
    log.info(
        "probe: %s + %s / %s: %d clips (%d windows, %d skipped) in one pass, %.1f s",
        *pair,
        entry.task.name,
        len(result.clip_ids),
        result.windows,
        len(result.skipped),
        result.seconds,
    )
    return pair[1] if pair[0] == first else pair[0]


# --- probe fits
def fit_export_probe(
    features_by_clip: Mapping[str, np.ndarray],
    task: Any,
    seed: int = 0,
    device: str = "cpu",
    val_fraction: float = 0.1,
    memo: Any = None,
    **fit_kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """The deployment head of a task: fitted on the non-test clips with the probe protocol.

    ``splits`` tasks: train on ``train``, choose the weight decay on ``valid`` (carved from ``train`` with
    ``seed`` when absent), refit on both; the ``test`` score is reported. This is exactly the fit behind
    :func:`run_probe`'s score when the task has a ``valid`` split. ``folds`` tasks: every clip is used,
    ``val_fraction`` of them (stratified, ``seed``) for the choice; no test score.

    Returns:
        ``(ProbeResult, info)`` with ``info`` = fitted_on / n_train / n_val / test_score (or None).
    """
    from ssondo_train.probe.evaluate import feature_matrix, fit_on_indices
    from ssondo_train.probe.head import carve_validation, evaluate

    x, kept = feature_matrix(features_by_clip, task, allow_missing=True)
    keep = kept.tolist()
    y_all, mask_all = task.targets()
    y = y_all[keep]
    mask = None if mask_all is None else mask_all[keep]
    split = [task.clips[i].split for i in keep]

    def where(cond: Any) -> np.ndarray:
        return np.array([j for j, s in enumerate(split) if cond(s)], dtype=np.int64)

    te = np.zeros(0, dtype=np.int64)
    if task.protocol == "splits":
        tr, va, te = (
            where(lambda s: s == "train"),
            where(lambda s: s == "valid"),
            where(lambda s: s == "test"),
        )
        fitted_on = "train, weight decay chosen on valid, refit on train+valid"
        if len(va) == 0:
            tr, va = carve_validation(tr, y, val_fraction, seed)
            fitted_on = (
                f"train ({val_fraction:g} carved out for the weight decay with seed {seed}), refit on all"
            )
    else:
        tr, va = carve_validation(np.arange(len(keep)), y, val_fraction, seed)
        fitted_on = (
            f"all folds ({val_fraction:g} carved out for the weight decay with seed {seed}), refit on all"
        )
    if len(tr) == 0:
        raise ValueError(f"{task.name}: no training clip with an embedding")

    def pick(a: np.ndarray | None, i: np.ndarray) -> np.ndarray | None:
        return None if a is None else a[i]

    res = fit_on_indices(x, y, mask, task, tr, va, device=device, seed=seed, memo=memo, **fit_kwargs)
    test_score = (
        evaluate(res.head, res.stats, x[te], y[te], task.task_type, pick(mask, te)) if len(te) else None
    )
    return res, {
        "fitted_on": fitted_on,
        "n_train": int(len(tr)),
        "n_val": int(len(va)),
        "test_score": test_score,
    }


def write_head(path: Path, result: Any, task: Any, extra: Mapping[str, Any]) -> Path:
    """``path`` (.pth, ssondo head format, normalisation folded) + ``path.with_suffix('.json')`` metadata."""
    import torch

    from ssondo_train.probe.head import export_head
    from ssondo_train.utils.io import atomic_path, atomic_write_json

    state, meta = export_head(result, task.name, task.class_names)
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(state, tmp)
    atomic_write_json(path.with_suffix(".json"), {**meta, **dict(extra)})
    return path


def _finite(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# --- reporting
def _table_groups(tasks: Sequence[str]) -> dict[str, tuple[str, ...]]:
    from ssondo_train.probe.evaluate import TABLE1_GROUPS

    return {g: m for g, m in TABLE1_GROUPS.items() if all(t in tasks for t in m)}


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def run(ctx: StageContext) -> dict[str, Any]:
    from ssondo_train.config.groups import ProbeConfig
    from ssondo_train.config.schema import ConfigError, to_schema
    from ssondo_train.probe.evaluate import (
        FitMemo,
        plot_results,
        results_markdown,
        run_probe,
        write_results,
    )
    from ssondo_train.utils.io import atomic_write_text

    try:
        pcfg = to_schema("probe", ctx.cfg.probe, ProbeConfig)
    except ConfigError as err:
        raise StageError(str(err)) from None
    seed = int(ctx.cfg.seed)
    device = _device(pcfg.device)
    out = ctx.out_dir

    entries = [resolve_task(ctx, spec) for spec in pcfg.tasks]
    names = [e.task.name for e in entries]
    if len(set(names)) != len(names):
        raise StageError(f"probe tasks have duplicate names {names}; give manifests distinct file names")
    variants = list(ctx.extra.get("variants", []))
    embedders, spec_of, skipped_models, row_info = build_embedders(ctx, pcfg, variants)
    cache_root = ctx.layout.probe_cache_dir
    fit_kwargs = dict(pcfg.fit)
    for key in ("lrs", "weight_decays"):
        if key in fit_kwargs:
            fit_kwargs[key] = [float(v) for v in fit_kwargs[key]]
    seeds = [int(s) for s in pcfg.seeds]

    results: dict[str, dict[str, dict[str, Any]]] = {}
    models_info: dict[str, dict[str, Any]] = {}
    for label, embedder in embedders.items():
        digest = embedder.digest()
        models_info[label] = {
            "spec": spec_of[label],
            "digest": digest,
            "cache": str((cache_root / digest).relative_to(ctx.run_dir)),
            **row_info.get(label, {}),
            **embedder.describe(),
        }
        per_task: dict[str, dict[str, Any]] = {}
        for entry in entries:
            task = entry.task
            started = time.perf_counter()
            partner = joint_student_embeddings(embedders, label, entry, cache_root, pcfg, device)
            emb, hit, cache_path = task_embeddings(embedder, entry, cache_root, pcfg, device, seed)
            hit = hit and partner is None
            row: dict[str, Any] = {
                "cache_hit": hit,
                "cache": str(cache_path.relative_to(ctx.run_dir)),
                "embed_seconds": round(time.perf_counter() - started, 3),
                "n_skipped": len(emb.skipped),
                "skipped_clips": emb.skipped_by_reason(),
                "windows": emb.windows,
            }
            if emb.calibration_windows:
                row["bn_calibration_windows"] = emb.calibration_windows
            if partner is not None:
                row["embedded_with"] = partner
            features = emb.as_dict()
            memo = FitMemo()  # the score's fit and the exported head's are often the same fit
            t0 = time.perf_counter()
            try:
                row.update(
                    run_probe(
                        features,
                        task,
                        seeds,
                        device=device,
                        val_fraction=pcfg.val_fraction,
                        allow_missing=True,
                        memo=memo,
                        **fit_kwargs,
                    )
                )
                if pcfg.export_heads:
                    res, info = fit_export_probe(
                        features, task, seeds[0], device, pcfg.val_fraction, memo=memo, **fit_kwargs
                    )
                    head = write_head(
                        out / HEADS_DIR / label / f"{task.name}.pth",
                        res,
                        task,
                        {
                            "model": label,
                            "model_spec": spec_of[label],
                            "model_digest": digest,
                            "embedding": embedder.describe(),
                            "metric": task.metric,
                            **info,
                        },
                    )
                    row["head"] = str(head.relative_to(out))
                    row["head_test_score"] = info["test_score"]
            except (ValueError, KeyError) as err:
                row["error"] = str(err)
                log.error("probe: %s on %s failed: %s", label, task.name, err)
            row["probe_seconds"] = round(time.perf_counter() - t0, 3)
            per_task[task.name] = row
            if "mean" in row:
                log.info(
                    "probe: %s on %s: %s %.4f ± %s", label, task.name, task.metric, row["mean"], row["ci95"]
                )
        results[label] = per_task
        models_info[label]["embedding_calls"] = embedder.calls
        embedder.unload()

    # retention per task and the tables
    teacher = TEACHER_LABEL if TEACHER_LABEL in results else None
    scores: dict[str, dict[str, tuple[float, float]]] = {}
    csv_rows: list[dict[str, Any]] = []
    for label, per_task in results.items():
        scores[label] = {}
        for name, row in per_task.items():
            t_row = results[teacher][name] if teacher else {}
            if "mean" in row and "mean" in t_row and t_row["mean"]:
                row["retention_pct"] = 100.0 * row["mean"] / t_row["mean"]
            if "mean" in row:
                scores[label][name] = (row["mean"], row["ci95"])
            csv_rows.append(
                {
                    "model": label,
                    "task": name,
                    "metric": row.get("metric"),
                    "mean": _finite(row.get("mean")),
                    "ci95": _finite(row.get("ci95")),
                    "retention_pct": row.get("retention_pct"),
                    "n_clips": row.get("n_clips"),
                    "n_skipped": row["n_skipped"],
                    "embedding_dim": row.get("embedding_dim"),
                    "seeds": " ".join(map(str, seeds)),
                    "cache_hit": row["cache_hit"],
                    "error": row.get("error"),
                }
            )
    table = ""
    if scores:
        table = results_markdown(scores, teacher=teacher, tasks=names, groups=_table_groups(names))
    metric_note = ", ".join(f"{e.task.name}: {e.task.metric}" for e in entries)
    notes = [
        f"Scores x100 ({metric_note}), mean ± 95 % CI over seeds {seeds}; linear probe on frozen embeddings, "
        "weight decay chosen on the validation split only."
    ]
    notes.append(
        f"Retention = model Avg. / {teacher} Avg." if teacher else "No teacher in probe.models: no retention."
    )
    for label, per_task in results.items():
        for name, row in per_task.items():
            if row["n_skipped"]:
                notes.append(f"{label} / {name}: {row['n_skipped']} clips skipped {row['skipped_clips']}")
            if "error" in row:
                notes.append(f"{label} / {name}: failed: {row['error']}")
    for label, reason in skipped_models.items():
        notes.append(f"{label}: {reason}")
    variants_info = _variants_info(ctx, variants)
    for name, v in variants_info.items():
        notes.append(
            f"variant {name}: {v['student']} student, {v['sampler']} sampling, {v['loss']} loss, "
            f"{v['steps']} updates (distill/{name})"
        )
    paper_md, paper_json = "", {}
    if pcfg.paper_reference:
        paper_md, paper_json = _paper_reference(ctx, row_info, names, results)
    title = f"run {ctx.layout.name}" + (
        f", variant {variants[0]}"
        if len(variants) == 1
        else f", variants {', '.join(variants)}"
        if variants
        else ""
    )
    markdown = f"# Linear probe: {title}\n\n{table}\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    if paper_md:
        markdown += (
            "\n## The paper's numbers for the same teacher, students and sampling (ICASSP 2026, Table 1)\n\n"
            f"{paper_md}\n"
        )

    tasks_info = {
        e.task.name: {"spec": e.spec, "source": e.source, "digest": e.digest, **e.task.summary()}
        for e in entries
    }
    write_results(
        {
            "format_version": 1,
            "run_name": ctx.layout.name,
            "variants": variants_info,
            "teacher": teacher,
            "seeds": seeds,
            "tasks": tasks_info,
            "models": models_info,
            "skipped_models": skipped_models,
            "results": results,
            "table_markdown": table,
            "paper_reference": paper_json,
        },
        out / RESULTS_JSON,
    )
    atomic_write_text(out / RESULTS_CSV, _csv_text(csv_rows))
    atomic_write_text(out / RESULTS_MD, markdown)
    chart = None
    if scores:
        chart = plot_results(scores, out / RESULTS_PNG, tasks=names, title=f"linear probe, {title}")

    compact = {
        label: {
            name: {
                k: _finite(row.get(k)) if k in ("mean", "ci95", "retention_pct") else row.get(k)
                for k in (
                    "metric",
                    "mean",
                    "ci95",
                    "retention_pct",
                    "n_clips",
                    "n_skipped",
                    "cache_hit",
                    "error",
                )
                if k in row
            }
            for name, row in per_task.items()
        }
        for label, per_task in results.items()
    }
    summary = (
        f"probe: {len(results)} models x {len(entries)} tasks -> {out / RESULTS_MD}\n\n{table}"
        + (f"\n\nThe paper's numbers:\n\n{paper_md}" if paper_md else "")
        if table
        else f"probe: no result ({'; '.join(notes[2:]) or 'nothing to probe'})"
    )
    return {
        "summary": summary,
        "results": compact,
        "models": {
            label: {"spec": info["spec"], "digest": info["digest"]} for label, info in models_info.items()
        },
        "tasks": {
            name: {"spec": info["spec"], "n_clips": info["n_clips"], "metric": info["metric"]}
            for name, info in tasks_info.items()
        },
        "skipped_models": skipped_models,
        "variants": variants,
        "outputs": {
            "json": RESULTS_JSON,
            "csv": RESULTS_CSV,
            "markdown": RESULTS_MD,
            "chart": RESULTS_PNG if chart else None,
            "heads": HEADS_DIR if pcfg.export_heads else None,
        },
    }


def _variants_info(ctx: StageContext, variants: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in variants:
        done = ctx.layout.read_done("distill", name) or {}
        out[name] = {
            "student": done.get("student"),
            "sampler": done.get("sampler"),
            "loss": done.get("loss"),
            "steps": done.get("steps"),
            "seed": (done.get("identity") or {}).get("seed"),
            "cluster_variant": done.get("cluster_variant"),
            "identity_hash": done.get("config_hash"),
        }
    return out


def _paper_reference(
    ctx: StageContext,
    row_info: Mapping[str, Mapping[str, Any]],
    tasks: Sequence[str],
    results: Mapping[str, Any],
) -> tuple[str, dict[str, Any]]:
    """The paper's Table-1 rows matching this probe's teacher and students, as markdown and JSON."""
    from ssondo_train.probe.paper import paper_markdown, paper_rows

    teacher = str(ctx.cfg.teacher.name)
    wanted = {
        label: info
        for label, info in row_info.items()
        if label in results and info.get("kind") in ("teacher", "student")
    }
    rows = paper_rows(teacher, wanted, tasks)
    if not rows:
        return "", {}
    as_json = {
        label: {"paper_row": r.label, "scores": {k: v[0] for k, v in r.scores.items()}, "average": r.average}
        for label, r in rows.items()
    }
    return paper_markdown(rows, tasks), as_json


STAGE = Stage(
    name="probe",
    run=run,
    description="linear probes of teacher, baselines and students on labelled tasks (Table-1 report)",
    inputs=inputs,
    redo_on_new_inputs=True,
    address=address,
    identity=identity,
)
