"""Convert a run folder written by ssondo-train 0.1 (one result per stage) to the variant layout, in place.

0.1 wrote ``<run>/<stage>/done.json`` for every stage; cluster, distill, probe and export now live in
``<run>/<stage>/<variant>/``. The conversion moves their folders to the ``default`` variant (the probe's
embedding cache to ``<run>/cache/probe/``), records the run's base configuration (``run.json``) from what the
old ``done.json`` files say, and rewrites each ``done.json`` with the identity, inputs and paths of this
layout. The store, checkpoints, caches and results are moved, never recomputed: the same commands then find
every stage done.

    python -m ssondo_train.runs migrate outputs/demo [--dry-run]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ssondo_train.runs import variants as rv
from ssondo_train.runs.layout import (
    DEFAULT_VARIANT,
    DONE_FILE,
    PROBE_CACHE_DIR,
    RUN_FORMAT_VERSION,
    VARIANT_STAGES,
    RunLayout,
    file_digest,
)
from ssondo_train.utils.io import atomic_write_json, read_json

log = logging.getLogger(__name__)


class MigrationError(RuntimeError):
    """The folder cannot be converted (not a 0.1 run, or an inconsistent one)."""


def _infer_trainer_choice(trainer: dict[str, Any]) -> str | None:
    """The ``configs/trainer/<option>.yaml`` whose identity keys match (old runs did not record choices)."""
    from ssondo_train.config.location import CONFIG_DIR

    load = rv.option_defaults_from(CONFIG_DIR)
    want = rv.without_execution_keys("trainer", trainer)
    for path in sorted((Path(CONFIG_DIR) / "trainer").glob("*.yaml")):
        option = dict(load("trainer", path.stem))
        if all(option.get(k) == v for k, v in want.items()):
            return path.stem
    return None


def _default_sections() -> dict[str, Any]:
    """Every variant section as the shipped configuration composes it (for sections an old run never ran)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ssondo_train.config.location import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["stage=distill"])
    return {
        s: OmegaConf.to_container(cfg[s], resolve=True) if s != "seed" else cfg.seed
        for s in rv.VARIANT_SECTIONS
    }


def plan(run_dir: str | Path) -> list[str]:
    """What :func:`migrate` would do, one line per step (nothing is changed)."""
    layout = RunLayout(run_dir)
    legacy = layout.legacy_stages()
    steps = [f"move {s}/ to {s}/{DEFAULT_VARIANT}/" for s in legacy if s in VARIANT_STAGES]
    if (layout.root / "probe" / "cache").is_dir() and "probe" in legacy:
        steps.append(f"move probe/cache/ to {PROBE_CACHE_DIR}/")
    if layout.read_done("prepare") is not None:
        steps.append("rewrite prepare/done.json")
    steps += [f"rewrite {s}/done.json" for s in legacy]
    if legacy:
        steps.append("write run.json (the run's base configuration)")
    return steps


def migrate(run_dir: str | Path) -> list[str]:
    """Convert ``run_dir`` in place; returns the steps done.

    Raises:
        MigrationError: ``run_dir`` is not a 0.1 run folder.
    """
    layout = RunLayout(run_dir)
    legacy = layout.legacy_stages()
    if not legacy:
        raise MigrationError(f"{layout.root} is not a run folder of ssondo-train 0.1 (nothing to convert)")
    done_steps: list[str] = []
    old: dict[str, dict[str, Any]] = {}
    for stage in ("prepare", "precompute", *VARIANT_STAGES):
        path = layout.root / stage / DONE_FILE
        if path.is_file():
            old[stage] = read_json(path)
    # 1. folders
    for stage in VARIANT_STAGES:
        if stage not in old:
            continue
        src = layout.root / stage
        tmp = layout.root / f".{stage}.migrating"
        os.replace(src, tmp)
        src.mkdir()
        os.replace(tmp, src / DEFAULT_VARIANT)
        done_steps.append(f"moved {stage}/ to {stage}/{DEFAULT_VARIANT}/")
    old_cache = layout.stage_dir("probe", DEFAULT_VARIANT) / "cache"
    if old_cache.is_dir():
        layout.probe_cache_dir.parent.mkdir(parents=True, exist_ok=True)
        if layout.probe_cache_dir.exists():
            raise MigrationError(f"{layout.probe_cache_dir} exists already")
        os.replace(old_cache, layout.probe_cache_dir)
        done_steps.append(f"moved probe/cache/ to {PROBE_CACHE_DIR}/")

    # 2. the run's base configuration
    seed = next((d["config"]["seed"] for d in old.values() if "seed" in d.get("config", {})), 42)
    defaults = _default_sections()
    base = dict(defaults)
    distill_cfg = old.get("distill", {}).get("config", {})
    for section in ("distill", "student", "loss", "sampler", "trainer", "seed"):
        if section in distill_cfg:
            base[section] = distill_cfg[section]
    if "cluster" in old.get("cluster", {}).get("config", {}):
        base["cluster"] = {**old["cluster"]["config"]["cluster"], "seed": seed}
    base = {s: rv.without_execution_keys(s, v) for s, v in base.items()}
    choices = {
        g: base[g].get("name") for g in ("student", "sampler", "loss") if isinstance(base.get(g), dict)
    }
    trainer_choice = _infer_trainer_choice(base.get("trainer", {}))
    if trainer_choice:
        choices["trainer"] = trainer_choice
    atomic_write_json(
        layout.run_file,
        {
            "format_version": RUN_FORMAT_VERSION,
            "run_name": layout.name,
            "created_at": old.get("precompute", {}).get("started_at"),
            "overrides": [],
            "migrated_from": "ssondo-train 0.1",
            "base": base,
            "choices": {k: v for k, v in choices.items() if v},
        },
    )
    done_steps.append("wrote run.json")

    # 3. done.json files, upstream first (each one's digest is an input of the next)
    def rewrite(stage: str, variant: str | None, identity: dict[str, Any], inputs: dict[str, str], **extra):
        path = layout.done_path(stage, variant)
        done = read_json(path)
        done.update(extra)
        done.update(
            {
                "format_version": 2,
                "variant": variant,
                "identity": identity,
                "config_hash": rv.identity_hash(identity),
                "inputs": inputs,
                "migrated_from": "ssondo-train 0.1",
            }
        )
        atomic_write_json(path, done)
        done_steps.append(f"rewrote {stage}{'/' + variant if variant else ''}/done.json")

    if "prepare" in old:
        data = dict(old["prepare"]["config"].get("data", {}))
        if data.get("kind", "demo") == "demo":
            data.setdefault("seed", seed)
        rewrite("prepare", None, {"data": data}, {})
    if "precompute" in old:
        cfg = old["precompute"]["config"]
        pre = {**rv.without_execution_keys("precompute", cfg.get("precompute", {})), "split_seed": seed}
        ident = {
            "precompute": pre,
            "teacher": rv.without_execution_keys("teacher", cfg.get("teacher")),
            "store": rv.without_execution_keys("store", cfg.get("store")),
        }
        rewrite("precompute", None, ident, {})
    store = {"store": layout.store_digest()} if layout.store_digest() else {}
    if "cluster" in old:
        rewrite("cluster", DEFAULT_VARIANT, {"cluster": base["cluster"]}, dict(store))
    if "distill" in old:
        cfg = old["distill"]["config"]
        ident = {
            s: rv.without_execution_keys(s, cfg[s])
            for s in ("distill", "student", "loss", "sampler", "trainer")
            if s in cfg
        }
        ident["seed"] = cfg.get("seed", seed)
        inputs = dict(store)
        uses_clusters = (
            ident["sampler"].get("name") == "bds" or ident["loss"].get("name") in rv.CLUSTER_LOSSES
        )
        if uses_clusters and "cluster" in old:
            ident["cluster"] = base["cluster"]
            inputs[f"cluster/{DEFAULT_VARIANT}"] = file_digest(layout.done_path("cluster", DEFAULT_VARIANT))
        ckpts = {
            k: v.replace("distill/", f"distill/{DEFAULT_VARIANT}/", 1) if isinstance(v, str) else v
            for k, v in (old["distill"].get("checkpoints") or {}).items()
        }
        resumed = old["distill"].get("resumed_from")
        rewrite(
            "distill",
            DEFAULT_VARIANT,
            ident,
            inputs,
            checkpoints=ckpts,
            resumed_from=resumed.replace("distill/", f"distill/{DEFAULT_VARIANT}/", 1) if resumed else None,
        )
    distill_input = (
        {f"distill/{DEFAULT_VARIANT}": file_digest(layout.done_path("distill", DEFAULT_VARIANT))}
        if "distill" in old
        else {}
    )
    if "probe" in old:
        cfg = old["probe"]["config"]
        models = (cfg.get("probe") or {}).get("models", [])
        students = any(str(m).split(":")[0] in ("student", "student_proj") for m in models)
        ident = {
            "probe": {**rv.without_execution_keys("probe", cfg.get("probe", {}))},
            "teacher": rv.without_execution_keys("teacher", cfg.get("teacher")),
            "student": rv.without_execution_keys("student", cfg.get("student")),
            "seed": cfg.get("seed", seed),
            "variants": [DEFAULT_VARIANT] if students else [],
        }
        rewrite("probe", DEFAULT_VARIANT, ident, {**store, **(distill_input if students else {})})
    if "export" in old:
        files = {
            k: v.replace("export/", f"export/{DEFAULT_VARIANT}/", 1)
            for k, v in (old["export"].get("files") or {}).items()
        }
        inputs = {**store, **distill_input}
        if (layout.stage_dir("probe", DEFAULT_VARIANT) / DONE_FILE).is_file():
            inputs[f"probe/{DEFAULT_VARIANT}"] = file_digest(layout.done_path("probe", DEFAULT_VARIANT))
        rewrite(
            "export", DEFAULT_VARIANT, {"export": old["export"]["config"].get("export")}, inputs, files=files
        )
    return done_steps
