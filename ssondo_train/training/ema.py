"""Exponential moving average (EMA) of a network's weights, for the student of a distillation run.

The average is a second copy of the network, never trained directly: after every optimiser update,
``average <- d * average + (1 - d) * trained`` for each floating-point parameter and buffer (BatchNorm running
statistics included); integer buffers (``num_batches_tracked``) are copied. The decay ramps up as
``min(decay, (1 + t) / (10 + t))`` over the first updates, so the average forgets the initial weights.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used after ``updates`` optimiser updates: ``min(decay, (1 + t) / (10 + t))``."""
    if not 0.0 < decay < 1.0:
        raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
    t = max(0, int(updates))
    return min(float(decay), (1.0 + t) / (10.0 + t))


@torch.no_grad()
def ema_update(average: nn.Module, trained: nn.Module, decay: float) -> None:
    """One EMA step of ``average`` towards ``trained`` (same architecture, same state-dict names)."""
    avg_state = dict(average.named_parameters())
    avg_state.update(average.named_buffers())
    new_state = dict(trained.named_parameters())
    new_state.update(trained.named_buffers())
    if avg_state.keys() != new_state.keys():
        missing = sorted(avg_state.keys() ^ new_state.keys())[:3]
        raise ValueError(f"EMA copy and trained network differ in their tensors, e.g. {missing}")
    for name, avg in avg_state.items():
        new = new_state[name]
        if avg.dtype.is_floating_point:
            avg.lerp_(new.detach().to(avg.dtype), 1.0 - decay)
        else:
            avg.copy_(new)
