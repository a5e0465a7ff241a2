"""Runs and their variants: the folder layout (:mod:`.layout`) and what names a variant (:mod:`.variants`).

``python -m ssondo_train.runs list <run folder>`` lists a run's variants; ``migrate`` converts a run folder
written by ssondo-train 0.1.
"""

from ssondo_train.runs.layout import DEFAULT_VARIANT, LayoutError, RunLayout, StoreInfo
from ssondo_train.runs.variants import derive_name, identity, identity_hash, needs_clusters

__all__ = [
    "DEFAULT_VARIANT",
    "LayoutError",
    "RunLayout",
    "StoreInfo",
    "derive_name",
    "identity",
    "identity_hash",
    "needs_clusters",
]
