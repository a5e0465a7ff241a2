"""Frozen models for the linear probe: model specs, clip embedders and batched clip embedding.

A *model spec* is a short string (``probe.models`` in ``configs/stage/probe.yaml``):

=================  ==================================================================================
``teacher``        the run's teacher (``teacher`` config group), pooled embedding per window
``logmel``         baseline: mean and std over time of the student's 128-band log-mel -> 256-d
``untrained``      the configured student backbone, random init (seeded), BatchNorm statistics
                   recalibrated on the task's training clips (untrained running stats are meaningless)
``student``        the run's distill checkpoint: backbone embedding
``student_proj``   the same checkpoint's projector output mapped back to the teacher space with the
                   stored target normalisation (``proj * target_norm.std + target_norm.mean``)
``export:<dir>``   a safetensors export folder (``model.safetensors`` + ``config.json``): backbone
                   embedding with the export's own front-end
=================  ==================================================================================

Every embedder maps a batch of mono windows ``(B, n)`` at its :attr:`ClipEmbedder.sample_rate` to ``(B, D)``;
:func:`embed_clips` cuts each clip into windows (tail zero-padded), batches windows *across* clips and returns
the mean over each clip's windows. Unreadable clips are skipped with a reason, never raised.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssondo_train.training.checkpoint import load_distill_checkpoint, verify_distill_checkpoint

log = logging.getLogger(__name__)

MODEL_KINDS: tuple[str, ...] = ("teacher", "logmel", "untrained", "student", "student_proj", "export")
STUDENT_KINDS: tuple[str, ...] = ("student", "student_proj")
DEFAULT_WINDOW_SECONDS = 10.0  # S-SONDO's segment length, used when the run has no precompute stage
STUDENT_SAMPLE_RATE = 32_000
EMBEDDER_VERSION = 1  # bump when an embedder's output changes for the same fingerprint (invalidates caches)


# --- specs
@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``kind`` (one of :data:`MODEL_KINDS`) and its argument (``export:<dir>``)."""

    spec: str
    kind: str
    arg: str | None = None

    @property
    def label(self) -> str:
        """Name used in tables and file names: the kind, or ``export-<folder name>``."""
        if self.arg is None:
            return self.kind
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.arg).name or "dir").strip("._") or "dir"
        return f"{self.kind}-{stem}"


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse ``teacher``, ``logmel``, ``untrained``, ``student``, ``student_proj`` or ``export:<dir>``.

    Raises:
        ValueError: unknown kind, or ``export`` without a folder.
    """
    text = str(spec).strip()
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind not in MODEL_KINDS:
        raise ValueError(
            f"unknown probe model {spec!r}; use one of {', '.join(MODEL_KINDS[:-1])} or export:<dir>"
        )
    if kind == "export":
        if not arg.strip():
            raise ValueError(
                f"probe model {spec!r}: give the export folder, e.g. export:outputs/demo/export/default"
            )
        return ModelSpec(text, kind, arg.strip())
    if sep:
        raise ValueError(f"probe model {spec!r}: {kind!r} takes no argument")
    return ModelSpec(text, kind)


def digest_of(obj: Any, length: int = 16) -> str:
    """Short sha256 of the canonical JSON of ``obj`` (the cache key of a fingerprint)."""
    blob = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def path_digest(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative name + content digest, sorted)."""
    from ssondo_train.utils.io import sha256_file

    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        parts = [
            f"{p.relative_to(path).as_posix()}:{sha256_file(p)}"
            for p in sorted(path.rglob("*"))
            if p.is_file()
        ]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()
    raise FileNotFoundError(f"no such file or folder: {path}")


# --- embedders
class ClipEmbedder(abc.ABC):
    """A frozen model seen as ``(B, n)`` windows -> ``(B, D)`` embeddings.

    The model is built lazily (:meth:`load`), so a run whose embeddings are all cached never loads it.
    ``calls`` counts forward batches (tests use it to check cache reuse).
    """

    kind: str = ""
    needs_calibration: bool = False

    def __init__(self, window_seconds: float) -> None:
        if window_seconds <= 0:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds}")
        self.window_seconds = float(window_seconds)
        self.device = torch.device("cpu")
        self.calls = 0
        self._loaded = False

    @property
    @abc.abstractmethod
    def sample_rate(self) -> int:
        """Input rate in Hz (valid after :meth:`load` for teachers)."""

    @property
    def window_samples(self) -> int:
        return int(round(self.window_seconds * self.sample_rate))

    @abc.abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """Everything the embeddings depend on (weights digest, config, window); JSON-able, cheap."""

    @abc.abstractmethod
    def _build(self, device: torch.device) -> None:
        """Create the model on ``device``, eval mode."""

    @abc.abstractmethod
    def _forward(self, wav: Tensor) -> Tensor:
        """``(B, n)`` on the model's device -> ``(B, D)``."""

    def digest(self) -> str:
        return digest_of({"embedder_version": EMBEDDER_VERSION, **self.fingerprint()})

    def load(self, device: str | torch.device = "cpu") -> ClipEmbedder:
        """Build the model once (no-op when already built)."""
        if not self._loaded:
            self.device = torch.device(device)
            self._build(self.device)
            self._loaded = True
        return self

    def unload(self) -> None:
        """Drop the model (frees GPU memory between models)."""
        self._unbuild()
        self._loaded = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _unbuild(self) -> None:  # noqa: B027 - optional hook: subclasses drop their modules
        pass

    def embed(self, wav: Tensor) -> Tensor:
        """``(B, n)`` float32 windows -> ``(B, D)`` float32 on the CPU."""
        if not self._loaded:
            raise RuntimeError(f"{type(self).__name__}: call load() first")
        self.calls += 1
        with torch.inference_mode():
            out = self._forward(wav.to(self.device, dtype=torch.float32, non_blocking=True))
        return out.float().cpu()

    def calibrate(self, batches: Iterable[Tensor], max_items: int) -> int:
        """Recompute BatchNorm statistics on ``batches`` of ``(B, n)`` windows; returns windows used."""
        return 0

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description for results.json."""
        return {"kind": self.kind, "window_seconds": self.window_seconds, **self.fingerprint()}


class LogMelEmbedder(ClipEmbedder):
    """Mean and std over time of the student log-mel: ``(B, n)`` -> ``(B, 2 * n_mels)``."""

    kind = "logmel"

    def __init__(self, window_seconds: float, frontend_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__(window_seconds)
        self.frontend_kwargs = dict(frontend_kwargs or {})
        self.frontend: nn.Module | None = None

    @property
    def sample_rate(self) -> int:
        return int(self.frontend_kwargs.get("sample_rate", STUDENT_SAMPLE_RATE))

    def fingerprint(self) -> dict[str, Any]:
        return {"kind": self.kind, "frontend": self.frontend_kwargs, "window_seconds": self.window_seconds}

    def _build(self, device: torch.device) -> None:
        from ssondo_train.students.frontend import StudentFrontEnd

        self.frontend = StudentFrontEnd(**self.frontend_kwargs).to(device).eval()

    def _unbuild(self) -> None:
        self.frontend = None

    def _forward(self, wav: Tensor) -> Tensor:
        assert self.frontend is not None
        mel = self.frontend(wav)  # (B, F, T)
        return torch.cat([mel.mean(dim=-1), mel.std(dim=-1, correction=0)], dim=-1)


class StudentEmbedder(ClipEmbedder):
    """A student (backbone + projector): backbone embedding, or projector output in the teacher space.

    Args:
        loader: ``() -> (student, target_mean, target_std)`` building the ``StudentWithProjector`` (or a bare
            backbone when ``output="backbone"``); called once by :meth:`load`.
        output: ``"backbone"`` -> ``(B, emb_size)``; ``"projector"`` -> ``proj * std + mean``
            ``(B, D_teacher)``.
        fingerprint: what the weights depend on (checkpoint digest or build config + seed).
        frontend_kwargs: ``StudentFrontEnd`` arguments (default: S-SONDO's 32 kHz log-mel).
        norm_mean, norm_std: log-mel normalisation of the export's preprocess (identity by default).
        calibrate_bn: recalibrate BatchNorm statistics on the task's training clips before embedding.
        calibration_items, calibration_batch_size: windows used for that, and their batch size (both change
            the statistics, so both are part of the fingerprint).
    """

    def __init__(
        self,
        kind: str,
        loader: Callable[[], tuple[nn.Module, Tensor | None, Tensor | None]],
        window_seconds: float,
        fingerprint: Mapping[str, Any],
        output: str = "backbone",
        frontend_kwargs: Mapping[str, Any] | None = None,
        norm_mean: float = 0.0,
        norm_std: float = 1.0,
        calibrate_bn: bool = False,
        calibration_items: int = 512,
        calibration_batch_size: int = 64,
    ) -> None:
        super().__init__(window_seconds)
        if output not in ("backbone", "projector"):
            raise ValueError(f"output must be 'backbone' or 'projector', got {output!r}")
        self.kind = kind
        self.loader = loader
        self.output = output
        self._fingerprint = dict(fingerprint)
        self.frontend_kwargs = dict(frontend_kwargs or {})
        self.norm_mean, self.norm_std = float(norm_mean), float(norm_std)
        self.needs_calibration = bool(calibrate_bn)
        self.calibration_items = int(calibration_items)
        self.calibration_batch_size = int(calibration_batch_size)
        self.frontend: nn.Module | None = None
        self.backbone: nn.Module | None = None
        self.projector: nn.Module | None = None
        self.target_mean: Tensor | None = None
        self.target_std: Tensor | None = None

    @property
    def sample_rate(self) -> int:
        return int(self.frontend_kwargs.get("sample_rate", STUDENT_SAMPLE_RATE))

    def fingerprint(self) -> dict[str, Any]:
        return {
            **self._fingerprint,
            "kind": self.kind,
            "output": self.output,
            "frontend": self.frontend_kwargs,
            "norm": [self.norm_mean, self.norm_std],
            "window_seconds": self.window_seconds,
            "bn_calibration": (
                [self.calibration_items, self.calibration_batch_size] if self.needs_calibration else None
            ),
        }

    def _build(self, device: torch.device) -> None:
        from ssondo_train.students.frontend import StudentFrontEnd

        model, mean, std = self.loader()
        # NHWC convolutions: ~1.3x faster inference on CPU (oneDNN) and GPUs; the outputs are unchanged.
        self.backbone = getattr(model, "model", model).to(device).eval().to(memory_format=torch.channels_last)
        if self.output == "projector":
            head = getattr(model, "classification_head", None)
            if head is None:
                raise ValueError(f"{self.kind}: the model has no projector (classification_head)")
            self.projector = head.to(device).eval()
            out = int(head.out_dim)
            self.target_mean = (torch.zeros(out) if mean is None else mean.float()).to(device)
            self.target_std = (torch.ones(out) if std is None else std.float()).to(device)
        self.frontend = StudentFrontEnd(**self.frontend_kwargs).to(device).eval()

    def _unbuild(self) -> None:
        self.frontend = self.backbone = self.projector = None

    def logmel(self, wav: Tensor) -> Tensor:
        """``(B, n)`` -> ``(B, 1, F, T)``: one segment per window, normalised like the export's preprocess."""
        assert self.frontend is not None
        mel = self.frontend(wav).unsqueeze(1)
        if self.norm_mean != 0.0 or self.norm_std != 1.0:
            mel = (mel - self.norm_mean) / self.norm_std
        return mel.contiguous(memory_format=torch.channels_last)

    def outputs(self, wav: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(B, n)`` -> backbone embedding ``(B, E)`` and, when the projector is built, its output mapped to
        the teacher space ``(B, D)`` (else None); one forward pass of the backbone."""
        assert self.backbone is not None
        emb = self.backbone(self.logmel(wav))  # (B, 1, E)
        if self.projector is None:
            return emb.reshape(emb.shape[0], -1), None
        assert self.target_mean is not None and self.target_std is not None
        proj = self.projector(emb)  # (B, D): per segment, mean over the single segment
        return emb.reshape(emb.shape[0], -1), proj * self.target_std + self.target_mean

    def _forward(self, wav: Tensor) -> Tensor:
        emb, proj = self.outputs(wav)
        if self.output == "backbone":
            return emb
        assert proj is not None
        return proj

    def calibrate(self, batches: Iterable[Tensor], max_items: int) -> int:
        """BatchNorm running stats = plain average over up to ``max_items`` training windows."""
        if not self.needs_calibration:
            return 0
        from ssondo_train.training.batchnorm import recalibrate_batchnorm

        assert self.backbone is not None

        def mels() -> Iterator[Tensor]:
            for wav in batches:
                yield self.logmel(wav.to(self.device, dtype=torch.float32))

        seen = recalibrate_batchnorm(self.backbone, mels(), max_items=max_items)
        self.backbone.eval()
        return seen


class TeacherEmbedder(ClipEmbedder):
    """The run's teacher (``build_teacher(name, **TeacherConfig.build_kwargs())``), pooled per window."""

    kind = "teacher"

    def __init__(self, teacher_cfg: Any, window_seconds: float) -> None:
        super().__init__(window_seconds)
        self.teacher_cfg = teacher_cfg
        self.teacher: nn.Module | None = None
        self._files: dict[str, str] | None = None  # weight digests, hashed once (files can be large)

    @property
    def sample_rate(self) -> int:
        if self.teacher is None:
            raise RuntimeError("teacher sample rate is known once the teacher is loaded")
        return int(self.teacher.sample_rate)

    def fingerprint(self) -> dict[str, Any]:
        import dataclasses

        cfg = dataclasses.asdict(self.teacher_cfg)
        if self._files is None:
            files: dict[str, str] = {}
            for key in ("checkpoint_path", "model_path"):
                if cfg.get(key):
                    files[key] = path_digest(cfg[key])
            if cfg.get("name") == "whisper_tiny" and not cfg.get("model_path"):
                with contextlib.suppress(ImportError, FileNotFoundError):
                    from ssondo_train.teachers.whisper import default_whisper_model_path

                    files["model_path"] = path_digest(default_whisper_model_path())
            self._files = files
        return {
            "kind": self.kind,
            "teacher": cfg,
            "files": self._files,
            "window_seconds": self.window_seconds,
        }

    def _build(self, device: torch.device) -> None:
        from ssondo_train.teachers import build_teacher

        cfg = self.teacher_cfg
        self.teacher = build_teacher(cfg.name, **cfg.build_kwargs()).to(device).eval()

    def _unbuild(self) -> None:
        self.teacher = None

    def _forward(self, wav: Tensor) -> Tensor:
        assert self.teacher is not None
        return self.teacher.embed(wav)


# --- builders
def logmel_embedder(window_seconds: float) -> LogMelEmbedder:
    return LogMelEmbedder(window_seconds)


def teacher_embedder(teacher_cfg: Any, window_seconds: float) -> TeacherEmbedder:
    return TeacherEmbedder(teacher_cfg, window_seconds)


def untrained_embedder(
    student_cfg: Any,
    seed: int,
    window_seconds: float,
    calibration_items: int = 512,
    calibration_batch_size: int = 64,
) -> StudentEmbedder:
    """The configured student backbone with a seeded random init (no ImageNet weights); BatchNorm statistics
    recalibrated on each task's training windows (``calibration_items`` of them, seeded order)."""
    import dataclasses

    from ssondo_train.students import build_student

    def loader() -> tuple[nn.Module, None, None]:
        # fork_rng: the seeded init must not disturb (or depend on) the caller's global RNG stream
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = build_student(student_cfg.name, **dict(student_cfg.kwargs))
        return model, None, None

    cfg = {k: v for k, v in dataclasses.asdict(student_cfg).items() if k in ("name", "kwargs")}
    return StudentEmbedder(
        "untrained",
        loader,
        window_seconds,
        {"student": cfg, "seed": int(seed), "torch": torch.__version__},
        output="backbone",
        calibrate_bn=True,
        calibration_items=calibration_items,
        calibration_batch_size=calibration_batch_size,
    )


def checkpoint_embedder(ckpt_path: str | Path, output: str, window_seconds: float) -> StudentEmbedder:
    """``student`` (``output="backbone"``) or ``student_proj`` (``"projector"``) from a distill checkpoint.

    The model is built lazily, but the checkpoint is checked now: a bad one fails before any embedding work.

    Raises:
        FileNotFoundError: no such file.
        DivergedCheckpointError: its weights hold NaN/inf (a diverged run).
        ValueError: not a distill checkpoint.
    """
    from ssondo_train.utils.io import sha256_file

    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"no distill checkpoint at {ckpt_path}")
    verify_distill_checkpoint(ckpt_path)
    kind = "student" if output == "backbone" else "student_proj"

    def loader() -> tuple[nn.Module, Tensor, Tensor]:
        ck = load_distill_checkpoint(ckpt_path)
        return ck.student, ck.target_mean, ck.target_std

    return StudentEmbedder(
        kind, loader, window_seconds, {"checkpoint_sha256": sha256_file(ckpt_path)}, output=output
    )


def export_embedder(export_dir: str | Path, window_seconds: float | None) -> StudentEmbedder:
    """Backbone embedding of a safetensors export folder, with the export's own front-end.

    ``window_seconds`` overrides the export's segment length (``preprocess.window_s``) when given.

    Raises:
        ImportError: ``ssondo_train.export`` is not available (the caller skips the model).
        FileNotFoundError: the folder has no ``config.json`` / ``model.safetensors``.
    """
    from ssondo_train.export import PreprocessSpec, load_export_config, load_safetensors

    export_dir = Path(export_dir)
    cfg = load_export_config(export_dir)
    weights = export_dir / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{export_dir}: no model.safetensors")
    spec = PreprocessSpec.from_dict(cfg.get("preprocess") or {})

    def loader() -> tuple[nn.Module, None, None]:
        return load_safetensors(export_dir), None, None

    fp = {
        "safetensors_sha256": path_digest(weights),
        "config_sha256": path_digest(export_dir / "config.json"),
    }
    return StudentEmbedder(
        "export",
        loader,
        float(window_seconds or spec.window_s),
        fp,
        output="backbone",
        frontend_kwargs=spec.frontend_kwargs(),
        norm_mean=spec.norm_mean,
        norm_std=spec.norm_std,
    )


class JointStudentEmbedder(ClipEmbedder):
    """A ``student`` and a ``student_proj`` embedder of the same checkpoint in one forward pass.

    Embeddings are ``[backbone | projector]`` ``(B, E + D)``; :meth:`split` cuts the clip embeddings into what
    each embedder would have produced on its own (same windows, same arithmetic), to be cached under their own
    digests. Halves the probe's student time when both are evaluated.
    """

    kind = "student+student_proj"

    def __init__(self, backbone: StudentEmbedder, projector: StudentEmbedder) -> None:
        if not can_embed_jointly(backbone, projector):
            raise ValueError("joint embedding needs the backbone and projector outputs of one model")
        super().__init__(projector.window_seconds)
        self.parts = (backbone, projector)
        self._emb_dim: int | None = None

    @property
    def sample_rate(self) -> int:
        return self.parts[1].sample_rate

    def fingerprint(self) -> dict[str, Any]:
        return {"parts": [p.fingerprint() for p in self.parts]}

    def _build(self, device: torch.device) -> None:
        self.parts[1].load(device)

    def _unbuild(self) -> None:
        self.parts[1].unload()

    def _forward(self, wav: Tensor) -> Tensor:
        emb, proj = self.parts[1].outputs(wav)
        assert proj is not None
        self._emb_dim = int(emb.shape[1])
        return torch.cat([emb, proj], dim=1)

    def split(self, joint: EmbeddedClips) -> tuple[EmbeddedClips, EmbeddedClips]:
        """``(backbone clips, projector clips)`` from the joint result (same clips, windows and timing)."""
        e = self._emb_dim
        if e is None:
            raise RuntimeError("split() needs at least one embedded batch")
        a = EmbeddedClips(joint.clip_ids, joint.x[:, :e], dict(joint.skipped), joint.windows, joint.seconds)
        b = EmbeddedClips(joint.clip_ids, joint.x[:, e:], dict(joint.skipped), joint.windows, joint.seconds)
        return a, b


def can_embed_jointly(a: ClipEmbedder, b: ClipEmbedder) -> bool:
    """True when ``a`` is the backbone output and ``b`` the projector output of the same student."""
    if not (isinstance(a, StudentEmbedder) and isinstance(b, StudentEmbedder)):
        return False
    if (a.output, b.output) != ("backbone", "projector") or a.needs_calibration or b.needs_calibration:
        return False
    fa, fb = a.fingerprint(), b.fingerprint()
    fa.pop("output"), fb.pop("output"), fa.pop("kind"), fb.pop("kind")
    return fa == fb


# --- clip embedding
@dataclass
class EmbeddedClips:
    """Clip embeddings ``x`` ``(N, D)`` (mean over windows) for ``clip_ids``; ``skipped`` id -> reason."""

    clip_ids: list[str]
    x: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)
    windows: int = 0
    seconds: float = 0.0
    calibration_windows: int = 0

    def as_dict(self) -> dict[str, np.ndarray]:
        return {cid: self.x[i] for i, cid in enumerate(self.clip_ids)}

    def skipped_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for reason in self.skipped.values():
            out[reason] = out.get(reason, 0) + 1
        return dict(sorted(out.items()))


@dataclass
class _Item:
    index: int
    windows: Tensor | None = None  # (W, n)
    reason: str | None = None
    error: str | None = None


class _ClipWindowDataset:
    """Clip ``i`` -> its windows at ``sample_rate`` (decoding runs in DataLoader workers)."""

    def __init__(self, paths: Sequence[str], sample_rate: int, window: int) -> None:
        self.paths = list(paths)
        self.sample_rate = int(sample_rate)
        self.window = int(window)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> _Item:
        from ssondo_train.audio import AudioError, cut_windows, load_audio

        try:
            wav, _ = load_audio(self.paths[i], self.sample_rate)
            return _Item(i, cut_windows(wav, self.window, self.window, "pad").audio)
        except AudioError as err:
            return _Item(i, reason=err.reason, error=str(err))
        except Exception as err:  # a broken file must never stop the probe
            return _Item(i, reason="unexpected_error", error=f"{type(err).__name__}: {err}")


def _first(items: list[_Item]) -> _Item:
    return items[0]


def _iter_items(paths: Sequence[str], sample_rate: int, window: int, num_workers: int) -> Iterator[_Item]:
    dataset = _ClipWindowDataset(paths, sample_rate, window)
    if num_workers <= 0 or len(paths) < 2:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, shuffle=False, num_workers=num_workers, collate_fn=_first, prefetch_factor=4
    )
    yield from loader


def calibration_batches(
    paths: Sequence[str],
    sample_rate: int,
    window: int,
    batch_size: int,
    max_items: int,
    seed: int,
    num_workers: int = 0,
) -> Iterator[Tensor]:
    """``(B, n)`` window batches from ``paths`` in a seeded random order, at most ``max_items`` windows.

    Bad clips are skipped silently (they are reported by :func:`embed_clips`). A trailing batch of one
    window is dropped when other batches exist: BatchNorm cannot use a batch of one.
    """
    order = np.random.default_rng(seed).permutation(len(paths))
    shuffled = [paths[i] for i in order]
    buf: list[Tensor] = []
    total = 0
    for item in _iter_items(shuffled, sample_rate, window, num_workers):
        if item.windows is None:
            continue
        for w in item.windows[: max_items - total]:
            buf.append(w)
            total += 1
            if len(buf) == batch_size:
                yield torch.stack(buf)
                buf = []
        if total >= max_items:
            break
    if len(buf) > 1 or (buf and total == 1):
        yield torch.stack(buf)


def embed_clips(
    embedder: ClipEmbedder,
    clips: Sequence[tuple[str, str]],
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = False,
) -> EmbeddedClips:
    """Embed ``clips`` (``(clip_id, path)``) with a loaded ``embedder``: mean over each clip's windows.

    Windows of consecutive clips share batches of ``batch_size`` windows. A clip that cannot be decoded, is
    empty/silent/non-finite, or yields a non-finite embedding is skipped with its reason.

    Returns:
        :class:`EmbeddedClips` in the order of ``clips`` (minus the skipped ones).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    started = time.perf_counter()
    n = len(clips)
    sums: dict[int, np.ndarray] = {}
    counts = np.zeros(n, dtype=np.int64)
    expected = np.zeros(n, dtype=np.int64)
    skipped: dict[str, str] = {}
    buf: list[tuple[int, Tensor]] = []
    n_windows = 0

    def flush() -> None:
        nonlocal n_windows
        if not buf:
            return
        emb = embedder.embed(torch.stack([w for _, w in buf])).numpy().astype(np.float64)
        for (i, _), vec in zip(buf, emb, strict=True):
            sums[i] = vec if i not in sums else sums[i] + vec
            counts[i] += 1
        n_windows += len(buf)
        buf.clear()

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, unit="clip", desc=f"embed[{embedder.kind}]", dynamic_ncols=True, disable=None)
    try:
        for item in _iter_items(
            [p for _, p in clips], embedder.sample_rate, embedder.window_samples, num_workers
        ):
            if bar is not None:
                bar.update(1)
            if item.windows is None or len(item.windows) == 0:
                cid = clips[item.index][0]
                skipped[cid] = item.reason or "no_windows"
                log.warning("probe: skipping %s (%s): %s", cid, skipped[cid], item.error)
                continue
            expected[item.index] = len(item.windows)
            for w in item.windows:
                buf.append((item.index, w))
                if len(buf) >= batch_size:
                    flush()
        flush()
    finally:
        if bar is not None:
            bar.close()
    ids, rows = [], []
    for i, (cid, _) in enumerate(clips):
        if cid in skipped:
            continue
        if counts[i] != expected[i] or counts[i] == 0:  # cannot happen unless a batch was lost
            raise RuntimeError(f"internal error: clip {cid} got {counts[i]} of {expected[i]} windows")
        vec = sums[i] / counts[i]
        if not np.isfinite(vec).all():
            skipped[cid] = "non_finite_embedding"
            log.warning("probe: skipping %s: non-finite embedding", cid)
            continue
        ids.append(cid)
        rows.append(vec.astype(np.float32))
    dim = rows[0].shape[0] if rows else 0
    x = np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)
    return EmbeddedClips(ids, x, skipped, n_windows, time.perf_counter() - started)
