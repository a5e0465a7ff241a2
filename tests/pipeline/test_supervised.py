"""Label loss in stage=distill: the supervised baseline (λ = 1, class-balanced sampler), λ-mixing with the KD
loss, the start-up error on an unlabelled corpus, and class-balanced sampling over stored windows."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests.conftest import make_signal
from tests.pipeline.conftest import TINY_TRAINING, TINY_WINDOW, cli, store_overrides

CLASSES = ("chirp", "noise", "tone")
HEADER = (
    "# ssondo-manifest v1 root=audio\n"
    "clip_id,path,duration,sample_rate,channels,labels,split,fold,source,license\n"
)

SUPERVISED = [
    "stage=distill",
    "run_name=t",
    # an explicit variant name: these tests are about training, not about how variants are named
    "variant=v",
    *TINY_TRAINING,
    "distill.epochs=2",
]


def clip_labels(i: int) -> list[str]:
    """Clip i is a chirp, noise or tone; every fourth clip also carries a second sound (two labels)."""
    kind = CLASSES[i % 3]
    if i % 4 == 0:
        return sorted({kind, "tone" if kind == "noise" else "noise"})
    return [kind]


def write_labelled_corpus(folder: Path, n_clips: int = 15) -> tuple[Path, Path]:
    """1.2-2.2 s mono 32 kHz clips labelled by what they contain; returns (labelled, unlabelled) manifests
    over the same audio."""
    audio = folder / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labelled, unlabelled = [], []
    for i in range(n_clips):
        labels = clip_labels(i)
        seconds = float(rng.uniform(1.2, 2.2))
        x = sum(make_signal(kind, seconds, 32000, seed=i) for kind in labels) / len(labels)
        name = f"clip{i:03d}.flac"
        sf.write(str(audio / name), x, 32000)
        row = f"clip{i:03d},{name},{seconds:.6f},32000,1,{{}},,,test,CC0-1.0"
        labelled.append(row.format(";".join(labels)))
        unlabelled.append(row.format(""))
    (folder / "corpus.csv").write_text(HEADER + "\n".join(labelled) + "\n")
    (folder / "unlabelled.csv").write_text(HEADER + "\n".join(unlabelled) + "\n")
    return folder / "corpus.csv", folder / "unlabelled.csv"


@pytest.fixture(scope="module")
def labelled_corpus(tmp_path_factory) -> tuple[Path, Path]:
    return write_labelled_corpus(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="module")
def precomputed(labelled_corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("supervised")
    res = cli(
        "stage=precompute",
        "run_name=t",
        f"paths.output_root={root}",
        f"precompute.manifest={labelled_corpus[0]}",
        "precompute.valid_fraction=0.25",
        *TINY_WINDOW,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return root


def copy_precompute(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "t" / "precompute", dst / "t" / "precompute")
    shutil.copy(src / "t" / "run.json", dst / "t" / "run.json")
    return dst


def read_metrics(root: Path) -> list[dict[str, str]]:
    with open(root / "t" / "distill" / "v" / "logs" / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.mark.slow
def test_supervised_baseline_trains_a_label_head(precomputed, tmp_path):
    from ssondo_train.training.checkpoint import load_distill_checkpoint

    root = copy_precompute(precomputed, tmp_path)
    res = cli(
        *SUPERVISED,
        *store_overrides(root),
        f"paths.output_root={root}",
        "loss.label_weight=1.0",
        "sampler=class_balanced",
        "sampler.num_samples=16",
        "distill.mixup_alpha=0.3",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    out = root / "t" / "distill" / "v"
    done = json.loads((out / "done.json").read_text())
    assert done["sampler"] == "class_balanced" and done["label_weight"] == 1.0
    assert done["classes"] == list(CLASSES) and done["steps"] == 8
    assert len(done["history"]) == 2
    for row in done["history"]:
        assert 0.0 < row["val/mAP"] <= 1.0
        assert row["val/label_loss"] > 0
        assert "val/cosine" not in row and "val/kd_loss" not in row  # λ = 1: no distillation term at all

    rows = read_metrics(root)
    label_steps = column(rows, "train/label_loss_step")
    assert len(label_steps) == 2 and all(0 < v < 5 for v in label_steps)
    assert column(rows, "train/total_loss_step") == pytest.approx(label_steps)
    assert not column(rows, "train/kd_loss_step")
    assert len(column(rows, "val/mAP")) == 2

    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    emb = int(state["student.classification_head.mlp.0.weight"].shape[1])
    assert tuple(state["label_head.weight"].shape) == (3, emb)
    assert tuple(state["label_head.bias"].shape) == (3,)
    # The strict student loader still works: it loads student.*; the label head is a known part, not reported.
    loaded = load_distill_checkpoint(out / "checkpoints" / "last.ckpt")
    assert loaded.ignored_keys == []
    for key, value in loaded.student.state_dict().items():
        assert torch.equal(value, state[f"student.{key}"]), key


@pytest.mark.slow
def test_half_label_half_distillation_logs_both_terms(precomputed, tmp_path):
    root = copy_precompute(precomputed, tmp_path)
    res = cli(
        *SUPERVISED,
        *store_overrides(root),
        f"paths.output_root={root}",
        "loss.label_weight=0.5",
        "sampler=random",
        "distill.epochs=1",
    )
    assert res.returncode == 0, res.stderr[-4000:]
    done = json.loads((root / "t" / "distill" / "v" / "done.json").read_text())
    assert done["label_weight"] == 0.5 and done["sampler"] == "random"
    (row,) = done["history"]
    assert -1.0 <= row["val/cosine"] <= 1.0 and 0.0 < row["val/mAP"] <= 1.0
    assert row["val/total_loss"] == pytest.approx(
        0.5 * row["val/label_loss"] + 0.5 * row["val/kd_loss"], abs=2e-4
    )
    steps = [r for r in read_metrics(root) if r.get("train/total_loss_step")]
    assert steps
    for r in steps:
        kd, label = float(r["train/kd_loss_step"]), float(r["train/label_loss_step"])
        assert kd > 0 and label > 0
        assert float(r["train/total_loss_step"]) == pytest.approx(0.5 * kd + 0.5 * label, rel=1e-5)


@pytest.mark.slow
def test_label_loss_without_labels_fails_at_start_up(precomputed, labelled_corpus, tmp_path):
    root = copy_precompute(precomputed, tmp_path)
    done_file = root / "t" / "precompute" / "done.json"
    done = json.loads(done_file.read_text())
    done["config"]["precompute"]["manifest"] = str(labelled_corpus[1])  # same clips, empty labels column
    done_file.write_text(json.dumps(done))
    res = cli(
        *SUPERVISED,
        *store_overrides(root),
        f"paths.output_root={root}",
        "loss.label_weight=1.0",
        "sampler=class_balanced",
    )
    assert res.returncode != 0
    assert "no training clip" in res.stderr and "labels" in res.stderr
    assert not (root / "t" / "distill" / "v" / "done.json").exists()
    assert not (root / "t" / "distill" / "v" / "checkpoints").exists()


# ---- unit tests (fast) -------------------------------------------------------------------------------------
def test_windows_inherit_their_clip_labels():
    from ssondo_train.training.data import window_label_matrix

    keys = [("a", 0), ("a", 1), ("b", 0), ("c", 0)]
    m = window_label_matrix(keys, {"a": ("tone",), "b": ("noise", "chirp")}, CLASSES).toarray()
    np.testing.assert_array_equal(m, [[0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="not in the class list"):
        window_label_matrix(keys, {"a": ("bird",)}, CLASSES)


def test_class_balanced_sampling_over_windows_gives_the_expected_class_mass():
    from ssondo_train.sampling import EpochSampler
    from ssondo_train.training.data import DistillData, DistillDataModule, window_label_matrix

    # 8 training windows: class 0 on 5 windows, class 1 on 2, class 2 on 2 (window 4 has two labels),
    # window 7 is unlabelled; windows 8-9 are held out (their labels must not count).
    clip_of = ["a", "a", "a", "b", "c", "d", "e", "u", "v", "v"]
    keys = [(c, sum(1 for x in clip_of[:i] if x == c)) for i, c in enumerate(clip_of)]
    labels = {"a": ["x"], "b": ["x"], "c": ["x", "y"], "d": ["y"], "e": ["z"], "v": ["z"]}
    classes = ["x", "y", "z"]
    matrix = window_label_matrix(keys, labels, classes)
    # Training windows 0..7; the val clip 'v' carries class z twice, which must not change n_z.
    order = np.array([0, 1, 2, 3, 4, 5, 6, 7, 9, 8])  # store order need not group the train windows
    train_idx, val_idx = order[:8], order[8:]
    data = DistillData(Path("unused"), train_idx, val_idx, np.zeros(10, np.int64), 32000, {}, matrix, classes)
    dm = DistillDataModule(data, "class_balanced", num_samples=1000, batch_size=4, num_workers=0, seed=0)
    w = dm.train_weights()
    wx, wy, wz = 1000 / (100 + 5), 1000 / (100 + 2), 1000 / (100 + 1)
    np.testing.assert_allclose(w, [wx, wx, wx, wx, wx + wy, wy, wz, 0.0], rtol=1e-12)

    # Expected mass per class: sum of the weights of the windows carrying it, over the total weight.
    dense = matrix.toarray()[train_idx]
    expected = dense.T @ w / w.sum()
    np.testing.assert_allclose(expected, [(5 * wx + wy) / w.sum(), (wx + 2 * wy) / w.sum(), wz / w.sum()])
    draws = EpochSampler(w, 200_000, seed=3).indices()
    empirical = dense[draws].mean(axis=0)
    np.testing.assert_allclose(empirical, expected, atol=0.005)
    assert not np.any(draws == 7)  # the unlabelled window is never drawn


def test_macro_average_precision_skips_classes_without_positives():
    from ssondo_train.training.module import macro_average_precision

    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.1, 0.6, 0.9], [0.4, 0.2, 0.1]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    m_ap, n = macro_average_precision(scores, labels)
    # class 0: ranks 0.9(+) 0.8(-) 0.4(-) 0.1(+) -> AP = (1 + 2/4) / 2; class 1: 0.7(+) 0.6(+) -> AP 1.
    assert n == 2 and m_ap == pytest.approx(((1 + 0.5) / 2 + 1.0) / 2)


class _SliceBackbone(torch.nn.Module):
    """(B, 1, F, T) log-mel -> (B, 1, 3) embeddings: the first three time frames of mel band 0."""

    emb_size = 3

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return logmel[:, :, 0, :3]


class _NoProjectorStudent(torch.nn.Module):
    emb_size = 3

    def __init__(self) -> None:
        super().__init__()
        self.model = _SliceBackbone()

    def forward(self, logmel):
        raise AssertionError("with label_weight 1 the KD projector must not run")


def test_supervised_validation_reports_loss_map_and_accuracy():
    import torch.nn.functional as F

    from ssondo_train.losses import CosineLoss
    from ssondo_train.training.module import (
        DistillModule,
        LabelTask,
        OptimConfig,
        TargetNorm,
        macro_average_precision,
    )

    module = DistillModule(
        _NoProjectorStudent(),
        torch.nn.Identity(),
        CosineLoss(),
        TargetNorm("none", dim=4),
        OptimConfig(),
        label_task=LabelTask(CLASSES, 1.0, "ce"),
    )
    with torch.no_grad():
        module.label_head.weight.copy_(torch.eye(3))
        module.label_head.bias.zero_()
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value))  # no Trainer here
    module._gather_rows = lambda x: x
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.0, 3.0, 0.0], [1.0, 0.0, 0.2]])
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])  # third one is wrong
    logmel = torch.zeros(4, 1, 2, 5)
    logmel[:, 0, 0, :3] = logits
    module.eval()
    for rows in (slice(0, 2), slice(2, 4)):
        with torch.no_grad():  # as Lightning runs validation
            module.validation_step(
                {"logmel": logmel[rows], "labels": labels[rows], "target": torch.zeros(2, 4)}, 0
            )
        expected = F.cross_entropy(logits[rows], labels[rows].argmax(1))
        assert logged["val/label_loss"] == pytest.approx(float(expected), rel=1e-6)
        assert logged["val/total_loss"] == logged["val/label_loss"]
    module._log_label_metrics()
    assert logged["val/accuracy"] == pytest.approx(0.75)
    m_ap, n = macro_average_precision(torch.softmax(logits, 1).numpy(), labels.numpy())
    assert logged["val/mAP"] == pytest.approx(m_ap) and logged["val/mAP_classes"] == n == 3
    assert "val/kd_loss" not in logged and "val/cosine" not in logged
    # Cross-entropy targets of a multi-label window share the mass; BCE keeps them multi-hot.
    np.testing.assert_allclose(
        module._label_targets({"labels": torch.tensor([[1.0, 1, 0]])}), [[0.5, 0.5, 0]]
    )
    # The label head is the only extra trainable part and its parameters are optimised.
    assert {id(p) for p in module.label_head.parameters()} <= {id(p) for p in module.trainable_parameters()}
