"""The explicit stage registry: ``stage=<name>`` dispatches through ``STAGES``.

A stage is listed here only once it is built; ``configs/stage/*.yaml`` lists the same names (a test checks
it).
"""

from __future__ import annotations

import importlib

from ssondo_train.stages.base import Stage, StageContext, StageError, run_stage

# Pipeline order: stage name -> module exposing ``STAGE``. Imported on use so ``--help`` stays fast.
STAGES: dict[str, str] = {
    "prepare": "ssondo_train.stages.prepare",
    "precompute": "ssondo_train.stages.precompute",
    "cluster": "ssondo_train.stages.cluster",
    "distill": "ssondo_train.stages.distill",
    "probe": "ssondo_train.stages.probe",
    "export": "ssondo_train.stages.export",
}


def stage_names() -> list[str]:
    return list(STAGES)


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; registered stages: {', '.join(STAGES)}")
    stage = importlib.import_module(STAGES[name]).STAGE
    assert stage.name == name, f"{STAGES[name]}.STAGE is named {stage.name!r}, registered as {name!r}"
    return stage


__all__ = ["STAGES", "Stage", "StageContext", "StageError", "get_stage", "run_stage", "stage_names"]
