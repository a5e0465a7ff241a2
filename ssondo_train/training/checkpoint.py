"""Reading distill checkpoints back: the student, its target normalisation and the run config.

Lightning checkpoints of ``stage=distill`` hold the LightningModule state (``student.*``, ``target_norm.*``,
and ``student_ema.*`` when ``distill.ema_decay`` is set: the weight average, which readers prefer)
and the resolved run config under ``ssondo_train_config`` as plain containers, so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# State-dict prefixes a distill LightningModule writes; anything else is reported and ignored.
CHECKPOINT_PREFIXES: tuple[str, ...] = (
    "student.",
    "student_ema.",
    "target_norm.",
    "loss.",
    "frontend.",
    "label_head.",
)
EMA_PREFIX = "student_ema."


@dataclass
class DistillCheckpoint:
    """A distill stage checkpoint rebuilt: the student and the target normalisation buffers."""

    path: Path
    student: nn.Module
    target_mean: Tensor
    target_std: Tensor
    config: dict[str, Any]
    sha256: str
    ignored_keys: list[str] = field(default_factory=list)
    weights: str = "trained"  # "ema" when the student holds the checkpoint's weight average


def _load_pickle(path: Path) -> Any:
    """Weights-only load; the export package's loader adds a tiny allowlist for Lightning's numpy scalars.

    Raises:
        ValueError: the file is not a readable torch file (truncated, another format).
    """
    load: Callable[[Path], Any]
    try:
        from ssondo_train.export.safe_load import safe_torch_load as load
    except ImportError:  # the export package is optional for probing
        load = functools.partial(torch.load, map_location="cpu", weights_only=True)
    try:
        return load(path)
    except (RuntimeError, EOFError) as err:  # torch's message for a truncated zip is a RuntimeError
        raise ValueError(f"{path}: unreadable checkpoint ({err})") from None


def nonfinite_tensors(state_dict: Mapping[str, Any]) -> list[str]:
    """Keys of ``state_dict`` whose floating-point tensors hold NaN or inf, in the dict's order.

    Integer tensors (``num_batches_tracked``) and non-tensor values are never reported.
    """
    return [
        key
        for key, value in state_dict.items()
        if isinstance(value, Tensor)
        and (value.is_floating_point() or value.is_complex())
        and not bool(torch.isfinite(value).all())
    ]


def _read_distill_state(path: Path) -> tuple[Mapping[str, Tensor], dict[str, Any]]:
    """``(state_dict, run config)`` of a distill checkpoint, after the structural checks."""
    ckpt = _load_pickle(path)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt or "ssondo_train_config" not in ckpt:
        raise ValueError(f"{path}: not a distill checkpoint (needs 'state_dict' and 'ssondo_train_config')")
    state: Mapping[str, Tensor] = ckpt["state_dict"]
    config = dict(ckpt["ssondo_train_config"])
    if "student" not in config:
        raise ValueError(f"{path}: the stored config has no 'student' section")
    student_cfg = config["student"]
    if not isinstance(student_cfg, Mapping) or "name" not in student_cfg:
        raise ValueError(f"{path}: the stored config's 'student' section has no 'name'")
    for key in ("target_norm.mean", "target_norm.std", "student.classification_head.mlp.3.weight"):
        if key not in state:
            raise ValueError(f"{path}: state_dict has no {key!r}")
    return state, config


def _student_prefix(path: Path, state: Mapping[str, Tensor], weights: str) -> str:
    """``"student_ema."`` or ``"student."``: the weights ``weights`` selects in this checkpoint."""
    has_ema = any(k.startswith(EMA_PREFIX) for k in state)
    if weights == "ema" and not has_ema:
        raise ValueError(f"{path}: no weight average (student_ema.*) in this checkpoint")
    return EMA_PREFIX if has_ema and weights != "trained" else "student."


class DivergedCheckpointError(ValueError):
    """A checkpoint whose weights hold NaN/inf (the training diverged); it is never exported nor probed.

    Attributes:
        path: the checkpoint.
        keys: the state-dict keys holding NaN/inf.
        others: the other ``.ckpt`` files of its folder (earlier checkpoints to fall back on).
    """

    def __init__(self, message: str, path: Path, keys: list[str], others: list[Path]) -> None:
        super().__init__(message)
        self.path, self.keys, self.others = path, keys, others


def _refuse_nonfinite(path: Path, state: Mapping[str, Tensor], prefix: str) -> None:
    """DivergedCheckpointError when the student weights under ``prefix`` or target_norm hold NaN/inf."""
    checked = {k: v for k, v in state.items() if k.startswith((prefix, "target_norm."))}
    bad = nonfinite_tensors(checked)
    if not bad:
        return
    which = "weight-average" if prefix == EMA_PREFIX else "trained"
    others = sorted(p for p in path.parent.glob("*.ckpt") if p.name != path.name)
    advice = (
        f"use an earlier checkpoint ({', '.join(p.name for p in others)} in {path.parent}) or retrain"
        if others
        else f"retrain (no other checkpoint in {path.parent})"
    )
    raise DivergedCheckpointError(
        f"{path}: {len(bad)} of {len(checked)} weight tensors ({which} student and target_norm) hold NaN/inf "
        f"(e.g. {bad[0]}); the training diverged: {advice}",
        path,
        bad,
        others,
    )


def verify_distill_checkpoint(path: str | Path, weights: str = "auto") -> None:
    """The checks of :func:`load_distill_checkpoint` that need no student: structure and finite weights.

    For callers that load the student later (the probe builds its models lazily) but must refuse a bad
    checkpoint before any work starts.

    Raises:
        DivergedCheckpointError: the weights ``weights`` selects (or target_norm) hold NaN/inf.
        ValueError: not a distill checkpoint.
    """
    if weights not in ("auto", "trained", "ema"):
        raise ValueError(f"weights must be 'auto', 'trained' or 'ema', got {weights!r}")
    path = Path(path)
    state, _ = _read_distill_state(path)
    _refuse_nonfinite(path, state, _student_prefix(path, state, weights))


def load_distill_checkpoint(path: str | Path, weights: str = "auto") -> DistillCheckpoint:
    """Rebuild the student of a distill ``.ckpt`` (Lightning) and load its weights strictly.

    ``weights``: ``"auto"`` loads the weight average (``student_ema.*``) when the run kept one, else the
    trained weights; ``"trained"`` always loads ``student.*``; ``"ema"`` requires the average.

    The LightningModule state dict holds ``student.model.*``, ``student.classification_head.*`` and
    ``target_norm.mean`` / ``target_norm.std``; the run config is stored under ``ssondo_train_config`` as
    plain containers. The student is rebuilt from that config's ``student`` section,
    without the ImageNet initialisation (the checkpoint's weights replace it anyway). A DyMN trained with
    ``distill.dymn_anneal`` gets its final temperature back from ``student.model.dyconv_temperature``;
    checkpoints without that entry run at the config's (start) temperature.

    Raises:
        DivergedCheckpointError: the weights it would load, or target_norm, hold NaN/inf (a diverged run).
        ValueError: not a (readable) distill checkpoint, or the weights do not match the stored student
            config.
    """
    from ssondo_train.students import build_student_from_section
    from ssondo_train.utils.io import sha256_file

    path = Path(path)
    if weights not in ("auto", "trained", "ema"):
        raise ValueError(f"weights must be 'auto', 'trained' or 'ema', got {weights!r}")
    state, config = _read_distill_state(path)
    prefix = _student_prefix(path, state, weights)
    use_ema = prefix == EMA_PREFIX
    _refuse_nonfinite(path, state, prefix)
    teacher_dim = int(state["student.classification_head.mlp.3.weight"].shape[0])
    try:
        student = build_student_from_section(config["student"], teacher_dim, pretrained=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: cannot rebuild the stored student config: {err}") from None
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        student.load_state_dict(sub, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not match the stored student config: {err}") from None
    ignored = sorted(k for k in state if not k.startswith(CHECKPOINT_PREFIXES))
    if ignored:
        log.warning(
            "%s: %d state-dict entries outside student/target_norm ignored, e.g. %s",
            path.name,
            len(ignored),
            ignored[0],
        )
    mean, std = state["target_norm.mean"].float(), state["target_norm.std"].float()
    # The length scale of scale-free losses (TargetNorm.scale) is folded in: teacher = proj · std + mean.
    if "target_norm.scale" in state:
        std = std * state["target_norm.scale"].float()
    if mean.shape != (teacher_dim,) or std.shape != (teacher_dim,):
        raise ValueError(
            f"{path}: target_norm buffers {tuple(mean.shape)}/{tuple(std.shape)} != ({teacher_dim},)"
        )
    return DistillCheckpoint(
        path, student.eval(), mean, std, config, sha256_file(path), ignored, "ema" if use_ema else "trained"
    )


def checkpoint_target_norm(ckpt: DistillCheckpoint) -> str:
    """The ``distill.target_norm`` mode the checkpoint was trained with."""
    return str(ckpt.config.get("distill", {}).get("target_norm", "none"))
