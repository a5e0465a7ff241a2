"""``stage=prepare``: build the offline demo corpus and its four probe tasks, or import a corpus.

Writes ``corpus.csv`` (+ ``corpus/``), ``tasks/<task>.csv`` (+ ``tasks/<task>/``) and ``provenance.json``
into the stage folder; later stages find them through ``ctx.layout`` (``corpus_manifest()``). The
rendering lives in ``ssondo_train.data.demo_corpus``; this file only maps the config onto it.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import OmegaConf

from ssondo_train.data.demo_corpus import DemoConfig, build_demo, summarize
from ssondo_train.data.importers import CorpusImportError, import_corpus
from ssondo_train.stages.base import Stage, StageContext, StageError

log = logging.getLogger(__name__)


def run(ctx: StageContext) -> dict[str, Any]:
    """Build the demo corpus (``data.kind=demo``) or import a corpus (``folder``, ``audioset``) into
    ``ctx.out_dir``; return the summary that lands in ``done.json``.

    Raises:
        StageError: the import is misconfigured or finds no audio (a missing ``data.root`` is named).
    """
    data = OmegaConf.to_container(ctx.cfg.data, resolve=True)
    assert isinstance(data, dict)
    if data.get("kind", "demo") != "demo":
        try:
            summary = import_corpus(data, ctx.out_dir)
        except CorpusImportError as err:
            raise StageError(str(err)) from None
        log.info("prepare: imported %s corpus: %s", data["kind"], summary["corpus"])
        return summary
    cfg = DemoConfig.from_mapping(data)
    result = build_demo(cfg, cfg.seed, ctx.out_dir)
    summary = summarize(result)
    corpus = summary["corpus"]
    log.info(
        "prepare: corpus %d clips (%.2f h) %s in %.0f s",
        corpus["clips"],
        corpus["hours"],
        corpus["sources"],
        result.seconds,
    )
    for name, task in summary["tasks"].items():
        log.info("prepare: task %s: %d classes, splits %s", name, task["classes"], task["splits"])
    return summary


STAGE = Stage(
    name="prepare",
    run=run,
    description="build the offline demo corpus and probe tasks",
)
