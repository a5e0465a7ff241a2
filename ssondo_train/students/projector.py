"""Mapping head from student embeddings to the teacher space, and the backbone + head wrapper."""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """Linear(emb -> hidden) -> Hardswish -> Dropout -> Linear(hidden -> out), per segment, then mean over S.

    State-dict keys ``mlp.0.*`` and ``mlp.3.*`` (S-SONDO's MLP head).
    """

    def __init__(
        self, in_dim: int, out_dim: int = 3840, hidden_dim: int = 1280, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.Hardswish(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden_dim, out_dim),
        )
        # Upstream initialises the head with PyTorch's Linear defaults; nothing to override.

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, S, in_dim) or (B, in_dim) -> (B, out_dim): projected per segment, averaged over segments."""
        if emb.ndim == 2:
            return self.mlp(emb)
        if emb.ndim != 3:
            raise ValueError(f"expected embeddings (B, S, D) or (B, D), got {tuple(emb.shape)}")
        return self.mlp(emb).mean(dim=1)


class StudentWithProjector(nn.Module):
    """Backbone ``model`` + ``classification_head``; state-dict keys are S-SONDO's minus ``student_model.``.

    forward(logmel (B, S, F, T)) -> (projected (B, out_dim), embeddings (B, S, emb_size)).
    """

    def __init__(self, model: nn.Module, classification_head: Projector) -> None:
        super().__init__()
        self.model = model
        self.classification_head = classification_head

    @property
    def emb_size(self) -> int:
        return int(self.model.emb_size)

    @property
    def out_dim(self) -> int:
        return self.classification_head.out_dim

    def forward(self, logmel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.model(logmel)
        return self.classification_head(emb), emb
