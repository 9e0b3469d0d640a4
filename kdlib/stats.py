"""All inference of kdlib: intervals in two framings, tests against a claim's boundary,
family-wise verdicts, variance components and power; and the thesis's ANOVA.

The design
----------
Patients are split into K folds; each fold trains its own runs (one per seed), and every
test patient is tested by exactly one fold's runs. A value (a Dice, or a contrast such as
KD minus baseline) is observed per (fold f, seed s, patient p)::

    y[f, s, p] = mu + fold[f] + seed[f, s] + patient[f, p] + residual[f, s, p]

with seeds and patients nested in folds (seed 42 of fold 0 and seed 42 of fold 1 are
different runs). The fold effect is what the fold's training patients (and its one
teacher) do to every run of the fold. The estimate is always the mean over test patients
of their seed-averaged values: ``sum_f w_f * mean_{s,p} y[f, s, p]`` with ``w_f = P_f / P``.
Seeds of one fold and slices of one patient are never counted as independent patients.

Two questions, two intervals (never mixed)
------------------------------------------
``population`` (:func:`population_interval`): *new patients from the same source*. Folds,
patients and seeds are all random, so the fold effect is part of the error. The interval is
a t interval over the K fold means, weighted by patients, with the cluster-robust variance
``K / (K - 1) * sum_f w_f^2 (m_f - est)^2`` and K - 1 degrees of freedom. In a balanced
design this is exactly the mixed model's test of the mean: the between-fold mean square is
the only one that contains the fold variance, and it has K - 1 degrees of freedom, so no
model can borrow more. With fewer than 3 folds it is not computed (``not testable here: 2
folds``): one degree of freedom gives an interval 12.7 standard errors wide, an answer to no
question.

``these-patients`` (:func:`these_patients_interval`): *these test patients (and these
training folds), held fixed; seeds random*. The question is whether a difference is larger
than seed-to-seed training noise on these patients. Per fold, the per-seed means over the
fold's patients ``d[f, s]``; estimate ``sum_f w_f mean_s d[f, s]``; variance
``sum_f w_f^2 var_s(d[f, .]) / S_f`` with each fold's own seed variance (collapsed runs
make one fold far noisier than another, measured in the published records) and
Welch-Satterthwaite degrees of freedom. Needs >= 2 seeds in every fold. Its answer is about
these six patients only; it says nothing about new patients.

The thesis's own evidence is one run per configuration on one fixed split: the
``these-patients`` question with one seed, so it had no estimate of its own noise.

Coverage (``benchmarks/bench_coverage.py``, 2000 experiments per design, results in
``benchmarks/RESULTS.md``; ``tests/test_stats.py`` keeps a seeded 200-experiment version in
CI): 3 folds x 2 patients x 2-10 seeds, fold SD up to 0.1, seed SD up to 0.12, and runs that
collapse (a 0.5 Dice drop of the claimed configuration with probability 0.1). The population
interval covered 94.2-96.0%; the these-patients interval 93.2-98.1% (conservative with 2
seeds, where each fold's variance has 1 df). The former "nested" interval, which subtracted
the fold means from both of its variance terms, covered 64-86% whenever folds differ (71.6%
in the audit's design: fold SD 0.1, seed and patient SD 0.05); a bootstrap over folds, then
patients, then seeds covered 74-89% (3 folds give 10 distinct resamples). A pooled seed
variance covered as well as Welch (93.0-95.2%) when every fold is equally noisy; Welch is
kept because the published records are not (fold 0 holds every collapsed run).

Tests against a claim's boundary (:func:`boundary_p`)
-----------------------------------------------------
"greater"/"less" claims test 0; "at most"/"at least" claims test their margin (+m / -m),
two-sided, so that either side can be shown; "equivalent" (|effect| < m) uses the two one-
sided tests (TOST: p is the larger of the two one-sided p-values).

Verdicts over a family of rows (:func:`family_verdicts`)
--------------------------------------------------------
Holm's step-down over all rows of one framing and setting (rows without a p-value do not
count). Each row's interval is drawn at its Holm level: the i-th smallest of m p-values at
1 - alpha / (m - i + 1) (1 - 2 alpha / (m - i + 1) for "equivalent"). The verdict:

* **supported**: p_holm < alpha and that interval lies entirely on the claimed side;
* **contradicted**: p_holm < alpha and the interval lies entirely on the other side;
* **inconclusive**: otherwise (``mde`` says what this design could have detected);
* **not testable here**: runs missing, run-to-run variation unmeasured, too few folds or
  seeds, or a run (or its teacher) that had not converged;
* **not run in this profile**: the profile deliberately did not train those runs.

p_holm < alpha implies that the row's interval excludes the boundary, so no verdict
contradicts its own interval; a row whose interval excludes the boundary after the step-
down stopped reads inconclusive.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as _st

from kdlib.errors import ConfigError, DataError

__all__ = [
    "CLAIM_KINDS",
    "FRAMINGS",
    "VERDICTS",
    "boundary_distance",
    "boundary_p",
    "combine_verdicts",
    "consistent_with",
    "family_verdicts",
    "holm",
    "interval",
    "minimal_detectable_effect",
    "one_way_anova",
    "patients_needed",
    "population_interval",
    "seeds_needed",
    "simulate_design",
    "these_patients_interval",
    "thesis_anova_groups",
    "variance_components",
    "verdict",
]

NAN = float("nan")
SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
NOT_TESTABLE, NOT_RUN = "not testable here", "not run in this profile"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE, NOT_RUN)
CLAIM_KINDS = ("greater", "less", "at most", "at least", "equivalent")


def _values(x: Any, name: str = "values") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if np.isnan(a).any():
        raise DataError(f"{name} contains NaN", fix="drop or fill missing values first")
    return a


# --------------------------------------------------------------------------- ANOVA
def one_way_anova(groups: Mapping[str, Sequence[float]]) -> dict:
    """One-way ANOVA (``scipy.stats.f_oneway``) over named groups.

    Returns ``{F, p, df_between, df_within, groups: {name: {n, mean, std}}}`` with
    df_between = k - 1 and df_within = N - k. A group may hold a single observation
    (it then contributes nothing to the within-group variance).
    """
    if len(groups) < 2:
        raise DataError(f"ANOVA needs at least 2 groups, got {len(groups)}")
    arrays = {str(k): _values(v, f"group {k!r}") for k, v in groups.items()}
    empty = [k for k, v in arrays.items() if v.size == 0]
    if empty:
        raise DataError(f"ANOVA groups without observations: {', '.join(empty)}")
    n_total = sum(v.size for v in arrays.values())
    k = len(arrays)
    if n_total <= k:
        raise DataError(f"ANOVA needs more observations ({n_total}) than groups ({k})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = _st.f_oneway(*arrays.values())
    return {
        "F": float(res.statistic),
        "p": float(res.pvalue),
        "df_between": k - 1,
        "df_within": n_total - k,
        "groups": {
            name: {"n": int(v.size), "mean": float(v.mean()),
                   "std": float(v.std(ddof=1)) if v.size > 1 else NAN}
            for name, v in arrays.items()
        },
    }


def _row_dicts(table_rows: Any) -> list[dict]:
    if hasattr(table_rows, "to_dict"):
        return list(table_rows.to_dict("records"))
    return [dict(r) for r in table_rows]


def _text(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return NAN


THESIS_ANOVA_SELECTIONS = ("table_4_11", "all")


def thesis_anova_groups(table_rows: Any, selection: str = "table_4_11",
                        baseline_iou: float | None = None) -> dict[str, list[float]]:
    """The two groups of IoUs the thesis's ANOVA (section 4.7) most plausibly compared.

    Input: the rows of ``thesis_tables.csv`` (a DataFrame or a list of dicts; the ``table``
    column may be text or numbers). Output: ``{"S1": [baseline IoU], "KD(T1,S1)": [...]}``,
    ready for :func:`one_way_anova`.

    What the thesis says: S1 baseline mean IoU "0.55", KD(T1,S1) "all the scales tested"
    mean 0.603, ANOVA F = 5.48, p = 0.039. p = 0.039 for F = 5.48 fits df (1, 11): two
    groups, 13 observations.

    Finding (from the CSV): the only 13-observation set the thesis itself presents is the
    lower block of table 4.11 ("With 50% Training Volume and Knowledge Distillation
    KD(T1, S1)"): Base (S1) plus 12 KD(T1,S1) configurations, namely every T1->S1 InfoNCE
    row at 50% data of tables 4.3 (B, E, D, B+E+D), 4.6 (B+E, E+D) and 4.7 (B, B+E, E,
    B+E+D, D, E+D, all "+PMD") -- i.e. tables 4.3/4.6/4.7 without the two B->B+D->D
    configurations (4.6 "B->B+D->D" and 4.7 "B->B+D->D+PMD"), which table 4.11 omits.
    (Table 4.11 prints 4.6's E->E+D->D numbers under the label "E->E + PMD".)
    ``selection="table_4_11"`` (default) returns these groups: 1 + 12 observations.

    * The tabulated baseline IoU 0.557 gives F(1, 11) = 4.40, p = 0.060: not significant,
      and not the thesis's numbers.
    * The text's rounded baseline "0.55" gives F(1, 11) = 5.69, p = 0.036.
    * 0.551 is the baseline that reproduces F = 5.48 (p = 0.039): it was found by solving
      F(b) = 5.48 for b (F rounds to 5.48 for b in [0.55105, 0.55110]). It is a value that
      fits the reported F, not a value the thesis states. Pass ``baseline_iou=...`` to
      substitute a baseline.
    * The KD group's mean is 0.608, not 0.603; a one-observation group has no variance, so
      the thesis's remark that KD had "significantly lower variance" cannot come from
      this test.
    * ``selection="all"`` keeps the two B+D configurations: 1 + 14 observations,
      F(1, 13) = 5.31, p = 0.038 -- near the reported F and p with the tabulated baseline,
      but the degrees of freedom do not match the reported p.
    * An exhaustive search over the 125,970 ways of choosing 12 of the 20 T1->S1 KD rows
      at 50% data (tables 4.3, 4.6, 4.7, 4.10) with the tabulated baseline finds exactly
      one subset with F = 5.48: the reported F does not identify a subset by itself.
    """
    if selection not in THESIS_ANOVA_SELECTIONS:
        raise ConfigError(f"unknown selection {selection!r}",
                          fix=f"use one of {', '.join(THESIS_ANOVA_SELECTIONS)}")
    rows = _row_dicts(table_rows)
    needed = {"table", "teacher", "student", "kd_loss", "scales", "train_fraction", "iou"}
    if rows and needed - set(rows[0]):
        raise DataError(f"thesis table rows lack columns {sorted(needed - set(rows[0]))}",
                        fix="pass the rows of thesis_tables.csv")
    half = [r for r in rows if abs(_num(r["train_fraction"]) - 0.5) < 1e-9]
    baseline = [r for r in half if _text(r["student"]) == "S1"
                and _text(r["kd_loss"]) in ("", "none") and _text(r["teacher"]) == ""]
    if len(baseline) != 1:
        raise DataError(f"expected exactly one S1 baseline row at 50% data, found {len(baseline)}",
                        fix="pass the rows of thesis_tables.csv")
    kd = [r for r in half
          if _text(r["teacher"]) == "T1" and _text(r["student"]) == "S1"
          and _text(r["kd_loss"]) == "infonce"
          and any(abs(_num(r["table"]) - t) < 1e-9 for t in (4.3, 4.6, 4.7))]
    if selection == "table_4_11":
        kd = [r for r in kd if _text(r["scales"]) != "B+D"]
    if not kd:
        raise DataError("no KD(T1,S1) InfoNCE rows of tables 4.3/4.6/4.7 found")
    base = float(baseline[0]["iou"]) if baseline_iou is None else float(baseline_iou)
    return {"S1": [base], "KD(T1,S1)": [float(r["iou"]) for r in kd]}


# --------------------------------------------------------------------------- the intervals
FRAMINGS = ("population", "these-patients")
MIN_FOLDS_POPULATION = 3


def _blocks(blocks: Sequence[Any]) -> list[np.ndarray]:
    out = []
    for i, block in enumerate(blocks):
        arr = np.asarray(block, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise DataError(f"fold {i}: expected a (seeds x patients) matrix, got shape {arr.shape}")
        if arr.size == 0:
            continue
        if np.isnan(arr).any():
            raise DataError(f"fold {i}: the (seeds x patients) matrix has missing values",
                            fix="keep only the seeds and patients every run of the fold tested")
        out.append(arr)
    return out


def _empty(mats: list[np.ndarray], framing: str) -> dict[str, Any]:
    n_patients = sum(m.shape[1] for m in mats)
    seeds = [m.shape[0] for m in mats]
    return {"estimate": NAN, "se": NAN, "df": NAN, "ci_low": NAN, "ci_high": NAN, "p": NAN,
            "n_patients": n_patients, "n_folds": len(mats), "n_runs": sum(seeds),
            "seeds_per_fold": "/".join(map(str, seeds)), "framing": framing, "method": "",
            "run_noise_measured": False, "reason": None}


def _estimate(mats: list[np.ndarray]) -> tuple[float, np.ndarray, np.ndarray]:
    """The mean over test patients of seed-averaged values; fold weights P_f / P; fold means."""
    weights = np.array([m.shape[1] for m in mats], dtype=np.float64)
    weights /= weights.sum()
    fold_means = np.array([m.mean() for m in mats])
    return float((weights * fold_means).sum()), weights, fold_means


def _finish(out: dict[str, Any], var: float, df: float, ci: float) -> dict[str, Any]:
    se = math.sqrt(max(var, 0.0))
    out.update(se=se, df=float(df), run_noise_measured=True)
    est = out["estimate"]
    if se == 0:
        out.update(ci_low=est, ci_high=est, p=1.0 if est == 0 else 0.0)
        return out
    half = float(_st.t.ppf(0.5 + ci / 2, df)) * se
    out.update(ci_low=est - half, ci_high=est + half, p=float(2 * _st.t.sf(abs(est) / se, df)))
    return out


def _check_ci(ci: float) -> None:
    if not 0 < ci < 1:
        raise ConfigError(f"ci must lie strictly between 0 and 1, got {ci}")


def population_interval(blocks: Sequence[Any], ci: float = 0.95) -> dict[str, Any]:
    """Mean over test patients and its CI for *new patients* (module docstring: fold-level t).

    ``blocks``: one (seeds x patients) matrix per fold, the values of that fold's runs on its
    own test patients (a 1-D array = one seed). Returns ``{estimate, se, df, ci_low, ci_high,
    p (two-sided t test of 0), n_patients, n_folds, n_runs, seeds_per_fold, framing, method,
    run_noise_measured, reason}``; the interval is NaN, with a ``reason``, for fewer than
    ``MIN_FOLDS_POPULATION`` folds.
    """
    _check_ci(ci)
    mats = _blocks(blocks)
    out = _empty(mats, "population")
    if not mats:
        out["reason"] = "no runs"
        return out
    est, weights, fold_means = _estimate(mats)
    out.update(estimate=est, method="fold-level t")
    k = len(mats)
    if k < MIN_FOLDS_POPULATION:
        out["reason"] = (f"not testable here: {k} fold(s); new patients need >= {MIN_FOLDS_POPULATION} folds "
                         f"to estimate the fold effect")
        return out
    var = k / (k - 1) * float((weights ** 2 * (fold_means - est) ** 2).sum())
    return _finish(out, var, k - 1, ci)


def these_patients_interval(blocks: Sequence[Any], ci: float = 0.95) -> dict[str, Any]:
    """Mean over these test patients and its CI against seed-to-seed training noise
    (module docstring: per-fold seed variances, Welch-Satterthwaite df). Same input and
    output as :func:`population_interval`; NaN interval, with a ``reason``, unless every
    fold has >= 2 seeds."""
    _check_ci(ci)
    mats = _blocks(blocks)
    out = _empty(mats, "these-patients")
    if not mats:
        out["reason"] = "no runs"
        return out
    est, weights, _ = _estimate(mats)
    out.update(estimate=est, method="seeds, Welch t")
    single = [str(i) for i, m in enumerate(mats) if m.shape[0] < 2]
    if single:
        out["reason"] = ("one run per configuration in fold(s) " + ", ".join(single)
                         + ": run-to-run variation is not measured")
        return out
    seed_means = [m.mean(axis=1) for m in mats]
    terms = np.array([w * w * sm.var(ddof=1) / sm.size for w, sm in zip(weights, seed_means)])
    var = float(terms.sum())
    dfs = np.array([sm.size - 1 for sm in seed_means], dtype=np.float64)
    denom = float((terms ** 2 / dfs).sum())
    df = var * var / denom if denom > 0 else float(dfs.sum())
    return _finish(out, var, df, ci)


def interval(blocks: Sequence[Any], framing: str = "population", ci: float = 0.95) -> dict[str, Any]:
    """:func:`population_interval` or :func:`these_patients_interval` by name."""
    if framing == "population":
        return population_interval(blocks, ci)
    if framing == "these-patients":
        return these_patients_interval(blocks, ci)
    raise ConfigError(f"unknown framing {framing!r}", fix=f"use one of {', '.join(FRAMINGS)}")


def minimal_detectable_effect(se: float, df: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true effect this design detects with `power` at two-sided `alpha`:
    (t_{1-alpha/2, df} + t_{power, df}) * SE. NaN when SE or df is undefined."""
    if se is None or df is None or not (se >= 0) or not (df > 0):
        return NAN
    return float((_st.t.ppf(1 - alpha / 2, df) + _st.t.ppf(power, df)) * se)


def simulate_design(rng: np.random.Generator, folds: int = 3, patients_per_fold: int = 2, seeds: int = 3,
                    truth: float = 0.05, sd_fold: float = 0.1, sd_seed: float = 0.12, sd_patient: float = 0.05,
                    sd_noise: float = 0.03, collapse: float = 0.0, drop: float = 0.5
                    ) -> tuple[list[np.ndarray], float, float]:
    """One simulated experiment of the design in the module docstring, for coverage and power
    checks: seeds and patients nested in folds, normal components. With `collapse`, each run
    of the claimed configuration collapses with that probability (its contrast drops by
    `drop` on every patient of the run). Returns (blocks, population truth, these-patients
    truth); the second holds the drawn fold and patient effects fixed."""
    fold = rng.normal(0, sd_fold, folds)
    patient = rng.normal(0, sd_patient, (folds, patients_per_fold))
    blocks = []
    for f in range(folds):
        seed = rng.normal(0, sd_seed, (seeds, 1)) - drop * (rng.random((seeds, 1)) < collapse)
        blocks.append(truth + fold[f] + patient[f][None, :] + seed
                      + rng.normal(0, sd_noise, (seeds, patients_per_fold)))
    population = truth - drop * collapse
    return blocks, population, population + float(fold.mean()) + float(patient.mean())


# --------------------------------------------------------------------------- components, power
def variance_components(blocks: Sequence[Any]) -> dict[str, float]:
    """Method-of-moments (ANOVA) estimates of the fold, seed, patient and residual variances of
    the model in the module docstring, from one (seeds x patients) matrix per fold.

    Within each fold a two-way layout without replication: residual = the seed x patient
    interaction mean square; seed = (seed MS - residual) / P; patient = (patient MS -
    residual) / S, each pooled over folds and truncated at 0. Fold = the variance of the fold
    means less what seeds, patients and residual put into them. NaN where the design cannot
    separate a component (one seed, one patient, or one fold). Assumes the components are
    independent, normal and the same in every fold.
    """
    mats = _blocks(blocks)
    out = {"fold": NAN, "patient": NAN, "seed": NAN, "residual": NAN}
    if not mats:
        return out
    e_ss = sum(float(((m - m.mean(1, keepdims=True) - m.mean(0, keepdims=True) + m.mean()) ** 2).sum())
               for m in mats)
    e_df = sum((m.shape[0] - 1) * (m.shape[1] - 1) for m in mats)
    s_ss = sum(m.shape[1] * float(((m.mean(1) - m.mean()) ** 2).sum()) for m in mats)
    s_df = sum(m.shape[0] - 1 for m in mats)
    p_ss = sum(m.shape[0] * float(((m.mean(0) - m.mean()) ** 2).sum()) for m in mats)
    p_df = sum(m.shape[1] - 1 for m in mats)
    mean_p = float(np.mean([m.shape[1] for m in mats]))
    mean_s = float(np.mean([m.shape[0] for m in mats]))
    resid = e_ss / e_df if e_df > 0 else (0.0 if s_df > 0 and p_df > 0 else NAN)
    if e_df > 0:
        out["residual"] = resid
    r0 = 0.0 if math.isnan(resid) else resid
    if s_df > 0:
        out["seed"] = max(0.0, (s_ss / s_df - (r0 if p_df > 0 else 0.0)) / mean_p)
    if p_df > 0:
        out["patient"] = max(0.0, (p_ss / p_df - (r0 if s_df > 0 else 0.0)) / mean_s)
    if len(mats) >= 2:
        fold_means = np.array([m.mean() for m in mats])
        inside = np.mean([(0 if math.isnan(out["seed"]) else out["seed"]) / m.shape[0]
                          + (0 if math.isnan(out["patient"]) else out["patient"]) / m.shape[1]
                          + r0 / m.size for m in mats])
        out["fold"] = max(0.0, float(fold_means.var(ddof=1)) - float(inside))
    return out


POWER_CAP = 10_000  # seeds or patients: beyond this the answer is "more than"


def boundary_distance(effect: float, kind: str, margin: float) -> float:
    """How far a (true) effect lies from the claim's boundary, on the claimed side (<= 0: not
    on the claimed side, so no sample size gives power to support the claim)."""
    return {"greater": effect, "less": -effect, "at most": margin - effect, "at least": effect + margin,
            "equivalent": margin - abs(effect)}[kind]


def _first_n(se_of_n, df_of_n, distance: float, alpha: float, power: float, start: int) -> float:
    """Smallest n >= start with (t_{1-alpha/2} + t_power) se(n) <= distance; inf beyond POWER_CAP."""
    if not distance > 0:
        return math.inf

    def ok(n: int) -> bool:
        se, df = se_of_n(n), df_of_n(n)
        return math.isfinite(se) and df > 0 and minimal_detectable_effect(se, df, alpha, power) <= distance

    if not ok(POWER_CAP):
        return math.inf
    lo, hi = start, POWER_CAP  # se falls monotonically with n: bisect
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return float(lo)


def seeds_needed(components: Mapping[str, float], patients_per_fold: Sequence[int], effect: float,
                 kind: str = "greater", margin: float = 0.0, framing: str = "these-patients",
                 alpha: float = 0.05, power: float = 0.8) -> float:
    """Seeds per fold for `power` at two-sided `alpha` when the true effect is `effect`, with
    these folds (one entry of `patients_per_fold` per fold) and these variance components.
    ``these-patients``: SE^2 = sum_f w_f^2 (seed + residual / P_f) / S, df = K (S - 1);
    ``population``: SE^2 adds sum_f w_f^2 (fold + patient / P_f), df = K - 1, so seeds alone
    may never suffice (inf). inf also when the effect is not on the claimed side."""
    c = {k: (0.0 if v is None or math.isnan(v) else float(v)) for k, v in components.items()}
    p = np.asarray(patients_per_fold, dtype=np.float64)
    w = p / p.sum()
    k = p.size
    fixed = float((w ** 2 * (c["fold"] + c["patient"] / p)).sum()) if framing == "population" else 0.0
    per_seed = float((w ** 2 * (c["seed"] + c["residual"] / p)).sum())
    df = (lambda s: float(k - 1)) if framing == "population" else (lambda s: float(k * (s - 1)))
    if framing == "population" and k < MIN_FOLDS_POPULATION:
        return math.inf
    return _first_n(lambda s: math.sqrt(fixed + per_seed / s), df, boundary_distance(effect, kind, margin),
                    alpha, power, 2)


def patients_needed(components: Mapping[str, float], seeds: int, patients_per_fold: int, effect: float,
                    kind: str = "greater", margin: float = 0.0, alpha: float = 0.05, power: float = 0.8) -> float:
    """``population``: test patients (folds x `patients_per_fold`, each fold with `seeds`
    seeds) for `power` at two-sided `alpha`, df = folds - 1; inf beyond POWER_CAP."""
    c = {k: (0.0 if v is None or math.isnan(v) else float(v)) for k, v in components.items()}
    per_fold = c["fold"] + c["patient"] / patients_per_fold + c["seed"] / seeds \
        + c["residual"] / (seeds * patients_per_fold)
    folds = _first_n(lambda f: math.sqrt(per_fold / f), lambda f: float(f - 1),
                     boundary_distance(effect, kind, margin), alpha, power, MIN_FOLDS_POPULATION)
    return folds * patients_per_fold


# --------------------------------------------------------------------------- verdicts
def _bound(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return NAN


def verdict(ci_low: Any, ci_high: Any, kind: str = "greater", margin: float = 0.0,
            testable: bool = True, ran: bool = True) -> str:
    """The verdict on a claim about an effect (claimed configuration minus reference).

    ``kind``: "greater" (effect > 0), "less" (effect < 0), "at most" (effect < +margin:
    "no better than"), "at least" (effect > -margin: "matches or beats"), "equivalent"
    (|effect| < margin: "matches"). The boundary is 0 for greater/less and the margin
    otherwise. ``ran=False``: the profile did not run the rows on purpose;
    ``testable=False`` or a missing bound: runs are missing.
    """
    if kind not in CLAIM_KINDS:
        raise ConfigError(f"unknown claim kind {kind!r}", fix=f"use one of {', '.join(CLAIM_KINDS)}")
    if margin < 0:
        raise ConfigError(f"margin must be >= 0, got {margin}")
    if not ran:
        return NOT_RUN
    lo, hi = _bound(ci_low), _bound(ci_high)
    if not testable or math.isnan(lo) or math.isnan(hi):
        return NOT_TESTABLE
    if lo > hi:
        raise DataError(f"CI bounds out of order: low {lo} > high {hi}")
    if kind == "greater":
        return SUPPORTED if lo > 0 else CONTRADICTED if hi < 0 else INCONCLUSIVE
    if kind == "less":
        return SUPPORTED if hi < 0 else CONTRADICTED if lo > 0 else INCONCLUSIVE
    if kind == "at most":
        return SUPPORTED if hi < margin else CONTRADICTED if lo > margin else INCONCLUSIVE
    if kind == "at least":
        return SUPPORTED if lo > -margin else CONTRADICTED if hi < -margin else INCONCLUSIVE
    if -margin < lo and hi < margin:
        return SUPPORTED
    return CONTRADICTED if (hi < -margin or lo > margin) else INCONCLUSIVE


def boundary_p(estimate: float, se: float, df: float, kind: str = "greater", margin: float = 0.0) -> float:
    """p-value of the test against the claim's boundary (module docstring): two-sided against
    0 ("greater", "less") or against the margin ("at most": +margin, "at least": -margin);
    TOST for "equivalent". NaN when the estimate, SE or df is undefined."""
    if kind not in CLAIM_KINDS:
        raise ConfigError(f"unknown claim kind {kind!r}", fix=f"use one of {', '.join(CLAIM_KINDS)}")
    if any(v is None or not math.isfinite(v) for v in (estimate, se, df)) or df <= 0 or se < 0:
        return NAN
    if kind == "equivalent":
        if se == 0:
            return 0.0 if abs(estimate) < margin else 1.0
        return float(max(_st.t.sf((estimate + margin) / se, df), _st.t.cdf((estimate - margin) / se, df)))
    boundary = {"greater": 0.0, "less": 0.0, "at most": margin, "at least": -margin}[kind]
    if se == 0:
        return 1.0 if estimate == boundary else 0.0
    return float(2 * _st.t.sf(abs(estimate - boundary) / se, df))


def family_verdicts(rows: Sequence[Mapping[str, Any]], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Holm-adjusted verdicts over one family of rows (module docstring).

    Each row: ``estimate, se, df, kind, margin`` and optionally ``testable`` (False: "not
    testable here") and ``ran`` (False: "not run in this profile"). Returns per row ``{p,
    p_holm, ci_level, ci_low, ci_high, verdict, mde}``: the interval at the row's Holm level,
    and ``mde`` at that level for an inconclusive row. Rows that are not tested have NaN p
    and do not count in m.
    """
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    ps = []
    for r in rows:
        usable = r.get("testable", True) and r.get("ran", True)
        ps.append(boundary_p(r["estimate"], r["se"], r["df"], r["kind"], r.get("margin", 0.0)) if usable else NAN)
    adjusted = holm(ps)
    valid = [i for i, p in enumerate(ps) if not math.isnan(p)]
    m = len(valid)
    rank = {i: j for j, i in enumerate(sorted(valid, key=lambda i: ps[i]))}
    out = []
    for i, r in enumerate(rows):
        level_alpha = alpha / (m - rank[i]) if i in rank else alpha
        two_sided = 2 * level_alpha if r["kind"] == "equivalent" else level_alpha
        level = 1 - two_sided
        est, se, df = r["estimate"], r["se"], r["df"]
        lo = hi = NAN
        if all(v is not None and math.isfinite(v) for v in (est, se, df)) and df > 0:
            half = float(_st.t.ppf(1 - two_sided / 2, df)) * se
            lo, hi = est - half, est + half
        v = verdict(lo, hi, r["kind"], r.get("margin", 0.0), testable=bool(r.get("testable", True)),
                    ran=bool(r.get("ran", True)))
        if v in (SUPPORTED, CONTRADICTED) and not adjusted[i] < alpha:
            v = INCONCLUSIVE  # Holm's step-down stopped before this row
        out.append({"p": ps[i], "p_holm": adjusted[i], "ci_level": level, "ci_low": lo, "ci_high": hi,
                    "verdict": v,
                    "mde": minimal_detectable_effect(se, df, two_sided) if v == INCONCLUSIVE else NAN})
    return out


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """A claim's verdict from the verdicts of the rows its sentence asserts together (an
    intersection-union test: "E->E beats B->B and D->D" holds only if every row holds, so no
    further correction is needed): contradicted if any row is, supported if every row is,
    not run / not testable if any row is, else inconclusive."""
    vs = list(verdicts)
    if not vs:
        return NOT_TESTABLE
    if CONTRADICTED in vs:
        return CONTRADICTED
    if all(v == SUPPORTED for v in vs):
        return SUPPORTED
    for v in (NOT_RUN, NOT_TESTABLE):
        if v in vs:
            return v
    return INCONCLUSIVE


def consistent_with(value: Any, ci_low: Any, ci_high: Any) -> str:
    """"yes" if `value` (e.g. the thesis's own effect) lies inside [ci_low, ci_high],
    "no" if outside, "–" when either is missing."""
    v, lo, hi = _bound(value), _bound(ci_low), _bound(ci_high)
    if math.isnan(v) or math.isnan(lo) or math.isnan(hi):
        return "–"
    return "yes" if lo <= v <= hi else "no"


# --------------------------------------------------------------------------- multiplicity
def holm(pvalues: Mapping[Any, float] | Sequence[float]) -> dict | list:
    """Holm-Bonferroni adjusted p-values, in the input's order and type (dict or list).

    Sort the m p-values ascending, p_(1) <= ... <= p_(m); adjusted p_(i) =
    min(1, max_{j <= i} (m - j + 1) p_(j)). NaN p-values are left NaN and not counted in m.
    """
    if isinstance(pvalues, Mapping):
        keys = list(pvalues)
        adj = holm([pvalues[k] for k in keys])
        return dict(zip(keys, adj))
    p = np.asarray(list(pvalues), dtype=np.float64).reshape(-1)
    if ((p < 0) | (p > 1)).any():
        raise DataError("p-values must lie in [0, 1]")
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]
