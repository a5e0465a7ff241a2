"""Deterministic record generators and store builders shared by the store tests."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ssondo_train.store import StoreWriter, TeacherMeta, WindowRecord, merge_indexes

DIM = 24
LAYERS = 3
WIN_S = 2.0
AUDIO_LEN = 200  # samples per window: small, the codecs do not care about the true 32 kHz length


def clip_ids(n: int) -> list[str]:
    """Upstream-like clip ids (with dots), plus awkward characters every few clips."""
    out = []
    for i in range(n):
        base = f"yt{i:04d}_{i * 10:.3f}_{i * 10 + 10:.3f}"
        out.append(base if i % 5 else f"{base}/é %__w7")
    return out


def windows_of(clip: str) -> int:
    return 1 + zlib.crc32(clip.encode()) % 3


def record(clip: str, w: int, audio: bool, layers: bool, dim: int = DIM) -> WindowRecord:
    """The same (clip, window) always gives the same record, so reruns must give identical stores."""
    rng = np.random.default_rng(zlib.crc32(f"{clip}/{w}".encode()))
    return WindowRecord(
        clip_id=clip,
        window=w,
        start=w * WIN_S,
        end=(w + 1) * WIN_S,
        embedding=rng.standard_normal(dim).astype(np.float32) * 3.0,
        audio=(rng.uniform(-0.9, 0.9, AUDIO_LEN).astype(np.float32) if audio else None),
        layers=(rng.standard_normal((LAYERS, dim)).astype(np.float32) if layers else None),
    )


def records(
    clips: Sequence[str],
    audio: bool = False,
    layers: bool = False,
    dim: int = DIM,
    skip: frozenset[str] = frozenset(),
) -> Iterator[WindowRecord]:
    for c in clips:
        if c in skip:
            continue
        for w in range(windows_of(c)):
            yield record(c, w, audio, layers, dim)


def make_writer(
    root: Path,
    backend: str,
    dtype: str = "float16",
    audio: str | None = None,
    layers: bool = False,
    max_count: int = 1000,
    max_bytes: int = 1 << 30,
    dim: int = DIM,
) -> StoreWriter:
    return StoreWriter(
        root,
        backend,
        "shard",
        max_count=max_count,
        max_bytes=max_bytes,
        dtype=dtype,
        meta={
            "teacher": TeacherMeta(
                name="M2D", dim=dim, sample_rate=16000, checkpoint_sha256="ab" * 32, layer=12
            ),
            "source": "tests",
        },
        audio_codec=audio,
        num_layers=LAYERS if layers else None,
    )


def build_store(
    root: Path,
    backend: str,
    clips: Sequence[str],
    clips_per_shard: int = 4,
    world_size: int = 1,
    dtype: str = "float16",
    audio: str | None = None,
    layers: bool = False,
    max_count: int = 1000,
    skip: frozenset[str] = frozenset(),
) -> dict:
    for rank in reversed(range(world_size)):  # higher ranks first: order of ranks must not matter
        w = make_writer(root, backend, dtype, audio, layers, max_count)
        for plan in w.plan_shards(clips, clips_per_shard, rank, world_size):
            if not w.shard_complete(plan):
                w.write_shard(plan, records(plan.clip_ids, audio is not None, layers, skip=skip))
    return merge_indexes(root)
