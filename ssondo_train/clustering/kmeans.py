"""k-means for Balanced Data Sampling, in torch (GPU when present) or scikit-learn MiniBatchKMeans.

``metric="cosine"`` runs spherical k-means (rows and centroids L2-normalised), which matches the cosine
distillation loss; ``"euclidean"`` is upstream's raw k-means.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

METRICS = ("euclidean", "cosine")
BACKENDS = ("torch", "sklearn")


@dataclass
class KMeansResult:
    """Fitted centroids ``(K, D)`` float32, training assignments ``(N,)`` and inertia."""

    centroids: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    metric: str


def _prepare(x: np.ndarray | torch.Tensor, metric: str, device: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    if metric == "cosine":
        t = torch.nn.functional.normalize(t, dim=1)
    return t


def _nearest(x: torch.Tensor, c: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centroid, chunked over rows."""
    c_sq = (c * c).sum(1)
    idx, dist = [], []
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk]
        d = (xb * xb).sum(1, keepdim=True) - 2 * xb @ c.T + c_sq[None]
        best, arg = d.min(1)
        idx.append(arg)
        dist.append(best.clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (greedy-free variant: one candidate per step)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen, device="cpu"))
    centers = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if float(d2.sum()) > 0 else torch.full_like(d2, 1.0 / n)
        nxt = int(torch.multinomial(probs.cpu(), 1, generator=gen))
        centers.append(x[nxt])
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    return torch.stack(centers)


def fit_kmeans(
    x: np.ndarray,
    k: int = 50,
    metric: str = "euclidean",
    seed: int = 42,
    backend: str = "torch",
    max_iter: int = 100,
    tol: float = 1e-5,
    n_init: int = 3,
    device: str | None = None,
) -> KMeansResult:
    """Fit k-means on ``x`` ``(N, D)``.

    Args:
        k: number of clusters (must be <= N).
        metric: ``euclidean`` or ``cosine`` (spherical k-means).
        backend: ``torch`` (Lloyd iterations with k-means++ seeding, on ``device``; best of ``n_init``) or
            ``sklearn`` (MiniBatchKMeans, upstream's choice).

    Returns:
        A ``KMeansResult``; with ``cosine`` the centroids are unit-norm.

    Raises:
        ValueError: unknown metric or backend, ``k`` outside ``[1, N]``, or NaN/inf in ``x`` (a single one
            makes the inertia NaN and empties clusters without any error).
    """
    if metric not in METRICS:
        raise ValueError(f"cluster.metric={metric!r}; choose one of {METRICS}")
    if backend not in BACKENDS:
        raise ValueError(f"cluster.backend={backend!r}; choose one of {BACKENDS}")
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"cannot fit {k} clusters on {n} embeddings")
    bad = np.flatnonzero(~np.isfinite(np.asarray(x)).reshape(n, -1).all(axis=1))
    if bad.size:
        shown = ", ".join(str(int(i)) for i in bad[:5]) + (" ..." if bad.size > 5 else "")
        raise ValueError(f"k-means input has {bad.size} row(s) with NaN/inf values (rows {shown})")
    if backend == "sklearn":
        from sklearn.cluster import MiniBatchKMeans

        data = _prepare(x, metric, "cpu").numpy()
        km = MiniBatchKMeans(
            n_clusters=k,
            random_state=seed,
            n_init=n_init,
            max_iter=max_iter,
            batch_size=min(10_000, n),
            reassignment_ratio=0.0,
        ).fit(data)
        centroids = km.cluster_centers_.astype(np.float32)
        if metric == "cosine":
            centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        labels = assign(centroids, x, metric)
        return KMeansResult(centroids, labels, float(km.inertia_), int(km.n_iter_), metric)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    data = _prepare(x, metric, device)
    gen = torch.Generator().manual_seed(seed)
    best: KMeansResult | None = None
    for _ in range(max(1, n_init)):
        c = _kmeans_pp(data, k, gen)
        prev = float("inf")
        for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported after the loop
            labels, dist = _nearest(data, c)
            sums = torch.zeros_like(c).index_add_(0, labels, data)
            counts = torch.bincount(labels, minlength=k).to(data.dtype)
            empty = counts == 0
            new_c = sums / counts.clamp_min(1)[:, None]
            if bool(empty.any()):  # re-seed empty clusters at the worst-fitted points
                far = torch.topk(dist, int(empty.sum())).indices
                new_c[empty] = data[far]
            if metric == "cosine":
                new_c = torch.nn.functional.normalize(new_c, dim=1)
            c = new_c
            inertia = float(dist.sum())
            if prev != float("inf") and prev - inertia <= tol * prev:
                break
            prev = inertia
        labels, dist = _nearest(data, c)
        result = KMeansResult(
            c.cpu().numpy().astype(np.float32), labels.cpu().numpy(), float(dist.sum()), it, metric
        )
        if best is None or result.inertia < best.inertia:
            best = result
    assert best is not None
    return best


def assign(centroids: np.ndarray, x: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """Nearest-centroid ids ``(N,)`` int64 for ``x`` ``(N, D)``."""
    data = _prepare(x, metric, "cpu")
    labels, _ = _nearest(data, torch.as_tensor(centroids, dtype=torch.float32))
    return labels.numpy().astype(np.int64)


def cluster_metrics(
    x: np.ndarray, labels: np.ndarray, metric: str = "euclidean", sample: int = 5000, seed: int = 0
) -> dict[str, float | None]:
    """Silhouette (on a sample), Calinski-Harabasz and Davies-Bouldin; None where undefined."""
    from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

    data = _prepare(x, metric, "cpu").numpy()
    k = len(np.unique(labels))
    out: dict[str, float | None] = {"silhouette": None, "calinski_harabasz": None, "davies_bouldin": None}
    if k < 2 or k >= len(data):
        return out
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(data), size=min(sample, len(data)), replace=False)
    if len(np.unique(labels[idx])) > 1:
        out["silhouette"] = float(
            silhouette_score(data[idx], labels[idx], metric="cosine" if metric == "cosine" else "euclidean")
        )
    out["calinski_harabasz"] = float(calinski_harabasz_score(data, labels))
    out["davies_bouldin"] = float(davies_bouldin_score(data, labels))
    return out
