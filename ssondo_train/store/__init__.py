"""Teacher-embedding stores: sharded, versioned, resumable (wds tar or HDF5). Layout: ``store/FORMAT.md``.

Write (one call per rank)::

    w = StoreWriter(root, backend="wds", shard_prefix="shard", dtype="float16",
                    meta={"teacher": TeacherMeta(name="M2D", dim=3840, sample_rate=16000, ...)})
    for plan in w.plan_shards(clip_ids, clips_per_shard=1000, rank=r, world_size=W):
        if not w.shard_complete(plan):
            w.write_shard(plan, records_for(plan.clip_ids))   # WindowRecord, in plan order
    # after all ranks: merge_indexes(root)

Read::

    store = open_store(root)
    keys, X = store.read_all_embeddings()          # (N, D) float32
    ds = store.dataset(fields=("embedding",))      # map-style, random access by window index
"""

from ssondo_train.store.failures import FailureLog, FailureRecord, read_failures
from ssondo_train.store.format import (
    AUDIO_CODECS,
    BACKENDS,
    FORMAT_NAME,
    FORMAT_VERSION,
    StoreCorruptError,
    StoreError,
    StoreIncompleteError,
    StoreMismatchError,
    TeacherMeta,
    WindowRecord,
    decode_audio,
    encode_audio,
    escape_clip_id,
    parse_sample_key,
    sample_key,
    unescape_clip_id,
)
from ssondo_train.store.index import merge_indexes, verify_parts
from ssondo_train.store.plan import ShardPlan, plan_shards
from ssondo_train.store.reader import EmbeddingStore, StoreStats, open_store
from ssondo_train.store.writer import StoreWriter

__all__ = [
    "AUDIO_CODECS",
    "BACKENDS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "EmbeddingStore",
    "FailureLog",
    "FailureRecord",
    "ShardPlan",
    "StoreCorruptError",
    "StoreError",
    "StoreIncompleteError",
    "StoreMismatchError",
    "StoreStats",
    "StoreWriter",
    "TeacherMeta",
    "WindowRecord",
    "decode_audio",
    "encode_audio",
    "escape_clip_id",
    "merge_indexes",
    "open_store",
    "parse_sample_key",
    "plan_shards",
    "read_failures",
    "sample_key",
    "unescape_clip_id",
    "verify_parts",
]
