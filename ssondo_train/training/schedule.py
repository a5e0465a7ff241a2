"""Learning-rate schedule of EfficientAT's AudioSet recipe (exponential warm-up, linear ramp-down).

The factor is a function of the epoch, where one epoch is a fixed number of optimizer updates (the sampler
draws ``num_samples`` windows per epoch with replacement), so the schedule means the same thing for every
corpus size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupRampdown:
    """lr factor(epoch) = exp-warm-up(epoch) · linear-ramp-down(epoch).

    Attributes:
        warm_up_len: epochs of exponential warm-up: exp(-5 (1 - max(e, 0.5)/warm_up_len)^2).
        ramp_down_start: epoch where the linear decay begins.
        ramp_down_len: epochs of linear decay down to ``last_lr_value``.
        last_lr_value: final factor.
    """

    warm_up_len: float = 8
    ramp_down_start: float = 80
    ramp_down_len: float = 95
    last_lr_value: float = 0.01

    def __post_init__(self) -> None:
        if self.warm_up_len < 0 or self.ramp_down_len <= 0 or not 0 <= self.last_lr_value <= 1:
            raise ValueError(f"invalid schedule {self}")

    def warmup(self, epoch: float) -> float:
        if self.warm_up_len == 0 or epoch >= self.warm_up_len:
            return 1.0
        phase = 1.0 - max(epoch, 0.5) / self.warm_up_len
        return float(math.exp(-5.0 * phase * phase))

    def rampdown(self, epoch: float) -> float:
        if epoch <= self.ramp_down_start:
            return 1.0
        if epoch >= self.ramp_down_start + self.ramp_down_len:
            return self.last_lr_value
        left = (self.ramp_down_len - (epoch - self.ramp_down_start)) / self.ramp_down_len
        return self.last_lr_value + (1.0 - self.last_lr_value) * left

    def __call__(self, epoch: float) -> float:
        return self.warmup(epoch) * self.rampdown(epoch)
