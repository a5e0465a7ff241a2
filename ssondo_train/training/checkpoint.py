"""Reading distill checkpoints back: the student, its target normalisation and the run config.

Lightning checkpoints of ``stage=distill`` hold the LightningModule state (``student.*``, ``target_norm.*``)
and the resolved run config under ``ssondo_train_config`` as plain containers, so they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ssondo_train.students import StudentWithProjector


@dataclass
class DistilledStudent:
    student: StudentWithProjector
    target_mean: torch.Tensor
    target_std: torch.Tensor
    target_norm: str
    config: dict[str, Any]
    step: int


def load_distill_checkpoint(path: str | Path) -> DistilledStudent:
    """Rebuild the student (backbone + projector) of a distill checkpoint and load it strictly.

    Raises:
        ValueError: the file is not a distill checkpoint of this package, or its keys do not match.
    """
    from ssondo_train.config.groups import StudentConfig
    from ssondo_train.config.schema import to_schema
    from ssondo_train.stages.distill import build_student_model

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = ckpt.get("ssondo_train_config")
    if not isinstance(config, dict) or "student" not in config:
        raise ValueError(f"{path} is not a distill checkpoint of ssondo-train (no 'ssondo_train_config')")
    state = ckpt["state_dict"]
    mean, std = state["target_norm.mean"].float(), state["target_norm.std"].float()
    scfg = to_schema("student", _as_omegaconf(config["student"]), StudentConfig)
    scfg.pretrained = None  # weights come from the checkpoint
    student = build_student_model(scfg, int(mean.numel()))
    weights = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    result = student.load_state_dict(weights, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{path}: student keys do not match: missing {result.missing_keys[:10]}, "
                         f"unexpected {result.unexpected_keys[:10]}")
    student.eval()
    mode = str(config.get("distill", {}).get("target_norm", "none"))
    return DistilledStudent(student, mean, std, mode, config, int(ckpt.get("global_step", 0)))


def _as_omegaconf(node: dict[str, Any]):
    from omegaconf import OmegaConf

    return OmegaConf.create(node)
