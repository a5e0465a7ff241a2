"""BatchNorm running-statistics recalibration.

EfficientAT-style students use BN momentum 0.01: after a short run the running statistics still mostly
reflect the initial values, so eval-mode outputs are wrong even when the weights are good. Recomputing the
statistics over a few hundred training windows (cumulative average, no gradients) fixes that. Training itself
uses batch statistics, so recalibrating before validation does not change the optimisation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    forward: Callable[[torch.Tensor], object] | None = None,
    max_items: int = 512,
) -> int:
    """Recompute every BatchNorm's running mean/var as the plain average over ``batches``.

    Args:
        model: the network; its train/eval mode is restored afterwards.
        batches: model inputs (already on the model's device).
        forward: how to call the model on one batch (default ``model(batch)``).
        max_items: stop after this many examples.

    Returns:
        The number of examples seen (0 means nothing changed).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = {
        m: (m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in layers
    }
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: equal weight per batch
    model.train()
    seen = 0
    try:
        for batch in batches:
            (forward or model)(batch)
            seen += int(batch.shape[0])
            if seen >= max_items:
                break
    finally:
        for m, (momentum, mean, var, count) in saved.items():
            m.momentum = momentum
            if seen == 0:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        model.train(was_training)
    log.debug("recalibrated %d BatchNorm layers on %d examples", len(layers), seen)
    return seen
