from __future__ import annotations

import json
from pathlib import Path

from ssondo_train.store import FailureLog, read_failures


def test_failure_log_dedupe_and_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "failures.rank0.jsonl"
    with FailureLog(path) as log:
        log.append("a", "/d/a.wav", "decode", ValueError("bad header"))
        log.append("b", "/d/b.wav", "too_short", "0.4 s")
    # resumed run logs "a" again (different message) and crashes mid-line
    with FailureLog(path) as log:
        log.append("a", "/d/a.wav", "decode", "bad header again")
    with open(path, "a") as f:
        f.write('{"clip_id": "c", "pa')
    with FailureLog(path) as log:  # next run appends after the torn line, on a fresh line
        log.append("d", "/d/d.wav", "teacher", "oom")
    recs = FailureLog(path).read()
    assert [r.clip_id for r in recs] == ["a", "b", "d"]
    assert recs[0].error == "bad header again" and recs[0].reason == "decode"
    assert recs[1].error == "0.4 s"
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["error"] == "ValueError: bad header"
    assert FailureLog(path).clip_ids() == {"a", "b", "d"}


def test_read_failures_merges_ranks(tmp_path: Path) -> None:
    with FailureLog(tmp_path / "r0.jsonl") as a, FailureLog(tmp_path / "r1.jsonl") as b:
        a.append("x", "x.wav", "decode", "e1")
        b.append("y", "y.wav", "decode", "e2")
        b.append("x", "x.wav", "decode", "e3")
    recs = read_failures([tmp_path / "r0.jsonl", tmp_path / "r1.jsonl", tmp_path / "missing.jsonl"])
    assert [(r.clip_id, r.error) for r in recs] == [("x", "e3"), ("y", "e2")]
