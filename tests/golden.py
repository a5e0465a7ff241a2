"""Golden fixtures: synthetic weights regenerated from key lists, plus expected outputs.

The weight recipe is the normative one documented in ``tests/fixtures/README.md``: every tensor is drawn
from its own generator seeded with the CRC32 of its key, then scaled by a per-rule constant.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "golden"

# (gain for static conv/linear weights, gain for DyMN dynamic kernel banks); teachers are absent.
_STUDENT_GAINS: dict[str, tuple[float, float | None]] = {
    "mn10": (1.3, None),
    "eres2net": (0.8, None),
    "dymn10": (1.4, 2.4),
}
_LAYER_NORM_NAMES = ("norm", "norm1", "norm2")


def key_shapes(model: str) -> list[tuple[str, tuple[int, ...]]]:
    """Keys and shapes of ``<model>_keys.json`` in checkpoint order."""
    entries = json.loads((GOLDEN_DIR / f"{model}_keys.json").read_text())
    return [(key, tuple(shape)) for key, shape in entries]


def _value(model: str, key: str, shape: tuple[int, ...], shapes: dict[str, tuple[int, ...]]) -> np.ndarray:
    f32 = np.float32
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    z = torch.randn(shape, generator=gen, dtype=torch.float32).numpy()
    parent, _, leaf = key.rpartition(".")
    if leaf == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    if key == "norm_stats":
        return np.array([-7.1, 4.2], f32)
    if leaf == "lambdas" and len(shape) == 1:
        return np.array([1.0, 1.0, 0.5, 0.5], f32)
    if leaf == "init_v" and len(shape) == 1:
        return np.array([1.0, 0.0, 0.0, 0.0], f32)
    if leaf == "running_mean":
        return z * f32(0.1)
    if leaf == "running_var":
        return f32(1) + np.abs(z) * f32(0.1)
    is_bn_weight = parent + ".running_mean" in shapes
    is_ln_weight = parent.rpartition(".")[2] in _LAYER_NORM_NAMES
    if leaf == "weight" and len(shape) == 1 and (is_bn_weight or is_ln_weight):
        return f32(1) + z * f32(0.1)
    if model in _STUDENT_GAINS and leaf == "weight" and len(shape) >= 2:
        gain, dyn_gain = _STUDENT_GAINS[model]
        is_dynamic_bank = len(shape) == 4 and shape[:2] == (1, 1) and key.endswith("_conv.weight")
        if is_dynamic_bank:
            norm_key = key[: -len("_conv.weight")] + "_norm.weight"
            fan_in = shape[3] // shapes[norm_key][0]
            gain = dyn_gain
        else:
            fan_in = int(np.prod(shape[1:]))
        return z * f32(gain / math.sqrt(fan_in))
    return z * f32(0.02)


def golden_state_dict(model: str) -> dict[str, torch.Tensor]:
    """Regenerate the synthetic state dict of ``model`` (m2d, matpac, mn10, dymn10, eres2net)."""
    entries = key_shapes(model)
    shapes = dict(entries)
    values = {key: _value(model, key, shapes[key], shapes) for key in sorted(shapes)}
    return {key: torch.from_numpy(np.ascontiguousarray(values[key])) for key, _ in entries}


def expected(name: str) -> dict[str, np.ndarray]:
    """Arrays of ``<name>_expected.npz`` (m2d, matpac, student)."""
    with np.load(GOLDEN_DIR / f"{name}_expected.npz") as data:
        return {k: data[k] for k in data.files}


def tolerance(npz_name: str, array: str) -> float:
    """Absolute tolerance for one golden array."""
    tol = json.loads((GOLDEN_DIR / "tolerances.json").read_text())
    return float(tol[f"{npz_name}_expected.npz"][array])


def cosine_floor() -> float:
    return float(json.loads((GOLDEN_DIR / "tolerances.json").read_text())["cosine_min"])


def golden_input(name: str) -> np.ndarray:
    """One of teacher_input_16k_10s, teacher_input_16k_13s7, student_input_32k_25s: (1, n) float32."""
    return np.load(GOLDEN_DIR / f"{name}.npy")


def training_config(model: str) -> dict:
    return json.loads((GOLDEN_DIR / f"{model}_training_config.json").read_text())


def assert_close(ours: np.ndarray | torch.Tensor, npz_name: str, array: str, ref: np.ndarray) -> None:
    """max |ours - ref| <= atol (rtol 0) and per-vector cosine >= the floor, as the fixtures prescribe."""
    ours = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert ours.shape == ref.shape, f"{array}: shape {ours.shape} != golden {ref.shape}"
    atol = tolerance(npz_name, array)
    err = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64))))
    assert err <= atol, f"{array}: max abs error {err:.3g} > atol {atol:.3g}"
    a = ours.reshape(-1, ref.shape[-1]).astype(np.float64)
    b = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    assert cos.min() >= cosine_floor(), f"{array}: min cosine {cos.min():.8f}"
