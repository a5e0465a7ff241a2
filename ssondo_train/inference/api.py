"""``get_ssondo``: load a distilled student (local export, S-SONDO checkpoint or registry name)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssondo_train.export.formats import (
    PreprocessSpec,
    load_export_config,
    load_head,
    load_safetensors,
    load_ssondo_checkpoint,
)
from ssondo_train.inference.model import SsondoModel, Tail, build_head
from ssondo_train.inference.registry import HEADS, MODELS, hub_download
from ssondo_train.students import StudentWithProjector

log = logging.getLogger(__name__)

_FRESH_HEADS = ("linear", "mlp")


def load_student(checkpoint: str | Path) -> tuple[StudentWithProjector, PreprocessSpec, dict[str, Any]]:
    """Resolve ``checkpoint`` and load the student.

    Accepted: a safetensors export folder (``config.json`` + ``model.safetensors``) or its
    ``model.safetensors`` file; a folder holding ``ssondo.ckpt``; an S-SONDO ``.ckpt`` file; a registry
    name (:func:`ssondo_train.inference.list_models`), fetched from the Hugging Face Hub.

    Returns:
        (student in eval mode, preprocess spec, metadata).

    Raises:
        ValueError: unknown name / path. HubDownloadError: registry file unavailable.
        UnsafeCheckpointError: a .ckpt whose pickle would execute code.
    """
    path = Path(checkpoint)
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if path.is_dir():
        if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
            cfg = load_export_config(path)
            meta = {k: v for k, v in cfg.items() if k not in ("backbone", "projector", "preprocess")}
            return load_safetensors(path), PreprocessSpec.from_dict(cfg["preprocess"]), meta
        if (path / "ssondo.ckpt").is_file():
            path = path / "ssondo.ckpt"
        else:
            raise ValueError(
                f"{checkpoint}: folder holds neither config.json + model.safetensors nor ssondo.ckpt"
            )
    if path.is_file():
        student, training_config = load_ssondo_checkpoint(path)
        return (
            student,
            PreprocessSpec.from_ssondo_config(training_config),
            {"training_config": training_config},
        )
    name = str(checkpoint)
    if name in MODELS:
        local = hub_download(MODELS[name].filename)
        student, training_config = load_ssondo_checkpoint(local)
        spec = PreprocessSpec.from_ssondo_config(training_config)
        return student, spec, {"training_config": training_config, "registry_name": name}
    raise ValueError(
        f"{checkpoint!r} is neither an existing file/folder nor a registry name; available models: "
        f"{', '.join(MODELS)}"
    )


def _load_pretrained_head(head: str) -> tuple[nn.Linear, dict[str, Any]]:
    path = Path(head)
    if head in HEADS:
        # Only the .pth is fetched (ssondo's published heads have no sidecar); a sidecar JSON already in
        # the cache next to it is read by load_head.
        linear, meta = load_head(hub_download(HEADS[head].filename))
        expected = HEADS[head].n_classes
        if expected is not None and linear.out_features != expected:
            raise ValueError(
                f"head {head!r}: file has {linear.out_features} classes, registry says {expected}"
            )
        return linear, {"name": head, **meta}
    return load_head(path)


def get_ssondo(
    checkpoint: str | Path = "matpac-mobilenetv3",
    head: str | Path | None = None,
    n_classes: int | None = None,
    hidden_sizes: list[int] | None = None,
    device: str | torch.device = "cpu",
    sample_rate: int = 32_000,
    tail: Tail = "pad",
) -> SsondoModel:
    """Load a distilled student ready for inference (eval mode).

    Args:
        checkpoint: registry name (default ``matpac-mobilenetv3``), a safetensors export folder, or an
            S-SONDO ``.ckpt`` (loaded with ``weights_only=True``).
        head: None (embeddings), a pretrained head name (:func:`list_heads`, from ``heads/<name>.pth``),
            a local head ``.pth`` file, ``"linear"`` or ``"mlp"`` (fresh, needs ``n_classes``).
        n_classes: classes of a fresh head; checked against a pretrained head when given.
        hidden_sizes: hidden widths of a fresh ``"mlp"`` head (default [512]).
        device: where the model lives.
        sample_rate: rate of the audio you will pass; other rates than the student's are resampled.
        tail: "pad" (default: short audio and the trailing remainder become zero-padded segments) or
            "drop" (ssondo 0.3.1 behaviour).

    Returns:
        :class:`SsondoModel`: ``model(audio)`` -> (B, S, E) without head or logits (B, C) with one;
        ``get_embeddings`` -> (B, E); ``project`` -> (B, Dt). In eval mode (as returned) these record no
        autograd graph (``.numpy()`` works); ``model.train()`` or ``grad=True`` gives gradients.

    Raises:
        ValueError: bad head / n_classes combination, unknown checkpoint. HubDownloadError: offline or no
        network and the file is not cached. UnsafeCheckpointError: a pickle that would execute code.
    """
    if head is not None and str(head) in _FRESH_HEADS and n_classes is None:
        raise ValueError(f"head={head!r} needs n_classes")
    student, spec, meta = load_student(checkpoint)
    head_module: nn.Module | None = None
    if head is not None:
        emb_dim = int(student.emb_size)
        if str(head) in _FRESH_HEADS:
            head_module = build_head(str(head), emb_dim, int(n_classes), hidden_sizes)  # type: ignore[arg-type]
        elif str(head) in HEADS or Path(head).is_file():
            head_module, head_meta = _load_pretrained_head(str(head))
            if head_module.in_features != emb_dim:
                raise ValueError(
                    f"head {head!r} expects {head_module.in_features}-d embeddings, "
                    f"the backbone gives {emb_dim}"
                )
            if n_classes is not None and int(n_classes) != head_module.out_features:
                raise ValueError(
                    f"n_classes={n_classes} but head {head!r} has {head_module.out_features} classes"
                )
            meta["head"] = head_meta
        else:
            raise ValueError(
                f"head must be None, 'linear', 'mlp', a head file or one of {list(HEADS)}; got {head!r}"
            )
    model = SsondoModel(student, spec, head=head_module, sample_rate=sample_rate, tail=tail, meta=meta)
    return model.to(device).eval()
