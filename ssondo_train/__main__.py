"""The one entry point: ``python -m ssondo_train stage=<name> [overrides]`` (or ``ssondo-train``)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ssondo_train.config.location import CONFIG_DIR

log = logging.getLogger("ssondo_train")


def _print_stages() -> None:
    from ssondo_train.stages import get_stage, stage_names

    print("== Stages (stage=) ==")
    for name in stage_names():
        print(f"  {name:<11} {get_stage(name).description}")
    print()


def _hydra_main(cfg) -> None:  # cfg: DictConfig
    from omegaconf import OmegaConf

    from ssondo_train.config.schema import ConfigError, validate_config
    from ssondo_train.stages import StageError, get_stage, run_stage, stage_names
    from ssondo_train.store import StoreError

    if OmegaConf.is_missing(cfg, "stage_name"):
        print(
            f"error: choose a stage: stage=<name>, one of: {', '.join(stage_names())} "
            "(python -m ssondo_train --help)",
            file=sys.stderr,
        )
        sys.exit(2)
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra/")}
    overrides = list(hydra_cfg.overrides.task)
    try:
        validate_config(cfg)
        stage = get_stage(cfg.stage_name)
        run_dir = Path(cfg.paths.output_root).resolve() / cfg.run_name
        done = run_stage(stage, cfg, run_dir, force=bool(cfg.force), choices=choices, overrides=overrides)
    except (ConfigError, StageError, StoreError) as err:
        # A clear one-line message, not a traceback: these are user errors, or a damaged store whose message
        # says how to repair it.
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    summary = done.get("summary")
    if summary:
        print(summary)


def main() -> None:
    """Console-script entry: Hydra composes ``configs/config.yaml`` with the command-line overrides."""
    # wandb never reaches the network unless the user asks for it.
    os.environ.setdefault("WANDB_MODE", "offline")
    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        _print_stages()
    import hydra

    hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")(_hydra_main)()


if __name__ == "__main__":
    main()
