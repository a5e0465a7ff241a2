"""The distillation LightningModule: student + projector trained to align with stored teacher embeddings.

Batches arrive as dicts of raw material (student-rate audio windows and teacher targets); the log-mel is
computed batched on the training device in ``on_after_batch_transfer``, not per sample in the workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssondo_train.losses.base import DistillLoss, MixInfo
from ssondo_train.training.batchnorm import recalibrate_batchnorm
from ssondo_train.training.schedule import WarmupRampdown

log = logging.getLogger(__name__)

TARGET_NORMS = ("none", "center", "zscore")


@dataclass(frozen=True)
class OptimConfig:
    """Adam + warm-up/ramp-down schedule, stepped every update with epoch = ``updates_per_epoch`` updates."""

    lr: float = 8e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    updates_per_epoch: int = 100
    schedule: WarmupRampdown = WarmupRampdown()


class TargetNorm(nn.Module):
    """Per-dimension normalisation of teacher targets: ``none``, ``center`` (t − μ) or ``zscore`` ((t − μ)/σ).

    The statistics come from the training store and are saved as buffers, so a checkpoint carries them and
    export can map projector outputs back to the teacher's space. A scale-invariant loss (cosine, contrastive)
    leaves the length of the normalised prediction free, so ``scale`` (a buffer, set from the mean length of
    the training predictions) brings it to the length of the normalised targets before mapping back: without
    it the mean vector would be added with an arbitrary relative weight. ``inverse`` is affine, so it folds
    into the projector's last Linear at export.
    """

    def __init__(
        self, mode: str, mean: Tensor | None = None, std: Tensor | None = None, dim: int = 0
    ) -> None:
        super().__init__()
        if mode not in TARGET_NORMS:
            raise ValueError(f"distill.target_norm={mode!r}; choose one of {TARGET_NORMS}")
        if mode != "none" and mean is None:
            raise ValueError(f"target_norm={mode!r} needs the store's per-dimension statistics")
        self.mode = mode
        dim = int(mean.numel()) if mean is not None else dim
        mean = mean.float() if mean is not None else torch.zeros(dim)
        std = std.float().clamp_min(1e-6) if std is not None else torch.ones(dim)
        # Root-mean-square length of the normalised targets (population statistics).
        rms = torch.sqrt((std**2).sum()) if mode == "center" else torch.tensor(float(dim) ** 0.5)
        if mode == "center":
            std = torch.ones_like(std)
        if mode == "none":
            mean, std = torch.zeros_like(mean), torch.ones_like(std)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("target_rms", rms.float())

    def forward(self, target: Tensor) -> Tensor:
        return target if self.mode == "none" else (target - self.mean) / self.std

    def inverse(self, normed: Tensor) -> Tensor:
        """Normalised prediction -> teacher space: ``normed · scale · σ + μ``."""
        return normed if self.mode == "none" else normed * (self.scale * self.std) + self.mean

    def set_scale_from_norm(self, mean_pred_norm: float) -> None:
        if self.mode != "none" and mean_pred_norm > 0:
            self.scale.fill_(float(self.target_rms) / mean_pred_norm)


SCALE_FREE_LOSSES = ("cosine", "clap", "contrastive", "cluster_aware", "neg_clusters", "hybrid")


class DistillModule(L.LightningModule):
    """Trains ``student`` (a ``StudentWithProjector``) with ``loss`` against normalised teacher targets.

    Args:
        student: backbone + projector; forward(logmel (B, S, F, T)) -> (proj (B, D), emb (B, S, E)).
        frontend: waveform (B, n) -> log-mel (B, F, T), run on the training device.
        loss: distillation loss ``loss(student, teacher, clusters, mix)``.
        target_norm: normalisation of the teacher targets (its buffers are saved in checkpoints).
        optim: optimiser and schedule settings.
        mixup_alpha: Beta(α, α) mixup on the log-mel batch; 0 disables it.
        spec_augment: ``fn(logmel (B, S, F, T), numpy generator) -> logmel`` or None.
        config: the full resolved run config, stored in every checkpoint.
        recalibration_batches: callable returning training audio batches for BN recalibration before each
            validation, or None to keep the running statistics as trained.
    """

    def __init__(
        self,
        student: nn.Module,
        frontend: nn.Module,
        loss: DistillLoss,
        target_norm: TargetNorm,
        optim: OptimConfig,
        mixup_alpha: float = 0.0,
        spec_augment: Callable[[Tensor, np.random.Generator], Tensor] | None = None,
        config: dict[str, Any] | None = None,
        recalibration_batches: Callable[[], Iterable[Tensor]] | None = None,
        recalibration_items: int = 512,
        seed: int = 0,
        index_log_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.frontend = frontend
        self.loss = loss
        self.target_norm = target_norm
        self.optim = optim
        self.mixup_alpha = float(mixup_alpha)
        self.spec_augment = spec_augment
        self.config = config or {}
        self.recalibration_batches = recalibration_batches
        self.recalibration_items = recalibration_items
        self.seed = int(seed)
        self.index_log_dir = index_log_dir
        self._val_cos: list[Tensor] = []
        self._pred_norm_sum = 0.0
        self._pred_norm_count = 0
        self._val_mean_cos: list[Tensor] = []
        self._tick: float | None = None

    # ---- data on device ---------------------------------------------------------------------------------
    @torch.no_grad()
    def logmel(self, audio: Tensor) -> Tensor:
        """(B, n) waveform -> (B, 1, F, T) log-mel in float32 (never autocast)."""
        with torch.autocast(device_type=audio.device.type, enabled=False):
            return self.frontend(audio.float()).unsqueeze(1)

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        batch = dict(batch)
        batch["logmel"] = self.logmel(batch.pop("audio"))
        if self.training and self.spec_augment is not None:
            batch["logmel"] = self.spec_augment(batch["logmel"], self._rng(1))
        return batch

    def _rng(self, stream: int) -> np.random.Generator:
        """Augmentation randomness fixed by (seed, stream, rank, step): reproducible, also after a resume."""
        return np.random.default_rng((self.seed, stream, self.global_rank, self.global_step))

    # ---- steps ------------------------------------------------------------------------------------------
    def _mix(self, logmel: Tensor) -> tuple[Tensor, MixInfo | None]:
        if self.mixup_alpha <= 0:
            return logmel, None
        from ssondo_train.sampling.augment import mixup

        return mixup(logmel, self.mixup_alpha, self._rng(2))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if self.index_log_dir is not None:  # sampling audit: which windows each rank trained on
            with open(f"{self.index_log_dir}/indices.rank{self.global_rank}.txt", "a") as fh:
                fh.write(f"{self.global_step} " + " ".join(map(str, batch["index"].tolist())) + "\n")
        logmel, mix = self._mix(batch["logmel"])
        proj, _ = self.student(logmel)
        target = self.target_norm(batch["target"].float())
        loss = self.loss(proj.float(), target, batch.get("cluster"), mix)
        self._pred_norm_sum += float(proj.detach().float().norm(dim=-1).sum())
        self._pred_norm_count += int(proj.shape[0])
        bsz = logmel.shape[0]
        self.log("train/kd_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bsz)
        self.log(
            "lr",
            self.trainer.optimizers[0].param_groups[0]["lr"],
            on_step=True,
            prog_bar=False,
            batch_size=bsz,
        )
        now = time.perf_counter()
        if self._tick is not None:
            self.log(
                "train/samples_per_s",
                bsz / max(now - self._tick, 1e-9),
                on_step=True,
                prog_bar=True,
                batch_size=bsz,
            )
        self._tick = now
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout draws from torch's global RNG, which checkpoints do not carry and Lightning's loops also
        # consume: reseeding per (step, rank) gives a resumed run the same masks as an uninterrupted one.
        torch.manual_seed((self.seed * 1_000_003 + self.global_step * 7_919 + self.global_rank) % (2**63 - 1))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norms = [p.grad.detach().norm(2) for p in self.student.parameters() if p.grad is not None]
        if norms:
            self.log("train/grad_norm", torch.stack(norms).norm(2), on_step=True, on_epoch=False)

    def on_validation_epoch_start(self) -> None:
        self._tick = None
        if self._pred_norm_count and getattr(self.loss, "name", "") in SCALE_FREE_LOSSES:
            self.target_norm.set_scale_from_norm(self._pred_norm_sum / self._pred_norm_count)
            self._pred_norm_sum, self._pred_norm_count = 0.0, 0
        if self.recalibration_batches is not None:
            batches = (self.logmel(a.to(self.device)) for a in self.recalibration_batches())
            recalibrate_batchnorm(self.student.model, batches, max_items=self.recalibration_items)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        proj, _ = self.student(batch["logmel"])
        teacher = batch["target"].float()
        loss = self.loss(proj.float(), self.target_norm(teacher), batch.get("cluster"), None)
        self.log(
            "val/kd_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=teacher.shape[0]
        )
        pred = self.target_norm.inverse(proj.float())
        self._val_cos.append(F.cosine_similarity(pred, teacher, dim=-1).detach())
        mean = self.target_norm.mean.expand_as(teacher) if self.target_norm.mode != "none" else None
        if mean is not None:
            self._val_mean_cos.append(F.cosine_similarity(mean, teacher, dim=-1).detach())

    def on_validation_epoch_end(self) -> None:
        if self._val_cos:
            cos = torch.cat(self._val_cos).mean()
            self.log("val/cosine", cos, prog_bar=True, sync_dist=True)
        if self._val_mean_cos:
            self.log("val/cosine_of_mean_target", torch.cat(self._val_mean_cos).mean(), sync_dist=True)
        self.log("val/target_scale", self.target_norm.scale, sync_dist=True)
        self._val_cos.clear()
        self._val_mean_cos.clear()

    # ---- optimisation -----------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.Adam(
            self.student.parameters(),
            lr=self.optim.lr,
            betas=tuple(self.optim.betas),
            weight_decay=self.optim.weight_decay,
        )
        per_epoch = max(1, int(self.optim.updates_per_epoch))
        schedule = self.optim.schedule
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule(step / per_epoch))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ssondo_train_config"] = self.config
