"""One CSV format for every audio corpus and labelled task: the ssondo manifest, version 1.

File layout::

    # ssondo-manifest v1 root=<root>
    clip_id,path,duration,sample_rate,channels,labels,split,fold,source,license
    piano__c4,gm/piano__c4.flac,2.000000,32000,1,piano,train,,gm_timgm6mb,GPL-2.0-only
    ...

- The first line is a comment that declares the format version and the audio root. ``<root>`` is a path
  relative to the folder holding the manifest file (``.`` for the same folder; ``..`` steps are allowed so a
  manifest under ``outputs/`` can point at a data disk). It is never absolute, so a corpus folder can be moved
  or copied together with its manifest.
- ``clip_id``: stable, unique, non-empty identifier (no whitespace); other artifacts (teacher store, probe
  caches) key on it.
- ``path``: POSIX path of the audio file relative to the root. Absolute paths and paths that leave the root
  through ``..`` are rejected.
- ``duration`` (seconds), ``sample_rate`` (Hz), ``channels``: header facts of the file.
- ``labels``: ``;``-separated class names; empty means unlabelled; several means multi-label.
- ``split``: a free token such as ``train``, ``valid``, ``test``, ``eval``, ``balanced_train``; empty if none.
- ``fold``: integer cross-validation fold, empty if none.
- ``source``: where the clip comes from (``gm_timgm6mb``, ``espeak``, ``audioset``, ...).
- ``license``: SPDX-like licence of the audio.

Further ``#`` comment lines after the first are ignored when reading, except one written by corpus imports::

    # source_root=/data/corpus2

It records where the audio was (absolute) when the manifest was written. It is never used to find the audio
(``root=`` alone does that); error messages name it when the declared root has gone missing, so a user who
moved the outputs or the audio learns where the corpus came from.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ssondo_train.utils.io import atomic_write_text

MANIFEST_VERSION = 1
COLUMNS: tuple[str, ...] = (
    "clip_id",
    "path",
    "duration",
    "sample_rate",
    "channels",
    "labels",
    "split",
    "fold",
    "source",
    "license",
)
LABEL_SEP = ";"
# File names the prepare stage writes; later stages find them through these constants.
CORPUS_MANIFEST = "corpus.csv"
TASK_MANIFEST_DIR = "tasks"

_HEADER_RE = re.compile(r"^#\s*ssondo-manifest\s+v(?P<version>\d+)\s+root=(?P<root>.*)$")
_SOURCE_RE = re.compile(r"^#\s*source_root=(?P<path>.+)$")
# How many clip files check_audio_root looks for (spread over the manifest): a few stat calls, even on NFS.
ROOT_PROBE_FILES = 50
_TOKEN_RE = re.compile(r"^[^\s,;]*$")


class ManifestError(ValueError):
    """A manifest file or entry breaks the format (bad header, absolute path, duplicate clip id, ...)."""


class AudioRootError(ManifestError):
    """The audio a manifest points at is not there (its root folder is missing or holds none of its files)."""


def check_relative_path(path: str, *, what: str = "path") -> str:
    """Return ``path`` as a normalised POSIX relative path that stays inside its root.

    Raises:
        ManifestError: ``path`` is empty, absolute (``/x``, ``C:/x``, ``\\\\server``) or escapes with ``..``.
    """
    if not path:
        raise ManifestError(f"{what} is empty")
    posix = path.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:/", posix):
        raise ManifestError(f"{what} {path!r} is absolute; manifest paths must be relative to the root")
    parts: list[str] = []
    for part in PurePosixPath(posix).parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ManifestError(f"{what} {path!r} escapes the manifest root through '..'")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        raise ManifestError(f"{what} {path!r} does not name a file under the root")
    return "/".join(parts)


@dataclass(frozen=True)
class ClipEntry:
    """One row of a manifest. ``path`` is relative to the manifest root (see the module docstring)."""

    clip_id: str
    path: str
    duration: float
    sample_rate: int
    channels: int = 1
    labels: tuple[str, ...] = ()
    split: str = ""
    fold: int | None = None
    source: str = ""
    license: str = ""

    def __post_init__(self) -> None:
        if not self.clip_id or not _TOKEN_RE.match(self.clip_id):
            raise ManifestError(f"clip_id {self.clip_id!r} must be non-empty without whitespace, ',' or ';'")
        object.__setattr__(self, "path", check_relative_path(self.path, what=f"path of clip {self.clip_id}"))
        object.__setattr__(self, "labels", tuple(self.labels))
        for label in self.labels:
            if not label or LABEL_SEP in label or label != label.strip():
                raise ManifestError(f"clip {self.clip_id}: label {label!r} is empty, padded or holds ';'")
        if len(set(self.labels)) != len(self.labels):
            raise ManifestError(f"clip {self.clip_id}: repeated label in {self.labels}")
        if not _TOKEN_RE.match(self.split):
            raise ManifestError(f"clip {self.clip_id}: split {self.split!r} must be a token without spaces")
        if self.duration < 0 or self.sample_rate <= 0 or self.channels <= 0:
            raise ManifestError(
                f"clip {self.clip_id}: duration {self.duration}, sample_rate {self.sample_rate} and channels "
                f"{self.channels} must be non-negative / positive"
            )

    def to_row(self) -> dict[str, str]:
        return {
            "clip_id": self.clip_id,
            "path": self.path,
            "duration": f"{self.duration:.6f}",
            "sample_rate": str(self.sample_rate),
            "channels": str(self.channels),
            "labels": LABEL_SEP.join(self.labels),
            "split": self.split,
            "fold": "" if self.fold is None else str(self.fold),
            "source": self.source,
            "license": self.license,
        }

    @classmethod
    def from_row(cls, row: dict[str, str], where: str = "") -> ClipEntry:
        try:
            labels = tuple(x.strip() for x in row["labels"].split(LABEL_SEP)) if row["labels"].strip() else ()
            fold = row["fold"].strip()
            return cls(
                clip_id=row["clip_id"].strip(),
                path=row["path"].strip(),
                duration=float(row["duration"]),
                sample_rate=int(row["sample_rate"]),
                channels=int(row["channels"]),
                labels=labels,
                split=row["split"].strip(),
                fold=int(fold) if fold else None,
                source=row["source"].strip(),
                license=row["license"].strip(),
            )
        except ManifestError as err:
            raise ManifestError(f"{where}: {err}") from err
        except (KeyError, TypeError, ValueError) as err:
            raise ManifestError(f"{where}: malformed row {row!r}: {err}") from err


@dataclass
class Manifest:
    """A set of clips under one root folder.

    Attributes:
        root: folder the clip paths are relative to (absolute in memory; stored relative in the file).
        clips: entries, in file order.
        root_text: the ``root=`` value of the file this manifest was read from (``None`` if built in memory).
        source_root: absolute audio root recorded when the manifest was written (``# source_root=`` line of
            imported corpora), or ``None``.
    """

    root: Path
    clips: list[ClipEntry] = field(default_factory=list)
    root_text: str | None = None
    source_root: str | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        counts = Counter(c.clip_id for c in self.clips)
        dups = sorted(k for k, n in counts.items() if n > 1)
        if dups:
            raise ManifestError(f"duplicate clip_id(s): {dups[:10]}{' ...' if len(dups) > 10 else ''}")

    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        return iter(self.clips)

    def abs_path(self, entry: ClipEntry) -> Path:
        """Absolute path of ``entry``'s audio file."""
        return self.root / entry.path

    def filter(
        self,
        split: str | Sequence[str] | None = None,
        *,
        source: str | None = None,
        fold: int | None = None,
        labelled: bool | None = None,
    ) -> Manifest:
        """A new manifest (same root) with the clips that match every given criterion."""
        splits = {split} if isinstance(split, str) else (set(split) if split is not None else None)
        keep = [
            c
            for c in self.clips
            if (splits is None or c.split in splits)
            and (source is None or c.source == source)
            and (fold is None or c.fold == fold)
            and (labelled is None or bool(c.labels) == labelled)
        ]
        return Manifest(self.root, keep, root_text=self.root_text, source_root=self.source_root)

    def class_names(self) -> list[str]:
        """Sorted distinct labels over all clips (the class index order of a task)."""
        return sorted({label for c in self.clips for label in c.labels})

    def class_counts(self) -> dict[str, int]:
        """Clips per label (a multi-label clip counts once for each of its labels), in class order."""
        counts = Counter(label for c in self.clips for label in c.labels)
        return {name: counts[name] for name in self.class_names()}

    def splits(self) -> dict[str, int]:
        """Clips per split value, sorted by split name."""
        return dict(sorted(Counter(c.split for c in self.clips).items()))

    @property
    def total_seconds(self) -> float:
        return float(sum(c.duration for c in self.clips))

    def is_multilabel(self) -> bool:
        return any(len(c.labels) > 1 for c in self.clips)


def _relative_root(manifest_path: Path, root: Path) -> str:
    rel = os.path.relpath(Path(root).resolve(), Path(manifest_path).resolve().parent)
    return PurePosixPath(*Path(rel).parts).as_posix() if rel != "." else "."


def format_manifest(manifest: Manifest, root_text: str, source_root: str | None = None) -> str:
    """The file content of ``manifest`` with ``root_text`` as the declared (relative) root.

    Args:
        source_root: absolute audio root to record on a ``# source_root=`` line (informational), or ``None``.
    """
    buf = io.StringIO()
    buf.write(f"# ssondo-manifest v{MANIFEST_VERSION} root={root_text}\n")
    if source_root is not None:
        buf.write(f"# source_root={source_root}\n")
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for clip in manifest.clips:
        writer.writerow(clip.to_row())
    return buf.getvalue()


def write_manifest(path: str | Path, manifest: Manifest, *, record_source: bool = False) -> Path:
    """Write ``manifest`` to ``path`` atomically; the root is stored relative to ``path``'s folder.

    Args:
        record_source: also record the absolute audio root (``# source_root=``), for corpora imported from
            a folder outside the run; error messages name it if the relative root breaks later. Off for
            manifests whose audio lives beside them (the demo), so their files stay byte-identical wherever
            the run folder is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = Path(manifest.root).resolve().as_posix() if record_source else None
    atomic_write_text(path, format_manifest(manifest, _relative_root(path, manifest.root), source))
    return path


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest file; the root is resolved against the file's folder.

    Raises:
        ManifestError: missing/unknown header, wrong columns, bad row, absolute path, duplicate clip id.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines:
        raise ManifestError(f"{path}: empty file, expected '# ssondo-manifest v1 root=...' first")
    match = _HEADER_RE.match(lines[0].strip())
    if not match:
        raise ManifestError(
            f"{path}: first line must be '# ssondo-manifest v1 root=<relative path>', got {lines[0][:80]!r}"
        )
    version = int(match["version"])
    if version != MANIFEST_VERSION:
        raise ManifestError(f"{path}: manifest version {version} is not supported (this code reads v1)")
    root_text = match["root"].strip()
    if not root_text or root_text.startswith("/") or re.match(r"^[A-Za-z]:[/\\]", root_text):
        raise ManifestError(f"{path}: root {root_text!r} must be a path relative to the manifest's folder")
    comments = [ln.strip() for ln in lines[1:] if ln.lstrip().startswith("#")]
    sources = [m["path"].strip() for m in map(_SOURCE_RE.match, comments) if m]
    body = [ln for ln in lines[1:] if not ln.lstrip().startswith("#")]
    reader = csv.DictReader(body)
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ManifestError(f"{path}: columns {reader.fieldnames} differ from {list(COLUMNS)}")
    clips = [ClipEntry.from_row(row, where=f"{path} row {i + 1}") for i, row in enumerate(reader)]
    try:
        return Manifest(
            (path.parent / root_text).resolve(),
            clips,
            root_text=root_text,
            source_root=sources[0] if sources else None,
        )
    except ManifestError as err:
        raise ManifestError(f"{path}: {err}") from err


def check_audio_root(
    manifest: Manifest,
    manifest_path: str | Path,
    clips: Sequence[ClipEntry] | None = None,
    *,
    origin: str | None = None,
    probe: int = ROOT_PROBE_FILES,
) -> None:
    """Check, before a long job starts, that the audio of ``manifest`` is where its header says.

    The root is relative to the manifest's folder, so moving the outputs (or the audio) alone breaks it;
    without this check every clip would fail later as a decode error. Besides the root folder, up to
    ``probe`` files spread over ``clips`` are looked for: a root that exists but holds none of them is the
    wrong folder.

    Args:
        manifest: read from ``manifest_path`` (its ``root_text`` / ``source_root`` go into the message).
        manifest_path: the manifest file.
        clips: the clips the job will read (default: all of the manifest's).
        origin: where the corpus was imported from, when the manifest does not record it.
        probe: how many files to look for (0: only the root folder).

    Raises:
        AudioRootError: the root folder is missing, or none of the probed files exists; the message names the
            root, the manifest's ``root=`` value, where the corpus came from and what to do.
    """
    path = Path(manifest_path).resolve()
    root = Path(manifest.root)
    clips = list(manifest.clips if clips is None else clips)
    if not root.is_dir():
        problem = f"audio root {root} not found"
    else:
        if not clips or probe <= 0:
            return
        step = max(1, len(clips) // probe)
        sample = clips[::step][:probe]
        if any((root / c.path).exists() for c in sample):
            return
        problem = (
            f"none of the {len(sample)} audio files looked for exists under audio root {root} "
            f"(e.g. {root / sample[0].path})"
        )
    raise AudioRootError(_root_advice(problem, manifest, path, origin))


def _root_advice(problem: str, manifest: Manifest, path: Path, origin: str | None) -> str:
    declared = manifest.root_text or _relative_root(path, manifest.root)
    text = f"{problem} ({path.name} says root={declared}, relative to {path.parent})"
    source = manifest.source_root or origin
    if not source:
        return f"{text}; move the audio to {manifest.root} or edit root= in the first line of {path}"
    text += f"; the corpus was imported from {source}"
    source_dir = Path(source)
    if source_dir.is_absolute() and source_dir.is_dir() and source_dir.resolve() != Path(manifest.root):
        # The audio is still where it was imported from: the outputs moved. Say the exact root to write.
        fixed = _relative_root(path, source_dir)
        return f"{text}, which still exists: set root={fixed} in the first line of {path}"
    return f"{text}; move the audio back or edit root= in the first line of {path}"
