"""Linear-probe evaluation: task adapters (``tasks``), the probe fit (``head``) and the protocol
(``evaluate``)."""

from ssondo_train.probe.head import (
    NormStats,
    ProbeResult,
    carve_validation,
    evaluate,
    export_head,
    fit_linear_probe,
    fold_normalisation,
    head_state_dict,
    mean_ci95,
)
from ssondo_train.probe.tasks import TASK_BUILDERS, ProbeClip, ProbeTask, build_task

__all__ = [
    "TASK_BUILDERS",
    "NormStats",
    "ProbeClip",
    "ProbeResult",
    "ProbeTask",
    "build_task",
    "carve_validation",
    "evaluate",
    "export_head",
    "fit_linear_probe",
    "fold_normalisation",
    "head_state_dict",
    "mean_ci95",
]
