"""Optional supervised label loss and its combination with the distillation loss.

Upstream computed the 527-class BCE on the *same* head output as the 3840-d KD target
(UPSTREAM.md §9 item 18), so only λ ∈ {0, 1} was coherent. Here the label loss takes the logits of a
separate label head, and :class:`CombinedLoss` refuses to be handed the KD projector output as label logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from ssondo_train.losses.base import DistillLoss, MixInfo, check_mix, compute_dtype, full_precision

LabelKind = Literal["bce", "ce"]


class LabelLoss(nn.Module):
    """Supervised loss on label-head logits.

    Args:
        kind: ``"bce"`` (multi-label, BCE-with-logits averaged over classes, targets (B, C) multi-hot) or
            ``"ce"`` (single-label cross-entropy, targets (B,) class indices or (B, C) probabilities).
    """

    def __init__(self, kind: LabelKind = "bce") -> None:
        super().__init__()
        if kind not in ("bce", "ce"):
            raise ValueError(f"LabelLoss: kind must be 'bce' or 'ce', got {kind!r}")
        self.kind = kind

    def per_sample(self, logits: Tensor, targets: Tensor) -> Tensor:
        """(B, C) logits and targets -> (B,) per-sample losses."""
        if self.kind == "bce":
            if targets.shape != logits.shape:
                raise ValueError(
                    f"LabelLoss(bce): targets must match logits {tuple(logits.shape)}, "
                    f"got {tuple(targets.shape)}"
                )
            bce = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
            return bce.mean(dim=-1)
        if targets.ndim == 1:
            return F.cross_entropy(logits, targets.long(), reduction="none")
        if targets.shape != logits.shape:
            raise ValueError(
                f"LabelLoss(ce): targets must be (B,) or {tuple(logits.shape)}, got {tuple(targets.shape)}"
            )
        return -(targets.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(dim=-1)

    def forward(self, logits: Tensor, targets: Tensor, mix: MixInfo | None = None) -> Tensor:
        """Batch-mean label loss.

        Args:
            logits: (B, C) label-head logits.
            targets: un-mixed targets, (B, C) for ``bce``, (B,) or (B, C) for ``ce``.
            mix: when the input was mixed, each sample's loss is ``lam_i ℓ(y_i) + (1 - lam_i) ℓ(y_perm(i))``
                (the same as training on mixed targets, both losses being linear in the target).

        Returns:
            scalar tensor (float32, or float64 for float64 logits), computed with autocast off.
        """
        if logits.ndim != 2:
            raise ValueError(f"LabelLoss: logits must be (B, C), got {tuple(logits.shape)}")
        check_mix("label", mix, logits.shape[0])
        logits = logits.to(compute_dtype(logits))
        with full_precision(logits.device):
            own = self.per_sample(logits, targets)
            if mix is None:
                return own.mean()
            lam = mix.lam.to(device=logits.device, dtype=logits.dtype)
            perm = mix.perm.to(logits.device)
            return (lam * own + (1.0 - lam) * self.per_sample(logits, targets[perm])).mean()

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


@dataclass
class CombinedLossOutput:
    """Result of :class:`CombinedLoss`: ``total = λ · label + (1 - λ) · kd``; components are un-weighted."""

    total: Tensor
    kd: Tensor | None
    label: Tensor | None


class CombinedLoss(nn.Module):
    """``λ · label_loss + (1 - λ) · kd_loss`` with the label term on a separate label head.

    Args:
        kd: the distillation loss (may be None only when ``label_weight == 1``).
        label: the label loss (may be None only when ``label_weight == 0``).
        label_weight: λ in [0, 1]. A term whose weight is 0 is not computed at all.
    """

    def __init__(
        self, kd: DistillLoss | None, label: LabelLoss | None = None, label_weight: float = 0.0
    ) -> None:
        super().__init__()
        lam = float(label_weight)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"CombinedLoss: label_weight must be in [0, 1], got {label_weight!r}")
        if lam > 0.0 and label is None:
            raise ValueError(f"CombinedLoss: label_weight={lam} > 0 needs a label loss")
        if lam < 1.0 and kd is None:
            raise ValueError(f"CombinedLoss: label_weight={lam} < 1 needs a distillation loss")
        self.kd = kd
        self.label = label
        self.label_weight = lam

    def forward(
        self,
        student: Tensor | None,
        teacher: Tensor | None,
        *,
        label_logits: Tensor | None = None,
        labels: Tensor | None = None,
        clusters: Tensor | None = None,
        mix: MixInfo | None = None,
    ) -> CombinedLossOutput:
        """Weighted total and its parts.

        Args:
            student: (B, D) KD projector output (unused when λ = 1).
            teacher: (B, D) teacher embeddings (unused when λ = 1).
            label_logits: (B, C) logits of the *label head* (needed when λ > 0).
            labels: targets for the label loss (needed when λ > 0).
            clusters: (B,) cluster ids for cluster-aware KD losses.
            mix: mixup bookkeeping, applied to both terms.
        """
        lam = self.label_weight
        kd_value: Tensor | None = None
        label_value: Tensor | None = None
        if lam < 1.0:
            assert self.kd is not None
            if student is None or teacher is None:
                raise ValueError("CombinedLoss: the distillation term needs student and teacher tensors")
            kd_value = self.kd(student, teacher, clusters=clusters, mix=mix)
        if lam > 0.0:
            assert self.label is not None
            if label_logits is None or labels is None:
                raise ValueError("CombinedLoss: label_weight > 0 needs label_logits and labels")
            if student is not None and label_logits is student:
                raise ValueError(
                    "CombinedLoss: label_logits is the KD projector output; labels need their own head"
                )
            label_value = self.label(label_logits, labels, mix=mix)
        if kd_value is None:
            assert label_value is not None
            total = label_value
        elif label_value is None:
            total = kd_value
        else:
            total = lam * label_value + (1.0 - lam) * kd_value
        return CombinedLossOutput(total=total, kd=kd_value, label=label_value)

    def extra_repr(self) -> str:
        return f"label_weight={self.label_weight}"


__all__ = ["CombinedLoss", "CombinedLossOutput", "LabelKind", "LabelLoss"]
