"""The offline demo corpus: planning rules, MIDI writer, disjointness, and a small deterministic build."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

from ssondo_train.data import demo_corpus as dc
from ssondo_train.data.manifest import read_manifest
from ssondo_train.utils.io import sha256_file

SMALL = {
    "workers": 0,
    "fluidsynth_batch": 16,
    "job_size": 8,
    "corpus": {"gm": 24, "espeak": 10, "ktuberling": 6, "sonic_pi_max": 4},
    "tasks": {
        "instrument_family": {"programs_per_family": 1, "train_per_program": 3, "test_per_program": 1},
        "spoken_digits": {"train_voices": 1, "valid_voices": 1, "test_voices": 1, "repeats": 1},
        "ktuberling_language": {"max_per_class": 3},
        "sonic_pi_category": {"max_per_class": 3},
    },
}


def _assets_available() -> bool:
    try:
        dc.check_assets(dc.DemoAssets())
    except dc.DemoBuildError:
        return False
    return True


needs_assets = pytest.mark.skipif(
    not _assets_available(), reason="Debian packages of the demo corpus are missing"
)


# ------------------------------------------------------------------------------------- no packages needed


def test_midi_writer_layout() -> None:
    events = [(0.5, bytes([0x90, 60, 100])), (0.0, bytes([0xC0, 5])), (1.2, bytes([0x80, 60, 0]))]
    data = dc.midi_bytes(events)
    # format 0, 1 track, 1000 ticks per quarter
    assert data[:4] == b"MThd" and data[8:14] == bytes([0, 0, 0, 1, 0x03, 0xE8])
    assert data[14:18] == b"MTrk"
    track = data[22:]
    assert int.from_bytes(data[18:22], "big") == len(track)
    # tempo, program change at 0, note-on after 500 ticks (VLQ 0x83 0x74), note-off 700 later, end of track
    assert track == (
        b"\x00\xff\x51\x03\x0f\x42\x40"
        + b"\x00\xc0\x05"
        + b"\x83\x74\x90\x3c\x64"
        + b"\x85\x3c\x80\x3c\x00"
        + b"\x00\xff\x2f\x00"
    )


def test_vlq() -> None:
    assert dc._vlq(0) == b"\x00"
    assert dc._vlq(127) == b"\x7f"
    assert dc._vlq(128) == b"\x81\x00"
    assert dc._vlq(0x0FFFFFFF) == b"\xff\xff\xff\x7f"


def test_missing_package_names_the_apt_line(tmp_path: Path) -> None:
    assets = dc.DemoAssets(
        fluidsynth="no-such-fluidsynth-binary", timgm6mb=str(tmp_path / "none.sf2"), ktuberling=str(tmp_path)
    )
    with pytest.raises(dc.DemoBuildError) as err:
        dc.check_assets(assets)
    msg = str(err.value)
    assert "apt-get install -y --no-install-recommends fluidsynth timgm6mb-soundfont" in msg
    assert "ktuberling-data" not in msg.split("apt-get")[1]


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match=r"data\.corpus\.gmm"):
        dc.DemoConfig.from_mapping({"corpus": {"gmm": 3}})
    with pytest.raises(ValueError, match="audio_format"):
        dc.DemoConfig.from_mapping({"audio_format": "mp3"})
    with pytest.raises(ValueError, match="programs_per_family"):
        dc.DemoConfig.from_mapping({"tasks": {"instrument_family": {"programs_per_family": 9}}})
    cfg = dc.DemoConfig.from_mapping({"corpus": {"gm": 5}, "tasks": {"spoken_digits": {"repeats": 3}}})
    assert (cfg.corpus.gm, cfg.corpus.espeak, cfg.tasks.spoken_digits.repeats) == (5, 850, 3)


def test_shipped_config_matches_the_defaults() -> None:
    shipped = OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[2] / "configs/data/demo.yaml"))
    assert dc.DemoConfig.from_mapping(shipped) == dc.DemoConfig()


def test_split_counts() -> None:
    assert dc._split_counts(80, 0.2, 0.2) == (48, 16, 16)
    assert dc._split_counts(3, 0.2, 0.2) == (1, 1, 1)
    assert dc._split_counts(8, 0.2, 0.2) == (4, 2, 2)
    with pytest.raises(dc.DemoBuildError):
        dc._split_counts(2, 0.2, 0.2)


def test_assert_disjoint_catches_a_shared_source() -> None:
    corpus = dc.PlannedSet("corpus", [dc.PlannedClip("c1", "c1.flac", (), "", "espeak", ("voice:en-us+m3",))])
    task = dc.PlannedSet(
        "digits", [dc.PlannedClip("t1", "t1.flac", ("one",), "train", "espeak", ("voice:en-us+m3",))]
    )
    with pytest.raises(dc.DemoBuildError, match="voice:en-us\\+m3"):
        dc.assert_disjoint(corpus, [task])
    task.clips[0] = dc.PlannedClip("c1", "t1.flac", ("one",), "train", "espeak", ("voice:en-us+f2",))
    with pytest.raises(dc.DemoBuildError, match="clip ids"):
        dc.assert_disjoint(corpus, [task])


def test_probe_pitches_leave_room_for_every_program() -> None:
    for family in dc.PROBE_FAMILIES:
        for offset in range(8):
            program = dc.GM_FAMILIES.index(family) * 8 + offset
            pitches = dc._probe_pitches(program)
            assert len(pitches) >= 12, program
            assert all(p % dc.PROBE_PITCH_MODULUS == 0 for p in pitches)


# ------------------------------------------------------------------------------------------- planning


@pytest.fixture(scope="module")
def inventory() -> dc.DemoInventory:
    return dc.load_inventory(dc.DemoAssets())


@needs_assets
def test_small_plan_is_deterministic_and_disjoint(inventory: dc.DemoInventory) -> None:
    cfg = dc.DemoConfig.from_mapping(SMALL)
    corpus, tasks = dc.plan_demo(cfg, 7, inventory)
    corpus2, tasks2 = dc.plan_demo(cfg, 7)  # fresh inventory: same plan
    assert corpus.clips == corpus2.clips and [t.clips for t in tasks] == [t.clips for t in tasks2]
    assert corpus.speech == corpus2.speech and dict(corpus.gm) == dict(corpus2.gm)
    other, _ = dc.plan_demo(cfg, 8, inventory)
    assert other.speech != corpus.speech

    assert [t.name for t in tasks] == list(dc.TASK_NAMES)
    reserved = set().union(*(t.keys() for t in tasks))
    assert not corpus.keys() & reserved
    assert len(corpus.clips) == 24 + 10 + 6 + 4
    # The corpus never plays a probe pitch of a probe program on TimGM6mb.
    inst = tasks[0]
    probe_programs = {k.split(":")[2] for k in inst.keys()}
    for key in corpus.keys():
        if key.startswith("gm:TimGM6mb:") and key.split(":")[2] in probe_programs:
            assert key not in reserved
    # Instrument task: TimGM6mb train/valid, FluidR3Mono test, 10 families.
    assert {c.source for c in inst.clips if c.split == "test"} == {"gm_fluidr3mono"}
    assert {c.source for c in inst.clips if c.split != "test"} == {"gm_timgm6mb"}
    assert len({c.labels for c in inst.clips}) == 10
    # Spoken digits: each voice in exactly one split, and never in the corpus.
    split_of_voice: dict[str, set[str]] = defaultdict(set)
    for c in tasks[1].clips:
        split_of_voice[c.keys[0]].add(c.split)
    assert len(split_of_voice) == 3 and all(len(s) == 1 for s in split_of_voice.values())
    corpus_voices = {k for k in corpus.keys() if k.startswith("voice:")}
    assert corpus_voices and not corpus_voices & set(split_of_voice)
    # Language task: the 13 ktuberling languages with >= 70 distinct recordings.
    assert len({c.labels for c in tasks[2].clips}) == 13
    assert {c.split for c in tasks[3].clips} == {"train", "valid", "test"}


# -------------------------------------------------------------------------------------- small build


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_builds(
    tmp_path_factory: pytest.TempPathFactory, inventory: dc.DemoInventory
) -> tuple[Path, Path, dict]:
    """The small demo built twice: in-process through the stage runner, and with a pool of 2 workers."""
    from ssondo_train.stages.base import run_stage
    from ssondo_train.stages.prepare import STAGE

    base = tmp_path_factory.mktemp("demo")
    cfg = OmegaConf.create({"data": {**SMALL, "seed": 3}})
    done = run_stage(STAGE, cfg, base / "run_a")
    out_b = base / "run_b" / "prepare"
    dc.build_demo(dc.DemoConfig.from_mapping({**SMALL, "workers": 2}), 3, out_b, inventory)
    return base / "run_a" / "prepare", out_b, done


@needs_assets
@pytest.mark.slow
def test_small_build_is_identical_across_runs_and_worker_counts(small_builds) -> None:
    out_a, out_b, _ = small_builds
    digest_a = _tree_digest(out_a)
    runner_files = ("done.json", "config.yaml", "prepare.log", ".lock", "started.json")
    for stage_file in runner_files:  # the stage runner's own files
        digest_a.pop(stage_file)
    assert digest_a == _tree_digest(out_b)
    assert "corpus.csv" in digest_a and "tasks/spoken_digits.csv" in digest_a


@needs_assets
@pytest.mark.slow
def test_small_build_manifests_audio_and_summary(small_builds) -> None:
    out, _, done = small_builds
    corpus = read_manifest(out / "corpus.csv")
    assert len(corpus) == 44
    assert {c.source for c in corpus} == {"gm_timgm6mb", "espeak", "ktuberling", "sonic_pi"}
    assert all(c.labels == () and c.sample_rate == 32000 and c.channels == 1 for c in corpus)
    assert all(1.0 <= c.duration <= 4.0 for c in corpus)
    for clip in corpus.clips[::7]:
        wav, sr = sf.read(corpus.abs_path(clip), dtype="float32")
        assert sr == 32000 and wav.ndim == 1 and len(wav) == round(clip.duration * sr)
        assert 0.2 < np.abs(wav).max() <= 1.0  # peak-normalised, not silent

    tasks = {name: read_manifest(out / "tasks" / f"{name}.csv") for name in dc.TASK_NAMES}
    assert {n: len(m.class_names()) for n, m in tasks.items()} == {
        "instrument_family": 10,
        "spoken_digits": 10,
        "ktuberling_language": 13,
        "sonic_pi_category": 10,
    }
    for name, man in tasks.items():
        assert set(man.splits()) == {"train", "valid", "test"}, name
        assert all(man.abs_path(c).is_file() for c in man)
        assert not {c.clip_id for c in man} & {c.clip_id for c in corpus}
    inst = tasks["instrument_family"]
    assert inst.splits() == {"test": 10, "train": 20, "valid": 10}

    # Disjointness on the written provenance, not only on the plan.
    prov = json.loads((out / "provenance.json").read_text())
    corpus_keys = {k for keys in prov["corpus"].values() for k in keys}
    for name in dc.TASK_NAMES:
        assert not corpus_keys & {k for keys in prov[name].values() for k in keys}, name

    assert done["corpus"]["clips"] == 44
    assert done["corpus"]["sources"] == {"espeak": 10, "gm_timgm6mb": 24, "ktuberling": 6, "sonic_pi": 4}
    assert sum(done["corpus"]["licences"].values()) == 44
    assert done["corpus"]["hours"] == pytest.approx(corpus.total_seconds / 3600, abs=1e-4)
    assert done["tasks"]["spoken_digits"]["splits"] == {"train": 10, "valid": 10, "test": 10}
    assert done["tasks"]["ktuberling_language"]["class_counts"]["fr"] == 3
    assert done["tasks"]["instrument_family"]["classes"] == 10
