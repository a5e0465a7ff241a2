"""Resumable, crash-safe writer of teacher-embedding stores.

Protocol (see FORMAT.md): a shard k is written as one or more part files, each first under
``<final name>.partial``, fsync'd, then renamed to its final name; when all parts of the shard are in place a
commit marker ``_commits/<prefix>-<k:06d>.json`` is written atomically. A shard is complete iff its marker
exists and lists part files of the recorded sizes. A final-named part without a marker (crash between the
rename and the commit) is complete in itself and is simply rewritten (identically) on rerun.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssondo_train.store.format import (
    AUDIO_CODECS,
    BACKENDS,
    COMMITS_DIR,
    DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    META_FILE,
    PARTIAL_SUFFIX,
    SHARD_EXT,
    STUDENT_SAMPLE_RATE,
    StoreMismatchError,
    TeacherMeta,
    WindowRecord,
    encode_audio,
    sample_key,
)
from ssondo_train.store.fsutil import atomic_write_json, fsync_dir, md5_file, read_json
from ssondo_train.store.plan import ShardPlan, part_name, plan_shards, shard_stem, validate_prefix
from ssondo_train.store.wds import TarPartWriter, encode_members

log = logging.getLogger(__name__)

# meta.json fields that must agree between runs/ranks writing into the same root.
_LAYOUT_KEYS = (
    "format",
    "version",
    "backend",
    "dtype",
    "dim",
    "shard_prefix",
    "teacher",
    "audio",
    "layers",
    "limits",
    "plan",
)


def _dict_differences(key: str, have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """``"key.sub: store has a, writer wants b"`` for every differing entry (one level down)."""
    out = []
    for sub in sorted(set(have) | set(want)):
        a, b = have.get(sub, "absent"), want.get(sub, "absent")
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _dict_differences(f"{key}.{sub}", a, b)
        else:
            out.append(f"{key}.{sub}: store has {a!r}, writer wants {b!r}")
    return out


def commit_path(root: Path, prefix: str, shard: int) -> Path:
    return root / COMMITS_DIR / f"{shard_stem(prefix, shard)}.json"


class StoreWriter:
    """Writes the shards of a store; many instances (ranks) may write disjoint shards of one root.

    Args:
        root: store folder (created).
        backend: ``"wds"`` (tar shards) or ``"h5"`` (HDF5 shards).
        shard_prefix: file prefix, ``[A-Za-z0-9_-]+``.
        max_count: max windows per part file; a shard with more windows is split into several parts.
        max_bytes: max bytes per part file (soft for h5: estimated from payload sizes; the h5 writer holds
            a part's embeddings in memory until the part closes, so this also bounds that memory).
        dtype: ``"float16"`` or ``"float32"`` storage dtype of embeddings and layers.
        meta: store metadata; ``meta["teacher"]`` is a :class:`TeacherMeta` or a mapping of its fields
            (name, dim, sample_rate, checkpoint_sha256, pooling, layer); other keys go to ``meta.json``
            under ``extra`` (informative only, not checked on resume).
        audio_codec: ``None`` (no audio), ``"flac"``, ``"pcm16"`` or ``"float32"``; when set every record
            must carry ``audio`` (T,) at ``audio_sample_rate``.
        audio_sample_rate: sample rate of the stored audio (the student rate, 32 kHz).
        num_layers: ``None`` or L; when set every record must carry ``layers`` (L, D).
    """

    def __init__(
        self,
        root: str | Path,
        backend: str = "wds",
        shard_prefix: str = "shard",
        max_count: int = 100_000,
        max_bytes: int = 1 << 30,
        dtype: str = "float16",
        meta: Mapping[str, Any] | None = None,
        *,
        audio_codec: str | None = None,
        audio_sample_rate: int = STUDENT_SAMPLE_RATE,
        num_layers: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
        if audio_codec is not None and audio_codec not in AUDIO_CODECS:
            raise ValueError(f"audio_codec must be None or one of {AUDIO_CODECS}, got {audio_codec!r}")
        if max_count <= 0 or max_bytes <= 0:
            raise ValueError(f"max_count and max_bytes must be > 0, got {max_count}, {max_bytes}")
        if num_layers is not None and num_layers <= 0:
            raise ValueError(f"num_layers must be None or > 0, got {num_layers}")
        validate_prefix(shard_prefix)
        meta = dict(meta or {})
        if "teacher" not in meta:
            raise ValueError("meta must contain a 'teacher' entry (TeacherMeta or mapping of its fields)")
        teacher = meta.pop("teacher")
        self.teacher = teacher if isinstance(teacher, TeacherMeta) else TeacherMeta(**dict(teacher))
        self.root = Path(root)
        self.backend = backend
        self.prefix = shard_prefix
        self.max_count = int(max_count)
        self.max_bytes = int(max_bytes)
        self.dtype = dtype
        self.np_dtype = np.dtype(DTYPES[dtype])
        self.dim = int(self.teacher.dim)
        self.audio_codec = audio_codec
        self.audio_sample_rate = int(audio_sample_rate)
        self.num_layers = num_layers
        self.extra = meta
        self.ext = SHARD_EXT[backend]
        self._meta_checked_for: str | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / COMMITS_DIR).mkdir(exist_ok=True)

    # ------------------------------------------------------------------ meta / plan
    def _meta_for(self, plan: ShardPlan) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "backend": self.backend,
            "dtype": self.dtype,
            "dim": self.dim,
            "shard_prefix": self.prefix,
            "teacher": self.teacher.to_dict(),
            "audio": None
            if self.audio_codec is None
            else {"codec": self.audio_codec, "sample_rate": self.audio_sample_rate, "channels": 1},
            "layers": None if self.num_layers is None else {"num_layers": self.num_layers},
            "limits": {"max_count": self.max_count, "max_bytes": self.max_bytes},
            "plan": {
                "plan_id": plan.plan_id,
                "clips_per_shard": plan.clips_per_shard,
                "num_clips": plan.num_clips,
                "num_shards": plan.num_shards,
                **({"content": plan.content} if plan.content is not None else {}),
            },
            "extra": self.extra,
            "counts": None,
        }

    def mismatch(self, plan: ShardPlan) -> str | None:
        """How the root's ``meta.json`` differs from the store this writer would write for ``plan`` (another
        layout, or another plan: clip list, shard size or content), e.g. ``"plan.content.window_seconds: store
        has 1.0, writer wants 0.5"``; None when it matches or there is no ``meta.json`` yet."""
        path = self.root / META_FILE
        if not path.exists():
            return None
        have, want = read_json(path), self._meta_for(plan)
        diffs: list[str] = []
        for key in _LAYOUT_KEYS:
            a, b = have.get(key), want[key]
            if a == b:
                continue
            if isinstance(a, dict) and isinstance(b, dict):
                diffs += _dict_differences(key, a, b)
            else:
                diffs.append(f"{key}: store has {a!r}, writer wants {b!r}")
        return "; ".join(diffs) or None

    def has_meta(self) -> bool:
        """True when the root holds a ``meta.json`` (some writer planned a store there)."""
        return (self.root / META_FILE).exists()

    def _ensure_meta(self, plan: ShardPlan) -> None:
        """Create ``meta.json`` or check that the existing one describes the same layout and plan."""
        if self._meta_checked_for == plan.plan_id:
            return
        if plan.prefix != self.prefix:
            raise ValueError(f"plan prefix {plan.prefix!r} != writer shard_prefix {self.prefix!r}")
        path = self.root / META_FILE
        if path.exists():
            details = self.mismatch(plan)
            if details:
                raise StoreMismatchError(f"{path} describes another store ({details}); use a new root")
            if read_json(path).get("extra") != self._meta_for(plan)["extra"]:
                log.warning("meta.json 'extra' differs from this writer's; keeping the stored one")
        else:
            # Ranks may race here; they write identical content, and os.replace is atomic.
            atomic_write_json(path, self._meta_for(plan))
        self._meta_checked_for = plan.plan_id

    def reset(self, plan: ShardPlan) -> None:
        """Remove the store under the root (shards, commit markers, index, ``meta.json``: everything in the
        folder) and start an empty one for ``plan``.

        The old folder is first moved aside in one rename and its new ``meta.json`` written at once, so other
        writers see either the old store or the new one, never a mix; the old folder is deleted after.
        Only one process may call this, while no other writes into the root.
        """
        old = self.root.with_name(f".{self.root.name}.removing-{os.getpid()}-{time.time_ns()}")
        if self.root.exists():
            os.replace(self.root, old)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / COMMITS_DIR).mkdir(exist_ok=True)
        self._meta_checked_for = None
        self._ensure_meta(plan)
        shutil.rmtree(old, ignore_errors=True)

    def plan_shards(
        self,
        clip_ids: Sequence[str],
        clips_per_shard: int,
        rank: int = 0,
        world_size: int = 1,
        content: Mapping[str, Any] | None = None,
    ) -> list[ShardPlan]:
        """Plan the shards of the ordered ``clip_ids`` and return this rank's (see :func:`plan.plan_shards`).

        Also creates/checks ``meta.json`` (a rerun with another clip list, shard size, content or layout fails
        with :class:`StoreMismatchError` instead of mixing two plans in one store).
        """
        plans = plan_shards(clip_ids, clips_per_shard, rank, world_size, self.prefix, content)
        if plans:
            self._ensure_meta(plans[0])
        return plans

    # ------------------------------------------------------------------ completeness
    def shard_complete(self, plan: ShardPlan) -> bool:
        """True iff the shard's commit marker exists for this plan and all its part files have their sizes."""
        path = commit_path(self.root, self.prefix, plan.shard)
        if not path.exists():
            return False
        try:
            commit = read_json(path)
        except (OSError, ValueError):
            return False
        if commit.get("plan_id") != plan.plan_id:
            return False
        for part in commit["parts"]:
            p = self.root / part["name"]
            if not p.exists() or p.stat().st_size != part["bytes"]:
                return False
        return True

    def pending(self, plans: Iterable[ShardPlan]) -> list[ShardPlan]:
        """The plans whose shard is not complete (what a resumed run still has to write)."""
        return [p for p in plans if not self.shard_complete(p)]

    def _clean_shard(self, plan: ShardPlan) -> None:
        commit_path(self.root, self.prefix, plan.shard).unlink(missing_ok=True)
        stem = shard_stem(self.prefix, plan.shard)
        for p in self.root.glob(f"{stem}-*"):
            if p.name.endswith(self.ext) or p.name.endswith(self.ext + PARTIAL_SUFFIX):
                p.unlink()

    # ------------------------------------------------------------------ writing
    def _prepare(self, rec: WindowRecord) -> tuple[np.ndarray, np.ndarray | None, bytes | None]:
        emb = np.asarray(rec.embedding)
        if emb.ndim == 2 and emb.shape[0] == 1:  # upstream MATPAC (1, D) -> (D,)
            emb = emb[0]
        if emb.shape != (self.dim,):
            raise ValueError(f"{rec.clip_id}/w{rec.window}: embedding shape {emb.shape} != ({self.dim},)")
        with np.errstate(over="ignore"):  # overflow to inf in float16 is reported just below
            emb = emb.astype(self.np_dtype)
        self._refuse_non_finite(rec, "embedding", emb)
        layers = None
        if self.num_layers is not None:
            if rec.layers is None:
                raise ValueError(f"{rec.clip_id}/w{rec.window}: store has layers but record has none")
            layers = np.asarray(rec.layers).reshape(-1, self.dim) if np.ndim(rec.layers) == 3 else rec.layers
            with np.errstate(over="ignore"):
                layers = np.asarray(layers).astype(self.np_dtype)
            if layers.shape != (self.num_layers, self.dim):
                raise ValueError(
                    f"{rec.clip_id}/w{rec.window}: layers shape {layers.shape} != "
                    f"({self.num_layers}, {self.dim})"
                )
            self._refuse_non_finite(rec, "layers", layers)
        elif rec.layers is not None:
            raise ValueError("record has layers but the writer was created with num_layers=None")
        audio = None
        if self.audio_codec is not None:
            if rec.audio is None:
                raise ValueError(f"{rec.clip_id}/w{rec.window}: store has audio but record has none")
            audio = encode_audio(rec.audio, self.audio_codec, self.audio_sample_rate)
        elif rec.audio is not None:
            raise ValueError("record has audio but the writer was created with audio_codec=None")
        if not rec.end > rec.start:
            raise ValueError(f"{rec.clip_id}/w{rec.window}: need end > start, got {rec.start}, {rec.end}")
        return emb, layers, audio

    def _refuse_non_finite(self, rec: WindowRecord, what: str, values: np.ndarray) -> None:
        """The last line of defence: a NaN/inf in the store would poison statistics and k-means later.

        Raises:
            ValueError: naming the window's key; the caller should record the clip as a failure instead.
        """
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise ValueError(
                f"clip {rec.clip_id!r} window {rec.window}: {what} has {bad} NaN/inf value(s) after the cast "
                f"to {self.dtype}; the store refuses non-finite values: record the clip as a failure instead"
            )

    def _open_part(self, plan: ShardPlan, part: int):
        final = self.root / part_name(self.prefix, plan.shard, part, self.ext)
        tmp = final.with_name(final.name + PARTIAL_SUFFIX)
        tmp.unlink(missing_ok=True)
        if self.backend == "wds":
            return final, TarPartWriter(tmp)
        from ssondo_train.store.h5 import H5PartWriter  # lazy: h5py is only needed for h5 stores

        return final, H5PartWriter(tmp, self.dim, self.dtype, self.num_layers, self.audio_codec is not None)

    @staticmethod
    def _finish_part(final: Path, writer) -> dict[str, Any]:
        writer.close()  # flushes + fsyncs the temporary file
        entry = {
            "name": final.name,
            "samples": writer.samples,
            "bytes": writer.path.stat().st_size,
            "md5": md5_file(writer.path),
            "first_key": writer.first_key,
            "last_key": writer.last_key,
        }
        os.replace(writer.path, final)
        fsync_dir(final.parent)
        return entry

    def write_shard(self, plan: ShardPlan, records: Iterable[WindowRecord]) -> dict[str, Any]:
        """Write shard ``plan`` from ``records`` and commit it.

        ``records`` must contain only clips of ``plan.clip_ids``, in plan order, windows of a clip in
        increasing order (so that the shard content is a function of the plan alone). Clips without records
        (failures) are allowed. Any previous (partial or uncommitted) files of this shard are removed first.

        Returns:
            The commit record: ``{"shard", "plan_id", "first_clip", "clips_planned", "clips", "samples",
            "parts": [{"name", "samples", "bytes", "md5", "first_key", "last_key"}, ...]}``.

        Raises:
            ValueError: a record is outside the plan, out of order, or has a wrong shape / non-finite values.
        """
        self._ensure_meta(plan)
        self._clean_shard(plan)
        position = {c: i for i, c in enumerate(plan.clip_ids)}
        parts: list[dict[str, Any]] = []
        cur: tuple[Path, Any] | None = None
        cur_bytes = 0
        last: tuple[int, int] = (-1, -1)
        clips_seen = 0
        samples = 0
        try:
            for rec in records:
                pos = position.get(rec.clip_id)
                if pos is None:
                    raise ValueError(f"clip {rec.clip_id!r} is not in shard {plan.name}")
                if (pos, int(rec.window)) <= last:
                    raise ValueError(
                        f"records out of order in shard {plan.name}: {rec.clip_id!r} window "
                        f"{rec.window} after clip #{last[0]} window {last[1]}"
                    )
                if pos != last[0]:
                    clips_seen += 1
                last = (pos, int(rec.window))
                emb, layers, audio = self._prepare(rec)
                key = sample_key(rec.clip_id, rec.window)
                if self.backend == "wds":
                    members = encode_members(rec, emb, layers, self.dtype, self.audio_codec, audio)
                    nbytes = TarPartWriter.record_bytes(members)
                else:
                    nbytes = (
                        emb.nbytes
                        + (layers.nbytes if layers is not None else 0)
                        + (len(audio) if audio is not None else 0)
                        + 64
                    )
                if cur is not None and (
                    cur[1].samples >= self.max_count or cur_bytes + nbytes > self.max_bytes
                ):
                    parts.append(self._finish_part(*cur))
                    cur = None
                if cur is None:
                    cur = self._open_part(plan, len(parts))
                    cur_bytes = 0
                if self.backend == "wds":
                    cur[1].add(key, members)
                else:
                    cur[1].add(key, rec.clip_id, rec.window, rec.start, rec.end, emb, layers, audio)
                cur_bytes += nbytes
                samples += 1
            if cur is not None:
                parts.append(self._finish_part(*cur))
                cur = None
        except BaseException:
            if cur is not None:
                cur[1].abort()
            raise
        commit = {
            "shard": plan.shard,
            "plan_id": plan.plan_id,
            "first_clip": plan.first_clip,
            "clips_planned": len(plan.clip_ids),
            "clips": clips_seen,
            "samples": samples,
            "parts": parts,
        }
        atomic_write_json(commit_path(self.root, self.prefix, plan.shard), commit)
        log.debug("committed %s: %d windows in %d part(s)", plan.name, samples, len(parts))
        return commit
