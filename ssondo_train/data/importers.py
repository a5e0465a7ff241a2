"""Build manifests from audio on disk: any folder of audio files, or an AudioSet segments CSV.

Importers read file headers only (no decoding), never crash on a bad file, and return the files they could
not use with a reason, so a 2-million-file import reports its casualties instead of dying on one.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ssondo_train.audio.io import AUDIO_EXTENSIONS, AudioError, audio_info
from ssondo_train.data.manifest import ClipEntry, Manifest, ManifestError

log = logging.getLogger(__name__)

AUDIOSET_LICENSE = "CC-BY-4.0 labels; audio under YouTube terms"


class CorpusImportError(ValueError):
    """A corpus cannot be imported as configured (unknown ``data.*`` key, missing folder, no usable audio)."""


@dataclass(frozen=True)
class ImportFailure:
    """A file (or CSV row) that could not be imported, and why (``decode_error``, ``empty``, ...)."""

    path: str
    reason: str
    message: str = ""


def iter_audio_files(folder: Path) -> list[Path]:
    """Audio files under ``folder`` (recursive, hidden entries skipped), sorted by relative POSIX path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [
            Path(dirpath) / n
            for n in filenames
            if not n.startswith(".") and Path(n).suffix.lower() in AUDIO_EXTENSIONS
        ]
    # os.walk's order is the filesystem's; sorting makes imports identical on every machine.
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def folder_clip_id(rel_path: str) -> str:
    """Clip id of a file from its root-relative POSIX path.

    The extension is dropped, ``/`` becomes ``__``, and spaces, commas and semicolons become ``_``.
    """
    stem = rel_path.rsplit(".", 1)[0] if "." in Path(rel_path).name else rel_path
    return stem.replace("/", "__").replace(" ", "_").replace(",", "_").replace(";", "_")


def _entry_from_file(
    path: Path,
    rel: str,
    clip_id: str,
    *,
    labels: tuple[str, ...],
    split: str,
    source: str,
    license: str,
) -> ClipEntry:
    info = audio_info(path)
    if info.frames <= 0:
        raise _Empty(f"{path} has no audio frames")
    return ClipEntry(
        clip_id=clip_id,
        path=rel,
        duration=info.duration,
        sample_rate=info.sample_rate,
        channels=info.channels,
        labels=labels,
        split=split,
        source=source,
        license=license,
    )


class _Empty(Exception):
    pass


def _try_entry(path: Path, rel: str, clip_id: str, failures: list[ImportFailure], **kw) -> ClipEntry | None:
    try:
        return _entry_from_file(path, rel, clip_id, **kw)
    except AudioError as err:
        failures.append(ImportFailure(rel, err.reason, str(err)))
    except _Empty as err:
        failures.append(ImportFailure(rel, "empty", str(err)))
    except ManifestError as err:
        failures.append(ImportFailure(rel, "bad_entry", str(err)))
    return None


def import_folder(
    folder: str | Path,
    *,
    source: str | None = None,
    license: str = "",
    split: str = "",
    label_from_parent: bool = False,
) -> tuple[Manifest, list[ImportFailure]]:
    """Manifest of every audio file under ``folder`` (root = ``folder``).

    Args:
        folder: root folder, scanned recursively in sorted order.
        source: value of the ``source`` column (default: the folder's name).
        license: value of the ``license`` column.
        split: value of the ``split`` column.
        label_from_parent: label each clip with its parent folder's name (class-per-folder layouts); files
            directly in ``folder`` stay unlabelled.

    Returns:
        ``(manifest, failures)``: unreadable, empty or duplicate-id files are left out and listed in
        ``failures`` with a reason.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"audio folder {folder} does not exist")
    source = source if source is not None else folder.name
    clips: list[ClipEntry] = []
    failures: list[ImportFailure] = []
    seen: dict[str, str] = {}
    for path in iter_audio_files(folder):
        rel = path.relative_to(folder).as_posix()
        clip_id = folder_clip_id(rel)
        if clip_id in seen:
            failures.append(ImportFailure(rel, "duplicate_clip_id", f"same clip id as {seen[clip_id]}"))
            continue
        parent = Path(rel).parent.name
        labels = (parent,) if label_from_parent and parent else ()
        entry = _try_entry(
            path, rel, clip_id, failures, labels=labels, split=split, source=source, license=license
        )
        if entry is not None:
            seen[clip_id] = rel
            clips.append(entry)
    if failures:
        log.warning(
            "import of %s: %d file(s) skipped (%s)",
            folder,
            len(failures),
            ", ".join(sorted({f.reason for f in failures})),
        )
    return Manifest(folder, clips), failures


# --------------------------------------------------------------------------------------------- AudioSet


@dataclass(frozen=True)
class AudioSetSegment:
    """One row of an AudioSet segments CSV."""

    ytid: str
    start: float
    end: float
    labels: tuple[str, ...]

    @property
    def clip_id(self) -> str:
        return f"{self.ytid}_{self.start:.3f}_{self.end:.3f}"


@dataclass
class AudioSetImport:
    """What an AudioSet import found: the manifest plus the segments it could not use."""

    manifest: Manifest
    n_rows: int
    missing: list[str] = field(default_factory=list)
    failures: list[ImportFailure] = field(default_factory=list)
    duplicate_rows: int = 0
    unknown_labels: list[str] = field(default_factory=list)

    @property
    def n_missing(self) -> int:
        return len(self.missing)


def read_audioset_segments(csv_path: str | Path) -> tuple[list[AudioSetSegment], list[ImportFailure]]:
    """Parse an AudioSet segments CSV (``YTID, start_seconds, end_seconds, positive_labels``).

    Every line starting with ``#`` is a comment (the official files have three, including the
    ``# YTID, start_seconds, ...`` column line); blank lines are skipped. The label list is a quoted,
    comma-separated list of MIDs. Malformed rows are returned as failures, not raised.
    """
    segments: list[AudioSetSegment] = []
    failures: list[ImportFailure] = []
    with open(csv_path, encoding="utf-8", newline="") as fh:
        lines = [(i + 1, ln) for i, ln in enumerate(fh) if ln.strip() and not ln.lstrip().startswith("#")]
    rows = csv.reader((ln for _, ln in lines), skipinitialspace=True)
    for (lineno, _), row in zip(lines, rows, strict=True):
        where = f"{Path(csv_path).name}:{lineno}"
        try:
            if len(row) != 4:
                raise ValueError(f"expected 4 fields, got {len(row)}")
            ytid = row[0].strip()
            if not ytid:
                raise ValueError("empty YTID")
            labels = tuple(m.strip() for m in row[3].split(",") if m.strip())
            segments.append(AudioSetSegment(ytid, float(row[1]), float(row[2]), labels))
        except ValueError as err:
            failures.append(ImportFailure(where, "bad_row", str(err)))
    return segments, failures


def read_class_labels(csv_path: str | Path) -> dict[str, str]:
    """MID -> display name from AudioSet's ``class_labels_indices.csv`` (``index,mid,display_name``)."""
    with open(csv_path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, skipinitialspace=True)
        return {row["mid"].strip(): row["display_name"].strip() for row in reader}


def _index_audio_by_stem(folder: Path) -> tuple[dict[str, Path], int]:
    index: dict[str, Path] = {}
    shadowed = 0
    for path in iter_audio_files(folder):
        stem = path.name[: -len(path.suffix)]
        if stem in index:
            shadowed += 1  # first in sorted order wins, so the choice is reproducible
            continue
        index[stem] = path
    return index, shadowed


def import_audioset(
    segments_csv: str | Path,
    audio_dir: str | Path,
    *,
    class_labels_csv: str | Path | None = None,
    split: str | None = None,
    source: str = "audioset",
    license: str = AUDIOSET_LICENSE,
) -> AudioSetImport:
    """Match an AudioSet segments CSV against local files ``<ytid>_<start:.3f>_<end:.3f>.<ext>``.

    Files may sit anywhere under ``audio_dir`` (the upstream layout ``<set>/<subdir>/`` or flat).

    Args:
        segments_csv: e.g. ``balanced_train_segments.csv``.
        audio_dir: manifest root, searched recursively.
        class_labels_csv: optional ``class_labels_indices.csv``; labels become display names (MIDs that it
            lacks are kept as MIDs and listed in ``unknown_labels``).
        split: ``split`` column value; default: the CSV name without ``_segments`` (``balanced_train``).
        source, license: column values.

    Returns:
        ``AudioSetImport`` with the manifest (rows in CSV order) and the missing / failed / duplicate rows.
    """
    audio_dir = Path(audio_dir).resolve()
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"AudioSet audio folder {audio_dir} does not exist")
    split = split if split is not None else Path(segments_csv).stem.removesuffix("_segments")
    names = read_class_labels(class_labels_csv) if class_labels_csv else None
    segments, failures = read_audioset_segments(segments_csv)
    index, shadowed = _index_audio_by_stem(audio_dir)
    if shadowed:
        log.warning(
            "%d audio file(s) under %s share a name with another one; the first (sorted) is used",
            shadowed,
            audio_dir,
        )
    clips: list[ClipEntry] = []
    missing: list[str] = []
    unknown: set[str] = set()
    seen: set[str] = set()
    duplicates = 0
    for seg in segments:
        clip_id = seg.clip_id
        if clip_id in seen:
            duplicates += 1
            continue
        seen.add(clip_id)
        path = index.get(clip_id)
        if path is None:
            missing.append(clip_id)
            continue
        if names is None:
            labels = seg.labels
        else:
            unknown.update(m for m in seg.labels if m not in names)
            labels = tuple(dict.fromkeys(names.get(m, m) for m in seg.labels))
        rel = path.relative_to(audio_dir).as_posix()
        entry = _try_entry(
            path, rel, clip_id, failures, labels=labels, split=split, source=source, license=license
        )
        if entry is not None:
            clips.append(entry)
    result = AudioSetImport(
        Manifest(audio_dir, clips),
        n_rows=len(segments),
        missing=missing,
        failures=failures,
        duplicate_rows=duplicates,
        unknown_labels=sorted(unknown),
    )
    log.info(
        "AudioSet import of %s: %d rows, %d matched, %d missing, %d failed",
        segments_csv,
        result.n_rows,
        len(clips),
        result.n_missing,
        len(failures),
    )
    return result


# ------------------------------------------------------------------------------------- stage entry point


def _require_folder(key: str, value: str | Path) -> None:
    """Raise :class:`CorpusImportError` naming ``key`` when ``value`` is not an existing folder."""
    folder = Path(value)
    if not folder.is_dir():
        raise CorpusImportError(
            f"{key}={value}: audio folder {folder.resolve()} not found; set {key} to the folder that holds "
            "the audio files"
        )


def corpus_figures(manifest: Manifest) -> dict[str, object]:
    """Clips, hours, clips per source and per licence of a corpus manifest (for ``done.json``)."""
    from collections import Counter

    return {
        "clips": len(manifest),
        "hours": round(manifest.total_seconds / 3600, 4),
        "sources": dict(sorted(Counter(c.source for c in manifest).items())),
        "licences": dict(sorted(Counter(c.license for c in manifest).items())),
    }


def import_corpus(data: dict, out_dir: str | Path) -> dict[str, object]:
    """Write ``corpus.csv`` in ``out_dir`` for the non-demo corpora: ``data.kind`` ``folder`` or ``audioset``.

    ``folder`` keys: ``root`` (folder of audio), optional ``source``, ``license``, ``split``,
    ``label_from_parent``. ``audioset`` keys: ``segments_csv`` (one path or a list), ``audio_dir``, optional
    ``class_labels_csv``. Skipped files are written to ``import_failures.json``. The manifest records the
    absolute audio folder (``# source_root=``) besides its relative root, so that a later stage which no
    longer finds the audio (outputs or audio moved) can say where the corpus came from.

    Returns:
        ``{"corpus": {...figures, "manifest", "failures", "missing"}, "tasks": {}}``.

    Raises:
        CorpusImportError: unknown kind or key, a required key unset, the audio folder or a segments CSV
            missing, or no usable audio file.
    """
    from ssondo_train.data.manifest import CORPUS_MANIFEST, write_manifest
    from ssondo_train.utils.io import atomic_write_json

    out_dir = Path(out_dir)
    kind = data.get("kind")
    allowed = {
        "folder": {"kind", "root", "source", "license", "split", "label_from_parent"},
        "audioset": {"kind", "segments_csv", "audio_dir", "class_labels_csv", "license"},
    }
    if kind not in allowed:
        raise CorpusImportError(f"data.kind must be one of demo, {', '.join(allowed)}; got {kind!r}")
    unknown = sorted(set(data) - allowed[kind])
    if unknown:
        raise CorpusImportError(
            f"unknown key(s) for data.kind={kind}: {', '.join(f'data.{k}' for k in unknown)}"
        )
    missing: list[str] = []
    if kind == "folder":
        if not data.get("root"):
            raise CorpusImportError("data.root (the folder of audio files) must be set for data.kind=folder")
        _require_folder("data.root", data["root"])
        manifest, failures = import_folder(
            data["root"],
            source=data.get("source"),
            license=data.get("license") or "",
            split=data.get("split") or "",
            label_from_parent=bool(data.get("label_from_parent", False)),
        )
    else:
        csvs = data.get("segments_csv")
        if not csvs or not data.get("audio_dir"):
            raise CorpusImportError("data.segments_csv and data.audio_dir must be set for data.kind=audioset")
        csvs = [csvs] if isinstance(csvs, str | Path) else list(csvs)
        _require_folder("data.audio_dir", data["audio_dir"])
        for csv_path in csvs:
            if not Path(csv_path).is_file():
                raise CorpusImportError(
                    f"data.segments_csv: {Path(csv_path).resolve()} not found; give the AudioSet segments "
                    "CSV file(s), e.g. data.segments_csv=[/data/AudioSet/eval_segments.csv]"
                )
        clips, failures = [], []
        root = Path(data["audio_dir"]).resolve()
        for csv_path in csvs:
            result = import_audioset(
                csv_path,
                root,
                class_labels_csv=data.get("class_labels_csv"),
                license=data.get("license") or AUDIOSET_LICENSE,
            )
            clips += result.manifest.clips
            failures += result.failures
            missing += result.missing
        manifest = Manifest(root, clips)
    if not len(manifest):
        raise CorpusImportError(
            f"data.kind={kind}: no usable audio file found ({len(failures)} failed, {len(missing)} missing)"
        )
    write_manifest(out_dir / CORPUS_MANIFEST, manifest, record_source=True)
    atomic_write_json(
        out_dir / "import_failures.json", {"failures": [f.__dict__ for f in failures], "missing": missing}
    )
    return {
        "corpus": {
            "manifest": CORPUS_MANIFEST,
            **corpus_figures(manifest),
            "failures": len(failures),
            "missing": len(missing),
        },
        "tasks": {},
    }
