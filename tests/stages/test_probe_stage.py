"""stage=probe end to end on a small labelled set made here: embeddings, cache, results, heads, ckpts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssondo_train.data.manifest import ClipEntry, Manifest, write_manifest
from ssondo_train.probe import models as pm
from ssondo_train.probe.tasks import load_any_manifest
from ssondo_train.stages import get_stage, run_stage
from ssondo_train.stages.base import StageError
from ssondo_train.stages.probe import fit_export_probe, parse_task_spec
from ssondo_train.students import build_student

SR = 16000
CLASSES = ("chirp", "noise", "tone")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems on a shared 2-core box: OpenMP spin-waits of 2 threads only slow them down."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _signal(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    if kind == "tone":
        x = np.sin(2 * np.pi * rng.uniform(300, 1500) * t)
    elif kind == "chirp":
        f0, f1 = rng.uniform(200, 600), rng.uniform(3000, 7000)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))
    else:
        x = rng.standard_normal(len(t))
    return (rng.uniform(0.2, 0.6) * x / np.abs(x).max()).astype(np.float32)


def write_task(folder: Path, per_class: int = 10, bad: bool = True) -> Path:
    """``per_class`` clips of each class (6 train, 2 valid, 2 test), 0.6-1.4 s at 16 kHz, as an ssondo
    manifest; plus a corrupt file in train when ``bad``."""
    rng = np.random.default_rng(0)
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    clips = []
    for c in CLASSES:
        for i in range(per_class):
            split = "train" if i < per_class - 4 else "valid" if i < per_class - 2 else "test"
            seconds = float(rng.uniform(0.6, 1.4))
            sf.write(str(audio / f"{c}{i}.wav"), _signal(c, seconds, rng), SR)
            clips.append(ClipEntry(f"{c}{i}", f"{c}{i}.wav", seconds, SR, 1, (c,), split))
    if bad:
        (audio / "broken.wav").write_bytes(b"RIFF0000WAVEnot audio at all" * 8)
        clips.append(ClipEntry("broken", "broken.wav", 1.0, SR, 1, ("tone",), "train"))
    return write_manifest(folder / "shapes.csv", Manifest(audio, clips))


def test_task_specs_and_manifest_formats(tmp_path):
    assert parse_task_spec("spoken_digits") == ("demo", "spoken_digits", None, {})
    assert parse_task_spec("manifest:/x/y.csv") == ("manifest", "manifest", "/x/y.csv", {})
    assert parse_task_spec("gtzan:/d/gtzan;split_dir=/d/s") == (
        "benchmark",
        "gtzan",
        "/d/gtzan",
        {"split_dir": "/d/s"},
    )
    assert parse_task_spec("ESC-50:/d/esc") == ("benchmark", "esc50", "/d/esc", {})
    assert parse_task_spec({"task": "openmic", "root": "/o", "threshold": 0.4})[3] == {"threshold": 0.4}
    with pytest.raises(StageError, match="unknown task kind"):
        parse_task_spec("imagenet:/d")
    assert pm.parse_model_spec("export:out/run/export").label == "export-export"
    with pytest.raises(ValueError, match="unknown probe model"):
        pm.parse_model_spec("bert")

    task = load_any_manifest(write_task(tmp_path, per_class=5, bad=False))
    assert (task.name, task.task_type, task.protocol, task.class_names) == (
        "shapes",
        "multiclass",
        "splits",
        list(CLASSES),
    )
    assert [len(task.indices(s)) for s in ("train", "valid", "test")] == [3, 6, 6]  # per class 1/2/2
    plain = tmp_path / "plain.csv"
    plain.write_text(
        "clip_id,path,labels,fold\n"
        + "\n".join(f"c{i},audio/{CLASSES[i % 3]}0.wav,{CLASSES[i % 3]},{i % 2 + 1}" for i in range(6))
        + "\n"
    )
    folds = load_any_manifest(plain)
    assert folds.protocol == "folds" and folds.folds == [1, 2] and folds.n_classes == 3


@pytest.mark.slow
def test_probe_stage_end_to_end_with_cache_reuse(tmp_path, compose):
    manifest = write_task(tmp_path / "data")
    out_root = tmp_path / "outputs"
    overrides = [
        "stage=probe",
        "run_name=t",
        f"paths.output_root={out_root}",
        f"probe.tasks=[manifest:{manifest}]",
        "probe.models=[teacher,logmel,untrained]",
        "probe.window_seconds=1.0",
        "probe.seeds=[0,1]",
        "probe.batch_size=16",
        "probe.num_workers=0",
        "probe.device=cpu",
        "probe.bn_recalibration_items=64",
        "+probe.fit.weight_decays=[1.0,0.1,0.01,0.001]",
        "student.kwargs.width_mult=0.4",
    ]
    cfg = compose(overrides)
    run_dir = out_root / "t"
    done = run_stage(get_stage("probe"), cfg, run_dir)
    out = run_dir / "probe" / "default"  # no store in this run: the default variant's folder

    res = json.loads((out / "results.json").read_text())
    teacher, logmel, untrained = (res["results"][m]["shapes"] for m in ("teacher", "logmel", "untrained"))
    # 3 separable classes, 6 test clips: chance is 1/3; the log-mel statistics separate them
    assert logmel["metric"] == "accuracy" and logmel["mean"] >= 0.8, logmel
    assert untrained["mean"] > 0.5, untrained
    # the demo teacher: whisper tiny.en encoder, mean+std pooling over frames
    assert teacher["mean"] >= 0.8 and teacher["embedding_dim"] == 768, teacher
    assert res["teacher"] == "teacher" and teacher["retention_pct"] == pytest.approx(100.0)
    assert untrained["retention_pct"] == pytest.approx(100 * untrained["mean"] / teacher["mean"])
    assert logmel["embedding_dim"] == 256
    assert untrained["embedding_dim"] == build_student("mobilenetv3", width_mult=0.4).emb_size
    for row in (teacher, logmel, untrained):
        assert (
            row["n_clips"] == 30 and row["n_skipped"] == 1 and list(row["skipped_clips"]) == ["decode_error"]
        )
        assert row["seed_independent"] and row["ci95"] == 0.0 and row["cache_hit"] is False
        assert row["head_test_score"] == pytest.approx(row["mean"])  # same fit as the protocol's
    train = [c for c in load_any_manifest(manifest).clips if c.split == "train" and c.clip_id != "broken"]
    n_train_windows = sum(
        int(np.ceil(sf.info(str(c.path)).frames / SR)) for c in train
    )  # 1 s windows, tail padded
    assert untrained["bn_calibration_windows"] == n_train_windows and 18 < n_train_windows < 36
    assert logmel["windows"] == untrained["windows"] > n_train_windows

    md = (out / "results.md").read_text()
    assert (
        "| Model | shapes | Avg. | Retention |" in md and f"| logmel | {100 * logmel['mean']:.1f}±0.0 |" in md
    )
    avg = 100 * untrained["mean"]
    assert f"| untrained | {avg:.1f}±0.0 | {avg:.1f} | {untrained['retention_pct']:.1f}% |" in md
    assert "| teacher |" in md and "100.0% |" in md
    assert done["summary"].count("| logmel |") == 1 and "| untrained |" in done["summary"]
    assert done["results"]["logmel"]["shapes"]["mean"] == pytest.approx(logmel["mean"])
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("model,task,metric,mean") and len(csv_lines) == 4

    # heads: ssondo format, weights-only, normalisation folded -> same logits as the fitted probe on raw input
    cache = np.load(run_dir / logmel["cache"], allow_pickle=False)  # the run's shared embedding cache
    ids, x = [str(c) for c in cache["clip_ids"]], cache["embeddings"]
    assert x.shape == (30, 256) and list(cache["skipped_ids"]) == ["broken"]
    state = torch.load(out / logmel["head"], map_location="cpu", weights_only=True)
    assert sorted(state) == ["probe.linear_probe.bias", "probe.linear_probe.weight"]
    assert state["probe.linear_probe.weight"].shape == (3, 256)
    meta = json.loads((out / logmel["head"]).with_suffix(".json").read_text())
    assert meta["class_names"] == list(CLASSES) and meta["normalisation_folded"] and meta["model"] == "logmel"
    assert len(meta["normalisation"]["mean"]) == 256
    task = load_any_manifest(manifest)
    fitted, info = fit_export_probe(
        dict(zip(ids, x, strict=True)), task, 0, "cpu", 0.1, weight_decays=[1.0, 0.1, 0.01, 0.001]
    )
    logits = x @ state["probe.linear_probe.weight"].numpy().T + state["probe.linear_probe.bias"].numpy()
    np.testing.assert_allclose(logits, fitted.predict(x), rtol=1e-4, atol=1e-3)
    assert info["test_score"] == pytest.approx(logmel["mean"])

    # rerun with force=true: every embedding comes from the cache (files untouched, no model call)
    mtimes = {p: p.stat().st_mtime_ns for p in (run_dir / "cache" / "probe").rglob("*.npz")}
    assert len(mtimes) == 3
    run_stage(get_stage("probe"), cfg, run_dir, force=True)
    res2 = json.loads((out / "results.json").read_text())
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    for label in ("teacher", "logmel", "untrained"):
        assert res2["results"][label]["shapes"]["cache_hit"] is True
        assert res2["models"][label]["embedding_calls"] == 0
        assert res2["results"][label]["shapes"]["mean"] == pytest.approx(
            res["results"][label]["shapes"]["mean"]
        )


def _fake_distill_checkpoint(path: Path, teacher_dim: int = 12, extra_key: str | None = None) -> dict:
    """A distill-like Lightning checkpoint: LightningModule state dict + run config as plain containers."""
    from ssondo_train.students import build_student_from_section

    student_cfg = {
        "name": "mobilenetv3",
        "pretrained": None,
        "projector_hidden": 32,
        "projector_dropout": 0.2,
        "kwargs": {"width_mult": 0.4, "bn_momentum": 0.01},
    }
    torch.manual_seed(3)
    student = build_student_from_section(student_cfg, teacher_dim)
    state = {f"student.{k}": v.clone() for k, v in student.state_dict().items()}
    state["target_norm.mean"] = torch.linspace(-1, 1, teacher_dim)
    state["target_norm.std"] = torch.linspace(0.5, 2, teacher_dim)
    if extra_key:
        state[extra_key] = torch.zeros(3)
    ckpt = {
        "epoch": 1,
        "global_step": 4,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}}},
        "callbacks": {"ModelCheckpoint": {"best_model_path": "x"}},
        "ssondo_train_config": {"student": student_cfg, "seed": 42, "distill": {"target_norm": "zscore"}},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return {"student": student, "state": state}


def test_distill_checkpoint_loads_strictly_and_maps_projector_to_teacher_space(tmp_path):
    ref = _fake_distill_checkpoint(tmp_path / "last.ckpt")
    ck = pm.load_distill_checkpoint(tmp_path / "last.ckpt")
    got = ck.student.state_dict()
    for k, v in ref["student"].state_dict().items():
        assert torch.equal(got[k], v), k
    assert torch.equal(ck.target_std, ref["state"]["target_norm.std"]) and len(ck.sha256) == 64

    wav = torch.from_numpy(
        np.stack([_signal(k, 1.0, np.random.default_rng(i)) for i, k in enumerate(CLASSES)])
    )
    wav = torch.nn.functional.interpolate(wav[:, None], scale_factor=2, mode="linear")[:, 0]  # 32 kHz, 1 s
    proj = pm.checkpoint_embedder(tmp_path / "last.ckpt", "projector", 1.0).load("cpu")
    back = pm.checkpoint_embedder(tmp_path / "last.ckpt", "backbone", 1.0).load("cpu")
    e_proj, e_back = proj.embed(wav), back.embed(wav)
    assert e_proj.shape == (3, 12) and e_back.shape == (3, ref["student"].emb_size)
    with torch.no_grad():
        model = ref["student"].eval()
        emb = model.model(proj.logmel(wav))
        expected = (
            model.classification_head(emb) * ref["state"]["target_norm.std"]
            + ref["state"]["target_norm.mean"]
        )
    torch.testing.assert_close(e_back, emb[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e_proj, expected, rtol=1e-5, atol=1e-5)
    assert proj.digest() != back.digest()

    # strict: a student key the stored config does not build is an error, not silently dropped
    _fake_distill_checkpoint(tmp_path / "bad.ckpt", extra_key="student.model.extra")
    with pytest.raises(ValueError, match="do not match the stored student config"):
        pm.load_distill_checkpoint(tmp_path / "bad.ckpt")


def _fake_store(run_dir: Path, cfg, window_seconds: float) -> None:
    """A finished precompute stage as far as its readers look: done.json (with the identity of ``cfg``) and
    the store's meta.json / index.json."""
    from ssondo_train.runs.variants import identity

    pre = run_dir / "precompute"
    (pre / "store").mkdir(parents=True)
    done = {"identity": identity(cfg, "precompute"), "config": {}, "teacher": {"name": "whisper_tiny"}}
    (pre / "done.json").write_text(json.dumps(done))
    (pre / "store" / "meta.json").write_text(json.dumps({"extra": {"window_seconds": window_seconds}}))
    (pre / "store" / "index.json").write_text(json.dumps({"parts": []}))


@pytest.mark.slow
def test_student_models_need_distill_and_run_from_the_checkpoint(tmp_path, compose):
    manifest = write_task(tmp_path / "data", per_class=6, bad=False)
    out_root = tmp_path / "outputs"
    cfg = compose(
        [
            "stage=probe",
            "run_name=s",
            f"paths.output_root={out_root}",
            f"probe.tasks=[manifest:{manifest}]",
            "probe.models=[student,student_proj]",
            "probe.seeds=[0]",
            "probe.num_workers=0",
            "probe.device=cpu",
            "+probe.fit.weight_decays=[0.1,0.01]",
            "probe.export_heads=false",
        ]
    )
    run_dir = out_root / "s"
    with pytest.raises(StageError, match="stage=distill"):
        run_stage(get_stage("probe"), cfg, run_dir)
    _fake_distill_checkpoint(run_dir / "distill" / "default" / "checkpoints" / "last.ckpt")
    (run_dir / "distill" / "default" / "done.json").write_text(
        json.dumps({"checkpoints": {"last": "x", "best": None}})
    )
    _fake_store(run_dir, cfg, window_seconds=0.5)
    run_stage(get_stage("probe"), cfg, run_dir)
    res = json.loads((run_dir / "probe" / "default" / "results.json").read_text())
    assert res["models"]["student"]["window_seconds"] == 0.5  # the run's distillation window
    assert res["results"]["student_proj"]["shapes"]["embedding_dim"] == 12
    assert res["results"]["student"]["shapes"]["n_clips"] == 18
    # 2 windows per clip of 0.6-1.4 s at 0.5 s, at most 3
    assert 2 * 18 <= res["results"]["student"]["shapes"]["windows"] <= 3 * 18
    assert not (run_dir / "probe" / "default" / "heads").exists()
    # one forward pass gave both outputs, each cached exactly as its own embedder computes it
    assert res["results"]["student"]["shapes"]["embedded_with"] == "student_proj"
    assert res["results"]["student_proj"]["shapes"]["cache_hit"] is True
    task = load_any_manifest(manifest)
    clips = [(c.clip_id, str(c.path)) for c in task.clips]
    for label, output in (("student", "backbone"), ("student_proj", "projector")):
        ckpt = run_dir / "distill" / "default" / "checkpoints" / "last.ckpt"
        want = pm.embed_clips(pm.checkpoint_embedder(ckpt, output, 0.5).load(), clips, batch_size=64)
        cache = np.load(run_dir / res["results"][label]["shapes"]["cache"], allow_pickle=False)
        assert [str(c) for c in cache["clip_ids"]] == want.clip_ids
        np.testing.assert_allclose(cache["embeddings"], want.x, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_demo_task_needs_prepare_and_a_missing_export_module_is_skipped(tmp_path, compose, monkeypatch):
    out_root = tmp_path / "outputs"
    run_dir = out_root / "d"
    cfg = compose(
        [
            "stage=probe",
            "run_name=d",
            f"paths.output_root={out_root}",
            "probe.tasks=[shapes]",
            f"probe.models=[logmel,'export:{tmp_path / 'nowhere'}']",
            "probe.seeds=[0]",
            "probe.num_workers=0",
            "probe.window_seconds=1.0",
            "probe.device=cpu",
            "+probe.fit.weight_decays=[0.1,0.01]",
        ]
    )
    with pytest.raises(StageError, match="stage=prepare"):
        run_stage(get_stage("probe"), cfg, run_dir)
    write_task(run_dir / "prepare" / "tasks", per_class=5, bad=False)  # -> prepare/tasks/shapes.csv
    (run_dir / "prepare" / "done.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "ssondo_train.export", None)  # the export package "not ready yet"
    done = run_stage(get_stage("probe"), cfg, run_dir)
    label = "export-nowhere"
    assert label in done["skipped_models"] and "ssondo_train.export" in done["skipped_models"][label]
    assert done["results"]["logmel"]["shapes"]["n_clips"] == 15 and list(done["results"]) == ["logmel"]
    assert done["tasks"]["shapes"]["spec"] == "shapes"
    assert (
        f"- {label}: ssondo_train.export is not available"
        in (run_dir / "probe" / "default" / "results.md").read_text()
    )


def test_export_folder_embeds_like_its_backbone(tmp_path):
    from ssondo_train.export import save_safetensors
    from ssondo_train.students import build_student_with_projector

    torch.manual_seed(0)
    student = build_student_with_projector("mobilenetv3", teacher_dim=6, hidden_dim=16, width_mult=0.4).eval()
    save_safetensors(
        tmp_path / "exp",
        student,
        {
            "backbone": {"name": "mobilenetv3", "kwargs": {"width_mult": 0.4}},
            "preprocess": {"window_s": 0.5, "hop_s": 0.5, "norm_mean": -4.0, "norm_std": 4.0},
        },
    )
    emb = pm.export_embedder(tmp_path / "exp", None)
    assert emb.window_seconds == 0.5 and emb.window_samples == 16000
    wav = torch.randn(2, 16000) * 0.1
    got = emb.load("cpu").embed(wav)
    mel = (emb.frontend(wav).unsqueeze(1) + 4.0) / 4.0
    with torch.no_grad():
        torch.testing.assert_close(got, student.model(mel)[:, 0], rtol=1e-5, atol=1e-5)
    assert pm.export_embedder(tmp_path / "exp", 1.0).digest() != emb.digest()
    with pytest.raises(FileNotFoundError, match="config.json"):
        pm.export_embedder(tmp_path / "missing", None)


@pytest.mark.slow
def test_a_real_lightning_distill_checkpoint_loads_weights_only(tmp_path, compose):
    """The checkpoint Lightning writes for DistillModule (loops, callbacks, optimiser and scheduler states,
    the run config) goes through the weights-only loader, and the student comes back exactly."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from omegaconf import OmegaConf

    from ssondo_train.losses import build_loss
    from ssondo_train.students import build_student_from_section
    from ssondo_train.students.frontend import StudentFrontEnd
    from ssondo_train.training.module import DistillModule, OptimConfig, TargetNorm
    from ssondo_train.training.schedule import WarmupRampdown

    cfg = compose(["stage=distill", "student.kwargs.width_mult=0.4", "student.projector_hidden=32"])
    dim = 8
    torch.manual_seed(0)
    student = build_student_from_section(cfg.student, dim)
    norm = TargetNorm("zscore", torch.randn(dim), torch.rand(dim) + 0.5)
    module = DistillModule(
        student,
        StudentFrontEnd(),
        build_loss("cosine"),
        norm,
        OptimConfig(updates_per_epoch=2, schedule=WarmupRampdown(1, 1, 2, 0.1)),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    batches = [
        {"audio": torch.randn(4, 16000), "target": torch.randn(4, dim), "cluster": torch.zeros(4).long()}
        for _ in range(2)
    ]
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=str(tmp_path), monitor="val/kd_loss", save_last=True)],
    )
    trainer.fit(module, loader, loader)
    ck = pm.load_distill_checkpoint(tmp_path / "last.ckpt")
    trained = module.student.state_dict()
    assert all(torch.equal(v, trained[k].cpu()) for k, v in ck.student.state_dict().items())
    # The loader folds the length scale of the scale-free cosine loss into the std (teacher = proj·std+mean).
    assert float(norm.scale) != 1.0
    torch.testing.assert_close(ck.target_std, norm.std * norm.scale)
    torch.testing.assert_close(ck.target_mean, norm.mean)
    assert ck.config["student"]["kwargs"]["width_mult"] == 0.4 and ck.ignored_keys == []


def test_task_digest_follows_the_files_not_where_the_dataset_lives(tmp_path):
    import shutil

    from ssondo_train.stages.probe import task_digest

    manifest = write_task(tmp_path / "a" / "data", per_class=6, bad=False)
    digest = task_digest(load_any_manifest(manifest))
    moved = tmp_path / "b" / "elsewhere"
    shutil.copytree(tmp_path / "a" / "data", moved)
    assert task_digest(load_any_manifest(moved / "shapes.csv")) == digest
    link = tmp_path / "link"
    link.symlink_to(moved, target_is_directory=True)
    assert task_digest(load_any_manifest(link / "shapes.csv")) == digest
    with open(moved / "audio" / "tone0.wav", "ab") as fh:  # a re-rendered file
        fh.write(b"\0" * 64)
    assert task_digest(load_any_manifest(moved / "shapes.csv")) != digest
