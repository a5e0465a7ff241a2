"""stage=distill end to end on a tiny store: training, kill/resume determinism, 2-process DDP (CPU, gloo)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.pipeline.conftest import TINY_WINDOW, cli, popen, store_overrides

pytestmark = pytest.mark.slow

DISTILL = [
    "stage=distill",
    "run_name=t",
    # an explicit variant name: these tests are about training, not about how variants are named
    "variant=v",
    "distill.batch_size=4",
    "sampler.num_samples=16",
    "distill.epochs=3",
    "distill.warm_up_len=1",
    "trainer.num_workers=0",
    "trainer.deterministic=true",
    "distill.bn_recalibration_items=16",
    "distill.log_indices=true",
    # the weight average is part of the state a resume must restore exactly
    "distill.ema_decay=0.9",
    "cluster.k=3",
]


@pytest.fixture(scope="module")
def prepared(tiny_corpus, tmp_path_factory) -> Path:
    """A run folder with precompute + cluster (K=3) done."""
    root = tmp_path_factory.mktemp("distill")
    common = ["run_name=t", f"paths.output_root={root}"]
    res = cli(
        "stage=precompute",
        *common,
        f"precompute.manifest={tiny_corpus}",
        "precompute.valid_fraction=0.2",
        *TINY_WINDOW,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    res = cli("stage=cluster", *common, *store_overrides(root), "cluster.k=3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (root / "t" / "cluster" / "cluster.k=3" / "done.json").is_file()  # k=50 in the run's base
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def copy_run(src: Path, dst: Path) -> Path:
    for stage in ("precompute", "cluster"):
        shutil.copytree(src / "t" / stage, dst / "t" / stage)
    shutil.copy(src / "t" / "run.json", dst / "t" / "run.json")
    return dst


def final_state(root: Path) -> tuple[int, dict[str, torch.Tensor]]:
    ckpt = torch.load(
        root / "t" / "distill" / "v" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    return int(ckpt["global_step"]), ckpt["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory) -> Path:
    root = copy_run(prepared, tmp_path_factory.mktemp("full"))
    res = cli(*DISTILL, *store_overrides(root), f"paths.output_root={root}")
    assert res.returncode == 0, res.stderr[-4000:]
    return root


def test_distill_trains_and_records(uninterrupted):
    done = json.loads((uninterrupted / "t" / "distill" / "v" / "done.json").read_text())
    assert done["steps"] == 12 and done["updates_per_epoch"] == 4 and done["sampler"] == "bds"
    assert done["clusters"] == 3 and len(done["history"]) == 3
    assert all(-1.0 <= row["val/cosine"] <= 1.0 for row in done["history"])
    ckpt = torch.load(
        uninterrupted / "t" / "distill" / "v" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    assert ckpt["ssondo_train_config"]["student"]["name"] == "mobilenetv3"
    assert any(k.startswith("student.classification_head.mlp.3") for k in ckpt["state_dict"])
    assert (uninterrupted / "t" / "distill" / "v" / "logs" / "metrics.csv").exists()
    lines = (uninterrupted / "t" / "distill" / "v" / "indices.rank0.txt").read_text().splitlines()
    assert len(lines) == 12 and all(len(line.split()) == 5 for line in lines)


def test_weight_average_is_checkpointed_and_preferred_by_readers(uninterrupted):
    from ssondo_train.training.checkpoint import load_distill_checkpoint

    path = uninterrupted / "t" / "distill" / "v" / "checkpoints" / "last.ckpt"
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    trained = {k[len("student.") :]: v for k, v in state.items() if k.startswith("student.")}
    average = {k[len("student_ema.") :]: v for k, v in state.items() if k.startswith("student_ema.")}
    assert trained.keys() == average.keys()
    name = "classification_head.mlp.3.weight"
    assert not torch.equal(trained[name], average[name])  # 12 updates at decay <= 0.9: not a copy
    ema = load_distill_checkpoint(path)
    assert ema.weights == "ema" and not ema.ignored_keys
    for k, v in ema.student.state_dict().items():
        torch.testing.assert_close(v, average[k], rtol=0, atol=0, msg=k)
    raw = load_distill_checkpoint(path, weights="trained")
    assert raw.weights == "trained"
    torch.testing.assert_close(raw.student.state_dict()[name], trained[name], rtol=0, atol=0)


def _kill_when_step_starts(args: list[str], index_log: Path, step: int) -> None:
    """Start the distill command and SIGKILL it once the index log shows that update ``step`` started."""
    proc = popen(*args)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if index_log.exists() and any(
            line.startswith(f"{step} ") for line in index_log.read_text().splitlines()
        ):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _metrics(root: Path) -> list[tuple[str, ...]]:
    """(epoch, step, losses, val cosine) of every metrics.csv row; timings left out."""
    import csv

    with open(root / "t" / "distill" / "v" / "logs" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keys = ("epoch", "step", "train/kd_loss_step", "train/kd_loss_epoch", "val/kd_loss", "val/cosine", "lr")
    return [tuple(row.get(k, "") for k in keys) for row in rows]


def test_killed_run_resumes_to_the_same_weights(prepared, uninterrupted, tmp_path):
    """Killed twice, at an epoch boundary's checkpoint and inside an epoch, with loader workers (which
    prefetch before Lightning sets the epoch): every update draws the same windows as the uninterrupted run,
    the weights end bit-identical, and metrics.csv / done.json keep the whole history."""
    root = copy_run(prepared, tmp_path)
    out = root / "t" / "distill" / "v"
    index_log = out / "indices.rank0.txt"
    # 4 updates per epoch: checkpoints at every epoch end (4, 8) and every 3 updates (3, 6, 9).
    args = [*DISTILL, *store_overrides(root), f"paths.output_root={root}", "trainer.num_workers=2"]
    args += ["distill.checkpoint_every_n_steps=3"]
    _kill_when_step_starts(args, index_log, 5)  # inside epoch 1: resumes from the epoch-end checkpoint
    assert not (out / "done.json").exists()
    _kill_when_step_starts(args, index_log, 10)  # inside epoch 2: resumes from the mid-epoch checkpoint
    res = cli(*args)
    assert res.returncode == 0, res.stderr[-4000:]
    resumed_at = [
        int(m)
        for m in re.findall(r"resuming from \S+ \(after update (\d+)\)", (out / "distill.log").read_text())
    ]
    assert len(resumed_at) == 2 and resumed_at[0] % 4 == 0 and resumed_at[1] % 4 != 0, resumed_at
    done = json.loads((out / "done.json").read_text())
    assert (
        done["resumed_from"] == "distill/v/checkpoints/last.ckpt" and done["resumed_at_step"] == resumed_at[1]
    )
    # the same windows at every update (replayed updates appear twice in the append-only audit log)
    reference = {
        line.split()[0]: line
        for line in (uninterrupted / "t" / "distill" / "v" / "indices.rank0.txt").read_text().splitlines()
    }
    lines = index_log.read_text().splitlines()
    assert len(lines) > 12 and all(reference[line.split()[0]] == line for line in lines)
    step_a, state_a = final_state(uninterrupted)
    step_b, state_b = final_state(root)
    assert step_a == step_b == 12
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0, msg=key)
    # one continuous history, as if never interrupted
    assert _metrics(root) == _metrics(uninterrupted)
    reference_done = json.loads((uninterrupted / "t" / "distill" / "v" / "done.json").read_text())
    assert [r["epoch"] for r in done["history"]] == [0, 1, 2]
    assert done["history"] == reference_done["history"]


def test_unfinished_training_does_not_continue_under_other_settings(prepared, tmp_path):
    root = copy_run(prepared, tmp_path)
    out = root / "t" / "distill" / "v"
    args = [*DISTILL, *store_overrides(root), f"paths.output_root={root}"]
    _kill_when_step_starts(args, out / "indices.rank0.txt", 5)
    res = cli(*args, "loss=mse", "distill.lr=3e-3")
    assert res.returncode == 2
    message = res.stderr.strip().splitlines()[-1]
    assert "unfinished work started with another configuration" in message
    assert 'loss.name: "cosine" (started) -> "mse" (now)' in message and "distill.lr" in message
    assert not (out / "done.json").exists()
    # an explicit override continues, and done.json says what changed
    res = cli(*args, "loss=mse", "resume_with_changes=true")
    assert res.returncode == 0, res.stderr[-3000:]
    done = json.loads((out / "done.json").read_text())
    assert done["loss"] == "mse" and any("loss.name" in c for c in done["resumed_with_changes"])


def test_a_leftover_checkpoint_of_another_model_is_refused_with_advice(prepared, tmp_path):
    root = copy_run(prepared, tmp_path)
    out = root / "t" / "distill" / "v"
    args = [*DISTILL, *store_overrides(root), f"paths.output_root={root}"]
    _kill_when_step_starts(args, out / "indices.rank0.txt", 5)
    # a checkpoint of another teacher dimension left in the folder (e.g. copied from another run)
    path = out / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    key = "student.classification_head.mlp.3.weight"
    ckpt["state_dict"][key] = torch.zeros(384, ckpt["state_dict"][key].shape[1])
    torch.save(ckpt, path)
    res = cli(*args)
    assert res.returncode == 2
    message = res.stderr.strip().splitlines()[-1]
    assert "cannot resume from distill/v/checkpoints/last.ckpt" in message and key in message
    assert "force=true" in message and "Traceback" not in res.stderr


def test_two_process_ddp_on_cpu_splits_the_stream(prepared, tmp_path):
    root = copy_run(prepared, tmp_path)
    res = cli(
        *DISTILL,
        *store_overrides(root),
        f"paths.output_root={root}",
        "distill.epochs=1",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    out = root / "t" / "distill" / "v"
    streams = []
    for rank in range(2):
        lines = (out / f"indices.rank{rank}.txt").read_text().splitlines()
        streams.append([line.split()[1:] for line in lines])
    # 16 draws per epoch split over 2 ranks: 8 each = 2 batches of 4; the ranks draw different streams.
    assert [sum(len(b) for b in s) for s in streams] == [8, 8]
    assert streams[0] != streams[1]
    done = json.loads((out / "done.json").read_text())
    assert done["steps"] == 2
