"""Build the store's ``index.json`` from the per-shard commit markers, and verify parts against it.

The commit markers in ``_commits/`` are the partial indexes: each rank writes one per shard it completes, so
they survive a crash of any rank at any time, and merging them needs no coordination beyond "all ranks are
done" (run :func:`merge_indexes` once, e.g. on rank 0 after a barrier, or again after a resumed run).

Verification reads every part once per open with ``md5``; with a *record* (``.cache/verified.json``, see
:func:`verify_parts`) a part is hashed once and again only when its size, mtime or inode change.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from ssondo_train.store.format import (
    COMMITS_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    META_FILE,
    StoreCorruptError,
    StoreError,
    StoreIncompleteError,
)
from ssondo_train.store.fsutil import atomic_write_json, md5_file
from ssondo_train.store.writer import commit_path

log = logging.getLogger(__name__)

VERIFIED_FILE = "verified.json"  # the verification record, in the store's cache folder (``.cache/``)
VERIFIED_FORMAT = "ssondo-store-verified"
# A part modified this recently before it was hashed is not recorded: a write later in the same tick of a
# coarse file-system clock would leave its mtime unchanged (the "racy git" problem); it is hashed next time.
_RACY_NS = 2_000_000_000
# How a damaged shard is repaired: the precompute stage rewrites every shard that has a missing part.
_REWRITE_HINT = "delete it and rerun stage=precompute force=true (shards with a missing part are rewritten)"


def read_store_json(path: str | Path, data: bytes | None = None) -> dict[str, Any]:
    """Read one of the store's JSON files (``meta.json``, ``index.json``, a commit marker).

    Args:
        path: the file.
        data: its bytes when the caller already read them (parsed instead of reading the file again).

    Returns:
        The parsed JSON object.

    Raises:
        StoreCorruptError: the file is not a valid JSON object (truncated, overwritten), naming the file and
            how to rebuild it. OSError: it cannot be read.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_bytes() if data is None else data)
        if not isinstance(value, dict):
            raise ValueError(f"a JSON {type(value).__name__}, not an object")
        return value
    except ValueError as err:  # JSONDecodeError, bytes that are not UTF-8, not an object
        if path.name == INDEX_FILE:
            hint = (
                'rebuild it from the commit markers in _commits/ with python -c "from ssondo_train.store '
                f"import merge_indexes; merge_indexes('{path.parent}')\" "
                "(or rerun stage=precompute force=true)"
            )
        elif path.name == META_FILE:
            hint = (
                "delete it and rerun stage=precompute force=true with the run's settings (it is rewritten; "
                "complete shards are kept)"
            )
        elif path.parent.name == COMMITS_DIR:
            hint = "delete it and rerun stage=precompute force=true (its shard is rewritten)"
        else:
            hint = "delete it and rebuild the store with stage=precompute force=true"
        raise StoreCorruptError(f"{path} is not valid JSON (truncated?): {err}; {hint}") from None


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
    meta = read_store_json(meta_path)
    plan = meta["plan"]
    parts: list[dict[str, Any]] = []
    missing: list[int] = []
    clips = 0
    for k in range(plan["num_shards"]):
        cpath = commit_path(root, meta["shard_prefix"], k)
        if not cpath.exists():
            missing.append(k)
            continue
        commit = read_store_json(cpath)
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


def verify_parts(
    root: str | Path, index: dict[str, Any], md5: bool = True, record: str | Path | None = None
) -> None:
    """Check every part against the index: existence, size, and (``md5=True``) content hash.

    Args:
        root: store folder.
        index: the ``index.json`` dict.
        md5: also hash the parts (reads them in full).
        record: with ``md5``, the verification record (``<root>/.cache/verified.json``): a part whose size,
            mtime, inode and indexed md5 equal its entry was hashed before and is not read again; parts hashed
            now are added (written atomically, merged with entries other processes wrote meanwhile, so
            concurrent readers at worst hash a part twice). An unwritable record only costs the next open
            a re-hash. ``None``: hash every part.

    Raises:
        StoreCorruptError: naming the first bad part, with expected and actual values and how to repair it.
    """
    root = Path(root)
    known = _read_record(Path(record)) if md5 and record is not None else {}
    todo: list[tuple[dict[str, Any], Path, Any]] = []
    for part in index["parts"]:
        p = root / part["name"]
        try:
            st = p.stat()
        except FileNotFoundError:
            raise StoreCorruptError(
                f"part {part['name']} listed in {root / INDEX_FILE} is missing; rerun stage=precompute "
                "force=true (shards with a missing part are rewritten)"
            ) from None
        if st.st_size != part["bytes"]:
            raise StoreCorruptError(
                f"part {p} is corrupt: {st.st_size} bytes, index says {part['bytes']}; {_REWRITE_HINT}"
            )
        if md5 and known.get(part["name"]) != _record_entry(st, part["md5"]):
            todo.append((part, p, st))
    if not todo:
        return
    nbytes = sum(st.st_size for _, _, st in todo)
    log.info("hashing %d part(s) of %s (%.1f MB) to verify their md5", len(todo), root, nbytes / 1e6)
    started_ns = time.time_ns()
    t0 = time.perf_counter()
    verified: dict[str, dict[str, Any]] = {}
    try:
        for part, p, st in todo:
            digest = md5_file(p)
            if digest != part["md5"]:
                raise StoreCorruptError(
                    f"part {p} is corrupt: md5 {digest}, index says {part['md5']}; {_REWRITE_HINT}"
                )
            after = p.stat()
            if (
                _record_entry(after, part["md5"]) == _record_entry(st, part["md5"])
                and started_ns - st.st_mtime_ns > _RACY_NS
            ):
                verified[part["name"]] = _record_entry(st, part["md5"])
    finally:
        # Parts verified before a corrupt one are kept: after the repair only the rewritten part is hashed.
        if record is not None and verified:
            _update_record(Path(record), verified, {p["name"] for p in index["parts"]})
    seconds = time.perf_counter() - t0
    log.info("verified the md5 of %d part(s) (%.1f MB) in %.1f s", len(todo), nbytes / 1e6, seconds)


def _record_entry(st: Any, md5: str) -> dict[str, Any]:
    """A part's entry in the verification record. The inode tells a copy (``cp -a``, rsync keep size and
    mtime) from the file that was hashed."""
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "md5": md5}


def _read_record(path: Path) -> dict[str, dict[str, Any]]:
    """The ``parts`` of a verification record; empty when missing or unreadable (every part is hashed)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable verification record %s (%s); hashing every part", path, err)
        return {}
    if not isinstance(data, dict) or data.get("format") != VERIFIED_FORMAT or data.get("version") != 1:
        return {}
    parts = data.get("parts")
    return parts if isinstance(parts, dict) else {}


def _update_record(path: Path, verified: dict[str, dict[str, Any]], names: set[str]) -> None:
    """Add ``verified`` to the record at ``path`` (re-read first: another rank may have added parts), drop
    parts the index no longer lists, and replace the file atomically."""
    parts = {k: v for k, v in _read_record(path).items() if k in names}
    parts.update(verified)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {"format": VERIFIED_FORMAT, "version": 1, "parts": parts})
    except OSError as err:  # a read-only store: verify again next time
        log.info("cannot record verified parts in %s (%s)", path, err)
