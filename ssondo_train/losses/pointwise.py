"""Per-sample distillation losses: cosine (paper main), MSE, L1 and temperature-scaled KL."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ssondo_train.losses.base import PerSampleLoss, check_temperature


class CosineLoss(PerSampleLoss):
    """Per-sample ``1 - cos(s_i, t_i)``, batch mean (the S-SONDO paper's main loss)."""

    name = "cosine"

    def per_sample(self, student: Tensor, teacher: Tensor) -> Tensor:
        return 1.0 - (F.normalize(student, dim=-1) * F.normalize(teacher, dim=-1)).sum(dim=-1)


class MSELoss(PerSampleLoss):
    """Squared error on the raw (un-normalised) vectors, mean over B·D."""

    name = "mse"

    def per_sample(self, student: Tensor, teacher: Tensor) -> Tensor:
        return (student - teacher).pow(2).mean(dim=-1)


class L1Loss(PerSampleLoss):
    """Absolute error on the raw vectors, mean over B·D."""

    name = "l1"

    def per_sample(self, student: Tensor, teacher: Tensor) -> Tensor:
        return (student - teacher).abs().mean(dim=-1)


class KLLoss(PerSampleLoss):
    """``T² · KL(softmax(t/T) || softmax(s/T))`` summed over D, mean over the batch (``batchmean``).

    Upstream averaged over B·D, which shrinks the loss by D (3840); batchmean is the KL divergence proper.

    Args:
        temperature: softening temperature T > 0.
    """

    name = "kl"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_temperature(self.name, temperature)

    def per_sample(self, student: Tensor, teacher: Tensor) -> Tensor:
        t = self.temperature
        log_p_teacher = F.log_softmax(teacher / t, dim=-1)
        log_p_student = F.log_softmax(student / t, dim=-1)
        return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=-1) * (t * t)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
