"""Read throughput of the teacher-embedding stores (wds, h5) vs the upstream layout (one .npz per clip).

Same N embeddings of D dims in every layout; a torch DataLoader with the same number of workers, batch size
and a random order (as training with a sampler would); samples/s measured after the first batch (worker
start-up excluded) with the page cache warm (all files read once before timing), best of ``--repeats``.
Also reports bytes per stored embedding. Writes ``benchmarks/results/store_read.json``.

    python benchmarks/bench_store_read.py [--n 20000] [--dim 3840] [--workers 2] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ssondo_train.store import StoreWriter, TeacherMeta, WindowRecord, merge_indexes, open_store

RESULTS = Path(__file__).resolve().parent / "results" / "store_read.json"


class NpzDataset(Dataset):
    """Upstream layout: ``np.load(<dir>/<clip>.npz)["embed"]`` per item."""

    def __init__(self, folder: Path, clip_ids: list[str]) -> None:
        self.paths = [str(folder / f"{c}.npz") for c in clip_ids]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        emb = np.load(self.paths[i])["embed"].squeeze(0)
        return {"index": i, "embedding": torch.from_numpy(emb)}


def _open_dataset(root: Path, keep_dtype: bool = False):
    return open_store(root).dataset(embedding_dtype=None if keep_dtype else torch.float32)


def make_data(n: int, dim: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    clip_ids = [f"yt{i:07d}x_{(i % 50) * 10:.3f}_{(i % 50) * 10 + 10:.3f}" for i in range(n)]
    return clip_ids, (rng.standard_normal((n, dim), dtype=np.float32) * 0.5)


def write_npz(folder: Path, clip_ids: list[str], emb: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for c, e in zip(clip_ids, emb, strict=True):
        np.savez(folder / f"{c}.npz", embed=e[None])  # MATPAC shape (1, D), as upstream


def write_store(root: Path, backend: str, dtype: str, clip_ids: list[str], emb: np.ndarray) -> None:
    w = StoreWriter(
        root,
        backend,
        "shard",
        max_count=100_000,
        max_bytes=4 << 30,
        dtype=dtype,
        meta={"teacher": TeacherMeta(name="bench", dim=emb.shape[1], sample_rate=16000)},
    )
    pos = {c: i for i, c in enumerate(clip_ids)}
    for plan in w.plan_shards(clip_ids, clips_per_shard=5000):
        w.write_shard(plan, (WindowRecord(c, 0, 0.0, 10.0, emb[pos[c]]) for c in plan.clip_ids))
    merge_indexes(root)


def warm(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 22):
                    pass


def time_loader(
    ds,
    n: int,
    workers: int,
    batch: int,
    seed: int,
    ref: np.ndarray,
    shuffle: bool = True,
    batched: bool = False,
) -> float:
    """samples/s over one epoch, excluding the first batch; checks every batch against ``ref``.

    ``batched``: use the store's ``loader`` (BatchSampler + get_batch) instead of DataLoader(batch_size=...).
    """
    sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed)) if shuffle else None
    if batched and shuffle:
        dl = ds.loader(batch, sampler=sampler, num_workers=workers)
    elif batched:  # streaming store loader: order comes from the stream (shuffled parts + buffer)
        dl = ds.loader(batch, num_workers=workers)
    else:
        dl = DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers)
    it = iter(dl)
    first = next(it)
    seen = len(first["index"])
    t0 = time.perf_counter()
    for b in it:
        seen += len(b["index"])
        k = int(b["index"][0])
        if not np.allclose(
            b["embedding"][0].numpy(), ref[k], atol=2e-3 * max(1.0, float(np.abs(ref[k]).max()))
        ):
            raise AssertionError(f"wrong embedding for index {k}")
    dt = time.perf_counter() - t0
    if seen != n:
        raise AssertionError(f"epoch saw {seen} samples, expected {n}")
    return (n - len(first["index"])) / dt


def dir_bytes(folder: Path, pattern: str) -> tuple[int, int]:
    files = [p for p in folder.glob(pattern) if p.is_file()]
    return sum(p.stat().st_size for p in files), sum(p.stat().st_blocks * 512 for p in files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=3840)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tmp", type=str, default="/tmp")
    ap.add_argument("--out", type=str, default=str(RESULTS))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_store_read_", dir=args.tmp))
    try:
        clip_ids, emb = make_data(args.n, args.dim)
        t = time.perf_counter()
        write_npz(work / "npz", clip_ids, emb)
        write_s = {"npz_float32": time.perf_counter() - t}
        variants = [("wds", "float16"), ("wds", "float32"), ("h5", "float16"), ("h5", "float32")]
        for backend, dtype in variants:
            t = time.perf_counter()
            write_store(work / f"{backend}_{dtype}", backend, dtype, clip_ids, emb)
            write_s[f"{backend}_{dtype}"] = time.perf_counter() - t
        warm(work)

        npz_app, npz_alloc = dir_bytes(work / "npz", "*.npz")
        sizes = {
            "npz_float32": {
                "bytes_per_embedding": npz_app / args.n,
                "allocated_bytes_per_embedding": npz_alloc / args.n,
            }
        }
        for backend, dtype in variants:
            app, alloc = dir_bytes(work / f"{backend}_{dtype}", "shard-*")
            sizes[f"{backend}_{dtype}"] = {
                "bytes_per_embedding": app / args.n,
                "allocated_bytes_per_embedding": alloc / args.n,
                "ratio_vs_npz": app / npz_app,
            }

        # (name, dataset factory, batched): "batched" = store.dataset().loader(...) (get_batch per worker
        # call); otherwise a plain DataLoader(batch_size=64), which uses the dataset's __getitems__.
        loaders = [("npz_float32", lambda: NpzDataset(work / "npz", clip_ids), False)]
        for backend, dtype in variants:
            make = partial(_open_dataset, work / f"{backend}_{dtype}")
            loaders.append((f"{backend}_{dtype}", make, True))
            loaders.append((f"{backend}_{dtype}_getitems", make, False))
            if dtype == "float16":  # float16 tensors out (upcast on the device): half the bytes per batch
                keep = partial(_open_dataset, work / f"{backend}_{dtype}", True)
                loaders.append((f"{backend}_{dtype}_f16out", keep, True))
        best: dict[str, float] = {}
        runs: dict[str, list[float]] = {}
        for rep in range(args.repeats):  # interleaved repeats: machine noise hits every layout alike
            for name, make, batched in loaders:
                sps = time_loader(
                    make(), args.n, args.workers, args.batch, seed=rep, ref=emb, batched=batched
                )
                best[name] = max(best.get(name, 0.0), sps)
                runs.setdefault(name, []).append(sps)
                print(f"rep {rep} {name:24s} {sps:10.0f} samples/s", flush=True)
        stream: dict[str, float] = {}
        for backend, dtype in variants:
            ds = open_store(work / f"{backend}_{dtype}").stream(shuffle=True, shuffle_buffer=2048)
            stream[f"{backend}_{dtype}"] = time_loader(
                ds, args.n, args.workers, args.batch, 0, emb, shuffle=False, batched=True
            )

        base = best["npz_float32"]
        result = {
            "benchmark": "store_read",
            "config": {
                "n": args.n,
                "dim": args.dim,
                "workers": args.workers,
                "batch": args.batch,
                "loader": "<store>: dataset().loader() (BatchSampler + get_batch), float32 tensors out; "
                "<store>_f16out: same with embedding_dtype=None (float16 tensors out); <store>_getitems: "
                "DataLoader(batch_size) over the map-style dataset (__getitems__); npz: "
                "DataLoader(batch_size) with np.load per item",
                "order": "random (RandomSampler)",
                "repeats": args.repeats,
                "page_cache": "warm",
                "clips_per_shard": 5000,
            },
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
            },
            "random_access_samples_per_s": {k: round(v, 1) for k, v in best.items()},
            "ratio_vs_npz (best / best)": {
                k: round(v / base, 2) for k, v in best.items() if k != "npz_float32"
            },
            "ratio_vs_npz (median over repeats of same-repeat ratios)": {
                k: round(float(np.median(np.array(v) / np.array(runs["npz_float32"]))), 2)
                for k, v in runs.items()
                if k != "npz_float32"
            },
            "samples_per_s_each_repeat": {k: [round(x) for x in v] for k, v in runs.items()},
            "streaming_samples_per_s (stream().loader(), shuffled parts + buffer 2048; not random access)": {
                k: round(v, 1) for k, v in stream.items()
            },
            "bytes": {k: {kk: round(vv, 3) for kk, vv in v.items()} for k, v in sizes.items()},
            "write_seconds": {k: round(v, 2) for k, v in write_s.items()},
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
