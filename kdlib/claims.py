"""The thesis's claims, one verdict each, from our runs; its ANOVA; per-configuration summaries.

Statistics (`kdlib.stats` helpers, plus `crossed_t_ci` here):
- The unit of comparison is the **test volume** (patient): each run's per-volume Dice
  (`metrics["per_volume"]["cases"]`), paired by case and by run (seed, split) across the
  compared configurations. The effect is the mean over cases of the per-case effect
  averaged over the shared runs. The 95% CI treats seeds and cases as crossed random
  effects (`crossed_t_ci`: t interval, Satterthwaite df), so a lucky seed does not pass
  for an effect (a single seed cannot show run-to-run variation: the note says so). `p`
  is the two-sided Wilcoxon signed-rank test of the per-case effects against 0 (given
  these seeds), Holm-adjusted over the whole table in `p_holm`. The per-run pooled
  effects are listed in `per_run_effects` so seed noise stays visible.
- Without per-volume results the unit is the run: pooled Dice paired by (seed, split),
  percentile bootstrap CI and Wilcoxon over runs.
- A verdict is `stats.verdict` on that CI: "supported" when the CI lies on the claimed
  side of the criterion, "not supported" otherwise, "not testable here" when a needed run
  is missing or fewer than 2 units pair up. Verdicts are not corrected for multiplicity.
- Claims of "no more than" / "matches" use a stated margin (default 0.01 Dice).

A configuration is named by the thesis's own columns (teacher, student, loss, scales, PMD,
data fraction; `experiments.describe` of each run), per setting (corrected / faithful):
settings are never mixed within one comparison.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from . import experiments, stats
from .errors import KdlibError
from .tables import describe_runs

MARGIN = 0.01
Spec = dict  # the thesis-row columns a configuration is matched on

FAITHFUL_PMD_NOTE = ("faithful setting: the original's PMD is a softmax over one channel, identically "
                     "zero, so B+PMD and B train the same objective; any difference is seed noise")
POST_HOC_NOTE = ("chosen post hoc as our best mean on the same test set: optimistic, "
                 "the thesis did the same")


# ---------------------------------------------------------------------------------------
# Configurations


def kd_spec(teacher: str, student: str, scales: str, pmd: bool, loss: str = "infonce",
            fraction: float = 0.5) -> Spec:
    return {"table": "kd", "teacher": teacher, "student": student, "kd_loss": loss,
            "scales": scales, "pmd": bool(pmd), "train_fraction": float(fraction)}


def baseline_spec(student: str, fraction: float = 0.5) -> Spec:
    return {"table": "baseline", "teacher": "", "student": student, "kd_loss": "none",
            "scales": "", "pmd": False, "train_fraction": float(fraction)}


def spec_of(desc: dict[str, Any]) -> Spec:
    """The configuration (setting and seed aside) of an `experiments.describe` result."""
    if desc["role"] == "teacher":
        return {"table": "4.1", "teacher": "", "student": desc["model"], "kd_loss": "none",
                "scales": "", "pmd": False, "train_fraction": desc["train_fraction"]}
    if desc["role"] == "baseline":
        return baseline_spec(desc["student"], desc["train_fraction"])
    return kd_spec(desc["teacher"], desc["student"], desc["scales"], desc["pmd"], desc["kd_loss"],
                   desc["train_fraction"])


def label(spec: Spec) -> str:
    """Thesis-style name: "S1 baseline", "KD(T1,S1) B->B+PMD", "... MSE", "(100% data)"."""
    data = " (100% data)" if spec["train_fraction"] >= 1.0 and spec["table"] != "4.1" else ""
    if spec["table"] == "4.1":
        return f"{spec['student']} (teacher)"
    if spec["kd_loss"] == "none":
        return f"{spec['student']} baseline{data}"
    scales = "+".join(f"{s}->{s}" for s in spec["scales"].split("+") if s)
    loss = " MSE" if spec["kd_loss"] == "mse" else ""
    return f"KD({spec['teacher']},{spec['student']}) {scales}{'+PMD' if spec['pmd'] else ''}{loss}{data}"


def _same(spec: Spec, row: dict[str, Any]) -> bool:
    return all(spec[k] == (row[k] or "" if k == "teacher" else row[k])
               for k in ("teacher", "student", "kd_loss", "scales", "pmd", "train_fraction"))


def thesis_value(spec: Spec, metric: str = "dice") -> float:
    """The thesis's number for a configuration (first table that lists it), else NaN."""
    for row in experiments.thesis_rows():
        if (row["table"] == "4.1") == (spec["table"] == "4.1") and _same(spec, row):
            return float(row[metric])
    return math.nan


def thesis_rows_of(spec: Spec) -> str:
    """Where the thesis lists a configuration, e.g. "4.2 KD(T1,S1); 4.7 B->B+PMD"."""
    return "; ".join(f"{row['table']} {row['row']}" for row in experiments.thesis_rows()
                     if (row["table"] == "4.1") == (spec["table"] == "4.1") and _same(spec, row))


class RunIndex:
    """Runs grouped by (setting, configuration) and keyed by replicate (seed, split)."""

    def __init__(self, runs: Iterable[dict[str, Any]]):
        self.groups: dict[tuple, dict[tuple, dict[str, Any]]] = defaultdict(dict)
        self.specs: dict[tuple, Spec] = {}
        for run, desc in describe_runs(runs):
            spec = spec_of(desc)
            key = (desc["setting"], self._key(spec))
            self.specs[key] = spec
            replicate = (int(desc["seed"]), str(run["config"].get("split", "")))
            # the same replicate twice (e.g. re-run with another epoch count): keep the first by folder
            current = self.groups[key].get(replicate)
            if current is None or run["run_dir"] < current["run_dir"]:
                self.groups[key][replicate] = run
        self.settings = [s for s in experiments.SETTINGS if any(k[0] == s for k in self.groups)]

    @staticmethod
    def _key(spec: Spec) -> tuple:
        return tuple(spec[k] for k in ("table", "teacher", "student", "kd_loss", "scales", "pmd",
                                       "train_fraction"))

    def get(self, spec: Spec, setting: str) -> dict[tuple, dict[str, Any]]:
        return self.groups.get((setting, self._key(spec)), {})

    def configurations(self, setting: str | None = None) -> list[tuple[str, Spec]]:
        return [(key[0], self.specs[key]) for key in self.groups if setting in (None, key[0])]


# ---------------------------------------------------------------------------------------
# Numbers out of runs


def pooled_value(run: dict[str, Any], metric: str = "dice") -> float:
    value = (run["metrics"].get("pooled") or {}).get(metric)
    return math.nan if value is None else float(value)


def case_values(run: dict[str, Any], metric: str = "dice") -> dict[str, float] | None:
    """{case id: per-volume metric} of a run, or None without per-volume results."""
    per_volume = run["metrics"].get("per_volume") or {}
    cases = per_volume.get("cases") if isinstance(per_volume, dict) else None
    if not cases:
        return None
    out = {}
    for case, scores in cases.items():
        value = scores.get(metric) if isinstance(scores, dict) else scores
        if value is not None and not math.isnan(float(value)):
            out[str(case)] = float(value)
    return out


def case_means(replicates: dict[tuple, dict[str, Any]], keys: Iterable[tuple], metric: str = "dice"
               ) -> dict[str, float] | None:
    """Per case, the mean over the given replicates that evaluated it (None if any run lacks
    per-volume results). With k folds each case is tested by one fold's runs."""
    sums: dict[str, list[float]] = defaultdict(list)
    for key in keys:
        values = case_values(replicates[key], metric)
        if values is None:
            return None
        for case, value in values.items():
            sums[case].append(value)
    return {case: float(np.mean(v)) for case, v in sums.items()}


def seed_case_matrix(groups, keys: Sequence[tuple], metric: str = "dice"
                     ) -> tuple[np.ndarray, list[int], list[str]] | None:
    """Effects D[seed, case] = sum(coef * per-volume metric) over the shared runs `keys`
    ((seed, split) pairs; with folds each case is tested by one split), NaN where a seed did
    not test a case. None if any run lacks per-volume results."""
    cells: dict[tuple[int, str], list[float]] = defaultdict(list)
    for key in keys:
        per_config = [case_values(reps[key], metric) for _, _, reps in groups]
        if any(v is None for v in per_config):
            return None
        for case in set.intersection(*(set(v) for v in per_config)):
            cells[(key[0], case)].append(sum(coef * v[case] for (coef, _, _), v in zip(groups, per_config)))
    seeds = sorted({s for s, _ in cells})
    cases = sorted({c for _, c in cells})
    matrix = np.full((len(seeds), len(cases)), np.nan)
    for (seed, case), values in cells.items():
        matrix[seeds.index(seed), cases.index(case)] = float(np.mean(values))
    return matrix, seeds, cases


def complete_block(matrix: np.ndarray) -> np.ndarray:
    """The largest simple complete part of D[seed, case]: the cases every seed tested, else
    the seeds that tested every case."""
    cols = ~np.isnan(matrix).any(axis=0)
    if cols.sum() >= 2 or not matrix.size:
        return matrix[:, cols]
    rows = ~np.isnan(matrix).any(axis=1)
    sub = matrix[rows]
    return sub[:, ~np.isnan(sub).any(axis=0)]


def crossed_t_ci(matrix: np.ndarray, ci: float = 0.95) -> tuple[float, float, float]:
    """CI of the mean of a complete D[seed, case] as a crossed two-way random-effects design
    (seed effect + case effect + residual): Var(mean) = (MS_seed + MS_case - MS_resid)/(S*C),
    a t interval with Satterthwaite degrees of freedom. Seeds and test cases both count as
    samples, so a lucky seed does not pass for an effect (simulated false-positive rate
    about 5% for 2 or more seeds). One seed: the ordinary t interval over cases, which
    cannot see run-to-run variation. Returns (low, high, df); NaN when undefined."""
    from scipy import stats as st

    n_seeds, n_cases = matrix.shape
    if n_cases < 2 or n_seeds < 1:
        return math.nan, math.nan, math.nan
    mean = float(matrix.mean())
    if n_seeds == 1:
        var, df = float(matrix.var(ddof=1)) / n_cases, n_cases - 1
    else:
        rows, cols = matrix.mean(axis=1), matrix.mean(axis=0)
        ms_seed = n_cases * float(((rows - mean) ** 2).sum()) / (n_seeds - 1)
        ms_case = n_seeds * float(((cols - mean) ** 2).sum()) / (n_cases - 1)
        resid = matrix - rows[:, None] - cols[None, :] + mean
        ms_resid = float((resid ** 2).sum()) / ((n_seeds - 1) * (n_cases - 1))
        combo = ms_seed + ms_case - ms_resid
        parts = [(ms_seed, n_seeds - 1), (ms_case, n_cases - 1), (ms_resid, (n_seeds - 1) * (n_cases - 1))]
        if combo < max(ms_seed, ms_case):  # negative variance component: keep the larger mean square
            combo = max(ms_seed, ms_case)
            parts = [max(parts[:2], key=lambda p: p[0])]
        denom = sum(v ** 2 / d for v, d in parts)
        df = combo ** 2 / denom if denom > 0 else float(n_seeds * n_cases - 1)
        var = combo / (n_seeds * n_cases)
    if var == 0:
        return mean, mean, float(df)
    half = float(st.t.ppf(0.5 + ci / 2, df)) * math.sqrt(var)
    return mean - half, mean + half, float(df)


def contrast(index: RunIndex, terms: Sequence[tuple[float, Spec]], setting: str, metric: str = "dice",
             n_boot: int = 10000) -> dict[str, Any]:
    """The contrast sum(coef * config) (e.g. KD - baseline) between configurations of one setting.

    Per-volume results and shared (seed, split) runs: effects D[seed, case]; the effect is
    their mean, the CI `crossed_t_ci` (seeds and cases as random effects), p the Wilcoxon
    signed-rank test of the per-case effects (mean over seeds) against 0, n = cases. Per-volume
    results but no shared run: per-case means over each configuration's own runs, CI over
    cases. No per-volume results: pooled metric per shared run, CI and Wilcoxon over runs.
    """
    groups = [(coef, spec, index.get(spec, setting)) for coef, spec in terms]
    missing = [label(spec) for _, spec, reps in groups if not reps]
    out: dict[str, Any] = {"effect": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0,
                           "n_runs": min((len(r) for _, _, r in groups), default=0), "p": math.nan,
                           "basis": "", "per_run_effects": "", "reason": None}
    if missing:
        out["reason"] = "no runs for " + ", ".join(missing)
        return out
    shared = sorted(set.intersection(*(set(reps) for _, _, reps in groups)))
    per_run = [sum(coef * pooled_value(reps[key], metric) for coef, _, reps in groups) for key in shared]
    out["per_run_effects"] = ", ".join(f"{v:+.3f}" for v in per_run)
    ci = None
    table = seed_case_matrix(groups, shared, metric) if shared else None
    block = complete_block(table[0]) if table is not None else np.empty((0, 0))
    if block.size:
        values = list(block.mean(axis=0))
        low, high, df = crossed_t_ci(block)
        ci = (low, high)
        n_seeds = block.shape[0]
        out["basis"] = (f"per-volume {metric}, paired by test case and seed; {n_seeds} seed(s); "
                        + ("CI: seeds and cases as random effects (t, Satterthwaite df "
                           f"{df:.1f})" if n_seeds > 1 else "CI over cases (t)"))
        out["n_runs"] = len(shared)
        if n_seeds == 1:
            out["reason"] = "one seed: run-to-run variation is not measured, so the CI is too narrow"
    else:
        means = [case_means(reps, sorted(reps), metric) for _, _, reps in groups]
        if not shared and all(m is not None for m in means):
            cases = sorted(set.intersection(*(set(m) for m in means)))
            values = [sum(coef * m[c] for (coef, _, _), m in zip(groups, means)) for c in cases]
            out["basis"] = (f"per-volume {metric}, paired by test case; no seed/fold shared: each "
                            f"configuration averaged over its own runs; CI resamples cases")
        elif shared:
            values = per_run
            out["basis"] = f"pooled {metric} per run, paired by seed/fold; CI resamples runs"
            out["n_runs"] = len(shared)
        else:
            out["reason"] = "no per-volume results and no seed/fold shared by the configurations"
            return out
    values = [float(v) for v in values if not math.isnan(v)]
    out["n"] = len(values)
    if not values:
        out["reason"] = "no paired values"
        return out
    out["effect"] = float(np.mean(values))
    out["ci_low"], out["ci_high"] = ci if ci is not None else stats.bootstrap_ci(values, n_boot=n_boot)
    out["p"] = stats.paired_wilcoxon(values, [0.0] * len(values))["p"]
    if len(values) < 2:
        out["reason"] = f"n = {len(values)} < 2"
    return out


# ---------------------------------------------------------------------------------------
# The claims


TABLE_4_2 = {("T1", "S1"): "B", ("T1", "S2"): "B", ("T2", "S1"): "E", ("T2", "S2"): "B"}  # all +PMD


def _best(t: str, s: str) -> Spec:
    """Table 4.2's configuration for a teacher-student pair (the thesis's pick, with PMD)."""
    return kd_spec(t, s, TABLE_4_2[(t, s)], True)


def claim_definitions(margin: float = MARGIN) -> list[dict[str, Any]]:
    """Each claim's comparisons: terms (coef, config), direction, null; see `claims_table`."""
    d: list[dict[str, Any]] = []

    def add(cid, claim, terms, direction="greater", null=0.0, comparison=None, note=""):
        d.append(dict(claim_id=cid, claim=claim, terms=terms, direction=direction, null=null,
                      comparison=comparison, note=note))

    c1 = "Distillation improves the small student S1"
    add("1", c1, [(1, _best("T1", "S1")), (-1, baseline_spec("S1"))],
        note="Table 4.2's KD(T1,S1) configuration, fixed in advance")
    add("1", c1, "best KD(T1,S1)", note=POST_HOC_NOTE)

    c2 = "Encoder-to-encoder (E->E) is the best single scale to distil"
    for t, s in (("T1", "S1"), ("T2", "S1"), ("T1", "S2")):
        for other in ("B", "D"):
            add("2", c2, [(1, kd_spec(t, s, "E", False)), (-1, kd_spec(t, s, other, False))])
    add("2", c2, [(1, kd_spec("T2", "S1", "E", True)), (-1, kd_spec("T2", "S1", "B", True))],
        note="the thesis's Table 4.2 pick for T2->S1 (E->E+PMD)")

    c3 = "Distilling all scales at once is worse than distilling one"
    for (t, s), single in (((("T1", "S1"), "B"), (("T2", "S1"), "E"), (("T1", "S2"), "B"))):
        add("3", c3, [(1, kd_spec(t, s, "B+E+D", False)), (-1, kd_spec(t, s, single, False))],
            direction="less", note=f"single scale: the one Table 4.2 uses for {t}->{s}")

    c4 = "The contrastive (InfoNCE) feature loss beats MSE"
    for scales in ("B", "B+E", "B+E+D"):
        for pmd in (False, True):
            add("4", c4, [(1, kd_spec("T1", "S1", scales, pmd, "infonce")),
                          (-1, kd_spec("T1", "S1", scales, pmd, "mse"))])

    c5 = "PMD helps"
    for t, s in (("T1", "S1"), ("T2", "S1"), ("T1", "S2")):
        add("5", c5, [(1, kd_spec(t, s, "B", True)), (-1, kd_spec(t, s, "B", False))])

    c6 = "A larger teacher (T2) does not help more than T1"
    for s in ("S1", "S2"):
        add("6", c6, [(1, _best("T2", s)), (-1, _best("T1", s))], direction="less", null=margin,
            note=f"Table 4.2's configurations; margin {margin} Dice")

    c7 = "A distilled student on 50% of the data matches one trained on 100% without distillation"
    add("7", c7, [(1, _best("T1", "S1")), (-1, baseline_spec("S1", 1.0))], null=-margin,
        note=f"non-inferiority, margin {margin} Dice (Table 4.11's S1 on 100%)")

    c8 = "The smaller student (S1) gains more from distillation than the larger (S2)"
    for t in ("T1", "T2"):
        add("8", c8, [(1, _best(t, "S1")), (-1, baseline_spec("S1")),
                      (-1, _best(t, "S2")), (1, baseline_spec("S2"))],
            comparison=f"[{label(_best(t, 'S1'))} − S1 baseline] − [{label(_best(t, 'S2'))} − S2 baseline]")
    return d


def _comparison_text(terms) -> str:
    plus = [label(s) for c, s in terms if c > 0]
    minus = [label(s) for c, s in terms if c < 0]
    return " + ".join(plus) + "".join(f" − {m}" for m in minus)


def _criterion(direction: str, null: float) -> str:
    side = "above" if direction == "greater" else "below"
    return f"95% CI of the effect entirely {side} {'0' if null == 0 else f'{null:+g}'}"


def _best_kd_t1_s1(index: RunIndex, setting: str, metric: str) -> Spec | None:
    """Our best KD(T1,S1) configuration on 50% data by mean Dice (per volume, else pooled)."""
    best, best_value = None, -math.inf
    for run_setting, spec in index.configurations(setting):
        if not (spec["table"] == "kd" and spec["teacher"] == "T1" and spec["student"] == "S1"
                and spec["train_fraction"] == 0.5):
            continue
        reps = index.get(spec, run_setting)
        values = []
        for run in reps.values():
            cases = case_values(run, metric)
            values.append(float(np.mean(list(cases.values()))) if cases else pooled_value(run, metric))
        value = float(np.nanmean(values)) if values else -math.inf
        if value > best_value:
            best, best_value = spec, value
    return best


def claims_table(runs, baseline_label: str = "S1 baseline", metric: str = "dice", margin: float = MARGIN,
                 n_boot: int = 10000) -> pd.DataFrame:
    """One row per comparison behind each claim of the thesis, per setting among the runs.

    Columns: claim_id, claim, comparison (claimed config − reference), setting, verdict,
    effect (mean paired difference), ci_low, ci_high, n (paired units), n_runs (seed/fold
    runs averaged), p (Wilcoxon vs 0), p_holm, thesis_effect (the same contrast in the
    thesis's numbers), criterion, basis, per_run_effects, note. `baseline_label` names the
    S1 baseline in the text of claim 1's post hoc row.
    """
    index = RunIndex(runs)
    settings = index.settings or ["corrected"]
    records = []
    for setting in settings:
        for item in claim_definitions(margin):
            terms, note = item["terms"], item["note"]
            if terms == "best KD(T1,S1)":
                best = _best_kd_t1_s1(index, setting, metric)
                if best is None:
                    terms = None
                    comparison = f"best KD(T1,S1) configuration − {baseline_label}"
                else:
                    terms = [(1, best), (-1, baseline_spec("S1"))]
                    comparison = f"{label(best)} − {baseline_label} (best of ours)"
            else:
                comparison = item["comparison"] or _comparison_text(terms)
            if terms is None:
                result = {"effect": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0, "n_runs": 0,
                          "p": math.nan, "basis": "", "per_run_effects": "",
                          "reason": "no KD(T1,S1) runs on 50% data"}
                thesis_effect = math.nan
            else:
                result = contrast(index, terms, setting, metric, n_boot)
                thesis_effect = float(sum(c * thesis_value(s, metric) for c, s in terms))
            verdict = stats.verdict(result["ci_low"], result["ci_high"], item["direction"], result["n"],
                                    null=item["null"])
            notes = [n for n in (note, result["reason"]) if n]
            if item["claim_id"] == "5" and setting == "faithful":
                notes.append(FAITHFUL_PMD_NOTE)
            records.append({
                "claim_id": item["claim_id"], "claim": item["claim"], "comparison": comparison,
                "setting": setting, "verdict": verdict, "effect": result["effect"],
                "ci_low": result["ci_low"], "ci_high": result["ci_high"], "n": result["n"],
                "n_runs": result["n_runs"], "p": result["p"], "thesis_effect": thesis_effect,
                "criterion": _criterion(item["direction"], item["null"]), "basis": result["basis"],
                "per_run_effects": result["per_run_effects"], "note": "; ".join(notes),
            })
    df = pd.DataFrame.from_records(records)
    df.insert(df.columns.get_loc("p") + 1, "p_holm", stats.holm(list(df["p"])) if len(df) else [])
    df.attrs["caption"] = (f"Claims of the thesis: verdicts from our runs (per-volume {metric} where available; "
                           f"95% CI with seeds and test cases as random effects; p: Wilcoxon signed-rank "
                           f"over test cases, Holm-adjusted in p_holm)")
    return df


# ---------------------------------------------------------------------------------------
# The thesis's ANOVA, on our runs


def anova_groups_rows() -> dict[str, list[dict[str, Any]]]:
    """The thesis rows in each group of `stats.thesis_anova_groups` (default selection).

    `thesis_anova_groups` returns IoU values; giving it each row's position in place of its
    IoU returns the positions instead, so the grouping stays defined in one place.
    """
    rows = experiments.thesis_rows()
    marked = [dict(row, iou=float(i)) for i, row in enumerate(rows)]
    groups = stats.thesis_anova_groups(marked)
    return {name: [rows[int(i)] for i in positions] for name, positions in groups.items()}


def _anova_record(source: str, setting: str | None, groups: dict[str, list[float]], found: str,
                  note: str = "") -> dict[str, Any]:
    rec = {"source": source, "setting": setting, "configurations": found, "F": math.nan, "p": math.nan,
           "df_between": math.nan, "df_within": math.nan}
    groups = {k: v for k, v in groups.items() if v}
    rec["groups"] = "; ".join(f"{k}: n={len(v)}, mean={np.mean(v):.3f}" for k, v in groups.items())
    try:
        result = stats.one_way_anova(groups)
    except KdlibError as exc:
        note = "; ".join(n for n in (note, f"not computable: {exc}") if n)
    else:
        rec.update(F=result["F"], p=result["p"], df_between=result["df_between"],
                   df_within=result["df_within"])
    rec["note"] = note
    return rec


def anova_table(runs, metric: str = "iou") -> pd.DataFrame:
    """The thesis's one-way ANOVA (S1 baseline vs the KD(T1,S1) configurations of
    `stats.thesis_anova_groups`) on the thesis's numbers and on ours.

    Rows: the thesis (tabulated baseline IoU 0.557, and 0.551 = the text's "0.55"), then per
    setting ours in two forms: one value per configuration (mean over its runs, as the
    thesis had one number per configuration) and one value per run (seeds x folds).
    Columns: source, setting, groups, configurations (found / expected), F, p, df_between,
    df_within, note.
    """
    thesis = experiments.thesis_rows()
    records = [
        _anova_record("thesis (tabulated S1 IoU 0.557)", None, stats.thesis_anova_groups(thesis), "13 / 13",
                      "the thesis reports F = 5.48, p = 0.039"),
        _anova_record("thesis (S1 IoU 0.551, the text's '0.55')", None,
                      stats.thesis_anova_groups(thesis, baseline_iou=0.551), "13 / 13"),
    ]
    rows = anova_groups_rows()
    index = RunIndex(runs)
    expected = sum(len(v) for v in rows.values())
    for setting in index.settings:
        per_config: dict[str, list[float]] = {}
        per_run: dict[str, list[float]] = {}
        found = 0
        for name, group_rows in rows.items():
            per_config[name], per_run[name] = [], []
            for row in group_rows:
                spec = spec_of_row(row)
                values = [pooled_value(r, metric) for r in index.get(spec, setting).values()]
                values = [v for v in values if not math.isnan(v)]
                if values:
                    found += 1
                    per_config[name].append(float(np.mean(values)))
                    per_run[name].extend(values)
        text = f"{found} / {expected}"
        records.append(_anova_record("ours: one value per configuration", setting, per_config, text))
        records.append(_anova_record("ours: one value per run", setting, per_run, text,
                                     "runs of one configuration are not independent configurations"))
    df = pd.DataFrame.from_records(records, columns=["source", "setting", "groups", "configurations", "F",
                                                     "p", "df_between", "df_within", "note"])
    df.attrs["caption"] = f"The thesis's one-way ANOVA (S1 baseline vs KD(T1,S1) configurations), {metric}"
    return df


def spec_of_row(row: dict[str, Any]) -> Spec:
    """The configuration of a thesis table row."""
    if row["table"] == "4.1":
        return {"table": "4.1", "teacher": "", "student": row["student"], "kd_loss": "none", "scales": "",
                "pmd": False, "train_fraction": float(row["train_fraction"])}
    if row["kd_loss"] == "none":
        return baseline_spec(row["student"], row["train_fraction"])
    return kd_spec(row["teacher"], row["student"], row["scales"], row["pmd"], row["kd_loss"],
                   row["train_fraction"])


# ---------------------------------------------------------------------------------------
# Summaries for notebook 05


def configuration_summary(runs, metric: str = "dice", n_boot: int = 10000) -> pd.DataFrame:
    """Every configuration among the runs: mean, std, 95% bootstrap CI of pooled `metric`
    over its runs (seeds x folds), per setting; with the thesis's value and table rows."""
    index = RunIndex(runs)
    records = []
    for setting, spec in index.configurations():
        reps = index.get(spec, setting)
        values = [pooled_value(r, metric) for r in reps.values()]
        values = [v for v in values if not math.isnan(v)]
        summary = stats.summarize(values, n_boot=n_boot)
        records.append({
            "label": label(spec), "setting": setting, "n_runs": summary["n"],
            "n_seeds": len({k[0] for k in reps}), "n_folds": len({k[1] for k in reps}),
            "mean": summary["mean"], "std": summary["std"], "ci_low": summary["ci_low"],
            "ci_high": summary["ci_high"], "thesis": thesis_value(spec, metric),
            "thesis_rows": thesis_rows_of(spec), "_order": {"4.1": 0, "baseline": 1, "kd": 2}[spec["table"]],
        })
    df = pd.DataFrame.from_records(records, columns=["label", "setting", "n_runs", "n_seeds", "n_folds", "mean",
                                                     "std", "ci_low", "ci_high", "thesis", "thesis_rows", "_order"])
    df = df.sort_values(["setting", "_order", "label"], kind="stable").drop(columns="_order").reset_index(drop=True)
    df.attrs["caption"] = f"Every configuration: pooled {metric} over runs (seeds x folds), 95% bootstrap CI"
    return df


def paired_comparisons(runs, metric: str = "dice", n_boot: int = 10000) -> pd.DataFrame:
    """Each distilled student against its baseline (same student, data fraction, setting),
    per test volume (`stats.compare_to_baseline` on per-case means over shared runs);
    per-run pooled values paired by seed/fold where per-volume results are missing.

    Columns (usable by `figures.forest_plot`): label, setting, baseline, n_pairs, n_runs,
    baseline_mean, mean, diff, ci_low, ci_high, wilcoxon_stat, p, p_holm (Holm over the
    whole table), cohens_d, rank_biserial, basis, reason.
    """
    index = RunIndex(runs)
    frames = []
    for setting, spec in index.configurations():
        if spec["table"] != "kd":
            continue
        base_spec = baseline_spec(spec["student"], spec["train_fraction"])
        base, kd = index.get(base_spec, setting), index.get(spec, setting)
        if not base:
            continue
        shared = sorted(set(base) & set(kd))
        keys_b, keys_k = (shared, shared) if shared else (sorted(base), sorted(kd))
        mb, mk = case_means(base, keys_b, metric), case_means(kd, keys_k, metric)
        if mb is not None and mk is not None:
            values, basis = {"base": mb, "kd": mk}, "per-volume, paired by test case"
        elif shared:
            values = {"base": {str(k): pooled_value(base[k], metric) for k in shared},
                      "kd": {str(k): pooled_value(kd[k], metric) for k in shared}}
            basis = "pooled per run, paired by seed/fold"
        else:
            continue
        result = stats.compare_to_baseline(values, "base", metric=metric, n_boot=n_boot)
        result = result.assign(label=label(spec), setting=setting, baseline=label(base_spec),
                               n_runs=len(shared) if shared else min(len(base), len(kd)), basis=basis)
        frames.append(result)
    columns = ["label", "setting", "baseline", "n_pairs", "n_runs", "baseline_mean", "mean", "diff", "ci_low",
               "ci_high", "wilcoxon_stat", "p", "p_holm", "cohens_d", "rank_biserial", "basis", "reason"]
    caption = f"Distilled students against their baselines, per test volume ({metric})"
    if not frames:
        empty = pd.DataFrame(columns=columns)
        empty.attrs["caption"] = caption
        return empty
    df = pd.concat(frames, ignore_index=True).rename(columns={"mean_diff": "diff"})
    df = df.sort_values(["setting", "label"], kind="stable").reset_index(drop=True)
    df["p_holm"] = stats.holm(list(df["p"]))
    if df["setting"].nunique() > 1:
        df["label"] = [f"{lab} ({s})" for lab, s in zip(df["label"], df["setting"])]
    df = df[columns]
    df.attrs["caption"] = caption
    return df
