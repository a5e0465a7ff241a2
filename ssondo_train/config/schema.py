"""Typed schemas of the config groups, checked at start-up.

Each group's YAML is merged into its dataclass with OmegaConf (unknown keys and wrong types fail, naming the
key), then ``__post_init__`` checks allowed values. A wrong value stops the run before any work starts, with a
message that names the key and the allowed values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """The composed configuration is invalid."""


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def check_range(
    key: str, value: float, low: float | None = None, high: float | None = None, low_open: bool = False
) -> None:
    if value is None:
        raise ConfigError(f"{key} must be set")
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(f"{key}={value!r} must be {'>' if low_open else '>='} {low}")
    if high is not None and value > high:
        raise ConfigError(f"{key}={value!r} must be <= {high}")


@dataclasses.dataclass
class PathsConfig:
    output_root: str = "outputs"


# Group name -> schema. Groups without a schema here are validated by the component that reads them.
GROUP_SCHEMAS: dict[str, type] = {
    "paths": PathsConfig,
}


def register_schema(group: str):
    """Class decorator: the dataclass is the schema of config group ``group``."""

    def wrap(cls: type) -> type:
        GROUP_SCHEMAS[group] = cls
        return cls

    return wrap


def to_schema(group: str, node: DictConfig, schema: type) -> Any:
    """Merge ``node`` into ``schema`` and instantiate it (running ``__post_init__`` checks)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        msg = str(err).splitlines()[0]
        key = getattr(err, "full_key", None) or getattr(err, "key", None)
        raise ConfigError(f"invalid config group '{group}' (key {group}.{key}): {msg}") from None
    except ValueError as err:  # __post_init__ checks (ConfigError is a ValueError)
        raise ConfigError(f"invalid config group '{group}': {err}") from None


def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Check every group that has a schema; return the typed objects by group name."""
    # Import the modules that register their schemas.
    from ssondo_train.config import groups  # noqa: F401

    if not str(cfg.get("run_name") or "").strip() or "/" in str(cfg.run_name):
        raise ConfigError(f"run_name={cfg.get('run_name')!r} must be a non-empty name without '/'")
    # Every stage's section is composed in full (configs/config.yaml lists them all), so all are checked:
    # a wrong distill value fails at once, even on a probe command that addresses that variant.
    typed = {}
    for group, schema in GROUP_SCHEMAS.items():
        if group in cfg and cfg[group] is not None:
            typed[group] = to_schema(group, cfg[group], schema)
    return typed
