"""Student networks: front-end, backbones (MobileNetV3, DyMN, ERes2Net), projector and builders.

All backbones map log-mel (B, S, 128, T) to per-segment embeddings (B, S, emb_size) and expose
``emb_size``; MobileNetV3 and DyMN also expose ``last_channel`` (the projector hidden size upstream uses).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .dymn import DyMN, dymn_temperature
from .eres2net import ERes2Net
from .frontend import StudentFrontEnd, segment_windows
from .mobilenetv3 import MobileNetV3
from .projector import Projector, StudentWithProjector

log = logging.getLogger(__name__)

STUDENTS: dict[str, type[nn.Module]] = {
    "mobilenetv3": MobileNetV3,
    "dymn": DyMN,
    "eres2net": ERes2Net,
}

DEFAULT_PROJECTOR_HIDDEN = 1280
DEFAULT_TEACHER_DIM = 3840

__all__ = [
    "STUDENTS",
    "DyMN",
    "ERes2Net",
    "MobileNetV3",
    "Projector",
    "StudentFrontEnd",
    "StudentWithProjector",
    "build_student",
    "build_student_from_section",
    "build_student_with_projector",
    "dymn_temperature",
    "load_imagenet_init",
    "segment_windows",
    "student_from_ssondo_config",
]


def build_student(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the backbone ``name`` (a key of :data:`STUDENTS`) with its constructor kwargs."""
    try:
        cls = STUDENTS[name]
    except KeyError:
        raise ValueError(f"unknown student {name!r}; available: {', '.join(sorted(STUDENTS))}") from None
    return cls(**kwargs)


def build_student_with_projector(
    name: str,
    teacher_dim: int = DEFAULT_TEACHER_DIM,
    hidden_dim: int | None = None,
    dropout: float = 0.2,
    **kwargs: Any,
) -> StudentWithProjector:
    """Backbone ``name`` + :class:`Projector` to ``teacher_dim``.

    ``hidden_dim`` defaults to the backbone's ``last_channel`` (1280 for mn10/dymn10), else 1280.
    """
    backbone = build_student(name, **kwargs)
    if hidden_dim is None:
        hidden_dim = int(getattr(backbone, "last_channel", DEFAULT_PROJECTOR_HIDDEN))
    head = Projector(int(backbone.emb_size), teacher_dim, hidden_dim, dropout)
    return StudentWithProjector(backbone, head)


def build_student_from_section(
    section: Any, teacher_dim: int, pretrained: bool = True
) -> StudentWithProjector:
    """Backbone + projector from a ``student`` config section (``configs/student/*.yaml``: ``name``,
    ``kwargs``, ``projector_hidden``, ``projector_dropout``, ``pretrained``), given as a mapping or an object
    with those attributes (``StudentConfig``).

    ``pretrained=False`` skips the ImageNet initialisation (a checkpoint's weights replace it anyway).
    """

    def get(key: str, default: Any = None) -> Any:
        if isinstance(section, Mapping):
            return section.get(key, default)
        return getattr(section, key, default)

    student = build_student_with_projector(
        str(get("name")),
        teacher_dim=teacher_dim,
        hidden_dim=get("projector_hidden", DEFAULT_PROJECTOR_HIDDEN),
        dropout=float(get("projector_dropout", 0.2)),
        **dict(get("kwargs") or {}),
    )
    init = get("pretrained")
    if pretrained and init:
        load_imagenet_init(student, init)
        log.info("initialised the %s backbone from %s", get("name"), init)
    return student


def _unwrap_state_dict(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and len(obj) == 1 and next(iter(obj)) in ("state_dict", "model"):
        obj = next(iter(obj.values()))
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a flat state dict of tensors")
    return obj


def load_imagenet_init(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an EfficientAT ImageNet file (``mn10_im.pt`` / ``dymn10_im.pt``) into a backbone, strictly.

    The file is the EfficientAT model's state dict: the backbone keys plus ``classifier.*``, which are
    dropped. It is read with ``torch.load(weights_only=True)``. ``model`` may be the backbone or a
    :class:`StudentWithProjector` (then its ``model`` is loaded; the projector keeps its init).

    Raises:
        ValueError: listing missing / unexpected keys and shape mismatches when the layouts differ.
    """
    path = Path(path)
    backbone = model.model if isinstance(model, StudentWithProjector) else model
    raw = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    state = {k: v for k, v in raw.items() if not k.startswith("classifier")}
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or mismatched:
        parts = [f"{path}: ImageNet weights do not match {type(backbone).__name__}"]
        for label, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape mismatch", mismatched),
        ):
            if items:
                parts.append(f"{label} ({len(items)}): {', '.join(items)}")
        raise ValueError("; ".join(parts))
    backbone.load_state_dict(state, strict=True)
    log.info(
        "loaded ImageNet init from %s (%d tensors, %d classifier keys dropped)",
        path,
        len(state),
        len(raw) - len(state),
    )
    return model


def _constructor_kwargs(cls: type[nn.Module], cfg: Mapping[str, Any]) -> dict[str, Any]:
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in cfg.items() if k in accepted}
    ignored = sorted(set(cfg) - set(kwargs))
    if ignored:
        log.debug("%s: ignoring student_model keys %s", cls.__name__, ignored)
    for key in ("strides", "num_blocks"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return kwargs


def student_from_ssondo_config(training_config: Mapping[str, Any]) -> StudentWithProjector:
    """Build backbone + projector from an upstream S-SONDO checkpoint's ``training_config``.

    ``student_model.model_name`` dispatches as upstream: containing "dy" -> DyMN (temperature =
    ``pretrain_final_temp``, falling back to 30.0 with a warning), else containing "mn" -> MobileNetV3,
    else ERes2Net. The projector maps to ``classification_head.n_classes`` with hidden size
    ``classification_head.hidden_features_size`` or, when absent, the backbone's ``last_channel`` (1280).
    Weights are not loaded.
    """
    student_cfg = dict(training_config["student_model"])
    head_cfg = dict(training_config.get("classification_head", {}))
    name = str(student_cfg.get("model_name", ""))
    if head_cfg.get("head_type", "mlp") != "mlp" or head_cfg.get("pooling", "mean") != "mean":
        raise ValueError(f"only the mlp head with mean pooling is supported, got {head_cfg}")
    if "dy" in name:
        kwargs = _constructor_kwargs(DyMN, student_cfg)
        if "pretrain_final_temp" in student_cfg:
            kwargs["temperature"] = float(student_cfg["pretrain_final_temp"])
        else:
            # Upstream inference falls back to 1.0, which moves dymn10 outputs by ~1e11; training used 30.0.
            log.warning("training_config has no pretrain_final_temp; using DyMN temperature 30.0")
        backbone: nn.Module = DyMN(**kwargs)
    elif "mn" in name:
        backbone = MobileNetV3(**_constructor_kwargs(MobileNetV3, student_cfg))
    else:
        backbone = ERes2Net(**_constructor_kwargs(ERes2Net, student_cfg))
    hidden = head_cfg.get("hidden_features_size")
    if hidden is None:
        hidden = getattr(backbone, "last_channel", DEFAULT_PROJECTOR_HIDDEN)
    head = Projector(int(backbone.emb_size), int(head_cfg.get("n_classes", DEFAULT_TEACHER_DIM)), int(hidden))
    return StudentWithProjector(backbone, head)
