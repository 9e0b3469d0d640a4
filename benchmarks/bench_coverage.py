"""Coverage of kdlib's two intervals, and of the alternatives they were chosen over, on the
real design (3 folds x 2 test patients x S seeds), by simulation.

    python benchmarks/bench_coverage.py [--experiments 2000] [--json]

Each row: a design (seeds per fold; fold, seed, patient SDs; collapsed runs) and the share of
experiments whose 95% interval covers its framing's truth:
- population (new patients): kdlib's fold-level t; the former nested interval (fold means
  subtracted from both of its variance terms); a bootstrap over folds, then patients, then seeds;
- these-patients (fold and patient effects fixed): kdlib's per-fold Welch t; a pooled seed variance.
Pure numpy/scipy: seconds on a CPU. Deterministic for a fixed --seed.
"""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
from scipy import stats as st

from kdlib import stats as S

DESIGNS = [
    ("S=2", 2, {}), ("S=3", 3, {}), ("S=10", 10, {}),
    ("S=3, seed noise only", 3, dict(sd_fold=0.0, sd_patient=0.02)),
    ("S=3, fold effect only", 3, dict(sd_seed=0.0)),
    ("S=2, audit's design", 2, dict(sd_fold=0.1, sd_seed=0.05, sd_patient=0.05, sd_noise=0.02)),
    ("S=5, collapse 0.1", 5, dict(collapse=0.1)),
    ("S=10, collapse 0.1", 10, dict(collapse=0.1)),
]


def former_nested(blocks):
    pm = [b.mean(axis=0) for b in blocks]
    sm = [b.mean(axis=1) for b in blocks]
    P = sum(b.shape[1] for b in blocks)
    w_df, r_df = sum(b.shape[1] - 1 for b in blocks), sum(b.shape[0] - 1 for b in blocks)
    w = sum(float(((x - x.mean()) ** 2).sum()) for x in pm) / w_df
    r = sum(float(((x - x.mean()) ** 2).sum()) for x in sm) / r_df
    c_r = sum(b.shape[1] ** 2 / b.shape[0] for b in blocks) / P ** 2
    var = c_r * r + w / P
    df = var ** 2 / ((c_r * r) ** 2 / r_df + (w / P) ** 2 / w_df)
    est, half = float(np.concatenate(pm).mean()), st.t.ppf(0.975, df) * math.sqrt(var)
    return est - half, est + half


def bootstrap(blocks, rng, n=300):
    means = []
    for _ in range(n):
        folds = rng.integers(len(blocks), size=len(blocks))
        vals = []
        for f in folds:
            b = blocks[f]
            rows = b[rng.integers(b.shape[0], size=b.shape[0])]
            vals.append(rows[:, rng.integers(b.shape[1], size=b.shape[1])].mean())
        means.append(np.mean(vals))
    return tuple(np.quantile(means, [0.025, 0.975]))


def pooled_seeds(blocks):
    d = [b.mean(axis=1) for b in blocks]
    w = np.array([b.shape[1] for b in blocks], float)
    w /= w.sum()
    dfp = sum(x.size - 1 for x in d)
    s2 = sum(float(((x - x.mean()) ** 2).sum()) for x in d) / dfp
    est = float(sum(wi * x.mean() for wi, x in zip(w, d)))
    half = st.t.ppf(0.975, dfp) * math.sqrt(float(sum(wi * wi * s2 / x.size for wi, x in zip(w, d))))
    return est - half, est + half


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    out = {}
    for name, seeds, components in DESIGNS:
        hits = dict.fromkeys(["population (kdlib)", "former nested", "bootstrap", "these-patients (kdlib)",
                              "pooled seeds"], 0)
        boot_n = min(args.experiments, 300)  # the bootstrap is slow; fewer experiments
        for i in range(args.experiments):
            blocks, pop, these = S.simulate_design(rng, seeds=seeds, **components)
            r = S.population_interval(blocks)
            hits["population (kdlib)"] += r["ci_low"] <= pop <= r["ci_high"]
            lo, hi = former_nested(blocks)
            hits["former nested"] += lo <= pop <= hi
            if i < boot_n:
                lo, hi = bootstrap(blocks, rng)
                hits["bootstrap"] += lo <= pop <= hi
            r = S.these_patients_interval(blocks)
            hits["these-patients (kdlib)"] += r["ci_low"] <= these <= r["ci_high"]
            lo, hi = pooled_seeds(blocks)
            hits["pooled seeds"] += lo <= these <= hi
        out[name] = {k: round(v / (boot_n if k == "bootstrap" else args.experiments), 3) for k, v in hits.items()}
    if args.json:
        print(json.dumps(out))
    else:
        keys = list(next(iter(out.values())))
        print("| design | " + " | ".join(keys) + " |")
        print("|---" * (len(keys) + 1) + "|")
        for name, row in out.items():
            print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |")
    return out


if __name__ == "__main__":
    main()
