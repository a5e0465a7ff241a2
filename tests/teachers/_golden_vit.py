"""Shared driver for the M2D / MATPAC++ golden tests: run every output the fixtures store, once."""

from __future__ import annotations

import numpy as np
import torch

from ssondo_train.teachers.vit import ViTTeacher
from tests.golden import golden_input

# The S-SONDO central crop of the 13.7 s clip: start = (219200 - 160000) // 2.
CROP_START, CROP_LEN = 29600, 160000


def run_all_outputs(teacher: ViTTeacher) -> dict[str, np.ndarray]:
    """Compute every array of ``<name>_expected.npz`` with our implementation."""
    x10 = torch.from_numpy(golden_input("teacher_input_16k_10s"))
    x13 = torch.from_numpy(golden_input("teacher_input_16k_13s7"))
    out: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        out["lms_10s"] = teacher.log_mel(x10)
        out["lms_13s7"] = teacher.log_mel(x13)
    frames10 = teacher.layer_frames(x10)  # (1, 12, 63, 3840): frames and per-layer means in one pass
    out["frames_last_10s"] = frames10[:, -1]
    out["layers_10s"] = frames10.mean(dim=2)
    out["emb_10s"] = teacher.embed(x10)
    # embed == embed_layers[:, -1] is checked bit-exactly on the 10 s clip; derive the others to save time.
    out["layers_13s7_model"] = teacher.embed_layers(x13)
    out["emb_13s7_model"] = out["layers_13s7_model"][:, -1]
    out["emb_13s7_wrapper_sliced"], out["layers_13s7_wrapper_sliced"] = teacher.ssondo_wrapper(x13)
    crop = x13[:, CROP_START : CROP_START + CROP_LEN]
    out["layers_13s7_ssondo_crop"] = teacher.embed_layers(crop)
    out["emb_13s7_ssondo_crop"] = out["layers_13s7_ssondo_crop"][:, -1]
    return {k: v.numpy() for k, v in out.items()}
