"""Probe protocol end to end on synthetic embeddings, plus the Table-1 writer and the bar chart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssondo_train.probe.evaluate import (
    TABLE1_GROUPS,
    FitMemo,
    feature_matrix,
    fit_on_indices,
    plot_results,
    results_markdown,
    retention,
    run_probe,
    write_results,
)
from ssondo_train.probe.tasks import ProbeClip, ProbeTask

WDS = (1e-1, 1e-2, 1e-3)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny full-batch problems: with 2 threads on a shared 2-core box OpenMP spin-waits dominate."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def synthetic(n: int, d: int, c: int, sep: float, seed: int, shuffle_labels: bool = False):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    means = rng.standard_normal((c, d)) * sep
    x = (means[y] + rng.standard_normal((n, d))).astype(np.float32) * 3.0 + 1.0
    if shuffle_labels:
        y = rng.permutation(y)
    return x, y


def fold_task(y: np.ndarray, n_folds: int, c: int) -> ProbeTask:
    # clip i has class i % c; folds cycle every c clips so that each fold holds every class
    clips = [
        ProbeClip(f"clip{i}", Path(f"/data/{i}.wav"), (int(y[i]),), (i // c) % n_folds + 1)
        for i in range(len(y))
    ]
    return ProbeTask("toy-folds", "multiclass", [f"c{k}" for k in range(c)], clips, "folds")


def test_fold_protocol_separable_classes() -> None:
    x, y = synthetic(250, 24, 5, sep=1.0, seed=0)
    task = fold_task(y, 5, 5)
    feats = {c.clip_id: x[i] for i, c in enumerate(task.clips)}
    res = run_probe(feats, task, seeds=(0, 1), weight_decays=WDS)
    assert res["metric"] == "accuracy" and res["protocol"] == "folds" and res["embedding_dim"] == 24
    assert len(res["runs"]) == 2 * 5 and {r["fold"] for r in res["runs"]} == {1, 2, 3, 4, 5}
    assert all(r["n_test"] == 50 and r["n_train"] + r["n_val"] == 200 for r in res["runs"])
    assert res["mean"] > 0.9
    assert res["ci95"] >= 0 and res["fold_ci95"] > 0 and len(res["fold_scores"]) == 5
    assert res["mean"] == pytest.approx(np.mean([p["score"] for p in res["per_seed"]]))


def test_fold_protocol_random_labels_near_chance() -> None:
    x, y = synthetic(300, 24, 5, sep=1.0, seed=1, shuffle_labels=True)
    task = fold_task(y, 5, 5)
    res = run_probe({c.clip_id: x[i] for i, c in enumerate(task.clips)}, task, seeds=(0,), weight_decays=WDS)
    assert abs(res["mean"] - 0.2) < 0.08  # chance = 1/5
    assert math.isnan(res["ci95"])  # one seed: no spread estimate


def test_split_protocol_official_valid_is_seed_independent() -> None:
    x, y = synthetic(240, 16, 4, sep=0.8, seed=2)
    splits = ["train"] * 160 + ["valid"] * 40 + ["test"] * 40
    clips = [ProbeClip(str(i), Path(f"/a/{i}.wav"), (int(y[i]),), splits[i]) for i in range(240)]
    task = ProbeTask("toy-splits", "multiclass", list("abcd"), clips, "splits")
    res = run_probe({str(i): x[i] for i in range(240)}, task, seeds=(0, 1, 2), weight_decays=WDS)
    assert res["seed_independent"] is True
    assert [r["n_train"] for r in res["runs"]] == [160] * 3 and res["ci95"] == 0.0
    assert res["mean"] > 0.8


def test_split_protocol_carves_validation_and_masks_multilabel() -> None:
    rng = np.random.default_rng(3)
    n, d, c = 300, 16, 3
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = x[:, :c] + 0.3 * rng.standard_normal((n, c)) > 0.5
    observed = rng.random((n, c)) > 0.25
    clips = [
        ProbeClip(
            str(i),
            Path(f"/b/{i}.ogg"),
            tuple(int(k) for k in np.flatnonzero(y[i] & observed[i])),
            "train" if i < 220 else "test",
            tuple(int(k) for k in np.flatnonzero(observed[i])),
        )
        for i in range(n)
    ]
    task = ProbeTask("toy-ml", "multilabel", ["x", "y", "z"], clips, "splits")
    feats = {str(i): x[i] for i in range(n)}
    feats.pop("0")
    with pytest.raises(KeyError, match="no embedding"):
        run_probe(feats, task, seeds=(0,))
    res = run_probe(feats, task, seeds=(0, 1), weight_decays=WDS, allow_missing=True)
    assert res["metric"] == "mAP" and res["seed_independent"] is False and res["n_clips"] == n - 1
    assert all(r["n_train"] + r["n_val"] == 219 and r["n_val"] > 0 for r in res["runs"])
    assert res["mean"] > 0.85


def test_retention_and_markdown_table() -> None:
    assert retention(0.73, 0.757) == pytest.approx(96.433, abs=1e-3)
    results = {
        "MN supervised": {"esc50": (0.926, 0.003), "openmic": (0.845, 0.0)},
        "MN MATPAC++": {"esc50": (0.910, 0.001), "openmic": (0.847, 0.0)},
        "MN partial": {"esc50": (0.5, float("nan"))},
        "MATPAC++": {"esc50": (0.931, 0.001), "openmic": (0.856, 0.001)},
    }
    md = results_markdown(results, teacher="MATPAC++", baselines=["MN supervised"], groups=TABLE1_GROUPS)
    lines = md.strip().splitlines()
    assert lines[0] == "| Model | OpenMIC mAP | ESC-50 Acc | Music | Env. | Avg. | Retention |"
    assert lines[2] == "| MN supervised | 84.5±0.0 | 92.6±0.3 | 84.5 | 92.6 | 88.5 | – |"
    # Avg. 87.85 (0.8785000000000001 -> 87.9), teacher 89.35 -> 98.3 %
    assert lines[3] == "| MN MATPAC++ | 84.7±0.0 | 91.0±0.1 | 84.7 | 91.0 | 87.9 | 98.3% |"
    assert lines[4] == "| MN partial | – | 50.0 | – | 50.0 | – | – |"
    assert lines[5].endswith("| 89.3 | 100.0% |")
    with pytest.raises(KeyError):
        results_markdown(results, teacher="nobody")


def test_plot_and_json(tmp_path: Path) -> None:
    results = {"a": {"esc50": (0.9, 0.01), "us8k": (0.8, float("nan"))}, "b": {"esc50": (0.85, 0.02)}}
    out = plot_results(results, tmp_path / "fig" / "bars.png", title="probe")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert [p.name for p in out.parent.iterdir()] == ["bars.png"]  # no temporary left behind
    write_results({"task": "x", "ci95": float("nan"), "runs": [{"fold": 1}]}, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {"task": "x", "ci95": None, "runs": [{"fold": 1}]}


def test_fit_memo_reuses_an_identical_fit() -> None:
    x, y = synthetic(200, 12, 4, sep=0.8, seed=4)
    splits = ["train"] * 120 + ["valid"] * 40 + ["test"] * 40
    clips = [ProbeClip(str(i), Path(f"/a/{i}.wav"), (int(y[i]),), splits[i]) for i in range(200)]
    task = ProbeTask("toy-memo", "multiclass", list("abcd"), clips, "splits")
    feats = {str(i): x[i] for i in range(200)}
    memo = FitMemo()
    x_all, _ = feature_matrix(feats, task, allow_missing=False)
    tr, va = np.arange(120), np.arange(120, 160)
    first = fit_on_indices(x_all, y, None, task, tr, va, memo=memo, weight_decays=WDS)
    again = fit_on_indices(x_all, y, None, task, tr, va, memo=memo, weight_decays=WDS)
    assert again is first and memo.hits == 1
    # anything the fit depends on changes the key: other rows, other arguments, other features
    other = fit_on_indices(x_all, y, None, task, tr[:-1], va, memo=memo, weight_decays=WDS)
    assert other is not first
    fit_on_indices(x_all, y, None, task, tr, va, memo=memo, weight_decays=WDS[:2])
    fit_on_indices(x_all + 1.0, y, None, task, tr, va, memo=memo, weight_decays=WDS)
    assert memo.hits == 1
