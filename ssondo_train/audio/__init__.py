"""Audio I/O: decode, down-mix, resample, validate and window."""

from ssondo_train.audio.io import (
    AUDIO_EXTENSIONS,
    TAIL_POLICIES,
    AudioContentError,
    AudioDecodeError,
    AudioError,
    AudioInfo,
    Windows,
    audio_info,
    check_content,
    cut_windows,
    decode,
    load_audio,
    resample,
    to_mono,
    window_starts,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "TAIL_POLICIES",
    "AudioContentError",
    "AudioDecodeError",
    "AudioError",
    "AudioInfo",
    "Windows",
    "audio_info",
    "check_content",
    "cut_windows",
    "decode",
    "load_audio",
    "resample",
    "to_mono",
    "window_starts",
]
