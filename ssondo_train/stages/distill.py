"""stage=distill: train a student + projector to align with the stored teacher embeddings.

Lightning runs the loop (DDP, mixed precision, gradient clipping); this stage resolves the data of the run
(store, splits, cluster ids, and the corpus labels when ``loss.label_weight`` > 0 or
``sampler=class_balanced``), builds the model, and owns the variant's folder ``<run>/distill/<variant>/``:
checkpoints (``last.ckpt`` + best-k by validation loss, each with the resolved config), CSV / wandb logs, and
auto-resume from ``last.ckpt`` when the same command runs again (also after a SLURM requeue). Every student
and ablation of a run reads the same store; none touches another's folder.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from ssondo_train.runs.layout import CHECKPOINT_DIR, LAST_CKPT, LOGS_DIR, WANDB_ID_FILE
from ssondo_train.stages.base import Stage, StageContext, StageError

log = logging.getLogger(__name__)


def _load_window_labels(manifest, keys: list[tuple[str, int]], train_idx):
    """Per-window labels from the corpus manifest: (class_names, (N, C) sparse matrix).

    Raises:
        StageError: no training window's clip carries a label.
    """
    from ssondo_train.training.data import window_label_matrix

    stored = {cid for cid, _ in keys}
    clip_labels = {c.clip_id: c.labels for c in manifest if c.clip_id in stored and c.labels}
    class_names = sorted({label for labels in clip_labels.values() for label in labels})
    train_clips = {keys[i][0] for i in train_idx}
    labelled_train = sum(1 for cid in train_clips if cid in clip_labels)
    if labelled_train == 0:
        raise StageError(
            "loss.label_weight > 0 or sampler=class_balanced needs labelled clips, but no training clip of "
            "the store has a label in the corpus manifest (its 'labels' column is empty); fill the labels "
            "column (';'-separated class names) or set loss.label_weight=0 with sampler=bds|random"
        )
    if labelled_train < len(train_clips):
        log.warning(
            "%d of %d training clips have no label: the label loss treats them as all-negative "
            "(sampler=class_balanced never draws them)",
            len(train_clips) - labelled_train,
            len(train_clips),
        )
    matrix = window_label_matrix(keys, clip_labels, class_names)
    log.info(
        "labels: %d classes over %d labelled training clips (%d windows with labels)",
        len(class_names),
        labelled_train,
        int((matrix.getnnz(axis=1) > 0).sum()),
    )
    return class_names, matrix


class _EpochHistory:
    """Collects validation figures per epoch for done.json (kept in checkpoints, so a resumed run's history
    starts at its first epoch)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def callback(self):
        import lightning as L

        history = self

        class _Cb(L.Callback):
            def on_validation_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking:
                    return
                m = trainer.callback_metrics
                row = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step)}
                for k in (
                    "val/cosine",
                    "val/kd_loss",
                    "val/cosine_of_mean_target",
                    "val/label_loss",
                    "val/total_loss",
                    "val/mAP",
                    "val/accuracy",
                ):
                    if k in m:
                        row[k] = round(float(m[k]), 5)
                history.rows = [r for r in history.rows if r["epoch"] != row["epoch"]] + [row]

            def on_train_epoch_end(self, trainer, pl_module) -> None:
                # after this epoch's validation: its row gets the epoch's mean training losses
                for row in history.rows:
                    if row["epoch"] == int(trainer.current_epoch):
                        keep = ("train/kd_loss_epoch", "train/label_loss_epoch")
                        row.update({k: round(v, 5) for k, v in pl_module.epoch_means().items() if k in keep})

            def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
                # metrics.csv on disk up to this checkpoint: a resume keeps those rows and replays the rest
                for logger in trainer.loggers:
                    logger.save()

            def state_dict(self) -> dict[str, Any]:
                return {"rows": [dict(r) for r in history.rows]}

            def load_state_dict(self, state_dict: dict[str, Any]) -> None:
                history.rows = [dict(r) for r in state_dict.get("rows", [])]

        return _Cb()


def run(ctx: StageContext) -> dict[str, Any]:
    import lightning as L
    import numpy as np
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from omegaconf import OmegaConf

    from ssondo_train.config.groups import (
        LoggerConfig,
        LossConfig,
        SamplerConfig,
        StudentConfig,
        TrainerConfig,
    )
    from ssondo_train.config.schema import to_schema
    from ssondo_train.losses import build_loss
    from ssondo_train.runs.layout import LayoutError
    from ssondo_train.runs.variants import needs_clusters
    from ssondo_train.sampling.augment import filter_augment as filter_augment_fn
    from ssondo_train.sampling.augment import spec_augment as spec_augment_fn
    from ssondo_train.students import build_student_from_section
    from ssondo_train.students.frontend import StudentFrontEnd
    from ssondo_train.training.csvlog import ContinuedCSVLogger
    from ssondo_train.training.data import STUDENT_SAMPLE_RATE, DistillData, DistillDataModule
    from ssondo_train.training.module import (
        DistillModule,
        LabelTask,
        NonFiniteError,
        NonFinitePolicy,
        OptimConfig,
        TargetNorm,
    )
    from ssondo_train.training.schedule import WarmupRampdown
    from ssondo_train.utils.dist import is_secondary_process

    cfg = ctx.cfg.distill
    trainer_cfg = to_schema("trainer", ctx.cfg.trainer, TrainerConfig)
    logger_cfg = to_schema("logger", ctx.cfg.logger, LoggerConfig)
    loss_cfg = to_schema("loss", ctx.cfg.loss, LossConfig)
    sampler_cfg = to_schema("sampler", ctx.cfg.sampler, SamplerConfig)
    student_cfg = to_schema("student", ctx.cfg.student, StudentConfig)
    label_weight = float(loss_cfg.label_weight)
    needs_labels = label_weight > 0 or sampler_cfg.name == "class_balanced"
    seed = int(ctx.cfg.seed)
    L.seed_everything(seed, workers=True, verbose=False)
    torch.set_float32_matmul_precision(trainer_cfg.float32_matmul_precision)

    # ---- data of the run ---------------------------------------------------------------------------------
    info = ctx.store()
    store = info.open()
    keys = store.keys()
    splits = ctx.layout.splits()
    split = np.array([splits.get(cid, "train") for cid, _ in keys])
    train_idx, val_idx = np.flatnonzero(split == "train"), np.flatnonzero(split != "train")
    if len(train_idx) == 0:
        raise StageError("the store holds no training windows")
    if len(val_idx) == 0:
        raise StageError(
            "the store holds no held-out windows; set precompute.valid_fraction > 0 and rerun "
            "precompute with force=true"
        )
    cluster_variant = None
    if needs_clusters(ctx.cfg):
        cluster_variant, _ = ctx.cluster_input()
        try:
            clusters, k = ctx.layout.cluster_ids(cluster_variant, keys)
        except LayoutError as err:
            raise StageError(f"{err}: rerun {ctx.command('cluster', 'force=true')}") from None
    else:
        clusters, k = np.zeros(len(keys), dtype=np.int64), 0
    window_samples = round(info.window_seconds * STUDENT_SAMPLE_RATE)
    clip_paths: dict[str, str] = {}
    class_names: list[str] = []
    labels = None
    if store.audio_codec is None or needs_labels:
        from ssondo_train.data.manifest import AudioRootError, check_audio_root, read_manifest

        # The manifest precompute read: it holds the audio paths and the labels of the stored clips.
        manifest_path = info.manifest or ctx.layout.corpus_manifest()
        manifest = read_manifest(manifest_path)
        if store.audio_codec is None:
            try:  # the store holds no audio: training reads the corpus files, which must still be there
                check_audio_root(manifest, manifest_path)
            except AudioRootError as err:
                raise StageError(str(err)) from None
            clip_paths = {c.clip_id: str(manifest.abs_path(c)) for c in manifest}
        if needs_labels:
            class_names, labels = _load_window_labels(manifest, keys, train_idx)
    data = DistillData(
        info.root, train_idx, val_idx, clusters, window_samples, clip_paths, labels, class_names
    )

    _refuse_spawning_in_a_local_sweep(trainer_cfg)
    dm = DistillDataModule(
        data,
        sampler_cfg.name,
        sampler_cfg.num_samples,
        int(cfg.batch_size),
        trainer_cfg.num_workers,
        seed,
        pin_memory=trainer_cfg.accelerator != "cpu",
    )

    # ---- model -------------------------------------------------------------------------------------------
    stats = store.compute_stats(indices=train_idx)  # the training split only
    target_norm = TargetNorm(
        cfg.target_norm, torch.from_numpy(stats.mean).float(), torch.from_numpy(stats.std).float()
    )
    student = build_student_from_section(student_cfg, store.dim)
    frontend = StudentFrontEnd()
    loss = build_loss(loss_cfg.name, **loss_cfg.params)
    sa, fa = cfg.spec_augment, cfg.filter_augment
    augments = []
    if fa.enabled:
        augments.append(lambda x, rng: filter_augment_fn(x, float(fa.max_db), int(fa.n_points), rng))
    if sa.enabled:
        augments.append(
            lambda x, rng: spec_augment_fn(x, int(sa.freq_mask), int(sa.time_mask), int(sa.n_masks), rng)
        )
    spec_aug = None
    if augments:

        def spec_aug(x, rng, _augments=tuple(augments)):
            for aug in _augments:
                x = aug(x, rng)
            return x

    optim = OptimConfig(
        lr=float(cfg.lr),
        betas=tuple(cfg.betas),
        weight_decay=float(cfg.weight_decay),
        schedule=WarmupRampdown(cfg.warm_up_len, cfg.ramp_down_start, cfg.ramp_down_len, cfg.last_lr_value),
        # updates per epoch follow from the world size, which only the Trainer knows (epoch_updates)
        samples_per_epoch=int(sampler_cfg.num_samples),
        batch_size=int(cfg.batch_size),
    )
    full_config = OmegaConf.to_container(ctx.cfg, resolve=True)
    recal = (
        (lambda: dm.recalibration_batches(int(cfg.bn_recalibration_items))) if cfg.bn_recalibration else None
    )
    module = DistillModule(
        student,
        frontend,
        loss,
        target_norm,
        optim,
        mixup_alpha=float(cfg.mixup_alpha),
        spec_augment=spec_aug,
        config=full_config,
        recalibration_batches=recal,
        recalibration_items=int(cfg.bn_recalibration_items),
        seed=seed,
        index_log_dir=str(ctx.out_dir) if cfg.log_indices else None,
        label_task=(
            LabelTask(tuple(class_names), label_weight, loss_cfg.label_loss) if label_weight > 0 else None
        ),
        channels_last=trainer_cfg.channels_last,
        ema_decay=cfg.ema_decay,
        nonfinite=NonFinitePolicy(str(cfg.on_nonfinite), int(cfg.max_nonfinite_skips)),
    )

    # ---- run folder: checkpoints, loggers, resume --------------------------------------------------------
    out = ctx.out_dir
    ckpt_dir = out / CHECKPOINT_DIR
    last = ckpt_dir / LAST_CKPT
    resume = last if last.exists() else None
    main = not is_secondary_process()
    if ctx.force and not cfg.resume_on_force:
        if resume is not None and main:
            log.info("force=true: starting from scratch (this variant's checkpoints and logs are removed)")
        resume = None
        if main:  # the processes Lightning starts re-run the command once rank 0 is already training
            _clear_training_outputs(out)
    resume_step = _check_resumable(resume, module, ctx) if resume is not None else None
    loggers: list[Any] = [ContinuedCSVLogger(str(out), LOGS_DIR, resume_step)]
    if logger_cfg.wandb:
        from lightning.pytorch.loggers import WandbLogger

        run_id = _wandb_run_id(out / WANDB_ID_FILE, main)
        wandb_logger = WandbLogger(
            project=logger_cfg.project,
            entity=logger_cfg.entity,
            save_dir=str(out),
            name=f"{ctx.layout.name}/{ctx.variant}",
            id=run_id,
            resume="allow" if run_id else None,  # a new id or a requeued job's: the same run either way
            offline=logger_cfg.mode == "offline",
            log_model=False,
            mode=None if logger_cfg.mode == "offline" else logger_cfg.mode,
            tags=list(logger_cfg.tags),
        )
        loggers.append(wandb_logger)
    history = _EpochHistory()
    progress = _make_progress_bar()()
    # The best checkpoints are ranked by the loss the run optimises.
    monitor = (
        "val/kd_loss" if label_weight == 0 else "val/label_loss" if label_weight == 1 else "val/total_loss"
    )
    callbacks = [
        ModelCheckpoint(
            dirpath=str(ckpt_dir),
            filename="epoch{epoch:03d}-step{step:06d}",
            monitor=monitor,
            mode="min",
            save_top_k=int(cfg.save_top_k),
            save_last=True,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        progress,
        history.callback(),
    ]
    if cfg.checkpoint_every_n_steps:
        # last.ckpt also inside epochs (AudioSet epochs are long): a requeued job loses at most this many
        # updates, and resumes on the very window where it stopped (the sampler position is checkpointed).
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(ckpt_dir),
                every_n_train_steps=int(cfg.checkpoint_every_n_steps),
                save_top_k=0,
                save_last=True,
                enable_version_counter=False,
            )
        )
    if student_cfg.name == "dymn" and cfg.dymn_anneal:
        callbacks.append(_make_dymn_anneal()())
    trainer = L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=_launcher_devices(trainer_cfg),
        num_nodes=trainer_cfg.num_nodes,
        strategy=trainer_cfg.strategy,
        precision=trainer_cfg.precision,
        gradient_clip_val=trainer_cfg.gradient_clip_val,
        deterministic=trainer_cfg.deterministic,
        max_epochs=int(cfg.epochs),
        max_steps=int(cfg.max_steps) if cfg.max_steps else -1,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        logger=loggers,
        callbacks=callbacks,
        default_root_dir=str(out),
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=cfg.limit_val_batches or 1.0,
        check_val_every_n_epoch=int(cfg.val_every_n_epochs),
        enable_model_summary=False,
    )
    # The Trainer's world size counts every process whoever starts them (devices=auto, Lightning, torchrun,
    # SLURM tasks); the module's schedule reads the same figure when fitting starts.
    updates_per_epoch = optim.epoch_updates(trainer.world_size)
    log.info(
        "%d updates per epoch on each of %d processes (%d windows per epoch, batches of %d)",
        updates_per_epoch,
        trainer.world_size,
        int(sampler_cfg.num_samples),
        int(cfg.batch_size),
    )
    trainer.log_every_n_steps = min(trainer_cfg.log_every_n_steps, updates_per_epoch)
    progress.updates_per_epoch = updates_per_epoch
    if resume is not None:
        log.info("resuming from %s (after update %d)", resume, resume_step)
    # Our train loader restarts mid-epoch on the right window (its position is the module's checkpointed
    # batch count), which Lightning cannot see: its warning about non-resumable loaders does not apply.
    warnings.filterwarnings(
        "ignore", message=r"You're resuming from a checkpoint that ended before the epoch"
    )
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    except NonFiniteError as err:
        raise StageError(str(err)) from None
    if not trainer.is_global_zero:
        return {"_rank_only": True}
    best = _finite_best(callbacks[0], last)
    summary_rows = history.rows
    first = summary_rows[0] if summary_rows else {}
    final = summary_rows[-1] if summary_rows else {}
    summary = f"distill: {student_cfg.name} <- {store.meta['teacher']['name']}, {trainer.global_step} updates"
    if label_weight < 1:
        summary += (
            f"; val cosine {first.get('val/cosine')} -> {final.get('val/cosine')} "
            f"(mean-target baseline {final.get('val/cosine_of_mean_target')})"
        )
    if label_weight > 0:
        summary += f"; label loss λ={label_weight}, val mAP {first.get('val/mAP')} -> {final.get('val/mAP')}"
    figures = {
        "summary": summary,
        "student": student_cfg.name,
        "teacher": store.meta["teacher"],
        "cluster_variant": cluster_variant,
        "steps": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "updates_per_epoch": updates_per_epoch,
        "train_windows": int(len(train_idx)),
        "val_windows": int(len(val_idx)),
        "clusters": k,
        "sampler": sampler_cfg.name,
        "loss": loss_cfg.name,
        "label_weight": label_weight,
        "label_loss": loss_cfg.label_loss if label_weight > 0 else None,
        "classes": class_names,
        "target_norm": cfg.target_norm,
        "ema_decay": cfg.ema_decay,
        "history": summary_rows,
        "checkpoints": {
            "last": str(last.relative_to(ctx.run_dir)),
            "best": str(Path(best).relative_to(ctx.run_dir)) if best else None,
        },
        "resumed_from": str(resume.relative_to(ctx.run_dir)) if resume else None,
        "resumed_at_step": resume_step,
        "nonfinite_skipped": int(module.nonfinite_skipped),
    }
    return figures


def _check_resumable(path: Path, module: Any, ctx: StageContext) -> int:
    """The ``global_step`` of the checkpoint a run resumes from, after checking it fits the model.

    Raises:
        StageError: unreadable, holding NaN/inf weights, or of another shape than the model built now (a
            leftover of another student or store).
    """
    import torch

    from ssondo_train.export.safe_load import safe_torch_load as read_checkpoint
    from ssondo_train.training.checkpoint import nonfinite_tensors

    rel = path.relative_to(ctx.run_dir)
    again = f"Run {ctx.command('distill', 'force=true')} to train this variant again from scratch"
    try:
        ckpt = read_checkpoint(path)
        state = ckpt["state_dict"]
        step = int(ckpt["global_step"])
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise StageError(f"cannot resume from {rel}: {type(err).__name__}: {err}. {again}") from None
    have = module.state_dict()
    mismatched = [
        (k, tuple(v.shape), tuple(have[k].shape))
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and k in have and tuple(v.shape) != tuple(have[k].shape)
    ]
    missing = sorted(set(have) - set(state))
    if mismatched or missing:
        what = (
            f"{mismatched[0][0]} is {mismatched[0][1]} there, {mismatched[0][2]} now"
            if mismatched
            else f"it has no {missing[0]}"
        )
        raise StageError(
            f"cannot resume from {rel}: it was trained for another model or teacher store ({what}; "
            f"{len(mismatched) + len(missing)} tensors differ). {again}"
        )
    bad = nonfinite_tensors(state)
    if bad:
        raise StageError(
            f"cannot resume from {rel}: {len(bad)} tensors hold NaN/inf (e.g. {bad[0]}). {again}"
        )
    return step


def _finite_best(checkpointer: Any, last: Path) -> str:
    """The best checkpoint whose weights are all finite ('' if none); NaN checkpoints are never chosen.

    Raises:
        StageError: the final ``last.ckpt`` holds NaN/inf weights.
    """
    from ssondo_train.export.safe_load import safe_torch_load as read_checkpoint
    from ssondo_train.training.checkpoint import nonfinite_tensors

    bad = nonfinite_tensors(read_checkpoint(last)["state_dict"])
    if bad:
        raise StageError(
            f"training ended with NaN/inf weights in {last} ({len(bad)} tensors, e.g. {bad[0]}); nothing is "
            "recorded as finished. Lower distill.lr or set distill.on_nonfinite=skip, and retrain with "
            "force=true"
        )
    ranked = sorted(
        checkpointer.best_k_models.items(),
        key=lambda kv: float(kv[1]),
        reverse=checkpointer.mode == "max",
    )
    for path, score in ranked:
        if (
            score == score
            and Path(path).is_file()
            and not nonfinite_tensors(read_checkpoint(path)["state_dict"])
        ):
            return str(path)
        log.warning("checkpoint %s is not a candidate for best (score %s or NaN/inf weights)", path, score)
    return ""


def _launcher_devices(trainer_cfg: Any) -> int | str:
    """``trainer.devices`` as the Trainer gets it.

    On CPU Lightning's ``auto`` is one device, but a job whose processes a launcher starts (torchrun
    ``--nproc-per-node``, SLURM ``--ntasks-per-node``) has that many per node, and Lightning refuses any other
    count: there ``auto`` means the launcher's. GPUs keep Lightning's ``auto`` (the visible GPUs).
    """
    import os

    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    devices = trainer_cfg.devices
    if str(devices) != "auto" or trainer_cfg.accelerator != "cpu":
        return devices
    if TorchElasticEnvironment.detect() and os.environ.get("LOCAL_WORLD_SIZE", "").isdigit():
        return int(os.environ["LOCAL_WORLD_SIZE"])
    if SLURMEnvironment.detect() and os.environ.get("SLURM_NTASKS_PER_NODE", "").isdigit():
        return int(os.environ["SLURM_NTASKS_PER_NODE"])
    return devices


def _wandb_run_id(id_file: Path, main: bool) -> str | None:
    """The wandb run id of this variant's training, kept in ``id_file`` so a requeued job continues the run.

    Only the main process (global rank 0) creates it, before wandb starts, and writes it atomically: a job
    killed at any moment leaves either no file or a whole id. The other ranks never start a wandb run
    (Lightning gives them a stand-in experiment); they read the id rank 0 wrote, which the processes
    Lightning starts always find (rank 0 writes it before it starts them).

    Returns:
        The id, or None on a rank > 0 that started before rank 0 wrote it (torchrun, SLURM tasks).
    """
    from ssondo_train.utils.io import atomic_write_text

    run_id = id_file.read_text().strip() if id_file.exists() else ""
    if run_id or not main:
        return run_id or None
    import secrets
    import string

    # wandb's own format (8 characters of [a-z0-9]); its generator moved between wandb versions
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    atomic_write_text(id_file, run_id + "\n")
    return run_id


def _make_progress_bar():
    from lightning.pytorch.callbacks import TQDMProgressBar

    class EpochProgressBar(TQDMProgressBar):
        """Refreshes about five times per epoch (at most every 20 updates); the stage sets the epoch length
        once the Trainer knows its world size."""

        updates_per_epoch = 1

        @property
        def refresh_rate(self) -> int:
            return max(1, min(20, self.updates_per_epoch // 5))

    return EpochProgressBar


def _refuse_spawning_in_a_local_sweep(trainer_cfg: Any) -> None:
    """Lightning starts the extra DDP processes of one machine by re-running the command line; inside a local
    ``-m`` sweep that command is the whole sweep, so every process would train every variant. SLURM tasks and
    torchrun start the processes themselves and are fine.

    Raises:
        StageError: a local multirun whose trainer would spawn processes.
    """
    import os

    import torch

    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    devices = str(trainer_cfg.devices)
    if devices.isdigit():
        local = int(devices)
    elif trainer_cfg.accelerator in ("gpu", "cuda", "auto"):
        local = torch.cuda.device_count()
    else:
        local = 1
    external = (
        any(k in os.environ for k in ("LOCAL_RANK", "RANK")) or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    )
    if local > 1 and not external:
        raise StageError(
            f"a local -m sweep cannot train with trainer.devices={devices} ({local} processes): Lightning "
            "would start each extra process with the whole sweep. Run one command per variant, or the sweep "
            "with hydra/launcher=slurm (one task per GPU)"
        )


def _clear_training_outputs(out: Path) -> None:
    """Remove what a previous training of this variant left (checkpoints, logs, index logs, wandb id)."""
    import shutil

    for name in (CHECKPOINT_DIR, LOGS_DIR):
        if (out / name).is_dir():
            shutil.rmtree(out / name)
    for path in [*out.glob("indices.rank*.txt"), out / WANDB_ID_FILE]:
        if path.exists():
            path.unlink()


def _make_dymn_anneal():
    import lightning as L

    class DymnAnneal(L.Callback):
        """Anneal DyMN's dynamic-conv temperature once per epoch (EfficientAT's schedule)."""

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            backbone = pl_module.student.model
            if hasattr(backbone, "anneal"):
                t = backbone.anneal(trainer.current_epoch)
                pl_module.log("dymn/temperature", float(t), on_epoch=True)
                if pl_module.student_ema is not None:  # the temperature is an attribute, not averaged
                    pl_module.student_ema.model.anneal(trainer.current_epoch)

    return DymnAnneal


def inputs(ctx: StageContext) -> dict[str, str]:
    """The store, and the clusters when the sampler or loss uses them (checked against this config)."""
    from ssondo_train.runs.variants import needs_clusters

    found = {"store": ctx.store().digest}
    if needs_clusters(ctx.cfg):
        name, digest = ctx.cluster_input()
        found[f"cluster/{name}"] = digest
    return found


STAGE = Stage(
    name="distill",
    run=run,
    inputs=inputs,
    resumes=True,
    description=(
        "train a student + projector on the teacher store (BDS, random or class-balanced sampling, optional "
        "label loss; Lightning)"
    ),
)
