"""Schemas of the config groups (see ``schema.py`` for how they are checked)."""

from __future__ import annotations

import dataclasses

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

    def __post_init__(self) -> None:
        check_choice("trainer.accelerator", self.accelerator, ACCELERATORS)
        check_choice("trainer.precision", str(self.precision), PRECISIONS)
        check_choice("trainer.float32_matmul_precision", self.float32_matmul_precision,
                     ("highest", "high", "medium"))
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
