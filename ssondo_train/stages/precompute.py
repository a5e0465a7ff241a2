"""stage=precompute: run a teacher over a corpus and write per-window embeddings to a sharded store.

Each clip is decoded, down-mixed and cut into windows at the teacher's rate (and, optionally, the same spans
at the student's rate, stored with the embedding so distillation reads one sequential stream). Decoding runs
in DataLoader workers while the teacher runs batched in the main process. Shards are planned from the ordered
manifest, written under temporary names and committed when complete, so a killed run resumes where it
stopped and produces the same store. With several ranks (torchrun / SLURM) each writes its own shards and rank
0 merges the index.

The shard plan covers the windowing (window, hop, tail, min_seconds), so shards of another windowing never
count as done: a store made with other settings is refused, or with ``force=true`` removed and rebuilt from
scratch. Each rank leaves a marker ``_ranks/rank<r>.json`` when its shards are written; rank 0 merges only
once every rank's marker of this plan (and job, where the launcher names one) is there and every planned shard
is committed, so a marker left by an earlier attempt never starts the merge early. The markers are removed
after the merge.

Nothing goes silently wrong: a missing audio root stops the stage before any work; every clip that cannot be
used is recorded in ``failures.rank<r>.jsonl`` with its reason (a clip whose audio or teacher output holds
NaN/inf is left out whole); and when more than ``precompute.max_failure_rate`` of the clips fail (policy skips
such as silent clips excluded, see :mod:`ssondo_train.store.failures`) the stage stops with an error that
names the common reasons, instead of finishing with a store that lacks part of the corpus.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssondo_train.runs.layout import RANKS_DIR, RUN_FORMAT_VERSION, SPLITS_FILE
from ssondo_train.stages.base import Stage, StageContext, StageError

log = logging.getLogger(__name__)

STUDENT_SAMPLE_RATE = 32000
# The failure rate is checked while the job runs only after this many clips (fewer are too noisy: one bad
# file in 20 is already 5 %); it is always checked over all clips at the end.
EARLY_CHECK_MIN_CLIPS = 100
# Failure reasons precompute adds to those of ssondo_train.audio (decode_error, silent, too_short, ...).
MISSING_FILE = "missing_file"
AUDIO_NON_FINITE = "audio_non_finite"
TEACHER_NON_FINITE = "teacher_non_finite"


@dataclass
class ClipWindows:
    """Decoded windows of one clip (or the reason it was skipped)."""

    clip_id: str
    path: str
    teacher: Any = None  # (W, n_teacher) float32 tensor
    student: Any = None  # (W, n_student) float32 tensor or None
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    error: str | None = None
    reason: str | None = None


class _ClipDataset:
    """Map-style dataset: clip i -> ClipWindows (runs in DataLoader workers)."""

    def __init__(
        self,
        entries: list[tuple[str, str]],
        teacher_sr: int,
        window_s: float,
        hop_s: float,
        tail: str,
        min_seconds: float,
        with_student_audio: bool,
    ) -> None:
        self.entries = entries
        self.teacher_sr = teacher_sr
        self.window_s, self.hop_s, self.tail = window_s, hop_s, tail
        self.min_seconds = min_seconds
        self.with_student_audio = with_student_audio

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> ClipWindows:
        from ssondo_train.audio import AudioError, cut_windows, load_audio, resample

        clip_id, path = self.entries[i]
        out = ClipWindows(clip_id, path)
        try:
            wav, sr = load_audio(path, None, min_seconds=self.min_seconds)
            tw = cut_windows(
                resample(wav, sr, self.teacher_sr),
                round(self.window_s * self.teacher_sr),
                round(self.hop_s * self.teacher_sr),
                self.tail,
            )
            if len(tw) == 0:
                out.error = f"shorter than one {self.window_s:g} s window with tail=drop"
                out.reason = "too_short"
                return out
            out.teacher = tw.audio
            out.starts = [s / self.teacher_sr for s in tw.starts]
            out.ends = [(s + n) / self.teacher_sr for s, n in zip(tw.starts, tw.lengths, strict=False)]
            if self.with_student_audio:
                sw = cut_windows(
                    resample(wav, sr, STUDENT_SAMPLE_RATE),
                    round(self.window_s * STUDENT_SAMPLE_RATE),
                    round(self.hop_s * STUDENT_SAMPLE_RATE),
                    self.tail,
                )
                out.student = sw.audio[: len(tw)]
                if len(sw) < len(tw):  # rounding of a tail shorter than one sample at the student rate
                    out.student = _pad_rows(out.student, len(tw))
        except AudioError as err:
            out.error, out.reason = str(err), err.reason
            if err.reason == "decode_error" and not Path(path).exists():
                out.error, out.reason = "file not found", MISSING_FILE
            elif err.reason == "non_finite":
                out.error, out.reason = "audio contains NaN or Inf samples", AUDIO_NON_FINITE
        except Exception as err:  # a broken file must never stop a long job
            out.error, out.reason = f"{type(err).__name__}: {err}", "unexpected_error"
        return out


def _pad_rows(x, rows: int):
    import torch

    return torch.cat([x, x.new_zeros((rows - x.shape[0], x.shape[1]))]) if x.shape[0] < rows else x


def _collate_one(items: list[ClipWindows]) -> ClipWindows:
    return items[0]


@dataclass
class _OpenClip:
    """A decoded clip whose windows are being embedded (they may span several teacher batches)."""

    item: ClipWindows
    embeddings: list[Any]  # one (D,) float32 array per window once embedded, else None
    pending: int


def non_finite_windows(embeddings: Any, store_dtype: str = "float32") -> list[int]:
    """Indices of the windows whose embedding is not finite, as stored: NaN/inf, or beyond ``store_dtype``'s
    range (a float16 store turns values above 65504 into inf).

    Args:
        embeddings: ``(W, D)`` float array of one clip.
        store_dtype: the store's dtype (``store.dtype``).
    """
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):
        stored = np.asarray(embeddings, dtype=np.float32).astype(store_dtype)
    return [int(w) for w in np.flatnonzero(~np.isfinite(stored).all(axis=1))]


def _failure_rate_error(
    tally: Any,
    *,
    total: int,
    early: bool,
    failures_where: str,
    store_root: Path,
    committed_failures: int,
    rank: int | None = None,
) -> StageError:
    """The error that stops precompute when ``tally`` is over ``precompute.max_failure_rate``."""
    from ssondo_train.store.failures import common_reasons

    who = "precompute" if rank is None else f"precompute (rank {rank})"
    if early:
        head = f"{who} stopped after {tally.attempted} of {total} clips: {tally.failed} of them failed"
    else:
        head = f"{who} stopped: {tally.failed} of {total} clips failed"
    reasons = "; ".join(
        f"{rc.reason} x{rc.count} (e.g. {rc.example.path}: {_short_error(rc.example)})"
        for rc in common_reasons(tally.failures)
    )
    # A threshold that would have let this run through, rounded up to a whole percent.
    allow = min(1.0, (math.floor(tally.rate * 100) + 1) / 100)
    kept = (
        f" ({committed_failures} failed clip(s) are in shards already written, which a rerun keeps: after "
        f"fixing their audio, delete {store_root} to redo them)"
        if committed_failures
        else ""
    )
    return StageError(
        f"{head} ({tally.rate:.1%}), more than precompute.max_failure_rate={tally.max_rate:g} "
        f"({tally.max_rate:.1%}). Most common: {reasons}. All failures are listed in {failures_where}. "
        f"Fix the audio and rerun{kept}, or accept these failures with "
        f"precompute.max_failure_rate={allow:g} (1.0 turns the check off)"
    )


def _short_error(record: Any, limit: int = 160) -> str:
    """A failure's error for a message: its path (already shown) replaced, cut to ``limit`` characters."""
    text = record.error.replace(record.path, "the file") if record.path else record.error
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _import_origin(ctx: StageContext) -> str | None:
    """Where the prepare stage imported this run's corpus from (its recorded data.root / audio_dir)."""
    done = ctx.layout.read_done("prepare") or {}
    data = (done.get("config") or {}).get("data") or {}
    origin = data.get("root") or data.get("audio_dir")
    return str(origin) if origin else None


def _read_corpus(ctx: StageContext, cfg: Any) -> tuple[Any, Path, Sequence[Any]]:
    """The corpus manifest, its path and the clips to process, after checking that their audio is there.

    Raises:
        StageError: the manifest is missing or malformed, it has no clips, or its audio root is missing
            (the message names the root, where the corpus came from and how to fix it).
    """
    from ssondo_train.data.manifest import AudioRootError, ManifestError, check_audio_root, read_manifest

    manifest_path = Path(cfg.manifest) if cfg.manifest else ctx.layout.corpus_manifest()
    if not cfg.manifest:
        ctx.require_done("prepare")
    if not manifest_path.is_file():
        raise StageError(
            f"corpus manifest {manifest_path.resolve()} not found; set precompute.manifest=<corpus.csv> "
            "(null = this run's prepare output)"
        )
    try:
        manifest = read_manifest(manifest_path)
    except ManifestError as err:
        raise StageError(str(err)) from None
    clips = list(manifest)
    if cfg.max_clips:
        clips = clips[: int(cfg.max_clips)]
    if not clips:
        raise StageError(f"manifest {manifest_path} has no clips")
    try:
        check_audio_root(manifest, manifest_path, clips, origin=None if cfg.manifest else _import_origin(ctx))
    except AudioRootError as err:
        raise StageError(str(err)) from None
    return manifest, manifest_path, clips


def _attempt_id(env: dict[str, str] | None = None) -> str | None:
    """What names this launch of a distributed job identically on every rank, where the launcher provides
    it: the SLURM job (and its requeue count) or torchrun's rendezvous id; None otherwise."""
    env = dict(os.environ) if env is None else env
    if env.get("SLURM_JOB_ID"):
        return f"slurm:{env['SLURM_JOB_ID']}.{env.get('SLURM_RESTART_COUNT', '0')}"
    run_id = env.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"torchrun:{run_id}.{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return None


def _prepare_store(ctx: StageContext, writer: Any, plan: Any, dist: Any, timeout_s: float) -> None:
    """Make sure the store root holds (or will hold) the store of ``plan`` before this rank writes a shard.

    A store made with other settings (another windowing, clip list, shard size, teacher or layout) is never
    continued: without ``force`` it is refused; with ``force`` rank 0 removes it, with the failure records and
    rank markers made for it, and starts an empty store, while the other ranks wait for that new store.

    Raises:
        StageError: another store is there and ``force`` is off, or rank 0 did not replace it in time.
    """
    differs = writer.mismatch(plan)
    if differs is None:
        return
    if not ctx.force:
        raise StageError(
            f"{writer.root} holds a teacher store made with other settings ({differs}); its shards cannot be "
            "continued or reused with these. Give the settings it was made with, rerun with force=true to "
            "remove it and rebuild the store from scratch, or use another run_name"
        )
    if dist.is_main:
        log.warning("force=true: removing the store in %s (%s) and rebuilding it", writer.root, differs)
        # Before the store is replaced: a rank sees the new meta.json only once these are gone.
        for path in ctx.layout.failures_files():
            path.unlink(missing_ok=True)
        shutil.rmtree(ctx.out_dir / RANKS_DIR, ignore_errors=True)
        writer.reset(plan)
        return
    log.info("rank %d waits for rank 0 to replace the store in %s (%s)", dist.rank, writer.root, differs)
    deadline = time.time() + timeout_s
    while not writer.has_meta() or writer.mismatch(plan) is not None:
        if time.time() > deadline:
            raise StageError(
                f"rank {dist.rank}: rank 0 did not replace the store in {writer.root} made with other "
                f"settings within precompute.merge_timeout_s={timeout_s:g} s; check rank 0's log and rerun"
            )
        time.sleep(0.5)


def _finished_ranks(folder: Path, world_size: int, plan_id: str, attempt: str | None) -> list[int]:
    """The ranks whose marker in ``folder`` belongs to this plan, world size and attempt."""
    from ssondo_train.utils.io import read_json

    done = []
    for rank in range(world_size):
        try:
            marker = read_json(folder / f"rank{rank}.json")
        except (OSError, ValueError):
            continue
        if (
            marker.get("plan_id") == plan_id
            and marker.get("world_size") == world_size
            and marker.get("attempt") == attempt
        ):
            done.append(rank)
    return done


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run(ctx: StageContext) -> dict[str, Any]:
    """Embed the corpus with the teacher into ``<run>/precompute/store``; return the ``done.json`` figures.

    Raises:
        StageError: the manifest or its audio root is missing, the window does not fit the sample rates,
            more than ``precompute.max_failure_rate`` of the clips failed (while running, after
            :data:`EARLY_CHECK_MIN_CLIPS` clips, and over all clips at the end), or a rank did not finish.
    """
    import numpy as np
    import torch
    from tqdm import tqdm

    from ssondo_train.config.groups import TeacherConfig
    from ssondo_train.config.schema import to_schema
    from ssondo_train.data.splits import assign_split
    from ssondo_train.runs import variants as rv
    from ssondo_train.store import (
        FailureLog,
        StoreWriter,
        TeacherMeta,
        WindowRecord,
        merge_indexes,
        open_store,
        plan_shards,
        read_failures,
    )
    from ssondo_train.store.failures import (
        DEFAULT_MAX_FAILURE_RATE,
        FailureRecord,
        FailureTally,
        counts_as_failure,
    )
    from ssondo_train.teachers import build_teacher
    from ssondo_train.utils.dist import dist_info
    from ssondo_train.utils.io import atomic_write_json

    cfg = ctx.cfg.precompute
    scfg = ctx.cfg.store
    dist = dist_info()
    # Before the teacher is loaded or anything is written: a moved audio root fails here, not clip by clip.
    manifest, manifest_path, clips = _read_corpus(ctx, cfg)
    max_rate = float(cfg.get("max_failure_rate", DEFAULT_MAX_FAILURE_RATE))
    if not 0.0 <= max_rate <= 1.0:
        raise StageError(
            f"precompute.max_failure_rate must be in [0, 1] (1.0 turns the check off), got {max_rate}"
        )

    tcfg = to_schema("teacher", ctx.cfg.teacher, TeacherConfig)
    device = _device(cfg.device)
    if dist.world_size > 1 and device == "cuda":
        device = f"cuda:{dist.local_rank % max(1, torch.cuda.device_count())}"
    teacher = build_teacher(tcfg.name, **tcfg.build_kwargs()).to(device).eval()
    tmeta = teacher.metadata()
    window_s, hop_s = float(cfg.window_seconds), float(cfg.hop_seconds)
    for rate in (teacher.sample_rate, STUDENT_SAMPLE_RATE):
        if (
            abs(window_s * rate - round(window_s * rate)) > 1e-6
            or abs(hop_s * rate - round(hop_s * rate)) > 1e-6
        ):
            raise StageError(f"precompute.window_seconds/hop_seconds must be whole samples at {rate} Hz")

    store_root = ctx.layout.store_dir()
    writer = StoreWriter(
        store_root,
        backend=scfg.backend,
        shard_prefix="shard",
        max_count=int(scfg.max_count),
        max_bytes=int(scfg.max_bytes),
        dtype=scfg.dtype,
        meta={
            "teacher": TeacherMeta(
                name=tmeta["name"],
                dim=int(teacher.embed_dim),
                sample_rate=int(teacher.sample_rate),
                checkpoint_sha256=tmeta.get("checkpoint_sha256"),
                pooling=str(tmeta.get("pooling", "mean")),
                layer=tmeta.get("layer"),
                extra={k: v for k, v in tmeta.items() if k in ("num_layers", "frame_dim")},
            ),
            "window_seconds": window_s,
            "hop_seconds": hop_s,
            "tail": cfg.tail,
        },
        audio_codec=scfg.audio_codec if cfg.store_student_audio else None,
    )
    clip_ids = [c.clip_id for c in clips]
    by_id = {c.clip_id: c for c in clips}
    # Everything else that decides the stored windows: shards cut another way are another plan.
    content = {
        "window_seconds": window_s,
        "hop_seconds": hop_s,
        "tail": str(cfg.tail),
        "min_seconds": float(cfg.min_seconds),
    }
    clips_per_shard = int(cfg.clips_per_shard)
    all_plans = plan_shards(clip_ids, clips_per_shard, prefix=writer.prefix, content=content)
    merge_timeout_s = float(cfg.merge_timeout_s)
    _prepare_store(ctx, writer, all_plans[0], dist, merge_timeout_s)
    ranks_dir = ctx.out_dir / RANKS_DIR
    attempt = _attempt_id()
    # This rank's marker of an earlier attempt says nothing about this one.
    (ranks_dir / f"rank{dist.rank}.json").unlink(missing_ok=True)
    plans = writer.plan_shards(
        clip_ids, clips_per_shard, rank=dist.rank, world_size=dist.world_size, content=content
    )
    pending = writer.pending(plans)
    log.info(
        "rank %d/%d: %d shards planned, %d to write (%d already complete)",
        dist.rank,
        dist.world_size,
        len(plans),
        len(pending),
        len(plans) - len(pending),
    )

    entries = [(cid, str(manifest.abs_path(by_id[cid]))) for plan in pending for cid in plan.clip_ids]
    dataset = _ClipDataset(
        entries,
        teacher.sample_rate,
        window_s,
        hop_s,
        cfg.tail,
        float(cfg.min_seconds),
        bool(cfg.store_student_audio),
    )
    workers = int(cfg.num_workers)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate_one,
        prefetch_factor=8 if workers else None,
        persistent_workers=False,
    )
    clip_iter: Iterator[ClipWindows] = iter(loader)
    failures = FailureLog(ctx.out_dir / f"failures.rank{dist.rank}.jsonl")
    batch_size = int(cfg.batch_size)
    use_autocast = device.startswith("cuda") and cfg.precision in ("bf16", "fp16")
    amp_dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    counters = {"clips": 0, "windows": 0, "failed": 0, "teacher_seconds": 0.0}
    tally = FailureTally(max_rate)
    store_dtype = str(scfg.dtype)
    rank_label = dist.rank if dist.world_size > 1 else None
    bar = tqdm(
        total=len(entries), unit="clip", desc=f"precompute[{dist.rank}]", dynamic_ncols=True, disable=None
    )
    started = time.perf_counter()

    def embed(batch: torch.Tensor) -> np.ndarray:
        t0 = time.perf_counter()
        ctx_amp = torch.autocast("cuda", dtype=amp_dtype) if use_autocast else contextlib.nullcontext()
        with torch.inference_mode(), ctx_amp:
            out = teacher.embed(batch.to(device, non_blocking=True)).float()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        counters["teacher_seconds"] += time.perf_counter() - t0
        return out.cpu().numpy()

    def record_failure(item: ClipWindows, reason: str, error: str, plan) -> None:
        counters["failed"] += 1
        failures.append(item.clip_id, item.path, reason, error)
        log.warning("skipping %s (%s): %s", item.clip_id, reason, error)
        tally.add(FailureRecord(item.clip_id, item.path, reason, error))
        check_rate(plan)

    def check_rate(plan) -> None:
        if not tally.exceeded(EARLY_CHECK_MIN_CLIPS):
            return
        this_shard = set(plan.clip_ids)  # shards before this one are committed, this one is not
        raise _failure_rate_error(
            tally,
            total=len(entries),
            early=True,
            failures_where=str(failures.path),
            store_root=store_root,
            committed_failures=sum(r.clip_id not in this_shard for r in tally.failures),
            rank=rank_label,
        )

    def records_for(plan) -> Iterator[WindowRecord]:
        """The records of ``plan``'s clips in order; a clip is yielded only once all its windows are
        embedded, so a clip with one non-finite window is left out whole."""
        buf: list[tuple[_OpenClip, int]] = []
        open_clips: list[_OpenClip] = []

        def finish_clips() -> Iterator[WindowRecord]:
            while open_clips and open_clips[0].pending == 0:
                clip = open_clips.pop(0)
                item = clip.item
                emb = np.stack(clip.embeddings)
                bad = non_finite_windows(emb, store_dtype)
                if bad:
                    record_failure(
                        item,
                        TEACHER_NON_FINITE,
                        f"teacher output not finite (NaN/inf, or beyond the {store_dtype} range of the "
                        f"store) in window(s) {', '.join(map(str, bad[:10]))} of {len(emb)}",
                        plan,
                    )
                    continue
                counters["clips"] += 1
                tally.add()
                for w, vec in enumerate(emb):
                    audio = item.student[w].numpy() if item.student is not None else None
                    yield WindowRecord(item.clip_id, w, item.starts[w], item.ends[w], vec, audio=audio)

        def flush() -> Iterator[WindowRecord]:
            if buf:
                emb = embed(torch.stack([clip.item.teacher[w] for clip, w in buf]))
                for (clip, w), vec in zip(buf, emb, strict=True):
                    clip.embeddings[w] = vec
                    clip.pending -= 1
                counters["windows"] += len(buf)
                buf.clear()
            yield from finish_clips()

        for expected in plan.clip_ids:
            item = next(clip_iter)
            if item.clip_id != expected:
                raise StageError(f"internal ordering error: got {item.clip_id}, expected {expected}")
            bar.update(1)
            if item.error is not None:
                record_failure(item, item.reason or "error", item.error, plan)
                continue
            n_windows = int(item.teacher.shape[0])
            clip = _OpenClip(item, [None] * n_windows, n_windows)
            open_clips.append(clip)
            for w in range(n_windows):
                buf.append((clip, w))
                if len(buf) >= batch_size:
                    yield from flush()
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(
                clips_s=f"{counters['clips'] / elapsed:.1f}",
                windows_s=f"{counters['windows'] / elapsed:.1f}",
                refresh=False,
            )
        yield from flush()
        if open_clips:
            raise StageError(f"internal error: {len(open_clips)} clip(s) of {plan.name} left unembedded")

    try:
        for plan in pending:
            writer.write_shard(plan, records_for(plan))
    finally:
        bar.close()
        failures.close()
    elapsed = time.perf_counter() - started
    ranks_dir.mkdir(exist_ok=True)
    atomic_write_json(
        ranks_dir / f"rank{dist.rank}.json",
        {
            "rank": dist.rank,
            "world_size": dist.world_size,
            "plan_id": all_plans[0].plan_id,
            "attempt": attempt,
            **counters,
        },
    )
    if not dist.is_main:
        return {"_rank_only": True}

    # Rank 0 merges once every rank of this attempt has finished and every planned shard is committed (a
    # marker can outlive its attempt; the commits of this plan cannot lie).
    deadline = time.time() + merge_timeout_s
    while dist.world_size > 1:
        done_ranks = _finished_ranks(ranks_dir, dist.world_size, all_plans[0].plan_id, attempt)
        missing_shards = len(writer.pending(all_plans))
        if len(done_ranks) == dist.world_size and not missing_shards:
            break
        if time.time() > deadline:
            raise StageError(
                f"only {len(done_ranks)}/{dist.world_size} ranks finished ({missing_shards} of "
                f"{len(all_plans)} shards not written) within "
                f"precompute.merge_timeout_s={merge_timeout_s:g}; rerun to finish and merge"
            )
        time.sleep(1.0)
    index = merge_indexes(store_root)
    store = open_store(store_root)
    stored_clips = set(store.clip_ids())
    # Records of every rank and every (resumed) run; a clip that failed once and is stored now is no failure.
    selected = set(clip_ids)
    failed = [
        r
        for r in read_failures(ctx.layout.failures_files())
        if r.clip_id in selected and r.clip_id not in stored_clips
    ]
    final = FailureTally(
        max_rate, attempted=len(clips), failures=[r for r in failed if counts_as_failure(r.reason)]
    )
    final.skipped = len(failed) - final.failed
    if final.exceeded():
        files = ctx.layout.failures_files()
        raise _failure_rate_error(
            final,
            total=len(clips),
            early=False,
            failures_where=str(files[0]) if len(files) == 1 else str(ctx.out_dir / "failures.rank*.jsonl"),
            store_root=store_root,
            committed_failures=final.failed,
        )
    stats = store.compute_stats()
    reasons: dict[str, int] = {}
    for rec in failed:
        reasons[rec.reason] = reasons.get(rec.reason, 0) + 1
    splits = {
        cid: assign_split(cid, by_id[cid].split, float(cfg.valid_fraction), int(cfg.split_seed))
        for cid in clip_ids
        if cid in stored_clips
    }
    atomic_write_json(ctx.out_dir / SPLITS_FILE, splits)
    # The run's base configuration: variants of later stages are named after what they change from it.
    atomic_write_json(
        ctx.layout.run_file,
        {
            "format_version": RUN_FORMAT_VERSION,
            "run_name": ctx.layout.name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "overrides": ctx.addressing_overrides(),
            **rv.base_record(ctx.cfg, ctx.choices),
        },
    )
    # This attempt is merged: its markers must not count for the next one.
    shutil.rmtree(ranks_dir, ignore_errors=True)
    size = sum(p.stat().st_size for p in store_root.rglob("*") if p.is_file())
    summary = (
        f"precompute: {len(stored_clips)} clips, {len(store)} windows of {teacher.embed_dim}-d "
        f"{tmeta['name']} embeddings in {store_root} ({size / 1e6:.1f} MB); failed clips: {final.failed} "
        f"({final.rate:.1%}, limit precompute.max_failure_rate={max_rate:g}), skipped by policy (silent or "
        f"too short): {final.skipped}"
    )
    return {
        "summary": summary,
        "teacher": tmeta,
        "store": {
            "root": str(store_root.relative_to(ctx.run_dir)),
            "backend": scfg.backend,
            "dtype": scfg.dtype,
            "shards": len(index.get("shards", index.get("parts", []))),
            "bytes": size,
            "windows": len(store),
            "dim": int(teacher.embed_dim),
            "student_audio": bool(cfg.store_student_audio),
        },
        "counts": {
            "manifest_clips": len(clips),
            "stored_clips": len(stored_clips),
            "windows": len(store),
            "failed_clips": len(failed),
            "failures_by_reason": reasons,
            "failure_rate": round(final.rate, 6),
            "policy_skipped_clips": final.skipped,
            "train_clips": sum(1 for s in splits.values() if s == "train"),
            "valid_clips": sum(1 for s in splits.values() if s == "valid"),
        },
        "throughput": {
            "seconds_this_run": round(elapsed, 3),
            "clips_per_s": round(counters["clips"] / max(elapsed, 1e-9), 2),
            "windows_per_s": round(counters["windows"] / max(elapsed, 1e-9), 2),
            "teacher_forward_fraction": round(counters["teacher_seconds"] / max(elapsed, 1e-9), 3),
        },
        "target_stats": {
            "mean_norm": float(np.linalg.norm(stats.mean)),
            "std_mean": float(np.mean(stats.std)),
        },
    }


STAGE = Stage(
    name="precompute",
    run=run,
    resumes=True,
    description="run the teacher over the corpus; write sharded per-window embeddings (+ student audio)",
)
