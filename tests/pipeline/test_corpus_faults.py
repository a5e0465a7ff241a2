"""Nothing silently wrong with the corpus: a moved audio root stops precompute at start-up, a failure
rate above ``precompute.max_failure_rate`` stops it with the common reasons, and a clip whose audio or
teacher output is not finite is recorded as a failure and left out of the store whole."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from ssondo_train.data.manifest import (
    AudioRootError,
    ClipEntry,
    Manifest,
    check_audio_root,
    read_manifest,
    write_manifest,
)
from ssondo_train.store import open_store, read_failures
from ssondo_train.store.failures import FailureRecord, FailureTally, common_reasons
from ssondo_train.teachers.base import Teacher
from tests.pipeline.conftest import TINY_WINDOW, cli, write_tiny_corpus


def precompute_args(root: Path, *extra: str, batch_size: int = 8, workers: int = 1) -> list[str]:
    return [
        "stage=precompute",
        "run_name=t",
        f"paths.output_root={root}",
        "precompute.clips_per_shard=2",
        f"precompute.batch_size={batch_size}",
        f"precompute.num_workers={workers}",
        *TINY_WINDOW,
        *extra,
    ]


# ------------------------------------------------------------------------------------------ the audio root


def test_import_records_the_source_root_and_a_missing_root_names_it(tmp_path: Path) -> None:
    audio = tmp_path / "data" / "corpus2"
    audio.mkdir(parents=True)
    (audio / "a.wav").write_bytes(b"")
    path = write_manifest(
        tmp_path / "out" / "run" / "prepare" / "corpus.csv",
        Manifest(audio, [ClipEntry("a", "a.wav", 1.0, 16000)]),
        record_source=True,
    )
    assert path.read_text().splitlines()[:2] == [
        "# ssondo-manifest v1 root=../../../data/corpus2",
        f"# source_root={audio.resolve().as_posix()}",
    ]
    manifest = read_manifest(path)
    assert (
        manifest.root_text == "../../../data/corpus2" and manifest.source_root == audio.resolve().as_posix()
    )
    check_audio_root(manifest, path)  # in place: fine

    # The outputs move one level deeper: the relative root now points at a folder that does not exist.
    moved = tmp_path / "elsewhere" / "out" / "run" / "prepare" / "corpus.csv"
    moved.parent.mkdir(parents=True)
    shutil.copy(path, moved)
    broken = read_manifest(moved)
    with pytest.raises(AudioRootError) as err:
        check_audio_root(broken, moved)
    message = str(err.value)
    assert message.startswith(
        f"audio root {(tmp_path / 'elsewhere' / 'data' / 'corpus2').resolve()} not found"
    )
    assert f"(corpus.csv says root=../../../data/corpus2, relative to {moved.parent.resolve()})" in message
    assert f"the corpus was imported from {audio.resolve().as_posix()}, which still exists" in message
    # The root the message suggests is the right one.
    suggested = re.search(r"set root=(\S+) in the first line", message)[1]
    assert (moved.parent / suggested).resolve() == audio.resolve()


def test_a_root_that_exists_but_holds_none_of_the_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    clips = [ClipEntry(f"c{i}", f"c{i}.flac", 1.0, 16000) for i in range(200)]
    path = write_manifest(tmp_path / "corpus.csv", Manifest(tmp_path / "audio", clips))
    manifest = read_manifest(path)
    with pytest.raises(
        AudioRootError, match=r"none of the 50 audio files looked for exists under audio root"
    ):
        check_audio_root(manifest, path)
    (tmp_path / "audio" / "c100.flac").write_bytes(b"")  # one of the probed files: the folder is right
    check_audio_root(manifest, path)


@pytest.mark.slow
def test_moved_outputs_stop_precompute_at_start_up(tmp_path: Path) -> None:
    corpus = write_tiny_corpus(tmp_path / "corpus2").parent / "audio"
    first = tmp_path / "out"
    folder = ["data=folder", f"data.root={corpus}"]
    res = cli("stage=prepare", "run_name=t", f"paths.output_root={first}", *folder)
    assert res.returncode == 0, res.stderr[-3000:]
    # Move the outputs one level deeper: corpus.csv's relative root (../../../corpus2/audio) now misses.
    moved = tmp_path / "moved" / "out"
    moved.parent.mkdir()
    shutil.move(first, moved)

    res = cli(*precompute_args(moved, *folder), timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    prepare = (moved / "t" / "prepare").resolve()
    missing = (tmp_path / "moved" / "corpus2" / "audio").resolve()
    assert (
        f"error: audio root {missing} not found (corpus.csv says root=../../../corpus2/audio, relative to "
        f"{prepare}); the corpus was imported from {corpus.resolve().as_posix()}, which still exists: set "
        f"root=../../../../corpus2/audio in the first line of {prepare / 'corpus.csv'}"
    ) in res.stderr
    assert not (moved / "t" / "precompute" / "store").exists()


@pytest.mark.slow
def test_moved_audio_stops_precompute_at_start_up(tmp_path: Path) -> None:
    manifest = write_tiny_corpus(tmp_path / "corpus")
    shutil.move(tmp_path / "corpus" / "audio", tmp_path / "audio_moved")
    res = cli(*precompute_args(tmp_path / "out", f"precompute.manifest={manifest}"), timeout=120)
    assert res.returncode == 2, res.stderr[-3000:]
    missing = (tmp_path / "corpus" / "audio").resolve()
    assert (
        f"error: audio root {missing} not found (corpus.csv says root=audio, relative to "
        f"{manifest.parent.resolve()}); move the audio to {missing} or edit root= in the first line of "
        f"{manifest.resolve()}"
    ) in res.stderr
    assert not (tmp_path / "out" / "t" / "precompute" / "store").exists()


def test_prepare_names_a_missing_import_folder(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from ssondo_train.stages.base import StageError, run_stage
    from ssondo_train.stages.prepare import STAGE

    cfg = OmegaConf.create({"data": {"kind": "folder", "root": str(tmp_path / "gone")}, "seed": 0})
    with pytest.raises(StageError, match=r"^data.root=.*gone: audio folder .*gone not found; set data.root"):
        run_stage(STAGE, cfg, tmp_path / "runs" / "r")


# ------------------------------------------------------------------------------------------ failure rate


def test_failure_tally_counts_failures_not_policy_skips() -> None:
    def rec(i: int, reason: str) -> FailureRecord:
        return FailureRecord(f"c{i}", f"/a/c{i}.flac", reason, "x")

    tally = FailureTally(0.05)
    for _ in range(19):
        tally.add()
    tally.add(rec(19, "decode_error"))
    assert (tally.attempted, tally.failed, tally.rate) == (20, 1, 0.05)
    assert not tally.exceeded(20)  # 5 % is not more than 5 %
    tally.add(rec(20, "silent"))
    tally.add(rec(21, "too_short"))
    assert (tally.failed, tally.skipped) == (1, 2) and not tally.exceeded()
    tally.add(rec(22, "missing_file"))
    assert tally.exceeded(20) and not tally.exceeded(100)
    assert not FailureTally(1.0, attempted=2, failures=[rec(0, "x"), rec(1, "x")]).exceeded()
    with pytest.raises(ValueError, match="max_failure_rate must be in"):
        FailureTally(1.5)
    top = common_reasons([rec(0, "b"), rec(1, "a"), rec(2, "b"), rec(3, "c"), rec(4, "a"), rec(5, "d")])
    assert [(r.reason, r.count, r.example.clip_id) for r in top] == [
        ("a", 2, "c1"),
        ("b", 2, "c0"),
        ("c", 1, "c3"),
    ]


@pytest.mark.slow
def test_forty_percent_missing_files_stop_precompute(tmp_path: Path) -> None:
    manifest = write_tiny_corpus(tmp_path / "corpus")
    for i in range(0, 20, 2):  # 10 of the 24 good files
        (tmp_path / "corpus" / "audio" / f"clip{i:03d}.flac").unlink()
    out = tmp_path / "out"
    res = cli(*precompute_args(out, f"precompute.manifest={manifest}"))
    assert res.returncode == 2, res.stderr[-3000:]
    audio = (tmp_path / "corpus" / "audio").resolve()
    failures = out / "t" / "precompute" / "failures.rank0.jsonl"
    message = res.stderr.strip().splitlines()[-1]
    assert message.startswith(
        "error: precompute stopped: 11 of 26 clips failed (42.3%), more than "
        f"precompute.max_failure_rate=0.05 (5.0%). Most common: missing_file x10 (e.g. {audio}/clip000.flac: "
        f"file not found); decode_error x1 (e.g. {audio}/corrupt.wav: cannot decode"
    )
    assert message.endswith(
        f"All failures are listed in {failures}. Fix the audio and rerun (11 failed clip(s) are in shards "
        "already written, which a rerun keeps: after fixing their audio, delete "
        f"{out / 't' / 'precompute' / 'store'} to redo them), or accept these failures with "
        "precompute.max_failure_rate=0.43 (1.0 turns the check off)"
    )
    assert not (out / "t" / "precompute" / "done.json").exists()
    reasons = sorted(r.reason for r in read_failures([failures]))
    assert reasons == ["decode_error"] + ["missing_file"] * 10 + ["silent"]


@pytest.mark.slow
def test_tiny_corpus_with_two_bad_clips_still_succeeds(tmp_path: Path) -> None:
    # 1 corrupt + 1 silent of 26: the silent clip is skipped by policy, so 1 failure (3.8 %) is under 5 %.
    manifest = write_tiny_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    res = cli(*precompute_args(out, f"precompute.manifest={manifest}"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "precompute: 24 clips" in res.stdout
    assert (
        "failed clips: 1 (3.8%, limit precompute.max_failure_rate=0.05), skipped by policy (silent or too "
        "short): 1"
    ) in res.stdout
    counts = json.loads((out / "t" / "precompute" / "done.json").read_text())["counts"]
    assert counts["stored_clips"] == 24 and counts["failed_clips"] == 2
    assert counts["failure_rate"] == pytest.approx(1 / 26, abs=1e-6) and counts["policy_skipped_clips"] == 1


# ------------------------------------------------------------------------------ in-process, fake teacher


class LoudIsNaNTeacher(Teacher):
    """A tiny stand-in teacher: 8 statistics of each window, NaN for windows whose peak is above 0.9."""

    name = "loud_is_nan"
    sample_rate = 16000
    embed_dim = 8
    num_layers = 1

    def frames(self, wav: torch.Tensor) -> torch.Tensor:
        return wav.unfold(1, 2000, 2000)

    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        out = self.frames(wav).abs().mean(-1)  # (B, 8)
        out[wav.abs().amax(1) > 0.9] = float("nan")
        return out


@pytest.fixture
def run_precompute(compose, monkeypatch):
    """Run stage=precompute in this process with :class:`LoudIsNaNTeacher` (keyword overrides on top)."""
    from omegaconf import open_dict

    from ssondo_train.stages.base import run_stage
    from ssondo_train.stages.precompute import STAGE

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr("ssondo_train.teachers.build_teacher", lambda name, **kw: LoudIsNaNTeacher())

    def _run(root: Path, manifest: Path, **precompute):
        # batch_size=2: a clip's windows span several teacher batches
        args = precompute_args(root, f"precompute.manifest={manifest}", batch_size=2, workers=0)
        cfg = compose([*args, "precompute.device=cpu"])
        with open_dict(cfg):
            for key, value in precompute.items():
                cfg.precompute[key] = value
        return run_stage(STAGE, cfg, root / "t")

    return _run


def test_non_finite_teacher_output_and_audio_are_recorded_and_left_out(
    tmp_path: Path, run_precompute
) -> None:
    manifest = write_tiny_corpus(tmp_path / "corpus", n_clips=6, bad=False)
    audio = tmp_path / "corpus" / "audio"
    # 3 s at 16 kHz: windows 0 and 2 are ordinary, window 1 is loud (the teacher returns NaN for it).
    x = 0.4 * np.sin(2 * np.pi * 300 * np.arange(48000) / 16000).astype(np.float32)
    x[16000:32000] *= 2.4
    sf.write(str(audio / "loud.flac"), x, 16000)
    nan_audio = 0.3 * np.ones(16000, np.float32)
    nan_audio[100] = np.nan
    sf.write(str(audio / "nan.wav"), nan_audio, 16000, subtype="FLOAT")
    with open(manifest, "a") as f:
        f.write("loud,loud.flac,3.0,16000,1,,,,test,CC0-1.0\nnan,nan.wav,1.0,16000,1,,,,test,CC0-1.0\n")

    # 2 failures of 8 clips (25 %) is more than the default 5 %: accept them here.
    done = run_precompute(tmp_path / "out", manifest, max_failure_rate=0.5)

    records = {
        r.clip_id: r for r in read_failures([tmp_path / "out" / "t" / "precompute" / "failures.rank0.jsonl"])
    }
    assert set(records) == {"loud", "nan"}
    assert records["loud"].reason == "teacher_non_finite"
    assert (
        records["loud"].error.startswith("teacher output not finite")
        and "window(s) 1 of 3" in records["loud"].error
    )
    assert (records["nan"].reason, records["nan"].error) == (
        "audio_non_finite",
        "audio contains NaN or Inf samples",
    )
    store = open_store(tmp_path / "out" / "t" / "precompute" / "store")
    assert sorted(set(store.clip_ids())) == [f"clip{i:03d}" for i in range(6)]  # no window of "loud"
    _, emb = store.read_all_embeddings()
    assert np.isfinite(emb).all()
    assert done["counts"]["failures_by_reason"] == {"audio_non_finite": 1, "teacher_non_finite": 1}


def test_failure_rate_is_checked_while_running_and_a_higher_limit_lets_the_rerun_finish(
    tmp_path: Path, run_precompute, monkeypatch
) -> None:
    from ssondo_train.stages.base import StageError

    monkeypatch.setattr("ssondo_train.stages.precompute.EARLY_CHECK_MIN_CLIPS", 10)
    manifest = write_tiny_corpus(tmp_path / "corpus")
    for i in range(12, 24):  # the second half of the corpus is gone
        (tmp_path / "corpus" / "audio" / f"clip{i:03d}.flac").unlink()
    out = tmp_path / "out"
    with pytest.raises(
        StageError, match=r"^precompute stopped after 13 of 26 clips: 1 of them failed \(7\.7%\)"
    ):
        run_precompute(out, manifest)
    store = out / "t" / "precompute" / "store"
    assert len(list((store / "_commits").glob("*.json"))) == 6  # clips 0-11; the shard of clip 12 is not
    assert not (out / "t" / "precompute" / "done.json").exists()

    done = run_precompute(out, manifest, max_failure_rate=1.0)
    assert done["counts"]["stored_clips"] == 12 and done["counts"]["failed_clips"] == 14
    assert done["counts"]["failures_by_reason"] == {"decode_error": 1, "missing_file": 12, "silent": 1}
