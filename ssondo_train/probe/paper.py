"""The S-SONDO paper's downstream figures (ICASSP 2026, Table 1, BDS-impact figure, Fig. 2), as data.

Scores are in [0, 1] like the probe's (Table 1 prints them x100 with a 95 % CI; the CI is kept here).
:func:`paper_rows` picks the rows that match what a probe compared (teacher, student, sampling), so a report
can print the published numbers beside ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TASKS: tuple[str, ...] = ("openmic", "nsynth", "gtzan", "magna-tag-a-tune", "fsd50k", "esc50", "us8k")
TEACHERS: dict[str, str] = {"matpac": "MATPAC++", "m2d": "M2D"}
STUDENTS: dict[str, str] = {"mobilenetv3": "MobileNetV3", "dymn": "DyMN", "eres2net": "ERes2Net"}


def _row(*values: tuple[float, float]) -> dict[str, tuple[float, float]]:
    return {t: (v / 100.0, ci / 100.0) for t, (v, ci) in zip(TASKS, values, strict=True)}


# Table 1: (student, teacher) -> task -> (score, 95 % CI); teacher None = the supervised student baseline.
TABLE1: dict[tuple[str | None, str | None], dict[str, tuple[float, float]]] = {
    ("mobilenetv3", None): _row(
        (84.5, 0.0), (68.0, 0.2), (87.4, 0.1), (38.7, 0.0), (49.3, 0.0), (92.6, 0.3), (83.7, 0.3)
    ),
    ("mobilenetv3", "matpac"): _row(
        (84.7, 0.0), (74.9, 0.1), (85.2, 0.0), (40.2, 0.0), (48.6, 0.1), (91.0, 0.1), (86.1, 0.3)
    ),
    ("mobilenetv3", "m2d"): _row(
        (83.1, 0.0), (69.5, 0.2), (81.4, 1.5), (39.5, 0.0), (41.4, 0.5), (85.9, 0.1), (83.4, 0.4)
    ),
    ("dymn", None): _row(
        (84.3, 0.1), (67.5, 0.3), (80.8, 0.5), (38.8, 0.0), (47.5, 0.0), (91.3, 0.1), (83.3, 0.1)
    ),
    ("dymn", "matpac"): _row(
        (84.8, 0.0), (72.1, 0.1), (85.6, 0.5), (39.9, 0.0), (47.9, 0.1), (91.9, 0.1), (86.2, 0.3)
    ),
    ("dymn", "m2d"): _row(
        (83.1, 0.0), (67.3, 1.1), (79.2, 1.8), (39.1, 0.0), (40.6, 0.4), (87.4, 0.2), (84.1, 0.1)
    ),
    ("eres2net", None): _row(
        (75.0, 0.7), (67.3, 0.6), (62.8, 3.7), (34.3, 0.2), (34.1, 0.3), (77.0, 1.4), (77.4, 0.5)
    ),
    ("eres2net", "matpac"): _row(
        (82.6, 0.0), (73.0, 0.3), (77.6, 0.0), (39.4, 0.1), (47.3, 0.1), (89.8, 0.0), (85.9, 0.2)
    ),
    ("eres2net", "m2d"): _row(
        (81.5, 0.0), (72.4, 0.1), (77.6, 0.0), (38.8, 0.1), (43.1, 0.0), (86.7, 0.2), (84.3, 0.2)
    ),
    (None, "matpac"): _row(
        (85.6, 0.1), (76.8, 0.2), (87.6, 0.0), (40.8, 0.1), (56.1, 0.1), (93.1, 0.1), (89.7, 0.3)
    ),
    (None, "m2d"): _row(
        (84.8, 0.0), (76.2, 0.6), (84.3, 1.3), (40.6, 0.1), (53.4, 0.1), (92.1, 0.4), (88.5, 0.3)
    ),
}
# BDS-impact figure: average over the 7 tasks without BDS (random sampling), (student, teacher) -> Avg.
RANDOM_SAMPLING_AVG: dict[tuple[str, str], float] = {
    ("mobilenetv3", "matpac"): 0.727,
    ("dymn", "matpac"): 0.729,
    ("eres2net", "matpac"): 0.448,
    ("mobilenetv3", "m2d"): 0.694,
    ("dymn", "m2d"): 0.692,
    ("eres2net", "m2d"): 0.687,
}
# Fig. 2 (K = 0, random sampling), MATPAC++ -> MobileNetV3 per task, read off the plot (no CI published).
RANDOM_MATPAC_MOBILENETV3: dict[str, tuple[float, float]] = {
    "esc50": (0.903, float("nan")),
    "gtzan": (0.851, float("nan")),
    "us8k": (0.864, float("nan")),
    "openmic": (0.848, float("nan")),
    "nsynth": (0.739, float("nan")),
    "fsd50k": (0.484, float("nan")),
    "magna-tag-a-tune": (0.402, float("nan")),
}


@dataclass(frozen=True)
class PaperRow:
    """One published row: its label, per-task scores (score, CI) and the published 7-task average."""

    label: str
    scores: dict[str, tuple[float, float]]
    average: float | None


def _teacher_key(name: str) -> str | None:
    low = name.lower()
    if "matpac" in low:
        return "matpac"
    if "m2d" in low:
        return "m2d"
    return None


def paper_rows(
    teacher: str, models: Mapping[str, Mapping[str, str | float]], tasks: Sequence[str]
) -> dict[str, PaperRow]:
    """Published rows for the models of a probe, keyed by our row label.

    Args:
        teacher: the run's teacher name (``matpac`` / ``MATPAC++`` / ``m2d`` ...); other teachers give none.
        models: our row label -> ``{"kind": "teacher" | "student", "student": name, "sampler": name,
            "label_weight": float}`` (students only: the backbone rows).
        tasks: the probe's task names; no row is returned when none of them is a Table-1 task.

    Returns:
        ``label -> PaperRow`` (paper label ``paper: <student> <- <teacher> (<sampling>)``).
    """
    tkey = _teacher_key(teacher)
    if tkey is None or not any(t in TASKS for t in tasks):
        return {}
    rows: dict[str, PaperRow] = {}
    for label, info in models.items():
        if info.get("kind") == "teacher":
            scores = TABLE1[(None, tkey)]
            rows[label] = PaperRow(f"paper: {TEACHERS[tkey]} (teacher)", scores, _mean(scores))
            continue
        student = str(info.get("student", ""))
        if student not in STUDENTS:
            continue
        if float(info.get("label_weight", 0.0) or 0.0) >= 1.0:
            scores = TABLE1[(student, None)]
            rows[label] = PaperRow(f"paper: {STUDENTS[student]} (supervised)", scores, _mean(scores))
        elif info.get("sampler") == "bds":
            scores = TABLE1[(student, tkey)]
            rows[label] = PaperRow(
                f"paper: {STUDENTS[student]} <- {TEACHERS[tkey]} (BDS)", scores, _mean(scores)
            )
        elif info.get("sampler") == "random":
            scores = RANDOM_MATPAC_MOBILENETV3 if (student, tkey) == ("mobilenetv3", "matpac") else {}
            rows[label] = PaperRow(
                f"paper: {STUDENTS[student]} <- {TEACHERS[tkey]} (random sampling)",
                dict(scores),
                RANDOM_SAMPLING_AVG[(student, tkey)],
            )
    return rows


def _mean(scores: Mapping[str, tuple[float, float]]) -> float:
    return sum(v for v, _ in scores.values()) / len(scores)


def paper_markdown(rows: Mapping[str, PaperRow], tasks: Sequence[str], decimals: int = 1) -> str:
    """A markdown table of the published rows over the probe's Table-1 tasks (x100), beside our labels."""
    cols = [t for t in TASKS if t in tasks]
    from ssondo_train.probe.evaluate import TASK_HEADERS

    header = ["Our row", "Paper row", *[TASK_HEADERS.get(t, t) for t in cols], "Avg. (7 tasks)"]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|",
    ]
    for label, row in rows.items():
        cells = [label, row.label]
        for t in cols:
            if t in row.scores:
                v, ci = row.scores[t]
                cells.append(f"{100 * v:.{decimals}f}" + ("" if ci != ci else f"±{100 * ci:.{decimals}f}"))
            else:
                cells.append("–")
        cells.append("–" if row.average is None else f"{100 * row.average:.{decimals}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
