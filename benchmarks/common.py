"""Shared helpers of the benchmark scripts: a corpus to measure on and JSON result writing."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))


def machine() -> dict:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))
    return path


def demo_or_synthetic_manifest(workdir: Path, n_clips: int) -> Path:
    """The first ``n_clips`` of the demo corpus if it was built, else synthetic clips of the same shape."""
    from ssondo_train.data.manifest import Manifest, read_manifest, write_manifest

    demo = ROOT / "outputs" / "demo" / "prepare" / "corpus.csv"
    if demo.exists():
        m = read_manifest(demo)
        sub = Manifest(root=m.root, clips=list(m)[:n_clips])
        out = workdir / "corpus.csv"
        write_manifest(out, sub)
        return out
    from tests.pipeline.conftest import write_tiny_corpus

    return write_tiny_corpus(workdir, n_clips=n_clips, bad=False)
