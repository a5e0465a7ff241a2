"""stage=cluster: k-means over the stored teacher embeddings, the data behind Balanced Data Sampling.

Fitted on the training split only (held-out clips are assigned afterwards), keyed by clip id and window,
never by path. Writes ``assignments.csv`` (clip_id, window, cluster, split), ``centroids.npy``,
``metrics.json`` and a PNG of the cluster-size distribution into ``<run>/cluster/<variant>/``: clusterings
with another ``cluster.k`` or metric are variants of their own (``default``, ``cluster.k=30``, ...), and each
records the store it was computed on.
"""

from __future__ import annotations

import logging
from typing import Any

from ssondo_train.runs.layout import (
    ASSIGNMENTS_FILE,
    CENTROIDS_FILE,
    CLUSTER_METRICS_FILE,
    CLUSTER_SIZES_PNG,
)
from ssondo_train.stages.base import Stage, StageContext, StageError
from ssondo_train.store.format import StoreError

log = logging.getLogger(__name__)


def _plot_sizes(sizes, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    order = sorted(range(len(sizes)), key=lambda k: -sizes[k])
    ax.bar(range(len(sizes)), [sizes[k] for k in order], color="#4477aa")
    ax.set_xlabel("cluster (sorted by size)")
    ax.set_ylabel("training windows")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(ctx: StageContext) -> dict[str, Any]:
    import numpy as np

    from ssondo_train.clustering import assign, cluster_metrics, fit_kmeans
    from ssondo_train.utils.io import atomic_path, atomic_write_json

    cfg = ctx.cfg.cluster
    try:
        store = ctx.store().open()
        keys, x = store.read_all_embeddings()
        # One NaN would give NaN inertia and empty clusters, silently: refuse before k-means runs.
        store.check_finite(x)
    except StoreError as err:  # a damaged store: refused like a missing input, leaving no folder behind
        raise StageError(str(err)) from None
    splits = ctx.layout.splits()
    split = np.array([splits.get(cid, "train") for cid, _ in keys])
    train = split == "train"
    if int(train.sum()) < int(cfg.k):
        raise StageError(f"cluster.k={cfg.k} but only {int(train.sum())} training windows are stored")
    log.info(
        "k-means: K=%d, %s, on %d training windows of %d dims (%d held out)",
        cfg.k,
        cfg.metric,
        int(train.sum()),
        x.shape[1],
        int((~train).sum()),
    )
    result = fit_kmeans(
        x[train],
        k=int(cfg.k),
        metric=cfg.metric,
        seed=int(cfg.seed),
        backend=cfg.backend,
        max_iter=int(cfg.max_iter),
        n_init=int(cfg.n_init),
    )
    labels = assign(result.centroids, x, cfg.metric)
    sizes = np.bincount(labels[train], minlength=int(cfg.k))
    metrics = cluster_metrics(
        x[train], labels[train], cfg.metric, sample=int(cfg.metric_sample), seed=int(cfg.seed)
    )
    out = ctx.out_dir
    with atomic_path(out / CENTROIDS_FILE, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, result.centroids)
    lines = ["clip_id,window,cluster,split"]
    lines += [f"{cid},{w},{int(c)},{s}" for (cid, w), c, s in zip(keys, labels, split, strict=False)]
    with atomic_path(out / ASSIGNMENTS_FILE) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    hist = {
        "min": int(sizes.min()),
        "max": int(sizes.max()),
        "median": float(np.median(sizes)),
        "empty": int((sizes == 0).sum()),
        "sizes": sizes.tolist(),
    }
    figures = {
        "k": int(cfg.k),
        "metric": cfg.metric,
        "backend": cfg.backend,
        "train_windows": int(train.sum()),
        "assigned_windows": len(keys),
        "inertia": result.inertia,
        "iterations": result.n_iter,
        **metrics,
        "cluster_sizes": hist,
    }
    atomic_write_json(out / CLUSTER_METRICS_FILE, figures)
    _plot_sizes(
        sizes.tolist(),
        out / CLUSTER_SIZES_PNG,
        f"{cfg.k} clusters of {store.meta['teacher']['name']} embeddings ({cfg.metric})",
    )
    figures["summary"] = (
        f"cluster: K={cfg.k} ({cfg.metric}) on {int(train.sum())} training windows; sizes "
        f"{hist['min']}..{hist['max']} (median {hist['median']:.0f}); silhouette "
        f"{metrics['silhouette'] if metrics['silhouette'] is None else round(metrics['silhouette'], 3)}"
    )
    return figures


def inputs(ctx: StageContext) -> dict[str, str]:
    return {"store": ctx.store().digest}


STAGE = Stage(
    name="cluster",
    run=run,
    description="k-means over the stored teacher embeddings (train split) for Balanced Data Sampling",
    inputs=inputs,
    redo_on_new_inputs=True,
    address=lambda ctx: ctx.cluster_variant(),
)
