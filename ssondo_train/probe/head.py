"""Linear probe on frozen embeddings: standardise, fit full-batch, pick the weight decay on validation only.

Protocol (differs from the upstream notebook on purpose, see UPSTREAM.md §8.1, which selects the best epoch on
the *test* fold):

1. Standardise with the mean/std of the training split (stored with the head).
2. For every hyper-parameter pair of the grid ``lrs x weight_decays`` fit a linear head on the training split,
   full batch, and score it on the validation split with the task metric (accuracy or macro mAP).
3. Keep the best pair (ties go to the stronger weight decay, i.e. the simpler model).
4. Refit (``refit=True``, default) on train + validation with that pair; the normalisation stats are then
   recomputed on train + validation. The test split is never looked at.

Objective, per head: ``mean_n loss_n + weight_decay / 2 * ||W||^2`` (bias not penalised). For multi-label the
loss is the sum over classes of each class's mean binary cross-entropy over its *observed* clips, i.e. one
independent logistic regression per class. ``weight_decay`` relates to scikit-learn's ``C`` by
``C = 1 / (weight_decay * n_train)``.

The default solver is L-BFGS on preconditioned variables, full step first (see ``_solve`` and ``_lbfgs``:
one eigendecomposition of the training features' Gram matrix serves every weight decay and the refit). The
problem is strictly convex, so the solution does not depend on the seed nor on ``lr`` (the line search picks
the step); ``lr`` only matters for the ``"adam"`` solver (full-batch Adam for ``max_epochs`` steps). Grid
strategies: ``"path"`` fits the weight decays one after the other from the strongest, each warm-started by
extrapolating the previous two solutions linearly in ``log(wd)``, and stops ``path_patience`` points after
the best validation score (cheapest on CPU); ``"batched"`` fits all weight decays of one ``lr`` as a single
stacked problem (one matmul per step; on a GPU a step costs about the same for 1 or 10 heads). ``"auto"``
picks ``batched`` on CUDA, ``path`` otherwise. The grid's fits stop at ``grid_tol`` (they only rank weight
decays); the refit on train + validation starts from
the selected solution and runs to ``tol``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

TaskType = Literal["multiclass", "multilabel"]
TASK_TYPES: tuple[str, ...] = ("multiclass", "multilabel")

DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1.0, 3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)
HEAD_KEY_PREFIX = "probe.linear_probe"
HEAD_FORMAT_VERSION = 1


# --- normalisation
@dataclass(frozen=True)
class NormStats:
    """Per-dimension standardisation ``(x - mean) / std``; ``mean`` and ``std`` are ``(D,)`` float32."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, eps: float = 1e-6) -> NormStats:
        """Stats of ``x`` ``(N, D)``; constant dimensions get ``std = 1`` so they map to 0, not to inf."""
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        # two passes, float64 accumulators (no float64 copy of x): ~3x faster, same stats to ~1e-8
        mean = x.mean(axis=0, dtype=np.float64)
        std = np.sqrt(np.square(x - mean.astype(x.dtype)).mean(axis=0, dtype=np.float64))
        std = np.where(std < eps, 1.0, std)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(N, D)`` -> standardised ``(N, D)`` float32."""
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.std).astype(np.float32, copy=False)


# --- metrics
def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``logits`` ``(N, C)`` against integer labels ``y`` ``(N,)``."""
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(y)))


def average_precision(scores: np.ndarray, target: np.ndarray) -> float:
    """Average precision of one class: ``sum_k (R_k - R_{k-1}) P_k`` over distinct score thresholds.

    Same definition as scikit-learn's ``average_precision_score`` (tied scores form one threshold).
    ``scores`` and ``target`` are ``(N,)``; returns NaN when there is no positive.
    """
    scores = np.asarray(scores, dtype=np.float64)
    target = np.asarray(target) > 0
    n_pos = int(target.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], target[order]
    tp = np.cumsum(t)
    last_of_threshold = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = tp[last_of_threshold].astype(np.float64)
    precision = tp / (last_of_threshold + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Macro mAP over classes: ``scores``/``target`` ``(N, C)``, optional ``mask`` ``(N, C)`` of observed
    labels.

    Per class only the observed clips count (OpenMIC's missing labels); classes with no observed positive are
    skipped. Returns NaN if no class has a positive.
    """
    scores = np.asarray(scores)
    target = np.asarray(target)
    if scores.shape != target.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and target {target.shape} must both be (N, C)")
    if mask is not None and np.shape(mask) != target.shape:
        raise ValueError(f"mask {np.shape(mask)} must match target {target.shape}")
    aps = []
    for c in range(target.shape[1]):
        keep = slice(None) if mask is None else np.asarray(mask[:, c], dtype=bool)
        ap = average_precision(scores[keep, c], target[keep, c])
        if not math.isnan(ap):
            aps.append(ap)
    return float(np.mean(aps)) if aps else float("nan")


def task_metric(
    logits: np.ndarray, y: np.ndarray, task_type: TaskType, mask: np.ndarray | None = None
) -> float:
    """Accuracy (multiclass, ``y`` ``(N,)`` int) or macro mAP (multilabel, ``y`` ``(N, C)`` multi-hot)."""
    if task_type == "multiclass":
        return accuracy(logits, y)
    if task_type == "multilabel":
        return mean_average_precision(logits, y, mask)
    raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95 % Student-t confidence interval of the mean.

    ``half = t_{0.975, n-1} * s / sqrt(n)`` with the sample standard deviation ``s`` (ddof 1). A single value
    has no spread estimate: the half-width is NaN.
    """
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = float(v.mean())
    if v.size == 1:
        return mean, float("nan")
    if np.ptp(v) == 0:  # identical runs (deterministic fit): exactly no spread, not rounding noise
        return mean, 0.0
    from scipy.stats import t as student_t  # scipy is only needed here

    half = float(student_t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, half


# --- validation
def carve_validation(
    train_idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``train_idx`` into (train, validation) indices, stratified by class where possible.

    Args:
        train_idx: ``(M,)`` indices into ``labels`` (the candidate training clips).
        labels: per-clip labels indexed by the *global* clip index: ``(N,)`` ints (multiclass) or ``(N, C)``
            multi-hot (multilabel; each clip is stratified by its rarest positive class, unlabelled clips form
            their own stratum).
        fraction: share of each stratum moved to validation, in (0, 1).
        seed: RNG seed (numpy ``default_rng``).

    Each stratum with >= 2 clips gives ``max(1, round(fraction * n))`` clips (never all of them) to
    validation;
    singleton strata stay in training. Returns two sorted index arrays that partition ``train_idx``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    train_idx = np.asarray(train_idx, dtype=np.int64)
    labels = np.asarray(labels)
    sub = labels[train_idx]
    if sub.ndim == 1:
        strata = sub.astype(np.int64)
    elif sub.ndim == 2:
        counts = (labels[train_idx] > 0).sum(axis=0)
        # rarest positive class per clip; -1 for clips without any positive
        rank = np.where(sub > 0, counts[None, :], np.iinfo(np.int64).max)
        strata = np.where((sub > 0).any(axis=1), np.argmin(rank, axis=1), -1)
    else:
        raise ValueError(f"labels must be (N,) or (N, C), got {labels.shape}")
    rng = np.random.default_rng(seed)
    val_mask = np.zeros(len(train_idx), dtype=bool)
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        if len(members) < 2:
            continue
        n_val = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        val_mask[rng.choice(members, size=n_val, replace=False)] = True
    return np.sort(train_idx[~val_mask]), np.sort(train_idx[val_mask])


# --- solver
@dataclass(frozen=True)
class GridPoint:
    """One evaluated hyper-parameter pair: its validation score and the solver's function evaluations."""

    lr: float
    weight_decay: float
    val_score: float
    n_evals: int
    val_loss: float = math.nan


@dataclass
class ProbeResult:
    """A fitted probe. ``head`` maps *standardised* features ``(N, D)`` to logits ``(N, C)`` (CPU, float32).

    Use :func:`fold_normalisation` (or :func:`export_head`) to get a head that takes raw embeddings.
    """

    head: nn.Linear
    stats: NormStats
    task_type: TaskType
    lr: float
    weight_decay: float
    val_score: float
    grid: list[GridPoint] = field(default_factory=list)
    refit: bool = True
    n_train: int = 0
    n_val: int = 0
    solver: str = "lbfgs"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, C)`` for raw features ``x`` ``(N, D)``."""
        return predict_logits(self.head, self.stats, x)

    def hparams(self) -> dict[str, Any]:
        """JSON-friendly summary of the selection (no tensors)."""
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "val_score": self.val_score,
            "refit_on_train_plus_val": self.refit,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "solver": self.solver,
            "grid": [vars(g) for g in self.grid],
        }


def _loss_and_grad(
    logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, task_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean data loss of each stacked head and its gradient: ``(N, K, C)`` logits -> ``(K,)``, ``(N, K, C)``.

    Written out by hand (softmax / sigmoid minus target) rather than through autograd: a probe fit is a few
    tens of these calls, and the two GEMMs around them are then the whole cost.
    """
    n, k, c = logits.shape
    if task_type == "multiclass":
        lse = torch.logsumexp(logits, dim=2, keepdim=True)  # (N, K, 1)
        idx = y.view(n, 1, 1).expand(n, k, 1)
        loss = (lse.squeeze(2) - logits.gather(2, idx).squeeze(2)).mean(dim=0)
        grad = (logits - lse).exp_()
        grad.scatter_add_(2, idx, torch.full_like(lse, -1.0))
        return loss, grad.div_(n)
    target = y.unsqueeze(1).expand_as(logits)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    grad = torch.sigmoid(logits).sub_(target)
    if mask is None:
        return bce.mean(dim=0).sum(dim=1), grad.div_(n)
    # per-class mean over observed clips, summed over classes (one logistic regression per class)
    weight = (mask / mask.sum(dim=0).clamp_min(1.0)).unsqueeze(1)  # (N, 1, C)
    return (bce * weight).sum(dim=0).sum(dim=1), grad.mul_(weight)


@dataclass(frozen=True)
class _Design:
    """Standardised training features ``x`` ``(N, D)`` and the eigenbasis of ``x^T x / N``: ``v``, ``lam``."""

    x: torch.Tensor
    v: torch.Tensor
    lam: torch.Tensor


def _design(x: torch.Tensor) -> _Design:
    """float32 is enough: ``v`` only serves as a preconditioner, so its rounding errors cost at most an
    iteration, never accuracy (the objective is evaluated on ``x`` itself)."""
    lam, v = torch.linalg.eigh((x.T @ x) / max(len(x), 1))
    return _Design(x=x, v=v, lam=lam.clamp_min(0.0))


def _curvature(task_type: str, n_classes: int) -> float:
    """Typical second derivative of the loss w.r.t. a logit (near-uniform softmax; sigmoid, rare labels)."""
    return 1.0 / n_classes if task_type == "multiclass" else 0.1


def _solve(
    design: _Design,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    task_type: str,
    weight_decays: torch.Tensor,
    lr: float,
    max_epochs: int,
    solver: str,
    init: tuple[torch.Tensor, torch.Tensor] | None,
    n_classes: int,
    tol: float,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Fit K = len(weight_decays) independent heads at once: ``logits = x @ W_k + b_k``.

    Objective per head: mean data loss + ``wd_k / 2 ||W_k||^2`` (bias not penalised). The solver's variables
    are preconditioned: ``W_k = v @ (W~_k / sqrt(s * lam + wd_k))`` and ``b = b~ / sqrt(s)``, with ``s`` the
    typical logit curvature; ``s * x^T x / N + wd * I`` approximates the Hessian in ``W`` (each class column
    alike), so the Hessian in ``W~`` is close to the identity and L-BFGS needs a few tens of function
    evaluations whatever the feature correlations. The data are never rotated: the two small products with
    ``v`` cost a fraction of the ``(N, D) x (D, C)`` ones. ``init`` = ``(W (K, D, C), b (K, C))`` warm start.
    Returns ``W`` ``(K, D, C)``, ``b`` ``(K, C)`` and the number of function evaluations.
    """
    x, v = design.x, design.v
    n, d = x.shape
    k = weight_decays.numel()
    s = _curvature(task_type, n_classes)
    w_scale = (s * design.lam.unsqueeze(0) + weight_decays.unsqueeze(1)).rsqrt().unsqueeze(2)  # (K, D, 1)
    b_scale = 1.0 / math.sqrt(s)
    if init is None:
        wt = torch.zeros(k, d, n_classes, device=x.device, dtype=x.dtype)
        bt = torch.zeros(k, n_classes, device=x.device, dtype=x.dtype)
    else:
        wt = ((v.T @ init[0].to(x.dtype)) / w_scale).detach().clone()
        bt = (init[1].to(x.dtype) / b_scale).detach().clone()
    n_w = wt.numel()

    def weights(z: torch.Tensor) -> torch.Tensor:
        return v @ (z[:n_w].view(k, d, n_classes) * w_scale)  # (K, D, C)

    def objective(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Objective (sum over heads) and its gradient, both in the preconditioned variables ``z``."""
        ws = z[:n_w].view(k, d, n_classes) * w_scale
        bias = z[n_w:].view(k, n_classes) * b_scale
        w = v @ ws  # (K, D, C)
        logits = (x @ w.permute(1, 0, 2).reshape(d, k * n_classes)).view(n, k, n_classes) + bias
        data, g_logits = _loss_and_grad(logits, y, mask, task_type)
        g_w = (x.T @ g_logits.view(n, k * n_classes)).view(d, k, n_classes).permute(1, 0, 2)  # (K, D, C)
        wd = weight_decays.view(k, 1, 1)
        g_wt = (v.T @ g_w + wd * ws) * w_scale
        g_bt = g_logits.sum(dim=0) * b_scale
        reg = 0.5 * (weight_decays * ws.pow(2).sum(dim=(1, 2)))  # ||W|| = ||v^T W||
        return (data + reg).sum(), torch.cat([g_wt.reshape(-1), g_bt.reshape(-1)])

    z = torch.cat([wt.reshape(-1), bt.reshape(-1)])
    if solver == "lbfgs":
        z, evals = _lbfgs(objective, z, max_iter=max_epochs, max_eval=int(max_epochs * 1.25) + 1, tol=tol)
    elif solver == "adam":
        param = z.clone().requires_grad_(False)
        opt = torch.optim.Adam([param], lr=lr)
        for _ in range(max_epochs):
            _, param.grad = objective(param)
            opt.step()
        z, evals = param.detach(), max_epochs
    else:
        raise ValueError(f"solver must be 'lbfgs' or 'adam', got {solver!r}")
    return weights(z), z[n_w:].view(k, n_classes) * b_scale, evals


def _lbfgs(
    fun,
    z: torch.Tensor,
    max_iter: int,
    max_eval: int,
    tol: float,
    history: int = 20,
    tol_change: float = 1e-10,
) -> tuple[torch.Tensor, int]:
    """Minimise a smooth convex ``fun(z) -> (value, gradient)`` with L-BFGS from ``z``; ``(z*, evaluations)``.

    The variables are preconditioned (Hessian close to the identity), so every iteration first tries the
    full quasi-Newton step (``t = 1``, the first iteration included) and backtracks (Armijo, quadratic
    interpolation) only when it does not decrease the objective enough: most iterations cost one
    evaluation. Convexity keeps every curvature pair ``y.s > 0``. Stops when ``max |gradient| <= tol``, when
    the objective changes by less than ``tol_change``, or after ``max_iter`` iterations / ``max_eval``
    evaluations.
    """
    f, g = fun(z)
    evals = 1
    pairs: list[tuple[torch.Tensor, torch.Tensor, float]] = []
    for _ in range(max_iter):
        if float(g.abs().max()) <= tol or evals >= max_eval:
            break
        # two-loop recursion: d = -H g
        d = -g
        alphas = []
        for s_i, y_i, rho in reversed(pairs):
            a = rho * float(s_i @ d)
            d = d - a * y_i
            alphas.append(a)
        if pairs:
            s_i, y_i, rho = pairs[-1]
            d = d * (1.0 / (rho * float(y_i @ y_i)))  # gamma = s.y / y.y
        for (s_i, y_i, rho), a in zip(pairs, reversed(alphas), strict=True):
            d = d + s_i * (a - rho * float(y_i @ d))
        gtd = float(g @ d)
        if not gtd < 0.0:  # lost descent (rounding): restart from the steepest descent
            pairs.clear()
            d, gtd = -g, -float(g @ g)
        t = 1.0
        while True:
            z_new = z + t * d
            f_new, g_new = fun(z_new)
            evals += 1
            if float(f_new) <= float(f) + 1e-4 * t * gtd:
                break
            if evals >= max_eval or t < 1e-6:  # no decrease the objective's rounding can resolve: done
                return z, evals
            # minimiser of the quadratic through f, f'(0) = gtd and f(t), kept within [0.1 t, 0.5 t]
            curv = float(f_new) - float(f) - gtd * t
            t_q = -gtd * t * t / (2.0 * curv) if curv > 0 else 0.5 * t
            t = min(max(t_q, 0.1 * t), 0.5 * t)
        s_new, y_new = z_new - z, g_new - g
        ys = float(y_new @ s_new)
        if ys > 1e-12:
            pairs.append((s_new, y_new, 1.0 / ys))
            if len(pairs) > history:
                pairs.pop(0)
        change = abs(float(f_new) - float(f))
        z, f, g = z_new, f_new, g_new
        if change < tol_change:
            break
    return z, evals


def _path_start(
    path: Sequence[tuple[float, tuple[torch.Tensor, torch.Tensor]]], next_wd: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warm start for ``next_wd`` from the solutions at the previous weight decays (strongest first).

    The regularisation path is smooth in ``log(wd)``: the last two solutions give a linear extrapolation,
    which starts the next fit much closer to its solution than the last one alone (about half the
    evaluations over a half-decade grid). With a single solution it is the start.
    """
    wd, (w, b) = path[-1]
    if len(path) < 2:
        return w, b
    prev_wd, (pw, pb) = path[-2]
    r = math.log(next_wd / wd) / math.log(wd / prev_wd)
    return w + r * (w - pw), b + r * (b - pb)


def _restandardise(
    w: torch.Tensor, b: torch.Tensor, old: NormStats, new: NormStats
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same affine map of the raw features expressed on ``new``-standardised inputs (a warm start)."""
    dev, dt = w.device, w.dtype
    old_std, new_std = (torch.as_tensor(a.std, device=dev, dtype=dt) for a in (old, new))
    old_mean, new_mean = (torch.as_tensor(a.mean, device=dev, dtype=dt) for a in (old, new))
    w_raw = w / old_std.unsqueeze(1)
    b_raw = b - old_mean @ w_raw
    return w_raw * new_std.unsqueeze(1), b_raw + new_mean @ w_raw


def _to_targets(y: np.ndarray, task_type: str, n_classes: int, device: torch.device) -> torch.Tensor:
    y = np.asarray(y)
    if task_type == "multiclass":
        if y.ndim != 1:
            raise ValueError(f"multiclass labels must be (N,) ints, got {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(f"labels must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
        return torch.as_tensor(y, dtype=torch.long, device=device)
    if task_type == "multilabel":
        if y.ndim != 2 or y.shape[1] != n_classes:
            raise ValueError(f"multilabel targets must be (N, {n_classes}) multi-hot, got {y.shape}")
        return torch.as_tensor(y, dtype=torch.float32, device=device)
    raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")


def _to_mask(mask: np.ndarray | None, shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return None
    if np.shape(mask) != shape:
        raise ValueError(f"mask {np.shape(mask)} must match targets {shape}")
    return torch.as_tensor(np.asarray(mask, dtype=np.float32), device=device)


def _make_head(w: torch.Tensor, b: torch.Tensor) -> nn.Linear:
    """``w`` ``(D, C)``, ``b`` ``(C,)`` -> CPU ``nn.Linear(D, C)``."""
    d, c = w.shape
    head = nn.Linear(d, c)
    with torch.no_grad():
        head.weight.copy_(w.T.cpu())
        head.bias.copy_(b.cpu())
    return head


def fit_linear_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    task_type: TaskType,
    n_classes: int,
    device: str | torch.device = "cpu",
    lrs: Sequence[float] = (1.0,),
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    max_epochs: int = 300,
    seed: int = 0,
    *,
    mask_train: np.ndarray | None = None,
    mask_val: np.ndarray | None = None,
    solver: Literal["lbfgs", "adam"] = "lbfgs",
    refit: bool = True,
    val_fraction: float = 0.1,
    grid_strategy: Literal["auto", "path", "batched"] = "auto",
    tol: float = 1e-4,
    grid_tol: float = 1e-3,
    path_patience: int | None = 3,
    select_by: Literal["metric", "loss"] = "metric",
) -> ProbeResult:
    """Fit a linear probe; choose ``(lr, weight_decay)`` on the validation split only, then refit.

    Args:
        x_train: ``(N, D)`` float32 raw embeddings.
        y_train: ``(N,)`` int labels (multiclass) or ``(N, C)`` multi-hot (multilabel).
        x_val, y_val: validation split, same layouts. If ``None``, a stratified ``val_fraction`` of the
            training split is carved out with ``seed`` (:func:`carve_validation`).
        task_type: ``"multiclass"`` (softmax cross-entropy, accuracy) or ``"multilabel"`` (per-class BCE,
        mAP). n_classes: C.
        device: where the full-batch fit runs (``"cuda"`` is much faster for large grids).
        lrs: learning rates (L-BFGS: initial step scale, 1.0 is right; Adam: the step size).
        weight_decays: L2 strengths of the grid (see the module docstring for the objective).
        max_epochs: L-BFGS iterations (cap) or Adam full-batch steps per fit.
        seed: only used to carve the validation split when none is given (the fit itself is deterministic).
        mask_train, mask_val: optional ``(N, C)`` masks of observed labels (multilabel, OpenMIC).
        solver: ``"lbfgs"`` (default) or ``"adam"``.
        refit: refit on train + validation with the chosen pair (stats recomputed on train + validation).
        grid_strategy: ``"path"``, ``"batched"`` or ``"auto"`` (see module docstring).
        tol: L-BFGS stops when the max-abs gradient (preconditioned variables) falls below it.
        grid_tol: the same for the grid's fits when ``refit=True`` (they only pick the weight decay; the head
            comes from the refit, which uses ``tol``); never below ``tol``.
        path_patience: ``"path"`` strategy: stop walking towards weaker weight decays after this many
            consecutive points without a better validation score (None: fit the whole grid). The weakest
            decays are the slowest to fit and, past the validation optimum, rarely the best.
        select_by: rank the grid by the validation ``"metric"`` (accuracy / mAP; ties go to the stronger
            weight decay) or by the validation ``"loss"`` (the training objective's data term: smooth, so the
            choice does not flip between near-tied weight decays on small validation splits).

    Returns:
        :class:`ProbeResult` with a CPU ``nn.Linear(D, C)`` acting on standardised features.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {TASK_TYPES}, got {task_type!r}")
    if not lrs or not weight_decays:
        raise ValueError("lrs and weight_decays must not be empty")
    x_train = np.asarray(x_train, dtype=np.float32)
    if x_train.ndim != 2:
        raise ValueError(f"x_train must be (N, D), got {x_train.shape}")
    if (x_val is None) != (y_val is None):
        raise ValueError("give both x_val and y_val, or neither")
    y_train = np.asarray(y_train)
    if x_val is None:
        tr, va = carve_validation(np.arange(len(x_train)), y_train, val_fraction, seed)
        x_val, y_val = x_train[va], y_train[va]
        mask_val = None if mask_train is None else np.asarray(mask_train)[va]
        mask_train = None if mask_train is None else np.asarray(mask_train)[tr]
        x_train, y_train = x_train[tr], y_train[tr]
    x_val = np.asarray(x_val, dtype=np.float32)
    y_val = np.asarray(y_val)
    dev = torch.device(device)
    if grid_strategy == "auto":
        grid_strategy = "batched" if dev.type == "cuda" else "path"
    if grid_strategy not in ("path", "batched"):
        raise ValueError(f"grid_strategy must be 'auto', 'path' or 'batched', got {grid_strategy!r}")

    stats = NormStats.fit(x_train)
    xt = torch.as_tensor(stats.apply(x_train), device=dev)
    yt = _to_targets(y_train, task_type, n_classes, dev)
    mt = _to_mask(mask_train, tuple(yt.shape), dev) if task_type == "multilabel" else None
    design = _design(xt)
    xv = torch.as_tensor(stats.apply(x_val), device=dev)
    yv = _to_targets(y_val, task_type, n_classes, dev)  # also validates shapes/ranges
    mv = _to_mask(mask_val, tuple(yv.shape), dev) if task_type == "multilabel" else None
    if select_by not in ("metric", "loss"):
        raise ValueError(f"select_by must be 'metric' or 'loss', got {select_by!r}")

    # strongest regularisation first: it converges fastest and is the best warm start for the next one
    wds_sorted = sorted({float(w) for w in weight_decays}, reverse=True)
    grid: list[GridPoint] = []
    # every grid fit (K x D x C floats, small): the head when refit=False, the refit's warm start otherwise
    fitted: list[tuple[torch.Tensor, torch.Tensor]] = []
    # The grid's fits only serve the choice on validation; the returned head comes from the refit when
    # refit=True, so the grid may stop earlier.
    fit_tol = max(tol, grid_tol) if refit else tol

    def point(lr: float, wd: float, w: torch.Tensor, b: torch.Tensor, evals: int) -> GridPoint:
        with torch.no_grad():
            logits = xv @ w + b
            loss = float(_loss_and_grad(logits.unsqueeze(1), yv, mv, task_type)[0][0])
            metric = task_metric(logits.cpu().numpy(), y_val, task_type, mask_val)
        return GridPoint(float(lr), wd, metric, evals, loss)

    def criterion(g: GridPoint) -> float:
        """Higher is better; NaN (no positive in validation) never wins."""
        return g.val_score if select_by == "metric" else -g.val_loss

    def better(a: float, b: float) -> bool:
        return not math.isnan(a) and (math.isnan(b) or a > b)

    for lr in lrs:
        if grid_strategy == "batched":
            wd_t = torch.tensor(wds_sorted, device=dev, dtype=torch.float32)
            w, b, ev = _solve(
                design, yt, mt, task_type, wd_t, lr, max_epochs, solver, None, n_classes, fit_tol
            )
            for i, wd in enumerate(wds_sorted):
                grid.append(point(lr, wd, w[i], b[i], ev))
                fitted.append((w[i], b[i]))
            continue
        init, best_score, since_best = None, math.nan, 0
        path: list[tuple[float, tuple[torch.Tensor, torch.Tensor]]] = []  # this lr's (wd, solution)
        for i, wd in enumerate(wds_sorted):
            wd_t = torch.tensor([wd], device=dev, dtype=torch.float32)
            w, b, ev = _solve(
                design, yt, mt, task_type, wd_t, lr, max_epochs, solver, init, n_classes, fit_tol
            )
            path.append((wd, (w, b)))
            if i + 1 < len(wds_sorted):
                init = _path_start(path, wds_sorted[i + 1])
            grid.append(point(lr, wd, w[0], b[0], ev))
            fitted.append((w[0], b[0]))
            score = criterion(grid[-1])
            log.debug(
                "probe grid lr=%g wd=%g val=%.4f loss=%.4f evals=%d",
                lr,
                wd,
                grid[-1].val_score,
                grid[-1].val_loss,
                ev,
            )
            if better(score, best_score):
                best_score, since_best = score, 0
            else:
                since_best += 1
                if path_patience is not None and since_best >= path_patience:
                    log.debug(
                        "probe grid: %d weaker weight decays without improvement, path stopped", since_best
                    )
                    break

    def key(g: GridPoint) -> tuple[float, float]:
        c = criterion(g)
        return (-math.inf if math.isnan(c) else c, g.weight_decay)

    best = max(grid, key=key)
    log.info("probe selected lr=%g weight_decay=%g (val %.4f)", best.lr, best.weight_decay, best.val_score)

    if refit:
        x_all = np.concatenate([x_train, x_val])
        y_all = np.concatenate([y_train, y_val])
        m_all = None
        if task_type == "multilabel" and (mask_train is not None or mask_val is not None):
            m_all = np.concatenate(
                [
                    np.ones(y_train.shape, bool) if mask_train is None else np.asarray(mask_train, bool),
                    np.ones(y_val.shape, bool) if mask_val is None else np.asarray(mask_val, bool),
                ]
            )
        stats_all = NormStats.fit(x_all)
        xa = torch.as_tensor(stats_all.apply(x_all), device=dev)
        ya = _to_targets(y_all, task_type, n_classes, dev)
        ma = _to_mask(m_all, tuple(ya.shape), dev) if m_all is not None else None
        wd_t = torch.tensor([best.weight_decay], device=dev, dtype=torch.float32)
        # Warm start from the selected fit; the training split's eigenbasis is a good enough preconditioner.
        w0, b0 = _restandardise(*fitted[grid.index(best)], stats, stats_all)
        refit_design = _Design(x=xa, v=design.v, lam=design.lam)
        init = (w0.unsqueeze(0), b0.unsqueeze(0)) if solver == "lbfgs" else None
        w, b, _ = _solve(
            refit_design, ya, ma, task_type, wd_t, best.lr, max_epochs, solver, init, n_classes, tol
        )
        stats = stats_all
        head = _make_head(w[0], b[0])
    else:
        w, b = fitted[grid.index(best)]
        head = _make_head(w, b)

    return ProbeResult(
        head=head,
        stats=stats,
        task_type=task_type,
        lr=best.lr,
        weight_decay=best.weight_decay,
        val_score=best.val_score,
        grid=grid,
        refit=refit,
        n_train=len(x_train),
        n_val=len(x_val),
        solver=solver,
    )


# --- inference
def predict_logits(head: nn.Linear, stats: NormStats | None, x: np.ndarray) -> np.ndarray:
    """Logits ``(N, C)`` of ``head`` on ``x`` ``(N, D)``, standardised with ``stats`` first unless None."""
    z = stats.apply(x) if stats is not None else np.asarray(x, dtype=np.float32)
    p = next(head.parameters())
    with torch.no_grad():
        return head(torch.as_tensor(z, device=p.device, dtype=p.dtype)).float().cpu().numpy()


def evaluate(
    head: nn.Linear,
    stats: NormStats | None,
    x: np.ndarray,
    y: np.ndarray,
    task_type: TaskType,
    mask: np.ndarray | None = None,
) -> float:
    """Task metric of the probe on ``x`` ``(N, D)``: accuracy (``y`` ``(N,)``) or macro mAP (``y`` ``(N,
    C)``).

    ``mask`` ``(N, C)`` marks observed labels (multilabel only; unobserved entries are ignored).
    """
    return task_metric(predict_logits(head, stats, x), np.asarray(y), task_type, mask)


# --- export
def fold_normalisation(head: nn.Linear, mean: np.ndarray, std: np.ndarray) -> nn.Linear:
    """Return a new ``nn.Linear`` that applies ``head`` to ``(x - mean) / std`` but takes raw ``x``.

    ``W' = W / std`` (column-wise), ``b' = b - W' @ mean``; computed in float64, stored float32. The ssondo
    package applies heads to raw backbone embeddings, so exported heads must be folded.
    """
    w = head.weight.detach().double().cpu()
    b = head.bias.detach().double().cpu()
    std_t = torch.as_tensor(np.asarray(std), dtype=torch.float64)
    mean_t = torch.as_tensor(np.asarray(mean), dtype=torch.float64)
    w_f = w / std_t
    b_f = b - w_f @ mean_t
    folded = nn.Linear(head.in_features, head.out_features)
    with torch.no_grad():
        folded.weight.copy_(w_f.float())
        folded.bias.copy_(b_f.float())
    return folded


def head_state_dict(head: nn.Linear) -> dict[str, torch.Tensor]:
    """ssondo head format: ``probe.linear_probe.weight`` ``(C, D)``, ``probe.linear_probe.bias`` ``(C,)``."""
    return {
        f"{HEAD_KEY_PREFIX}.weight": head.weight.detach().cpu().float().clone().contiguous(),
        f"{HEAD_KEY_PREFIX}.bias": head.bias.detach().cpu().float().clone().contiguous(),
    }


def head_metadata(
    task: str, task_type: TaskType, class_names: Sequence[str], stats: NormStats, **extra: Any
) -> dict[str, Any]:
    """Metadata stored next to an exported head (JSON-friendly).

    ``normalisation`` keeps the training-split mean/std for reference; ``normalisation_folded`` says whether
    the exported weights already include it (they do when produced by :func:`export_head`).
    """
    return {
        "format_version": HEAD_FORMAT_VERSION,
        "task": task,
        "task_type": task_type,
        "n_classes": len(class_names),
        "class_names": list(class_names),
        "embedding_dim": int(stats.mean.shape[0]),
        "normalisation": {"mean": stats.mean.tolist(), "std": stats.std.tolist()},
        **extra,
    }


def export_head(
    result: ProbeResult, task: str, class_names: Sequence[str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Head for raw embeddings in ssondo format plus metadata: ``(state_dict, metadata)``."""
    if result.head.out_features != len(class_names):
        raise ValueError(f"head has {result.head.out_features} outputs, {len(class_names)} class names given")
    folded = fold_normalisation(result.head, result.stats.mean, result.stats.std)
    meta = head_metadata(
        task,
        result.task_type,
        class_names,
        result.stats,
        normalisation_folded=True,
        hparams={k: v for k, v in result.hparams().items() if k != "grid"},
    )
    return head_state_dict(folded), meta
