"""Batch-contrastive distillation losses on the logits ``L = ŝ t̂ᵀ / T`` (ŝ, t̂ L2-normalised rows).

Differences from upstream (UPSTREAM.md §4.2, §9 item 17), all deliberate:

* Masked logits are *excluded* from the sums. Upstream multiplied the logits by a 0/1 mask before ``exp``,
  so every masked entry still added ``e^0 = 1`` to the numerator and denominator.
* Rows that have no positive (or no negative) are left out of the mean instead of producing ``inf``/NaN;
  a batch with no valid row gives 0 (attached to the graph, so ``backward`` still works).
* The temperature is a parameter of the loss, validated ``> 0`` at construction.

Mixup for these losses follows i-Mix, see :class:`~ssondo_train.losses.base.PairedBatchLoss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ssondo_train.losses.base import (
    DistillLoss,
    MixInfo,
    PairedBatchLoss,
    check_temperature,
    masked_logsumexp,
    safe_ratio,
)
from ssondo_train.losses.pointwise import CosineLoss

DEFAULT_CONTRASTIVE_TEMPERATURE = 0.1


def similarity_logits(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """(B, D), (B, D) -> (B, B) logits ``L_ij = cos(s_i, t_j) / T``."""
    return F.normalize(student, dim=-1) @ F.normalize(teacher, dim=-1).T / temperature


class _TemperatureLoss(PairedBatchLoss):
    def __init__(self, temperature: float = DEFAULT_CONTRASTIVE_TEMPERATURE) -> None:
        super().__init__()
        self.temperature = check_temperature(self.name, temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class ClapLoss(_TemperatureLoss):
    """Symmetric InfoNCE (CLAP/CLIP): ``0.5 · (CE(L, arange B) + CE(Lᵀ, arange B))``.

    Args:
        temperature: logit temperature T > 0.
    """

    name = "clap"

    def pair_losses(self, student: Tensor, teacher: Tensor, clusters: Tensor | None) -> tuple[Tensor, Tensor]:
        logits = similarity_logits(student, teacher, self.temperature)
        st = -torch.diagonal(F.log_softmax(logits, dim=1))
        ts = -torch.diagonal(F.log_softmax(logits, dim=0))
        return 0.5 * (st + ts), torch.ones_like(st, dtype=torch.bool)


class ContrastiveLoss(_TemperatureLoss):
    """Student-anchored contrastive loss, positive on the diagonal and excluded from the normaliser.

    ``loss = -mean_i [L_ii - logsumexp_{j≠i} L_ij]`` (needs B ≥ 2; a single-sample batch gives 0).

    Args:
        temperature: logit temperature T > 0.
    """

    name = "contrastive"

    def pair_losses(self, student: Tensor, teacher: Tensor, clusters: Tensor | None) -> tuple[Tensor, Tensor]:
        logits = similarity_logits(student, teacher, self.temperature)
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        lse_neg, has_neg = masked_logsumexp(logits, ~eye)
        return lse_neg - torch.diagonal(logits), has_neg


class NegClustersLoss(_TemperatureLoss):
    """InfoNCE whose negatives are only the samples of *other* clusters.

    ``loss_i = -log(e^{L_ii} / (e^{L_ii} + Σ_{j: c_j ≠ c_i} e^{L_ij}))``, mean over rows that have at
    least one other-cluster sample. Same-cluster samples are left out entirely (upstream counted each as
    ``e^0 = 1``).

    Args:
        temperature: logit temperature T > 0.
    """

    name = "neg_clusters"
    needs_clusters = True

    def pair_losses(self, student: Tensor, teacher: Tensor, clusters: Tensor | None) -> tuple[Tensor, Tensor]:
        assert clusters is not None
        logits = similarity_logits(student, teacher, self.temperature)
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        other = clusters[:, None] != clusters[None, :]
        lse, _ = masked_logsumexp(logits, other | eye)
        return lse - torch.diagonal(logits), other.any(dim=1)


def _cluster_aware_rows(logits: Tensor, positive: Tensor, negative: Tensor) -> tuple[Tensor, Tensor]:
    lse_pos, has_pos = masked_logsumexp(logits, positive)
    lse_all, _ = masked_logsumexp(logits, positive | negative)
    return lse_all - lse_pos, has_pos & negative.any(dim=1)


class ClusterAwareLoss(_TemperatureLoss):
    """Supervised-contrastive loss with teacher clusters as classes, symmetric in student/teacher.

    For row i: positives P_i = {j ≠ i : c_j = c_i}, negatives N_i = {j : c_j ≠ c_i}; the true pair (j = i) is
    neither (as upstream). ``ℓ_i = -log(Σ_{P_i} e^{L_ij} / Σ_{P_i ∪ N_i} e^{L_ij})`` computed on L (student
    rows) and Lᵀ (teacher rows); the pair loss is their average, and rows with an empty P_i or N_i (a
    singleton cluster, or a one-cluster batch) are left out of the mean.

    Args:
        temperature: logit temperature T > 0.
    """

    name = "cluster_aware"
    needs_clusters = True

    def pair_losses(self, student: Tensor, teacher: Tensor, clusters: Tensor | None) -> tuple[Tensor, Tensor]:
        assert clusters is not None
        logits = similarity_logits(student, teacher, self.temperature)
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        same = clusters[:, None] == clusters[None, :]
        positive, negative = same & ~eye, ~same  # both symmetric, so they serve the Lᵀ rows too
        st, valid = _cluster_aware_rows(logits, positive, negative)
        ts, _ = _cluster_aware_rows(logits.T, positive, negative)
        return 0.5 * (st + ts), valid


def cross_cluster_loss(
    student: Tensor, teacher: Tensor, clusters: Tensor, mix: MixInfo | None = None
) -> Tensor:
    """``-mean_k cos(centroid_k(ŝ), centroid_k(t̂))`` over the clusters present in the batch.

    With mixup each student s_i belongs to cluster c_i with weight lam_i (target t_i) and to c_perm(i) with
    weight 1 - lam_i (target t_perm(i)); centroids are the correspondingly weighted sums (re-normalised by the
    cosine, so the weights' scale does not matter) and clusters with zero total weight are skipped.

    Args:
        student: (B, D); teacher: (B, D); clusters: (B,) long; mix: optional MixInfo.

    Returns:
        scalar in [-1, 1].
    """
    _, compact = torch.unique(clusters, return_inverse=True)
    n_clusters = int(compact.max()) + 1
    s_hat = F.normalize(student, dim=-1)
    t_hat = F.normalize(teacher, dim=-1)
    own = F.one_hot(compact, n_clusters).to(student.dtype)  # (B, K)
    if mix is None:
        s_cent = own.T @ s_hat
        t_cent = own.T @ t_hat
        mass = own.sum(dim=0)
    else:
        own = own * mix.lam[:, None]
        partner = F.one_hot(compact[mix.perm], n_clusters).to(student.dtype) * (1.0 - mix.lam[:, None])
        s_cent = (own + partner).T @ s_hat
        t_cent = own.T @ t_hat + partner.T @ t_hat[mix.perm]
        mass = (own + partner).sum(dim=0)
    cos = (F.normalize(s_cent, dim=-1) * F.normalize(t_cent, dim=-1)).sum(dim=-1)
    present = (mass > 0).to(student.dtype)
    return -safe_ratio((cos * present).sum(), present.sum())


def _check_weight(key: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0.0:
        raise ValueError(f"loss 'hybrid': {key} must be a finite number >= 0, got {value!r}")
    return v


class HybridLoss(DistillLoss):
    """``α · cosine + β · cluster_aware + γ · cross_cluster``.

    Args:
        alignment_weight: α, weight of the per-sample cosine loss.
        contrastive_weight: β, weight of :class:`ClusterAwareLoss`.
        cross_cluster_weight: γ, weight of :func:`cross_cluster_loss`.
        temperature: temperature of the cluster-aware term, > 0.
    """

    name = "hybrid"
    needs_clusters = True

    def __init__(
        self,
        alignment_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        cross_cluster_weight: float = 1.0,
        temperature: float = DEFAULT_CONTRASTIVE_TEMPERATURE,
    ) -> None:
        super().__init__()
        self.alignment_weight = _check_weight("alignment_weight", alignment_weight)
        self.contrastive_weight = _check_weight("contrastive_weight", contrastive_weight)
        self.cross_cluster_weight = _check_weight("cross_cluster_weight", cross_cluster_weight)
        if self.alignment_weight + self.contrastive_weight + self.cross_cluster_weight == 0.0:
            raise ValueError("loss 'hybrid': at least one of the three weights must be > 0")
        self.cosine = CosineLoss()
        self.cluster_aware = ClusterAwareLoss(temperature)

    def compute(
        self, student: Tensor, teacher: Tensor, clusters: Tensor | None, mix: MixInfo | None
    ) -> Tensor:
        assert clusters is not None
        total = student.new_zeros(())
        if self.alignment_weight > 0.0:
            total = total + self.alignment_weight * self.cosine.compute(student, teacher, clusters, mix)
        if self.contrastive_weight > 0.0:
            total = total + self.contrastive_weight * self.cluster_aware.compute(
                student, teacher, clusters, mix
            )
        if self.cross_cluster_weight > 0.0:
            total = total + self.cross_cluster_weight * cross_cluster_loss(student, teacher, clusters, mix)
        return total

    def extra_repr(self) -> str:
        return (
            f"alignment_weight={self.alignment_weight}, contrastive_weight={self.contrastive_weight}, "
            f"cross_cluster_weight={self.cross_cluster_weight}"
        )
