"""ssondo-train: training framework for S-SONDO audio-embedding distillation."""

from ssondo_train.version import __version__

__all__ = ["__version__"]
