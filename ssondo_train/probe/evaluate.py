"""Run the probe protocol of a task on cached embeddings, summarise with 95 % CIs, write tables and charts.

Protocol (:func:`run_probe`):

* ``folds`` tasks (ESC-50, US8K): every fold is the test set once; the validation split used to pick the
weight
  decay is carved (stratified, ``val_fraction``) out of the *training* folds with the run's seed. A seed's
  score
  is the mean over folds; the reported mean ± CI is over seeds (fold-level figures are reported as well).
* ``splits`` tasks: train on ``train``, select on ``valid`` (carved from ``train`` per seed when the task has
  none, e.g. OpenMIC), test on ``test``. The solver is deterministic (convex objective, zero start, full
  batch),
  so when the validation split does not depend on the seed the fit is done once and reused for every seed
  (``seed_independent: true``; the CI is then 0, as for most rows of the paper's Table 1).

The test split is never used for any choice.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssondo_train.probe.head import carve_validation, evaluate, fit_linear_probe, mean_ci95
from ssondo_train.probe.tasks import ProbeTask
from ssondo_train.utils.io import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

RESULTS_FORMAT_VERSION = 1

# Table 1 column order and headers of the S-SONDO paper
TABLE1_TASKS: tuple[str, ...] = ("openmic", "nsynth", "gtzan", "magna-tag-a-tune", "fsd50k", "esc50", "us8k")
TASK_HEADERS: dict[str, str] = {
    "openmic": "OpenMIC mAP",
    "nsynth": "NSynth Acc",
    "gtzan": "GTZAN Acc",
    "magna-tag-a-tune": "MTT mAP",
    "fsd50k": "FSD50K mAP",
    "esc50": "ESC-50 Acc",
    "us8k": "US8K Acc",
}
TABLE1_GROUPS: dict[str, tuple[str, ...]] = {
    "Music": ("openmic", "nsynth", "gtzan", "magna-tag-a-tune"),
    "Env.": ("fsd50k", "esc50", "us8k"),
}


def feature_matrix(
    features_by_clip: Mapping[str, np.ndarray], task: ProbeTask, allow_missing: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Stack the clips' embeddings ``(N, D)`` and return them with the kept clip indices ``(N,)``."""
    keep = [i for i, c in enumerate(task.clips) if c.clip_id in features_by_clip]
    n_missing = len(task.clips) - len(keep)
    if n_missing:
        example = next(c.clip_id for c in task.clips if c.clip_id not in features_by_clip)
        if not allow_missing:
            raise KeyError(f"{task.name}: {n_missing} clips have no embedding, e.g. {example!r}")
        log.warning("%s: %d clips without embedding skipped (e.g. %s)", task.name, n_missing, example)
    if not keep:
        raise KeyError(f"{task.name}: no clip has an embedding")
    x = np.stack(
        [np.asarray(features_by_clip[task.clips[i].clip_id], dtype=np.float32).reshape(-1) for i in keep]
    )
    return x, np.asarray(keep, dtype=np.int64)


class FitMemo:
    """Fitted probes keyed by everything a fit depends on, so one run can reuse another's identical fit.

    The stage scores a task with :func:`run_probe` and then fits the deployment head of the same task; with a
    fixed ``valid`` split both are the same fit (the solver is deterministic) and the second is a lookup.
    """

    def __init__(self) -> None:
        self._fits: dict[str, Any] = {}
        self.hits = 0

    @staticmethod
    def key(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None, *parts: Any) -> str:
        h = hashlib.sha1()
        for a in (x, y, mask):
            if a is not None:
                a = np.ascontiguousarray(a)
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(a.tobytes())
        for p in parts:
            h.update(np.ascontiguousarray(p).tobytes() if isinstance(p, np.ndarray) else repr(p).encode())
        return h.hexdigest()

    def get(self, key: str) -> Any | None:
        res = self._fits.get(key)
        self.hits += res is not None
        return res

    def put(self, key: str, result: Any) -> None:
        self._fits[key] = result


def fit_on_indices(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray | None,
    task: ProbeTask,
    tr: np.ndarray,
    va: np.ndarray,
    *,
    device: str = "cpu",
    seed: int = 0,
    memo: FitMemo | None = None,
    **fit_kwargs: Any,
):
    """Fit the probe on rows ``tr`` of ``x`` with hyper-parameters chosen on rows ``va`` (mask rows alike).

    With ``memo``, an identical earlier fit (same features, labels, rows and arguments) is returned instead.
    """
    key = None
    if memo is not None:
        key = memo.key(x, y, mask, tr, va, task.task_type, task.n_classes, sorted(fit_kwargs.items()))
        cached = memo.get(key)
        if cached is not None:
            return cached
    res = fit_linear_probe(
        x[tr],
        y[tr],
        x[va],
        y[va],
        task.task_type,
        task.n_classes,
        device=device,
        seed=seed,
        mask_train=None if mask is None else mask[tr],
        mask_val=None if mask is None else mask[va],
        **fit_kwargs,
    )
    if memo is not None and key is not None:
        memo.put(key, res)
    return res


def run_probe(
    features_by_clip: Mapping[str, np.ndarray],
    task: ProbeTask,
    seeds: Sequence[int] = (0, 1, 2),
    device: str = "cpu",
    val_fraction: float = 0.1,
    allow_missing: bool = False,
    memo: FitMemo | None = None,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Evaluate linear probes on ``task`` with the embeddings ``features_by_clip[clip_id]`` ``(D,)``.

    Args:
        features_by_clip: clip id -> embedding ``(D,)`` (e.g. mean over segments of the backbone output).
        task: the :class:`ProbeTask`.
        seeds: one run per seed (seeds change the carved validation split only).
        device: where the probe is fitted.
        val_fraction: share of the training clips carved out for validation when needed.
        allow_missing: skip clips without an embedding instead of raising.
        memo: optional :class:`FitMemo` shared with later fits on the same features.
        **fit_kwargs: passed to :func:`fit_linear_probe` (``weight_decays``, ``max_epochs``, ``solver`` ...).

    Returns:
        JSON-friendly dict: ``mean``, ``ci95`` (over seeds), ``per_seed``, ``runs`` (one per seed x fold with
        the chosen hyper-parameters), and for fold tasks ``fold_scores``/``fold_mean``/``fold_ci95``.
    """
    if not seeds:
        raise ValueError("need at least one seed")
    x, kept = feature_matrix(features_by_clip, task, allow_missing)
    y_all, mask_all = task.targets()
    y, mask = y_all[kept], (None if mask_all is None else mask_all[kept])
    split_of = [task.clips[i].split for i in kept]

    def idx(split: int | str) -> np.ndarray:
        return np.array([j for j, s in enumerate(split_of) if s == split], dtype=np.int64)

    def pick(a: np.ndarray | None, i: np.ndarray) -> np.ndarray | None:
        return None if a is None else a[i]

    def one_run(tr: np.ndarray, va: np.ndarray, te: np.ndarray, seed: int) -> dict[str, Any]:
        if len(te) == 0 or len(tr) == 0:
            raise ValueError(f"{task.name}: empty train ({len(tr)}) or test ({len(te)}) split")
        res = fit_on_indices(x, y, mask, task, tr, va, device=device, seed=seed, memo=memo, **fit_kwargs)
        score = evaluate(res.head, res.stats, x[te], y[te], task.task_type, pick(mask, te))
        return {
            "score": score,
            "n_train": len(tr),
            "n_val": len(va),
            "n_test": len(te),
            "lr": res.lr,
            "weight_decay": res.weight_decay,
            "val_score": res.val_score,
        }

    runs: list[dict[str, Any]] = []
    seed_independent = False
    if task.protocol == "folds":
        for seed in seeds:
            for fold in task.folds:
                te = idx(fold)
                pool = np.array([j for j, s in enumerate(split_of) if s != fold], dtype=np.int64)
                tr, va = carve_validation(pool, y, val_fraction, seed)
                runs.append({"seed": int(seed), "fold": int(fold), **one_run(tr, va, te, seed)})
                log.info("%s seed %d fold %s: %.4f", task.name, seed, fold, runs[-1]["score"])
    else:
        te = idx("test")
        seed_independent = task.has_split("valid") and len(idx("valid")) > 0
        cached: dict[str, Any] | None = None
        for seed in seeds:
            if seed_independent:
                cached = cached or one_run(idx("train"), idx("valid"), te, seed)
                run = dict(cached)
            else:
                tr, va = carve_validation(idx("train"), y, val_fraction, seed)
                run = one_run(tr, va, te, seed)
            runs.append({"seed": int(seed), "fold": None, **run})
            log.info("%s seed %d: %.4f", task.name, seed, run["score"])

    per_seed = [
        {"seed": int(s), "score": float(np.mean([r["score"] for r in runs if r["seed"] == s]))} for s in seeds
    ]
    scores = [p["score"] for p in per_seed]
    mean, ci = mean_ci95(scores)
    out: dict[str, Any] = {
        "format_version": RESULTS_FORMAT_VERSION,
        "task": task.name,
        "task_type": task.task_type,
        "metric": task.metric,
        "protocol": task.protocol,
        "n_clips": int(len(kept)),
        "embedding_dim": int(x.shape[1]),
        "seeds": [int(s) for s in seeds],
        "seed_independent": seed_independent,
        "mean": mean,
        "ci95": ci,
        "per_seed": per_seed,
        "runs": runs,
    }
    if task.protocol == "folds":
        fold_scores = {
            str(f): float(np.mean([r["score"] for r in runs if r["fold"] == f])) for f in task.folds
        }
        out["fold_scores"] = fold_scores
        out["fold_mean"], out["fold_ci95"] = mean_ci95(list(fold_scores.values()))
    return out


def write_results(results: Mapping[str, Any], path: str | Path) -> None:
    """Write a :func:`run_probe` result (or a dict of them) as JSON, atomically (NaN -> null)."""

    def clean(o: Any) -> Any:
        if isinstance(o, float) and math.isnan(o):
            return None
        if isinstance(o, Mapping):
            return {str(k): clean(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [clean(v) for v in o]
        return o

    atomic_write_json(path, clean(results))


# --- reporting
def retention(student_score: float, teacher_score: float) -> float:
    """Student score as a percentage of the teacher's (``100 * student / teacher``)."""
    if teacher_score == 0:
        raise ValueError("teacher score is 0: retention undefined")
    return 100.0 * student_score / teacher_score


def _ordered_tasks(results: Mapping[str, Mapping[str, Any]], tasks: Sequence[str] | None) -> list[str]:
    if tasks is not None:
        return list(tasks)
    seen: list[str] = []
    for per_task in results.values():
        seen += [t for t in per_task if t not in seen]
    return [t for t in TABLE1_TASKS if t in seen] + [t for t in seen if t not in TABLE1_TASKS]


def _average(per_task: Mapping[str, tuple[float, float]], tasks: Sequence[str]) -> float | None:
    if not tasks or any(t not in per_task for t in tasks):
        return None
    return float(np.mean([per_task[t][0] for t in tasks]))


def results_markdown(
    results: Mapping[str, Mapping[str, tuple[float, float]]],
    teacher: str | None,
    baselines: Sequence[str] = (),
    tasks: Sequence[str] | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    scale: float = 100.0,
    decimals: int = 1,
) -> str:
    """Markdown table in the layout of the paper's Table 1.

    Args:
        results: ``results[model][task] = (mean, ci95_half_width)``, scores in [0, 1] (shown x ``scale``).
        teacher: the model whose Avg. is 100 % retention (must be in ``results``); ``None`` = no teacher
            was evaluated, the Retention column then shows "–" for every row.
        baselines: models shown without retention (e.g. supervised students).
        tasks: column order (default: Table 1 order for the known tasks, then the others as first seen).
        groups: optional extra average columns, e.g. :data:`TABLE1_GROUPS` (Music / Env.).
        scale, decimals: display scaling and rounding.

    Rows keep the order of ``results``. ``Avg.`` is the plain mean of the task means and is "–" when a task is
    missing; ``Retention`` = student Avg. / teacher Avg. in percent (computed on unrounded values).
    """
    if teacher is not None and teacher not in results:
        raise KeyError(f"teacher {teacher!r} not in results ({sorted(results)})")
    cols = _ordered_tasks(results, tasks)
    groups = dict(groups or {})
    header = ["Model", *[TASK_HEADERS.get(t, t) for t in cols], *groups, "Avg.", "Retention"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    teacher_avg = _average(results[teacher], cols) if teacher is not None else None

    def fmt(v: float | None, ci: float | None = None) -> str:
        if v is None or math.isnan(v):
            return "–"
        s = f"{v * scale:.{decimals}f}"
        if ci is not None and not math.isnan(ci):
            s += f"±{ci * scale:.{decimals}f}"
        return s

    for model, per_task in results.items():
        cells = [model]
        for t in cols:
            cells.append(fmt(*per_task[t]) if t in per_task else "–")
        for members in groups.values():
            cells.append(fmt(_average(per_task, [t for t in members if t in cols] or list(members))))
        avg = _average(per_task, cols)
        cells.append(fmt(avg))
        if model == teacher or model in baselines or avg is None or not teacher_avg:
            cells.append("–" if model != teacher else "100.0%")
        else:
            cells.append(f"{retention(avg, teacher_avg):.1f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_results(
    results: Mapping[str, Mapping[str, tuple[float, float]]],
    path: str | Path,
    tasks: Sequence[str] | None = None,
    title: str | None = None,
    scale: float = 100.0,
) -> Path:
    """Grouped bar chart (one group per task, one bar per model, 95 % CI error bars) written as PNG.

    Uses matplotlib's object API with the Agg canvas, so the global backend is left alone. Atomic write.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = _ordered_tasks(results, tasks)
    models = list(results)
    width = 0.8 / max(len(models), 1)
    fig = Figure(figsize=(max(6.0, 1.4 * len(cols) + 2), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(cols))
    for m_i, model in enumerate(models):
        means = [results[model].get(t, (math.nan, math.nan))[0] * scale for t in cols]
        cis = [results[model].get(t, (math.nan, math.nan))[1] for t in cols]
        cis = [0.0 if c is None or math.isnan(c) else c * scale for c in cis]
        ax.bar(xs + (m_i - (len(models) - 1) / 2) * width, means, width, yerr=cis, capsize=2, label=model)
    ax.set_xticks(xs)
    ax.set_xticklabels([TASK_HEADERS.get(t, t) for t in cols], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (%)" if scale == 100.0 else "score")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
