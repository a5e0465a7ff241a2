"""What a stage's result depends on (its *identity*), and the readable names of variants.

A stage's identity is the resolved part of the configuration its result depends on: its sections minus the
keys that only say how it runs (devices, workers, batch size of inference, logging). Two commands with the
same identity address the same result, whatever else they say; a different identity is another variant.

Variant names are derived from what differs from the run's *base* configuration, recorded by precompute in
``run.json``: a changed config-group choice reads ``group=option`` (``student=dymn``), a changed value reads
``key=value`` (``distill.lr=0.002``), joined with commas in a fixed order (``student=dymn,sampler=random``);
no difference reads ``default``. ``variant=<name>`` on the command line names a variant explicitly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ssondo_train.runs.layout import DEFAULT_VARIANT, RESERVED_VARIANT_NAMES, flatten

# Config sections each stage's result depends on.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("data",),
    "precompute": ("precompute", "teacher", "store"),
    "cluster": ("cluster",),
    "distill": ("distill", "student", "loss", "sampler", "trainer", "seed"),
    "probe": ("probe", "teacher", "student", "seed"),
    "export": ("export",),
}
# Keys that change how a stage runs, never what it produces: excluded from identities, so a resumed or
# re-launched job may change them (more GPUs, other workers) and still address the same result.
EXECUTION_KEYS = frozenset(
    {
        "precompute.batch_size",
        "precompute.device",
        "precompute.num_workers",
        "precompute.merge_timeout_s",
        "precompute.max_failure_rate",
        "trainer.accelerator",
        "trainer.devices",
        "trainer.num_nodes",
        "trainer.strategy",
        "trainer.num_workers",
        "trainer.log_every_n_steps",
        "trainer.deterministic",
        "trainer.channels_last",
        "distill.log_indices",
        "distill.resume_on_force",
        "distill.save_top_k",
        "distill.checkpoint_every_n_steps",
        # a healthy run never meets them; a run stopped by a NaN continues under another policy
        "distill.on_nonfinite",
        "distill.max_nonfinite_skips",
        "probe.batch_size",
        "probe.device",
        "probe.num_workers",
        "probe.variants",
        "probe.paper_reference",
        # how much of the store is re-hashed when it is opened: the store itself is the same
        "store.verify",
        # where the teacher's weights are read from: the store records their sha256, which is what counts
        "teacher.checkpoint_path",
        "teacher.model_path",
    }
)
# Config groups whose choice is shown as ``group=option`` in variant names, in this order.
NAMED_GROUPS: tuple[str, ...] = ("student", "sampler", "loss", "trainer")
# Sections that define a distill variant (recorded in run.json as the run's base).
VARIANT_SECTIONS: tuple[str, ...] = ("distill", "student", "loss", "sampler", "trainer", "seed", "cluster")
CLUSTER_LOSSES = frozenset({"cluster_aware", "neg_clusters", "hybrid"})
MAX_NAME_LENGTH = 96
_NAME_OK = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,=:@-]*$")


class VariantError(ValueError):
    """An invalid explicit variant name."""


def _plain(node: Any) -> Any:
    """A resolved plain container of an OmegaConf node (plain values pass through)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def without_execution_keys(section: str, value: Any) -> Any:
    """``value`` (a section's mapping) without the keys of :data:`EXECUTION_KEYS`; other values unchanged."""
    if not isinstance(value, Mapping):
        return value
    return {k: v for k, v in value.items() if f"{section}.{k}" not in EXECUTION_KEYS}


def needs_clusters(cfg: Any) -> bool:
    """True when the student's sampling or loss uses the k-means clusters of the store."""
    return str(cfg.sampler.name) == "bds" or str(cfg.loss.name) in CLUSTER_LOSSES


def identity(cfg: Any, stage: str) -> dict[str, Any]:
    """The part of ``cfg`` that ``stage``'s result depends on, resolved, execution keys removed.

    A distill variant also depends on its clusters when its sampler or loss uses them.
    """
    sections = list(STAGE_SECTIONS[stage])
    if stage == "distill" and needs_clusters(cfg):
        sections.append("cluster")
    return {s: without_execution_keys(s, _plain(cfg[s])) for s in sections if s in cfg}


def normalized(ident: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded identity without the keys that count as execution keys today (a result recorded before a
    key became one still matches)."""
    return {s: without_execution_keys(s, v) for s, v in ident.items()}


def identity_hash(ident: Mapping[str, Any]) -> str:
    blob = json.dumps(normalized(ident), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def base_record(cfg: Any, choices: Mapping[str, Any] | None) -> dict[str, Any]:
    """What ``run.json`` keeps of the configuration that built the store: every section a variant can change
    (execution keys removed) and the chosen config-group options."""
    return {
        "base": {s: without_execution_keys(s, _plain(cfg[s])) for s in VARIANT_SECTIONS if s in cfg},
        "choices": {g: (choices or {}).get(g) for g in NAMED_GROUPS if (choices or {}).get(g)},
    }


# --- differences and names
class _Absent:
    def __repr__(self) -> str:
        return "absent"


ABSENT: Any = _Absent()


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every leaf that differs (a missing key: ``ABSENT``), sorted."""
    a, b = flatten(old), flatten(new)
    keys = sorted(set(a) | set(b))
    return [(k, a.get(k, ABSENT), b.get(k, ABSENT)) for k in keys if a.get(k, ABSENT) != b.get(k, ABSENT)]


def describe_differences(diffs: Sequence[tuple[str, Any, Any]], old: str, new: str, limit: int = 12) -> str:
    """``key: old -> new`` lines for messages (at most ``limit``, then a count)."""
    lines = [f"{k}: {_show(a)} ({old}) -> {_show(b)} ({new})" for k, a, b in diffs[:limit]]
    if len(diffs) > limit:
        lines.append(f"... and {len(diffs) - limit} more")
    return "; ".join(lines)


def _show(value: Any) -> str:
    return "absent" if value is ABSENT else json.dumps(value, default=str)


def _token_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return ":".join(_token_value(v) for v in value)
    if isinstance(value, Mapping):
        return ":".join(f"{k}-{_token_value(v)}" for k, v in sorted(value.items()))
    text = str(value)
    if "/" in text:  # a path: its file name reads better than an escaped path
        text = text.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.:@-]", "_", text)


def variant_tokens(
    current: Mapping[str, Any],
    base: Mapping[str, Any],
    choices: Mapping[str, Any] | None = None,
    base_choices: Mapping[str, Any] | None = None,
    option_defaults: Callable[[str, str], Mapping[str, Any]] | None = None,
) -> list[str]:
    """The name parts of ``current`` (an identity) against the run's ``base``.

    A key that only ``base`` has is ignored (e.g. the clusters of a random-sampling variant). For a config
    group whose choice differs from the base's, one ``group=option`` token stands for the group, plus
    ``key=value`` tokens for values that differ from both the base and that option's own file.
    """
    cur, ref = flatten(current), flatten(base)
    switched = {
        g
        for g in NAMED_GROUPS
        if choices and base_choices and choices.get(g) and choices.get(g) != base_choices.get(g)
    }
    groups: set[str] = set()
    leaves: list[str] = []
    defaults_cache: dict[str, dict[str, Any]] = {}
    for key in sorted(cur):
        value = cur[key]
        if key in ref and ref[key] == value:
            continue
        group = key.split(".", 1)[0]
        if group in switched:
            groups.add(group)
            if option_defaults is not None:
                if group not in defaults_cache:
                    defaults_cache[group] = flatten(
                        {group: dict(option_defaults(group, str(choices[group])))}
                    )
                if key in defaults_cache[group] and defaults_cache[group][key] == value:
                    continue  # explained by the option itself
            else:
                continue
        leaves.append(f"{key}={_token_value(value)}")
    heads = [f"{g}={_token_value(choices[g])}" for g in NAMED_GROUPS if g in groups]  # type: ignore[index]
    return heads + leaves


def variant_name(tokens: Sequence[str], ident: Mapping[str, Any] | None = None) -> str:
    """``default``, or the tokens joined with commas; a long name keeps its first tokens plus a hash."""
    if not tokens:
        return DEFAULT_VARIANT
    name = ",".join(tokens)
    if len(name) <= MAX_NAME_LENGTH:
        return name
    digest = identity_hash(ident or {"tokens": list(tokens)})[:8]
    kept: list[str] = []
    for tok in tokens:
        if len(",".join([*kept, tok])) > MAX_NAME_LENGTH - 10:
            break
        kept.append(tok)
    return f"{','.join(kept)}~{digest}" if kept else f"v~{digest}"


def check_explicit_name(name: str) -> str:
    """Validate a ``variant=`` name (one folder name, no ``+``: that joins compared variants)."""
    name = str(name).strip()
    if not _NAME_OK.match(name) or len(name) > 120 or name in RESERVED_VARIANT_NAMES:
        raise VariantError(
            f"variant={name!r} is not a usable name: use letters, digits and _ . , = : @ - (no '/', '+' or "
            f"spaces, at most 120 characters, not {', '.join(sorted(RESERVED_VARIANT_NAMES))})"
        )
    return name


def option_defaults_from(config_dir: str | Path) -> Callable[[str, str], Mapping[str, Any]]:
    """``(group, option) -> the option file's values`` read from ``configs/<group>/<option>.yaml``."""
    from omegaconf import OmegaConf

    def load(group: str, option: str) -> Mapping[str, Any]:
        path = Path(config_dir) / group / f"{option}.yaml"
        if not path.is_file():
            return {}
        node = OmegaConf.load(path)
        data = OmegaConf.to_container(node, resolve=False)
        assert isinstance(data, dict)
        data.pop("defaults", None)
        return without_execution_keys(group, data)

    return load


def derive_name(
    cfg: Any,
    stage: str,
    run_record: Mapping[str, Any] | None,
    choices: Mapping[str, Any] | None,
    option_defaults: Callable[[str, str], Mapping[str, Any]] | None = None,
) -> str:
    """The variant name ``cfg`` addresses for a variant stage (``cluster`` or the distill variant behind
    ``distill``, ``probe`` and ``export``): explicit ``variant=``, else derived against the run's base."""
    if stage != "cluster" and cfg.get("variant"):
        return check_explicit_name(cfg.variant)
    if run_record is None:
        return DEFAULT_VARIANT
    base = run_record.get("base", {})
    if stage == "cluster":
        current = identity(cfg, "cluster")
        base = {"cluster": base.get("cluster", {})}
    else:
        current = identity(cfg, "distill")
    tokens = variant_tokens(current, base, choices, run_record.get("choices"), option_defaults)
    return variant_name(tokens, current)
