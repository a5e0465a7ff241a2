"""Look at and look after run folders.

python -m ssondo_train.runs list outputs/demo                  # stages and variants of a run
python -m ssondo_train.runs where stage=export experiment=demo sampler=random   # the folder it writes
python -m ssondo_train.runs migrate outputs/demo [--dry-run]   # convert a 0.1 run folder in place
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssondo_train.runs.layout import RUN_SCOPED_STAGES, VARIANT_STAGES, RunLayout


def _list(run_dir: Path) -> int:
    layout = RunLayout(run_dir)
    if not layout.root.is_dir():
        print(f"error: no run folder {layout.root}", file=sys.stderr)
        return 2
    legacy = layout.legacy_stages()
    if legacy:
        print(
            f"{layout.root}: written by ssondo-train 0.1; convert it: "
            f"python -m ssondo_train.runs migrate {layout.root}"
        )
        return 0
    run = layout.read_run()
    print(f"run {layout.name} ({layout.root})")
    if run:
        print(f"  base: {', '.join(f'{k}={v}' for k, v in run.get('choices', {}).items())}")
    for stage in RUN_SCOPED_STAGES:
        done = layout.read_done(stage)
        print(
            f"  {stage:<10} {'done' if done else '-'}"
            + (f"  {done.get('summary', '')}".split("\n")[0] if done else "")
        )
    for stage in VARIANT_STAGES:
        folder = layout.root / stage
        names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        for name in names:
            done = layout.read_done(stage, name)
            state = "done" if done else "unfinished"
            print(f"  {stage:<10} {name:<40} {state}")
        if not names:
            print(f"  {stage:<10} -")
    return 0


def _where(overrides: list[str]) -> int:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ssondo_train.config.location import CONFIG_DIR
    from ssondo_train.runs import variants as rv

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    if OmegaConf.is_missing(cfg, "stage_name"):
        print("error: give stage=<name>", file=sys.stderr)
        return 2
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}
    layout = RunLayout(Path(cfg.paths.output_root).resolve() / cfg.run_name)
    stage = str(cfg.stage_name)
    variant = None
    if stage in VARIANT_STAGES:
        which = "cluster" if stage == "cluster" else "distill"
        load = rv.option_defaults_from(CONFIG_DIR)
        variant = rv.derive_name(cfg, which, layout.read_run(), choices, load)
    print(layout.stage_dir(stage, variant))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssondo_train.runs", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="stages and variants of a run folder")
    p_list.add_argument("run_dir", type=Path)
    p_where = sub.add_parser(
        "where", help="the folder a stage command writes (same overrides as the command)"
    )
    p_where.add_argument("overrides", nargs="+")
    p_mig = sub.add_parser("migrate", help="convert a run folder of ssondo-train 0.1 in place")
    p_mig.add_argument("run_dir", type=Path)
    p_mig.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list(args.run_dir)
    if args.command == "where":
        return _where(args.overrides)
    from ssondo_train.runs.migrate import MigrationError, migrate, plan

    try:
        steps = plan(args.run_dir) if args.dry_run else migrate(args.run_dir)
    except MigrationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for step in steps:
        print(("would " if args.dry_run else "") + step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
