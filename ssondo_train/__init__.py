"""ssondo-train: training framework for S-SONDO audio-embedding distillation."""

from typing import Any

from ssondo_train.version import __version__

__all__ = ["__version__", "get_ssondo", "list_heads", "list_models"]

_LAZY = frozenset({"get_ssondo", "list_heads", "list_models"})


def __getattr__(name: str) -> Any:
    # The inference API is imported on first use so that `import ssondo_train` stays light
    # (no torch import here, and never Lightning / Hydra / wandb).
    if name in _LAZY:
        from ssondo_train import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'ssondo_train' has no attribute {name!r}")
