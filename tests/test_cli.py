"""The entry point: stage registry, --help, config composition and start-up validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ssondo_train.stages import STAGES, get_stage, stage_names
from tests.conftest import CONFIG_DIR, REPO_ROOT

GROUPS = [
    "stage",
    "teacher",
    "student",
    "data",
    "store",
    "sampler",
    "loss",
    "trainer",
    "logger",
    "paths",
    "experiment",
]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssondo_train", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO_ROOT,
        timeout=300,
    )


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_registry_and_stage_configs_list_the_same_stages():
    assert sorted(STAGES) == options("stage")
    for name in stage_names():
        stage = get_stage(name)
        assert stage.name == name and stage.description


def test_config_yaml_declares_every_group():
    text = (CONFIG_DIR / "config.yaml").read_text()
    for group in GROUPS:
        if group != "stage":
            assert f"- {group}:" in text, group
        assert (CONFIG_DIR / group).is_dir(), group
    assert (CONFIG_DIR / "hydra" / "launcher").is_dir()


def test_help_lists_stages_and_groups():
    res = run_cli("--help")
    assert res.returncode == 0, res.stderr
    for name in stage_names():
        assert name in res.stdout
    for group in ("teacher", "student", "sampler", "loss"):
        assert f"{group}:" in res.stdout


def test_cfg_job_prints_the_composed_config():
    res = run_cli("stage=prepare", "--cfg", "job")
    assert res.returncode == 0, res.stderr
    assert "stage_name: prepare" in res.stdout and "run_name: demo" in res.stdout


def test_unknown_group_option_fails_with_the_allowed_choices():
    res = run_cli("stage=prepare", "student=nonexistent")
    assert res.returncode != 0
    err = res.stderr + res.stdout
    assert "nonexistent" in err
    for option in options("student"):
        assert option in err


def test_missing_stage_says_how_to_choose_one():
    res = run_cli()
    assert res.returncode != 0
    assert "stage" in (res.stderr + res.stdout)


@pytest.mark.parametrize("stage", stage_names())
def test_every_stage_composes_and_validates(compose, stage):
    from ssondo_train.config.schema import validate_config

    cfg = compose([f"stage={stage}"])
    assert cfg.stage_name == stage
    validate_config(cfg)


@pytest.mark.parametrize(
    ("group", "option"),
    [(g, o) for g in GROUPS if g not in ("stage", "experiment") for o in options(g)],
)
def test_every_config_file_composes_and_validates(compose, group, option):
    from ssondo_train.config.schema import validate_config

    cfg = compose(["stage=prepare", f"{group}={option}"])
    validate_config(cfg)


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes_and_validates(compose, experiment):
    from ssondo_train.config.schema import validate_config

    for stage in stage_names():
        cfg = compose([f"stage={stage}", f"experiment={experiment}"])
        typed = validate_config(cfg)
        assert stage == "prepare" or stage in typed, stage  # prepare's settings are the data group


def test_bad_value_fails_at_start_up_naming_the_key(tmp_path):
    res = run_cli("stage=prepare", "trainer.precision=17", f"paths.output_root={tmp_path}")
    assert res.returncode == 2
    assert "trainer.precision" in res.stderr and "bf16-mixed" in res.stderr
    assert not (tmp_path / "demo" / "prepare" / "done.json").exists()


def test_importing_the_package_stays_light():
    code = (
        "import sys, ssondo_train; heavy = [m for m in ('lightning', 'hydra', 'wandb') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_slurm_launcher_config_composes(compose):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(
            config_name="config",
            overrides=["stage=distill", "trainer=ddp", "trainer.devices=4", "hydra/launcher=slurm"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4 and launcher.max_num_timeout == 5


def test_experiment_values_override_the_defaults(compose):
    cfg = compose(["stage=distill", "experiment=demo_long"])
    assert cfg.run_name == "demo_long" and cfg.distill.epochs == 44 and cfg.distill.target_norm == "zscore"
    cfg = compose(["stage=distill", "experiment=matpac_mobilenetv3_bds50", "run_name=mine"])
    assert cfg.run_name == "mine" and cfg.teacher.name == "matpac" and cfg.cluster.k == 50


def test_val_every_n_epochs_must_divide_the_epochs(compose):
    from ssondo_train.config.schema import ConfigError, validate_config

    validate_config(compose(["stage=distill", "distill.epochs=6", "distill.val_every_n_epochs=3"]))
    with pytest.raises(ConfigError, match="val_every_n_epochs=4 must divide distill.epochs=6"):
        validate_config(compose(["stage=distill", "distill.epochs=6", "distill.val_every_n_epochs=4"]))
