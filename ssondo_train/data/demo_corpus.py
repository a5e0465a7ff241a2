"""The offline demo corpus: real sampled instruments, synthetic and real speech, real recordings.

Everything comes from Debian packages (see ``REQUIRED_PACKAGES``), so the whole pipeline can be demonstrated
on a machine without internet. The build has two phases:

1. **Plan** (main process, seeded): decide every clip (what to render, its id, path, labels, split) and the
   provenance keys of the material it uses: ``gm:<soundfont>:p<program>:n<pitch>`` for a General-MIDI note,
   ``voice:<espeak voice>`` for a synthetic speaker, ``sha256:<digest>`` for a real recording. Probe tasks are
   planned first and their keys are reserved; the distillation corpus is planned around them and the build
   asserts that the two key sets are disjoint, so no probe note, voice or recording is ever distilled on.
2. **Render** (process pool): each job turns a list of clip specs into 32-kHz mono 16-bit FLAC files. Jobs
   are pure functions of their specs, so the output does not depend on the number of workers.

Outputs under the stage folder::

    corpus.csv                   distillation corpus manifest (root = corpus/)
    corpus/<source>/<id>.flac
    tasks/<task>.csv             one labelled probe task per manifest (root = tasks/<task>/)
    tasks/<task>/<id>.flac
    provenance.json              clip id -> provenance keys, for audits
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssondo_train.data.lexicon import lexicon_languages, random_sentence
from ssondo_train.data.manifest import CORPUS_MANIFEST, TASK_MANIFEST_DIR, ClipEntry, Manifest, write_manifest
from ssondo_train.utils.io import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

# Debian package -> what the build needs from it.
REQUIRED_PACKAGES: dict[str, str] = {
    "fluidsynth": "the fluidsynth renderer",
    "timgm6mb-soundfont": "TimGM6mb.sf2",
    "fluidr3mono-gm-soundfont": "FluidR3Mono_GM.sf3",
    "espeak-ng": "the espeak-ng speech synthesiser",
    "ktuberling-data": "ktuberling recorded words",
    "sonic-pi-samples": "sonic-pi recorded samples",
}

LICENSES: dict[str, str] = {
    "gm_timgm6mb": "GPL-2.0-only",
    "gm_fluidr3mono": "MIT",
    "espeak": "GPL-3.0-or-later",
    "ktuberling": "GPL-2.0-or-later",
    "sonic_pi": "CC0-1.0",
}

# General-MIDI families (8 programs each, in program order) and the pitch range each one plays well in.
GM_FAMILIES: tuple[str, ...] = (
    "piano",
    "chromatic_percussion",
    "organ",
    "guitar",
    "bass",
    "strings",
    "ensemble",
    "brass",
    "reed",
    "pipe",
    "synth_lead",
    "synth_pad",
    "synth_effects",
    "ethnic",
    "percussive",
    "sound_effects",
)
GM_RANGES: tuple[tuple[int, int], ...] = (
    (36, 96),
    (48, 96),
    (36, 84),
    (40, 84),
    (24, 60),
    (36, 84),
    (40, 84),
    (40, 82),
    (45, 84),
    (55, 96),
    (40, 88),
    (40, 84),
    (40, 84),
    (48, 84),
    (40, 84),
    (40, 84),
)
# Programs whose samples stop short of their family's range in TimGM6mb or FluidR3Mono (measured: notes
# outside these ranges render silent).
PROGRAM_RANGES: dict[int, tuple[int, int]] = {43: (36, 81), 58: (28, 72), 67: (36, 79), 78: (45, 78)}


def program_range(program: int) -> tuple[int, int]:
    """Lowest and highest MIDI pitch the demo plays on GM ``program`` (inclusive)."""
    return PROGRAM_RANGES.get(program, GM_RANGES[program // 8])


# The 10 families of the instrument probe: the pitched, acoustically distinct ones.
PROBE_FAMILIES: tuple[str, ...] = (
    "piano",
    "chromatic_percussion",
    "organ",
    "guitar",
    "bass",
    "strings",
    "brass",
    "reed",
    "pipe",
    "synth_lead",
)
# Probe notes use pitches that are multiples of 3; this leaves 2 of every 3 pitches to the corpus.
PROBE_PITCH_MODULUS = 3
DIGITS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ENGLISH_ACCENTS: tuple[str, ...] = (
    "en-029",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-gb-x-rp",
    "en-us",
    "en-us-nyc",
)
DRUM_CHANNEL = 9
TASK_NAMES: tuple[str, ...] = (
    "instrument_family",
    "spoken_digits",
    "ktuberling_language",
    "sonic_pi_category",
)


class DemoBuildError(RuntimeError):
    """The demo corpus cannot be built (missing package, leaked probe material, failed render)."""


# ------------------------------------------------------------------------------------------------ config


def _from_mapping(cls: type, data: Mapping[str, Any] | None, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys fail with the key's dotted name."""
    data = dict(data or {})
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; allowed: {', '.join(known)}"
        )
    kwargs = {}
    for name, value in data.items():
        default = cls.__dataclass_fields__[name].default_factory  # type: ignore[attr-defined]
        sub = default() if callable(default) else None
        kwargs[name] = _from_mapping(type(sub), value, f"{where}.{name}") if is_dataclass(sub) else value
    return cls(**kwargs)


@dataclass
class DemoAssets:
    """Where the Debian packages put their files (Debian's own install paths)."""

    fluidsynth: str = "fluidsynth"
    espeak: str = "espeak-ng"
    timgm6mb: str = "/usr/share/sounds/sf2/TimGM6mb.sf2"
    fluidr3mono: str = "/usr/share/sounds/sf3/FluidR3Mono_GM.sf3"
    ktuberling: str = "/usr/share/ktuberling/sounds"
    sonic_pi: str = "/usr/share/sonic-pi/samples"


@dataclass
class CorpusCounts:
    """Clips of the unlabelled distillation corpus per source (sonic-pi: every window of the spare files)."""

    gm: int = 1700
    espeak: int = 850
    ktuberling: int = 600
    sonic_pi_window: float = 3.0
    sonic_pi_hop: float = 1.0
    sonic_pi_max: int | None = None

    def __post_init__(self) -> None:
        for name in ("gm", "espeak", "ktuberling"):
            if getattr(self, name) < 0:
                raise ValueError(f"data.corpus.{name} must be >= 0, got {getattr(self, name)}")
        if self.sonic_pi_window <= 0 or self.sonic_pi_hop <= 0:
            raise ValueError("data.corpus.sonic_pi_window and sonic_pi_hop must be > 0")


@dataclass
class InstrumentTask:
    """GM family ID: train/valid on TimGM6mb notes, test on FluidR3Mono notes of the same programs."""

    programs_per_family: int = 8
    train_per_program: int = 12
    test_per_program: int = 6
    valid_fraction: float = 0.2
    seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.programs_per_family <= 8:
            raise ValueError(
                f"data.tasks.instrument_family.programs_per_family must be in 1..8, "
                f"got {self.programs_per_family}"
            )
        if self.train_per_program < 2 or self.test_per_program < 1:
            raise ValueError(
                "data.tasks.instrument_family needs train_per_program >= 2 and test_per_program >= 1"
            )


@dataclass
class DigitsTask:
    """Spoken digits by espeak-ng English voices; train, valid and test voices are disjoint."""

    train_voices: int = 30
    valid_voices: int = 8
    test_voices: int = 10
    repeats: int = 2

    def __post_init__(self) -> None:
        if min(self.train_voices, self.valid_voices, self.test_voices, self.repeats) < 1:
            raise ValueError("data.tasks.spoken_digits: voices per split and repeats must be >= 1")


@dataclass
class LanguageTask:
    """ktuberling language ID over languages with at least ``min_clips`` distinct recordings."""

    min_clips: int = 70
    max_per_class: int | None = 80
    valid_fraction: float = 0.2
    test_fraction: float = 0.2


@dataclass
class SonicPiTask:
    """sonic-pi category (file-name prefix) of the ``n_classes`` largest categories; one clip per file."""

    n_classes: int = 10
    max_per_class: int | None = None
    valid_fraction: float = 0.2
    test_fraction: float = 0.2


@dataclass
class TaskConfigs:
    instrument_family: InstrumentTask = field(default_factory=InstrumentTask)
    spoken_digits: DigitsTask = field(default_factory=DigitsTask)
    ktuberling_language: LanguageTask = field(default_factory=LanguageTask)
    sonic_pi_category: SonicPiTask = field(default_factory=SonicPiTask)


@dataclass
class DemoConfig:
    """Knobs of the demo build (``configs/data/demo.yaml``)."""

    kind: str = "demo"
    seed: int = 42  # rendering seed, independent of the training seed
    sample_rate: int = 32000
    audio_format: str = "flac"
    min_seconds: float = 1.0
    max_seconds: float = 4.0
    workers: int = 2
    fluidsynth_batch: int = 96
    job_size: int = 48
    corpus: CorpusCounts = field(default_factory=CorpusCounts)
    tasks: TaskConfigs = field(default_factory=TaskConfigs)
    assets: DemoAssets = field(default_factory=DemoAssets)

    def __post_init__(self) -> None:
        if self.kind != "demo":
            raise ValueError(f"data.kind must be 'demo' for the demo corpus, got {self.kind!r}")
        if self.audio_format not in ("flac", "wav"):
            raise ValueError(f"data.audio_format must be 'flac' or 'wav', got {self.audio_format!r}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ValueError(
                f"need 0 < data.min_seconds <= data.max_seconds, got {self.min_seconds}, {self.max_seconds}"
            )
        if self.sample_rate < 8000:
            raise ValueError(f"data.sample_rate must be >= 8000, got {self.sample_rate}")
        if self.workers < 0 or self.fluidsynth_batch < 1 or self.job_size < 1:
            raise ValueError("data.workers must be >= 0, data.fluidsynth_batch and data.job_size >= 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> DemoConfig:
        return _from_mapping(cls, data, "data")


def check_assets(assets: DemoAssets) -> None:
    """Fail at once, with the ``apt-get`` line to run, if a Debian package the build needs is missing."""
    missing: list[str] = []
    if shutil.which(assets.fluidsynth) is None:
        missing.append("fluidsynth")
    if not Path(assets.timgm6mb).is_file():
        missing.append("timgm6mb-soundfont")
    if not Path(assets.fluidr3mono).is_file():
        missing.append("fluidr3mono-gm-soundfont")
    if shutil.which(assets.espeak) is None:
        missing.append("espeak-ng")
    if not Path(assets.ktuberling).is_dir():
        missing.append("ktuberling-data")
    if not Path(assets.sonic_pi).is_dir():
        missing.append("sonic-pi-samples")
    if missing:
        raise DemoBuildError(
            "the offline demo corpus needs Debian package(s) that are not installed: "
            + ", ".join(f"{p} ({REQUIRED_PACKAGES[p]})" for p in missing)
            + ". Install them with:\n    apt-get install -y --no-install-recommends "
            + " ".join(missing)
        )


# ------------------------------------------------------------------------------------------ MIDI writer


def _vlq(value: int) -> bytes:
    """MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


# One tick = 1 ms: 1000 ticks per quarter note at 1,000,000 µs per quarter.
_TICKS_PER_QUARTER = 1000
_TEMPO_US = 1_000_000


def midi_bytes(events: Iterable[tuple[float, bytes]]) -> bytes:
    """A format-0 Standard MIDI File from ``(time_seconds, message_bytes)`` events (stable-sorted by time)."""
    timed = sorted(((max(0, round(t * 1000)), i, msg) for i, (t, msg) in enumerate(events)))
    track = bytearray(b"\x00\xff\x51\x03" + _TEMPO_US.to_bytes(3, "big"))
    last = 0
    for tick, _, msg in timed:
        track += _vlq(tick - last) + msg
        last = tick
    track += b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, _TICKS_PER_QUARTER)
    return header + b"MTrk" + struct.pack(">I", len(track)) + bytes(track)


# ------------------------------------------------------------------------------------------- clip specs


@dataclass(frozen=True)
class Note:
    """A note inside a GM segment; times in seconds from the segment start."""

    channel: int
    pitch: int
    velocity: int
    on: float
    off: float


@dataclass(frozen=True)
class GmSegment:
    """One clip rendered by fluidsynth: channel programs plus notes."""

    rel_path: str
    seconds: float
    programs: tuple[tuple[int, int], ...]  # (channel, program); the drum channel needs none
    notes: tuple[Note, ...]
    peak: float


@dataclass(frozen=True)
class SpeechItem:
    """One espeak-ng utterance."""

    rel_path: str
    voice: str
    speed: int
    pitch: int
    text: str
    peak: float


@dataclass(frozen=True)
class FilePiece:
    """A piece of an audio file: ``start`` and ``seconds`` (``None`` = to the end) in seconds."""

    path: str
    start: float = 0.0
    seconds: float | None = None


@dataclass(frozen=True)
class FileItem:
    """A clip cut or concatenated from recordings, with ``gaps`` seconds of silence between pieces."""

    rel_path: str
    pieces: tuple[FilePiece, ...]
    gaps: tuple[float, ...]
    peak: float
    target_seconds: float | None = None


@dataclass(frozen=True)
class RenderJob:
    """A unit of work for one worker: ``kind`` is ``gm``, ``speech`` or ``file``."""

    kind: str
    out_root: str
    items: tuple[Any, ...]
    sample_rate: int
    min_seconds: float
    max_seconds: float
    audio_format: str
    soundfont: str = ""
    fluidsynth: str = "fluidsynth"
    espeak: str = "espeak-ng"


@dataclass(frozen=True)
class RenderResult:
    """What a job made of one item: ``frames`` written, or ``reason`` why the clip was dropped."""

    rel_path: str
    frames: int
    reason: str = ""


# -------------------------------------------------------------------------------------------- rendering


def _fit(wav: np.ndarray, sr: int, min_seconds: float, max_seconds: float) -> np.ndarray:
    """Crop to ``max_seconds`` (keep the start), right-pad with silence to ``min_seconds``."""
    wav = wav[: int(round(max_seconds * sr))]
    need = int(round(min_seconds * sr))
    if wav.shape[0] < need:
        wav = np.concatenate([wav, np.zeros(need - wav.shape[0], dtype=np.float32)])
    return wav


def _finish(job: RenderJob, rel_path: str, wav: np.ndarray, peak: float) -> RenderResult:
    """Fit, peak-normalise and write one clip; silent or non-finite audio is dropped with a reason."""
    import soundfile as sf

    wav = np.asarray(wav, dtype=np.float32)
    if wav.size == 0 or not np.isfinite(wav).all():
        return RenderResult(rel_path, 0, "empty" if wav.size == 0 else "non_finite")
    top = float(np.abs(wav).max())
    if top < 1e-4:  # -80 dBFS: a note the soundfont does not play, an empty recording
        return RenderResult(rel_path, 0, "silent")
    wav = _fit(wav * (peak / top), job.sample_rate, job.min_seconds, job.max_seconds)
    out = Path(job.out_root) / rel_path
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(out), wav, job.sample_rate, subtype="PCM_16", format=job.audio_format.upper())
    return RenderResult(rel_path, int(wav.shape[0]))


def _render_gm(job: RenderJob) -> list[RenderResult]:
    """Render all segments of a job in ONE fluidsynth call, then cut them apart at known times."""
    from ssondo_train.audio.io import decode, to_mono

    gap = 0.3
    events: list[tuple[float, bytes]] = []
    starts: list[float] = []
    t = 0.1
    for seg in job.items:
        starts.append(t)
        for channel, program in seg.programs:
            events.append((t, bytes([0xC0 | channel, program])))
        for n in seg.notes:
            events.append((t + n.on, bytes([0x90 | n.channel, n.pitch, n.velocity])))
            events.append((t + min(n.off, seg.seconds - 0.01), bytes([0x80 | n.channel, n.pitch, 0])))
        channels = {n.channel for n in seg.notes} | {c for c, _ in seg.programs}
        for channel in sorted(channels):
            # All-sound-off at the clip end, so no release tail leaks into the next clip.
            events.append((t + seg.seconds, bytes([0xB0 | channel, 120, 0])))
            events.append((t + seg.seconds, bytes([0xB0 | channel, 121, 0])))
        t += seg.seconds + gap
    with tempfile.TemporaryDirectory(prefix="ssondo_gm_") as tmp:
        mid, wav_path = Path(tmp) / "batch.mid", Path(tmp) / "batch.wav"
        mid.write_bytes(midi_bytes(events))
        # Reverb and chorus off: their tails would cross clip boundaries. Float output: the quiet render is
        # peak-normalised afterwards, so 16-bit here would cost resolution.
        cmd = [
            job.fluidsynth,
            "-ni",
            "-q",
            "-R",
            "0",
            "-C",
            "0",
            "-g",
            "0.5",
            "-r",
            str(job.sample_rate),
            "-O",
            "float",
            "-F",
            str(wav_path),
            "-T",
            "wav",
            job.soundfont,
            str(mid),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not wav_path.exists():
            raise DemoBuildError(
                f"fluidsynth failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}"
            )
        audio, sr = decode(wav_path)
    mono = to_mono(audio).numpy()
    results = []
    for seg, start in zip(job.items, starts, strict=True):
        a = int(round(start * sr))
        results.append(_finish(job, seg.rel_path, mono[a : a + int(round(seg.seconds * sr))], seg.peak))
    return results


def _render_speech(job: RenderJob) -> list[RenderResult]:
    """One espeak-ng call per utterance (about 10 ms each), resampled to the corpus rate."""
    import torch

    from ssondo_train.audio.io import AudioError, load_audio, resample

    results = []
    with tempfile.TemporaryDirectory(prefix="ssondo_tts_") as tmp:
        wav_path = Path(tmp) / "utt.wav"
        for item in job.items:
            cmd = [
                job.espeak,
                "-v",
                item.voice,
                "-s",
                str(item.speed),
                "-p",
                str(item.pitch),
                "-w",
                str(wav_path),
                "--",
                item.text,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise DemoBuildError(f"espeak-ng failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
            try:
                wav, sr = load_audio(wav_path, None, validate=True)
            except AudioError as err:
                results.append(RenderResult(item.rel_path, 0, err.reason))
                continue
            wav = resample(wav.unsqueeze(0), sr, job.sample_rate)[0] if sr != job.sample_rate else wav
            results.append(_finish(job, item.rel_path, wav.to(torch.float32).numpy(), item.peak))
    return results


def _render_files(job: RenderJob) -> list[RenderResult]:
    """Cut and concatenate recordings, resampled to the corpus rate with our audio io."""
    from ssondo_train.audio.io import AudioError, load_audio

    sr = job.sample_rate
    cache: dict[str, np.ndarray] = {}
    results = []
    for item in job.items:
        parts: list[np.ndarray] = []
        try:
            for k, piece in enumerate(item.pieces):
                if piece.path not in cache:
                    cache[piece.path] = load_audio(piece.path, sr, validate=True)[0].numpy()
                wav = cache[piece.path]
                a = int(round(piece.start * sr))
                b = wav.shape[0] if piece.seconds is None else a + int(round(piece.seconds * sr))
                if k:
                    parts.append(np.zeros(int(round(item.gaps[k - 1] * sr)), dtype=np.float32))
                parts.append(wav[a:b])
        except AudioError as err:
            results.append(RenderResult(item.rel_path, 0, err.reason))
            continue
        wav = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if item.target_seconds is not None:
            wav = wav[: int(round(item.target_seconds * sr))]
        results.append(_finish(job, item.rel_path, wav, item.peak))
    return results


_RENDERERS: dict[str, Callable[[RenderJob], list[RenderResult]]] = {
    "gm": _render_gm,
    "speech": _render_speech,
    "file": _render_files,
}


def render_job(job: RenderJob) -> list[RenderResult]:
    """Render one job (any kind); used in the worker processes."""
    return _RENDERERS[job.kind](job)


def _init_worker() -> None:
    # Two worker processes on two cores: torch's own intra-op threads would oversubscribe them.
    import torch

    torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ inventories


def _rng(seed: int, name: str) -> np.random.Generator:
    """An independent stream per plan part, so changing one count does not reshuffle the other parts."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


@dataclass(frozen=True)
class Recording:
    path: Path
    rel: str  # relative to the asset folder, for ids and logs
    digest: str
    seconds: float


def _recordings(folder: Path, suffixes: tuple[str, ...]) -> list[Recording]:
    """Files in ``folder`` with one of ``suffixes``, de-duplicated by content (first sorted path wins)."""
    from ssondo_train.audio.io import AudioError, audio_info

    seen: set[str] = set()
    out = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        digest = sha256_file(path)
        if digest in seen:
            continue
        try:
            seconds = audio_info(path).duration
        except AudioError as err:
            log.warning("skipping unreadable recording %s: %s", path, err)
            continue
        seen.add(digest)
        out.append(Recording(path, path.relative_to(folder).as_posix(), digest, seconds))
    return out


def ktuberling_inventory(folder: Path) -> dict[str, list[Recording]]:
    """Language -> distinct recordings (``<lang>/*.{ogg,wav,opus}``)."""
    out: dict[str, list[Recording]] = {}
    for lang_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        recs = _recordings(lang_dir, (".ogg", ".wav", ".opus"))
        if recs:
            out[lang_dir.name] = recs
    return out


def sonic_pi_inventory(folder: Path) -> dict[str, list[Recording]]:
    """Category (file-name prefix before the first ``_``) -> distinct recordings."""
    out: dict[str, list[Recording]] = defaultdict(list)
    for rec in _recordings(folder, (".flac",)):
        out[rec.path.name.split("_", 1)[0]].append(rec)
    return dict(sorted(out.items()))


def espeak_variants(espeak: str) -> list[str]:
    """Sorted names of espeak-ng's voice variants (``m3``, ``f2``, ``klatt``, ...)."""
    proc = subprocess.run([espeak, "--voices=variant"], capture_output=True, text=True, check=True)
    names = set()
    for line in proc.stdout.splitlines()[1:]:
        cols = line.split()
        for col in cols:
            if col.startswith("!v/"):
                names.add(col[3:])
    if not names:
        raise DemoBuildError(f"'{espeak} --voices=variant' listed no voice variants")
    return sorted(names)


# ----------------------------------------------------------------------------------------------- plans


@dataclass
class PlannedClip:
    """A clip decided by the planner: manifest facts (minus the header facts) and provenance keys."""

    clip_id: str
    rel_path: str
    labels: tuple[str, ...]
    split: str
    source: str
    keys: tuple[str, ...]


@dataclass
class PlannedSet:
    """A corpus or a task: its clips and the jobs that render them (``job_items`` per job kind)."""

    name: str
    clips: list[PlannedClip] = field(default_factory=list)
    gm: dict[str, list[GmSegment]] = field(default_factory=lambda: defaultdict(list))  # soundfont -> segs
    speech: list[SpeechItem] = field(default_factory=list)
    files: list[FileItem] = field(default_factory=list)

    def keys(self) -> set[str]:
        return {k for c in self.clips for k in c.keys}


def _split_counts(n: int, valid_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, valid, test) sizes; every split gets at least one clip when ``n >= 3``."""
    if n < 3:
        raise DemoBuildError(f"a class needs at least 3 clips for train/valid/test, got {n}")
    n_test = max(1, round(n * test_fraction))
    n_valid = max(1, round(n * valid_fraction))
    return n - n_valid - n_test, n_valid, n_test


def _gm_key(soundfont: str, program: int, pitch: int) -> str:
    return f"gm:{Path(soundfont).stem}:p{program:03d}:n{pitch:03d}"


def _probe_pitches(program: int) -> list[int]:
    lo, hi = program_range(program)
    return [p for p in range(lo, hi + 1) if p % PROBE_PITCH_MODULUS == 0]


def plan_instrument_task(cfg: DemoConfig, seed: int) -> PlannedSet:
    """Single notes per program: train/valid on TimGM6mb, test on FluidR3Mono."""
    tc = cfg.tasks.instrument_family
    rng = _rng(seed, "task/instrument_family")
    task = PlannedSet("instrument_family")
    tim, fluid = cfg.assets.timgm6mb, cfg.assets.fluidr3mono
    for family_name in PROBE_FAMILIES:
        family = GM_FAMILIES.index(family_name)
        programs = sorted(rng.choice(8, tc.programs_per_family, replace=False).tolist())
        train_notes: list[tuple[int, int]] = []
        test_notes: list[tuple[int, int]] = []
        for offset in programs:
            program = family * 8 + offset
            pitches = _probe_pitches(program)
            if len(pitches) < max(tc.train_per_program, tc.test_per_program):
                raise DemoBuildError(
                    f"GM program {program} has {len(pitches)} probe pitches, fewer than "
                    f"data.tasks.instrument_family.train_per_program/test_per_program "
                    f"({tc.train_per_program}/{tc.test_per_program})"
                )
            train_notes += [(program, int(p)) for p in rng.choice(pitches, tc.train_per_program, False)]
            test_notes += [(program, int(p)) for p in rng.choice(pitches, tc.test_per_program, False)]
        order = rng.permutation(len(train_notes))
        n_valid = max(1, round(len(train_notes) * tc.valid_fraction))
        valid_idx = set(order[:n_valid].tolist())
        for split, notes, soundfont, source in (
            ("train", train_notes, tim, "gm_timgm6mb"),
            ("test", test_notes, fluid, "gm_fluidr3mono"),
        ):
            for i, (program, pitch) in enumerate(notes):
                this_split = "valid" if split == "train" and i in valid_idx else split
                sf_tag = Path(soundfont).stem.lower()
                clip_id = f"inst__{sf_tag}__p{program:03d}__n{pitch:03d}"
                rel = f"{clip_id}.{cfg.audio_format}"
                velocity = int(rng.integers(80, 111))
                note = Note(0, pitch, velocity, 0.0, tc.seconds * 0.7)
                task.gm[soundfont].append(GmSegment(rel, tc.seconds, ((0, program),), (note,), 0.7))
                task.clips.append(
                    PlannedClip(
                        clip_id,
                        rel,
                        (family_name,),
                        this_split,
                        source,
                        (_gm_key(soundfont, program, pitch),),
                    )
                )
    return task


def _voice_id(voice: str) -> str:
    return voice.replace("+", "_")


def plan_digits_task(cfg: DemoConfig, seed: int, variants: Sequence[str]) -> PlannedSet:
    """Ten English digit words per voice; a voice (accent + variant) belongs to exactly one split."""
    tc = cfg.tasks.spoken_digits
    rng = _rng(seed, "task/spoken_digits")
    all_voices = [f"{a}+{v}" for a in ENGLISH_ACCENTS for v in variants]
    n = tc.train_voices + tc.valid_voices + tc.test_voices
    if n > len(all_voices):
        raise DemoBuildError(f"spoken_digits asks for {n} voices, espeak-ng has {len(all_voices)}")
    voices = [all_voices[i] for i in rng.choice(len(all_voices), n, replace=False)]
    split_of = ["train"] * tc.train_voices + ["valid"] * tc.valid_voices + ["test"] * tc.test_voices
    task = PlannedSet("spoken_digits")
    for voice, split in zip(voices, split_of, strict=True):
        for digit, word in enumerate(DIGITS):
            for rep in range(tc.repeats):
                clip_id = f"digits__{_voice_id(voice)}__{digit}__r{rep}"
                rel = f"{clip_id}.{cfg.audio_format}"
                speed, pitch = int(rng.integers(120, 200)), int(rng.integers(25, 76))
                task.speech.append(SpeechItem(rel, voice, speed, pitch, word, 0.7))
                task.clips.append(PlannedClip(clip_id, rel, (word,), split, "espeak", (f"voice:{voice}",)))
    return task


def _file_item(rel: str, rec: Recording, peak: float = 0.7) -> FileItem:
    return FileItem(rel, (FilePiece(str(rec.path)),), (), peak)


def _plan_file_task(
    name: str,
    prefix: str,
    source: str,
    groups: Mapping[str, list[Recording]],
    max_per_class: int | None,
    valid_fraction: float,
    test_fraction: float,
    cfg: DemoConfig,
    seed: int,
) -> PlannedSet:
    rng = _rng(seed, f"task/{name}")
    task = PlannedSet(name)
    for label, recs in groups.items():
        order = rng.permutation(len(recs))
        if max_per_class is not None:
            order = order[:max_per_class]
        n_train, n_valid, _ = _split_counts(len(order), valid_fraction, test_fraction)
        for rank, idx in enumerate(order.tolist()):
            rec = recs[idx]
            split = "train" if rank < n_train else "valid" if rank < n_train + n_valid else "test"
            stem = rec.rel.rsplit(".", 1)[0].replace("/", "__")
            # sonic-pi names already start with their category ("ambi_choir"): no need to repeat it.
            clip_id = f"{prefix}__{stem}" if stem.startswith(f"{label}_") else f"{prefix}__{label}__{stem}"
            rel = f"{clip_id}.{cfg.audio_format}"
            task.files.append(_file_item(rel, rec))
            task.clips.append(PlannedClip(clip_id, rel, (label,), split, source, (f"sha256:{rec.digest}",)))
    return task


def plan_language_task(cfg: DemoConfig, seed: int, ktub: Mapping[str, list[Recording]]) -> PlannedSet:
    tc = cfg.tasks.ktuberling_language
    groups = {lang: recs for lang, recs in ktub.items() if len(recs) >= tc.min_clips}
    if len(groups) < 2:
        raise DemoBuildError(f"ktuberling has {len(groups)} language(s) with >= {tc.min_clips} clips; need 2")
    return _plan_file_task(
        "ktuberling_language",
        "lang",
        "ktuberling",
        groups,
        tc.max_per_class,
        tc.valid_fraction,
        tc.test_fraction,
        cfg,
        seed,
    )


def plan_sonic_pi_task(cfg: DemoConfig, seed: int, spi: Mapping[str, list[Recording]]) -> PlannedSet:
    tc = cfg.tasks.sonic_pi_category
    ranked = sorted(spi.items(), key=lambda kv: (-len(kv[1]), kv[0]))[: tc.n_classes]
    groups = dict(sorted(ranked))
    return _plan_file_task(
        "sonic_pi_category",
        "spi",
        "sonic_pi",
        groups,
        tc.max_per_class,
        tc.valid_fraction,
        tc.test_fraction,
        cfg,
        seed,
    )


_CHORDS: tuple[tuple[int, ...], ...] = (
    (0, 4, 7),
    (0, 3, 7),
    (0, 4, 7, 11),
    (0, 3, 7, 10),
    (0, 4, 7, 10),
    (0, 5, 7),
    (0, 3, 6),
    (0, 7, 12),
    (0, 4, 7, 14),
)
_SCALES: tuple[tuple[int, ...], ...] = (
    (0, 2, 4, 5, 7, 9, 11),
    (0, 2, 3, 5, 7, 8, 10),
    (0, 2, 4, 7, 9),
    (0, 3, 5, 6, 7, 10),
)
_DRUMS = (35, 36, 38, 40, 42, 44, 46, 49, 51, 45, 47, 48, 50, 39, 54, 56, 37, 75, 76, 70)


def _plan_gm_clip(
    kind: str,
    seconds: float,
    rng: np.random.Generator,
    pitch_for: Callable[[int, int], int],
    sf_name: str,
) -> tuple[list[tuple[int, int]], list[Note], list[str]]:
    """Channel programs, notes and provenance keys of one corpus GM clip of ``kind``."""
    notes: list[Note] = []
    programs: list[tuple[int, int]] = []
    keys: list[str] = []

    def add(channel: int, program: int, wanted: int, on: float, off: float) -> None:
        p = pitch_for(program, wanted)
        notes.append(Note(channel, p, int(rng.integers(50, 121)), round(on, 3), round(off, 3)))
        keys.append(f"gm:{sf_name}:p{program:03d}:n{p:03d}")

    if kind == "drums":
        step = 60.0 / float(rng.uniform(80, 160)) / 4  # sixteenth notes
        voices = rng.choice(_DRUMS, int(rng.integers(3, 7)), replace=False)
        density = rng.uniform(0.15, 0.6, len(voices))
        t = 0.0
        while t < seconds - 0.1:
            for drum, d in zip(voices, density, strict=True):
                if rng.random() < d:
                    notes.append(
                        Note(
                            DRUM_CHANNEL,
                            int(drum),
                            int(rng.integers(50, 121)),
                            round(t, 3),
                            round(t + 0.1, 3),
                        )
                    )
                    keys.append(f"gm-drum:{sf_name}:n{int(drum):03d}")
            t += step
        if not notes:
            notes.append(Note(DRUM_CHANNEL, 38, 100, 0.0, 0.1))
            keys.append(f"gm-drum:{sf_name}:n038")
    else:
        layers = 2 if kind == "duet" else 1
        for layer in range(layers):
            program = int(rng.integers(0, 128))
            programs.append((layer, program))
            lo, hi = program_range(program)
            root = int(rng.integers(lo, max(lo + 1, hi - 12)))
            style = kind if kind != "duet" else ("melody" if layer == 0 else "chord")
            end = seconds * float(rng.uniform(0.6, 0.95))
            if style == "note":
                add(layer, program, root, float(rng.uniform(0, 0.1)), end)
            elif style == "chord":
                shape = _CHORDS[int(rng.integers(len(_CHORDS)))]
                strum = float(rng.uniform(0, 0.04))
                for k, interval in enumerate(shape):
                    add(layer, program, root + interval, k * strum, end)
            else:
                scale = _SCALES[int(rng.integers(len(_SCALES)))]
                t = 0.0
                while t < end - 0.1:
                    length = float(rng.choice([0.125, 0.25, 0.25, 0.375, 0.5]))
                    degree = int(rng.integers(0, len(scale) * 2))
                    wanted = root + 12 * (degree // len(scale)) + scale[degree % len(scale)]
                    add(layer, program, wanted, t, min(t + length * 0.95, end))
                    t += length
    return programs, notes, keys


def plan_corpus(
    cfg: DemoConfig,
    seed: int,
    reserved: set[str],
    variants: Sequence[str],
    ktub: Mapping[str, list[Recording]],
    spi: Mapping[str, list[Recording]],
) -> PlannedSet:
    """The unlabelled distillation corpus, avoiding every provenance key in ``reserved``."""
    cc = cfg.corpus
    corpus = PlannedSet("corpus")
    fmt, lo_s, hi_s = cfg.audio_format, cfg.min_seconds, cfg.max_seconds
    tim = cfg.assets.timgm6mb

    # --- General-MIDI notes, chords, melodies, duets and drum grooves (TimGM6mb)
    rng = _rng(seed, "corpus/gm")

    def pitch_for(program: int, wanted: int) -> int:
        """The closest pitch to ``wanted`` that the probe does not use for ``program``."""
        lo, hi = program_range(program)
        wanted = min(max(wanted, lo), hi)
        for delta in (0, 1, -1, 2, -2, 3, -3):
            p = wanted + delta
            if lo <= p <= hi and _gm_key(tim, program, p) not in reserved:
                return p
        raise DemoBuildError(f"no free pitch near {wanted} for program {program}")

    kinds = ("note", "chord", "melody", "duet", "drums")
    kind_p = (0.22, 0.25, 0.25, 0.16, 0.12)
    for i in range(cc.gm):
        kind = kinds[int(rng.choice(len(kinds), p=kind_p))]
        seconds = round(float(rng.uniform(lo_s, hi_s)), 3)
        programs, notes, keys = _plan_gm_clip(kind, seconds, rng, pitch_for, Path(tim).stem)
        clip_id = f"gm__{i:05d}"
        rel = f"gm/{clip_id}.{fmt}"
        peak = round(float(rng.uniform(0.25, 0.95)), 3)
        corpus.gm[tim].append(GmSegment(rel, seconds, tuple(programs), tuple(notes), peak))
        corpus.clips.append(PlannedClip(clip_id, rel, (), "", "gm_timgm6mb", tuple(sorted(set(keys)))))

    # --- espeak-ng sentences in many languages and voices (probe voices excluded)
    rng = _rng(seed, "corpus/espeak")
    reserved_voices = {k[len("voice:") :] for k in reserved if k.startswith("voice:")}
    english = [f"{a}+{v}" for a in ENGLISH_ACCENTS for v in variants if f"{a}+{v}" not in reserved_voices]
    languages = lexicon_languages()
    for i in range(cc.espeak):
        lang = languages[int(rng.integers(len(languages)))]
        if lang == "en":
            voice = english[int(rng.integers(len(english)))]
        else:
            voice = f"{lang}+{variants[int(rng.integers(len(variants)))]}"
        if voice in reserved_voices:
            raise DemoBuildError(f"corpus voice {voice} is a probe voice")
        text = random_sentence("en" if lang == "en" else lang, rng, int(rng.integers(2, 10)))
        clip_id = f"espeak__{i:05d}"
        rel = f"espeak/{clip_id}.{fmt}"
        speed, pitch = int(rng.integers(110, 230)), int(rng.integers(20, 81))
        peak = round(float(rng.uniform(0.25, 0.95)), 3)
        corpus.speech.append(SpeechItem(rel, voice, speed, pitch, text, peak))
        corpus.clips.append(PlannedClip(clip_id, rel, (), "", "espeak", (f"voice:{voice}",)))

    # --- ktuberling words, concatenated per language into 1-4 s utterances
    rng = _rng(seed, "corpus/ktuberling")
    pools = {lang: [r for r in recs if f"sha256:{r.digest}" not in reserved] for lang, recs in ktub.items()}
    pools = {lang: recs for lang, recs in pools.items() if recs}
    if cc.ktuberling and not pools:
        raise DemoBuildError("no ktuberling recording is left for the corpus after the probe took its share")
    langs = sorted(pools)
    weights = np.array([len(pools[lang]) for lang in langs], dtype=np.float64)
    cursors = {lang: (rng.permutation(len(pools[lang])).tolist(), 0) for lang in langs}
    for i in range(cc.ktuberling):
        lang = langs[int(rng.choice(len(langs), p=weights / weights.sum()))]
        target = round(float(rng.uniform(lo_s, hi_s)), 3)
        order, pos = cursors[lang]
        pieces: list[FilePiece] = []
        gaps: list[float] = []
        used: list[str] = []
        total = 0.0
        while total < target and len(pieces) < 6:
            rec = pools[lang][order[pos % len(order)]]
            pos += 1
            if pieces:
                gaps.append(round(float(rng.uniform(0.08, 0.35)), 3))
                total += gaps[-1]
            pieces.append(FilePiece(str(rec.path)))
            used.append(f"sha256:{rec.digest}")
            total += rec.seconds
        cursors[lang] = (order, pos)
        clip_id = f"ktub__{i:05d}"
        rel = f"ktuberling/{clip_id}.{fmt}"
        peak = round(float(rng.uniform(0.25, 0.95)), 3)
        corpus.files.append(FileItem(rel, tuple(pieces), tuple(gaps), peak, target))
        corpus.clips.append(PlannedClip(clip_id, rel, (), "", "ktuberling", tuple(sorted(set(used)))))

    # --- sonic-pi recordings of the categories the probe does not use, cut into windows
    rng = _rng(seed, "corpus/sonic_pi")
    n_spi = 0
    for recs in spi.values():
        for rec in recs:
            if f"sha256:{rec.digest}" in reserved:
                continue
            n_windows = 1 + max(0, int((rec.seconds - lo_s) // cc.sonic_pi_hop))
            for k in range(n_windows):
                if cc.sonic_pi_max is not None and n_spi >= cc.sonic_pi_max:
                    break
                stem = rec.rel.rsplit(".", 1)[0]
                clip_id = f"spi__{stem}__w{k:02d}"
                rel = f"sonic_pi/{clip_id}.{fmt}"
                piece = FilePiece(str(rec.path), round(k * cc.sonic_pi_hop, 3), min(cc.sonic_pi_window, hi_s))
                corpus.files.append(FileItem(rel, (piece,), (), round(float(rng.uniform(0.25, 0.95)), 3)))
                corpus.clips.append(PlannedClip(clip_id, rel, (), "", "sonic_pi", (f"sha256:{rec.digest}",)))
                n_spi += 1
    return corpus


def assert_disjoint(corpus: PlannedSet, tasks: Sequence[PlannedSet]) -> None:
    """Raise ``DemoBuildError`` if any provenance key (note, voice, recording) is in the corpus and a task."""
    corpus_keys = corpus.keys()
    for task in tasks:
        shared = corpus_keys & task.keys()
        if shared:
            raise DemoBuildError(
                f"probe task {task.name} shares {len(shared)} source(s) with the "
                f"distillation corpus, e.g. {sorted(shared)[:5]}"
            )
    ids = Counter(c.clip_id for s in (corpus, *tasks) for c in s.clips)
    dup = [k for k, n in ids.items() if n > 1]
    if dup:
        raise DemoBuildError(f"clip ids used twice across sets: {dup[:5]}")


# ----------------------------------------------------------------------------------------------- build


@dataclass
class BuildResult:
    """Manifests written by ``build_demo`` and the clips that rendering dropped (id -> reason)."""

    corpus: Manifest
    tasks: dict[str, Manifest]
    dropped: dict[str, dict[str, str]]
    seconds: float


def _jobs_for(planned: PlannedSet, out_root: Path, cfg: DemoConfig) -> list[RenderJob]:
    common = dict(
        out_root=str(out_root),
        sample_rate=cfg.sample_rate,
        min_seconds=cfg.min_seconds,
        max_seconds=cfg.max_seconds,
        audio_format=cfg.audio_format,
        fluidsynth=cfg.assets.fluidsynth,
        espeak=cfg.assets.espeak,
    )
    jobs = []
    for soundfont, segs in planned.gm.items():
        for a in range(0, len(segs), cfg.fluidsynth_batch):
            jobs.append(
                RenderJob(
                    "gm", items=tuple(segs[a : a + cfg.fluidsynth_batch]), soundfont=soundfont, **common
                )
            )
    for kind, items in (("speech", planned.speech), ("file", planned.files)):
        for a in range(0, len(items), cfg.job_size):
            jobs.append(RenderJob(kind, items=tuple(items[a : a + cfg.job_size]), **common))
    return jobs


def _run_jobs(jobs: list[RenderJob], workers: int) -> list[list[RenderResult]]:
    from tqdm import tqdm

    # The slow .sf3 renders go first so the pool's tail is short; results keep the submission order.
    order = sorted(range(len(jobs)), key=lambda j: (not jobs[j].soundfont.endswith(".sf3"), j))
    results: list[list[RenderResult]] = [[] for _ in jobs]
    total = sum(len(j.items) for j in jobs)
    with tqdm(total=total, unit="clip", desc="prepare: render", smoothing=0.1) as bar:
        if workers <= 1:
            for j in order:
                results[j] = render_job(jobs[j])
                bar.update(len(jobs[j].items))
        else:
            # spawn: never fork a process that may hold torch threads. An executor (unlike Pool) raises
            # BrokenProcessPool when a worker dies instead of respawning it forever.
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
                futures = {pool.submit(render_job, jobs[j]): j for j in order}
                for fut in as_completed(futures):
                    res = fut.result()
                    results[futures[fut]] = res
                    bar.update(len(res))
    return results


def _manifest(
    planned: PlannedSet, root: Path, rendered: dict[str, RenderResult], sr: int
) -> tuple[Manifest, dict[str, str]]:
    clips, dropped = [], {}
    for c in planned.clips:
        res = rendered[c.rel_path]
        if res.reason:
            dropped[c.clip_id] = res.reason
            continue
        source = c.source
        clips.append(
            ClipEntry(
                c.clip_id,
                c.rel_path,
                res.frames / sr,
                sr,
                1,
                c.labels,
                c.split,
                None,
                source,
                LICENSES[source],
            )
        )
    return Manifest(root, clips), dropped


@dataclass(frozen=True)
class DemoInventory:
    """What the installed packages offer: espeak-ng variants, ktuberling and sonic-pi recordings."""

    variants: tuple[str, ...]
    ktuberling: dict[str, list[Recording]]
    sonic_pi: dict[str, list[Recording]]


def load_inventory(assets: DemoAssets) -> DemoInventory:
    """Check the packages and list their material (hashes every recording: about a second)."""
    check_assets(assets)
    return DemoInventory(
        tuple(espeak_variants(assets.espeak)),
        ktuberling_inventory(Path(assets.ktuberling)),
        sonic_pi_inventory(Path(assets.sonic_pi)),
    )


def plan_demo(
    cfg: DemoConfig, seed: int, inventory: DemoInventory | None = None
) -> tuple[PlannedSet, list[PlannedSet]]:
    """Plan the corpus and the four probe tasks (no rendering); asserts their disjointness."""
    inv = inventory if inventory is not None else load_inventory(cfg.assets)
    variants, ktub, spi = inv.variants, inv.ktuberling, inv.sonic_pi
    tasks = [
        plan_instrument_task(cfg, seed),
        plan_digits_task(cfg, seed, variants),
        plan_language_task(cfg, seed, ktub),
        plan_sonic_pi_task(cfg, seed, spi),
    ]
    reserved = set().union(*(t.keys() for t in tasks))
    corpus = plan_corpus(cfg, seed, reserved, variants, ktub, spi)
    assert_disjoint(corpus, tasks)
    return corpus, tasks


def build_demo(
    cfg: DemoConfig, seed: int, out_dir: str | Path, inventory: DemoInventory | None = None
) -> BuildResult:
    """Plan, render and write the demo corpus and probe tasks into ``out_dir`` (see the module docstring).

    Existing ``corpus/`` and ``tasks/`` folders in ``out_dir`` are replaced. ``inventory`` (from
    ``load_inventory``) may be passed to skip re-scanning the packages.

    Raises:
        DemoBuildError: a package is missing (with the ``apt-get`` line), probe material leaked into the
            corpus, a renderer failed, or a task split ended up empty.
    """
    import time

    started = time.perf_counter()
    out_dir = Path(out_dir)
    corpus, tasks = plan_demo(cfg, seed, inventory)
    corpus_root = out_dir / "corpus"
    task_dir = out_dir / TASK_MANIFEST_DIR
    for stale in (corpus_root, task_dir):
        if stale.exists():
            shutil.rmtree(stale)
    roots = {"corpus": corpus_root, **{t.name: task_dir / t.name for t in tasks}}
    sets = [corpus, *tasks]
    jobs: list[RenderJob] = []
    owner: list[str] = []
    for planned in sets:
        new = _jobs_for(planned, roots[planned.name], cfg)
        jobs += new
        owner += [planned.name] * len(new)
    log.info(
        "demo corpus: rendering %d clips in %d jobs with %d worker(s)",
        sum(len(s.clips) for s in sets),
        len(jobs),
        cfg.workers,
    )
    results = _run_jobs(jobs, cfg.workers)
    by_set: dict[str, dict[str, RenderResult]] = defaultdict(dict)
    for name, res in zip(owner, results, strict=True):
        for r in res:
            by_set[name][r.rel_path] = r
    dropped: dict[str, dict[str, str]] = {}
    manifests: dict[str, Manifest] = {}
    for planned in sets:
        manifests[planned.name], dropped[planned.name] = _manifest(
            planned, roots[planned.name], by_set[planned.name], cfg.sample_rate
        )
        if dropped[planned.name]:
            log.warning(
                "%s: %d clip(s) dropped: %s",
                planned.name,
                len(dropped[planned.name]),
                dict(Counter(dropped[planned.name].values())),
            )
    for task in tasks:
        man = manifests[task.name]
        missing = {s for s in ("train", "valid", "test") if not man.filter(split=s).clips}
        if missing:
            raise DemoBuildError(
                f"task {task.name} has no clip in split(s) {sorted(missing)} after rendering"
            )
    write_manifest(out_dir / CORPUS_MANIFEST, manifests["corpus"])
    for task in tasks:
        write_manifest(task_dir / f"{task.name}.csv", manifests[task.name])
    atomic_write_json(
        out_dir / "provenance.json",
        {
            s.name: {c.clip_id: list(c.keys) for c in s.clips if c.clip_id not in dropped[s.name]}
            for s in sets
        },
    )
    return BuildResult(
        manifests["corpus"],
        {t.name: manifests[t.name] for t in tasks},
        dropped,
        time.perf_counter() - started,
    )


def summarize(result: BuildResult) -> dict[str, Any]:
    """Key figures for ``done.json``: corpus size, sources, licences; per task classes, counts and splits."""
    from ssondo_train.data.importers import corpus_figures

    return {
        "corpus": {
            "manifest": CORPUS_MANIFEST,
            **corpus_figures(result.corpus),
            "dropped": len(result.dropped.get("corpus", {})),
        },
        "tasks": {
            name: {
                "manifest": f"{TASK_MANIFEST_DIR}/{name}.csv",
                "classes": len(man.class_names()),
                "class_names": man.class_names(),
                "class_counts": man.class_counts(),
                "splits": {s: len(man.filter(split=s)) for s in ("train", "valid", "test")},
                "dropped": len(result.dropped.get(name, {})),
            }
            for name, man in result.tasks.items()
        },
        "build_seconds": round(result.seconds, 1),
    }
