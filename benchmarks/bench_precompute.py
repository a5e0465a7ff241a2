"""Precompute efficiency: clips/s of the whole stage vs the teacher's forward pass alone.

Both sides process the same windows of the same clips with the same teacher and batch size, in one process:
(1) ``stage=precompute`` end to end (decode in workers, resample, window, teacher, shard writing, FLAC
student audio, index); (2) the teacher's ``embed`` on the same windows already in memory. Target: ratio
(1)/(2) >= 0.85 on CPU. Also reports bytes per stored embedding vs upstream's one-.npz-per-clip layout.

    .venv/bin/python benchmarks/bench_precompute.py [--clips 400]
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

from common import ROOT, demo_or_synthetic_manifest, write_result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--window", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir

    from ssondo_train.audio import cut_windows, load_audio, resample
    from ssondo_train.data.manifest import read_manifest
    from ssondo_train.stages import get_stage, run_stage
    from ssondo_train.store import open_store
    from ssondo_train.teachers import build_teacher

    work = Path(tempfile.mkdtemp(prefix="bench_precompute_"))
    try:
        manifest_path = demo_or_synthetic_manifest(work, args.clips)
        overrides = [
            "stage=precompute",
            "run_name=bench",
            f"paths.output_root={work / 'out'}",
            f"precompute.manifest={manifest_path}",
            f"precompute.window_seconds={args.window}",
            f"precompute.hop_seconds={args.window}",
            f"precompute.batch_size={args.batch}",
            f"precompute.num_workers={args.workers}",
            "precompute.clips_per_shard=200",
        ]
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
        t0 = time.perf_counter()
        done = run_stage(get_stage("precompute"), cfg, work / "out" / "bench")
        stage_s = time.perf_counter() - t0
        clips = done["counts"]["stored_clips"]
        windows = done["counts"]["windows"]

        # Teacher alone on the same windows, decoded beforehand.
        teacher = build_teacher("whisper_tiny").eval()
        manifest = read_manifest(manifest_path)
        batches, buf = [], []
        n = round(args.window * teacher.sample_rate)
        for clip in manifest:
            wav, sr = load_audio(manifest.abs_path(clip), None)
            buf.extend(cut_windows(resample(wav, sr, teacher.sample_rate), n, n, "pad").audio)
        batches = [torch.stack(buf[i : i + args.batch]) for i in range(0, len(buf), args.batch)]
        assert sum(len(b) for b in batches) == windows, (len(buf), windows)
        teacher.embed(batches[0])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            teacher.embed(b)
        teacher_s = time.perf_counter() - t0

        store = open_store(work / "out" / "bench" / "precompute" / "store")
        emb = store.get_embeddings([0])[0]
        npz = io.BytesIO()
        np.savez(npz, embed=emb.astype(np.float32)[None])
        store_bytes = done["store"]["bytes"]
        emb_bytes_per_window = emb.nbytes
        write_result(
            "precompute_efficiency",
            {
                "teacher": "whisper_tiny",
                "clips": clips,
                "windows": windows,
                "window_seconds": args.window,
                "batch_size": args.batch,
                "workers": args.workers,
                "stage_seconds_total": round(stage_s, 3),
                "stage_seconds_after_setup": done["throughput"]["seconds_this_run"],
                "teacher_only_seconds": round(teacher_s, 3),
                "stage_clips_per_s": round(clips / stage_s, 2),
                "stage_clips_per_s_after_setup": round(clips / done["throughput"]["seconds_this_run"], 2),
                "teacher_only_clips_per_s": round(clips / teacher_s, 2),
                "efficiency_total": round(teacher_s / stage_s, 3),
                "efficiency_after_setup": round(teacher_s / done["throughput"]["seconds_this_run"], 3),
                "target_efficiency": 0.85,
                "bytes": {
                    "store_total_with_flac_audio": store_bytes,
                    "embedding_bytes_per_window": emb_bytes_per_window,
                    "npz_bytes_per_clip_float32": len(npz.getvalue()),
                    "embedding_vs_npz": round(emb_bytes_per_window / len(npz.getvalue()), 3),
                },
                "note": "stage_seconds_total includes Python-side start-up of the stage and teacher loading; "
                "after_setup counts from the first decoded clip to the merged index.",
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
