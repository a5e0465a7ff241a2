"""Where the Hydra config tree lives (``configs/`` at the top of the repository)."""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
