"""Export formats of distilled students: S-SONDO checkpoint, safetensors + JSON, ONNX, probe heads.

``onnx`` is imported only by :func:`export_onnx`.
"""

from ssondo_train.export.bundle import export_student
from ssondo_train.export.formats import (
    FORMAT_NAME,
    FORMAT_VERSION,
    PreprocessSpec,
    backbone_spec_from_ssondo_config,
    export_onnx,
    fold_target_norm,
    load_export_config,
    load_head,
    load_safetensors,
    load_ssondo_checkpoint,
    save_head,
    save_safetensors,
    ssondo_training_config,
    write_ssondo_checkpoint,
)
from ssondo_train.export.safe_load import UnsafeCheckpointError, safe_torch_load

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PreprocessSpec",
    "UnsafeCheckpointError",
    "backbone_spec_from_ssondo_config",
    "export_onnx",
    "export_student",
    "fold_target_norm",
    "load_export_config",
    "load_head",
    "load_safetensors",
    "load_ssondo_checkpoint",
    "safe_torch_load",
    "save_head",
    "save_safetensors",
    "ssondo_training_config",
    "write_ssondo_checkpoint",
]
