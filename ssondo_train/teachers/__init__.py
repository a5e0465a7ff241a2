"""Frozen teachers: M2D, MATPAC++ (ViT-Base, 3840-d) and the Whisper tiny.en encoder.

Adding a teacher = one module with a :class:`Teacher` subclass and a builder, plus one entry in ``TEACHERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ssondo_train.teachers.base import Teacher, slice_windows
from ssondo_train.teachers.checkpoint import CheckpointError, CheckpointFormatError, CheckpointKeyError
from ssondo_train.teachers.m2d import M2DTeacher, build_m2d, load_m2d
from ssondo_train.teachers.matpac import MATPACTeacher, build_matpac, load_matpac
from ssondo_train.teachers.vit import ViTConfig
from ssondo_train.teachers.whisper import WhisperTeacher, build_whisper_tiny, load_whisper

__all__ = [
    "TEACHERS",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointKeyError",
    "M2DTeacher",
    "MATPACTeacher",
    "Teacher",
    "ViTConfig",
    "WhisperTeacher",
    "build_teacher",
    "load_m2d",
    "load_matpac",
    "load_whisper",
    "slice_windows",
]

TEACHERS: dict[str, Callable[..., Teacher]] = {
    "matpac": build_matpac,
    "m2d": build_m2d,
    "whisper_tiny": build_whisper_tiny,
}


def build_teacher(name: str, **kwargs: Any) -> Teacher:
    """Build the registered teacher ``name`` with its builder's keyword arguments.

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered names).
    """
    try:
        builder = TEACHERS[name]
    except KeyError:
        raise ValueError(f"unknown teacher {name!r}; choose one of {sorted(TEACHERS)}") from None
    return builder(**kwargs)
