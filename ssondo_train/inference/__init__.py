"""Inference API: ``get_ssondo``, ``list_models``, ``list_heads`` and :class:`SsondoModel`.

Imports only torch, torchaudio, safetensors and the student modules (no Lightning, Hydra or wandb).
"""

from ssondo_train.inference.api import get_ssondo, load_student
from ssondo_train.inference.model import SsondoModel, build_head
from ssondo_train.inference.registry import (
    HEADS,
    HF_REPO_ID,
    MODELS,
    HubDownloadError,
    list_heads,
    list_models,
)

__all__ = [
    "HEADS",
    "HF_REPO_ID",
    "MODELS",
    "HubDownloadError",
    "SsondoModel",
    "build_head",
    "get_ssondo",
    "list_heads",
    "list_models",
    "load_student",
]
