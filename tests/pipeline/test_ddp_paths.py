"""stage=distill under DDP on CPU (gloo): the world size of the schedule, wandb with several ranks, and the
supervised baseline under plain DDP (no unused parameters)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.pipeline.conftest import TINY_TRAINING, TINY_WINDOW, cli, store_overrides
from tests.pipeline.test_supervised import write_labelled_corpus

# 16 windows per epoch in batches of 4: 2 updates per epoch on each of 2 ranks, 4 on one process.
DISTILL = [
    "stage=distill",
    "run_name=t",
    "variant=v",
    *TINY_TRAINING,
    "sampler=random",
    "distill.epochs=2",
    "distill.warm_up_len=3",  # the lr still rises at the last step: it tells the epoch length apart
]


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    """A run with a labelled teacher store (no clustering: these tests sample at random)."""
    corpus, _ = write_labelled_corpus(tmp_path_factory.mktemp("labelled"))
    root = tmp_path_factory.mktemp("ddp")
    res = cli(
        "stage=precompute",
        "run_name=t",
        f"paths.output_root={root}",
        f"precompute.manifest={corpus}",
        "precompute.valid_fraction=0.25",
        *TINY_WINDOW,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def copy_store(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src / "t" / "precompute", dst / "t" / "precompute")
    shutil.copy(src / "t" / "run.json", dst / "t" / "run.json")
    return dst


def lr_by_step(root: Path) -> dict[int, float]:
    with open(root / "t" / "distill" / "v" / "logs" / "metrics.csv", newline="") as fh:
        return {int(r["step"]): float(r["lr"]) for r in csv.DictReader(fh) if r.get("lr")}


def done_of(root: Path) -> dict:
    return json.loads((root / "t" / "distill" / "v" / "done.json").read_text())


@pytest.fixture(scope="module")
def single_process_reference(store_root, tmp_path_factory) -> Path:
    """One process drawing the same 8 windows per update as 2 ranks of 4: the schedule 2 ranks must follow."""
    root = copy_store(store_root, tmp_path_factory.mktemp("reference"))
    res = cli(*DISTILL, *store_overrides(root), f"paths.output_root={root}", "distill.batch_size=8")
    assert res.returncode == 0, res.stderr[-4000:]
    done = done_of(root)
    assert done["updates_per_epoch"] == 2 and done["steps"] == 4
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_as_slurm_tasks(args: list[str], ntasks_per_node: bool) -> list[str]:
    """Start the command as the 2 tasks of one SLURM job step on this machine (``srun -n 2``, with
    ``--ntasks-per-node=2`` when ``ntasks_per_node``); returns each rank's output, after checking both
    succeeded."""
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "WANDB_MODE": "offline",
            "WANDB_SILENT": "true",
            "PYTHONUNBUFFERED": "1",
            "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_NODEID": "0",
            "SLURM_JOB_ID": "12345",
            "SLURM_JOB_NAME": "test",  # not bash/interactive, which Lightning treats as no SLURM
            "SLURM_NNODES": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            **({"SLURM_NTASKS_PER_NODE": "2"} if ntasks_per_node else {}),
        }
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "SLURM_NTASKS_PER_NODE"):
            if key in os.environ:
                env.pop(key)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ssondo_train", *args],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            outputs.append(out + err)  # the stage logs to stdout on every rank, Lightning to stderr
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, text) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"rank {rank}:\n{text[-4000:]}"
    return outputs


def slurm_args(root: Path) -> list[str]:
    """What a user types under srun: the ddp trainer on CPU, devices and num_nodes left as they are."""
    return [
        *DISTILL,
        *store_overrides(root),
        f"paths.output_root={root}",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.num_workers=0",
    ]


@pytest.mark.slow
def test_slurm_tasks_on_cpu_count_in_the_schedule(store_root, single_process_reference, tmp_path):
    # Lightning needs --ntasks-per-node (it refuses --ntasks alone); devices=auto then follows it on CPU
    root = copy_store(store_root, tmp_path)
    outputs = run_as_slurm_tasks(slurm_args(root), ntasks_per_node=True)
    for rank, text in enumerate(outputs):
        # every rank runs the same schedule: 16 windows over 2 processes in batches of 4
        assert "2 updates per epoch on each of 2 processes" in text, f"rank {rank}:\n{text[-3000:]}"
    done = done_of(root)
    assert done["updates_per_epoch"] == 2 and done["steps"] == 4
    log_text = (root / "t" / "distill" / "v" / "distill.log").read_text()
    assert log_text.count("done in") == 1  # rank 0 alone records the stage
    reference = lr_by_step(single_process_reference)
    got = lr_by_step(root)
    assert got and got == pytest.approx(reference, rel=1e-6)


@pytest.mark.slow
def test_slurm_tasks_log_to_one_wandb_run(store_root, tmp_path):
    """Both tasks start at once: rank 1 finds no run id yet, and only rank 0 may create one."""
    root = copy_store(store_root, tmp_path)
    run_as_slurm_tasks([*slurm_args(root), "logger=wandb", "distill.epochs=1"], ntasks_per_node=True)
    out = root / "t" / "distill" / "v"
    assert done_of(root)["steps"] == 2
    run_id = (out / "wandb_run_id.txt").read_text().strip()
    assert run_id and "\n" not in run_id
    runs = sorted(p.name for p in (out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].endswith(f"-{run_id}"), runs
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("wandb_run_id")) == ["wandb_run_id.txt"]


@pytest.mark.slow
def test_supervised_baseline_trains_under_plain_ddp(store_root, tmp_path):
    root = copy_store(store_root, tmp_path)
    res = cli(
        *DISTILL,
        *store_overrides(root),
        f"paths.output_root={root}",
        "loss.label_weight=1.0",
        "sampler=class_balanced",
        "trainer.devices=2",
        "trainer.strategy=ddp",  # find_unused_parameters=False: every trainable parameter needs a gradient
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    done = done_of(root)
    assert done["steps"] == 4 and done["epochs"] == 2 and len(done["history"]) == 2
    state = torch.load(
        root / "t" / "distill" / "v" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )["state_dict"]
    # the untrained projector stays in the checkpoint, where export and the student loader read it
    assert any(k.startswith("student.classification_head.") for k in state)
    assert "label_head.weight" in state


# ---- unit tests (fast) -------------------------------------------------------------------------------------
def test_updates_per_epoch_split_the_epoch_over_the_world():
    from ssondo_train.training.module import OptimConfig

    optim = OptimConfig(samples_per_epoch=16, batch_size=4)
    assert [optim.epoch_updates(w) for w in (1, 2, 3, 4, 16, 32)] == [4, 2, 2, 1, 1, 1]
    assert OptimConfig(samples_per_epoch=100_000, batch_size=120).epoch_updates(8) == 105
    assert OptimConfig(updates_per_epoch=7).epoch_updates(4) == 7  # a fixed count ignores the world


def _module(label_weight: float):
    from ssondo_train.losses import CosineLoss
    from ssondo_train.students.frontend import StudentFrontEnd
    from ssondo_train.students.projector import StudentWithProjector
    from ssondo_train.training.module import DistillModule, LabelTask, OptimConfig, TargetNorm

    class Backbone(torch.nn.Module):
        emb_size = 3

        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(x)

    head = torch.nn.Linear(3, 5)
    head.out_dim = 5
    student = StudentWithProjector(Backbone(), head)  # type: ignore[arg-type]
    task = LabelTask(("a", "b"), label_weight) if label_weight > 0 else None
    return DistillModule(
        student, StudentFrontEnd(), CosineLoss(), TargetNorm("none", dim=5), OptimConfig(), label_task=task
    )


@pytest.mark.parametrize("label_weight", [0.0, 0.5, 1.0])
def test_the_kd_projector_is_trained_only_with_a_kd_term(label_weight):
    module = _module(label_weight)
    trainable = {id(p) for p in module.trainable_parameters()}
    projector = list(module.student.classification_head.parameters())
    backbone = list(module.student.model.parameters())
    assert all(id(p) in trainable and p.requires_grad for p in backbone)
    supervised = label_weight == 1.0
    assert all((id(p) in trainable) != supervised for p in projector)
    assert all(p.requires_grad != supervised for p in projector)
    # the projector's weights stay in the state dict either way
    assert "student.classification_head.weight" in module.state_dict()
