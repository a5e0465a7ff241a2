"""hydra/launcher=slurm: the SLURM request is whole numbers, whatever trainer.devices says."""

from __future__ import annotations

import pytest

from tests.conftest import CONFIG_DIR


def launcher(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["stage=distill", "hydra/launcher=slurm", *overrides],
            return_hydra_config=True,
        )
    return cfg.hydra.launcher


def request(*overrides: str) -> tuple:
    got = launcher(*overrides)
    return got.nodes, got.tasks_per_node, got.gpus_per_node


def test_the_submitit_plugin_is_installed():
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    assert launcher("trainer=ddp")._target_.endswith("submitit_launcher.SlurmLauncher")
    assert SlurmQueueConf is not None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # trainer=ddp says devices: auto (Lightning follows the launcher): SLURM gets the documented default.
        (["trainer=ddp"], (1, 1, 1)),
        (["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], (2, 4, 4)),
        (["trainer=ddp", "slurm.devices_when_auto=8"], (1, 8, 8)),
        (["trainer=ddp", "trainer.devices=2", "slurm.devices_when_auto=8"], (1, 2, 2)),
        (["trainer=gpu"], (1, 1, 1)),
    ],
)
def test_tasks_and_gpus_per_node_are_integers(overrides, expected):
    got = request(*overrides)
    assert got == expected
    assert all(type(v) is int for v in got), got


def test_site_settings_still_override_the_launcher():
    got = launcher("trainer=ddp", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=60")
    assert got.partition == "gpu" and got.timeout_min == 60 and got.max_num_timeout == 5
