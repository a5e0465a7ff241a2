"""The distillation LightningModule: student + projector trained to align with stored teacher embeddings.

Batches arrive as dicts of raw material (student-rate audio windows and teacher targets); the log-mel is
computed batched on the training device in ``on_after_batch_transfer``, not per sample in the workers.

Optionally (``LabelTask``) a separate linear label head on the mean-over-segments backbone embedding is
trained on the corpus labels, and the objective becomes ``λ · label + (1 − λ) · kd`` (:class:`CombinedLoss`);
λ = 1 is the supervised baseline (no distillation term at all).
"""

from __future__ import annotations

import copy
import logging
import math
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
from ssondo_train.losses.label import CombinedLoss, LabelLoss
from ssondo_train.training.batchnorm import recalibrate_batchnorm
from ssondo_train.training.ema import ema_decay_at, ema_update
from ssondo_train.training.schedule import WarmupRampdown

log = logging.getLogger(__name__)

TARGET_NORMS = ("none", "center", "zscore")
TRAINING_STATE_KEY = "ssondo_train_state"


@dataclass(frozen=True)
class OptimConfig:
    """Adam + warm-up/ramp-down schedule, stepped every update; one schedule epoch is one sampler epoch.

    Attributes:
        updates_per_epoch: updates per epoch when ``samples_per_epoch`` is None (a fixed count).
        samples_per_epoch: windows the sampler draws per epoch over all ranks; with ``batch_size`` it gives
            the updates per epoch of each rank once the world size is known (:meth:`epoch_updates`).
        batch_size: windows per update on each rank.
    """

    lr: float = 8e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    updates_per_epoch: int = 100
    schedule: WarmupRampdown = WarmupRampdown()
    samples_per_epoch: int | None = None
    batch_size: int = 1

    def epoch_updates(self, world_size: int = 1) -> int:
        """Updates per epoch of each of ``world_size`` ranks: the epoch's windows split over the ranks
        (``ceil(samples / world)`` each, as the sampler draws them), then batched."""
        if self.samples_per_epoch is None:
            return max(1, int(self.updates_per_epoch))
        per_rank = math.ceil(int(self.samples_per_epoch) / max(1, int(world_size)))
        return max(1, math.ceil(per_rank / max(1, int(self.batch_size))))


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


@dataclass(frozen=True)
class LabelTask:
    """The optional supervised term.

    Attributes:
        class_names: the label head's output order (C classes).
        weight: λ in (0, 1]; the objective is ``λ · label + (1 − λ) · kd``.
        kind: ``bce`` (multi-label) or ``ce`` (single-label; multi-hot rows are normalised to sum to 1).
    """

    class_names: tuple[str, ...]
    weight: float
    kind: str = "bce"

    def __post_init__(self) -> None:
        if not self.class_names:
            raise ValueError("LabelTask: no classes")
        if not 0.0 < float(self.weight) <= 1.0:
            raise ValueError(f"LabelTask: weight must be in (0, 1], got {self.weight!r}")


def macro_average_precision(scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Macro average precision over the classes that have at least one positive.

    Args:
        scores: (N, C) scores (higher = more likely).
        labels: (N, C) 0/1 targets.

    Returns:
        (mAP, number of classes averaged); (nan, 0) when no class has a positive.
    """
    from sklearn.metrics import average_precision_score

    positive = labels.sum(axis=0) > 0
    if not positive.any():
        return float("nan"), 0
    aps = [average_precision_score(labels[:, c], scores[:, c]) for c in np.flatnonzero(positive)]
    return float(np.mean(aps)), int(positive.sum())


class NonFiniteError(RuntimeError):
    """Training produced a NaN/inf loss or gradient (policy ``stop``, or too many skipped batches)."""


@dataclass(frozen=True)
class NonFinitePolicy:
    """What a non-finite loss or gradient norm does.

    Attributes:
        action: ``stop`` raises :class:`NonFiniteError` naming the step; ``skip`` drops the batch's update
            (counted, logged as ``train/nonfinite_skipped``) and goes on.
        max_skips: with ``skip``, stop anyway once more batches than this were dropped in the run.
    """

    action: str = "stop"
    max_skips: int = 100

    def __post_init__(self) -> None:
        if self.action not in ("stop", "skip"):
            raise ValueError(f"distill.on_nonfinite={self.action!r}; choose stop or skip")


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
        label_task: adds ``label_head`` (Linear(emb_size, C) on the mean-over-segments backbone embedding,
            never the KD projector) and mixes its loss with λ; batches must then carry ``labels`` (B, C).
        channels_last: run the student's convolutions in NHWC layout.
        ema_decay: keep ``student_ema``, an exponential moving average of the student (``training.ema``);
            validation and BatchNorm recalibration then use it, and checkpoint readers prefer its
            ``student_ema.*`` weights over the trained ``student.*`` ones. None disables it.
        nonfinite: what a NaN/inf loss or gradient does (:class:`NonFinitePolicy`; default: stop).
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
        label_task: LabelTask | None = None,
        channels_last: bool = False,
        ema_decay: float | None = None,
        nonfinite: NonFinitePolicy | None = None,
    ) -> None:
        super().__init__()
        self.channels_last = bool(channels_last)
        if self.channels_last:
            # NHWC convolutions: about 1.35x faster training steps for MobileNetV3 on CPU (oneDNN) and the
            # layout cuDNN prefers for bf16; parameters and state-dict keys are unchanged.
            student = student.to(memory_format=torch.channels_last)
        self.student = student
        self.ema_decay = float(ema_decay) if ema_decay is not None else None
        # Not a trainable part: the optimiser only sees trainable_parameters(); saved in checkpoints.
        self.student_ema: nn.Module | None = (
            copy.deepcopy(student).requires_grad_(False) if self.ema_decay is not None else None
        )
        self.frontend = frontend
        self.loss = loss
        self.label_task = label_task
        self.label_weight = float(label_task.weight) if label_task is not None else 0.0
        if label_task is not None:
            # Named label_head so its checkpoint keys never collide with the strict ``student.*`` loading.
            self.label_head: nn.Linear | None = nn.Linear(int(student.emb_size), len(label_task.class_names))
            self.label_loss: LabelLoss | None = LabelLoss(label_task.kind)  # type: ignore[arg-type]
        else:
            self.label_head = None
            self.label_loss = None
        projector = getattr(student, "classification_head", None)
        if self.label_weight >= 1.0 and isinstance(projector, nn.Module):
            # The supervised baseline never runs the KD projector: frozen, it is left out of the optimiser and
            # of DDP's gradient reduction (a trainable parameter without a gradient stops plain DDP at the
            # second step), and its untrained weights stay in the state dict that checkpoints and export read.
            projector.requires_grad_(False)
        # Neither loss holds parameters or buffers, so this adds no state-dict keys.
        self.objective = CombinedLoss(
            loss if self.label_weight < 1.0 else None, self.label_loss, self.label_weight
        )
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
        self._val_scores: list[Tensor] = []
        self._val_labels: list[Tensor] = []
        self._tick: float | None = None
        self.nonfinite = nonfinite or NonFinitePolicy()
        # Training batches started so far over all epochs (this rank); checkpointed, it places the sampler
        # of a resumed run on the same window as the uninterrupted run (training.data._IndexMap).
        self.batches_trained = 0
        self.nonfinite_skipped = 0
        self._epoch_sums: dict[str, tuple[float, int]] = {}
        self._sums_epoch = 0

    @property
    def uses_kd(self) -> bool:
        """False for the supervised baseline (λ = 1): no projector output, no teacher targets in the loss."""
        return self.label_weight < 1.0

    @property
    def evaluated_student(self) -> nn.Module:
        """The network that is validated and shipped: the weight average when EMA is on, else the student."""
        return self.student_ema if self.student_ema is not None else self.student

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The optimised parameters: the student's (less the KD projector when λ = 1) and the label head."""
        params = [p for p in self.student.parameters() if p.requires_grad]
        if self.label_head is not None:
            params += list(self.label_head.parameters())
        return params

    def _label_logits(self, emb: Tensor) -> Tensor:
        """(B, S, E) backbone embeddings -> (B, C) label logits."""
        assert self.label_head is not None
        return self.label_head(emb.mean(dim=1))

    def _label_targets(self, batch: dict[str, Tensor]) -> Tensor:
        labels = batch.get("labels")
        if labels is None:
            raise ValueError("the label head needs batches with 'labels' (B, C)")
        labels = labels.float()
        if self.label_task is not None and self.label_task.kind == "ce":
            # Cross-entropy wants a distribution: a multi-label row shares its mass equally.
            labels = labels / labels.sum(dim=-1, keepdim=True).clamp_min(1.0)
        return labels

    def _label_scores(self, logits: Tensor) -> Tensor:
        assert self.label_task is not None
        logits = logits.float()
        return torch.softmax(logits, dim=-1) if self.label_task.kind == "ce" else torch.sigmoid(logits)

    # ---- data on device ---------------------------------------------------------------------------------
    @torch.no_grad()
    def logmel(self, audio: Tensor) -> Tensor:
        """(B, n) waveform -> (B, 1, F, T) log-mel in float32 (never autocast), in the student's layout."""
        with torch.autocast(device_type=audio.device.type, enabled=False):
            mel = self.frontend(audio.float()).unsqueeze(1)
        return mel.contiguous(memory_format=torch.channels_last) if self.channels_last else mel

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
        proj: Tensor | None = None
        target: Tensor | None = None
        if self.uses_kd:
            proj, emb = self.student(logmel)
            target = self.target_norm(batch["target"].float())
            self._pred_norm_sum += float(proj.detach().float().norm(dim=-1).sum())
            self._pred_norm_count += int(proj.shape[0])
            proj = proj.float()
        else:  # supervised baseline: the projector is not run at all
            emb = self.student.model(logmel)
        label_logits = labels = None
        if self.label_head is not None:
            label_logits, labels = self._label_logits(emb), self._label_targets(batch)
        out = self.objective(
            proj, target, label_logits=label_logits, labels=labels, clusters=batch.get("cluster"), mix=mix
        )
        loss = out.total
        bsz = logmel.shape[0]
        if not self._all_finite(loss.detach()):
            return self._nonfinite("loss", float(loss.detach()), batch_idx, batch)
        for name, value, bar in (
            ("kd_loss", out.kd, True),
            ("label_loss", out.label, True),
            ("total_loss", loss, False),
        ):
            if value is not None:
                self.log(f"train/{name}_step", value, on_step=True, prog_bar=bar, batch_size=bsz)
                self._accumulate(f"train/{name}_epoch", value, bsz)
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

    def _accumulate(self, name: str, value: Tensor, weight: int) -> None:
        """Add a batch's value to the epoch's weighted mean (kept in checkpoints, unlike Lightning's own
        epoch aggregates, so an epoch resumed mid-way reports the mean over all its batches)."""
        if self._sums_epoch != self.current_epoch:  # sums of an epoch whose end was not seen are dropped
            self._epoch_sums.clear()
            self._sums_epoch = self.current_epoch
        total, count = self._epoch_sums.get(name, (0.0, 0))
        self._epoch_sums[name] = (total + float(value.detach()) * weight, count + weight)

    def epoch_means(self) -> dict[str, float]:
        """The current epoch's weighted means of the training losses so far (``train/<loss>_epoch``)."""
        return {name: total / count for name, (total, count) in sorted(self._epoch_sums.items()) if count}

    def on_train_epoch_end(self) -> None:
        for name, mean in self.epoch_means().items():
            self.log(name, mean, on_step=False, on_epoch=True, sync_dist=True)
        self._epoch_sums.clear()

    def _all_finite(self, value: Tensor) -> bool:
        """True when ``value`` is finite on every rank (all ranks take the same decision)."""
        bad = (~torch.isfinite(value)).any().float().reshape(1)
        if self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")
        return not bool(bad.item())

    def _nonfinite(self, what: str, value: float, batch_idx: int, batch: dict[str, Tensor] | None) -> None:
        """Apply the non-finite policy: raise, or count the skipped batch (its update is dropped)."""
        where = f"step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        windows = ""
        if batch is not None and "index" in batch:
            windows = f"; its store windows: {' '.join(map(str, batch['index'].tolist()[:16]))}"
        if self.nonfinite.action == "skip" and self.nonfinite_skipped < self.nonfinite.max_skips:
            self.nonfinite_skipped += 1
            log.warning("non-finite %s (%s) at %s: batch skipped%s", what, value, where, windows)
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), on_step=True, reduce_fx="max")
            return None
        reason = (
            f"more than distill.max_nonfinite_skips={self.nonfinite.max_skips} batches were skipped"
            if self.nonfinite.action == "skip"
            else "distill.on_nonfinite=stop"
        )
        raise NonFiniteError(
            f"non-finite {what} ({value}) at {where}{windows}; stopped ({reason}). The checkpoints written "
            "before this step hold finite weights: lower distill.lr, check the store, or set "
            "distill.on_nonfinite=skip to drop such batches"
        )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.batches_trained += 1
        # Dropout draws from torch's global RNG, which checkpoints do not carry and Lightning's loops also
        # consume: reseeding per (step, rank) gives a resumed run the same masks as an uninterrupted one.
        torch.manual_seed((self.seed * 1_000_003 + self.global_step * 7_919 + self.global_rank) % (2**63 - 1))

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.student_ema is not None:
            assert self.ema_decay is not None  # both are set together in __init__
            # Here, not in on_train_batch_end: checkpoint callbacks run before that hook, and a checkpoint
            # taken inside an epoch must hold the average of the same updates as its weights.
            # global_step already counts this update; it is restored on resume, and so is the average.
            ema_update(self.student_ema, self.student, ema_decay_at(self.ema_decay, self.global_step))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for p in self.trainable_parameters() if p.grad is not None]
        if not params:
            return
        total = torch.stack([p.grad.detach().float().norm(2) for p in params]).norm(2)
        # Gradients are already reduced over ranks here, so every rank sees the same norm.
        if not bool(torch.isfinite(total)):
            self._nonfinite("gradient norm", float(total), self.trainer.fit_loop.epoch_loop.batch_idx, None)
            for p in params:  # skip: Adam leaves parameters without a gradient untouched
                p.grad = None
            return
        self.log("train/grad_norm", total, on_step=True, on_epoch=False)

    def on_validation_epoch_start(self) -> None:
        self._tick = None
        if self._pred_norm_count and getattr(self.loss, "name", "") in SCALE_FREE_LOSSES:
            self.target_norm.set_scale_from_norm(self._pred_norm_sum / self._pred_norm_count)
            self._pred_norm_sum, self._pred_norm_count = 0.0, 0
        if self.recalibration_batches is not None:
            batches = (self.logmel(a.to(self.device)) for a in self.recalibration_batches())
            recalibrate_batchnorm(self.evaluated_student.model, batches, max_items=self.recalibration_items)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        bsz = batch["logmel"].shape[0]
        kd_loss: Tensor | None = None
        net = self.evaluated_student
        if self.uses_kd:
            proj, emb = net(batch["logmel"])
            teacher = batch["target"].float()
            kd_loss = self.loss(proj.float(), self.target_norm(teacher), batch.get("cluster"), None)
            self.log("val/kd_loss", kd_loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=bsz)
            pred = self.target_norm.inverse(proj.float())
            self._val_cos.append(F.cosine_similarity(pred, teacher, dim=-1).detach())
            mean = self.target_norm.mean.expand_as(teacher) if self.target_norm.mode != "none" else None
            if mean is not None:
                self._val_mean_cos.append(F.cosine_similarity(mean, teacher, dim=-1).detach())
        else:
            emb = net.model(batch["logmel"])
        if self.label_head is None or self.label_loss is None:
            return
        logits = self._label_logits(emb)
        labels = self._label_targets(batch)
        label_loss = self.label_loss(logits, labels)
        self.log("val/label_loss", label_loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=bsz)
        lam = self.label_weight
        total = label_loss if kd_loss is None else lam * label_loss + (1.0 - lam) * kd_loss
        self.log("val/total_loss", total, on_epoch=True, sync_dist=True, batch_size=bsz)
        self._val_scores.append(self._label_scores(logits).detach())
        self._val_labels.append((batch["labels"] > 0).float().detach())

    def _gather_rows(self, x: Tensor) -> Tensor:
        """Concatenate (n_r, C) tensors of all ranks (n_r may differ by rank)."""
        if self.trainer.world_size <= 1:
            return x
        n = torch.tensor([x.shape[0]], device=x.device)
        sizes = self.all_gather(n).reshape(-1)
        longest = int(sizes.max())
        padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: x.shape[0]] = x
        gathered = self.all_gather(padded)  # (world, longest, C)
        return torch.cat([gathered[r, : int(sizes[r])] for r in range(gathered.shape[0])])

    def _log_label_metrics(self) -> None:
        """val/mAP (macro over classes with positives) and, for single-label data, val/accuracy."""
        if self.label_head is None:
            return
        c = self.label_head.out_features
        local_scores = (
            torch.cat(self._val_scores) if self._val_scores else torch.zeros(0, c, device=self.device)
        )
        local_labels = (
            torch.cat(self._val_labels) if self._val_labels else torch.zeros(0, c, device=self.device)
        )
        scores = self._gather_rows(local_scores.float()).cpu().numpy()
        labels = self._gather_rows(local_labels.float()).cpu().numpy()
        self._val_scores.clear()
        self._val_labels.clear()
        if scores.shape[0] == 0:
            return
        m_ap, n_classes = macro_average_precision(scores, labels)
        if n_classes:
            # Same value on every rank (computed on the gathered arrays): syncing averages equal numbers.
            self.log("val/mAP", m_ap, prog_bar=True, sync_dist=True)
            self.log("val/mAP_classes", float(n_classes), sync_dist=True)
        if (labels.sum(axis=1) == 1).all():
            acc = float((scores.argmax(axis=1) == labels.argmax(axis=1)).mean())
            self.log("val/accuracy", acc, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._log_label_metrics()
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
            self.trainable_parameters(),
            lr=self.optim.lr,
            betas=tuple(self.optim.betas),
            weight_decay=self.optim.weight_decay,
        )
        # The world size is the Trainer's (devices=auto, torchrun, SLURM tasks), known only now.
        per_epoch = self.optim.epoch_updates(self.trainer.world_size)
        schedule = self.optim.schedule
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: schedule(step / per_epoch))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ssondo_train_config"] = self.config
        # What a resumed run needs besides weights, optimiser and loops: the sampler's position and the
        # running figures of the current epoch (plain numbers: weights-only loading reads them).
        checkpoint[TRAINING_STATE_KEY] = {
            "batches_trained": int(self.batches_trained),
            "nonfinite_skipped": int(self.nonfinite_skipped),
            "pred_norm_sum": float(self._pred_norm_sum),
            "pred_norm_count": int(self._pred_norm_count),
            "epoch_sums": {k: [float(t), int(c)] for k, (t, c) in self._epoch_sums.items()},
            "sums_epoch": int(self._sums_epoch),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(TRAINING_STATE_KEY)
        if state is None:  # a checkpoint written before the sampler position was kept: epoch boundaries only
            state = {"batches_trained": int(checkpoint.get("global_step", 0))}
        self.batches_trained = int(state.get("batches_trained", 0))
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
        self._pred_norm_sum = float(state.get("pred_norm_sum", 0.0))
        self._pred_norm_count = int(state.get("pred_norm_count", 0))
        self._epoch_sums = {k: (float(t), int(c)) for k, (t, c) in state.get("epoch_sums", {}).items()}
        self._sums_epoch = int(state.get("sums_epoch", 0))
