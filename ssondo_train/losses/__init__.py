"""Distillation losses (cosine, MSE, L1, KL, CLAP, contrastive and cluster-aware variants) and the label loss.

Build one by name with :func:`build_loss`; every loss is called as
``loss(student (B, D), teacher (B, D), clusters=None, mix=None)``.
"""

from ssondo_train.losses.base import DistillLoss, MixInfo, PairedBatchLoss, PerSampleLoss
from ssondo_train.losses.contrastive import (
    ClapLoss,
    ClusterAwareLoss,
    ContrastiveLoss,
    HybridLoss,
    NegClustersLoss,
    cross_cluster_loss,
)
from ssondo_train.losses.label import CombinedLoss, CombinedLossOutput, LabelLoss
from ssondo_train.losses.pointwise import CosineLoss, KLLoss, L1Loss, MSELoss
from ssondo_train.losses.registry import DEFAULT_LOSS, LOSSES, build_loss, loss_params

__all__ = [
    "DEFAULT_LOSS",
    "LOSSES",
    "ClapLoss",
    "ClusterAwareLoss",
    "CombinedLoss",
    "CombinedLossOutput",
    "ContrastiveLoss",
    "CosineLoss",
    "DistillLoss",
    "HybridLoss",
    "KLLoss",
    "L1Loss",
    "LabelLoss",
    "MSELoss",
    "MixInfo",
    "NegClustersLoss",
    "PairedBatchLoss",
    "PerSampleLoss",
    "build_loss",
    "cross_cluster_loss",
    "loss_params",
]
