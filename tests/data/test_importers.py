"""Folder and AudioSet importers on tiny generated audio, including broken files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from ssondo_train.data.importers import (
    folder_clip_id,
    import_audioset,
    import_corpus,
    import_folder,
    read_audioset_segments,
)
from ssondo_train.data.manifest import read_manifest, write_manifest


def test_folder_import_reads_headers_and_records_corrupt_files(tmp_path: Path, write_audio: Callable) -> None:
    write_audio("corpus/b/z.wav", seconds=0.5, sr=16000)
    write_audio("corpus/a/x.flac", seconds=1.25, sr=32000, channels=2)
    write_audio("corpus/a/sub dir/y.ogg", seconds=1.0, sr=22050)
    write_audio("corpus/top.wav", seconds=0.25, sr=8000)
    (tmp_path / "corpus" / "top.wav").rename(tmp_path / "corpus" / "top.WAV")
    (tmp_path / "corpus" / "b" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (tmp_path / "corpus" / "b" / "notes.txt").write_text("not audio, not listed")
    (tmp_path / "corpus" / ".hidden").mkdir()
    write_audio("corpus/.hidden/h.wav")

    manifest, failures = import_folder(tmp_path / "corpus", license="CC0-1.0")
    ids = [c.clip_id for c in manifest]
    assert ids == ["a__sub_dir__y", "a__x", "b__z", "top"]  # sorted by relative path, '/' -> '__'
    by_id = {c.clip_id: c for c in manifest}
    assert by_id["a__x"].path == "a/x.flac"
    assert (by_id["a__x"].sample_rate, by_id["a__x"].channels) == (32000, 2)
    assert by_id["a__x"].duration == pytest.approx(1.25)
    assert by_id["b__z"].duration == pytest.approx(0.5)
    assert by_id["a__sub_dir__y"].sample_rate == 22050
    assert all(c.source == "corpus" and c.license == "CC0-1.0" and c.labels == () for c in manifest)
    assert [(f.path, f.reason) for f in failures] == [("b/broken.wav", "decode_error")]
    assert "broken.wav" in failures[0].message

    out = write_manifest(tmp_path / "m" / "corpus.csv", manifest)
    assert read_manifest(out).clips == manifest.clips


def test_folder_import_labels_from_parent_and_duplicate_ids(tmp_path: Path, write_audio: Callable) -> None:
    write_audio("set/dog/1.wav")
    write_audio("set/dog/1.flac")  # same clip id as dog/1.wav
    write_audio("set/cat/2.wav", kind="tone")
    manifest, failures = import_folder(tmp_path / "set", label_from_parent=True, split="train", source="pets")
    assert [(c.clip_id, c.labels, c.split) for c in manifest] == [
        ("cat__2", ("cat",), "train"),
        ("dog__1", ("dog",), "train"),
    ]
    assert [(f.path, f.reason) for f in failures] == [("dog/1.wav", "duplicate_clip_id")]
    assert manifest.class_names() == ["cat", "dog"]


def test_folder_clip_id() -> None:
    assert folder_clip_id("a/b/c.d.wav") == "a__b__c.d"
    assert folder_clip_id("noext") == "noext"


SEGMENTS = """\
# Segments csv created Sun Mar  5 10:54:31 2017
# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4
# YTID, start_seconds, end_seconds, positive_labels
--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
-0RWZT-miFs, 420.000, 430.000, "/m/03v3yw"
# a comment in the middle is skipped too
_aB_c-123, 0.500, 10.500, "/m/09x0r,/m/unknown"
missing_id, 10.000, 20.000, "/m/03v3yw"

--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"
bad_row, ten, 20.000, "/m/03v3yw"
"""

CLASS_LABELS = """\
index,mid,display_name
0,/m/09x0r,"Speech"
1,/t/dd00088,"Male speech, man speaking"
2,/m/03v3yw,"Keys jangling"
"""


def test_audioset_segments_parsing_skips_every_comment_line(tmp_path: Path) -> None:
    csv_path = tmp_path / "eval_segments.csv"
    csv_path.write_text(SEGMENTS)
    segments, failures = read_audioset_segments(csv_path)
    assert [s.clip_id for s in segments] == [
        "--PJHxphWEs_30.000_40.000",
        "-0RWZT-miFs_420.000_430.000",
        "_aB_c-123_0.500_10.500",
        "missing_id_10.000_20.000",
        "--PJHxphWEs_30.000_40.000",
    ]
    assert segments[0].labels == ("/m/09x0r", "/t/dd00088")
    assert [(f.path, f.reason) for f in failures] == [("eval_segments.csv:11", "bad_row")]


def test_audioset_import_matches_local_files(tmp_path: Path, write_audio: Callable) -> None:
    csv_path = tmp_path / "eval_segments.csv"
    csv_path.write_text(SEGMENTS)
    labels_path = tmp_path / "class_labels_indices.csv"
    labels_path.write_text(CLASS_LABELS)
    write_audio("AudioSet/eval/-/--PJHxphWEs_30.000_40.000.wav", seconds=1.0, sr=16000)
    write_audio("AudioSet/eval/-/-0RWZT-miFs_420.000_430.000.flac", seconds=0.5, sr=16000)
    write_audio("AudioSet/flat/_aB_c-123_0.500_10.500.ogg", seconds=0.75, sr=16000)
    write_audio("AudioSet/eval/x/unrelated_1.000_2.000.wav")

    result = import_audioset(csv_path, tmp_path / "AudioSet", class_labels_csv=labels_path)
    m = result.manifest
    assert [c.clip_id for c in m] == [
        "--PJHxphWEs_30.000_40.000",
        "-0RWZT-miFs_420.000_430.000",
        "_aB_c-123_0.500_10.500",
    ]
    assert m.clips[0].labels == ("Speech", "Male speech, man speaking")
    assert m.clips[0].path == "eval/-/--PJHxphWEs_30.000_40.000.wav"
    assert m.clips[2].labels == ("Speech", "/m/unknown")
    assert all(c.split == "eval" and c.source == "audioset" for c in m)
    assert m.clips[1].duration == pytest.approx(0.5)
    assert result.n_rows == 5
    assert result.n_missing == 1 and result.missing == ["missing_id_10.000_20.000"]
    assert result.duplicate_rows == 1
    assert result.unknown_labels == ["/m/unknown"]
    assert [f.reason for f in result.failures] == ["bad_row"]
    assert m.class_counts() == {
        "/m/unknown": 1,
        "Keys jangling": 1,
        "Male speech, man speaking": 1,
        "Speech": 2,
    }

    raw = import_audioset(csv_path, tmp_path / "AudioSet", split="balanced_train")
    assert raw.manifest.clips[0].labels == ("/m/09x0r", "/t/dd00088")
    assert {c.split for c in raw.manifest} == {"balanced_train"}


def test_audioset_import_records_a_corrupt_matched_file(tmp_path: Path) -> None:
    csv_path = tmp_path / "seg.csv"
    csv_path.write_text('# YTID, start_seconds, end_seconds, positive_labels\nabc, 0.000, 10.000, "/m/x"\n')
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "abc_0.000_10.000.wav").write_bytes(b"garbage")
    result = import_audioset(csv_path, tmp_path / "audio")
    assert len(result.manifest) == 0
    assert [(f.path, f.reason) for f in result.failures] == [("abc_0.000_10.000.wav", "decode_error")]


def test_prepare_stage_imports_a_folder_corpus(tmp_path: Path, write_audio: Callable) -> None:
    from omegaconf import OmegaConf

    from ssondo_train.stages.base import run_stage
    from ssondo_train.stages.prepare import STAGE

    write_audio("mine/a.wav", seconds=1.0)
    write_audio("mine/sub/b.flac", seconds=2.0)
    (tmp_path / "mine" / "bad.wav").write_bytes(b"nope")
    cfg = OmegaConf.create(
        {"data": {"kind": "folder", "root": str(tmp_path / "mine"), "license": "CC0-1.0"}, "seed": 0}
    )
    done = run_stage(STAGE, cfg, tmp_path / "runs" / "r")
    assert done["corpus"]["clips"] == 2 and done["corpus"]["failures"] == 1
    assert done["corpus"]["sources"] == {"mine": 2} and done["corpus"]["licences"] == {"CC0-1.0": 2}
    assert done["corpus"]["hours"] == pytest.approx(3.0 / 3600, abs=1e-4)
    assert done["tasks"] == {}
    out = tmp_path / "runs" / "r" / "prepare"
    manifest = read_manifest(out / "corpus.csv")
    assert (out / "corpus.csv").read_text().splitlines()[0] == "# ssondo-manifest v1 root=../../../mine"
    assert [c.clip_id for c in manifest] == ["a", "sub__b"]
    assert manifest.abs_path(manifest.clips[1]) == (tmp_path / "mine" / "sub" / "b.flac").resolve()

    with pytest.raises(ValueError, match="data.rooot"):
        import_corpus({"kind": "folder", "rooot": "x"}, tmp_path)


def test_import_corpus_audioset_several_csvs(tmp_path: Path, write_audio: Callable) -> None:
    (tmp_path / "eval_segments.csv").write_text(
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'e1, 0.000, 10.000, "/m/a"\nmissing, 0.000, 10.000, "/m/a"\n'
    )
    (tmp_path / "balanced_train_segments.csv").write_text('b1, 5.000, 15.000, "/m/b,/m/a"\n')
    write_audio("as/eval/e/e1_0.000_10.000.wav")
    write_audio("as/bal/b/b1_5.000_15.000.wav")
    data = {
        "kind": "audioset",
        "audio_dir": str(tmp_path / "as"),
        "segments_csv": [str(tmp_path / n) for n in ("eval_segments.csv", "balanced_train_segments.csv")],
    }
    figures = import_corpus(data, tmp_path / "out")
    assert figures["corpus"]["clips"] == 2 and figures["corpus"]["missing"] == 1
    manifest = read_manifest(tmp_path / "out" / "corpus.csv")
    assert manifest.splits() == {"balanced_train": 1, "eval": 1}
    assert manifest.clips[1].labels == ("/m/b", "/m/a")
