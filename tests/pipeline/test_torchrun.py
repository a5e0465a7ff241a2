"""Two CPU processes started by torchrun: precompute writes the single-process store, distill trains once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ssondo_train.store import open_store
from tests.conftest import REPO_ROOT
from tests.pipeline.conftest import TINY_TRAINING, TINY_WINDOW, cli, store_overrides

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node=2 -m ssondo_train ...`` on this machine (gloo on CPU)."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        "-m",
        "ssondo_train",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=timeout)


def _store(root: Path) -> tuple[list, np.ndarray]:
    keys, emb = open_store(root / "t" / "precompute" / "store").read_all_embeddings()
    return [tuple(k) for k in keys], emb


def _precompute_args(manifest: Path, root: Path) -> list[str]:
    return [
        "stage=precompute",
        "run_name=t",
        f"paths.output_root={root}",
        f"precompute.manifest={manifest}",
        "precompute.valid_fraction=0.2",
        "precompute.clips_per_shard=4",
        "precompute.num_workers=0",
        *TINY_WINDOW,
    ]


def test_torchrun_precompute_and_distill(tiny_corpus, tmp_path):
    single, ranked = tmp_path / "single", tmp_path / "ranked"
    res = cli(*_precompute_args(tiny_corpus, single))
    assert res.returncode == 0, res.stderr[-3000:]
    res = torchrun(*_precompute_args(tiny_corpus, ranked))
    assert res.returncode == 0, res.stderr[-4000:]
    keys, emb = _store(ranked)
    ref_keys, ref_emb = _store(single)
    assert keys == ref_keys and len(set(keys)) == len(keys)
    np.testing.assert_allclose(emb, ref_emb, rtol=0, atol=0)
    done = json.loads((ranked / "t" / "precompute" / "done.json").read_text())
    assert done["counts"]["windows"] == len(keys)

    res = torchrun(
        "stage=distill",
        "run_name=t",
        f"paths.output_root={ranked}",
        *store_overrides(ranked),
        *TINY_TRAINING,
        "variant=v",
        "sampler=random",
        "distill.epochs=2",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    done = json.loads((ranked / "t" / "distill" / "v" / "done.json").read_text())
    # 16 windows per epoch over 2 ranks with batches of 4: 2 updates per epoch
    assert done["updates_per_epoch"] == 2 and done["steps"] == 4
