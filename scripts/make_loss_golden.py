"""Write tests/fixtures/losses_golden.json: reference values of every distillation loss.

The reference is an independent plain-NumPy implementation written from the formulas (UPSTREAM.md §4.2 with
masked entries excluded), deliberately with explicit Python loops over rows and index sets so it shares
no code or vectorisation tricks with ``ssondo_train.losses``. It does not import the package.

Usage: python scripts/make_loss_golden.py [--out tests/fixtures/losses_golden.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

B, D, C = 6, 8, 5
SEED = 1234
CLUSTERS = {
    "main": [3, 3, 7, 7, 7, 1],  # one singleton cluster (id 1): a row without positives
    "all_same": [2, 2, 2, 2, 2, 2],  # no negatives anywhere
    "pairs": [0, 1, 0, 1, 2, 2],
}
LAM = [0.9, 0.6, 1.0, 0.75, 0.5, 0.8]
PERM = [2, 0, 1, 5, 4, 3]  # index 4 is its own partner


# ----------------------------------------------------------------------------------------------- helpers
def unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.sqrt(np.sum(v * v))), 1e-12)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(unit(a), unit(b)))


def lse(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def logits_matrix(s: np.ndarray, t: np.ndarray, temp: float) -> np.ndarray:
    n = s.shape[0]
    return np.array([[cos(s[i], t[j]) / temp for j in range(n)] for i in range(n)])


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


# -------------------------------------------------------------------------------- per-sample losses
def ps_cosine(s: np.ndarray, t: np.ndarray) -> float:
    return 1.0 - cos(s, t)


def ps_mse(s: np.ndarray, t: np.ndarray) -> float:
    return float(np.mean((s - t) ** 2))


def ps_l1(s: np.ndarray, t: np.ndarray) -> float:
    return float(np.mean(np.abs(s - t)))


def ps_kl(temp: float):
    def f(s: np.ndarray, t: np.ndarray) -> float:
        p = softmax(t / temp)
        q = softmax(s / temp)
        return float(np.sum(p * (np.log(p) - np.log(q)))) * temp * temp

    return f


def per_sample_loss(fn, s, t, mix) -> float:
    n = s.shape[0]
    total = 0.0
    for i in range(n):
        if mix is None:
            total += fn(s[i], t[i])
        else:
            lam, perm = mix
            total += lam[i] * fn(s[i], t[i]) + (1.0 - lam[i]) * fn(s[i], t[perm[i]])
    return total / n


# ------------------------------------------------------------------------- batch (pair) losses
# Each returns a list of (loss_i, valid_i) for the batch paired as (s_i, t_i, c_i).
def pairs_clap(s, t, c, temp):
    L = logits_matrix(s, t, temp)
    n = len(s)
    out = []
    for i in range(n):
        st = -(L[i, i] - lse([L[i, j] for j in range(n)]))
        ts = -(L[i, i] - lse([L[j, i] for j in range(n)]))
        out.append((0.5 * (st + ts), True))
    return out


def pairs_contrastive(s, t, c, temp):
    L = logits_matrix(s, t, temp)
    n = len(s)
    out = []
    for i in range(n):
        neg = [L[i, j] for j in range(n) if j != i]
        out.append((-(L[i, i] - lse(neg)), True) if neg else (0.0, False))
    return out


def pairs_neg_clusters(s, t, c, temp):
    L = logits_matrix(s, t, temp)
    n = len(s)
    out = []
    for i in range(n):
        neg = [L[i, j] for j in range(n) if c[j] != c[i]]
        if not neg:
            out.append((0.0, False))
            continue
        out.append((-(L[i, i] - lse([L[i, i]] + neg)), True))
    return out


def pairs_cluster_aware(s, t, c, temp):
    L = logits_matrix(s, t, temp)
    n = len(s)
    out = []
    for i in range(n):
        pos_idx = [j for j in range(n) if j != i and c[j] == c[i]]
        neg_idx = [j for j in range(n) if c[j] != c[i]]
        if not pos_idx or not neg_idx:
            out.append((0.0, False))
            continue
        st = -(lse([L[i, j] for j in pos_idx]) - lse([L[i, j] for j in pos_idx + neg_idx]))
        ts = -(lse([L[j, i] for j in pos_idx]) - lse([L[j, i] for j in pos_idx + neg_idx]))
        out.append((0.5 * (st + ts), True))
    return out


def paired_loss(fn, s, t, c, temp, mix) -> float:
    """Mean over valid pairs; with mixup, a second pass with the teacher batch re-indexed by perm."""
    n = len(s)
    rows = fn(s, t, c, temp)
    if mix is None:
        terms = [(1.0, loss, ok) for loss, ok in rows]
    else:
        lam, perm = mix
        t_p = np.stack([t[perm[i]] for i in range(n)])
        c_p = None if c is None else [c[perm[i]] for i in range(n)]
        rows_p = fn(s, t_p, c_p, temp)
        terms = [(lam[i], rows[i][0], rows[i][1]) for i in range(n)]
        terms += [(1.0 - lam[i], rows_p[i][0], rows_p[i][1]) for i in range(n)]
    num = sum(w * loss for w, loss, ok in terms if ok)
    den = sum(w for w, loss, ok in terms if ok)
    return num / den if den > 0 else 0.0


def cross_cluster(s, t, c, mix) -> float:
    n = len(s)
    comps = []  # (student index, weight, teacher index)
    for i in range(n):
        if mix is None:
            comps.append((i, 1.0, i))
        else:
            lam, perm = mix
            comps.append((i, lam[i], i))
            comps.append((i, 1.0 - lam[i], perm[i]))
    values = []
    for k in sorted(set(c)):
        sc = np.zeros(s.shape[1])
        tc = np.zeros(s.shape[1])
        mass = 0.0
        for i, w, a in comps:
            if c[a] == k:
                sc += w * unit(s[i])
                tc += w * unit(t[a])
                mass += w
        if mass > 0:
            values.append(cos(sc, tc))
    return -sum(values) / len(values)


def hybrid(s, t, c, mix, alpha, beta, gamma, temp) -> float:
    return (
        alpha * per_sample_loss(ps_cosine, s, t, mix)
        + beta * paired_loss(pairs_cluster_aware, s, t, c, temp, mix)
        + gamma * cross_cluster(s, t, c, mix)
    )


# ---------------------------------------------------------------------- upstream (buggy) formulas
def upstream_neg_clusters(s, t, c, temp) -> float:
    """Masked entries contribute exp(0) = 1 (UPSTREAM.md §4.2), plus the 1e-8 in the denominator."""
    L = logits_matrix(s, t, temp)
    n = len(s)
    losses = []
    for i in range(n):
        if not any(c[j] != c[i] for j in range(n)):
            continue
        denom = math.exp(L[i, i]) + sum(math.exp(L[i, j] * (c[j] != c[i])) for j in range(n)) + 1e-8
        losses.append(-math.log(math.exp(L[i, i]) / denom))
    return sum(losses) / len(losses)


def upstream_cluster_aware(s, t, c, temp) -> float:
    L = logits_matrix(s, t, temp)
    n = len(s)

    def side(M):
        vals = []
        for i in range(n):
            pos = sum(math.exp(M[i, j] * (c[j] == c[i] and j != i)) for j in range(n))
            neg = sum(math.exp(M[i, j] * (c[j] != c[i])) for j in range(n))
            vals.append(-math.log(pos / (pos + neg)))
        return sum(vals) / n

    return 0.5 * (side(L) + side(L.T))


# ----------------------------------------------------------------------------------- label losses
def label_bce(logits, y) -> float:
    total = 0.0
    for i in range(len(logits)):
        row = 0.0
        for k in range(logits.shape[1]):
            x, z = logits[i, k], y[i, k]
            row += -(z * math.log(1 / (1 + math.exp(-x))) + (1 - z) * math.log(1 - 1 / (1 + math.exp(-x))))
        total += row / logits.shape[1]
    return total / len(logits)


def label_bce_mix(logits, y, mix) -> float:
    lam, perm = mix
    n = len(logits)
    y_mixed = np.stack([lam[i] * y[i] + (1 - lam[i]) * y[perm[i]] for i in range(n)])
    return label_bce(logits, y_mixed)  # BCE is linear in the target


def label_ce(logits, idx, mix=None) -> float:
    n = len(logits)
    total = 0.0
    for i in range(n):
        logp = logits[i] - lse(list(logits[i]))
        if mix is None:
            total += -logp[idx[i]]
        else:
            lam, perm = mix
            total += -(lam[i] * logp[idx[i]] + (1 - lam[i]) * logp[idx[perm[i]]])
    return total / n


# --------------------------------------------------------------------------------------------- main
def build() -> dict:
    rng = np.random.default_rng(SEED)
    teacher = rng.normal(size=(B, D))
    student = 0.6 * teacher + 0.8 * rng.normal(size=(B, D))  # correlated, as after some training
    label_logits = rng.normal(size=(B, C)) * 1.5
    multi_hot = (rng.random(size=(B, C)) < 0.35).astype(np.float64)
    class_idx = rng.integers(0, C, size=B)
    s, t = student, teacher
    mix = (LAM, PERM)
    cases: list[dict] = []

    def add(name: str, params: dict, clusters: str | None, mixed: bool, value: float) -> None:
        cases.append({"loss": name, "params": params, "clusters": clusters, "mix": mixed, "value": value})

    for mixed in (False, True):
        m = mix if mixed else None
        add("cosine", {}, None, mixed, per_sample_loss(ps_cosine, s, t, m))
        add("mse", {}, None, mixed, per_sample_loss(ps_mse, s, t, m))
        add("l1", {}, None, mixed, per_sample_loss(ps_l1, s, t, m))
        for temp in (1.0, 2.5):
            add("kl", {"temperature": temp}, None, mixed, per_sample_loss(ps_kl(temp), s, t, m))
        for temp in (0.5, 0.1):
            add("clap", {"temperature": temp}, None, mixed, paired_loss(pairs_clap, s, t, None, temp, m))
            add(
                "contrastive",
                {"temperature": temp},
                None,
                mixed,
                paired_loss(pairs_contrastive, s, t, None, temp, m),
            )
        for ck, cl in CLUSTERS.items():
            for name, fn in (("neg_clusters", pairs_neg_clusters), ("cluster_aware", pairs_cluster_aware)):
                add(name, {"temperature": 0.5}, ck, mixed, paired_loss(fn, s, t, cl, 0.5, m))
            add(
                "hybrid",
                {
                    "alignment_weight": 0.7,
                    "contrastive_weight": 0.2,
                    "cross_cluster_weight": 0.1,
                    "temperature": 0.5,
                },
                ck,
                mixed,
                hybrid(s, t, cl, m, 0.7, 0.2, 0.1, 0.5),
            )
            add("cross_cluster", {}, ck, mixed, cross_cluster(s, t, cl, m))

    upstream = {
        "neg_clusters": upstream_neg_clusters(s, t, CLUSTERS["main"], 0.5),
        "cluster_aware": upstream_cluster_aware(s, t, CLUSTERS["main"], 0.5),
        "params": {"temperature": 0.5},
        "clusters": "main",
    }
    label_cases = [
        {"kind": "bce", "targets": "multi_hot", "mix": False, "value": label_bce(label_logits, multi_hot)},
        {
            "kind": "bce",
            "targets": "multi_hot",
            "mix": True,
            "value": label_bce_mix(label_logits, multi_hot, mix),
        },
        {"kind": "ce", "targets": "class_idx", "mix": False, "value": label_ce(label_logits, class_idx)},
        {"kind": "ce", "targets": "class_idx", "mix": True, "value": label_ce(label_logits, class_idx, mix)},
    ]
    combined = {
        "label_weight": 0.3,
        "kd": "cosine",
        "label": "bce",
        "mix": False,
        "value": 0.3 * label_bce(label_logits, multi_hot) + 0.7 * per_sample_loss(ps_cosine, s, t, None),
    }
    return {
        "description": "Reference loss values by scripts/make_loss_golden.py (independent NumPy code)",
        "seed": SEED,
        "inputs": {
            "student": student.tolist(),
            "teacher": teacher.tolist(),
            "clusters": CLUSTERS,
            "lam": LAM,
            "perm": PERM,
            "label_logits": label_logits.tolist(),
            "multi_hot": multi_hot.tolist(),
            "class_idx": class_idx.tolist(),
        },
        "cases": cases,
        "upstream_buggy": upstream,
        "label_cases": label_cases,
        "combined": combined,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "losses_golden.json"
    parser.add_argument("--out", type=Path, default=default_out)
    args = parser.parse_args()
    data = build()
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"wrote {len(data['cases'])} loss cases to {args.out}")


if __name__ == "__main__":
    main()
