"""CUDA checks in one short run (for a lent GPU machine): golden equality with TF32 off, bf16 autocast of
teacher embedding and student training, and their throughput next to fp32, side by side in one process.

Writes ``gpu_check.json`` into ``$OUT`` (or ``benchmarks/results/``). Needs only torch, torchaudio, numpy and
lightning (no Hydra): it drives the components directly.

    python3 benchmarks/gpu_check.py
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(fn, repeats: int, sync) -> float:
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    import numpy as np
    import torch

    smoke = "--cpu-smoke" in sys.argv  # check the script itself on a CPU with tiny sizes
    assert smoke or torch.cuda.is_available(), "no CUDA device"
    dev = torch.device("cpu" if smoke else "cuda")
    sync = (lambda: None) if smoke else torch.cuda.synchronize
    amp = "cpu" if smoke else "cuda"
    B_T, B_S, N_KM = (4, 4, 2000) if smoke else (64, 120, 100_000)
    out: dict = {"device": "cpu" if smoke else torch.cuda.get_device_name(0), "torch": torch.__version__}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    # 1. Golden equality on the GPU, float32, TF32 off.
    from ssondo_train.students import student_from_ssondo_config
    from ssondo_train.students.frontend import StudentFrontEnd, segment_windows
    from tests.golden import assert_close, expected, golden_input, golden_state_dict, training_config

    golden = {}
    exp = expected("student")
    wav = torch.from_numpy(golden_input("student_input_32k_25s")).to(dev)
    fe = StudentFrontEnd().to(dev)
    mel = fe(segment_windows(wav, tail="drop"))
    for name in ("mn10", "eres2net", "dymn10"):
        model = student_from_ssondo_config(training_config(name))
        sd = {k[len("student_model.") :]: v for k, v in golden_state_dict(name).items()}
        model.load_state_dict(sd, strict=True)
        model = model.to(dev).eval()
        x = mel[:, :1] if name == "dymn10" else mel
        with torch.no_grad():
            proj, emb = model(x)
        try:
            assert_close(emb.cpu(), "student", f"{name}_emb", exp[f"{name}_emb"])
            assert_close(proj.cpu(), "student", f"{name}_proj", exp[f"{name}_proj"])
            golden[name] = "pass"
        except AssertionError as err:
            golden[name] = f"FAIL: {err}"
    m2d_exp = expected("m2d")
    import tempfile

    from ssondo_train.teachers import load_m2d

    with tempfile.TemporaryDirectory() as tmp:
        torch.save(golden_state_dict("m2d"), f"{tmp}/m2d.pth")
        m2d = load_m2d(f"{tmp}/m2d.pth").to(dev).eval()
    twav = torch.from_numpy(golden_input("teacher_input_16k_10s")).to(dev)
    with torch.no_grad():
        emb = m2d.embed(twav)
    try:
        assert_close(emb.cpu(), "m2d", "emb_10s", m2d_exp["emb_10s"])
        golden["m2d"] = "pass"
    except AssertionError as err:
        golden["m2d"] = f"FAIL: {err}"
    out["golden_fp32_tf32_off"] = golden

    # 2. Teacher embedding throughput (precompute): ViT-B M2D, 10-s clips, fp32 vs bf16 autocast.
    torch.manual_seed(0)
    clips = torch.randn(B_T, 160000, device=dev) * 0.1
    with torch.no_grad():
        ref = m2d.embed(clips[:4]).float()
        with torch.autocast(amp, dtype=torch.bfloat16):
            low = m2d.embed(clips[:4]).float()
    cos = torch.nn.functional.cosine_similarity(ref, low, dim=-1).min().item()
    rel = ((ref - low).norm() / ref.norm()).item()

    def teacher_fp32():
        with torch.no_grad():
            m2d.embed(clips)

    def teacher_bf16():
        with torch.no_grad(), torch.autocast(amp, dtype=torch.bfloat16):
            m2d.embed(clips)

    t32 = timed(teacher_fp32, 1 if smoke else 3, sync)
    t16 = timed(teacher_bf16, 1 if smoke else 5, sync)
    out["teacher_m2d_vitb_10s"] = {
        "batch": B_T,
        "fp32_clips_per_s": round(B_T / t32, 1),
        "bf16_clips_per_s": round(B_T / t16, 1),
        "bf16_speedup": round(t32 / t16, 2),
        "bf16_vs_fp32_min_cosine": round(cos, 6),
        "bf16_vs_fp32_rel_error": rel,
    }

    # 3. Student training step (front-end on device + forward/backward/step): fp32 vs bf16 autocast.
    from ssondo_train.losses import build_loss
    from ssondo_train.students import build_student_with_projector

    loss_fn = build_loss("cosine")
    steps = {}
    for name in ("mobilenetv3", "dymn", "eres2net"):
        torch.manual_seed(0)
        model = build_student_with_projector(name, teacher_dim=3840).to(dev).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        audio = torch.randn(B_S, 320000, device=dev) * 0.1
        target = torch.randn(B_S, 3840, device=dev)

        def step(bf16: bool, model=model, opt=opt, audio=audio, target=target):
            with torch.no_grad():
                x = fe(audio).unsqueeze(1)
            ctx = torch.autocast(amp, dtype=torch.bfloat16) if bf16 else torch.autocast(amp, enabled=False)
            with ctx:
                proj, _ = model(x)
            loss = loss_fn(proj.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            return float(loss)

        l32 = step(False)
        t32 = timed(lambda: step(False), 1 if smoke else 5, sync)
        l16 = step(True)
        t16 = timed(lambda: step(True), 1 if smoke else 5, sync)
        steps[name] = {
            "batch": B_S,
            "window_s": 10,
            "fp32_samples_per_s": round(B_S / t32, 1),
            "bf16_samples_per_s": round(B_S / t16, 1),
            "bf16_speedup": round(t32 / t16, 2),
            "loss_fp32": round(l32, 5),
            "loss_bf16": round(l16, 5),
            "finite": bool(np.isfinite(l16)),
        }
    out["student_train_step"] = steps

    # 4. Lightning bf16-mixed: a few DistillModule steps on in-memory batches.
    import lightning as L

    from ssondo_train.training.module import DistillModule, OptimConfig, TargetNorm

    class Mem(torch.utils.data.Dataset):
        def __len__(self):
            return 64 if smoke else 256

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {
                "audio": torch.randn(64000, generator=g) * 0.1,
                "target": torch.randn(3840, generator=g),
                "cluster": torch.tensor(i % 4),
                "index": torch.tensor(i),
            }

    stats_mean, stats_std = torch.zeros(3840), torch.ones(3840)
    module = DistillModule(
        build_student_with_projector("mobilenetv3", teacher_dim=3840),
        StudentFrontEnd(),
        build_loss("cosine"),
        TargetNorm("zscore", stats_mean, stats_std),
        OptimConfig(updates_per_epoch=8),
        seed=0,
    )
    loader = torch.utils.data.DataLoader(Mem(), batch_size=32, num_workers=2)
    trainer = L.Trainer(
        accelerator="cpu" if smoke else "gpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        gradient_clip_val=5.0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=torch.utils.data.DataLoader(Mem(), 64))
    out["lightning_bf16_mixed"] = {
        "steps": int(trainer.global_step),
        "seconds": round(time.perf_counter() - t0, 2),
        "val_cosine": float(trainer.callback_metrics.get("val/cosine", float("nan"))),
    }

    # 5. k-means on the GPU (torch backend).
    from ssondo_train.clustering import fit_kmeans

    x = np.random.default_rng(0).standard_normal((N_KM, 768)).astype(np.float32)
    t0 = time.perf_counter()
    km = fit_kmeans(x, k=50, metric="cosine", n_init=1, max_iter=30, device=str(dev))
    out["kmeans_gpu"] = {
        "n": N_KM,
        "dim": 768,
        "k": 50,
        "iterations": km.n_iter,
        "seconds": round(time.perf_counter() - t0, 2),
    }

    if smoke:
        print(json.dumps(out, indent=2))
        return
    dest = Path(os.environ.get("OUT") or ROOT / "benchmarks" / "results")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "gpu_check.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
