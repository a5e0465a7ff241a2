"""Train / validation split of a distillation corpus, stable per clip id.

A clip keeps the split its manifest gives it (``valid``/``val``/``eval``/``test`` count as held out). Clips
without one are held out when a hash of (seed, clip id) falls below ``valid_fraction``, so adding clips never
moves existing ones between splits.
"""

from __future__ import annotations

import hashlib

HELD_OUT_SPLITS = frozenset({"valid", "val", "validation", "eval", "test"})


def hashed_fraction(clip_id: str, seed: int) -> float:
    digest = hashlib.sha1(f"{seed}:{clip_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(clip_id: str, manifest_split: str, valid_fraction: float, seed: int) -> str:
    """``"train"`` or ``"valid"`` for one clip."""
    if manifest_split:
        return "valid" if manifest_split.lower() in HELD_OUT_SPLITS else "train"
    return "valid" if hashed_fraction(clip_id, seed) < valid_fraction else "train"
