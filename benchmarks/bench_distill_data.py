"""Distillation data path: training-step throughput, measured side by side in one process.

(a) ours: teacher store (embedding + FLAC student audio of the same window) -> 2 DataLoader workers -> log-mel
    on the training device -> student forward/backward/step, vs the same student stepping on one batch already
    in memory (log-mel included). Target ratio >= 0.9 on CPU with 2 workers.
(b) upstream-style: per-sample decode of the original audio file, resample to 32 kHz and log-mel inside the
    workers, one .npz target per clip loaded with np.load, vs ours on the same windows and student.

Needs a precompute store: by default the demo run's (``./run_pipeline.sh``), else ``--run <output_root/run>``.

    .venv/bin/python benchmarks/bench_distill_data.py [--steps 40] [--batch 32]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import ROOT, write_result


class UpstreamStyleDataset:
    """Per-sample: decode the clip's file, resample to 32 kHz, cut the window, log-mel; target from .npz."""

    def __init__(self, items, npz_dir: Path, window_samples: int) -> None:
        self.items = items  # (path, start_seconds, npz name)
        self.npz_dir = npz_dir
        self.window_samples = window_samples
        self.frontend = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import numpy as np
        import torch

        from ssondo_train.audio import load_audio
        from ssondo_train.students.frontend import StudentFrontEnd

        if self.frontend is None:
            self.frontend = StudentFrontEnd()
        path, start, name = self.items[i]
        wav, _ = load_audio(path, 32000, validate=False)
        b = int(round(start * 32000))
        x = wav[b : b + self.window_samples]
        if x.shape[0] < self.window_samples:
            x = torch.nn.functional.pad(x, (0, self.window_samples - x.shape[0]))
        with torch.no_grad():
            mel = self.frontend(x[None])[0]
        target = torch.from_numpy(
            np.load(self.npz_dir / f"{name}.npz")["embed"].squeeze(0).astype(np.float32)
        )
        return {"logmel": mel, "target": target}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=ROOT / "outputs" / "demo")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    from ssondo_train.data.manifest import read_manifest
    from ssondo_train.sampling import EpochSampler, uniform_weights
    from ssondo_train.store import open_store
    from ssondo_train.students import build_student_with_projector
    from ssondo_train.students.frontend import StudentFrontEnd
    from ssondo_train.training.data import WindowDataset
    from ssondo_train.utils.io import read_json

    store_root = args.run / "precompute" / "store"
    store = open_store(store_root)
    done = read_json(args.run / "precompute" / "done.json")
    window_s = float(done["config"]["precompute"]["window_seconds"])
    n = round(window_s * 32000)
    torch.manual_seed(0)
    student = build_student_with_projector("mobilenetv3", teacher_dim=store.dim)
    frontend = StudentFrontEnd()
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)

    def step(mel, target):
        proj, _ = student(mel)
        loss = 1 - torch.nn.functional.cosine_similarity(proj, target, dim=-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    total = args.steps * args.batch
    sampler = EpochSampler(uniform_weights(len(store)), total, seed=0)
    ds = WindowDataset(store_root, np.zeros(len(store), dtype=np.int64), n)

    def run_ours() -> float:
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=args.batch,
            sampler=sampler,
            num_workers=args.workers,
            prefetch_factor=4,
            persistent_workers=False,
        )
        it = iter(loader)
        first = next(it)  # worker start-up is not part of the steady state
        step(frontend(first["audio"]).unsqueeze(1), first["target"])
        t0 = time.perf_counter()
        count = 0
        for batch in it:
            with torch.no_grad():
                mel = frontend(batch["audio"]).unsqueeze(1)
            step(mel, batch["target"])
            count += batch["audio"].shape[0]
        return count / (time.perf_counter() - t0)

    def run_in_memory() -> float:
        batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=args.batch)))
        step(frontend(batch["audio"]).unsqueeze(1), batch["target"])
        t0 = time.perf_counter()
        for _ in range(args.steps - 1):
            with torch.no_grad():
                mel = frontend(batch["audio"]).unsqueeze(1)
            step(mel, batch["target"])
        return (args.steps - 1) * args.batch / (time.perf_counter() - t0)

    # Upstream-style data: one .npz per window target, per-sample decode of the original files.
    work = Path(tempfile.mkdtemp(prefix="bench_distill_"))
    try:
        manifest = read_manifest(
            done["config"]["precompute"]["manifest"] or args.run / "prepare" / "corpus.csv"
        )
        paths = {c.clip_id: str(manifest.abs_path(c)) for c in manifest}
        idx = np.array(list(iter(sampler)))
        starts, _ = store.spans(idx)
        items = []
        emb = store.get_embeddings(idx)
        for j, (i, s) in enumerate(zip(idx.tolist(), starts.tolist(), strict=False)):
            clip_id, w = store.key(i)
            name = f"{clip_id}__{w}"
            np.savez(work / f"{name}.npz", embed=emb[j].astype(np.float32)[None])
            items.append((paths[clip_id], s, name))
        up_ds = UpstreamStyleDataset(items, work, n)

        def run_upstream() -> float:
            loader = torch.utils.data.DataLoader(
                up_ds, batch_size=args.batch, num_workers=args.workers, prefetch_factor=4
            )
            it = iter(loader)
            first = next(it)
            step(first["logmel"].unsqueeze(1), first["target"])
            t0 = time.perf_counter()
            count = 0
            for batch in it:
                step(batch["logmel"].unsqueeze(1), batch["target"])
                count += batch["target"].shape[0]
            return count / (time.perf_counter() - t0)

        results = {"ours": [], "in_memory": [], "upstream_style": []}
        for _ in range(2):  # interleaved repeats: this machine is noisy
            results["in_memory"].append(run_in_memory())
            results["ours"].append(run_ours())
            results["upstream_style"].append(run_upstream())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: max(v) for k, v in results.items()}
    write_result(
        "distill_data_path",
        {
            "student": "mobilenetv3",
            "teacher_dim": store.dim,
            "window_seconds": window_s,
            "batch_size": args.batch,
            "workers": args.workers,
            "steps": args.steps,
            "samples_per_s": {k: [round(x, 2) for x in v] for k, v in results.items()},
            "best_samples_per_s": {k: round(v, 2) for k, v in best.items()},
            "ratio_ours_vs_in_memory": round(best["ours"] / best["in_memory"], 3),
            "target_ratio_ours_vs_in_memory": 0.9,
            "ratio_ours_vs_upstream_style": round(best["ours"] / best["upstream_style"], 3),
        },
    )


if __name__ == "__main__":
    main()
