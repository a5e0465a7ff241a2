"""stage=export: turn a distill run into files people load in one line.

Writes into ``<run>/export/<variant>/`` (the distill variant the command line addresses): ``ssondo.ckpt``
(the published ``ssondo`` package's checkpoint contract, loads with ``ssondo.get_ssondo``),
``model.safetensors`` + ``config.json`` (our pickle-free format), ``model.onnx`` (32-kHz waveform in,
embeddings out) and the variant's probe heads as ``heads/<task>.pth``. The target normalisation used in
training is folded into the projector, so every artefact outputs teacher-space vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ssondo_train.stages.base import Stage, StageContext, StageError

log = logging.getLogger(__name__)


def _probe_heads(ctx: StageContext, model_name: str) -> dict[str, Any]:
    """Heads fitted by stage=probe for ``model_name`` of this variant (backbone embeddings), as nn.Linear +
    metadata: from the variant's own probe, else from the newest comparison that probed it."""
    assert ctx.variant is not None
    heads_dir = ctx.layout.probe_heads(ctx.variant, model_name)
    heads: dict[str, Any] = {}
    if heads_dir is None:
        return heads
    log.info("export: probe heads from %s", heads_dir)
    from ssondo_train.export.formats import load_head

    for path in sorted(heads_dir.glob("*.pth")):
        linear, meta = load_head(path)
        heads[path.stem] = (linear, meta)
    return heads


def run(ctx: StageContext) -> dict[str, Any]:
    from ssondo_train.export import export_student
    from ssondo_train.export.formats import PreprocessSpec, ssondo_training_config
    from ssondo_train.inference import get_ssondo
    from ssondo_train.runs.layout import LayoutError
    from ssondo_train.training.checkpoint import (
        DivergedCheckpointError,
        checkpoint_target_norm,
        load_distill_checkpoint,
    )

    cfg = ctx.cfg.export
    assert ctx.variant is not None
    distill_done = ctx.require_done("distill", ctx.variant)
    which = (
        "last"
        if cfg.checkpoint == "best" and not distill_done.get("checkpoints", {}).get("best")
        else cfg.checkpoint
    )
    try:
        ckpt = ctx.layout.checkpoint(ctx.variant, which)
    except LayoutError as err:
        raise StageError(str(err)) from None
    try:
        loaded = load_distill_checkpoint(ckpt)
    except DivergedCheckpointError as err:
        # A diverged (NaN) checkpoint is never exported: one line, naming what to do.
        hint = "; export.checkpoint=<file> exports another one" if err.others else ""
        raise StageError(f"export: {err}{hint}") from None
    except (OSError, ValueError) as err:
        raise StageError(f"export: {err}") from None
    run_cfg = loaded.config
    target_norm = checkpoint_target_norm(loaded)
    store = ctx.store()
    seg_s = float(cfg.segment_seconds or store.window_seconds)
    preprocess = PreprocessSpec(window_s=seg_s, hop_s=seg_s)
    student_cfg = run_cfg["student"]
    training_config = ssondo_training_config(
        student_cfg["name"],
        dict(student_cfg.get("kwargs", {})),
        teacher_dim=int(loaded.target_mean.numel()),
        hidden_dim=int(student_cfg.get("projector_hidden", 1280)),
        preprocess=preprocess,
        conf_id=f"{ctx.layout.name}/{ctx.variant}:{student_cfg['name']}<-{store.teacher.get('name')}",
    )
    normed = target_norm != "none"
    heads = _probe_heads(ctx, cfg.heads_from)
    files = export_student(
        ctx.out_dir,
        loaded.student,
        training_config,
        teacher_meta=store.done["teacher"],
        target_mean=loaded.target_mean if normed else None,
        target_std=loaded.target_std if normed else None,
        heads=heads,
        onnx=None if cfg.onnx else False,
    )
    # Load what was written, as a user would, and report the shape.
    model = get_ssondo(str(ctx.out_dir), device="cpu")
    import torch

    emb = model.get_embeddings(torch.zeros(1, int(seg_s * 32000)) + 1e-3)
    rel = {k: str(Path(v).relative_to(ctx.run_dir)) for k, v in files.items()}
    example = (
        f"from ssondo_train import get_ssondo\n"
        f'model = get_ssondo("{ctx.out_dir}"); print(model.get_embeddings(audio_32k).shape)'
    )
    return {
        "summary": (
            f"export: {student_cfg['name']} from {ckpt.name} (step {_step(ckpt)}) -> {ctx.out_dir}; "
            f"embedding {tuple(emb.shape)}, {len(heads)} probe heads\n{example}"
        ),
        "checkpoint": str(ckpt.relative_to(ctx.run_dir)) if ckpt.is_relative_to(ctx.run_dir) else str(ckpt),
        "step": _step(ckpt),
        "weights": loaded.weights,
        "files": rel,
        "embedding_dim": int(emb.shape[-1]),
        "segment_seconds": seg_s,
        "target_norm_folded": normed,
        "heads": sorted(heads),
    }


def _step(ckpt: Path) -> int:
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))


def inputs(ctx: StageContext) -> dict[str, str]:
    """The variant's distill result, the store (window) and the probe that fitted its heads, if any."""
    from ssondo_train.runs.layout import DONE_FILE, file_digest

    assert ctx.variant is not None
    ctx.require_done("distill", ctx.variant)
    found = {
        "store": ctx.store().digest,
        f"distill/{ctx.variant}": file_digest(ctx.layout.done_path("distill", ctx.variant)),
    }
    heads = ctx.layout.probe_heads(ctx.variant, str(ctx.cfg.export.heads_from))
    if heads is not None:
        probe_dir = heads.parent.parent
        found[f"probe/{probe_dir.name}"] = file_digest(probe_dir / DONE_FILE)
    return found


STAGE = Stage(
    name="export",
    run=run,
    description="write ssondo.ckpt, safetensors + config.json, ONNX and probe heads of a distill variant",
    inputs=inputs,
    redo_on_new_inputs=True,
)
