"""Identities and variant names (no training): what addresses a result, and how a variant reads."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from ssondo_train.config.location import CONFIG_DIR
from ssondo_train.runs import variants as rv
from ssondo_train.runs.layout import RunLayout


def compose_with_choices(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/")}
    return cfg, choices


def name_of(base_overrides: list[str], overrides: list[str], stage: str = "distill") -> str:
    base_cfg, base_choices = compose_with_choices(["stage=precompute", *base_overrides])
    record = rv.base_record(base_cfg, base_choices)
    cfg, choices = compose_with_choices([f"stage={stage}", *base_overrides, *overrides])
    which = "cluster" if stage == "cluster" else "distill"
    return rv.derive_name(cfg, which, record, choices, rv.option_defaults_from(CONFIG_DIR))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "default"),
        (["sampler=bds"], "default"),  # restating the base is the base
        (["sampler=random"], "sampler=random"),
        (["student=dymn", "sampler=random"], "student=dymn,sampler=random"),
        (["sampler=random", "student=dymn"], "student=dymn,sampler=random"),  # fixed order
        (["distill.lr=0.002"], "distill.lr=0.002"),
        (["seed=1"], "seed=1"),
        (
            ["student=eres2net", "student.projector_hidden=512"],
            "student=eres2net,student.projector_hidden=512",
        ),
        (["cluster.k=30"], "cluster.k=30"),  # BDS depends on its clusters
        (["sampler=random", "cluster.k=30"], "sampler=random"),  # random sampling does not
        (
            ["trainer.devices=4", "trainer.num_workers=8", "distill.log_indices=true"],
            "default",
        ),  # how, not what
        (["trainer=gpu"], "trainer=gpu"),  # bf16-mixed changes the numbers
        (["variant=mine", "sampler=random"], "mine"),
    ],
)
def test_variant_names_say_what_differs_from_the_run(overrides, expected):
    assert name_of(["experiment=demo"], overrides) == expected


def test_paper_experiments_are_variants_of_one_store_per_teacher():
    base = ["experiment=matpac_mobilenetv3_bds50"]
    assert name_of(base, ["experiment=matpac_dymn_bds50"]) == "student=dymn"
    assert name_of(base, ["experiment=matpac_eres2net_bds50"]) == "student=eres2net"
    assert name_of(base, ["experiment=matpac_mobilenetv3_random"]) == "sampler=random"
    supervised = name_of(base, ["experiment=mobilenetv3_supervised"])
    assert supervised.startswith("sampler=class_balanced,") and "loss.label_weight=1.0" in supervised
    cfgs = {}
    for exp in (
        "matpac_mobilenetv3_bds50",
        "matpac_dymn_bds50",
        "matpac_mobilenetv3_random",
        "mobilenetv3_supervised",
    ):
        cfg, _ = compose_with_choices(["stage=precompute", f"experiment={exp}"])
        cfgs[exp] = (cfg.run_name, rv.identity(cfg, "precompute"))
    assert len({json.dumps(v, sort_keys=True) for v in cfgs.values()}) == 1  # one store serves all four
    m2d, _ = compose_with_choices(["stage=precompute", "experiment=m2d_dymn_bds50"])
    assert m2d.run_name == "m2d" and cfgs["matpac_dymn_bds50"][0] == "matpac"


def test_cluster_variants_are_named_by_their_settings():
    assert name_of(["experiment=demo"], [], "cluster") == "default"
    assert name_of(["experiment=demo"], ["cluster.k=30", "sampler=random"], "cluster") == "cluster.k=30"
    assert name_of(["experiment=demo"], ["cluster.metric=euclidean"], "cluster") == "cluster.metric=euclidean"


def test_identity_ignores_execution_keys_and_follows_the_recipe():
    a, _ = compose_with_choices(["stage=distill"])
    b, _ = compose_with_choices(["stage=distill", "trainer.devices=2", "trainer.num_workers=7"])
    c, _ = compose_with_choices(["stage=distill", "distill.lr=0.01"])
    ha, hb, hc = (rv.identity_hash(rv.identity(x, "distill")) for x in (a, b, c))
    assert ha == hb != hc
    p1, _ = compose_with_choices(["stage=precompute", "precompute.num_workers=0", "precompute.device=cpu"])
    p2, _ = compose_with_choices(["stage=precompute", "precompute.window_seconds=2.0"])
    assert rv.identity(a, "precompute") == rv.identity(p1, "precompute") != rv.identity(p2, "precompute")


def test_long_names_keep_their_first_parts_and_a_hash():
    tokens = [f"distill.key_{i}={'x' * 12}" for i in range(12)]
    name = rv.variant_name(tokens, {"a": 1})
    assert len(name) <= rv.MAX_NAME_LENGTH and name.startswith(tokens[0]) and "~" in name
    assert rv.variant_name(tokens, {"a": 2}) != name
    assert rv.variant_name([], {}) == "default"
    assert rv._token_value("/data/models/mn10_im.pt") == "mn10_im.pt"
    assert rv._token_value([0.9, 0.99]) == "0.9:0.99"


@pytest.mark.parametrize("bad", ["a/b", "x+y", "two words", "all", "cache", ""])
def test_explicit_names_must_be_one_plain_folder_name(bad):
    with pytest.raises(rv.VariantError):
        rv.check_explicit_name(bad)


def test_differences_name_each_key_with_both_values():
    diffs = rv.differences({"a": {"b": 1, "c": None}}, {"a": {"b": 2, "d": 3}})
    assert diffs == [("a.b", 1, 2), ("a.c", None, rv.ABSENT), ("a.d", rv.ABSENT, 3)]
    text = rv.describe_differences(diffs, "store", "now")
    assert "a.b: 1 (store) -> 2 (now)" in text and "a.c: null (store) -> absent (now)" in text


def test_a_folder_lock_refuses_a_second_writer_and_frees_with_its_process(tmp_path):
    from ssondo_train.stages.base import StageError, folder_lock

    folder = tmp_path / "distill" / "v"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from ssondo_train.stages.base import folder_lock\n"
            f"with folder_lock(Path({str(folder)!r}), 'x'):\n    print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with (
            pytest.raises(StageError, match=r"is being written by pid \d+"),
            folder_lock(folder, "variant v"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    with folder_lock(folder, "variant v"):
        assert (folder / ".lock").read_text().startswith("pid ")


def test_variants_are_listed_default_first(tmp_path):
    layout = RunLayout(tmp_path / "r")
    for name in ("sampler=random", "default", "a", "unfinished"):
        (layout.root / "distill" / name).mkdir(parents=True)
        if name != "unfinished":
            (layout.root / "distill" / name / "done.json").write_text("{}")
    assert layout.variants("distill") == ["default", "a", "sampler=random"]
    assert layout.legacy_stages() == []
    (layout.root / "cluster").mkdir()
    (layout.root / "cluster" / "done.json").write_text("{}")
    assert layout.legacy_stages() == ["cluster"]
