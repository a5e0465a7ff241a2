"""Task adapters on tiny fixture folders that imitate each dataset's real layout."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ssondo_train.probe.tasks import (
    GTZAN_GENRES,
    NSYNTH_FAMILIES,
    OPENMIC_CLASSES,
    US8K_CLASSES,
    ProbeClip,
    ProbeTask,
    build_task,
)

SR = 8000


def wav(path: Path, seed: int = 0) -> Path:
    """A 0.1-s noise WAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(seed).uniform(-0.3, 0.3, SR // 10).astype(np.float32), SR)
    return path


def write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        if header:
            w.writerow(header)
        w.writerows(rows)


# --- ESC-50
def test_esc50(tmp_path: Path) -> None:
    rows = []
    for fold in range(1, 6):
        for target in (0, 1, 49):
            name = f"{fold}-{100 + target}-A-{target}.wav"
            rows.append([name, fold, target, f"cat{target}", "False", 100 + target, "A"])
            wav(tmp_path / "audio" / name)
    write_csv(
        tmp_path / "meta" / "esc50.csv",
        ["filename", "fold", "target", "category", "esc10", "src_file", "take"],
        rows,
    )
    task = build_task("ESC-50", tmp_path, check_files=True)
    assert (task.name, task.protocol, task.task_type, task.metric) == (
        "esc50",
        "folds",
        "multiclass",
        "accuracy",
    )
    assert task.folds == [1, 2, 3, 4, 5] and task.n_classes == 50
    assert task.class_names[49] == "cat49" and task.class_names[5] == "class_5"
    assert [len(task.indices(f)) for f in task.folds] == [3] * 5
    c = task.clips[0]
    assert c.clip_id == "1-100-A-0" and c.labels == (0,) and c.split == 1 and c.path.is_absolute()
    assert task.class_counts().tolist()[:2] == [5, 5]


# --- UrbanSound8K
def test_us8k(tmp_path: Path) -> None:
    rows = []
    for fold in range(1, 11):
        for cid in (fold % 10, (fold + 3) % 10):
            name = f"{1000 + fold}-{cid}-0-0.wav"
            rows.append([name, 1000 + fold, 0.0, 4.0, 1, fold, cid, US8K_CLASSES[cid]])
            wav(tmp_path / "audio" / f"fold{fold}" / name)
    header = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
    write_csv(tmp_path / "metadata" / "UrbanSound8K.csv", header, rows)
    task = build_task("urbansound8k", tmp_path, check_files=True)
    assert task.name == "us8k" and task.folds == list(range(1, 11)) and task.n_classes == 10
    assert len(task.clips) == 20 and task.metric == "accuracy"
    assert task.clips[0].path == (tmp_path / "audio" / "fold1" / "1001-1-0-0.wav").resolve()
    assert task.class_counts().tolist() == [2] * 10
    rows[0][-1] = "siren"  # class name disagreeing with classID
    write_csv(tmp_path / "metadata" / "UrbanSound8K.csv", header, rows)
    with pytest.raises(ValueError, match="classID"):
        build_task("us8k", tmp_path)


# --- FSD50K
def test_fsd50k(tmp_path: Path) -> None:
    gt = tmp_path / "FSD50K.ground_truth"
    vocab = [[i, f"Label_{i}", f"/m/{i:04d}"] for i in range(200)]
    write_csv(gt / "vocabulary.csv", [], vocab)
    dev = [
        [11, "Label_0,Label_5", "/m/0000,/m/0005", "train"],
        [12, "Label_199", "/m/0199", "train"],
        [13, "Label_5", "/m/0005", "val"],
    ]
    ev = [[21, "Label_3,Label_0,Label_7", "/m/0003,/m/0000,/m/0007"], [22, "Label_5", "/m/0005"]]
    write_csv(gt / "dev.csv", ["fname", "labels", "mids", "split"], dev)
    write_csv(gt / "eval.csv", ["fname", "labels", "mids"], ev)
    for r in dev:
        wav(tmp_path / "FSD50K.dev_audio" / f"{r[0]}.wav")
    for r in ev:
        wav(tmp_path / "FSD50K.eval_audio" / f"{r[0]}.wav")
    task = build_task("fsd50k", tmp_path, check_files=True)
    assert (task.task_type, task.metric, task.protocol, task.n_classes) == (
        "multilabel",
        "mAP",
        "splits",
        200,
    )
    assert [c.split for c in task.clips] == ["train", "train", "valid", "test", "test"]
    assert task.clips[0].labels == (0, 5) and task.clips[3].labels == (0, 3, 7)
    assert task.clips[3].clip_id == "eval/21"
    y, mask = task.targets()
    assert y.shape == (5, 200) and mask is None and y.sum() == 8
    ev.append([23, "Not_a_label", "/m/x"])
    write_csv(gt / "eval.csv", ["fname", "labels", "mids"], ev)
    with pytest.raises(ValueError, match="vocabulary"):
        build_task("fsd50k", tmp_path)


# --- GTZAN
@pytest.mark.parametrize("audio_ext,list_fmt", [(".wav", "{g}/{g}.{i:05d}.wav"), (".au", "{g}.{i:05d}")])
def test_gtzan_with_split_files(tmp_path: Path, audio_ext: str, list_fmt: str) -> None:
    root = tmp_path / "gtzan"
    for g in GTZAN_GENRES:
        for i in range(4):
            p = root / "genres" / g / f"{g}.{i:05d}{audio_ext}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")  # the adapter never decodes audio
    splits = tmp_path / "splits"
    splits.mkdir()
    for split, ids in (("train", (0, 1)), ("valid", (2,)), ("test", (3,))):
        lines = [list_fmt.format(g=g, i=i) for g in GTZAN_GENRES for i in ids if not (g == "jazz" and i == 0)]
        (splits / f"{split}_filtered.txt").write_text("\n".join(lines) + "\n")
    task = build_task("gtzan", root, split_dir=splits, check_files=True)
    assert task.n_classes == 10 and task.metric == "accuracy" and task.protocol == "splits"
    assert [len(task.indices(s)) for s in ("train", "valid", "test")] == [19, 10, 10]
    jazz = [c for c in task.clips if c.clip_id == "jazz.00001"][0]
    assert jazz.labels == (GTZAN_GENRES.index("jazz"),) and jazz.path.suffix == audio_ext
    assert task.class_counts("train")[GTZAN_GENRES.index("jazz")] == 1
    with pytest.raises(FileNotFoundError, match="split file"):
        build_task("gtzan", root, split_dir=tmp_path)


def test_gtzan_rejects_overlapping_splits(tmp_path: Path) -> None:
    for g in GTZAN_GENRES:
        (tmp_path / "genres" / g).mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}_filtered.txt").write_text("blues/blues.00001.wav\n")
    with pytest.raises(ValueError, match="both"):
        build_task("gtzan", tmp_path, split_dir=tmp_path)


# --- NSynth
def test_nsynth(tmp_path: Path) -> None:
    for split, fams in (("train", (0, 3, 9, 10)), ("valid", (0, 3)), ("test", (3, 10))):
        inst = {"train": 0, "valid": 100, "test": 200}[split]
        folder = tmp_path / f"nsynth-{split}"
        meta = {}
        for fam in fams:
            key = f"{NSYNTH_FAMILIES[fam]}_acoustic_{inst + fam:03d}-060-100"
            meta[key] = {"instrument_family": fam, "instrument_family_str": NSYNTH_FAMILIES[fam], "pitch": 60}
            wav(folder / "audio" / f"{key}.wav")
        folder.mkdir(exist_ok=True)
        (folder / "examples.json").write_text(json.dumps(meta))
    task = build_task("nsynth", tmp_path, check_files=True)
    assert task.n_classes == 11 and task.metric == "accuracy"
    assert [len(task.indices(s)) for s in ("train", "valid", "test")] == [4, 2, 2]
    assert task.class_counts().tolist() == [2, 0, 0, 3, 0, 0, 0, 0, 0, 1, 2]
    meta["bad"] = {"instrument_family": 2, "instrument_family_str": "guitar"}
    (tmp_path / "nsynth-test" / "examples.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="family"):
        build_task("nsynth", tmp_path)


# --- OpenMIC
def test_openmic_masks_missing_labels(tmp_path: Path) -> None:
    keys = np.array(["000046_3840", "000135_483840", "001234_0", "002000_10"])
    y_true = np.full((4, 20), 0.5, dtype=np.float32)
    y_mask = np.zeros((4, 20), dtype=bool)
    y_true[0, 0], y_mask[0, 0] = 0.9, True  # accordion positive
    y_true[0, 19], y_mask[0, 19] = 0.1, True  # voice negative
    y_true[1, 8], y_mask[1, 8] = 0.5, True  # threshold is inclusive
    y_true[2, 12] = 1.0  # unobserved: not a label
    y_mask[3, 3] = True  # observed with 0.5 -> positive
    np.savez(
        tmp_path / "openmic-2018.npz",
        X=np.zeros((4, 10, 128), np.uint8),
        Y_true=y_true,
        Y_mask=y_mask,
        sample_key=keys,
    )
    (tmp_path / "partitions").mkdir()
    (tmp_path / "partitions" / "split01_train.csv").write_text("000046_3840\n000135_483840\n001234_0\n")
    (tmp_path / "partitions" / "split01_test.csv").write_text("002000_10\n")
    for k in keys:
        (tmp_path / "audio" / k[:3]).mkdir(parents=True, exist_ok=True)
        (tmp_path / "audio" / k[:3] / f"{k}.ogg").write_bytes(b"")
    task = build_task("openmic-2018", tmp_path, check_files=True)
    assert task.class_names == list(OPENMIC_CLASSES) and task.metric == "mAP"
    assert not task.has_split("valid") and len(task.indices("train")) == 3
    c0 = task.clips[0]
    assert c0.labels == (0,) and c0.observed == (0, 19)
    assert c0.path == (tmp_path / "audio" / "000" / "000046_3840.ogg").resolve()
    assert task.clips[1].labels == (8,) and task.clips[2].labels == () and task.clips[2].observed == ()
    y, mask = task.targets()
    assert mask is not None and mask.sum() == 4 and y.sum() == 3
    assert mask[0].tolist() == [True] + [False] * 18 + [True]


def test_openmic_refuses_pickled_npz(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "openmic-2018.npz",
        Y_true=np.zeros((1, 20)),
        Y_mask=np.zeros((1, 20), bool),
        sample_key=np.array([object()], dtype=object),
    )
    with pytest.raises(ValueError, match="pickle"):
        build_task("openmic", tmp_path)


# --- MagnaTagATune
def _mtt_fixture(root: Path, n_tags: int = 55) -> list[str]:
    tags = [f"tag{j}" for j in range(n_tags)]
    rows = []
    rng = np.random.default_rng(0)
    folders = "0123456789abcdef"
    for i, folder in enumerate(folders * 2):
        row = (rng.random(n_tags) < 0.3).astype(int)
        row[:50] |= np.arange(50) < (50 - i)  # tag j is more frequent for smaller j -> top-50 = tag0..tag49
        row[50:] = 0
        if i == 31:
            row[:] = 0  # untagged clip
        mp3 = f"{folder}/artist-album-{i:02d}-song-0-29.mp3"
        rows.append([str(i), *row.tolist(), mp3])
        wav(root / mp3)
    write_csv(root / "annotations_final.csv", ["clip_id", *tags, "mp3_path"], rows, delimiter="\t")
    return tags


def test_magnatagatune_folder_rule(tmp_path: Path) -> None:
    _mtt_fixture(tmp_path)
    task = build_task("mtt", tmp_path, check_files=True)
    assert task.name == "magna-tag-a-tune" and task.task_type == "multilabel" and task.metric == "mAP"
    assert task.class_names == [f"tag{j}" for j in range(50)]
    # 32 clips: folders 0-b train (24), c valid (2), d-f test (6), minus the untagged clip 31 (folder f)
    assert [len(task.indices(s)) for s in ("train", "valid", "test")] == [24, 2, 5]
    assert "31" not in {c.clip_id for c in task.clips}
    keep_all = build_task("mtt", tmp_path, drop_untagged=False, exclude_clip_ids=["0"])
    assert len(keep_all.clips) == 31 and "31" in {c.clip_id for c in keep_all.clips}


def test_magnatagatune_split_files(tmp_path: Path) -> None:
    _mtt_fixture(tmp_path)
    splits = tmp_path / "split"
    splits.mkdir()
    (splits / "train.txt").write_text("0\n1\t1/artist-album-01-song-0-29.mp3\n")
    (splits / "valid.txt").write_text("2/artist-album-02-song-0-29.mp3\n")
    np.save(splits / "test.npy", np.array(["3\t3/artist-album-03-song-0-29.mp3", "4"]))
    task = build_task("magnatagatune", tmp_path, split_dir=splits)
    assert [c.clip_id for c in task.clips] == ["0", "1", "2", "3", "4"]
    assert [c.split for c in task.clips] == ["train", "train", "valid", "test", "test"]


# --- manifest
def test_manifest_splits_and_folds(tmp_path: Path) -> None:
    for i in range(4):
        wav(tmp_path / "clips" / f"c{i}.wav")
    write_csv(
        tmp_path / "m.csv",
        ["clip_id", "path", "labels", "split"],
        [
            ["a", "clips/c0.wav", "dog;cat", "train"],
            ["b", "clips/c1.wav", "cat", "test"],
            ["c", str((tmp_path / "clips" / "c2.wav").resolve()), "", "valid"],
        ],
    )
    task = build_task("manifest", tmp_path / "m.csv", check_files=True)
    assert task.name == "m" and task.task_type == "multilabel" and task.class_names == ["cat", "dog"]
    assert task.clips[0].labels == (0, 1) and task.clips[2].labels == ()
    assert task.clips[0].path == (tmp_path / "clips" / "c0.wav").resolve()

    other = tmp_path / "elsewhere"
    wav(other / "clips" / "c3.wav")
    write_csv(
        tmp_path / "f.csv",
        ["clip_id", "path", "labels", "fold", "root"],
        [
            ["a", "clips/c0.wav", "dog", 1, ""],
            ["b", "clips/c1.wav", "cat", 2, ""],
            ["d", "clips/c3.wav", "cat", 2, str(other)],
        ],
    )
    task = build_task("manifest", tmp_path / "f.csv", name="toy", check_files=True)
    assert (task.name, task.task_type, task.protocol, task.folds) == ("toy", "multiclass", "folds", [1, 2])
    assert task.clips[2].path == (other / "clips" / "c3.wav").resolve()
    with pytest.raises(ValueError, match="not in class_names"):
        build_task("manifest", tmp_path / "f.csv", class_names=["dog"])


def test_probe_task_validation() -> None:
    clip = ProbeClip("a", Path("/x.wav"), (0,), "train")
    with pytest.raises(ValueError, match="test"):
        ProbeTask("t", "multiclass", ["x"], [clip], "splits")
    with pytest.raises(ValueError, match="2 labels"):
        ProbeTask("t", "multiclass", ["x", "y"], [ProbeClip("a", Path("/x"), (0, 1), "train")], "splits")
    with pytest.raises(ValueError, match="duplicate"):
        ProbeTask("t", "multiclass", ["x"], [clip, clip], "splits")
    with pytest.raises(ValueError, match="unknown probe task"):
        build_task("audioset", "/nowhere")
    with pytest.raises(FileNotFoundError, match="ESC-50 metadata"):
        build_task("esc50", "/nowhere")
