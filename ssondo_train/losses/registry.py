"""Name → class registry of the distillation losses, used by the ``loss`` config group."""

from __future__ import annotations

import inspect
from typing import Any

from ssondo_train.losses.base import DistillLoss
from ssondo_train.losses.contrastive import (
    ClapLoss,
    ClusterAwareLoss,
    ContrastiveLoss,
    HybridLoss,
    NegClustersLoss,
)
from ssondo_train.losses.pointwise import CosineLoss, KLLoss, L1Loss, MSELoss

LOSSES: dict[str, type[DistillLoss]] = {
    cls.name: cls
    for cls in (
        CosineLoss,
        MSELoss,
        L1Loss,
        KLLoss,
        ClapLoss,
        ContrastiveLoss,
        ClusterAwareLoss,
        NegClustersLoss,
        HybridLoss,
    )
}

DEFAULT_LOSS = "cosine"


def loss_params(name: str) -> dict[str, Any]:
    """Parameters accepted by loss ``name`` with their defaults (empty for parameter-free losses)."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    # nn.Module's own ``__init__(*args, **kwargs)`` shows through for parameter-free losses: not parameters.
    return {k: p.default for k, p in params.items() if k != "self" and p.kind in keyword_kinds}


def build_loss(name: str = DEFAULT_LOSS, **params: Any) -> DistillLoss:
    """Instantiate a distillation loss by name.

    Args:
        name: one of ``LOSSES`` (``cosine`` is the paper's main loss).
        **params: constructor parameters of that loss (e.g. ``temperature`` for ``kl``/``clap``/...).

    Raises:
        ValueError: unknown name, unknown parameter, or an invalid value (e.g. temperature <= 0).
    """
    cls = _lookup(name)
    allowed = loss_params(name)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"loss {name!r} got unknown parameter(s) {unknown}; allowed: {sorted(allowed) or 'none'}"
        )
    return cls(**params)


def _lookup(name: str) -> type[DistillLoss]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; allowed: {sorted(LOSSES)}") from None
