"""Export formats of a distilled student.

Four artefacts, each with a documented schema:

* **S-SONDO checkpoint** (``ssondo.ckpt``): the contract of the PyPI ``ssondo==0.3.1`` client,
  ``{"training_config": dict, "state_dict": {"student_model." + key: tensor}}`` (torch zip pickle holding
  only plain values and tensors, so it also loads with ``weights_only=True``). ``ssondo.get_ssondo(path)``
  loads it strictly.
* **safetensors** (``model.safetensors`` + ``config.json``): the same weights without pickle; the JSON
  schema (``format`` = :data:`FORMAT_NAME`, ``format_version`` = :data:`FORMAT_VERSION`) is::

      {"format", "format_version", "ssondo_train_version",
       "backbone": {"name": <key of students.STUDENTS>, "kwargs": {...}, "emb_size": int},
       "projector": {"in_dim", "hidden_dim", "out_dim", "dropout"},
       "preprocess": PreprocessSpec fields (sample rate, STFT/mel, segment window/hop, normalisation),
       "teacher": {...caller metadata...}, "target_norm_folded": bool, ...other caller keys}

* **ONNX** (``model.onnx``): see :mod:`ssondo_train.export.onnx_graph`.
* **probe heads** (``heads/<task>.pth`` + ``heads/<task>.json``): S-SONDO's head format
  ``{"probe.linear_probe.weight": (C, E), "probe.linear_probe.bias": (C,)}`` plus a JSON sidecar of metadata.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssondo_train.export.safe_load import safe_torch_load
from ssondo_train.students import STUDENTS, Projector, StudentWithProjector, build_student
from ssondo_train.students._layers import last_channel_for
from ssondo_train.students.dymn import TEMPERATURE_KEY, DyMN
from ssondo_train.utils.io import atomic_path, atomic_write_json
from ssondo_train.version import __version__

log = logging.getLogger(__name__)

FORMAT_NAME = "ssondo-train-student"
FORMAT_VERSION = 1
HEAD_FORMAT_NAME = "ssondo-train-head"
HEAD_FORMAT_VERSION = 1
SSONDO_PREFIX = "student_model."
HEAD_WEIGHT_KEY = "probe.linear_probe.weight"
HEAD_BIAS_KEY = "probe.linear_probe.bias"

# Which of our constructor kwargs each ssondo 0.3.1 builder reads (under the same name, except DyMN's
# temperature, stored as ``pretrain_final_temp``); kwargs that only matter in training are free.
_SSONDO_KEYS: dict[str, tuple[str, ...]] = {
    "mobilenetv3": (
        "width_mult",
        "reduced_tail",
        "dilated",
        "strides",
        "relu_only",
        "input_dim_f",
        "input_dim_t",
        "se_dims",
        "se_agg",
        "se_r",
    ),
    "dymn": ("width_mult", "strides", "temperature"),
    "eres2net": ("m_channels", "feat_dim", "num_blocks", "pooling_func", "add_layer"),
}
_TRAINING_ONLY_KWARGS = frozenset({"bn_momentum", "t_min", "t0_slope", "t1_slope"})


@dataclass(frozen=True)
class PreprocessSpec:
    """Student input pipeline: segmentation into windows, log-mel, optional normalisation.

    Samples and Hz; ``window_s``/``hop_s`` in seconds. Defaults are S-SONDO's (32 kHz, 10-s windows,
    1024/512 STFT, 128 Slaney mels 50-16000 Hz, ``log(x + 1e-3)``, no normalisation).
    """

    sample_rate: int = 32_000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 50.0
    f_max: float = 16_000.0
    log_offset: float = 1e-3
    window_s: float = 10.0
    hop_s: float = 10.0
    norm_mean: float = 0.0
    norm_std: float = 1.0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ValueError(f"sample_rate, n_fft, hop_length and n_mels must be positive: {self}")
        if self.window_samples < self.n_fft or self.hop_samples <= 0:
            raise ValueError(
                f"window ({self.window_s} s) must hold one FFT frame and hop must be > 0: {self}"
            )
        if self.norm_std <= 0:
            raise ValueError(f"norm_std must be positive, got {self.norm_std}")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_s * self.sample_rate))

    @property
    def normalizes(self) -> bool:
        return self.norm_mean != 0.0 or self.norm_std != 1.0

    def frontend_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`ssondo_train.students.StudentFrontEnd`."""
        return {
            "sample_rate": self.sample_rate,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
            "f_min": self.f_min,
            "f_max": self.f_max,
            "log_offset": self.log_offset,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocess keys {unknown}; allowed: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def from_ssondo_config(cls, training_config: Mapping[str, Any]) -> PreprocessSpec:
        """Read an S-SONDO ``training_config`` (times in seconds; log offset fixed at 1e-3 upstream)."""
        sr = int(training_config.get("student_model", {}).get("sr", 32_000))
        pre = training_config.get("preprocess", {})
        mel = pre.get("logmelspec", {})
        sl = pre.get("slice_audio", {})
        norm = pre.get("normalize") or {}
        return cls(
            sample_rate=sr,
            n_fft=int(round(sr * float(mel.get("win_len", 0.032)))),
            hop_length=int(round(sr * float(mel.get("hop_len", 0.016)))),
            n_mels=int(mel.get("n_mels", 128)),
            f_min=float(mel.get("f_min", 50.0)),
            f_max=float(mel.get("f_max") if mel.get("f_max") is not None else sr / 2),
            window_s=float(sl.get("win_len", 10.0)),
            hop_s=float(sl.get("step_size", 10.0)),
            norm_mean=float(norm.get("mean", 0.0)),
            norm_std=float(norm.get("std", 1.0)),
        )

    def to_ssondo_preprocess(self) -> dict[str, Any]:
        """The ``preprocess`` block of an S-SONDO ``training_config``."""
        if self.log_offset != 1e-3:
            raise ValueError("ssondo 0.3.1 hard-codes log offset 1e-3; cannot express a different one")
        return {
            "slice_audio": {"win_len": self.window_s, "step_size": self.hop_s},
            "logmelspec": {
                "win_len": self.n_fft / self.sample_rate,
                "hop_len": self.hop_length / self.sample_rate,
                "n_mels": self.n_mels,
                "f_min": self.f_min,
                "f_max": self.f_max,
            },
            "normalize": {"mean": self.norm_mean, "std": self.norm_std},
        }


# --------------------------------------------------------------------------------------------- backbones
def _defaults(name: str) -> dict[str, Any]:
    params = inspect.signature(STUDENTS[name].__init__).parameters
    return {
        k: p.default for k, p in params.items() if k != "self" and p.default is not inspect.Parameter.empty
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def backbone_spec_from_ssondo_config(training_config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Our ``(student name, constructor kwargs)`` for an S-SONDO ``training_config``.

    Dispatch as ssondo: ``model_name`` containing "dy" -> dymn, else containing "mn" -> mobilenetv3,
    else eres2net. DyMN's ``pretrain_final_temp`` becomes ``temperature`` (30.0 when absent, the value
    S-SONDO trains with).
    """
    cfg = dict(training_config["student_model"])
    model_name = str(cfg.get("model_name", ""))
    name = "dymn" if "dy" in model_name else "mobilenetv3" if "mn" in model_name else "eres2net"
    accepted = set(_defaults(name))
    kwargs = {k: _jsonable(v) for k, v in cfg.items() if k in accepted}
    if name == "dymn":
        kwargs["temperature"] = float(cfg.get("pretrain_final_temp", 30.0))
    return name, kwargs


def ssondo_training_config(
    student_name: str,
    student_kwargs: Mapping[str, Any] | None = None,
    teacher_dim: int = 3840,
    hidden_dim: int | None = None,
    preprocess: PreprocessSpec | None = None,
    conf_id: str | None = None,
) -> dict[str, Any]:
    """Build the S-SONDO ``training_config`` that ssondo 0.3.1 needs to rebuild one of our students.

    Args:
        student_name: ``mobilenetv3``, ``dymn`` or ``eres2net``.
        student_kwargs: our constructor kwargs (missing ones take our defaults).
        teacher_dim: projector output size (``classification_head.n_classes``).
        hidden_dim: projector hidden size; defaults to the backbone's ``last_channel`` (1280).
        preprocess: front-end; S-SONDO's when None.
        conf_id: free-form run id stored as ``conf_id``.

    Returns:
        ``{"conf_id", "preprocess", "student_model", "classification_head"}`` in the layout of
        upstream's checkpoints (see tests/fixtures/golden/*_training_config.json).

    Raises:
        ValueError: unknown student, or kwargs that change inference but that ssondo cannot express.
    """
    if student_name not in _SSONDO_KEYS:
        raise ValueError(f"unknown student {student_name!r}; available: {sorted(_SSONDO_KEYS)}")
    defaults = _defaults(student_name)
    given = dict(student_kwargs or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"{student_name}: unknown kwargs {unknown}")
    kw = {**defaults, **given}
    representable = set(_SSONDO_KEYS[student_name]) | _TRAINING_ONLY_KWARGS
    lost = sorted(k for k in kw if k not in representable and _jsonable(kw[k]) != _jsonable(defaults[k]))
    if lost:
        raise ValueError(f"{student_name}: ssondo 0.3.1 cannot express non-default {lost}")
    preprocess = preprocess or PreprocessSpec()
    student_model: dict[str, Any]
    if student_name == "mobilenetv3":
        student_model = {
            "model_name": f"mn{int(round(10 * kw['width_mult'])):02d}_im",
            "sr": preprocess.sample_rate,
        }
        student_model.update({k: _jsonable(kw[k]) for k in _SSONDO_KEYS["mobilenetv3"]})
    elif student_name == "dymn":
        student_model = {
            "model_name": f"dymn{int(round(10 * kw['width_mult'])):02d}_im",
            "sr": preprocess.sample_rate,
            "width_mult": kw["width_mult"],
            "strides": _jsonable(kw["strides"]),
            "pretrain_final_temp": float(kw["temperature"]),
        }
    else:
        student_model = {"model_name": "ERes2Net", "sr": preprocess.sample_rate}
        student_model.update({k: _jsonable(kw[k]) for k in _SSONDO_KEYS["eres2net"]})
    if hidden_dim is None:
        # ssondo takes the hidden size from the backbone's last_channel when it has one (MN, DyMN)
        hidden_dim = last_channel_for(kw["width_mult"], kw["reduced_tail"]) if "width_mult" in kw else 1280
    return {
        "conf_id": conf_id or f"ssondo_train_{student_name}",
        "preprocess": preprocess.to_ssondo_preprocess(),
        "student_model": student_model,
        "classification_head": {
            "head_type": "mlp",
            "n_classes": int(teacher_dim),
            "pooling": "mean",
            "activation_att": None,
            "last_activation": "",
            "hidden_features_size": int(hidden_dim),
        },
    }


def _projector_dims(student: StudentWithProjector) -> dict[str, Any]:
    mlp = student.classification_head.mlp
    return {
        "in_dim": int(mlp[0].in_features),
        "hidden_dim": int(mlp[0].out_features),
        "out_dim": int(mlp[3].out_features),
        "dropout": float(mlp[2].p),
    }


def _optional_key(key: str) -> bool:
    """DyMN's annealed temperature, present only when it differs from the constructor's (students.dymn)."""
    return key == TEMPERATURE_KEY or key.endswith("." + TEMPERATURE_KEY)


def _shape_mismatch(ours: Mapping[str, torch.Tensor], ref: Mapping[str, torch.Tensor]) -> list[str]:
    problems = [f"missing {k}" for k in sorted(set(ref) - set(ours)) if not _optional_key(k)]
    problems += [f"unexpected {k}" for k in sorted(set(ours) - set(ref)) if not _optional_key(k)]
    problems += [
        f"{k}: {tuple(ours[k].shape)} vs {tuple(ref[k].shape)}"
        for k in sorted(set(ours) & set(ref))
        if ours[k].shape != ref[k].shape
    ]
    return problems


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses shared storage, and the file must not alias the live model
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def _inference_temperature(student: StudentWithProjector) -> float | None:
    """The temperature a DyMN backbone runs at now (the annealed one after training), None for others."""
    return float(student.model.temperature) if isinstance(student.model, DyMN) else None


def _weights_state(student: StudentWithProjector) -> dict[str, torch.Tensor]:
    """CPU state dict without DyMN's temperature entry: the export configs carry the temperature instead."""
    return {k: v for k, v in _cpu_state(student).items() if not _optional_key(k)}


# ----------------------------------------------------------------------------------- ssondo checkpoints
def write_ssondo_checkpoint(
    path: str | Path, student: StudentWithProjector, training_config: Mapping[str, Any]
) -> Path:
    """Write ``student`` as an S-SONDO checkpoint that ``ssondo.get_ssondo(path)`` loads strictly.

    Args:
        path: output file (written atomically).
        student: backbone ``model`` + ``classification_head`` projector.
        training_config: as built by :func:`ssondo_training_config` (or an upstream one). For a DyMN, the
            written ``student_model.pretrain_final_temp`` (the temperature ssondo runs at) is the student's
            current temperature, i.e. the final one of an annealed training, whatever the config says.

    Returns:
        ``path``.

    Raises:
        ValueError: ``training_config`` would rebuild a different architecture than ``student`` (so the
            file would fail ssondo's strict load).
    """
    from ssondo_train.students import student_from_ssondo_config

    training_config = copy.deepcopy(dict(training_config))
    temperature = _inference_temperature(student)
    if temperature is not None:
        student_model = dict(training_config.get("student_model") or {})
        given = student_model.get("pretrain_final_temp")
        if given is None or float(given) != temperature:
            log.info(
                "DyMN: writing pretrain_final_temp=%s (the student's temperature; config: %s)",
                temperature,
                given,
            )
        student_model["pretrain_final_temp"] = temperature
        training_config["student_model"] = student_model
    ref = student_from_ssondo_config(training_config)
    state = _weights_state(student)
    problems = _shape_mismatch(state, ref.state_dict())
    # ssondo sizes the projector's hidden layer from the backbone's last_channel before the config
    last_channel = getattr(student.model, "last_channel", None)
    hidden = _projector_dims(student)["hidden_dim"]
    if last_channel is not None and int(last_channel) != hidden:
        problems.append(
            f"projector hidden {hidden} != backbone last_channel {last_channel} (ssondo uses the latter)"
        )
    if problems:
        raise ValueError("training_config does not describe this student: " + "; ".join(problems[:10]))
    ckpt = {
        "training_config": training_config,
        "state_dict": {SSONDO_PREFIX + k: v for k, v in state.items()},
        "ssondo_train_version": __version__,
        "format": "ssondo-checkpoint",
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    log.info("wrote S-SONDO checkpoint %s (%d tensors)", path, len(state))
    return path


def load_ssondo_checkpoint(path: str | Path) -> tuple[StudentWithProjector, dict[str, Any]]:
    """Read an S-SONDO ``.ckpt`` safely (weights only) into our student.

    Returns:
        (student in eval mode, training_config).

    Raises:
        UnsafeCheckpointError: the pickle would execute code.
        ValueError: not an S-SONDO checkpoint, or the weights do not match its training_config.
    """
    from ssondo_train.students import student_from_ssondo_config

    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, Mapping) or "training_config" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not an S-SONDO checkpoint (needs 'training_config' and 'state_dict')")
    training_config = dict(ckpt["training_config"])
    state = {k[len(SSONDO_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(SSONDO_PREFIX)}
    if not state:
        raise ValueError(f"{path}: state_dict has no '{SSONDO_PREFIX}*' keys")
    student = student_from_ssondo_config(training_config)
    problems = _shape_mismatch(state, student.state_dict())
    if problems:
        raise ValueError(f"{path}: weights do not match the training_config: " + "; ".join(problems[:10]))
    student.load_state_dict(state, strict=True)
    return student.eval(), training_config


# ------------------------------------------------------------------------------------------ safetensors
def save_safetensors(
    dir: str | Path, student: StudentWithProjector, config: Mapping[str, Any]
) -> dict[str, Path]:
    """Write ``model.safetensors`` + ``config.json`` into ``dir``.

    Args:
        dir: output folder (created).
        student: the model to save; if the projector should output teacher-space vectors, fold the target
            normalisation into it first (:func:`fold_target_norm`) and set ``target_norm_folded``.
        config: must hold ``backbone: {"name", "kwargs"}``; optional ``preprocess`` (a
            :class:`PreprocessSpec` or its dict), ``teacher`` metadata, ``target_norm_folded``, any other
            JSON-able keys. ``projector``, ``format*``, version and ``emb_size`` are filled in here; a DyMN's
            ``kwargs.temperature`` is set to the student's current (e.g. annealed final) temperature.

    Returns:
        ``{"safetensors": path, "config": path}``.

    Raises:
        ValueError: the backbone spec rebuilds a model whose tensors differ from ``student``'s.
    """
    from safetensors.torch import save_file

    dir = Path(dir)
    cfg = {k: _jsonable(v) for k, v in config.items() if k != "preprocess"}
    backbone = dict(cfg.get("backbone") or {})
    if "name" not in backbone:
        raise ValueError("config['backbone'] must give the student 'name' (and 'kwargs')")
    backbone["kwargs"] = _jsonable(backbone.get("kwargs") or {})
    temperature = _inference_temperature(student)
    if temperature is not None and backbone["name"] == "dymn":
        backbone["kwargs"]["temperature"] = temperature
    backbone["emb_size"] = int(student.emb_size)
    pre = config.get("preprocess")
    pre = pre if isinstance(pre, PreprocessSpec) else PreprocessSpec.from_dict(pre or {})
    cfg.update(
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "ssondo_train_version": __version__,
            "backbone": backbone,
            "projector": _projector_dims(student),
            "preprocess": pre.to_dict(),
            "target_norm_folded": bool(cfg.get("target_norm_folded", False)),
        }
    )
    state = _weights_state(student)
    problems = _shape_mismatch(state, _build_from_config(cfg).state_dict())
    if problems:
        raise ValueError("config['backbone'] does not rebuild this student: " + "; ".join(problems[:10]))
    dir.mkdir(parents=True, exist_ok=True)
    weights, config_path = dir / "model.safetensors", dir / "config.json"
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "ssondo_train_format": FORMAT_NAME})
    atomic_write_json(config_path, cfg)
    return {"safetensors": weights, "config": config_path}


def _build_from_config(cfg: Mapping[str, Any]) -> StudentWithProjector:
    if cfg.get("format") != FORMAT_NAME:
        raise ValueError(f"config format {cfg.get('format')!r} is not {FORMAT_NAME!r}")
    if int(cfg.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(
            f"config format_version {cfg['format_version']} is newer than supported {FORMAT_VERSION}"
        )
    bb, pj = cfg["backbone"], cfg["projector"]
    kwargs = dict(bb.get("kwargs") or {})
    for key in ("strides", "num_blocks"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    backbone = build_student(bb["name"], **kwargs)
    head = Projector(
        int(pj["in_dim"]), int(pj["out_dim"]), int(pj["hidden_dim"]), float(pj.get("dropout", 0.2))
    )
    return StudentWithProjector(backbone, head)


def load_export_config(dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a safetensors export folder."""
    path = Path(dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{dir}: no config.json (not a safetensors export folder)")
    return json.loads(path.read_text(encoding="utf-8"))


def load_safetensors(dir: str | Path) -> StudentWithProjector:
    """Rebuild the student saved by :func:`save_safetensors` (no pickle involved); eval mode."""
    from safetensors.torch import load_file

    dir = Path(dir)
    cfg = load_export_config(dir)
    student = _build_from_config(cfg)
    state = load_file(str(dir / "model.safetensors"))
    problems = _shape_mismatch(state, student.state_dict())
    if problems:
        raise ValueError(f"{dir}: model.safetensors does not match config.json: " + "; ".join(problems[:10]))
    student.load_state_dict(state, strict=True)
    return student.eval()


# ------------------------------------------------------------------------------------------------ heads
def head_sidecar(path: str | Path) -> Path:
    """JSON metadata file next to a head file (``esc50.pth`` -> ``esc50.json``)."""
    return Path(path).with_suffix(".json")


def save_head(path: str | Path, linear: nn.Linear, meta: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write a linear probe in S-SONDO's head format plus a JSON sidecar.

    Args:
        path: ``.pth`` file; keys ``probe.linear_probe.weight`` (C, E) and ``probe.linear_probe.bias`` (C,).
        linear: the probe on pooled backbone embeddings (E -> C). Any input normalisation used when it was
            trained must already be folded into it (ssondo applies none).
        meta: JSON-able metadata (task, class names, metrics...).

    Returns:
        ``{"head": path, "meta": sidecar path}``.
    """
    if not isinstance(linear, nn.Linear) or linear.bias is None:
        raise TypeError("save_head needs an nn.Linear with a bias")
    path = Path(path)
    state = {
        HEAD_WEIGHT_KEY: linear.weight.detach().cpu().contiguous().clone(),
        HEAD_BIAS_KEY: linear.bias.detach().cpu().contiguous().clone(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    sidecar = head_sidecar(path)
    atomic_write_json(
        sidecar,
        {
            **_jsonable(dict(meta or {})),
            "format": HEAD_FORMAT_NAME,
            "format_version": HEAD_FORMAT_VERSION,
            "in_dim": linear.in_features,
            "n_classes": linear.out_features,
        },
    )
    return {"head": path, "meta": sidecar}


def load_head(path: str | Path) -> tuple[nn.Linear, dict[str, Any]]:
    """Read a head written by :func:`save_head` or published with ssondo (weights only).

    Returns:
        (nn.Linear(E, C), metadata from the sidecar JSON or {} when there is none).
    """
    state = safe_torch_load(path)
    if not isinstance(state, Mapping) or HEAD_WEIGHT_KEY not in state or HEAD_BIAS_KEY not in state:
        raise ValueError(f"{path}: not a head file (needs '{HEAD_WEIGHT_KEY}' and '{HEAD_BIAS_KEY}')")
    weight, bias = state[HEAD_WEIGHT_KEY], state[HEAD_BIAS_KEY]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise ValueError(
            f"{path}: head weight {tuple(weight.shape)} / bias {tuple(bias.shape)} are inconsistent"
        )
    linear = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(weight)
        linear.bias.copy_(bias)
    sidecar = head_sidecar(path)
    meta = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else {}
    return linear, meta


# ---------------------------------------------------------------------------------- target normalisation
def fold_target_norm(
    projector: nn.Module, mean: torch.Tensor | float, std: torch.Tensor | float
) -> nn.Module:
    """A copy of ``projector`` whose last Linear outputs de-normalised (teacher-space) vectors.

    Training may regress normalised targets ``(t - mean) / std``; folding ``W' = diag(std) W``,
    ``b' = std * b + mean`` makes ``projector(x)`` equal ``std * old(x) + mean`` directly. This is exact
    for S-SONDO's projector because the segment mean comes after the last Linear.

    Args:
        projector: module with at least one nn.Linear (the last one is folded).
        mean, std: scalars or (out_dim,) tensors.

    Returns:
        A new module (the input is not modified).
    """
    folded = copy.deepcopy(projector)
    linears = [m for m in folded.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("projector has no nn.Linear to fold into")
    last = linears[-1]
    out = last.out_features
    dev, dt = last.weight.device, last.weight.dtype
    mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
    std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
    mean_t = mean_t.expand(out) if mean_t.numel() == 1 else mean_t
    std_t = std_t.expand(out) if std_t.numel() == 1 else std_t
    if mean_t.shape != (out,) or std_t.shape != (out,):
        raise ValueError(
            f"mean/std must be scalars or ({out},), got {tuple(mean_t.shape)}, {tuple(std_t.shape)}"
        )
    with torch.no_grad():
        w = last.weight.double() * std_t[:, None]
        b = (
            last.bias.double() if last.bias is not None else torch.zeros(out, dtype=torch.float64)
        ) * std_t + mean_t
        last.weight.copy_(w.to(dev, dt))
        if last.bias is None:
            last.bias = nn.Parameter(b.to(dev, dt))
        else:
            last.bias.copy_(b.to(dev, dt))
    return folded


def export_onnx(*args: Any, **kwargs: Any) -> Path:
    """See :func:`ssondo_train.export.onnx_graph.export_onnx` (imported lazily: onnx is optional)."""
    from ssondo_train.export.onnx_graph import export_onnx as _export_onnx

    return _export_onnx(*args, **kwargs)
