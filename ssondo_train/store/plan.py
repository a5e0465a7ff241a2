"""Deterministic shard planning: shard k = clips [k*clips_per_shard, (k+1)*clips_per_shard) of an ordered
clip list.

Because a shard's content depends only on the ordered clip list, ``clips_per_shard`` and the plan's
``content`` (how the writer cuts its records, e.g. the window and hop; never on the rank count, the time of
the run or what was written before), a rerun can skip committed shards, redo the others and still produce a
store identical to an uninterrupted run, with any number of ranks. A commit of another plan (another clip
list or another windowing) never counts as done.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ShardPlan:
    """What one shard holds.

    Attributes:
        shard: global shard index k (0-based).
        num_shards: total number of shards of the plan.
        first_clip: position of ``clip_ids[0]`` in the ordered clip list.
        clip_ids: the clips of this shard, in order.
        prefix: shard file prefix; files are ``{prefix}-{shard:06d}-{part:03d}.{tar|h5}``.
        plan_id: sha256 fingerprint of (clips_per_shard, ordered clip list, content); identical for every
            rank.
        clips_per_shard, num_clips: the plan parameters (recorded in ``meta.json``).
        content: what else decides the shards' records (JSON values, e.g. ``{"window_seconds": 1.0}``), or
            None; recorded in ``meta.json``.
    """

    shard: int
    num_shards: int
    first_clip: int
    clip_ids: tuple[str, ...]
    prefix: str
    plan_id: str
    clips_per_shard: int
    num_clips: int
    content: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def name(self) -> str:
        """Shard stem, e.g. ``shard-000003`` (commit marker ``_commits/shard-000003.json``)."""
        return shard_stem(self.prefix, self.shard)


def shard_stem(prefix: str, shard: int) -> str:
    return f"{prefix}-{shard:06d}"


def part_name(prefix: str, shard: int, part: int, ext: str) -> str:
    """File name of part ``part`` of shard ``shard``: ``{prefix}-{shard:06d}-{part:03d}{ext}``."""
    return f"{shard_stem(prefix, shard)}-{part:03d}{ext}"


def plan_fingerprint(
    clip_ids: Sequence[str], clips_per_shard: int, content: Mapping[str, Any] | None = None
) -> str:
    """sha256 over ``clips_per_shard``, ``content`` (as sorted JSON; left out when None, so plans without
    content keep their fingerprint) and the ordered clip ids (NUL-separated)."""
    h = hashlib.sha256(f"clips_per_shard={clips_per_shard}\0".encode())
    if content is not None:
        h.update(f"content={json.dumps(dict(content), sort_keys=True)}\0".encode())
    for c in clip_ids:
        h.update(c.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def validate_prefix(prefix: str) -> None:
    if not prefix or not all(ch.isalnum() or ch in "_-" for ch in prefix):
        raise ValueError(f"shard_prefix must match [A-Za-z0-9_-]+, got {prefix!r}")


def plan_shards(
    clip_ids: Sequence[str],
    clips_per_shard: int,
    rank: int = 0,
    world_size: int = 1,
    prefix: str = "shard",
    content: Mapping[str, Any] | None = None,
) -> list[ShardPlan]:
    """Split an ordered clip list into shards and return those owned by ``rank``.

    Rank r of W owns shards ``k`` with ``k % W == r`` (round-robin, so ranks get equal work whatever the
    number of shards); the union over ranks is every shard exactly once.

    Args:
        clip_ids: ordered, unique clip ids (the order defines the store order).
        clips_per_shard: clips per shard (> 0); the last shard may hold fewer.
        rank, world_size: this process's rank and the number of ranks.
        prefix: shard file prefix.
        content: what else decides the records (JSON values, e.g. the window and hop); part of the plan id.

    Returns:
        The plans of this rank's shards, in increasing shard index.
    """
    if clips_per_shard <= 0:
        raise ValueError(f"clips_per_shard must be > 0, got {clips_per_shard}")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    validate_prefix(prefix)
    clip_ids = list(clip_ids)
    if len(set(clip_ids)) != len(clip_ids):
        seen: set[str] = set()
        dup = next(c for c in clip_ids if c in seen or seen.add(c))  # type: ignore[func-returns-value]
        raise ValueError(f"clip_ids must be unique; {dup!r} appears more than once")
    for c in clip_ids:
        if not isinstance(c, str) or not c:
            raise ValueError(f"clip ids must be non-empty strings, got {c!r}")
    content = None if content is None else dict(content)
    pid = plan_fingerprint(clip_ids, clips_per_shard, content)
    num_shards = (len(clip_ids) + clips_per_shard - 1) // clips_per_shard
    return [
        ShardPlan(
            shard=k,
            num_shards=num_shards,
            first_clip=k * clips_per_shard,
            clip_ids=tuple(clip_ids[k * clips_per_shard : (k + 1) * clips_per_shard]),
            prefix=prefix,
            plan_id=pid,
            clips_per_shard=clips_per_shard,
            num_clips=len(clip_ids),
            content=content,
        )
        for k in range(rank, num_shards, world_size)
    ]
