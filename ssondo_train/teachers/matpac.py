"""MATPAC++ ViT-Base teacher (``matpac_plus_6s_2048_enconly.pt``) as S-SONDO uses it."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor

from ssondo_train.teachers.checkpoint import (
    CheckpointFormatError,
    check_state_dict,
    load_torch_state_dict,
    sha256_file,
)
from ssondo_train.teachers.frontend import LogMelFrontEnd
from ssondo_train.teachers.vit import AudioViTEncoder, ViTConfig, ViTTeacher

__all__ = ["MATPAC_NORM", "MATPACTeacher", "build_matpac", "load_matpac"]

log = logging.getLogger(__name__)

MATPAC_NORM = (-7.056, 4.193)  # fixed in MATPAC's code, not stored in the weights
_ENCODER_PREFIX = "student_encoder."
# Front-end buffers that an export of the whole inference model also carries; ours are rebuilt and compared.
_FRONTEND_KEYS = {
    "log_mel.MelSpectrogram.spectrogram.window": "window",
    "log_mel.MelSpectrogram.mel_scale.fb": "filterbank",
}


class MATPACTeacher(ViTTeacher):
    """MATPAC++: uncentred STFT log-mel (998 frames per 10 s), fixed normalisation (x + 7.056) / 4.193.

    Input ``(B, N)`` float32 at 16 kHz; ``embed`` ``(B, 3840)``.
    """

    name = "matpac"

    def __init__(
        self, config: ViTConfig | dict[str, Any] | None = None, encoder: AudioViTEncoder | None = None
    ) -> None:
        super().__init__(config, encoder)
        import torchaudio  # deferred: only this teacher needs it

        # torchaudio's float32 filterbank: the one MATPAC's torchaudio MelSpectrogram uses.
        fb = torchaudio.functional.melscale_fbanks(
            201, 50.0, 8000.0, self.config.n_mels, self.sample_rate, norm="slaney", mel_scale="slaney"
        )
        self.frontend = LogMelFrontEnd(fb, center=False, mean=MATPAC_NORM[0], std=MATPAC_NORM[1])

    def log_mel(self, wav: Tensor) -> Tensor:
        """``(B, N)`` -> ``(B, 80, 1 + (N - 400) // 160)`` normalised log-mel."""
        return self.frontend(wav)

    def ssondo_wrapper(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """Upstream S-SONDO MATPAC wrapper: inputs over 10 s are cut into 10-s windows and the window axis
        is **kept**.

        Returns:
            ``emb (B, S, 3840)``, ``layers (B, 12, S, 3840)``.
        """
        layers = self._windows_layers(wav)  # (B, S, L, C)
        return layers[:, :, -1].clone(), layers.transpose(1, 2).contiguous()


def _checkpoint_to_encoder_key(key: str) -> str:
    return key[len(_ENCODER_PREFIX) :] if key.startswith(_ENCODER_PREFIX) else key


def load_matpac(
    path: str | os.PathLike,
    *,
    config: ViTConfig | dict[str, Any] | None = None,
    allow_unexpected_keys: bool = False,
) -> MATPACTeacher:
    """Load a MATPAC++ encoder checkpoint (strict), returning a frozen teacher in eval mode.

    Layout: flat ``state_dict`` with ``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
    ``student_encoder.blocks.{i}.*`` and ``student_encoder.norm.*`` (150 keys). The two front-end buffers of
    the inference model's own ``state_dict`` are accepted if they match ours.

    Raises:
        CheckpointKeyError: missing / unexpected keys or wrong shapes (lists them, in checkpoint naming).
        CheckpointFormatError: unreadable file, pickled code, or saved front-end buffers that differ
            from ours.
    """
    raw = load_torch_state_dict(path)
    cfg = ViTConfig.from_any(config)
    with torch.device("meta"):  # weights come from the file: skip the random initialisation
        encoder = AudioViTEncoder(cfg)
    teacher = MATPACTeacher(cfg, encoder=encoder)
    for key, attr in _FRONTEND_KEYS.items():
        if key in raw:
            saved, ours = raw.pop(key), getattr(teacher.frontend, attr)
            if tuple(saved.shape) != tuple(ours.shape) or not torch.allclose(saved.float(), ours, atol=1e-6):
                raise CheckpointFormatError(f"{path}: saved front-end buffer {key!r} differs from MATPAC's")
    # Compare in checkpoint naming so the error lists the keys as they appear in the file.
    expected = {
        (_ENCODER_PREFIX + k if k.startswith(("blocks.", "norm.")) else k): v
        for k, v in teacher.encoder.state_dict().items()
    }
    check_state_dict(str(path), raw, expected, allow_unexpected=allow_unexpected_keys)
    extra = sorted(set(raw) - set(expected))
    if extra:
        log.warning("MATPAC checkpoint %s: ignoring %d extra keys: %s", path, len(extra), extra)
    tensors = {
        _checkpoint_to_encoder_key(k): raw[k].detach().to(torch.float32).contiguous() for k in expected
    }
    teacher.encoder.load_state_dict(tensors, strict=True, assign=True)
    teacher.checkpoint_path = str(path)
    teacher.checkpoint_sha256 = sha256_file(path)
    return teacher.requires_grad_(False).eval()


def build_matpac(
    checkpoint_path: str | os.PathLike | None = None,
    *,
    config: ViTConfig | dict[str, Any] | None = None,
    allow_unexpected_keys: bool = False,
    allow_random_init: bool = False,
) -> MATPACTeacher:
    """Registry entry ``"matpac"``: load ``checkpoint_path``; random weights need ``allow_random_init``."""
    if checkpoint_path is None:
        if not allow_random_init:
            raise ValueError("teacher 'matpac' needs checkpoint_path (or allow_random_init=True for tests)")
        log.warning("building MATPAC++ with RANDOM weights (allow_random_init=True)")
        return MATPACTeacher(config).requires_grad_(False).eval()
    return load_matpac(checkpoint_path, config=config, allow_unexpected_keys=allow_unexpected_keys)
