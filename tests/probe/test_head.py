"""Probe head: metrics, CI, validation carving, the full-batch fit (against scikit-learn), export/folding."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from ssondo_train.probe.head import (
    NormStats,
    average_precision,
    carve_validation,
    evaluate,
    export_head,
    fit_linear_probe,
    fold_normalisation,
    head_state_dict,
    mean_average_precision,
    mean_ci95,
    predict_logits,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny full-batch problems: 2 threads on a shared 2-core box spend their time in OpenMP spin-waits."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def blobs(n: int, d: int, c: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes around random means, with offsets and per-dimension scales (standardising matters)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((c, d)) * sep
    y = np.arange(n) % c
    rng.shuffle(y)
    x = means[y] + rng.standard_normal((n, d))
    x = x * rng.uniform(0.1, 10.0, d) + rng.normal(0, 5, d)
    return x.astype(np.float32), y.astype(np.int64)


# --- metrics
def test_average_precision_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    target = rng.random(200) < 0.2
    scores = np.round(rng.random(200) + target * 0.3, 1)  # heavy ties
    assert average_precision(scores, target) == pytest.approx(
        average_precision_score(target, scores), abs=1e-12
    )
    assert math.isnan(average_precision(scores, np.zeros(200)))


def test_mean_average_precision_skips_empty_classes_and_masks() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((100, 4)) < 0.3).astype(np.float32)
    y[:, 3] = 0  # no positive: skipped
    s = rng.standard_normal((100, 4)) + y
    expected = np.mean([average_precision_score(y[:, c], s[:, c]) for c in range(3)])
    assert mean_average_precision(s, y) == pytest.approx(expected, abs=1e-12)
    # masking the 50 first clips of class 0 == computing class 0 on the last 50 only
    mask = np.ones_like(y, dtype=bool)
    mask[:50, 0] = False
    exp_masked = np.mean(
        [average_precision_score(y[50:, 0], s[50:, 0])]
        + [average_precision_score(y[:, c], s[:, c]) for c in (1, 2)]
    )
    assert mean_average_precision(s, y, mask) == pytest.approx(exp_masked, abs=1e-12)
    # a masked wrong label changes nothing
    y2 = y.copy()
    y2[:50, 0] = 1 - y2[:50, 0]
    assert mean_average_precision(s, y2, mask) == pytest.approx(exp_masked, abs=1e-12)


def test_mean_ci95_student_t() -> None:
    mean, half = mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(
        4.302652729911275 / math.sqrt(3), rel=1e-9
    )  # t_{0.975,2} * s / sqrt(3), s = 1
    assert mean_ci95([0.5, 0.5, 0.5]) == (0.5, 0.0)
    m1, h1 = mean_ci95([0.7])
    assert m1 == 0.7 and math.isnan(h1)


# --- validation
def test_carve_validation_is_stratified_and_a_partition() -> None:
    labels = np.repeat(np.arange(5), [40, 20, 10, 2, 1])  # (73,)
    labels = np.r_[labels, np.full(7, 9)]  # extra global clips that are not candidates
    train_idx = np.arange(73)
    tr, va = carve_validation(train_idx, labels, 0.1, seed=0)
    assert np.array_equal(np.sort(np.r_[tr, va]), train_idx)
    assert len(np.intersect1d(tr, va)) == 0
    counts = np.bincount(labels[va], minlength=5)
    assert counts.tolist() == [4, 2, 1, 1, 0]  # round(0.1 n) with >= 1, the singleton stays in training
    tr2, va2 = carve_validation(train_idx, labels, 0.1, seed=1)
    assert not np.array_equal(va, va2)
    assert np.array_equal(carve_validation(train_idx, labels, 0.1, seed=0)[1], va)


def test_carve_validation_multilabel_uses_rarest_class() -> None:
    y = np.zeros((60, 3), dtype=np.float32)
    y[:, 0] = 1  # everybody has class 0
    y[:10, 1] = 1  # 10 clips also have the rare class 1
    y[50:, 0] = 0  # 10 clips unlabelled
    tr, va = carve_validation(np.arange(60), y, 0.2, seed=3)
    assert len(va) == 2 + 8 + 2  # rare stratum 10 -> 2, class-0-only 40 -> 8, unlabelled 10 -> 2
    assert (y[va, 1] == 1).sum() == 2


# --- fit
def test_fit_matches_sklearn_logistic_regression() -> None:
    x, y = blobs(400, 12, 4, sep=0.6, seed=0)
    wd = 1e-2
    res = fit_linear_probe(
        x, y, x[:40], y[:40], "multiclass", 4, weight_decays=(wd,), refit=False, tol=1e-7, max_epochs=1000
    )
    z = NormStats.fit(x).apply(x)
    ref = LogisticRegression(C=1.0 / (wd * len(x)), tol=1e-8, max_iter=5000).fit(z, y)
    p_ours = torch.softmax(torch.as_tensor(predict_logits(res.head, res.stats, x)), 1).numpy()
    assert np.abs(p_ours - ref.predict_proba(z)).max() < 1e-3  # a 2x error in C gives ~1e-2
    assert np.abs(res.head.weight.detach().numpy() - ref.coef_).max() < 2e-3


def test_fit_selects_on_validation_and_refits() -> None:
    x, y = blobs(600, 30, 5, sep=0.5, seed=1)
    xtr, ytr, xva, yva, xte, yte = x[:300], y[:300], x[300:400], y[300:400], x[400:], y[400:]
    res = fit_linear_probe(xtr, ytr, xva, yva, "multiclass", 5, weight_decays=(10.0, 1e-2, 1e-5))
    assert [g.weight_decay for g in res.grid] == [10.0, 1e-2, 1e-5]
    best = max(res.grid, key=lambda g: (g.val_score, g.weight_decay))
    assert res.weight_decay == best.weight_decay and res.val_score == best.val_score
    assert res.refit and res.n_train == 300 and res.n_val == 100
    # refit stats come from train + valid
    np.testing.assert_allclose(res.stats.mean, np.r_[xtr, xva].mean(0), rtol=1e-4, atol=1e-4)
    acc = evaluate(res.head, res.stats, xte, yte, "multiclass")
    assert acc > 0.75  # 0.83 measured; the weakest decay (val 0.67) would overfit
    # a grid of one point must give the same head as refitting that point
    single = fit_linear_probe(
        xtr, ytr, xva, yva, "multiclass", 5, weight_decays=(res.weight_decay,), tol=1e-7
    )
    np.testing.assert_allclose(
        predict_logits(single.head, single.stats, xte), predict_logits(res.head, res.stats, xte), atol=2e-2
    )


def test_fit_carves_validation_when_none_given() -> None:
    x, y = blobs(200, 8, 4, sep=1.0, seed=2)
    res = fit_linear_probe(x, y, None, None, "multiclass", 4, weight_decays=(1e-2,), seed=5, val_fraction=0.2)
    assert (res.n_train, res.n_val) == (160, 40)


def test_path_and_batched_grids_agree() -> None:
    x, y = blobs(300, 16, 3, sep=0.5, seed=3)
    kw = dict(weight_decays=(1e-1, 1e-2, 1e-3), tol=1e-7, max_epochs=2000, refit=False)
    a = fit_linear_probe(x[:200], y[:200], x[200:], y[200:], "multiclass", 3, grid_strategy="path", **kw)
    b = fit_linear_probe(x[:200], y[:200], x[200:], y[200:], "multiclass", 3, grid_strategy="batched", **kw)
    assert [g.val_score for g in a.grid] == pytest.approx([g.val_score for g in b.grid], abs=1e-9)
    np.testing.assert_allclose(a.head.weight.detach(), b.head.weight.detach(), atol=1e-3)


def test_adam_solver_reaches_lbfgs_solution() -> None:
    x, y = blobs(300, 10, 3, sep=0.5, seed=4)
    common = dict(weight_decays=(1e-2,), refit=False)
    lb = fit_linear_probe(x[:250], y[:250], x[250:], y[250:], "multiclass", 3, tol=1e-7, **common)
    ad = fit_linear_probe(
        x[:250],
        y[:250],
        x[250:],
        y[250:],
        "multiclass",
        3,
        solver="adam",
        lrs=(0.05,),
        max_epochs=800,
        **common,
    )
    assert ad.solver == "adam"
    np.testing.assert_allclose(
        predict_logits(ad.head, ad.stats, x), predict_logits(lb.head, lb.stats, x), atol=5e-2
    )


def test_multilabel_fit_ignores_masked_labels() -> None:
    rng = np.random.default_rng(5)
    n, d, c = 400, 12, 3
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((d, c))
    y = (x @ w + rng.standard_normal((n, c)) * 0.5 > 0.8).astype(np.float32)
    mask = rng.random((n, c)) > 0.3
    y_flipped = np.where(mask, y, 1 - y)  # only unobserved entries differ
    kw = dict(weight_decays=(1e-2, 1e-3), tol=1e-7)
    a = fit_linear_probe(
        x[:300], y[:300], x[300:], y[300:], "multilabel", c, mask_train=mask[:300], mask_val=mask[300:], **kw
    )
    b = fit_linear_probe(
        x[:300],
        y_flipped[:300],
        x[300:],
        y_flipped[300:],
        "multilabel",
        c,
        mask_train=mask[:300],
        mask_val=mask[300:],
        **kw,
    )
    np.testing.assert_allclose(a.head.weight.detach(), b.head.weight.detach(), atol=1e-4)
    assert evaluate(a.head, a.stats, x[300:], y[300:], "multilabel", mask[300:]) > 0.8
    # without the mask the flipped labels do change the fit
    c_ = fit_linear_probe(x[:300], y_flipped[:300], x[300:], y_flipped[300:], "multilabel", c, **kw)
    assert np.abs(c_.head.weight.detach().numpy() - a.head.weight.detach().numpy()).max() > 0.1


def test_fit_rejects_bad_inputs() -> None:
    x, y = blobs(50, 4, 2, sep=1.0, seed=0)
    with pytest.raises(ValueError, match="task_type"):
        fit_linear_probe(x, y, x, y, "regression", 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="labels must lie"):
        fit_linear_probe(x, y + 5, x, y, "multiclass", 2)
    with pytest.raises(ValueError, match="both"):
        fit_linear_probe(x, y, x, None, "multiclass", 2)


# --- export
def test_fold_normalisation_gives_identical_logits_on_raw_features() -> None:
    x, y = blobs(200, 24, 5, sep=0.8, seed=6)
    res = fit_linear_probe(x, y, None, None, "multiclass", 5, weight_decays=(1e-2,))
    folded = fold_normalisation(res.head, res.stats.mean, res.stats.std)
    with torch.no_grad():
        raw = folded(torch.as_tensor(x)).numpy()
    ref = predict_logits(res.head, res.stats, x)
    scale = np.abs(ref).max()
    assert np.abs(raw - ref).max() <= 1e-5 * max(scale, 1.0)
    # and the folded head is not the same as the unfolded one (the folding does something)
    with torch.no_grad():
        assert np.abs(res.head(torch.as_tensor(x)).numpy() - ref).max() > 1.0


def test_head_state_dict_and_export_format() -> None:
    x, y = blobs(120, 16, 3, sep=1.0, seed=7)
    res = fit_linear_probe(x, y, None, None, "multiclass", 3, weight_decays=(1e-2,))
    sd = head_state_dict(res.head)
    assert set(sd) == {"probe.linear_probe.weight", "probe.linear_probe.bias"}
    assert sd["probe.linear_probe.weight"].shape == (3, 16) and sd["probe.linear_probe.bias"].shape == (3,)
    state, meta = export_head(res, "toy", ["a", "b", "c"])
    assert meta["normalisation_folded"] is True and meta["n_classes"] == 3 and meta["embedding_dim"] == 16
    assert len(meta["normalisation"]["mean"]) == 16 and meta["class_names"] == ["a", "b", "c"]
    # the way the ssondo package rebuilds a head from the file
    lin = torch.nn.Linear(16, 3)
    lin.weight.data = state["probe.linear_probe.weight"]
    lin.bias.data = state["probe.linear_probe.bias"]
    with torch.no_grad():
        np.testing.assert_allclose(lin(torch.as_tensor(x)).numpy(), res.predict(x), atol=1e-3)
    with pytest.raises(ValueError, match="class names"):
        export_head(res, "toy", ["a", "b"])


def test_normstats_constant_dimension() -> None:
    x = np.c_[np.ones(10), np.arange(10)].astype(np.float32)
    st = NormStats.fit(x)
    z = st.apply(x)
    assert st.std[0] == 1.0 and np.all(z[:, 0] == 0) and abs(z[:, 1].std() - 1) < 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        st.apply(x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fit_matches_cpu() -> None:
    x, y = blobs(2000, 64, 10, sep=0.4, seed=8)
    kw = dict(weight_decays=(1e-1, 1e-2, 1e-3), tol=1e-6, max_epochs=1000)
    cpu = fit_linear_probe(x[:1500], y[:1500], x[1500:1800], y[1500:1800], "multiclass", 10, **kw)
    gpu = fit_linear_probe(
        x[:1500], y[:1500], x[1500:1800], y[1500:1800], "multiclass", 10, device="cuda", **kw
    )
    assert gpu.weight_decay == cpu.weight_decay
    assert next(gpu.head.parameters()).device.type == "cpu"
    np.testing.assert_allclose(gpu.predict(x[1800:]), cpu.predict(x[1800:]), atol=5e-3)


def test_path_patience_stops_walking_past_the_validation_optimum() -> None:
    x, y = blobs(400, 40, 4, sep=0.35, seed=7)
    xtr, ytr, xva, yva = x[:150], y[:150], x[150:], y[150:]
    wds = (3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3, 3e-4, 1e-4)
    full = fit_linear_probe(xtr, ytr, xva, yva, "multiclass", 4, weight_decays=wds, path_patience=None)
    assert [g.weight_decay for g in full.grid] == list(wds)
    best_i = wds.index(full.weight_decay)
    assert best_i < len(wds) - 3, "the fixture must have its optimum well inside the grid"
    short = fit_linear_probe(xtr, ytr, xva, yva, "multiclass", 4, weight_decays=wds, path_patience=2)
    walked = [g.weight_decay for g in short.grid]
    assert walked == list(wds[: len(walked)]) and len(walked) < len(wds)
    # the scores it did see are the full grid's, and it stopped after 2 non-improving points
    assert [g.val_score for g in short.grid] == [g.val_score for g in full.grid[: len(walked)]]
    assert short.weight_decay == max(short.grid, key=lambda g: (g.val_score, g.weight_decay)).weight_decay
    tail = [g.val_score for g in short.grid[-2:]]
    assert all(s <= short.val_score for s in tail)


def test_warm_started_refit_equals_a_cold_fit_on_train_plus_valid() -> None:
    x, y = blobs(500, 20, 5, sep=0.5, seed=8)
    xtr, ytr, xva, yva, xte = x[:300], y[:300], x[300:400], y[300:400], x[400:]
    res = fit_linear_probe(xtr, ytr, xva, yva, "multiclass", 5, weight_decays=(1.0, 0.1, 0.01), tol=1e-7)
    cold = fit_linear_probe(
        np.r_[xtr, xva], np.r_[ytr, yva], xva, yva, "multiclass", 5,
        weight_decays=(res.weight_decay,), refit=False, tol=1e-7, max_epochs=2000,
    )  # fmt: skip
    np.testing.assert_allclose(res.stats.mean, cold.stats.mean, rtol=1e-6)
    np.testing.assert_allclose(
        predict_logits(res.head, res.stats, xte), predict_logits(cold.head, cold.stats, xte), atol=2e-3
    )


def test_lbfgs_solves_an_ill_conditioned_quadratic_in_no_more_evaluations_than_torch_lbfgs() -> None:
    from ssondo_train.probe.head import _lbfgs

    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64))
    h = q @ torch.diag(torch.logspace(-1, 1, 30, dtype=torch.float64)) @ q.T  # condition number 100
    b = torch.randn(30, dtype=torch.float64)

    def fun(z):
        return 0.5 * z @ h @ z - b @ z, h @ z - b

    z0 = torch.zeros(30, dtype=torch.float64)
    z, evals = _lbfgs(fun, z0, max_iter=500, max_eval=600, tol=1e-6, tol_change=0.0)
    assert float(fun(z)[1].abs().max()) <= 1e-6
    torch.testing.assert_close(z, torch.linalg.solve(h, b), rtol=0, atol=1e-5)
    p = z0.clone().requires_grad_(True)
    ref = torch.optim.LBFGS(
        [p], max_iter=500, max_eval=600, tolerance_grad=1e-6, tolerance_change=0.0, history_size=20,
        line_search_fn="strong_wolfe",
    )  # fmt: skip
    ref_evals = 0

    def closure():
        nonlocal ref_evals
        ref_evals += 1
        ref.zero_grad()
        f = fun(p)[0]
        f.backward()
        return f

    ref.step(closure)
    assert evals <= ref_evals, (evals, ref_evals)  # 63 vs 84: full steps need no line-search evaluations


def test_select_by_loss_picks_the_smallest_validation_loss() -> None:
    x, y = blobs(400, 40, 4, sep=0.35, seed=7)
    xtr, ytr, xva, yva = x[:150], y[:150], x[150:], y[150:]
    wds = (3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 3e-3, 1e-3)
    res = fit_linear_probe(
        xtr, ytr, xva, yva, "multiclass", 4, weight_decays=wds, path_patience=None, select_by="loss"
    )
    losses = [g.val_loss for g in res.grid]
    assert all(np.isfinite(losses)) and res.weight_decay == wds[int(np.argmin(losses))]
    # the loss of the selected head is the mean cross-entropy of its validation predictions
    by_metric = fit_linear_probe(xtr, ytr, xva, yva, "multiclass", 4, weight_decays=wds, path_patience=None)
    assert [g.val_score for g in by_metric.grid] == [g.val_score for g in res.grid]
    with pytest.raises(ValueError, match="select_by"):
        fit_linear_probe(xtr, ytr, xva, yva, "multiclass", 4, select_by="auc")
