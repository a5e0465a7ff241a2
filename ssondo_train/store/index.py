"""Build the store's ``index.json`` from the per-shard commit markers, and verify parts against it.

The commit markers in ``_commits/`` are the partial indexes: each rank writes one per shard it completes, so
they survive a crash of any rank at any time, and merging them needs no coordination beyond "all ranks are
done" (run :func:`merge_indexes` once, e.g. on rank 0 after a barrier, or again after a resumed run).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ssondo_train.store.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    META_FILE,
    StoreCorruptError,
    StoreError,
    StoreIncompleteError,
)
from ssondo_train.store.fsutil import atomic_write_json, md5_file, read_json
from ssondo_train.store.writer import commit_path

log = logging.getLogger(__name__)


def merge_indexes(root: str | Path, allow_missing: bool = False) -> dict[str, Any]:
    """Write ``index.json`` (and the ``counts`` of ``meta.json``) from the commit markers of all shards.

    Args:
        root: store folder.
        allow_missing: index the committed shards even if some planned shards are missing (the index then
            says ``"complete": false`` and lists them); otherwise missing shards raise.

    Returns:
        The index dict: ``{"format", "version", "backend", "dtype", "dim", "plan_id", "complete",
        "missing_shards", "num_samples", "num_clips", "num_shards", "parts": [{"name", "shard", "samples",
        "bytes", "md5", "first_key", "last_key"}, ...]}`` (parts in store order).

    Raises:
        StoreIncompleteError: planned shards are not committed (and ``allow_missing`` is False).
        StoreCorruptError: a committed part file is missing or has another size than recorded.
    """
    root = Path(root)
    meta_path = root / META_FILE
    if not meta_path.exists():
        raise StoreError(f"{root} has no {META_FILE}: nothing was planned/written there")
    meta = read_json(meta_path)
    plan = meta["plan"]
    parts: list[dict[str, Any]] = []
    missing: list[int] = []
    clips = 0
    for k in range(plan["num_shards"]):
        cpath = commit_path(root, meta["shard_prefix"], k)
        if not cpath.exists():
            missing.append(k)
            continue
        commit = read_json(cpath)
        if commit["plan_id"] != plan["plan_id"]:
            raise StoreCorruptError(f"{cpath} belongs to another shard plan")
        clips += commit["clips"]
        for part in commit["parts"]:
            p = root / part["name"]
            if not p.exists():
                raise StoreCorruptError(f"part {part['name']} of committed shard {k} is missing")
            if p.stat().st_size != part["bytes"]:
                raise StoreCorruptError(
                    f"part {part['name']}: {p.stat().st_size} bytes on disk, "
                    f"{part['bytes']} recorded at commit"
                )
            parts.append(
                {
                    "name": part["name"],
                    "shard": k,
                    "samples": part["samples"],
                    "bytes": part["bytes"],
                    "md5": part["md5"],
                    "first_key": part["first_key"],
                    "last_key": part["last_key"],
                }
            )
    if missing and not allow_missing:
        shown = ", ".join(str(k) for k in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise StoreIncompleteError(
            f"{root}: {len(missing)} of {plan['num_shards']} planned shards are not "
            f"committed (shards {shown}); rerun the writer to finish them"
        )
    num_samples = sum(p["samples"] for p in parts)
    index = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "backend": meta["backend"],
        "dtype": meta["dtype"],
        "dim": meta["dim"],
        "plan_id": plan["plan_id"],
        "complete": not missing,
        "missing_shards": missing,
        "num_samples": num_samples,
        "num_clips": clips,
        "num_shards": plan["num_shards"],
        "parts": parts,
    }
    atomic_write_json(root / INDEX_FILE, index)
    meta["counts"] = {
        "windows": num_samples,
        "clips": clips,
        "clips_planned": plan["num_clips"],
        "shards": plan["num_shards"] - len(missing),
        "parts": len(parts),
        "bytes": sum(p["bytes"] for p in parts),
    }
    atomic_write_json(meta_path, meta)
    log.info("indexed %s: %d windows of %d clips in %d parts", root, num_samples, clips, len(parts))
    return index


def verify_parts(root: str | Path, index: dict[str, Any], md5: bool = True) -> None:
    """Check every part against the index: existence, size, and (``md5=True``) content hash.

    Raises:
        StoreCorruptError: naming the first bad part, with expected and actual values.
    """
    root = Path(root)
    for part in index["parts"]:
        p = root / part["name"]
        if not p.exists():
            raise StoreCorruptError(f"part {part['name']} listed in {INDEX_FILE} is missing")
        size = p.stat().st_size
        if size != part["bytes"]:
            raise StoreCorruptError(
                f"part {part['name']} is corrupt: {size} bytes, index says {part['bytes']}"
            )
        if md5:
            digest = md5_file(p)
            if digest != part["md5"]:
                raise StoreCorruptError(
                    f"part {part['name']} is corrupt: md5 {digest}, index says {part['md5']}"
                )
