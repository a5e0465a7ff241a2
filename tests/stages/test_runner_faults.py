"""The stage runner: a full disk and unexpected failures end up in the stage's log, with the path."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ssondo_train.stages.base import Stage, StageError, run_stage


def _cfg():
    return OmegaConf.create({"stage_name": "prepare", "prepare": {}, "data": {}, "force": False})


def _failing(exc: BaseException) -> Stage:
    def run(ctx):
        (ctx.out_dir / "part.bin").write_bytes(b"x")
        raise exc

    return Stage(name="prepare", run=run)


def test_a_full_disk_is_one_line_naming_the_file_and_logged(tmp_path: Path) -> None:
    target = tmp_path / "t" / "prepare" / "part.bin"
    stage = _failing(OSError(errno.ENOSPC, "No space left on device", str(target)))
    with pytest.raises(
        StageError,
        match=r"no space left on the device while stage 'prepare' .* was writing .*part\.bin \(\d+ MB free",
    ):
        run_stage(stage, _cfg(), tmp_path / "t")
    log = (tmp_path / "t" / "prepare" / "prepare.log").read_text()
    assert "no space left on the device" in log and str(target) in log
    assert not (tmp_path / "t" / "prepare" / "done.json").exists()


def test_an_unexpected_failure_is_written_to_the_stage_log_with_its_traceback(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        run_stage(_failing(ZeroDivisionError("boom")), _cfg(), tmp_path / "t")
    log = (tmp_path / "t" / "prepare" / "prepare.log").read_text()
    assert (
        "stage 'prepare' of run 't' failed" in log and "Traceback" in log and "ZeroDivisionError: boom" in log
    )
