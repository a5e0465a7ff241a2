"""Format constants, records, key escaping and audio codecs of the teacher-embedding store.

The on-disk layout is documented in ``ssondo_train/store/FORMAT.md``; every constant that appears in a file
lives here so the writer and the readers cannot disagree.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FORMAT_NAME = "ssondo-teacher-store"
FORMAT_VERSION = 1

BACKENDS = ("wds", "h5")
DTYPES: dict[str, type[np.floating]] = {"float16": np.float16, "float32": np.float32}
AUDIO_CODECS = ("flac", "pcm16", "float32")
STUDENT_SAMPLE_RATE = 32000

META_FILE = "meta.json"
INDEX_FILE = "index.json"
STATS_FILE = "stats.npz"
COMMITS_DIR = "_commits"
PARTIAL_SUFFIX = ".partial"
SHARD_EXT = {"wds": ".tar", "h5": ".h5"}

# wds member extensions (everything after the first dot of the member name, webdataset convention).
EXT_JSON = "json"
EXT_EMB = {"float16": "emb.f16", "float32": "emb.f32"}
EXT_LAYERS = {"float16": "layers.f16", "float32": "layers.f32"}
EXT_AUDIO = {"flac": "audio.flac", "pcm16": "audio.pcm16", "float32": "audio.f32"}

# Characters kept verbatim in a wds key; everything else (notably "." which webdataset uses to split the key
# from the extension, and "/" which would create folders) is percent-encoded byte-wise (UTF-8).
_SAFE_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
WINDOW_SEP = "__w"


class StoreError(RuntimeError):
    """Base class of store errors."""


class StoreCorruptError(StoreError):
    """A shard on disk does not match the index (size or md5), or cannot be parsed."""


class StoreMismatchError(StoreError):
    """An existing store was written with another layout, dtype, teacher or shard plan."""


class StoreIncompleteError(StoreError):
    """Planned shards are missing (not committed) when an index is built or a store is opened."""


@dataclass(frozen=True)
class WindowRecord:
    """One window of one clip with its teacher embedding.

    Args:
        clip_id: clip identifier (any string; escaped for wds keys).
        window: window index within the clip (>= 0).
        start, end: window span in seconds in the clip.
        embedding: (D,) float array (cast to the store dtype when written).
        audio: optional (T,) mono waveform at the student rate (32 kHz), float in [-1, 1].
        layers: optional (L, D) per-layer embeddings (cast to the store dtype).
    """

    clip_id: str
    window: int
    start: float
    end: float
    embedding: np.ndarray
    audio: np.ndarray | None = None
    layers: np.ndarray | None = None


@dataclass(frozen=True)
class TeacherMeta:
    """Teacher description stored in ``meta.json`` (``teacher`` section)."""

    name: str
    dim: int
    sample_rate: int
    checkpoint_sha256: str | None = None
    pooling: str = "mean"
    layer: int | str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("teacher.name must be a non-empty string")
        if int(self.dim) <= 0:
            raise ValueError(f"teacher.dim must be > 0, got {self.dim}")
        if int(self.sample_rate) <= 0:
            raise ValueError(f"teacher.sample_rate must be > 0, got {self.sample_rate}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def escape_clip_id(clip_id: str) -> str:
    """Escape a clip id for use in a wds key: keep ``[A-Za-z0-9_-]``, percent-encode every other UTF-8 byte.

    ``"abc_30.000_40.000"`` -> ``"abc_30%2E000_40%2E000"``. The mapping is injective (``%`` itself is
    encoded), so distinct clip ids give distinct keys, and :func:`unescape_clip_id` inverts it.
    """
    if not isinstance(clip_id, str) or clip_id == "":
        raise ValueError(f"clip_id must be a non-empty str, got {clip_id!r}")
    out: list[str] = []
    for ch in clip_id:
        if ch in _SAFE_KEY_CHARS:
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def unescape_clip_id(escaped: str) -> str:
    """Invert :func:`escape_clip_id`."""
    raw = bytearray()
    i = 0
    while i < len(escaped):
        ch = escaped[i]
        if ch == "%":
            raw.append(int(escaped[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(ch.encode("ascii"))
            i += 1
    return raw.decode("utf-8")


def sample_key(clip_id: str, window: int) -> str:
    """wds sample key ``<escaped clip_id>__w<window:05d>`` (windows >= 100000 simply use more digits)."""
    if int(window) < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    return f"{escape_clip_id(clip_id)}{WINDOW_SEP}{int(window):05d}"


def parse_sample_key(key: str) -> tuple[str, int]:
    """Invert :func:`sample_key` -> ``(clip_id, window)``; the separator is the LAST ``__w``."""
    head, sep, tail = key.rpartition(WINDOW_SEP)
    if not sep or not tail.isdigit():
        raise ValueError(f"not a store sample key: {key!r}")
    return unescape_clip_id(head), int(tail)


def quantize_pcm16(wave: np.ndarray) -> np.ndarray:
    """Float waveform in [-1, 1] -> int16 with ``round(x * 32768)`` clipped to [-32768, 32767]."""
    return np.clip(np.rint(np.asarray(wave, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def encode_audio(wave: np.ndarray, codec: str, sample_rate: int = STUDENT_SAMPLE_RATE) -> bytes:
    """Encode a (T,) mono waveform.

    ``flac`` and ``pcm16`` store the int16 quantisation of :func:`quantize_pcm16` losslessly (FLAC is the
    same samples, compressed); ``float32`` stores the float32 samples bit-exactly (raw little-endian).
    """
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"audio must be a (T,) mono waveform, got shape {wave.shape}")
    if codec == "float32":
        return wave.astype("<f4").tobytes()
    pcm = quantize_pcm16(wave)
    if codec == "pcm16":
        return pcm.astype("<i2").tobytes()
    if codec == "flac":
        import soundfile as sf  # local: only writers/readers of audio stores need libsndfile

        buf = io.BytesIO()
        sf.write(buf, pcm, sample_rate, format="FLAC", subtype="PCM_16")
        return buf.getvalue()
    raise ValueError(f"audio codec must be one of {AUDIO_CODECS}, got {codec!r}")


def decode_audio(data: bytes, codec: str) -> np.ndarray:
    """Decode bytes written by :func:`encode_audio` -> (T,) float32 (int16 codecs are divided by 32768)."""
    if codec == "float32":
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    if codec == "pcm16":
        pcm = np.frombuffer(data, dtype="<i2")
    elif codec == "flac":
        import soundfile as sf

        pcm, _ = sf.read(io.BytesIO(data), dtype="int16", always_2d=False)
    else:
        raise ValueError(f"audio codec must be one of {AUDIO_CODECS}, got {codec!r}")
    return pcm.astype(np.float32) / np.float32(32768.0)
