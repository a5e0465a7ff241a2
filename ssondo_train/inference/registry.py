"""Published S-SONDO models and probe heads on the Hugging Face Hub, and the one place that downloads them.

Names, files and repository are those of the ``ssondo`` 0.3.1 package, so a name means the same file in
both clients. Only ``matpac-mobilenetv3`` and the heads were published at the time of writing; the other
names resolve to files that may not exist yet.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

HF_REPO_ID = "mohammedali2501/ssondo"


@dataclass(frozen=True)
class RegistryEntry:
    """One downloadable file of :data:`HF_REPO_ID`."""

    filename: str
    description: str
    n_classes: int | None = None


MODELS: dict[str, RegistryEntry] = {
    f"{teacher}-{student}": RegistryEntry(
        f"{teacher}_{student}.ckpt",
        f"{student_label} distilled from {teacher_label} (cosine similarity, 50 clusters)",
    )
    for teacher, teacher_label in (("matpac", "MATPAC++"), ("m2d", "M2D"))
    for student, student_label in (("mobilenetv3", "MobileNetV3"), ("dymn", "DyMN"), ("eres2net", "ERes2Net"))
}

HEADS: dict[str, RegistryEntry] = {
    name: RegistryEntry(f"heads/{name}.pth", description, n_classes)
    for name, n_classes, description in (
        ("gtzan", 10, "Music genre (10 classes)"),
        ("openmic", 20, "Instrument recognition (20 classes)"),
        ("nsynth", 11, "Instrument family (11 classes)"),
        ("esc50", 50, "Environmental sound (50 classes)"),
        ("us8k", 10, "Urban sound (10 classes)"),
        ("magna-tag-a-tune", 50, "Music auto-tagging (50 tags)"),
        ("fsd50k", 200, "Sound events (200 classes)"),
    )
}


def list_models() -> dict[str, str]:
    """Registry names of the distilled students -> description (the six names of ssondo 0.3.1)."""
    return {name: entry.description for name, entry in MODELS.items()}


def list_heads() -> dict[str, str]:
    """Names of the pretrained linear probes (on matpac-mobilenetv3 embeddings) -> description."""
    return {name: entry.description for name, entry in HEADS.items()}


class HubDownloadError(OSError):
    """A registry file could not be fetched from the Hub or found in the local cache."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _cache_dir() -> str | None:
    # huggingface_hub reads these once at import; reading them here honours changes made afterwards
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def hub_download(filename: str, repo_id: str = HF_REPO_ID, revision: str | None = None) -> Path:
    """Path of ``filename`` from ``repo_id``: the local Hugging Face cache, downloading it if needed.

    With ``HF_HUB_OFFLINE=1`` only the cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
    ``~/.cache/huggingface/hub``) is used. These variables and ``HF_ENDPOINT`` are read at call time.

    Raises:
        ImportError: ``huggingface_hub`` is not installed.
        HubDownloadError: the file is neither cached nor downloadable; the message says which of
            ``HF_HUB_OFFLINE`` or the network is the likely cause.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:  # pragma: no cover - it is a dependency
        raise ImportError("downloading registry models needs `pip install huggingface_hub`") from err
    offline = _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")
    try:
        local = hf_hub_download(
            repo_id=repo_id,
            filename=filename,
            revision=revision,
            cache_dir=_cache_dir(),
            local_files_only=offline,
            endpoint=os.environ.get("HF_ENDPOINT") or None,
        )
    except Exception as err:  # the hub raises many types (HTTP, connection, offline, missing entry)
        if offline:
            why = (
                "HF_HUB_OFFLINE=1 is set and the file is not in the local Hugging Face cache "
                f"({_cache_dir() or '~/.cache/huggingface/hub'}); unset HF_HUB_OFFLINE on a machine with "
                "network access to download it once"
            )
        else:
            why = (
                "the download failed: check the network connection (or proxy settings) and that the file "
                "is published; on a machine without network set HF_HUB_OFFLINE=1 and pre-fill the cache"
            )
        raise HubDownloadError(
            f"cannot get '{filename}' from the Hugging Face Hub repository '{repo_id}': {why}. "
            f"You can also pass a local checkpoint path instead of a registry name. "
            f"({type(err).__name__}: {err})"
        ) from err
    log.info("resolved %s/%s -> %s", repo_id, filename, local)
    return Path(local)
