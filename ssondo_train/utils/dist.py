"""Rank and world size of the current process, from torchrun, SLURM or Lightning environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info(env: dict[str, str] | None = None) -> DistInfo:
    """Read (rank, world size, local rank): torchrun/Lightning ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` first,
    then SLURM ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``; a single process otherwise."""
    env = dict(os.environ) if env is None else env
    for rank_key, size_key, local_key in (
        ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
        ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
    ):
        if rank_key in env and size_key in env:
            rank, size = int(env[rank_key]), int(env[size_key])
            if not 0 <= rank < size:
                raise ValueError(f"{rank_key}={rank} is outside [0, {size_key}={size})")
            return DistInfo(rank, size, int(env.get(local_key, 0)))
    return DistInfo()


def is_secondary_process(env: dict[str, str] | None = None) -> bool:
    """True in every process of a distributed job but the global rank 0 (torchrun, SLURM tasks, or the
    processes Lightning starts for DDP, which set ``LOCAL_RANK`` / ``NODE_RANK`` only)."""
    env = dict(os.environ) if env is None else env
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        try:
            if int(env.get(key, "0") or 0) > 0:
                return True
        except ValueError:
            continue
    return False
