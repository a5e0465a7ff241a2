"""Subprocess for test_kill.py: writes (or resumes) a store, printing ``done <shard>`` after each commit."""

from __future__ import annotations

import sys
from pathlib import Path

from ssondo_train.store import merge_indexes
from tests.store.helpers import clip_ids, make_writer, records

N_CLIPS = 240
CLIPS_PER_SHARD = 4
DIM = 512


def main(root: str, backend: str) -> None:
    clips = clip_ids(N_CLIPS)
    w = make_writer(Path(root), backend, dtype="float16", audio="flac", max_count=5, dim=DIM)
    for plan in w.plan_shards(clips, CLIPS_PER_SHARD):
        if w.shard_complete(plan):
            continue
        w.write_shard(plan, records(plan.clip_ids, audio=True, dim=DIM))
        print(f"done {plan.shard}", flush=True)
    merge_indexes(root)
    print("finished", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
