"""The ssondo manifest v1: round trip, path rules, duplicate ids, multi-label, filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssondo_train.data.manifest import (
    COLUMNS,
    ClipEntry,
    Manifest,
    ManifestError,
    check_relative_path,
    read_manifest,
    write_manifest,
)


def _clips() -> list[ClipEntry]:
    return [
        ClipEntry("a", "x/a.wav", 1.5, 16000, 1, ("dog",), "train", 1, "fs", "CC0-1.0"),
        ClipEntry("b", "x/b.flac", 2.25, 32000, 2, ("dog", "bark, loud"), "test", None, "fs", "CC-BY-4.0"),
        ClipEntry("c", "c.ogg", 0.5, 44100, 1, (), "", None, "", ""),
        ClipEntry("d", "y/d.wav", 3.0, 16000, 1, ("cat",), "train", 2, "fs", "CC0-1.0"),
    ]


def test_round_trip_keeps_every_field_and_relative_root(tmp_path: Path) -> None:
    root = tmp_path / "audio"
    manifest = Manifest(root, _clips())
    path = write_manifest(tmp_path / "meta" / "m.csv", manifest)
    lines = path.read_text().splitlines()
    assert lines[0] == "# ssondo-manifest v1 root=../audio"
    assert lines[1] == ",".join(COLUMNS)
    assert '"dog;bark, loud"' in lines[3]  # multi-label, comma inside a label is CSV-quoted
    back = read_manifest(path)
    assert back.root == root.resolve()
    assert back.clips == manifest.clips
    assert back.abs_path(back.clips[1]) == root.resolve() / "x" / "b.flac"
    # Moving manifest and audio together keeps it valid: the root is relative.
    moved = tmp_path / "moved" / "meta" / "m.csv"
    moved.parent.mkdir(parents=True)
    moved.write_text(path.read_text())
    assert read_manifest(moved).root == (tmp_path / "moved" / "audio").resolve()


def test_multilabel_class_names_counts_and_filters(tmp_path: Path) -> None:
    m = Manifest(tmp_path, _clips())
    assert m.class_names() == ["bark, loud", "cat", "dog"]
    assert m.class_counts() == {"bark, loud": 1, "cat": 1, "dog": 2}
    assert m.is_multilabel()
    assert [c.clip_id for c in m.filter(split="train")] == ["a", "d"]
    assert [c.clip_id for c in m.filter(split=["train", "test"], fold=2)] == ["d"]
    assert [c.clip_id for c in m.filter(labelled=False)] == ["c"]
    assert m.splits() == {"": 1, "test": 1, "train": 2}
    assert m.filter(split="train").root == m.root
    assert m.total_seconds == pytest.approx(7.25)


@pytest.mark.parametrize(
    "bad", ["/abs/a.wav", "C:/x/a.wav", "\\\\server\\a.wav", "../a.wav", "x/../../a.wav", "", "./"]
)
def test_absolute_and_escaping_paths_are_rejected(bad: str) -> None:
    with pytest.raises(ManifestError):
        ClipEntry("a", bad, 1.0, 16000)


def test_relative_paths_are_normalised() -> None:
    assert check_relative_path("x/./y/../a.wav") == "x/a.wav"
    assert check_relative_path("x\\a.wav") == "x/a.wav"


def test_reading_an_absolute_path_row_fails_with_row_number(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "# ssondo-manifest v1 root=.\n" + ",".join(COLUMNS) + "\n"
        "a,a.wav,1.0,16000,1,,,,,\n"
        "b,/etc/passwd,1.0,16000,1,,,,,\n"
    )
    with pytest.raises(ManifestError, match=r"row 2.*absolute"):
        read_manifest(path)


def test_duplicate_clip_ids_are_rejected(tmp_path: Path) -> None:
    clips = _clips()
    with pytest.raises(ManifestError, match="duplicate clip_id.*'a'"):
        Manifest(tmp_path, [*clips, ClipEntry("a", "other.wav", 1.0, 16000)])
    path = tmp_path / "m.csv"
    path.write_text(
        "# ssondo-manifest v1 root=.\n" + ",".join(COLUMNS) + "\n"
        "a,a.wav,1.0,16000,1,,,,,\na,b.wav,1.0,16000,1,,,,,\n"
    )
    with pytest.raises(ManifestError, match="duplicate"):
        read_manifest(path)


@pytest.mark.parametrize(
    "first", ["clip_id,path\n", "# ssondo-manifest v2 root=.\n", "# ssondo-manifest v1 root=/x\n"]
)
def test_bad_header_is_rejected(tmp_path: Path, first: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(first + ",".join(COLUMNS) + "\n")
    with pytest.raises(ManifestError):
        read_manifest(path)


def test_bad_entries_are_rejected() -> None:
    with pytest.raises(ManifestError, match="clip_id"):
        ClipEntry("a b", "a.wav", 1.0, 16000)
    with pytest.raises(ManifestError, match="label"):
        ClipEntry("a", "a.wav", 1.0, 16000, labels=("x;y",))
    with pytest.raises(ManifestError, match="repeated"):
        ClipEntry("a", "a.wav", 1.0, 16000, labels=("x", "x"))
    with pytest.raises(ManifestError, match="sample_rate"):
        ClipEntry("a", "a.wav", 1.0, 0)


def test_extra_comment_lines_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "# ssondo-manifest v1 root=.\n# made by hand\n" + ",".join(COLUMNS) + "\n"
        "# a comment row\na,a.wav,1.0,16000,1,x;y,train,3,s,l\n"
    )
    m = read_manifest(path)
    assert m.clips == [ClipEntry("a", "a.wav", 1.0, 16000, 1, ("x", "y"), "train", 3, "s", "l")]
