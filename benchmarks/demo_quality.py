"""Demo quality: the probe results of finished demo runs, with the acceptance figures derived from them.

For each run and distill variant (``outputs/<run>/probe/<variant>/results.json``): per-task scores of every
model, the share of the log-mel-to-teacher gap that the distilled student closes on the cross-soundfont
instrument task, the mean over tasks of student vs untrained student, and retention vs the teacher. Writes
``results/demo_quality.json``.

    .venv/bin/python benchmarks/demo_quality.py demo "demo_long::44 epochs" "demo@sampler=random::BDS off"
"""

from __future__ import annotations

import json
import sys

from common import RESULTS, ROOT, write_result


def summarise(run: str, variant: str = "default") -> dict:
    probe = json.loads((ROOT / "outputs" / run / "probe" / variant / "results.json").read_text())
    distill = json.loads((ROOT / "outputs" / run / "distill" / variant / "done.json").read_text())
    res = probe["results"]
    scores = {m: {t: round(v["mean"], 4) for t, v in tasks.items()} for m, tasks in res.items()}
    means = {m: round(sum(s.values()) / len(s), 4) for m, s in scores.items()}
    inst = {m: s.get("instrument_family") for m, s in scores.items()}
    gap = None
    if all(inst.get(k) is not None for k in ("teacher", "logmel", "student")):
        gap = round((inst["student"] - inst["logmel"]) / (inst["teacher"] - inst["logmel"]), 3)
    history = distill.get("history", [])
    full = distill["config"]
    cfg = full["distill"]
    stage_seconds = {}
    cluster = distill.get("cluster_variant") or "default"
    for stage, folder in (
        ("prepare", "prepare"),
        ("precompute", "precompute"),
        ("cluster", f"cluster/{cluster}"),
        ("distill", f"distill/{variant}"),
        ("probe", f"probe/{variant}"),
        ("export", f"export/{variant}"),
    ):
        done = ROOT / "outputs" / run / folder / "done.json"
        if done.is_file():
            stage_seconds[stage] = round(float(json.loads(done.read_text()).get("seconds", 0.0)), 1)
    return {
        "recipe": {
            "epochs": cfg["epochs"],
            "updates": distill["steps"],
            "batch_size": cfg["batch_size"],
            "samples_per_epoch": full.get("sampler", {}).get("num_samples"),
            "window_seconds": full.get("precompute", {}).get("window_seconds"),
            "target_norm": cfg["target_norm"],
            "lr": cfg["lr"],
            "schedule": [cfg.get("warm_up_len"), cfg.get("ramp_down_start"), cfg.get("ramp_down_len")],
            "channels_last": full.get("trainer", {}).get("channels_last", False),
            "distill_seconds": distill["seconds"],
        },
        "stage_seconds": stage_seconds,
        "val_cosine_first_last": [history[0].get("val/cosine"), history[-1].get("val/cosine")]
        if history
        else None,
        "val_cosine_of_mean_target": history[-1].get("val/cosine_of_mean_target") if history else None,
        "scores": scores,
        "mean_over_tasks": means,
        "instrument_gap_closed": gap,
        "target_instrument_gap_closed": 0.5,
        "student_mean_beats_untrained": means.get("student", 0) > means.get("untrained", 1),
        "student_retention_pct": round(100 * means["student"] / means["teacher"], 1)
        if "teacher" in means
        else None,
        "student_above_logmel": means.get("student", 0) > means.get("logmel", 1),
    }


def main() -> None:
    """Arguments: ``run[@variant][::what was tried]`` (the description is kept as ``description``).

    The named runs are (re)summarised and merged into the existing results: other runs stay, and a run
    named without a description keeps the one it had. ``--only`` writes just the named runs.
    """
    args = sys.argv[1:]
    only = "--only" in args
    args = [a for a in args if a != "--only"] or ["demo"]
    path = RESULTS / "demo_quality.json"
    old = {} if only or not path.is_file() else json.loads(path.read_text()).get("runs", {})
    out = dict(old)
    for arg in args:
        key, _, description = arg.partition("::")
        run, _, variant = key.partition("@")
        out[key] = {
            "description": description or old.get(key, {}).get("description"),
            **summarise(run, variant or "default"),
        }
    write_result("demo_quality", {"runs": out})


if __name__ == "__main__":
    main()
