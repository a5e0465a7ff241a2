"""Sampling: item weights (BDS, uniform, class-balanced), the epoch sampler, and batch augmentations."""

from ssondo_train.sampling.augment import mixup, spec_augment
from ssondo_train.sampling.sampler import EpochSampler, draw_indices
from ssondo_train.sampling.weights import (
    class_balanced_weights,
    cluster_balanced_weights,
    label_matrix_from_indices,
    uniform_weights,
)

__all__ = [
    "EpochSampler",
    "class_balanced_weights",
    "cluster_balanced_weights",
    "draw_indices",
    "label_matrix_from_indices",
    "mixup",
    "spec_augment",
    "uniform_weights",
]
