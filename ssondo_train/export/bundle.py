"""Write every export artefact of a distilled student into one folder (used by the ``export`` stage)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssondo_train.export.formats import (
    PreprocessSpec,
    backbone_spec_from_ssondo_config,
    fold_target_norm,
    save_head,
    save_safetensors,
    write_ssondo_checkpoint,
)
from ssondo_train.students import StudentWithProjector

log = logging.getLogger(__name__)

HeadSpec = nn.Linear | tuple[nn.Linear, Mapping[str, Any]]


def export_student(
    out_dir: str | Path,
    student: StudentWithProjector,
    training_config: Mapping[str, Any],
    teacher_meta: Mapping[str, Any] | None = None,
    target_mean: torch.Tensor | float | None = None,
    target_std: torch.Tensor | float | None = None,
    heads: Mapping[str, HeadSpec] | None = None,
    onnx: bool | None = None,
) -> dict[str, Path]:
    """Write ``ssondo.ckpt``, ``model.safetensors`` + ``config.json``, ``model.onnx`` and ``heads/``.

    Args:
        out_dir: output folder (created).
        student: trained backbone + projector (not modified).
        training_config: S-SONDO training_config describing ``student`` (see
            :func:`~ssondo_train.export.formats.ssondo_training_config`); it also gives the front-end.
        teacher_meta: JSON-able teacher description (name, dim, layers, checkpoint hash...).
        target_mean, target_std: normalisation of the distillation targets ((Dt,) or scalars); when given
            they are folded into the projector so every artefact outputs teacher-space vectors.
        heads: task -> nn.Linear(E, C) or (nn.Linear, metadata), written as ``heads/<task>.pth`` + ``.json``.
        onnx: write ``model.onnx`` (waveform in; needs the ``onnx`` package): True = required (DyMN raises
            NotImplementedError), None = when the backbone supports it (DyMN is skipped with a warning),
            False = never.

    Returns:
        ``{"ssondo_ckpt", "safetensors", "config", "onnx", "heads/<task>", "heads/<task>.json"}`` -> paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (target_mean is None) != (target_std is None):
        raise ValueError("give both target_mean and target_std, or neither")
    exported = copy.deepcopy(student).cpu().eval()
    folded = target_mean is not None
    if folded:
        exported.classification_head = fold_target_norm(exported.classification_head, target_mean, target_std)
    spec = PreprocessSpec.from_ssondo_config(training_config)
    name, kwargs = backbone_spec_from_ssondo_config(training_config)
    written: dict[str, Path] = {
        "ssondo_ckpt": write_ssondo_checkpoint(out_dir / "ssondo.ckpt", exported, training_config)
    }
    config = {
        "backbone": {"name": name, "kwargs": kwargs},
        "preprocess": spec,
        "teacher": dict(teacher_meta or {}),
        "target_norm_folded": folded,
        "heads": sorted(heads or {}),
    }
    written.update(save_safetensors(out_dir, exported, config))
    if onnx or onnx is None:
        from ssondo_train.export.onnx_graph import export_onnx, onnx_supported

        if onnx or onnx_supported(exported):
            written["onnx"] = export_onnx(out_dir / "model.onnx", exported, input="waveform", preprocess=spec)
        else:
            log.warning("skipping model.onnx: %s cannot be exported to ONNX", type(exported.model).__name__)
    for task, value in (heads or {}).items():
        linear, meta = value if isinstance(value, tuple) else (value, {})
        files = save_head(out_dir / "heads" / f"{task}.pth", linear, {"task": task, **dict(meta)})
        written[f"heads/{task}"] = files["head"]
        written[f"heads/{task}.json"] = files["meta"]
    log.info("exported %s to %s: %s", name, out_dir, ", ".join(sorted(written)))
    return written
