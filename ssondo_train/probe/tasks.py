"""Downstream probe tasks: one :class:`ProbeTask` per dataset, read from the dataset's own on-disk layout.

A task lists its clips (id, absolute audio path, label indices, fold or split) and its protocol:

* ``"folds"``: cross-validation over predefined folds (train on the others, test on one): ESC-50, US8K;
* ``"splits"``: fixed ``train`` / ``valid`` / ``test`` splits (``valid`` may be absent, it is then carved out
  of ``train`` by the evaluator): FSD50K, GTZAN, NSynth, OpenMIC, MagnaTagATune, manifests.

Adapters only read metadata; they never decode audio. ``build_task(name, root, **kw)`` dispatches by name
(``TASK_BUILDERS``). ``ProbeTask.missing_files()`` checks the audio paths when wanted.
"""

from __future__ import annotations

import csv
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

Protocol = Literal["folds", "splits"]
SPLITS: tuple[str, ...] = ("train", "valid", "test")

ESC50_N_CLASSES = 50
US8K_CLASSES = (
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
    "gun_shot",
    "jackhammer",
    "siren",
    "street_music",
)
GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
NSYNTH_FAMILIES = (
    "bass",
    "brass",
    "flute",
    "guitar",
    "keyboard",
    "mallet",
    "organ",
    "reed",
    "string",
    "synth_lead",
    "vocal",
)
OPENMIC_CLASSES = (
    "accordion",
    "banjo",
    "bass",
    "cello",
    "clarinet",
    "cymbals",
    "drums",
    "flute",
    "guitar",
    "mallet_percussion",
    "mandolin",
    "organ",
    "piano",
    "saxophone",
    "synthesizer",
    "trombone",
    "trumpet",
    "ukulele",
    "violin",
    "voice",
)
MTT_TRAIN_DIRS = tuple("0123456789ab")
MTT_VALID_DIRS = ("c",)
MTT_TEST_DIRS = ("d", "e", "f")


@dataclass(frozen=True)
class ProbeClip:
    """One clip: ``labels`` are class indices; ``split`` is a fold id (int) or ``train``/``valid``/``test``.

    ``observed`` lists the classes whose label is known (OpenMIC's partial annotation); ``None`` = all known.
    """

    clip_id: str
    path: Path
    labels: tuple[int, ...]
    split: int | str
    observed: tuple[int, ...] | None = None


@dataclass
class ProbeTask:
    """A downstream task: clips, classes, task type (metric) and evaluation protocol."""

    name: str
    task_type: Literal["multiclass", "multilabel"]
    class_names: list[str]
    clips: list[ProbeClip]
    protocol: Protocol
    folds: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.task_type not in ("multiclass", "multilabel"):
            raise ValueError(
                f"{self.name}: task_type must be multiclass or multilabel, got {self.task_type!r}"
            )
        if self.protocol not in ("folds", "splits"):
            raise ValueError(f"{self.name}: protocol must be 'folds' or 'splits', got {self.protocol!r}")
        if not self.clips:
            raise ValueError(f"{self.name}: no clips")
        ids = [c.clip_id for c in self.clips]
        if len(set(ids)) != len(ids):
            dup = [k for k, n in Counter(ids).items() if n > 1][:5]
            raise ValueError(f"{self.name}: duplicate clip ids, e.g. {dup}")
        n = len(self.class_names)
        for c in self.clips:
            if any(not 0 <= i < n for i in c.labels):
                raise ValueError(f"{self.name}: clip {c.clip_id} has a label outside [0, {n})")
            if self.task_type == "multiclass" and len(c.labels) != 1:
                raise ValueError(f"{self.name}: multiclass clip {c.clip_id} has {len(c.labels)} labels")
        if self.protocol == "folds":
            found = sorted({c.split for c in self.clips})
            if any(not isinstance(f, int) for f in found):
                raise ValueError(f"{self.name}: fold ids must be ints, got {found[:5]}")
            if not self.folds:
                self.folds = list(found)
            elif set(found) - set(self.folds):
                raise ValueError(
                    f"{self.name}: clips in folds {sorted(set(found) - set(self.folds))} not listed"
                )
            if len(self.folds) < 2:
                raise ValueError(f"{self.name}: need at least 2 folds, got {self.folds}")
        else:
            bad = {c.split for c in self.clips} - set(SPLITS)
            if bad:
                raise ValueError(f"{self.name}: splits must be in {SPLITS}, got {sorted(map(str, bad))}")
            for s in ("train", "test"):
                if not any(c.split == s for c in self.clips):
                    raise ValueError(f"{self.name}: no clip in the {s!r} split")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def metric(self) -> str:
        """``"accuracy"`` (multiclass) or ``"mAP"`` (multilabel, macro over classes)."""
        return "accuracy" if self.task_type == "multiclass" else "mAP"

    def indices(self, split: int | str) -> np.ndarray:
        """Indices into ``clips`` of one fold id or split name, ``(M,)`` int64."""
        return np.array([i for i, c in enumerate(self.clips) if c.split == split], dtype=np.int64)

    def has_split(self, split: str) -> bool:
        return any(c.split == split for c in self.clips)

    def targets(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels of all clips: ``(N,)`` int64 (multiclass) or ``(N, C)`` float32 multi-hot (multilabel), and
        the ``(N, C)`` bool mask of observed labels (``None`` when every label is observed)."""
        if self.task_type == "multiclass":
            return np.array([c.labels[0] for c in self.clips], dtype=np.int64), None
        y = np.zeros((len(self.clips), self.n_classes), dtype=np.float32)
        for i, c in enumerate(self.clips):
            y[i, list(c.labels)] = 1.0
        if all(c.observed is None for c in self.clips):
            return y, None
        mask = np.ones_like(y, dtype=bool)
        for i, c in enumerate(self.clips):
            if c.observed is not None:
                mask[i] = False
                mask[i, list(c.observed)] = True
        return y, mask

    def class_counts(self, split: int | str | None = None) -> np.ndarray:
        """Positive count per class ``(C,)`` over all clips or one split/fold."""
        counts = np.zeros(self.n_classes, dtype=np.int64)
        for c in self.clips:
            if split is None or c.split == split:
                counts[list(c.labels)] += 1
        return counts

    def missing_files(self) -> list[Path]:
        """Audio paths that do not exist (an empty list means the dataset is complete)."""
        return [c.path for c in self.clips if not c.path.is_file()]

    def summary(self) -> dict[str, Any]:
        """Counts per fold/split, JSON-friendly."""
        per = Counter(str(c.split) for c in self.clips)
        return {
            "name": self.name,
            "task_type": self.task_type,
            "metric": self.metric,
            "protocol": self.protocol,
            "n_classes": self.n_classes,
            "n_clips": len(self.clips),
            "per_split": dict(sorted(per.items())),
        }


# --- helpers
def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _read_csv(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


# --- ESC-50
def load_esc50(root: str | Path) -> ProbeTask:
    """ESC-50: 2,000 5-s clips, 50 classes, 5 folds, accuracy.

    Layout (the GitHub archive ``ESC-50-master``)::

        root/meta/esc50.csv      filename,fold,target,category,esc10,src_file,take
        root/audio/<filename>    e.g. 1-100032-A-0.wav

    Class names come from ``category`` per ``target`` (0..49).
    """
    root = Path(root).resolve()
    rows = _read_csv(_require(root / "meta" / "esc50.csv", "ESC-50 metadata"))
    names: dict[int, str] = {}
    clips = []
    for r in rows:
        target = int(r["target"])
        names.setdefault(target, r["category"])
        clips.append(
            ProbeClip(Path(r["filename"]).stem, root / "audio" / r["filename"], (target,), int(r["fold"]))
        )
    class_names = [names.get(i, f"class_{i}") for i in range(max(ESC50_N_CLASSES, max(names) + 1))]
    return ProbeTask("esc50", "multiclass", class_names, clips, "folds")


# --- UrbanSound8K
def load_us8k(root: str | Path) -> ProbeTask:
    """UrbanSound8K: 8,732 clips (<= 4 s), 10 classes, 10 folds, accuracy.

    Layout::

        root/metadata/UrbanSound8K.csv   slice_file_name,fsID,start,end,salience,fold,classID,class
        root/audio/fold<k>/<slice_file_name>
    """
    root = Path(root).resolve()
    rows = _read_csv(_require(root / "metadata" / "UrbanSound8K.csv", "UrbanSound8K metadata"))
    names = list(US8K_CLASSES)
    clips = []
    for r in rows:
        cid, fold = int(r["classID"]), int(r["fold"])
        if r.get("class") and r["class"] != names[cid]:
            raise ValueError(f"US8K: classID {cid} is {r['class']!r}, expected {names[cid]!r}")
        path = root / "audio" / f"fold{fold}" / r["slice_file_name"]
        clips.append(ProbeClip(Path(r["slice_file_name"]).stem, path, (cid,), fold))
    return ProbeTask("us8k", "multiclass", names, clips, "folds", folds=list(range(1, 11)))


# --- FSD50K
def load_fsd50k(root: str | Path) -> ProbeTask:
    """FSD50K: 51,197 clips, 200 classes (multi-label), official splits, macro mAP.

    Layout (Zenodo archives unpacked side by side)::

        root/FSD50K.ground_truth/vocabulary.csv   no header: index,label,mid
        root/FSD50K.ground_truth/dev.csv          fname,labels,mids,split   (split: train | val)
        root/FSD50K.ground_truth/eval.csv         fname,labels,mids
        root/FSD50K.dev_audio/<fname>.wav
        root/FSD50K.eval_audio/<fname>.wav

    ``labels`` is a comma-separated list of vocabulary labels. dev ``train`` -> train, dev ``val`` -> valid,
    eval -> test. Clip ids are ``dev/<fname>`` and ``eval/<fname>``.
    """
    root = Path(root).resolve()
    gt = root / "FSD50K.ground_truth"
    with open(_require(gt / "vocabulary.csv", "FSD50K vocabulary"), newline="", encoding="utf-8") as fh:
        vocab = [row for row in csv.reader(fh) if row]
    vocab.sort(key=lambda r: int(r[0]))
    class_names = [r[1] for r in vocab]
    index = {name: i for i, name in enumerate(class_names)}
    clips = []
    for csv_name, audio_dir in (("dev.csv", "FSD50K.dev_audio"), ("eval.csv", "FSD50K.eval_audio")):
        for r in _read_csv(_require(gt / csv_name, f"FSD50K {csv_name}")):
            try:
                labels = tuple(sorted(index[lab] for lab in r["labels"].split(",") if lab))
            except KeyError as e:
                raise ValueError(f"FSD50K: label {e} of clip {r['fname']} not in vocabulary.csv") from None
            if csv_name == "eval.csv":
                split = "test"
            else:
                split = {"train": "train", "val": "valid"}.get(r.get("split", ""), "")
                if not split:
                    raise ValueError(f"FSD50K: dev clip {r['fname']} has split {r.get('split')!r}")
            clips.append(
                ProbeClip(
                    f"{csv_name[:-4]}/{r['fname']}", root / audio_dir / f"{r['fname']}.wav", labels, split
                )
            )
    return ProbeTask("fsd50k", "multilabel", class_names, clips, "splits")


# --- GTZAN
def _gtzan_genres_dir(root: Path) -> Path:
    for cand in (root / "genres", root / "genres_original", root):
        if cand.is_dir() and any((cand / g).is_dir() for g in GTZAN_GENRES):
            return cand
    raise FileNotFoundError(f"GTZAN: no genres/<genre>/ folders under {root}")


def _split_file(split_dir: Path, split: str, stems: Iterable[str]) -> Path | None:
    for stem in stems:
        for ext in (".txt", ".csv", ".npy"):
            p = split_dir / f"{stem}{ext}"
            if p.is_file():
                return p
    return None


def _read_split_entries(path: Path) -> list[str]:
    """One entry per line (text) or a 1-D string array (.npy, read without pickle)."""
    if path.suffix == ".npy":
        return [str(s).strip() for s in np.load(path, allow_pickle=False).reshape(-1) if str(s).strip()]
    return _read_lines(path)


def load_gtzan(root: str | Path, split_dir: str | Path) -> ProbeTask:
    """GTZAN, fault-filtered split (Kereliuk/Sturm, as used by Lee et al. and most SSL benchmarks), accuracy.

    Layout::

        root/genres/<genre>/<genre>.000NN.wav   (also accepted: genres_original/, .au files, or root itself)
        split_dir/{train,valid,test}_filtered.txt   (also gtzan_<split>_filtered.txt or <split>.txt)

    The split lists are NOT shipped with this package (they are not reproduced from memory); pass the folder
    holding them. Each line names a file, e.g. ``blues/blues.00029.wav`` or ``blues.00029.au``: only the stem
    ``<genre>.000NN`` is used, so extensions and folder prefixes may differ from the audio on disk.
    """
    root = Path(root).resolve()
    split_dir = Path(split_dir)
    gdir = _gtzan_genres_dir(root)
    ext_by_genre: dict[str, str] = {}
    for g in GTZAN_GENRES:
        found = {p.suffix for p in (gdir / g).glob(f"{g}.*")} if (gdir / g).is_dir() else set()
        ext_by_genre[g] = ".wav" if ".wav" in found or not found else sorted(found)[0]
    clips = []
    seen: dict[str, str] = {}
    for split in SPLITS:
        path = _split_file(split_dir, split, (f"{split}_filtered", f"gtzan_{split}_filtered", split))
        if path is None:
            raise FileNotFoundError(
                f"GTZAN: no {split} split file (e.g. {split}_filtered.txt) in {split_dir}"
            )
        for entry in _read_split_entries(path):
            stem = Path(entry.split()[-1]).name
            stem = stem.rsplit(".", 1)[0] if stem.count(".") >= 2 else stem
            genre = stem.split(".")[0]
            if genre not in GTZAN_GENRES:
                raise ValueError(f"GTZAN: cannot parse genre from {entry!r} in {path.name}")
            if stem in seen:
                raise ValueError(f"GTZAN: {stem} listed in both {seen[stem]} and {split}")
            seen[stem] = split
            audio = gdir / genre / f"{stem}{ext_by_genre[genre]}"
            clips.append(ProbeClip(stem, audio, (GTZAN_GENRES.index(genre),), split))
    return ProbeTask("gtzan", "multiclass", list(GTZAN_GENRES), clips, "splits")


# --- NSynth
def load_nsynth(root: str | Path) -> ProbeTask:
    """NSynth instrument family: 11 classes, official train/valid/test, accuracy.

    Layout (the TFRecord-free json/wav release)::

        root/nsynth-{train,valid,test}/examples.json   {note_str: {"instrument_family": int,
                                                                    "instrument_family_str": str, ...}}
        root/nsynth-{train,valid,test}/audio/<note_str>.wav
    """
    root = Path(root).resolve()
    clips = []
    for split in SPLITS:
        folder = root / f"nsynth-{split}"
        meta = json.loads(_require(folder / "examples.json", f"NSynth {split} metadata").read_text("utf-8"))
        for key in sorted(meta):
            ex = meta[key]
            fam = int(ex["instrument_family"])
            fam_str = ex.get("instrument_family_str")
            if not 0 <= fam < len(NSYNTH_FAMILIES) or (fam_str and fam_str != NSYNTH_FAMILIES[fam]):
                raise ValueError(f"NSynth: {key} has family {fam} / {fam_str!r}")
            clips.append(ProbeClip(key, folder / "audio" / f"{key}.wav", (fam,), split))
    return ProbeTask("nsynth", "multiclass", list(NSYNTH_FAMILIES), clips, "splits")


# --- OpenMIC
def load_openmic(root: str | Path, partition: str = "split01", threshold: float = 0.5) -> ProbeTask:
    """OpenMIC-2018: 20 instruments, partially labelled (missing labels masked), official split, macro mAP.

    Layout::

        root/openmic-2018.npz                    Y_true (N, 20) float, Y_mask (N, 20) bool, sample_key (N,)
        str
        root/class-map.json                      optional {name: index}; the built-in 20 names otherwise
        root/partitions/<partition>_{train,test}.csv   one sample_key per line
        root/audio/<first 3 chars of key>/<sample_key>.ogg

    A label is positive when observed and ``Y_true >= threshold``. There is no official validation split (the
    evaluator carves one out of train). The npz is read without pickle.
    """
    root = Path(root).resolve()
    npz_path = _require(root / "openmic-2018.npz", "OpenMIC npz")
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            y_true, y_mask, keys = z["Y_true"], z["Y_mask"].astype(bool), z["sample_key"]
    except ValueError as e:
        raise ValueError(
            f"OpenMIC: {npz_path} needs pickle to load ({e}); refusing an object array"
        ) from None
    keys = [str(k) for k in keys]
    class_names = list(OPENMIC_CLASSES)
    cmap = root / "class-map.json"
    if cmap.is_file():
        mapping = json.loads(cmap.read_text("utf-8"))
        class_names = [name for name, _ in sorted(mapping.items(), key=lambda kv: int(kv[1]))]
    if y_true.shape != (len(keys), len(class_names)) or y_mask.shape != y_true.shape:
        raise ValueError(f"OpenMIC: Y_true {y_true.shape}, Y_mask {y_mask.shape}, {len(keys)} keys")
    row_of = {k: i for i, k in enumerate(keys)}
    clips = []
    for split in ("train", "test"):
        part = _require(root / "partitions" / f"{partition}_{split}.csv", f"OpenMIC {split} partition")
        for key in _read_lines(part):
            key = key.split(",")[0].strip()
            if key == "sample_key":  # tolerate a header line
                continue
            if key not in row_of:
                raise ValueError(f"OpenMIC: partition key {key!r} not in the npz")
            i = row_of[key]
            observed = tuple(int(c) for c in np.flatnonzero(y_mask[i]))
            labels = tuple(int(c) for c in np.flatnonzero(y_mask[i] & (y_true[i] >= threshold)))
            clips.append(ProbeClip(key, root / "audio" / key[:3] / f"{key}.ogg", labels, split, observed))
    return ProbeTask("openmic", "multilabel", class_names, clips, "splits")


# --- MagnaTagATune
def load_magnatagatune(
    root: str | Path,
    split_dir: str | Path | None = None,
    n_tags: int = 50,
    drop_untagged: bool = True,
    exclude_clip_ids: Sequence[str] = (),
    audio_dir: str | Path | None = None,
) -> ProbeTask:
    """MagnaTagATune top-``n_tags`` (default 50) tagging, macro mAP.

    Layout::

        root/annotations_final.csv   tab-separated, quoted: clip_id, 188 tag columns (0/1), mp3_path
        root/<mp3_path>              e.g. f/american_bach_soloists-...-30-59.mp3  (or root/mp3/<mp3_path>)

    Tags: the ``n_tags`` most frequent tag columns over the whole file (ties broken by column order), listed
    in file column order.
    Split: by default the common rule on the mp3 folder: ``0``-``b`` train, ``c`` valid, ``d``-``f`` test.
    With ``split_dir``, files ``{train,valid,test}.{txt,csv,npy}`` give the split instead; each line/entry is
    a
    clip_id, an mp3_path, or ``index<TAB>mp3_path`` (the last field is used). ``drop_untagged`` removes clips
    without any of the kept tags (common practice); ``exclude_clip_ids`` drops known-broken files.
    """
    root = Path(root).resolve()
    ann = _require(root / "annotations_final.csv", "MagnaTagATune annotations")
    rows = _read_csv(ann, delimiter="\t")
    if not rows or "clip_id" not in rows[0] or "mp3_path" not in rows[0]:
        raise ValueError(f"MTT: {ann} must be tab-separated with clip_id and mp3_path columns")
    tag_cols = [c for c in rows[0] if c not in ("clip_id", "mp3_path")]
    counts = {t: sum(r[t].strip() == "1" for r in rows) for t in tag_cols}
    order = sorted(range(len(tag_cols)), key=lambda j: (-counts[tag_cols[j]], j))
    top = [tag_cols[j] for j in sorted(order[:n_tags])]  # kept in file column order
    if audio_dir is None:
        audio_root = root / "mp3" if (root / "mp3").is_dir() else root
    else:
        audio_root = Path(audio_dir).resolve()

    split_of: dict[str, str] = {}
    if split_dir is not None:
        for split in SPLITS:
            path = _split_file(Path(split_dir), split, (split,))
            if path is None:
                raise FileNotFoundError(f"MTT: no {split}.txt/.csv/.npy in {split_dir}")
            for entry in _read_split_entries(path):
                split_of[entry.split("\t")[-1].split(",")[-1].strip()] = split

    excluded = {str(c) for c in exclude_clip_ids}
    clips, n_untagged = [], 0
    for r in rows:
        cid, mp3 = r["clip_id"].strip(), r["mp3_path"].strip()
        if not mp3 or cid in excluded:
            continue
        if split_dir is None:
            folder = mp3.split("/")[0]
            split = "train" if folder in MTT_TRAIN_DIRS else "valid" if folder in MTT_VALID_DIRS else "test"
            if folder not in MTT_TRAIN_DIRS + MTT_VALID_DIRS + MTT_TEST_DIRS:
                raise ValueError(f"MTT: unexpected mp3 folder {folder!r} in {mp3!r}")
        else:
            split = split_of.get(cid) or split_of.get(mp3)
            if split is None:
                continue
        labels = tuple(i for i, t in enumerate(top) if r[t].strip() == "1")
        if not labels and drop_untagged:
            n_untagged += 1
            continue
        clips.append(ProbeClip(cid, audio_root / mp3, labels, split))
    log.info("MTT: %d clips kept, %d without a top-%d tag dropped", len(clips), n_untagged, n_tags)
    return ProbeTask("magna-tag-a-tune", "multilabel", top, clips, "splits")


# --- manifest
def load_manifest(
    manifest: str | Path,
    name: str | None = None,
    task_type: Literal["multiclass", "multilabel"] | None = None,
    class_names: Sequence[str] | None = None,
    audio_root: str | Path | None = None,
) -> ProbeTask:
    """Generic task from a CSV manifest: ``clip_id,path,labels,split`` or ``clip_id,path,labels,fold``.

    ``labels`` are class names separated by ``;``. ``split`` values are ``train``/``valid``/``test``;
    ``fold`` values are integers. Relative paths are resolved against the optional ``root`` column, else
    ``audio_root``, else the manifest's folder. ``class_names`` defaults to the sorted set of labels seen;
    ``task_type`` defaults to multilabel if any clip has != 1 label.
    """
    manifest = Path(manifest).resolve()
    rows = _read_csv(_require(manifest, "manifest"))
    if not rows:
        raise ValueError(f"manifest {manifest} is empty")
    cols = set(rows[0])
    missing = {"clip_id", "path", "labels"} - cols
    if missing or not ({"split", "fold"} & cols):
        raise ValueError(
            f"manifest {manifest} needs clip_id,path,labels and split or fold; missing {missing}"
        )
    use_folds = "fold" in cols and "split" not in cols
    base = Path(audio_root).resolve() if audio_root is not None else manifest.parent
    parsed = [[lab.strip() for lab in r["labels"].split(";") if lab.strip()] for r in rows]
    names = list(class_names) if class_names is not None else sorted({lab for labs in parsed for lab in labs})
    index = {n: i for i, n in enumerate(names)}
    if task_type is None:
        task_type = "multiclass" if all(len(labs) == 1 for labs in parsed) else "multilabel"
    clips = []
    for r, labs in zip(rows, parsed, strict=True):
        try:
            labels = tuple(sorted({index[lab] for lab in labs}))
        except KeyError as e:
            raise ValueError(f"manifest: label {e} of clip {r['clip_id']} not in class_names") from None
        path = Path(r["path"])
        if not path.is_absolute():
            path = (Path(r["root"]) if r.get("root") else base) / path
        split: int | str = int(r["fold"]) if use_folds else r["split"].strip()
        clips.append(ProbeClip(r["clip_id"], path.resolve(), labels, split))
    return ProbeTask(name or manifest.stem, task_type, names, clips, "folds" if use_folds else "splits")


# --- ssondo manifests (stage=prepare's tasks/<task>.csv, see ssondo_train.data.manifest)
SSONDO_MANIFEST_MAGIC = "# ssondo-manifest"
SPLIT_ALIASES: dict[str, str] = {"val": "valid", "validation": "valid", "dev": "valid", "eval": "test"}


def is_ssondo_manifest(path: str | Path) -> bool:
    """Whether ``path`` starts with the ``# ssondo-manifest v<N> root=...`` header line."""
    with open(path, encoding="utf-8") as fh:
        return fh.readline().lstrip().startswith(SSONDO_MANIFEST_MAGIC)


def load_ssondo_manifest(manifest: str | Path, name: str | None = None) -> ProbeTask:
    """Task from an ssondo manifest v1 (the format stage=prepare writes for its probe tasks).

    Protocol: ``splits`` when every labelled clip has a split (``train``/``valid``/``test``; ``val``,
    ``validation``, ``dev`` -> ``valid``, ``eval`` -> ``test``), else ``folds`` when every labelled clip has a
    fold. Unlabelled clips are dropped (they cannot be probed). Class order: sorted labels. Multi-label when a
    clip has several labels.
    """
    from ssondo_train.data.manifest import read_manifest

    path = Path(manifest)
    man = read_manifest(path)
    labelled = [c for c in man if c.labels]
    if len(labelled) < len(man):
        log.info("%s: %d unlabelled clips dropped", path.name, len(man) - len(labelled))
    if not labelled:
        raise ValueError(f"manifest {path} has no labelled clip")
    splits = [SPLIT_ALIASES.get(c.split, c.split) for c in labelled]
    if all(s in SPLITS for s in splits):
        protocol: Protocol = "splits"
        split_of: list[int | str] = list(splits)
    elif all(c.fold is not None for c in labelled):
        protocol = "folds"
        split_of = [int(c.fold) for c in labelled]  # type: ignore[arg-type]
    else:
        bad = sorted({s for s in splits if s not in SPLITS})[:5]
        raise ValueError(
            f"manifest {path}: every labelled clip needs a split in {SPLITS} (got e.g. {bad}) or a fold"
        )
    names = sorted({lab for c in labelled for lab in c.labels})
    index = {n: i for i, n in enumerate(names)}
    task_type: Literal["multiclass", "multilabel"] = (
        "multilabel" if any(len(c.labels) > 1 for c in labelled) else "multiclass"
    )
    clips = [
        ProbeClip(c.clip_id, man.abs_path(c), tuple(sorted(index[lab] for lab in c.labels)), s)
        for c, s in zip(labelled, split_of, strict=True)
    ]
    return ProbeTask(name or path.stem, task_type, names, clips, protocol)


def load_any_manifest(manifest: str | Path, name: str | None = None, **kw: Any) -> ProbeTask:
    """An ssondo manifest (:func:`load_ssondo_manifest`) or a plain CSV (:func:`load_manifest`), by header."""
    if is_ssondo_manifest(manifest):
        if kw:
            raise ValueError(f"options {sorted(kw)} do not apply to an ssondo manifest ({manifest})")
        return load_ssondo_manifest(manifest, name)
    return load_manifest(manifest, name, **kw)


TASK_BUILDERS: dict[str, Callable[..., ProbeTask]] = {
    "esc50": load_esc50,
    "us8k": load_us8k,
    "fsd50k": load_fsd50k,
    "gtzan": load_gtzan,
    "nsynth": load_nsynth,
    "openmic": load_openmic,
    "magna-tag-a-tune": load_magnatagatune,
    "manifest": load_manifest,
}
TASK_ALIASES: dict[str, str] = {
    "esc-50": "esc50",
    "urbansound8k": "us8k",
    "fsd-50k": "fsd50k",
    "openmic-2018": "openmic",
    "mtt": "magna-tag-a-tune",
    "magnatagatune": "magna-tag-a-tune",
}


def build_task(name: str, root: str | Path, /, check_files: bool = False, **kw: Any) -> ProbeTask:
    """Build a task by name (``TASK_BUILDERS`` or an alias); ``root`` is the dataset folder (or, for
    ``manifest``, the CSV file). ``check_files`` raises if any audio file is missing."""
    key = TASK_ALIASES.get(name.lower(), name.lower())
    if key not in TASK_BUILDERS:
        raise ValueError(
            f"unknown probe task {name!r}; known: {sorted(TASK_BUILDERS)} (+ {sorted(TASK_ALIASES)})"
        )
    task = TASK_BUILDERS[key](root, **kw)
    if check_files:
        missing = task.missing_files()
        if missing:
            raise FileNotFoundError(f"{task.name}: {len(missing)} audio files missing, e.g. {missing[0]}")
    log.info("probe task %s", task.summary())
    return task
