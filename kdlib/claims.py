"""The thesis's claims, each with the rows it rests on and the sentence it tests; verdicts
from our runs; the thesis's ANOVA; per-configuration summaries and paired comparisons.

All inference (the interval, p, verdicts, power) is `kdlib.stats`; this module only says
which runs each comparison uses. The unit is the test patient (`stats.nested_interval`):
per fold, the matrix of (shared seeds x that fold's test patients) of the contrast
sum(coef * per-volume Dice). Runs without per-volume results fall back to pooled Dice with
the fold's test set as one unit.

A configuration is named by the thesis's columns (teacher, student, loss, scales in the
thesis's order, PMD, data fraction; `experiments.describe`), per setting (corrected /
faithful): settings are never mixed within one comparison.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

import numpy as np
import pandas as pd

from . import experiments, stats
from .errors import KdlibError
from .tables import describe_runs, reached_plateau

MARGIN = 0.02  # Dice: equivalence / non-superiority margin, below the smallest gain the
# thesis calls an improvement (KD(T1,S2) - S2 = 0.024 Dice in Table 4.2)
Spec = dict  # the thesis-row columns a configuration is matched on
KEYS = ("table", "teacher", "student", "kd_loss", "scales", "pmd", "train_fraction")

FAITHFUL_PMD_NOTE = ("faithful setting: the original's PMD is a softmax over one channel, identically "
                     "zero, so B+PMD and B train the same objective; any difference is seed noise")


# ---------------------------------------------------------------------------------------
# Configurations


def kd_spec(teacher: str, student: str, scales: str, pmd: bool, loss: str = "infonce",
            fraction: float = 0.5) -> Spec:
    return {"table": "kd", "teacher": teacher, "student": student, "kd_loss": loss,
            "scales": experiments.canonical_scales(scales), "pmd": bool(pmd), "train_fraction": float(fraction)}


def baseline_spec(student: str, fraction: float = 0.5) -> Spec:
    return {"table": "baseline", "teacher": "", "student": student, "kd_loss": "none",
            "scales": "", "pmd": False, "train_fraction": float(fraction)}


def control_spec(student: str) -> Spec:
    """Our KD-off control: the distilled students' recipe without a teacher."""
    return dict(baseline_spec(student), table="control")


def spec_of(desc: dict[str, Any]) -> Spec:
    """The configuration (setting and seed aside) of an `experiments.describe` result."""
    if desc["role"] == "teacher":
        return {"table": "4.1", "teacher": "", "student": desc["model"], "kd_loss": "none",
                "scales": "", "pmd": False, "train_fraction": desc["train_fraction"]}
    if desc["role"] == "baseline":
        return baseline_spec(desc["student"], desc["train_fraction"])
    if desc["role"] == "control":
        return control_spec(desc["student"])
    return kd_spec(desc["teacher"], desc["student"], desc["scales"], desc["pmd"], desc["kd_loss"],
                   desc["train_fraction"])


def spec_of_row(row: dict[str, Any]) -> Spec:
    """The configuration of a thesis table row (or of one of our control rows)."""
    role = experiments.row_role(row)
    if role == "teacher":
        return {"table": "4.1", "teacher": "", "student": row["student"], "kd_loss": "none", "scales": "",
                "pmd": False, "train_fraction": float(row["train_fraction"])}
    if role == "baseline":
        return baseline_spec(row["student"], row["train_fraction"])
    if role == "control":
        return control_spec(row["student"])
    return kd_spec(row["teacher"], row["student"], row["scales"], row["pmd"], row["kd_loss"],
                   row["train_fraction"])


def label(spec: Spec) -> str:
    """Thesis-style name: "S1 baseline", "S1 control", "KD(T1,S1) B->B+PMD", "... MSE", "(100% data)"."""
    data = " (100% data)" if spec["train_fraction"] >= 1.0 and spec["table"] != "4.1" else ""
    if spec["table"] == "4.1":
        return f"{spec['student']} (teacher)"
    if spec["table"] == "control":
        return f"{spec['student']} control (KD recipe, no teacher)"
    if spec["kd_loss"] == "none":
        return f"{spec['student']} baseline{data}"
    scales = "+".join(f"{s}->{s}" for s in spec["scales"].split("+") if s)
    loss = " MSE" if spec["kd_loss"] == "mse" else ""
    return f"KD({spec['teacher']},{spec['student']}) {scales}{'+PMD' if spec['pmd'] else ''}{loss}{data}"


def key(spec: Spec) -> tuple:
    return tuple(spec[k] for k in KEYS)


def _rows_of(spec: Spec) -> list[dict[str, Any]]:
    return [row for row in experiments.thesis_rows() if key(spec_of_row(row)) == key(spec)]


def thesis_value(spec: Spec, metric: str = "dice") -> float:
    """The thesis's number for a configuration (first table that lists it), else NaN."""
    rows = _rows_of(spec)
    return float(rows[0][metric]) if rows else math.nan


def thesis_rows_of(spec: Spec) -> str:
    """Where the thesis lists a configuration, e.g. "4.2 KD(T1,S1); 4.7 B->B+PMD"."""
    return "; ".join(f"{row['table']} {row['row']}" for row in _rows_of(spec))


class RunIndex:
    """Runs grouped by (setting, configuration) and keyed by replicate (split, seed)."""

    def __init__(self, runs: Iterable[dict[str, Any]]):
        self.groups: dict[tuple, dict[tuple, dict[str, Any]]] = defaultdict(dict)
        self.specs: dict[tuple, Spec] = {}
        for run, desc in describe_runs(runs):
            spec = spec_of(desc)
            group = (desc["setting"], key(spec))
            self.specs[group] = spec
            replicate = (str(run["config"].get("split", "")), int(desc["seed"]))
            # the same replicate twice (e.g. re-run with another epoch count): keep the first by folder
            current = self.groups[group].get(replicate)
            if current is None or run["run_dir"] < current["run_dir"]:
                self.groups[group][replicate] = run
        self.settings = [s for s in experiments.SETTINGS if any(k[0] == s for k in self.groups)]

    def get(self, spec: Spec, setting: str) -> dict[tuple, dict[str, Any]]:
        return self.groups.get((setting, key(spec)), {})

    def configurations(self, setting: str | None = None) -> list[tuple[str, Spec]]:
        return [(k[0], self.specs[k]) for k in self.groups if setting in (None, k[0])]


# ---------------------------------------------------------------------------------------
# Numbers out of runs


def pooled_value(run: dict[str, Any], metric: str = "dice", block: str | None = None) -> float:
    metrics = run["metrics"] if block is None else (run["metrics"].get(block) or {})
    value = (metrics.get("pooled") or {}).get(metric)
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


SUMMARY_ORDER = {"4.1": 0, "baseline": 1, "control": 2, "kd": 3}  # teachers, baselines, controls, KD


def _in_summary_order(index: RunIndex) -> list[tuple[str, Spec]]:
    """(setting, configuration) pairs by setting, then teachers, baselines, controls, KD."""
    return sorted(index.configurations(), key=lambda c: (c[0], SUMMARY_ORDER[c[1]["table"]], label(c[1])))


def per_patient_points(runs, metric: str = "dice") -> pd.DataFrame:
    """One row per (configuration, test patient, seed): the run's per-volume `metric`, for a
    plot that shows the spread behind every mean. Columns: label, setting, patient, fold,
    seed, value; configurations in the summary's order (teachers, baselines, controls, KD)."""
    index = RunIndex(runs)
    records = []
    for setting, spec in _in_summary_order(index):
        for (split, seed), run in sorted(index.get(spec, setting).items()):
            for patient, value in sorted((case_values(run, metric) or {}).items()):
                records.append({"label": label(spec), "setting": setting, "patient": patient,
                                "fold": Path(split).stem, "seed": seed, "value": value})
    return pd.DataFrame.from_records(records, columns=["label", "setting", "patient", "fold", "seed", "value"])


CURVE_COLUMNS = ["label", "setting", "fold", "test_patients", "seed", "epoch", "val_dice", "kept", "plateau",
                 "test_dice", "test_dice_last"]


def curve_points(runs) -> pd.DataFrame:
    """Validation Dice per epoch of the headline configurations (teachers, baselines, KD-off
    controls and Table 4.2's distilled students): one row per (configuration, fold, seed,
    epoch), with `kept` marking the epoch whose checkpoint was kept and `plateau` the run's
    `tables.reached_plateau` (False: it hit its cap still improving). Runs without a
    `history.csv` beside their record are left out. Same order as `per_patient_points`."""
    index = RunIndex(runs)
    headline = {key(_best(t, s)) for t, s in TABLE_4_2}
    records = []
    for setting, spec in _in_summary_order(index):
        if spec["table"] == "kd" and key(spec) not in headline:
            continue
        for (split, seed), run in sorted(index.get(spec, setting).items()):
            history = Path(run["run_dir"]) / "history.csv"
            if not history.exists():
                continue
            frame = pd.read_csv(history)
            kept = int(run["metrics"].get("best_epoch") or 0)
            base = {"label": label(spec), "setting": setting, "fold": Path(split).stem,
                    "test_patients": " + ".join(case_values(run) or {}), "seed": seed,
                    "plateau": reached_plateau(run), "test_dice": pooled_value(run),
                    "test_dice_last": pooled_value(run, block="last_epoch")}
            records += [{**base, "epoch": int(e), "val_dice": float(v), "kept": int(e) == kept}
                        for e, v in zip(frame["epoch"], frame["val_dice"])]
    return pd.DataFrame.from_records(records, columns=CURVE_COLUMNS)


def selection_table(points) -> pd.DataFrame:
    """How the kept checkpoint relates to each run's validation curve, per configuration
    (from `curve_points`): mean validation Dice at the kept epoch and at the run's best
    epoch, the gap between them, and mean pooled test Dice of the kept checkpoint and of
    the last epoch. A large gap means the selection rule kept a checkpoint the stopping rule
    (which watches validation Dice) would not have."""
    columns = ["configuration", "setting", "runs", "val Dice, kept", "val Dice, best epoch", "gap",
               "largest gap", "test Dice, kept", "test Dice, last epoch"]
    if len(points) == 0:
        return pd.DataFrame(columns=columns)
    run_keys = ["setting", "label", "fold", "seed"]
    per_run = points.groupby(run_keys, sort=False).agg(
        best=("val_dice", "max"), test=("test_dice", "first"), last=("test_dice_last", "first"))
    per_run["kept"] = points[points["kept"]].groupby(run_keys)["val_dice"].max()  # NaN: no kept epoch
    per_run["gap"] = per_run["best"] - per_run["kept"]
    rows = []
    for (setting, lab), g in per_run.groupby(level=["setting", "label"], sort=False):
        rows.append({"configuration": lab, "setting": setting, "runs": len(g), "val Dice, kept": g["kept"].mean(),
                     "val Dice, best epoch": g["best"].mean(), "gap": g["gap"].mean(),
                     "largest gap": g["gap"].max(), "test Dice, kept": g["test"].mean(),
                     "test Dice, last epoch": g["last"].mean()})
    return pd.DataFrame(rows, columns=columns)


def fold_blocks(groups: Sequence[tuple[float, dict[tuple, dict]]], metric: str = "dice"
                ) -> tuple[list[np.ndarray], str, list[float]]:
    """Per fold (split) that every term ran on: the (seeds x test patients) matrix of
    sum(coef * value). Seeds shared by all terms are paired; a fold where the terms share
    no seed is averaged per term over its own seeds (one row). Returns (blocks, unit,
    per-run pooled effects); unit is "patient" or, when some run lacks per-volume results,
    "fold test set" (pooled metric, one unit per fold)."""
    splits = sorted(set.intersection(*({r[0] for r in reps} for _, reps in groups)))
    runs = [run for _, reps in groups for rep, run in reps.items() if rep[0] in splits]
    per_patient = all(case_values(run, metric) is not None for run in runs)
    value = (lambda run: case_values(run, metric)) if per_patient else \
        (lambda run: {"test set": pooled_value(run, metric)})
    blocks, per_run = [], []
    for split in splits:
        by_term = [{seed: reps[(sp, seed)] for sp, seed in reps if sp == split} for _, reps in groups]
        seeds = sorted(set.intersection(*(set(t) for t in by_term)))
        fold_runs = [run for t in by_term for run in t.values()]
        cases = sorted(set.intersection(*(set(value(run)) for run in fold_runs)))
        if not cases:
            continue
        if seeds:
            rows = [[sum(c * value(t[s])[case] for (c, _), t in zip(groups, by_term)) for case in cases]
                    for s in seeds]
            per_run += [sum(c * pooled_value(t[s], metric) for (c, _), t in zip(groups, by_term)) for s in seeds]
        else:
            rows = [[sum(c * float(np.mean([value(r)[case] for r in t.values()]))
                         for (c, _), t in zip(groups, by_term)) for case in cases]]
        blocks.append(np.array(rows, dtype=float))
    return blocks, "patient" if per_patient else "fold test set", per_run


def contrast(index: RunIndex, terms: Sequence[tuple[float, Spec]], setting: str, metric: str = "dice"
             ) -> dict[str, Any]:
    """sum(coef * configuration) between configurations of one setting: `stats.nested_interval`
    of `fold_blocks`, plus `basis` (what was paired), `per_run_effects` and a `reason` when
    it could not be computed or run-to-run variation is unmeasured."""
    groups = [(coef, index.get(spec, setting)) for coef, spec in terms]
    missing = [label(spec) for (_, spec), (_, reps) in zip(terms, groups) if not reps]
    out = stats.nested_interval([])
    out.update(basis="", per_run_effects="", reason=None, missing=missing)
    if missing:
        out["reason"] = "no runs for " + ", ".join(missing)
        return out
    blocks, unit, per_run = fold_blocks(groups, metric)
    if not blocks:
        out["reason"] = "the configurations share no fold (split)"
        return out
    out.update(stats.nested_interval(blocks))
    out["per_run_effects"] = ", ".join(f"{v:+.3f}" for v in per_run)
    seeds = "/".join(str(b.shape[0]) for b in blocks)
    out["basis"] = (f"{'per-volume' if unit == 'patient' else 'pooled'} {metric}; unit: {unit}; "
                    f"{len(blocks)} fold(s), seeds per fold {seeds}; CI: {out['method']} t")
    unsettled = [label(spec) for (_, spec), (_, reps) in zip(terms, groups)
                 if any(reached_plateau(run) is False for run in reps.values())]
    out["converged"] = not unsettled
    if out["n_patients"] < 2:
        out["reason"] = f"{out['n_patients']} {unit}(s): no interval"
    elif not out["run_noise_measured"]:
        out["reason"] = "one run per configuration: run-to-run variation is not measured"
    elif unsettled:  # a model still improving at its cap answers no question
        out["reason"] = "not converged: runs of " + ", ".join(unsettled) + " hit their epoch cap still improving"
    return out


# ---------------------------------------------------------------------------------------
# The claims: declarative. Each comparison: terms (coef, configuration), read as
# "claimed configuration minus reference"; `kind` and `margin` as in `stats.verdict`.


TABLE_4_2 = {("T1", "S1"): "B", ("T1", "S2"): "B", ("T2", "S1"): "E", ("T2", "S2"): "B"}  # all +PMD


def _best(t: str, s: str) -> Spec:
    """Table 4.2's configuration for a teacher-student pair (the thesis's pick, with PMD)."""
    return kd_spec(t, s, TABLE_4_2[(t, s)], True)


def _gain(t: str, s: str, reference: str) -> list[tuple[float, Spec]]:
    ref = baseline_spec(s) if reference == "baseline" else control_spec(s)
    return [(1, _best(t, s)), (-1, ref)]


def _vs(a: Spec, b: Spec) -> list[tuple[float, Spec]]:
    return [(1, a), (-1, b)]


AGAINST_CONTROL = ("against our KD-off control (same optimiser, batch, data and epochs, no teacher): "
                   "the effect of distillation itself, not of the recipe")

CLAIMS: list[dict[str, Any]] = [
    dict(claim_id="1", claim="Distillation improves the small student S1", kind="greater",
         sentence="KD(T1, S1) achieves a significant increase of 12.9% in IoU and 7.97% in Dice "
                  "coefficient, whereas KD(T1, S2) improves by 5.1% and 3.9% when compared to the "
                  "corresponding baseline models S1 and S2, respectively. (section 4.4, Table 4.2)",
         comparisons=[(_gain("T1", "S1", "baseline"), "against the thesis's baseline (AdamW recipe), as the thesis"),
                      (_gain("T1", "S1", "control"), AGAINST_CONTROL)]),
    dict(claim_id="2", claim="Encoder-to-encoder (E->E) is the best single scale to distil (T1->S1)",
         kind="greater",
         sentence="the most significant performance improvement in segmentation is seen in "
                  "encoder-to-encoder knowledge distillation using contrastive learning (section 4.6, Table 4.3)",
         comparisons=[(_vs(kd_spec("T1", "S1", "E", False), kd_spec("T1", "S1", o, False)), "Table 4.3")
                      for o in ("B", "D")]),
    dict(claim_id="3", claim="Distilling all scales at once is worse than distilling one", kind="less",
         sentence="it is worth noting that distilling information from all layers simultaneously "
                  "results in slightly lower performance (section 4.6, Tables 4.3-4.5)",
         comparisons=[(_vs(kd_spec(t, s, "B+E+D", False), kd_spec(t, s, single, False)),
                       f"single scale: the one Table 4.2 uses for {t}->{s}")
                      for (t, s), single in ((("T1", "S1"), "B"), (("T2", "S1"), "E"), (("T1", "S2"), "B"))]),
    dict(claim_id="4", claim="The contrastive (InfoNCE) feature loss beats MSE", kind="greater",
         sentence="the performance increase achieved through simple knowledge distillation using MSE "
                  "loss was not as significant as the results obtained with contrastive loss (Table 4.10)",
         comparisons=[(_vs(kd_spec("T1", "S1", sc, pmd, "infonce"), kd_spec("T1", "S1", sc, pmd, "mse")),
                       "Table 4.10 against Tables 4.3/4.6/4.7")
                      for sc in ("B", "B+E", "B+E+D") for pmd in (False, True)]),
    dict(claim_id="5", claim="PMD helps (bottleneck distillation)", kind="greater",
         sentence="the introduction of PMD in the knowledge distillation process yields promising "
                  "improvements [...] the variant involving a bottleneck-to-bottleneck knowledge "
                  "distillation with PMD produced the best results in the (T1, S1) pair; Similar "
                  "results were obtained when experiments were performed on the (S2) student model "
                  "(Tables 4.7-4.9)",
         comparisons=[(_vs(kd_spec(t, s, "B", True), kd_spec(t, s, "B", False)), f"Tables 4.3/4.7 or 4.8/4.9, {t}->{s}")
                      for t, s in (("T1", "S1"), ("T1", "S2"))]),
    dict(claim_id="6", claim="A larger teacher (T2) does not help more than T1", kind="at most", margin=MARGIN,
         sentence="in spite of using a more parameter heavy model the performance of the student "
                  "models has not increased significantly (12.9% vs 11.8% in S1) and (5.1% vs 4.9%) "
                  "(section 4.4, Table 4.2)",
         comparisons=[(_vs(_best("T2", s), _best("T1", s)), f"Table 4.2's configurations; margin {MARGIN} Dice")
                      for s in ("S1", "S2")]),
    dict(claim_id="7", claim="B->B distillation on 50% of the data matches B->B on 100%", kind="at least",
         margin=MARGIN,
         sentence="a simple bottleneck-to-bottleneck contrastive knowledge distillation method "
                  "produced better results (0.617 vs. 0.615 IoU) with a student model that was "
                  "trained on half the data compared to its counterpart (section 4.6, Tables 4.3 and 4.11)",
         comparisons=[(_vs(kd_spec("T1", "S1", "B", False), kd_spec("T1", "S1", "B", False, fraction=1.0)),
                       f"non-inferiority, margin {MARGIN} Dice")]),
    dict(claim_id="8", claim="The smaller student (S1) gains more from distillation than the larger (S2)",
         kind="greater",
         sentence="Since S2 is relatively larger than S1, the distillation effect is not as "
                  "significant when compared to KD(T1, S1) (section 4.5, Figure 4.12)",
         comparisons=[(_gain(t, "S1", ref) + [(-c, s) for c, s in _gain(t, "S2", ref)],
                       "against the thesis's baselines, as the thesis" if ref == "baseline" else AGAINST_CONTROL)
                      for t in ("T1", "T2") for ref in ("baseline", "control")]),
]


def rows_claims_need(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The thesis rows (of `experiments.thesis_rows`/`grid_rows`) whose configuration some claim
    compares: the cut a CPU-sized profile trains when the whole grid does not fit."""
    needed = {key(spec) for claim in CLAIMS for terms, _ in claim["comparisons"] for _, spec in terms}
    return [row for row in rows if key(spec_of_row(row)) in needed]


def _comparison_text(terms) -> str:
    if len(terms) == 4:  # a difference of two gains
        (_, a), (_, b), (_, c), (_, d) = terms
        return f"[{label(a)} − {label(b)}] − [{label(c)} − {label(d)}]"
    plus = [label(s) for c, s in terms if c > 0]
    minus = [label(s) for c, s in terms if c < 0]
    return " + ".join(plus) + "".join(f" − {m}" for m in minus)


def _criterion(kind: str, margin: float) -> str:
    return {"greater": "CI above 0", "less": "CI below 0", "at most": f"CI below +{margin:g}",
            "at least": f"CI above -{margin:g}", "equivalent": f"CI inside ±{margin:g}"}[kind]


def _deliberately_not_run(spec: Spec, not_run_tables: Collection[str]) -> bool:
    rows = _rows_of(spec)
    return bool(rows) and bool(not_run_tables) and all(r["table"] in not_run_tables for r in rows)


def claims_table(runs, metric: str = "dice", not_run_tables: Collection[str] = ()) -> pd.DataFrame:
    """One row per comparison behind each claim, per setting among the runs.

    `not_run_tables`: thesis tables the profile deliberately did not train; a comparison
    missing only configurations listed solely there is "not run in this profile".
    Columns: claim_id, claim, comparison, setting, verdict, effect, ci_low, ci_high,
    thesis_effect, consistent_with_thesis (is the thesis's effect inside our CI), criterion,
    mde (smallest effect this design detects, 80% power), n_patients, n_folds, n_runs, p
    (t test of 0, same model as the CI), p_holm, basis, per_run_effects, thesis_says, note.
    """
    index = RunIndex(runs)
    records = []
    for setting in index.settings or ["corrected"]:
        for claim in CLAIMS:
            kind, margin = claim["kind"], claim.get("margin", 0.0)
            for terms, note in claim["comparisons"]:
                result = contrast(index, terms, setting, metric)
                thesis_effect = float(sum(c * thesis_value(s, metric) for c, s in terms))
                ran = not (result["missing"] and all(
                    _deliberately_not_run(s, not_run_tables) for c, s in terms if label(s) in result["missing"]))
                v = stats.verdict(result["ci_low"], result["ci_high"], kind, margin,
                                  testable=result["run_noise_measured"] and result.get("converged", True),
                                  ran=ran)
                notes = [note, result["reason"] or ""]
                if claim["claim_id"] == "5" and setting == "faithful":
                    notes.append(FAITHFUL_PMD_NOTE)
                records.append({
                    "claim_id": claim["claim_id"], "claim": claim["claim"], "comparison": _comparison_text(terms),
                    "setting": setting, "verdict": v, "effect": result["estimate"],
                    "ci_low": result["ci_low"], "ci_high": result["ci_high"], "thesis_effect": thesis_effect,
                    "consistent_with_thesis": stats.consistent_with(thesis_effect, result["ci_low"],
                                                                    result["ci_high"]),
                    "criterion": _criterion(kind, margin),
                    "mde": stats.minimal_detectable_effect(result["se"], result["df"])
                    if v == stats.INCONCLUSIVE else math.nan,
                    "n_patients": result["n_patients"], "n_folds": result["n_folds"], "n_runs": result["n_runs"],
                    "p": result["p"], "basis": result["basis"], "per_run_effects": result["per_run_effects"],
                    "thesis_says": claim["sentence"], "note": "; ".join(n for n in notes if n),
                })
    df = pd.DataFrame.from_records(records)
    df.insert(df.columns.get_loc("p") + 1, "p_holm", stats.holm(list(df["p"])) if len(df) else [])
    df.attrs["caption"] = (f"Claims of the thesis: verdicts from our runs (per-volume {metric}; unit: the test "
                           f"patient; 95% CI: nested t interval of kdlib.stats; p_holm: Holm over the table)")
    return df


# ---------------------------------------------------------------------------------------
# The thesis's ANOVA, on the thesis's numbers and on ours


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

    Thesis rows: the tabulated baseline IoU 0.557 (F = 4.40); the text's "0.55" (F = 5.69);
    0.551, the baseline found by solving F = 5.48 (not a value the thesis states). Ours,
    per setting: one value per configuration, the mean over the replicates (fold, seed)
    that every found configuration ran, so all configurations are compared on the same
    folds and seeds.
    """
    thesis = experiments.thesis_rows()
    records = [
        _anova_record("thesis: tabulated S1 IoU 0.557", None, stats.thesis_anova_groups(thesis), "13 / 13",
                      "the thesis reports F = 5.48, p = 0.039; the tabulated values give F(1, 11) = 4.40"),
        _anova_record("thesis: the text's S1 IoU '0.55'", None,
                      stats.thesis_anova_groups(thesis, baseline_iou=0.55), "13 / 13",
                      "the text's rounded baseline gives F = 5.69, not 5.48"),
        _anova_record("thesis: S1 IoU 0.551, solved for F = 5.48", None,
                      stats.thesis_anova_groups(thesis, baseline_iou=0.551), "13 / 13",
                      "0.551 is found by solving for F; the thesis states neither 0.551 nor the rows used"),
    ]
    rows = anova_groups_rows()
    index = RunIndex(runs)
    expected = sum(len(v) for v in rows.values())
    for setting in index.settings:
        reps = {(name, i): index.get(spec_of_row(row), setting)
                for name, group_rows in rows.items() for i, row in enumerate(group_rows)}
        found = {k: v for k, v in reps.items() if v}
        shared = set.intersection(*(set(v) for v in found.values())) if found else set()
        groups: dict[str, list[float]] = {name: [] for name in rows}
        for (name, _), runs_of in found.items():
            values = [pooled_value(runs_of[r], metric) for r in sorted(shared)]
            values = [v for v in values if not math.isnan(v)]
            if values:
                groups[name].append(float(np.mean(values)))
        n_found = sum(len(v) for v in groups.values())
        records.append(_anova_record(
            "ours: one value per configuration", setting, groups, f"{n_found} / {expected}",
            f"mean over the {len(shared)} (fold, seed) replicate(s) every found configuration ran"))
    df = pd.DataFrame.from_records(records, columns=["source", "setting", "groups", "configurations", "F",
                                                     "p", "df_between", "df_within", "note"])
    df.attrs["caption"] = f"The thesis's one-way ANOVA (S1 baseline vs KD(T1,S1) configurations), {metric}"
    return df


# ---------------------------------------------------------------------------------------
# Summaries for notebook 05


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def configuration_summary(runs, metric: str = "dice") -> pd.DataFrame:
    """Every configuration among the runs, per setting: pooled `metric` (mean over runs) of the
    best checkpoint and of the last epoch, and the mean over test patients of per-volume
    `metric` with its 95% CI (`stats.nested_interval`); with the thesis's value and rows."""
    index = RunIndex(runs)
    records = []
    for setting, spec in index.configurations():
        reps = index.get(spec, setting)
        result = contrast(index, [(1, spec)], setting, metric)
        records.append({
            "label": label(spec), "setting": setting, "n_runs": len(reps),
            "n_seeds": len({k[1] for k in reps}), "n_folds": len({k[0] for k in reps}),
            "pooled_best": _mean([pooled_value(r, metric) for r in reps.values()]),
            "pooled_last_epoch": _mean([pooled_value(r, metric, "last_epoch") for r in reps.values()]),
            "patients": result["n_patients"], "patient_mean": result["estimate"],
            "ci_low": result["ci_low"], "ci_high": result["ci_high"], "ci_method": result["method"],
            "thesis": thesis_value(spec, metric), "thesis_rows": thesis_rows_of(spec),
            "_order": {"4.1": 0, "baseline": 1, "control": 2, "kd": 3}[spec["table"]],
        })
    columns = ["label", "setting", "n_runs", "n_seeds", "n_folds", "pooled_best", "pooled_last_epoch", "patients",
               "patient_mean", "ci_low", "ci_high", "ci_method", "thesis", "thesis_rows", "_order"]
    df = pd.DataFrame.from_records(records, columns=columns)
    df = df.sort_values(["setting", "_order", "label"], kind="stable").drop(columns="_order").reset_index(drop=True)
    df.attrs["caption"] = (f"Every configuration: pooled {metric} of the best checkpoint and of the last epoch "
                           f"(mean over runs); mean per-patient {metric} with its 95% CI (unit: test patient)")
    return df


def paired_comparisons(runs, metric: str = "dice") -> pd.DataFrame:
    """Each distilled student against its baseline and, where trained, its KD-off control
    (same student, data fraction, setting), with `contrast` (unit: the test patient).

    Columns (usable by `figures.forest_plot`): label, pair (teacher->student), setting,
    reference, n_pairs (patients), n_runs, reference_mean, mean, diff, ci_low, ci_high, p,
    p_holm (Holm over the whole table), method, reason.
    """
    index = RunIndex(runs)
    records = []
    for setting, spec in index.configurations():
        if spec["table"] != "kd":
            continue
        refs = [baseline_spec(spec["student"], spec["train_fraction"])]
        if spec["train_fraction"] < 1.0:
            refs.append(control_spec(spec["student"]))
        for ref in refs:
            if not index.get(ref, setting):
                continue
            diff = contrast(index, _vs(spec, ref), setting, metric)
            if diff["n_patients"] == 0:
                continue
            records.append({
                "label": label(spec), "pair": f"{spec['teacher']}->{spec['student']}", "setting": setting,
                "reference": label(ref), "n_pairs": diff["n_patients"], "n_runs": diff["n_runs"],
                "reference_mean": contrast(index, [(1, ref)], setting, metric)["estimate"],
                "mean": contrast(index, [(1, spec)], setting, metric)["estimate"], "diff": diff["estimate"],
                "ci_low": diff["ci_low"], "ci_high": diff["ci_high"], "p": diff["p"],
                "method": diff["method"], "reason": diff["reason"] or "",
            })
    columns = ["label", "pair", "setting", "reference", "n_pairs", "n_runs", "reference_mean", "mean", "diff",
               "ci_low", "ci_high", "p", "p_holm", "method", "reason"]
    df = pd.DataFrame.from_records(records, columns=[c for c in columns if c != "p_holm"])
    df = df.sort_values(["setting", "pair", "reference", "label"], kind="stable").reset_index(drop=True)
    df.insert(df.columns.get_loc("p") + 1, "p_holm", stats.holm(list(df["p"])) if len(df) else [])
    if df["setting"].nunique() > 1:
        df["label"] = [f"{lab} ({s})" for lab, s in zip(df["label"], df["setting"])]
    df.attrs["caption"] = (f"Distilled students against their baseline and KD-off control, mean per-patient "
                           f"{metric} difference (unit: test patient; 95% CI: nested t interval)")
    return df
