"""End-to-end student model for inference: raw audio in, embeddings / projections / logits out."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ssondo_train.export.formats import PreprocessSpec
from ssondo_train.students import StudentFrontEnd, StudentWithProjector, segment_windows

log = logging.getLogger(__name__)

Tail = Literal["pad", "drop"]


class SsondoModel(nn.Module):
    """A distilled student wrapped with its front-end and an optional classification head.

    Audio is mono float ``(n,)`` or ``(B, n)`` at ``sample_rate`` (resampled to the student's rate when
    they differ). It is cut into ``preprocess.window_s`` windows: with ``tail="pad"`` (default) audio shorter
    than one window becomes one zero-padded segment and a trailing remainder becomes a zero-padded last
    segment; ``tail="drop"`` is ssondo 0.3.1's behaviour (remainder dropped, short audio is an error).

    Gradients: every call that returns tensors (``preprocess``, ``segment_embeddings``, ``get_embeddings``,
    ``project``, ``model(audio)``) takes ``grad``. The default (None) follows the mode: a model in eval mode
    (as :func:`get_ssondo` returns it) records no graph, so results go straight to ``.numpy()``; after
    ``model.train()`` gradients flow as in any module (fine-tuning). ``grad=True`` / ``False`` overrides it.

    Attributes:
        student: backbone ``model`` + ``classification_head`` projector.
        head: optional module on pooled embeddings (B, E) -> logits (B, C).
        frontend: log-mel front-end (no parameters).
        preprocess_spec: the front-end / segmentation spec.
        sample_rate: rate of the audio the caller passes.
        tail: "pad" or "drop".
        chunk_size: segments per front-end / backbone call when the backbone is in eval mode (None = all at
            once). Small chunks stay in CPU caches: 8 clips in chunks of 4 ran ~2x faster than one call on
            a 1-thread CPU. Training-mode backbones always see the whole batch (BatchNorm statistics).
        meta: metadata of the loaded export (teacher, head meta, ...).
    """

    def __init__(
        self,
        student: StudentWithProjector,
        preprocess: PreprocessSpec | None = None,
        head: nn.Module | None = None,
        sample_rate: int | None = None,
        tail: Tail = "pad",
        meta: dict[str, Any] | None = None,
        chunk_size: int | None = 4,
    ) -> None:
        super().__init__()
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive or None, got {chunk_size}")
        if tail not in ("pad", "drop"):
            raise ValueError(f"tail must be 'pad' or 'drop', got {tail!r}")
        self.preprocess_spec = preprocess or PreprocessSpec()
        self.student = student
        self.frontend = StudentFrontEnd(**self.preprocess_spec.frontend_kwargs())
        self.head = head
        self.sample_rate = int(sample_rate or self.preprocess_spec.sample_rate)
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.tail: Tail = tail
        self.meta = dict(meta or {})
        self.chunk_size = chunk_size
        self._frozen: set[str] = set()

    # ------------------------------------------------------------------------------------- parts
    @property
    def backbone(self) -> nn.Module:
        """The student backbone: log-mel (B, S, F, T) -> (B, S, E)."""
        return self.student.model

    @property
    def projector(self) -> nn.Module:
        """The distillation projector: (B, S, E) -> (B, Dt), mean over segments."""
        return self.student.classification_head

    @property
    def embedding_dim(self) -> int:
        """E: 960 for MobileNetV3/DyMN (width 1.0), 1024 for ERes2Net."""
        return int(self.backbone.emb_size)

    @property
    def projection_dim(self) -> int:
        """Dt: the teacher embedding size (3840 for M2D / MATPAC++ ViT-B with 5 layers)."""
        return int(self.student.out_dim)

    # ---------------------------------------------------------------------------------- pipeline
    def _device(self) -> torch.device:
        return next(self.student.parameters()).device

    def _as_waveform(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(audio, np.ndarray):
            audio = torch.from_numpy(audio)
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"audio must be a torch.Tensor or numpy array, got {type(audio).__name__}")
        if not torch.is_floating_point(audio):
            raise TypeError(
                f"audio must be floating point (float32 samples in [-1, 1]), got {audio.dtype}; "
                "convert integer PCM with e.g. audio.float() / 32768"
            )
        if audio.ndim == 1:
            audio = audio.unsqueeze(0)
        if audio.ndim != 2:
            raise ValueError(
                f"audio must be mono (n,) or (batch, n), got shape {tuple(audio.shape)}; "
                "average multi-channel audio to mono first (e.g. audio.mean(dim=1) for (batch, channels, n))"
            )
        if audio.shape[0] == 0 or audio.shape[1] == 0:
            raise ValueError(f"audio is empty: shape {tuple(audio.shape)}")
        if not torch.isfinite(audio).all():
            raise ValueError("audio contains NaN or Inf samples")
        return audio.to(device=self._device(), dtype=torch.float32)

    def _grad(self, grad: bool | None) -> contextlib.AbstractContextManager[Any]:
        """No graph for ``grad=False``, or by default in eval mode; ``grad=True`` records one even inside a
        caller's ``torch.no_grad()``; by default in train mode the caller's grad mode is left alone."""
        # no_grad, not inference_mode: inference tensors cannot be saved for backward, so a head trained on
        # model.get_embeddings(x) would fail; plain tensors without a graph serve both uses.
        if grad is None and self.training:
            return contextlib.nullcontext()
        return torch.enable_grad() if grad else torch.no_grad()

    def preprocess(self, audio: torch.Tensor | np.ndarray, grad: bool | None = None) -> torch.Tensor:
        """Raw audio (n,) or (B, n) at ``sample_rate`` -> log-mel segments (B, S, n_mels, T); T=624 for 10 s.

        ``grad``: see the class docstring (default: a graph only in train mode).

        Raises:
            TypeError: non-float audio.
            ValueError: not 1-D/2-D, empty, NaN/Inf, or (``tail="drop"``) shorter than one window.
        """
        with self._grad(grad):
            return self._preprocess(audio)

    def _preprocess(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor:
        wav = self._as_waveform(audio)
        spec = self.preprocess_spec
        if self.sample_rate != spec.sample_rate:
            import torchaudio.functional as AF

            wav = AF.resample(wav, self.sample_rate, spec.sample_rate)
        segments = segment_windows(wav, spec.window_samples, spec.hop_samples, tail=self.tail)
        logmel = torch.cat([self.frontend(part) for part in self._chunks(segments)], dim=0)
        logmel = logmel.reshape(*segments.shape[:2], *logmel.shape[1:])  # (B, S, n_mels, T)
        if spec.normalizes:  # upstream inference skipped the training-time normalisation
            logmel = (logmel - spec.norm_mean) / spec.norm_std
        return logmel

    def segment_embeddings(self, audio: torch.Tensor | np.ndarray, grad: bool | None = None) -> torch.Tensor:
        """Raw audio -> per-segment backbone embeddings (B, S, E). ``grad``: see the class docstring."""
        with self._grad(grad):
            return self._segment_embeddings(audio)

    def _segment_embeddings(self, audio: torch.Tensor | np.ndarray) -> torch.Tensor:
        logmel = self._preprocess(audio)
        b, s = logmel.shape[:2]
        parts = [self.backbone(part.unsqueeze(1)) for part in self._chunks(logmel)]  # each (c, 1, E)
        return torch.cat(parts, dim=0).reshape(b, s, -1)

    def _chunks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, S, ...) -> list of (c, ...) pieces of the flattened B*S axis (one piece in training mode)."""
        flat = x.reshape(-1, *x.shape[2:])
        if self.chunk_size is None or self.backbone.training:
            return [flat]
        return list(flat.split(self.chunk_size))

    def get_embeddings(self, audio: torch.Tensor | np.ndarray, grad: bool | None = None) -> torch.Tensor:
        """Raw audio -> clip embeddings (B, E): backbone embeddings averaged over segments.

        ``grad``: see the class docstring (default: no graph in eval mode, so ``.numpy()`` works).
        """
        with self._grad(grad):
            return self._segment_embeddings(audio).mean(dim=1)

    def project(self, audio: torch.Tensor | np.ndarray, grad: bool | None = None) -> torch.Tensor:
        """Raw audio -> projector output (B, Dt) (the student's estimate of the teacher embedding).

        ``grad``: see the class docstring (default: no graph in eval mode, so ``.numpy()`` works).
        """
        with self._grad(grad):
            return self.projector(self._segment_embeddings(audio))

    def forward(self, audio: torch.Tensor | np.ndarray, grad: bool | None = None) -> torch.Tensor:
        """No head: (B, S, E) segment embeddings. With a head: logits (B, C) of the pooled embedding.

        ``grad``: see the class docstring (default: a graph only in train mode).
        """
        with self._grad(grad):
            if self.head is None:
                return self._segment_embeddings(audio)
            return self.head(self._segment_embeddings(audio).mean(dim=1))

    # ----------------------------------------------------------------------------- fine-tuning
    def freeze_backbone(self, projector: bool = True) -> SsondoModel:
        """Stop gradients into the backbone (and, by default, the projector) and freeze their BatchNorm.

        The frozen parts stay in eval mode even after ``model.train()``, so their BatchNorm running
        statistics and dropout do not change while a head is trained. Returns ``self``.
        """
        self._frozen = {"backbone", "projector"} if projector else {"backbone"}
        for part in self._frozen_modules():
            part.requires_grad_(False)
            part.eval()
        return self

    def unfreeze_backbone(self) -> SsondoModel:
        """Undo :meth:`freeze_backbone`: parameters trainable again, modes follow ``self.training``."""
        for part in self._frozen_modules():
            part.requires_grad_(True)
            part.train(self.training)
        self._frozen = set()
        return self

    @property
    def backbone_frozen(self) -> bool:
        return "backbone" in self._frozen

    def _frozen_modules(self) -> list[nn.Module]:
        return [getattr(self, name) for name in ("backbone", "projector") if name in self._frozen]

    def train(self, mode: bool = True) -> SsondoModel:
        super().train(mode)
        for part in self._frozen_modules():
            part.eval()
        return self

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, tail={self.tail!r}, embedding_dim={self.embedding_dim}, "
            f"frozen={sorted(self._frozen)}"
        )


def build_head(
    kind: Literal["linear", "mlp"], emb_dim: int, n_classes: int, hidden_sizes: list[int] | None = None
) -> nn.Module:
    """A fresh head on pooled embeddings: ``linear`` = Linear(E, C); ``mlp`` = [Linear, ReLU]* + Linear.

    ``hidden_sizes`` defaults to [512] (ssondo's default).
    """
    if n_classes is None or int(n_classes) <= 0:
        raise ValueError(f"head={kind!r} needs a positive n_classes, got {n_classes}")
    if kind == "linear":
        return nn.Linear(emb_dim, int(n_classes))
    if kind == "mlp":
        layers: list[nn.Module] = []
        width = emb_dim
        for size in hidden_sizes if hidden_sizes is not None else [512]:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            width = int(size)
        layers.append(nn.Linear(width, int(n_classes)))
        return nn.Sequential(*layers)
    raise ValueError(f"unknown head kind {kind!r}")
