"""stage=precompute: run a teacher over a corpus and write per-window embeddings to a sharded store.

Each clip is decoded, down-mixed and cut into windows at the teacher's rate (and, optionally, the same spans
at the student's rate, stored with the embedding so distillation reads one sequential stream). Decoding runs
in DataLoader workers while the teacher runs batched in the main process. Shards are planned from the ordered
manifest, written under temporary names and committed when complete, so a killed run resumes where it
stopped and produces the same store. With several ranks (torchrun / SLURM) each writes its own shards and rank
0 merges the index.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssondo_train.runs.layout import RANKS_DIR, RUN_FORMAT_VERSION, SPLITS_FILE
from ssondo_train.stages.base import Stage, StageContext, StageError

log = logging.getLogger(__name__)

STUDENT_SAMPLE_RATE = 32000


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
        except Exception as err:  # a broken file must never stop a long job
            out.error, out.reason = f"{type(err).__name__}: {err}", "unexpected_error"
        return out


def _pad_rows(x, rows: int):
    import torch

    return torch.cat([x, x.new_zeros((rows - x.shape[0], x.shape[1]))]) if x.shape[0] < rows else x


def _collate_one(items: list[ClipWindows]) -> ClipWindows:
    return items[0]


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run(ctx: StageContext) -> dict[str, Any]:
    import numpy as np
    import torch
    from tqdm import tqdm

    from ssondo_train.config.groups import TeacherConfig
    from ssondo_train.config.schema import to_schema
    from ssondo_train.data.manifest import read_manifest
    from ssondo_train.data.splits import assign_split
    from ssondo_train.runs import variants as rv
    from ssondo_train.store import (
        FailureLog,
        StoreWriter,
        TeacherMeta,
        WindowRecord,
        merge_indexes,
        open_store,
        read_failures,
    )
    from ssondo_train.teachers import build_teacher
    from ssondo_train.utils.dist import dist_info
    from ssondo_train.utils.io import atomic_write_json

    cfg = ctx.cfg.precompute
    scfg = ctx.cfg.store
    dist = dist_info()
    manifest_path = Path(cfg.manifest) if cfg.manifest else ctx.layout.corpus_manifest()
    if not cfg.manifest:
        ctx.require_done("prepare")
    manifest = read_manifest(manifest_path)
    clips = list(manifest)
    if cfg.max_clips:
        clips = clips[: int(cfg.max_clips)]
    if not clips:
        raise StageError(f"manifest {manifest_path} has no clips")

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
    plans = writer.plan_shards(
        clip_ids, clips_per_shard=int(cfg.clips_per_shard), rank=dist.rank, world_size=dist.world_size
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

    def records_for(plan) -> Iterator[WindowRecord]:
        buf: list[tuple[ClipWindows, int]] = []

        def flush() -> Iterator[WindowRecord]:
            if not buf:
                return
            emb = embed(torch.stack([item.teacher[w] for item, w in buf]))
            bad = ~np.isfinite(emb).all(axis=1)
            for (item, w), vec, is_bad in zip(buf, emb, bad, strict=False):
                if is_bad:
                    failures.append(item.clip_id, item.path, "teacher_non_finite", f"window {w}")
                    continue
                audio = item.student[w].numpy() if item.student is not None else None
                yield WindowRecord(item.clip_id, w, item.starts[w], item.ends[w], vec, audio=audio)
            counters["windows"] += len(buf)
            buf.clear()

        for expected in plan.clip_ids:
            item = next(clip_iter)
            if item.clip_id != expected:
                raise StageError(f"internal ordering error: got {item.clip_id}, expected {expected}")
            bar.update(1)
            if item.error is not None:
                counters["failed"] += 1
                failures.append(item.clip_id, item.path, item.reason or "error", item.error)
                log.warning("skipping %s (%s): %s", item.clip_id, item.reason, item.error)
                continue
            counters["clips"] += 1
            for w in range(item.teacher.shape[0]):
                buf.append((item, w))
                if len(buf) >= batch_size:
                    yield from flush()
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(
                clips_s=f"{counters['clips'] / elapsed:.1f}",
                windows_s=f"{counters['windows'] / elapsed:.1f}",
                refresh=False,
            )
        yield from flush()

    try:
        for plan in pending:
            writer.write_shard(plan, records_for(plan))
    finally:
        bar.close()
        failures.close()
    elapsed = time.perf_counter() - started
    (ctx.out_dir / RANKS_DIR).mkdir(exist_ok=True)
    atomic_write_json(ctx.out_dir / RANKS_DIR / f"rank{dist.rank}.json", {"rank": dist.rank, **counters})
    if not dist.is_main:
        return {"_rank_only": True}

    # Rank 0 merges once every rank's shards are committed.
    deadline = time.time() + float(cfg.merge_timeout_s)
    while True:
        done_ranks = list((ctx.out_dir / RANKS_DIR).glob("rank*.json"))
        if len(done_ranks) >= dist.world_size:
            break
        if time.time() > deadline:
            raise StageError(f"only {len(done_ranks)}/{dist.world_size} ranks finished; rerun to merge")
        time.sleep(2.0)
    index = merge_indexes(store_root)
    store = open_store(store_root)
    stats = store.compute_stats()
    failed = read_failures(ctx.layout.failures_files())
    reasons: dict[str, int] = {}
    for rec in failed:
        reasons[rec.reason] = reasons.get(rec.reason, 0) + 1
    stored_clips = set(store.clip_ids())
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
    size = sum(p.stat().st_size for p in store_root.rglob("*") if p.is_file())
    summary = (
        f"precompute: {len(stored_clips)} clips, {len(store)} windows of {teacher.embed_dim}-d "
        f"{tmeta['name']} embeddings in {store_root} ({size / 1e6:.1f} MB); {len(failed)} clips skipped"
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
    description="run the teacher over the corpus; write sharded per-window embeddings (+ student audio)",
)
