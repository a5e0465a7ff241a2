"""CPU inference cost: MobileNetV3 student (PyTorch and ONNX Runtime) vs the M2D ViT-B teacher, one process.

Workload: 10-s clips, end to end from the waveform (front-end included on both sides):

* student: ``SsondoModel.get_embeddings`` (32 kHz waveform -> log-mel -> MobileNetV3 -> (B, 960)) in PyTorch,
  and the exported ``model.onnx`` (same graph + projector, conv-DFT log-mel) in ONNX Runtime;
* teacher: ``build_teacher("m2d", allow_random_init=True).embed`` (16 kHz waveform -> log-mel -> ViT-B/16,
  12 layers, 768-d -> (B, 3840)). The teacher is fed the same clip resampled to its native 16 kHz once,
  outside the timed region (S-SONDO's teachers consume 16-kHz audio).

Figures: latency at batch 1 (median ms per call) and throughput at batch 8 (clips/s). Subjects are run
round-robin so machine noise hits them alike; medians over rounds. Absolute times vary between runs on these
shared machines; the speed-up ratios are the figure of merit (target >= 20x for MobileNetV3).

    python benchmarks/bench_inference.py                 # 1 thread (default)
    python benchmarks/bench_inference.py --threads 2
Results: ``benchmarks/results/inference_latency.json`` (``runs[threads=<n>]``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "inference_latency.json"
CLIP_S = 10.0
STUDENT_SR, TEACHER_SR = 32_000, 16_000


def build_student(weights: str) -> tuple[torch.nn.Module, str]:
    """mn10 + projector with golden synthetic weights (realistic activation ranges) or PyTorch init."""
    from ssondo_train.students import build_student_with_projector, student_from_ssondo_config

    if weights == "golden":
        sys.path.insert(0, str(REPO))
        try:
            from tests.golden import golden_state_dict, training_config
        except ImportError:
            weights = "random"
        else:
            student = student_from_ssondo_config(training_config("mn10"))
            student.load_state_dict(
                {k.removeprefix("student_model."): v for k, v in golden_state_dict("mn10").items()}
            )
            return student.eval(), "golden synthetic mn10 weights (tests/golden.py)"
    return build_student_with_projector("mobilenetv3").eval(), "PyTorch default init"


def build_teacher_model() -> tuple[torch.nn.Module, str]:
    try:
        from ssondo_train.teachers import build_teacher
    except ImportError:
        build_teacher = None
    if build_teacher is not None:
        return build_teacher("m2d", allow_random_init=True).eval(), (
            "ssondo_train.teachers.build_teacher('m2d', allow_random_init=True): "
            "M2D ViT-B/16 encoder, random weights"
        )
    raise SystemExit("ssondo_train.teachers.build_teacher is not available")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run_rounds(
    subjects: dict[str, Callable[[], object]], inner: dict[str, int], rounds: int
) -> dict[str, float]:
    """Median seconds per call of each subject; round-robin, ``inner[name]`` calls per subject per round."""
    times: dict[str, list[float]] = {name: [] for name in subjects}
    for fn in subjects.values():  # warm-up (allocators, ORT graph optimisation, oneDNN primitives)
        fn()
    for _ in range(rounds):
        for name, fn in subjects.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            times[name].append((time.perf_counter() - t0) / inner[name])
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--weights", choices=["golden", "random"], default="golden")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import onnxruntime as ort

    from ssondo_train.export import export_onnx
    from ssondo_train.inference import SsondoModel

    student, student_weights = build_student(args.weights)
    model = SsondoModel(student).eval()
    teacher, teacher_desc = build_teacher_model()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(Path(tmp) / "model.onnx", student)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        onnx_mb = onnx_path.stat().st_size / 2**20

    gen = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    for batch in (1, args.batch):
        wav32 = 0.1 * torch.randn(batch, int(CLIP_S * STUDENT_SR), generator=gen)
        wav16 = AF.resample(wav32, STUDENT_SR, TEACHER_SR)
        feed = {"waveform": wav32.numpy()}

        def student_torch(wav32: torch.Tensor = wav32) -> torch.Tensor:
            with torch.inference_mode():
                return model.get_embeddings(wav32)

        def student_onnx(feed: dict = feed) -> list:
            return sess.run(["embedding"], feed)

        def teacher_torch(wav16: torch.Tensor = wav16) -> torch.Tensor:
            with torch.inference_mode():
                return teacher.embed(wav16)

        # equal outputs first: the ONNX graph must compute what PyTorch computes
        ref = student_torch().numpy()
        onnx_err = float(np.abs(student_onnx()[0] - ref).max() / max(1.0, np.abs(ref).max()))
        secs = run_rounds(
            {"student_torch": student_torch, "student_onnx": student_onnx, "teacher": teacher_torch},
            {"student_torch": 3, "student_onnx": 3, "teacher": 1},
            args.rounds,
        )
        results[f"batch{batch}"] = {
            **{f"{k}_ms": 1000 * v for k, v in secs.items()},
            **{f"{k}_clips_per_s": batch / v for k, v in secs.items()},
            "speedup_torch": secs["teacher"] / secs["student_torch"],
            "speedup_onnx": secs["teacher"] / secs["student_onnx"],
            "onnx_vs_torch_rel_max_err": onnx_err,
        }
        print(
            f"batch {batch}: "
            + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in secs.items())
            + f" | speed-up torch {results[f'batch{batch}']['speedup_torch']:.1f}x, "
            f"onnx {results[f'batch{batch}']['speedup_onnx']:.1f}x"
        )

    run = {
        "workload": f"{CLIP_S:.0f}-s clips, waveform to embedding, front-end included; latency = batch 1 "
        f"(ms per call), throughput = batch {args.batch} (clips/s); medians of {args.rounds} "
        "round-robin rounds",
        "threads": args.threads,
        "student": {
            "name": "MobileNetV3 mn10 (+ projector in the ONNX graph)",
            "weights": student_weights,
            "backbone_params": n_params(student.model),
            "projector_params": n_params(student.classification_head),
            "onnx_file_mb": round(onnx_mb, 1),
            "input": "32 kHz waveform",
        },
        "teacher": {
            "name": "m2d",
            "source": teacher_desc,
            "params": n_params(teacher),
            "input": "16 kHz waveform (the same clip resampled outside the timed region)",
            "stand_in": False,
        },
        "latency_batch1": results["batch1"],
        f"throughput_batch{args.batch}": results[f"batch{args.batch}"],
        "target_speedup": 20.0,
        "meets_target": min(
            results["batch1"]["speedup_torch"], results[f"batch{args.batch}"]["speedup_torch"]
        )
        >= 20.0,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data.setdefault("runs", {})[f"threads={args.threads}"] = run
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
