"""Schemas of the config groups (see ``schema.py`` for how they are checked)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ssondo_train.config.schema import check_choice, check_range, register_schema

PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "64-true")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto", "mps")


@register_schema("trainer")
@dataclasses.dataclass
class TrainerConfig:
    """Lightning Trainer settings (``configs/trainer/*.yaml``)."""

    accelerator: str = "cpu"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    gradient_clip_val: float = 5.0
    deterministic: bool = False
    log_every_n_steps: int = 10
    num_workers: int = 2
    float32_matmul_precision: str = "highest"
    channels_last: bool = True

    def __post_init__(self) -> None:
        check_choice("trainer.accelerator", self.accelerator, ACCELERATORS)
        check_choice("trainer.precision", str(self.precision), PRECISIONS)
        check_choice(
            "trainer.float32_matmul_precision", self.float32_matmul_precision, ("highest", "high", "medium")
        )
        check_range("trainer.num_nodes", self.num_nodes, 1)
        check_range("trainer.num_workers", self.num_workers, 0)
        check_range("trainer.gradient_clip_val", self.gradient_clip_val, 0)
        if self.accelerator == "cpu" and "16" in str(self.precision) and "bf16" not in str(self.precision):
            raise ValueError("trainer.precision=16-mixed needs a GPU; use 32-true or bf16-mixed on CPU")


@register_schema("logger")
@dataclasses.dataclass
class LoggerConfig:
    """Experiment loggers (``configs/logger/*.yaml``). CSV is always on; wandb is offline unless set."""

    csv: bool = True
    wandb: bool = False
    project: str = "ssondo-train"
    entity: str | None = None
    mode: str = "offline"
    tags: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        check_choice("logger.mode", self.mode, ("offline", "online", "disabled"))


LOSS_NAMES = ("cosine", "mse", "l1", "kl", "clap", "contrastive", "cluster_aware", "neg_clusters", "hybrid")


@register_schema("loss")
@dataclasses.dataclass
class LossConfig:
    """Distillation loss (``configs/loss/*.yaml``); ``params`` go to ``build_loss(name, **params)``."""

    name: str = "cosine"
    params: dict = dataclasses.field(default_factory=dict)
    label_weight: float = 0.0
    label_loss: str = "bce"

    def __post_init__(self) -> None:
        check_choice("loss.name", self.name, LOSS_NAMES)
        check_range("loss.label_weight", self.label_weight, 0.0, 1.0)
        check_choice("loss.label_loss", self.label_loss, ("bce", "ce"))
        from ssondo_train.losses import build_loss

        build_loss(self.name, **self.params)  # validates parameter names and values (temperature > 0, ...)


@register_schema("sampler")
@dataclasses.dataclass
class SamplerConfig:
    """Training-window sampler (``configs/sampler/*.yaml``)."""

    name: str = "bds"
    num_samples: int = 100_000

    def __post_init__(self) -> None:
        check_choice("sampler.name", self.name, ("bds", "random", "class_balanced"))
        check_range("sampler.num_samples", self.num_samples, 1)


@register_schema("student")
@dataclasses.dataclass
class StudentConfig:
    """Student backbone + projector (``configs/student/*.yaml``); ``kwargs`` go to the backbone class."""

    name: str = "mobilenetv3"
    pretrained: str | None = None
    projector_hidden: int = 1280
    projector_dropout: float = 0.2
    kwargs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from ssondo_train.students import STUDENTS

        check_choice("student.name", self.name, STUDENTS)
        check_range("student.projector_hidden", self.projector_hidden, 1)
        check_range("student.projector_dropout", self.projector_dropout, 0.0, 1.0)
        import inspect

        accepted = set(inspect.signature(STUDENTS[self.name]).parameters)
        unknown = sorted(set(self.kwargs) - accepted)
        if unknown:
            raise ValueError(
                f"student.kwargs has unknown keys {unknown} for {self.name}; "
                f"allowed: {', '.join(sorted(accepted))}"
            )


@register_schema("teacher")
@dataclasses.dataclass
class TeacherConfig:
    """Teacher model (``configs/teacher/*.yaml``); every key but ``name`` goes to ``build_teacher``."""

    name: str = "whisper_tiny"
    model_path: str | None = None
    pooling: str = "meanstd"
    layer: int = -1
    checkpoint_path: str | None = None
    allow_unexpected_keys: bool = False
    config: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        from ssondo_train.teachers import TEACHERS

        check_choice("teacher.name", self.name, TEACHERS)
        if self.name == "whisper_tiny":
            check_choice("teacher.pooling", self.pooling, ("meanstd", "mean"))

    def build_kwargs(self) -> dict:
        """Keyword arguments of ``build_teacher`` for this teacher."""
        if self.name == "whisper_tiny":
            return {"model_path": self.model_path, "pooling": self.pooling, "layer": self.layer}
        return {
            "checkpoint_path": self.checkpoint_path,
            "allow_unexpected_keys": self.allow_unexpected_keys,
            "config": dict(self.config) or None,
        }


@register_schema("store")
@dataclasses.dataclass
class StoreConfig:
    """Teacher-embedding store (``configs/store/*.yaml``)."""

    backend: str = "wds"
    dtype: str = "float16"
    max_count: int = 10_000
    max_bytes: int = 1_000_000_000
    audio_codec: str = "flac"
    verify: str = "cached"

    def __post_init__(self) -> None:
        from ssondo_train.store import AUDIO_CODECS, BACKENDS
        from ssondo_train.store.reader import VERIFY_MODES

        check_choice("store.backend", self.backend, BACKENDS)
        check_choice("store.verify", self.verify, VERIFY_MODES)
        check_choice("store.dtype", self.dtype, ("float16", "float32"))
        check_choice("store.audio_codec", self.audio_codec, AUDIO_CODECS)
        check_range("store.max_count", self.max_count, 1)
        check_range("store.max_bytes", self.max_bytes, 1)


@register_schema("precompute")
@dataclasses.dataclass
class PrecomputeConfig:
    """``precompute:`` section (``configs/stage/precompute.yaml``)."""

    manifest: str | None = None
    max_clips: int | None = None
    window_seconds: float = 10.0
    hop_seconds: float = 10.0
    tail: str = "pad"
    min_seconds: float = 0.1
    max_failure_rate: float = 0.05
    batch_size: int = 32
    device: str = "auto"
    precision: str = "fp32"
    num_workers: int = 2
    clips_per_shard: int = 500
    store_student_audio: bool = True
    valid_fraction: float = 0.05
    split_seed: int = 42
    merge_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        check_range("precompute.window_seconds", self.window_seconds, 0.0, low_open=True)
        check_range("precompute.hop_seconds", self.hop_seconds, 0.0, low_open=True)
        check_choice("precompute.tail", self.tail, ("pad", "drop"))
        check_choice("precompute.precision", self.precision, ("fp32", "bf16", "fp16"))
        check_choice("precompute.device", self.device.split(":")[0], ("auto", "cpu", "cuda"))
        check_range("precompute.batch_size", self.batch_size, 1)
        check_range("precompute.num_workers", self.num_workers, 0)
        check_range("precompute.clips_per_shard", self.clips_per_shard, 1)
        check_range("precompute.valid_fraction", self.valid_fraction, 0.0, 0.5)
        check_range("precompute.max_failure_rate", self.max_failure_rate, 0.0, 1.0)


@register_schema("cluster")
@dataclasses.dataclass
class ClusterConfig:
    """``cluster:`` section (``configs/stage/cluster.yaml``)."""

    k: int = 50
    metric: str = "euclidean"
    backend: str = "torch"
    max_iter: int = 100
    n_init: int = 3
    metric_sample: int = 5000
    seed: int = 42

    def __post_init__(self) -> None:
        check_range("cluster.k", self.k, 1)
        check_choice("cluster.metric", self.metric, ("euclidean", "cosine"))
        check_choice("cluster.backend", self.backend, ("torch", "sklearn"))
        check_range("cluster.max_iter", self.max_iter, 1)
        check_range("cluster.n_init", self.n_init, 1)


@dataclasses.dataclass
class SpecAugmentConfig:
    enabled: bool = False
    freq_mask: int = 24
    time_mask: int = 48
    n_masks: int = 2


@dataclasses.dataclass
class FilterAugmentConfig:
    """Random smooth equalisation of the student's log-mel (``sampling.augment.filter_augment``)."""

    enabled: bool = False
    max_db: float = 6.0
    n_points: int = 3

    def __post_init__(self) -> None:
        check_range("distill.filter_augment.max_db", self.max_db, 0.0)
        check_range("distill.filter_augment.n_points", self.n_points, 0)


@register_schema("distill")
@dataclasses.dataclass
class DistillConfig:
    """``distill:`` section (``configs/stage/distill.yaml``)."""

    batch_size: int = 32
    epochs: int = 100
    max_steps: int | None = None
    lr: float = 8e-4
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warm_up_len: float = 8
    ramp_down_start: float = 80
    ramp_down_len: float = 95
    last_lr_value: float = 0.01
    target_norm: str = "none"
    mixup_alpha: float = 0.0
    spec_augment: SpecAugmentConfig = dataclasses.field(default_factory=SpecAugmentConfig)
    filter_augment: FilterAugmentConfig = dataclasses.field(default_factory=FilterAugmentConfig)
    bn_recalibration: bool = True
    bn_recalibration_items: int = 512
    dymn_anneal: bool = False
    save_top_k: int = 2
    checkpoint_every_n_steps: int | None = 500
    on_nonfinite: str = "stop"
    max_nonfinite_skips: int = 100
    limit_val_batches: int | None = None
    val_every_n_epochs: int = 1
    ema_decay: float | None = None
    log_indices: bool = False
    resume_on_force: bool = False

    def __post_init__(self) -> None:
        check_range("distill.batch_size", self.batch_size, 1)
        check_range("distill.epochs", self.epochs, 1)
        check_range("distill.val_every_n_epochs", self.val_every_n_epochs, 1)
        if self.epochs % self.val_every_n_epochs:
            raise ValueError(
                f"distill.val_every_n_epochs={self.val_every_n_epochs} must divide distill.epochs="
                f"{self.epochs}: the last epoch must be validated (BatchNorm recalibration and the output "
                "scale of scale-free losses are set there)"
            )
        check_range("distill.lr", self.lr, 0.0, low_open=True)
        if self.ema_decay is not None and not 0.0 < float(self.ema_decay) < 1.0:
            raise ValueError(f"distill.ema_decay must be null or in (0, 1), got {self.ema_decay}")
        check_choice("distill.target_norm", self.target_norm, ("none", "center", "zscore"))
        check_range("distill.mixup_alpha", self.mixup_alpha, 0.0)
        if self.checkpoint_every_n_steps is not None:
            check_range("distill.checkpoint_every_n_steps", self.checkpoint_every_n_steps, 1)
        check_choice("distill.on_nonfinite", self.on_nonfinite, ("stop", "skip"))
        check_range("distill.max_nonfinite_skips", self.max_nonfinite_skips, 0)
        if len(self.betas) != 2:
            raise ValueError(f"distill.betas must have two values, got {self.betas}")


PROBE_FIT_KEYS = (
    "lrs",
    "weight_decays",
    "max_epochs",
    "solver",
    "refit",
    "grid_strategy",
    "tol",
    "grid_tol",
    "path_patience",
    "select_by",
)


@register_schema("probe")
@dataclasses.dataclass
class ProbeConfig:
    """``probe:`` section (``configs/stage/probe.yaml``); the spec strings are documented there."""

    tasks: list = dataclasses.field(default_factory=list)  # strings, or mappings {task, root, ...}
    models: list[str] = dataclasses.field(
        default_factory=lambda: ["teacher", "logmel", "untrained", "student", "student_proj"]
    )
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
    window_seconds: float | None = None
    batch_size: int = 64
    device: str = "auto"
    checkpoint: str = "last"
    num_workers: int = 2
    bn_recalibration_items: int = 512
    val_fraction: float = 0.1
    fit: dict = dataclasses.field(default_factory=dict)
    export_heads: bool = True
    # null: the variant of this command line; "all": every trained variant of the run; or a list of names.
    variants: Any = None
    paper_reference: bool = True

    def __post_init__(self) -> None:
        from ssondo_train.probe.models import parse_model_spec

        if self.variants is not None and self.variants != "all":
            if isinstance(self.variants, str) or not all(isinstance(v, str) for v in self.variants):
                raise ValueError(
                    f"probe.variants={self.variants!r}: use null (this command line's variant), all, or a "
                    "list of variant names"
                )
            if not self.variants:
                raise ValueError("probe.variants is an empty list; use null, all or variant names")

        if not self.tasks:
            raise ValueError("probe.tasks is empty; list demo task names, manifest:<csv> or <bench>:<root>")
        if not self.models:
            raise ValueError("probe.models is empty")
        labels = [parse_model_spec(m).label for m in self.models]  # raises on an unknown spec
        if len(set(labels)) != len(labels):
            raise ValueError(f"probe.models has duplicate entries: {self.models}")
        if not self.seeds:
            raise ValueError("probe.seeds is empty")
        if self.window_seconds is not None:
            check_range("probe.window_seconds", self.window_seconds, 0.0, low_open=True)
        check_range("probe.batch_size", self.batch_size, 1)
        check_range("probe.num_workers", self.num_workers, 0)
        check_range("probe.bn_recalibration_items", self.bn_recalibration_items, 1)
        check_range("probe.val_fraction", self.val_fraction, 0.0, 0.5, low_open=True)
        check_choice("probe.device", self.device.split(":")[0], ("auto", "cpu", "cuda"))
        if self.checkpoint not in ("last", "best") and not self.checkpoint.endswith(".ckpt"):
            raise ValueError(f"probe.checkpoint={self.checkpoint!r}: use last, best or a .ckpt path")
        unknown = sorted(set(self.fit) - set(PROBE_FIT_KEYS))
        if unknown:
            raise ValueError(f"probe.fit has unknown keys {unknown}; allowed: {', '.join(PROBE_FIT_KEYS)}")


@register_schema("export")
@dataclasses.dataclass
class ExportConfig:
    """``export:`` section (``configs/stage/export.yaml``)."""

    checkpoint: str = "last"
    segment_seconds: float | None = None
    onnx: bool = True
    heads_from: str = "student"
