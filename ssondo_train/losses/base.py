"""Common pieces of the distillation losses: the call contract, mixup bookkeeping and masked reductions.

Every distillation loss is an ``nn.Module`` with the same call signature::

    loss(student (B, D), teacher (B, D), clusters (B,) | None = None, mix: MixInfo | None = None) -> scalar

Inputs in half precision are up-cast to float32 (``16-mixed`` training would otherwise run the
log-sum-exps in fp16); float64 inputs stay float64 so the golden tests can compare exactly. Autocast is
switched off inside every loss (:func:`full_precision`): up-casting the inputs alone is not enough, since
under ``bf16-mixed`` autocast would run the similarity matmuls in bf16 again (CLAP 0.875 instead of 0.8737).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class MixInfo:
    """How a mixup batch was built: ``x_i = lam_i * x_i + (1 - lam_i) * x_perm(i)``.

    Attributes:
        lam: (B,) float mixing weight of each example's own target, in [0, 1].
        perm: (B,) long index of each example's mixing partner.
    """

    lam: Tensor
    perm: Tensor

    def __post_init__(self) -> None:
        if self.lam.ndim != 1 or self.perm.ndim != 1 or self.lam.shape != self.perm.shape:
            raise ValueError(
                f"MixInfo: lam and perm must both be (B,), got {tuple(self.lam.shape)} "
                f"and {tuple(self.perm.shape)}"
            )
        if self.perm.dtype.is_floating_point or self.perm.dtype == torch.bool:
            raise ValueError(f"MixInfo: perm must be an integer tensor, got {self.perm.dtype}")
        if not self.lam.dtype.is_floating_point:
            raise ValueError(f"MixInfo: lam must be a float tensor, got {self.lam.dtype}")

    @property
    def batch_size(self) -> int:
        return int(self.lam.shape[0])

    def to(self, device: torch.device | str) -> MixInfo:
        """Copy of this MixInfo on ``device``."""
        return MixInfo(self.lam.to(device), self.perm.to(device))


def full_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """A context with autocast disabled for ``device``'s type, so the losses compute in their inputs' dtype.

    Devices autocast does not know (e.g. ``meta``) get a no-op context.
    """
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:
        return contextlib.nullcontext()


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64, everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_pair(name: str, student: Tensor, teacher: Tensor) -> None:
    """Raise a ValueError unless student and teacher are both (B, D) with the same shape."""
    if student.ndim != 2 or teacher.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"loss {name!r}: student and teacher must both be (B, D) with equal shapes, "
            f"got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )


def check_clusters(name: str, clusters: Tensor | None, batch_size: int, required: bool) -> None:
    """Validate cluster ids; ``required`` losses refuse ``None`` (upstream silently used cluster 0)."""
    if clusters is None:
        if required:
            raise ValueError(
                f"loss {name!r} needs cluster ids: pass clusters as a (B,) LongTensor "
                "(load cluster ids in the data pipeline whatever the sampler)"
            )
        return
    if clusters.shape != (batch_size,):
        raise ValueError(f"loss {name!r}: clusters must be ({batch_size},), got {tuple(clusters.shape)}")
    if clusters.dtype.is_floating_point or clusters.dtype == torch.bool:
        raise ValueError(f"loss {name!r}: clusters must be an integer tensor, got {clusters.dtype}")


def check_mix(name: str, mix: MixInfo | None, batch_size: int) -> None:
    if mix is not None and mix.batch_size != batch_size:
        raise ValueError(
            f"loss {name!r}: MixInfo is for batch {mix.batch_size}, inputs have batch {batch_size}"
        )


def check_temperature(name: str, temperature: float) -> float:
    """Return ``temperature`` as a float if it is finite and > 0, else raise a ValueError."""
    t = float(temperature)
    if not math.isfinite(t) or t <= 0.0:
        raise ValueError(
            f"loss {name!r}: temperature must be a finite number > 0, got {temperature!r} "
            "(upstream's configs carry temperature 0.0, which divides by zero)"
        )
    return t


def safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` that gives 0 (still attached to the graph) when ``den`` is 0."""
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def masked_logsumexp(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise log-sum-exp over the entries where ``mask`` is True, excluding the others.

    Args:
        x: (B, B) logits.
        mask: (B, B) bool, True where an entry takes part in the sum.

    Returns:
        (lse (B,), has_any (B,) bool). Rows without any entry get lse 0 and ``has_any`` False; their gradient
        is 0, never NaN (a plain ``logsumexp`` of an all ``-inf`` row back-propagates NaN).
    """
    has_any = mask.any(dim=-1)
    masked = torch.where(mask, x, torch.full_like(x, -math.inf))
    # Empty rows are swapped for zeros so the reduction and its backward stay finite.
    masked = torch.where(has_any[:, None], masked, torch.zeros_like(x))
    lse = torch.logsumexp(masked, dim=-1)
    return torch.where(has_any, lse, torch.zeros_like(lse)), has_any


class DistillLoss(nn.Module):
    """Base class of the distillation losses (see the module docstring for the call contract).

    Subclasses set ``name`` and ``needs_clusters`` and implement :meth:`compute`.
    """

    name: ClassVar[str] = "base"
    needs_clusters: ClassVar[bool] = False

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        clusters: Tensor | None = None,
        mix: MixInfo | None = None,
    ) -> Tensor:
        """Loss value.

        Args:
            student: (B, D) student projector output.
            teacher: (B, D) teacher embedding (the un-mixed target of each example).
            clusters: (B,) long cluster id of each example's teacher embedding, or None.
            mix: mixup bookkeeping when the student input was mixed, else None.

        Returns:
            scalar loss tensor (float32, or float64 for float64 inputs), computed with autocast off.
        """
        check_pair(self.name, student, teacher)
        check_clusters(self.name, clusters, student.shape[0], self.needs_clusters)
        check_mix(self.name, mix, student.shape[0])
        dtype = compute_dtype(student)
        if mix is not None:
            mix = MixInfo(mix.lam.to(device=student.device, dtype=dtype), mix.perm.to(student.device))
        if clusters is not None:
            clusters = clusters.to(student.device)
        with full_precision(student.device):
            return self.compute(student.to(dtype), teacher.to(dtype), clusters, mix)

    def compute(
        self, student: Tensor, teacher: Tensor, clusters: Tensor | None, mix: MixInfo | None
    ) -> Tensor:
        raise NotImplementedError


class PerSampleLoss(DistillLoss):
    """A loss that is a batch mean of per-sample terms ℓ(s_i, t_i).

    With mixup each sample's term is mixed over its two targets:
    ``lam_i * ℓ(s_i, t_i) + (1 - lam_i) * ℓ(s_i, t_perm(i))``, then averaged over the batch.
    """

    def per_sample(self, student: Tensor, teacher: Tensor) -> Tensor:
        """(B, D), (B, D) -> (B,) per-sample losses."""
        raise NotImplementedError

    def compute(
        self, student: Tensor, teacher: Tensor, clusters: Tensor | None, mix: MixInfo | None
    ) -> Tensor:
        own = self.per_sample(student, teacher)
        if mix is None:
            return own.mean()
        partner = self.per_sample(student, teacher[mix.perm])
        return (mix.lam * own + (1.0 - mix.lam) * partner).mean()


class PairedBatchLoss(DistillLoss):
    """A batch loss whose value is an average over pairs (s_i, t_i), the rest of the batch acting as context.

    Subclasses implement :meth:`pair_losses`, returning each pair's loss and whether the pair is valid
    (e.g. has at least one positive and one negative); the loss is the mean over valid pairs, and 0 (attached
    to the graph) when no pair is valid.

    Mixup (i-Mix style, Lee et al., ICLR 2021): a mixed student s_i is scored twice, once with the batch
    paired as given (its own target t_i is the positive) and once with the teacher batch re-indexed by
    ``perm`` (t_perm(i), with cluster c_perm(i), is the positive); the second pass uses the same set of
    teacher embeddings, so the candidates are unchanged and only the designated positive moves. The two
    passes are weighted ``lam_i`` and ``1 - lam_i``:
    ``sum_i [lam_i v_i ℓ_i + (1 - lam_i) v'_i ℓ'_i] / sum_i [lam_i v_i + (1 - lam_i) v'_i]``.
    As in i-Mix, the other mixing partner stays a candidate (a negative) in each pass.
    """

    def pair_losses(self, student: Tensor, teacher: Tensor, clusters: Tensor | None) -> tuple[Tensor, Tensor]:
        """(B, D), (B, D), (B,) | None -> (loss (B,), valid (B,) bool)."""
        raise NotImplementedError

    def compute(
        self, student: Tensor, teacher: Tensor, clusters: Tensor | None, mix: MixInfo | None
    ) -> Tensor:
        loss, valid = self.pair_losses(student, teacher, clusters)
        weight = valid.to(loss.dtype)
        num = (weight * loss).sum()
        den = weight.sum()
        if mix is not None:
            perm_clusters = None if clusters is None else clusters[mix.perm]
            loss_p, valid_p = self.pair_losses(student, teacher[mix.perm], perm_clusters)
            weight = mix.lam * valid.to(loss.dtype)
            weight_p = (1.0 - mix.lam) * valid_p.to(loss.dtype)
            num = (weight * loss).sum() + (weight_p * loss_p).sum()
            den = weight.sum() + weight_p.sum()
        return safe_ratio(num, den)
