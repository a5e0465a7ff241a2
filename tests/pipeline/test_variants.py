"""Many students and ablations from one teacher store: variants side by side, sweeps, force, comparisons,
identity refusals and the conversion of 0.1 run folders."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.pipeline.conftest import TINY_TRAINING, TINY_WINDOW, cli

pytestmark = pytest.mark.slow

# The run's "experiment": what the store and the default variant are made with.
TRAIN = [*TINY_TRAINING, "distill.epochs=2", "cluster.k=3"]


def md5_tree(folder: Path) -> dict[str, str]:
    """relative path -> md5 of every file under ``folder``; lock files (they only name a pid) and the store's
    ``.cache/`` (derived data readers add: verified parts, statistics of a split) are left out."""
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock" and ".cache" not in p.relative_to(folder).parts
    }


@pytest.fixture(scope="module")
def run(tiny_corpus, tmp_path_factory) -> tuple[Path, list[str]]:
    """A run with its store and default clustering; returns (output root, the run's overrides)."""
    root = tmp_path_factory.mktemp("variants")
    base = [
        "run_name=t",
        f"paths.output_root={root}",
        f"precompute.manifest={tiny_corpus}",
        "precompute.valid_fraction=0.2",
        *TINY_WINDOW,
        *TRAIN,
    ]
    for stage in ("precompute", "cluster"):
        res = cli(f"stage={stage}", *base)
        assert res.returncode == 0, res.stderr[-3000:]
    return root, base


def test_students_and_ablations_share_one_store(run, tmp_path):
    root, base = run
    t = root / "t"
    store_before = md5_tree(t / "precompute")
    assert (t / "cluster" / "default" / "done.json").is_file()

    # 1. the run's default recipe, then an ablation: side by side, named after what differs
    res = cli("stage=distill", *base)
    assert res.returncode == 0, res.stderr[-3000:]
    default_files = md5_tree(t / "distill" / "default")
    res = cli("stage=distill", *base, "sampler=random")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (t / "distill").iterdir()) == ["default", "sampler=random"]
    assert md5_tree(t / "distill" / "default") == default_files
    random_done = json.loads((t / "distill" / "sampler=random" / "done.json").read_text())
    assert random_done["variant"] == "sampler=random" and random_done["sampler"] == "random"
    assert random_done["clusters"] == 0 and random_done["cluster_variant"] is None  # random needs no clusters
    assert random_done["checkpoints"]["last"] == "distill/sampler=random/checkpoints/last.ckpt"

    # 2. a sweep: the two combinations that exist are found done, the two others are trained
    before_sweep = {v: md5_tree(t / "distill" / v) for v in ("default", "sampler=random")}
    res = cli("-m", "stage=distill", *base, "sampler=bds,random", "student=mobilenetv3,eres2net")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (res.stdout + res.stderr).count("is already done") == 2
    assert sorted(p.name for p in (t / "distill").iterdir()) == [
        "default",
        "sampler=random",
        "student=eres2net",
        "student=eres2net,sampler=random",
    ]
    for name, files in before_sweep.items():
        assert md5_tree(t / "distill" / name) == files, name
    eres = json.loads((t / "distill" / "student=eres2net" / "done.json").read_text())
    assert eres["student"] == "eres2net" and eres["inputs"]["cluster/default"]
    assert list((t / "multirun").iterdir())[0].joinpath("multirun.yaml").is_file()

    # 3. k-means results of another k coexist; a variant using them is named after them
    res = cli("stage=cluster", *base, "cluster.k=4")
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in (t / "cluster").iterdir()) == ["cluster.k=4", "default"]
    res = cli("stage=distill", *base, "cluster.k=4")
    assert res.returncode == 0, res.stderr[-3000:]
    k4 = json.loads((t / "distill" / "cluster.k=4" / "done.json").read_text())
    assert k4["clusters"] == 4 and k4["cluster_variant"] == "cluster.k=4"

    # 4. force=true redoes the addressed variant only
    others = {p.name: md5_tree(p) for p in (t / "distill").iterdir() if p.name != "sampler=random"}
    res = cli("stage=distill", *base, "sampler=random", "force=true")
    assert res.returncode == 0, res.stderr[-3000:]
    for name, files in others.items():
        assert md5_tree(t / "distill" / name) == files, name
    redone = json.loads((t / "distill" / "sampler=random" / "done.json").read_text())
    assert redone["started_at"] >= random_done["started_at"] and redone["resumed_from"] is None
    assert md5_tree(t / "precompute") == store_before  # nothing above touched the store

    # 5. one probe call compares the variants; baselines are embedded once and shared by later probes
    task = tmp_path / "task"
    from tests.stages.test_probe_stage import write_task

    manifest = write_task(task, per_class=6, bad=False)
    probe = [
        f"probe.tasks=[manifest:{manifest}]",
        "probe.models=[teacher,logmel,untrained,student]",
        "probe.seeds=[0]",
        "probe.num_workers=0",
        "probe.device=cpu",
        "probe.bn_recalibration_items=32",
        "+probe.fit.weight_decays=[0.1,0.01]",
    ]
    # names with '=' are quoted inside a Hydra list (on a shell: probe.variants='[default,"sampler=random"]')
    res = cli("stage=probe", *base, *probe, 'probe.variants=[default,"sampler=random","student=eres2net"]')
    assert res.returncode == 0, res.stderr[-3000:]
    out = t / "probe" / "default+sampler=random+student=eres2net"
    results = json.loads((out / "results.json").read_text())
    assert list(results["results"]) == [
        "teacher",
        "logmel",
        "untrained[mobilenetv3]",
        "untrained[eres2net]",
        "student[default]",
        "student[sampler=random]",
        "student[student=eres2net]",
    ]
    assert results["variants"]["sampler=random"]["sampler"] == "random"
    assert results["variants"]["student=eres2net"]["student"] == "eres2net"
    md = (out / "results.md").read_text()
    assert "| student[sampler=random] |" in md and "variant sampler=random:" in md
    assert (out / "heads" / "student[sampler=random]" / "shapes.pth").is_file()
    caches = sorted(p.name for p in (t / "cache" / "probe").iterdir())
    assert len(caches) == 7  # one embedding cache per row, shared by the run

    # a second probe of one variant reuses the teacher / log-mel / untrained embeddings
    res = cli("stage=probe", *base, *probe, "sampler=random")
    assert res.returncode == 0, res.stderr[-3000:]
    single = json.loads((t / "probe" / "sampler=random" / "results.json").read_text())
    assert list(single["results"]) == ["teacher", "logmel", "untrained", "student"]
    for label in ("teacher", "logmel", "untrained", "student"):
        assert single["results"][label]["shapes"]["cache_hit"] is True, label
        assert single["models"][label]["embedding_calls"] == 0, label
    assert single["results"]["student"]["shapes"]["mean"] == pytest.approx(
        results["results"]["student[sampler=random]"]["shapes"]["mean"]
    )
    assert sorted(p.name for p in (t / "cache" / "probe").iterdir()) == caches

    # export of a variant takes that variant's probe heads
    res = cli("stage=export", *base, "sampler=random", "export.onnx=false")
    assert res.returncode == 0, res.stderr[-3000:]
    exported = json.loads((t / "export" / "sampler=random" / "done.json").read_text())
    assert exported["heads"] == ["shapes"] and exported["inputs"]["probe/sampler=random"]


def test_other_store_settings_and_reused_names_are_refused(run):
    root, base = run
    t = root / "t"
    if not (t / "distill" / "default" / "done.json").is_file():
        assert cli("stage=distill", *base).returncode == 0
    # a store built with 1-s windows is not read as if it had 2-s ones
    res = cli("stage=distill", *base, "precompute.window_seconds=2.0", "sampler=random")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()[-1]
    assert "precompute.window_seconds: 1.0 (store) -> 2.0 (now)" in err, err
    differs, _, hint = err.partition("Give the overrides")
    assert "precompute.hop_seconds" not in differs  # only what differs
    assert "precompute.window_seconds=1.0" in hint and "distill." not in hint  # how the store was made
    # an explicit name already used by another configuration: the differing keys, old and new
    res = cli("stage=distill", *base, "variant=default", "distill.lr=0.002")
    assert res.returncode == 2
    assert "distill.lr: 0.0008 (done) -> 0.002 (now)" in res.stderr, res.stderr[-2000:]
    # clusters of another store are not mixed in
    done_file = t / "cluster" / "default" / "done.json"
    done = json.loads(done_file.read_text())
    saved = done_file.read_text()
    done["inputs"]["store"] = "0" * 16
    done_file.write_text(json.dumps(done))
    try:
        res = cli("stage=distill", *base, "seed=5")
        assert res.returncode == 2 and "computed on another teacher store" in res.stderr, res.stderr[-2000:]
        assert not (t / "distill" / "seed=5").exists()  # a refused variant leaves no folder
    finally:
        done_file.write_text(saved)


def _to_legacy(run_dir: Path) -> None:
    """Rewrite a run folder the way ssondo-train 0.1 laid it out (one result per stage, no run.json)."""
    for stage in ("cluster", "distill", "probe", "export"):
        folder = run_dir / stage
        if not folder.is_dir():
            continue
        for variant in [p for p in folder.iterdir() if p.name != "default"]:
            shutil.rmtree(variant)
        tmp = run_dir / f"{stage}.tmp"
        (folder / "default").rename(tmp)
        folder.rmdir()
        tmp.rename(folder)
    for stage in ("precompute", "cluster", "distill"):
        path = run_dir / stage / "done.json"
        done = json.loads(path.read_text())
        for key in ("identity", "inputs", "variant", "overrides"):
            done.pop(key, None)
        done["config"]["seed"] = 42
        done["config"].get("precompute", {}).pop("split_seed", None)
        done["config"].get("cluster", {}).pop("seed", None)
        if "checkpoints" in done:
            done["checkpoints"] = {
                k: v and v.replace("distill/default/", "distill/") for k, v in done["checkpoints"].items()
            }
        path.write_text(json.dumps(done))
    (run_dir / "run.json").unlink()


def test_a_run_folder_of_version_0_1_is_named_and_converted(run, tmp_path):
    root, base = run
    if not (root / "t" / "distill" / "default" / "done.json").is_file():
        assert cli("stage=distill", *base).returncode == 0
    copy = tmp_path / "out"
    shutil.copytree(root / "t", copy / "t", ignore=shutil.ignore_patterns("probe", "export", "cache"))
    _to_legacy(copy / "t")
    moved = [f"paths.output_root={copy}" if o.startswith("paths.") else o for o in base]
    res = cli("stage=distill", *moved)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"python -m ssondo_train.runs migrate {copy / 't'}" in lines[0], res.stderr

    ckpt = copy / "t" / "distill" / "checkpoints" / "last.ckpt"
    before = ckpt.stat().st_mtime_ns
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "ssondo_train.runs", "migrate", str(copy / "t")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "moved distill/ to distill/default/" in res.stdout
    for stage in ("precompute", "cluster", "distill"):
        res = cli(f"stage={stage}", *moved)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "is already done" in res.stdout + res.stderr, (stage, res.stdout[-2000:])
    assert (copy / "t" / "distill" / "default" / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before
    res = cli("stage=distill", *moved, "sampler=random")  # and new variants are named against its base
    assert res.returncode == 0, res.stderr[-2000:]
    assert (copy / "t" / "distill" / "sampler=random" / "done.json").is_file()


def test_a_parallel_sweep_trains_its_variants_side_by_side(run):
    """hydra-submitit's local launcher runs the jobs of a sweep as parallel processes, as SLURM would: each
    variant writes its own folder, the shared store and clusters are only read."""
    root, base = run
    t = root / "t"
    store = md5_tree(t / "precompute")
    clusters = md5_tree(t / "cluster" / "default")
    res = cli(
        "-m",
        "stage=distill",
        *base,
        "seed=11,12",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=10",
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for seed in (11, 12):
        done = json.loads((t / "distill" / f"seed={seed}" / "done.json").read_text())
        assert done["identity"]["seed"] == seed and done["steps"] == 8
    assert md5_tree(t / "precompute") == store and md5_tree(t / "cluster" / "default") == clusters
    logs = list((t / "multirun").glob("*/.submitit/*/*_log.out"))
    assert len(logs) == 2  # two jobs, each with its own log


def test_a_local_sweep_refuses_to_spawn_ddp_processes(run):
    root, base = run
    res = cli("-m", "stage=distill", *base, "seed=21,22", "trainer.devices=2", "trainer.strategy=ddp")
    assert res.returncode == 2
    assert "cannot train with trainer.devices=2" in res.stderr and "hydra/launcher=slurm" in res.stderr
    assert not (root / "t" / "distill" / "seed=21").exists()
