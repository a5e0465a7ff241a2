"""M2D ViT-Base teacher (``m2d_vit_base-80x608p16x16-221006-mr7_enconly``) as S-SONDO uses it."""

from __future__ import annotations

import logging
import os
from typing import Any

from torch import Tensor

from ssondo_train.teachers.checkpoint import CheckpointFormatError, load_torch_state_dict, sha256_file
from ssondo_train.teachers.frontend import LogMelFrontEnd, slaney_mel_filterbank
from ssondo_train.teachers.vit import AudioViTEncoder, ViTConfig, ViTTeacher, encoder_from_state

__all__ = ["DEFAULT_NORM_STATS", "M2DTeacher", "build_m2d", "load_m2d"]

log = logging.getLogger(__name__)

# Used by the 2022 M2D releases, whose weights carry no norm_stats entry.
DEFAULT_NORM_STATS = (-7.1, 4.2)
_RUNTIME_PREFIX = "module.ar.runtime.backbone."


class M2DTeacher(ViTTeacher):
    """M2D: centred (reflect-padded) STFT log-mel, normalised with the checkpoint's ``norm_stats``.

    Args:
        config: encoder geometry (ViT-B defaults).
        norm_stats: ``(mean, std)`` of the log-mel, normally read from the checkpoint.

    Input ``(B, N)`` float32 at 16 kHz. A 10-s window gives 1001 frames, 63 time steps and an ``embed`` of
    shape ``(B, 3840)``.
    """

    name = "m2d"

    def __init__(
        self,
        config: ViTConfig | dict[str, Any] | None = None,
        norm_stats: tuple[float, float] = DEFAULT_NORM_STATS,
        encoder: AudioViTEncoder | None = None,
    ) -> None:
        super().__init__(config, encoder)
        fb = slaney_mel_filterbank(201, 50.0, 8000.0, self.config.n_mels, self.sample_rate)
        self.norm_stats = (float(norm_stats[0]), float(norm_stats[1]))
        self.frontend = LogMelFrontEnd(fb, center=True, mean=self.norm_stats[0], std=self.norm_stats[1])

    def set_norm_stats(self, mean: float, std: float) -> None:
        self.norm_stats = (float(mean), float(std))
        self.frontend.set_norm(*self.norm_stats)

    def log_mel(self, wav: Tensor) -> Tensor:
        """``(B, N)`` -> ``(B, 80, 1 + N // 160)`` normalised log-mel."""
        return self.frontend(wav)

    def ssondo_wrapper(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        """Upstream S-SONDO M2D wrapper: inputs over 10 s are cut into 10-s windows (last one zero-padded)
        and the pooled layers are **averaged over windows**.

        Returns:
            ``emb (B, 3840)``, ``layers (B, 12, 3840)``.
        """
        layers = self._windows_layers(wav).mean(dim=1)
        return layers[:, -1].clone(), layers

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["norm_stats"] = list(self.norm_stats)
        return meta


def load_m2d(
    path: str | os.PathLike,
    *,
    config: ViTConfig | dict[str, Any] | None = None,
    allow_unexpected_keys: bool = False,
) -> M2DTeacher:
    """Load an M2D encoder checkpoint (strict), returning a frozen teacher in eval mode.

    Accepted layouts: the flat encoder-only ``state_dict`` (151 keys incl. ``norm_stats``), optionally nested
    under a ``"model"`` key and/or prefixed with ``module.ar.runtime.backbone.``. ``norm_stats`` defaults to
    (-7.1, 4.2) when absent. Geometry comes from ``config`` only.

    Raises:
        CheckpointKeyError: missing / unexpected keys or wrong shapes (lists them).
        CheckpointFormatError: unreadable file, pickled code, or a bad ``norm_stats``.
    """
    state = load_torch_state_dict(path)
    if isinstance(state.get("model"), dict):
        state = dict(state["model"])
    state = {k.removeprefix(_RUNTIME_PREFIX): v for k, v in state.items()}
    norm_stats = state.pop("norm_stats", None)
    if norm_stats is None:
        log.info("M2D checkpoint %s has no norm_stats; using the default %s", path, DEFAULT_NORM_STATS)
        stats = DEFAULT_NORM_STATS
    else:
        if not isinstance(norm_stats, Tensor) or norm_stats.numel() != 2:
            raise CheckpointFormatError(f"{path}: norm_stats must be a 2-element tensor, got {norm_stats!r}")
        stats = (float(norm_stats[0]), float(norm_stats[1]))
    cfg = ViTConfig.from_any(config)
    encoder = encoder_from_state(str(path), cfg, state, allow_unexpected=allow_unexpected_keys)
    extra = sorted(set(state) - set(encoder.state_dict()))
    if extra:
        log.warning("M2D checkpoint %s: ignoring %d extra keys: %s", path, len(extra), extra)
    teacher = M2DTeacher(cfg, norm_stats=stats, encoder=encoder)
    teacher.checkpoint_path = str(path)
    teacher.checkpoint_sha256 = sha256_file(path)
    return teacher.requires_grad_(False).eval()


def build_m2d(
    checkpoint_path: str | os.PathLike | None = None,
    *,
    config: ViTConfig | dict[str, Any] | None = None,
    allow_unexpected_keys: bool = False,
    allow_random_init: bool = False,
) -> M2DTeacher:
    """Registry entry ``"m2d"``: load ``checkpoint_path``; random weights only with ``allow_random_init``."""
    if checkpoint_path is None:
        if not allow_random_init:
            raise ValueError("teacher 'm2d' needs checkpoint_path (or allow_random_init=True for tests)")
        log.warning("building M2D with RANDOM weights (allow_random_init=True)")
        return M2DTeacher(config).requires_grad_(False).eval()
    return load_m2d(checkpoint_path, config=config, allow_unexpected_keys=allow_unexpected_keys)
