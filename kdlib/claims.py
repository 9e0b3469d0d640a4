"""The thesis's claims, each with the rows it rests on and the sentence it tests; verdicts
from our runs in two framings; the thesis's ANOVA; per-configuration summaries, paired
comparisons and the power each claim row would need.

All inference (intervals, p, Holm, verdicts, variance components, power) is `kdlib.stats`;
this module only says which runs each comparison uses (`kdlib.records` reads them). The unit
is the test patient: per fold, the matrix of (shared seeds x that fold's test patients) of
the contrast sum(coef * per-volume Dice). Runs without per-volume results fall back to
pooled Dice with the fold's test set as one unit.

Two framings, reported side by side and never mixed (`stats` module docstring):
``population`` (new patients: folds, patients and seeds random) and ``these-patients``
(these test patients held fixed: is the difference larger than seed-to-seed noise?).

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
from .records import case_values, describe_runs, fold_blocks, pooled_value, reached_plateau, unsettled

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
        runs = list(runs)
        self.by_name = {Path(run["run_dir"]).name: run for run in runs}  # teachers, for `records.unsettled`
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
    `records.reached_plateau` (False: it had not settled on its selection criterion). Runs without a
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


def contrast(index: RunIndex, terms: Sequence[tuple[float, Spec]], setting: str, metric: str = "dice",
             framing: str = "population", block: str | None = None) -> dict[str, Any]:
    """sum(coef * configuration) between configurations of one setting: `stats.interval` (in
    `framing`) of `records.fold_blocks` (of the kept checkpoints, or of `block`), plus
    `basis` (what was paired), `per_run_effects` (per (fold, seed): the mean over the fold's
    test patients, the estimate's unit), `converged` and a `reason` when it could not be
    computed, run-to-run variation is unmeasured, or a run or its teacher had not settled."""
    groups = [(coef, index.get(spec, setting)) for coef, spec in terms]
    missing = [label(spec) for (_, spec), (_, reps) in zip(terms, groups) if not reps]
    out = stats.interval([], framing)
    out.update(basis="", per_run_effects="", reason=None, missing=missing, converged=True, blocks=[])
    if missing:
        out["reason"] = "no runs for " + ", ".join(missing)
        return out
    blocks, unit, per_run = fold_blocks(groups, metric, block)
    if not blocks:
        out["reason"] = "the configurations share no fold (split)"
        return out
    out.update(stats.interval(blocks, framing), blocks=blocks)
    out["per_run_effects"] = ", ".join(f"{v:+.3f}" for v in per_run)
    out["basis"] = (f"{'per-volume' if unit == 'patient' else 'pooled'} {metric}; unit: {unit}; "
                    f"{len(blocks)} fold(s), seeds per fold {out['seeds_per_fold']}; CI: {out['method']}")
    open_ = sorted({f"{label(spec)} ({why})" for (_, spec), (_, reps) in zip(terms, groups)
                    for run in reps.values() for why in unsettled(run, index.by_name)})
    out["converged"] = not open_
    if out["n_patients"] < 2:
        out["reason"] = f"{out['n_patients']} {unit}(s): no interval"
    elif out["reason"]:
        pass  # the interval's own reason: too few folds or seeds
    elif open_:  # a model still improving on its selection criterion answers no question
        out["reason"] = ("not converged: runs of " + ", ".join(open_)
                         + " ended within `patience` epochs of their kept checkpoint")
    return out


# ---------------------------------------------------------------------------------------
# The claims: declarative. Each comparison: terms (coef, configuration), read as
# "claimed configuration minus reference"; `kind` and `margin` as in `stats.verdict` (the
# claim's, unless the comparison names its own). `role`: CLAIM rows test the sentence as it
# reads and make the claim's verdict; EXTENSION rows are questions of ours, reported beside
# it and left out of the claim's verdict (they still count in Holm's family).


TABLE_4_2 = {("T1", "S1"): "B", ("T1", "S2"): "B", ("T2", "S1"): "E", ("T2", "S2"): "B"}  # all +PMD
CLAIM, EXTENSION = "claim", "extension (ours)"


def _best(t: str, s: str) -> Spec:
    """Table 4.2's configuration for a teacher-student pair (the thesis's pick, with PMD)."""
    return kd_spec(t, s, TABLE_4_2[(t, s)], True)


def _gain(t: str, s: str, reference: str) -> list[tuple[float, Spec]]:
    ref = baseline_spec(s) if reference == "baseline" else control_spec(s)
    return [(1, _best(t, s)), (-1, ref)]


def _vs(a: Spec, b: Spec) -> list[tuple[float, Spec]]:
    return [(1, a), (-1, b)]


def _row(terms: list[tuple[float, Spec]], note: str, role: str = CLAIM, **test: Any) -> dict[str, Any]:
    return {"terms": terms, "note": note, "role": role, **test}


AGAINST_CONTROL = ("against our KD-off control (same optimiser, batch, data and epochs, no teacher): "
                   "the effect of distillation itself, not of the recipe")
TABLE_4_7_OTHERS = ("E", "D", "B+E", "E+D", "B+D", "B+E+D")  # Table 4.7's T1->S1 +PMD rows besides B

CLAIMS: list[dict[str, Any]] = [
    dict(claim_id="1", claim="Distillation improves both students, S1 (+7.97% Dice) and S2 (+3.9%)",
         kind="greater",
         sentence="KD(T1, S1) achieves a significant increase of 12.9% in IoU and 7.97% in Dice "
                  "coefficient, whereas KD(T1, S2) improves by 5.1% and 3.9% when compared to the "
                  "corresponding baseline models S1 and S2, respectively. (section 4.4, Table 4.2)",
         comparisons=[_row(_gain("T1", s, "baseline"),
                           f"{s} half of the sentence, against the thesis's baseline (AdamW recipe); the "
                           f"magnitude: consistent_with_thesis") for s in ("S1", "S2")]
         + [_row(_gain("T1", s, "control"), AGAINST_CONTROL, EXTENSION) for s in ("S1", "S2")]),
    dict(claim_id="2", claim="Encoder-to-encoder (E->E) is the best single scale to distil (T1->S1)",
         kind="greater",
         sentence="the most significant performance improvement in segmentation is seen in "
                  "encoder-to-encoder knowledge distillation using contrastive learning (section 4.6, Table 4.3)",
         comparisons=[_row(_vs(kd_spec("T1", "S1", "E", False), kd_spec("T1", "S1", o, False)),
                           "Table 4.3; 'best' holds only if E->E beats every other single scale")
                      for o in ("B", "D")]),
    dict(claim_id="3", claim="Distilling all scales at once (T1->S1) is worse than distilling any one",
         kind="less",
         sentence="it is worth noting that distilling information from all layers simultaneously "
                  "results in slightly lower performance (section 4.6, Table 4.3)",
         comparisons=[_row(_vs(kd_spec("T1", "S1", "B+E+D", False), kd_spec("T1", "S1", single, False)),
                           "Table 4.3; all scales against each single scale")
                      for single in ("B", "E", "D")]),
    dict(claim_id="4", claim="The contrastive (InfoNCE) feature loss beats MSE", kind="greater",
         sentence="the performance increase achieved through simple knowledge distillation using MSE "
                  "loss was not as significant as the results obtained with contrastive loss (Table 4.10)",
         comparisons=[_row(_vs(kd_spec("T1", "S1", sc, pmd, "infonce"), kd_spec("T1", "S1", sc, pmd, "mse")),
                           "Table 4.10 against Tables 4.3/4.6/4.7")
                      for sc in ("B", "B+E", "B+E+D") for pmd in (False, True)]),
    dict(claim_id="5", claim="PMD helps bottleneck distillation, and B->B+PMD is the best T1->S1 variant",
         kind="greater",
         sentence="the introduction of PMD in the knowledge distillation process yields promising "
                  "improvements [...] the variant involving a bottleneck-to-bottleneck knowledge "
                  "distillation with PMD produced the best results in the (T1, S1) pair; Similar "
                  "results were obtained when experiments were performed on the (S2) student model "
                  "(Tables 4.7-4.9)",
         comparisons=[_row(_vs(kd_spec(t, s, "B", True), kd_spec(t, s, "B", False)),
                           f"PMD's improvement, Tables 4.3/4.7 or 4.8/4.9, {t}->{s}")
                      for t, s in (("T1", "S1"), ("T1", "S2"))]
         + [_row(_vs(kd_spec("T1", "S1", "B", True), kd_spec("T1", "S1", other, True)),
                 "'the best results': B->B+PMD against every other Table 4.7 variant")
            for other in TABLE_4_7_OTHERS]),
    dict(claim_id="6", claim="A larger teacher (T2) does not help more than T1", kind="at most", margin=MARGIN,
         sentence="in spite of using a more parameter heavy model the performance of the student "
                  "models has not increased significantly (12.9% vs 11.8% in S1) and (5.1% vs 4.9%) "
                  "(section 4.4, Table 4.2)",
         comparisons=[_row(_vs(_best("T2", s), _best("T1", s)), f"Table 4.2's configurations; margin {MARGIN} Dice")
                      for s in ("S1", "S2")]),
    dict(claim_id="7", claim="B->B distillation on 50% of the data beats B->B on 100%", kind="greater",
         sentence="a simple bottleneck-to-bottleneck contrastive knowledge distillation method "
                  "produced better results (0.617 vs. 0.615 IoU) with a student model that was "
                  "trained on half the data compared to its counterpart (section 4.6, Tables 4.3 and 4.11)",
         comparisons=[_row(_vs(kd_spec("T1", "S1", "B", False), kd_spec("T1", "S1", "B", False, fraction=1.0)),
                           "'better', as the sentence reads"),
                      _row(_vs(kd_spec("T1", "S1", "B", False), kd_spec("T1", "S1", "B", False, fraction=1.0)),
                           f"non-inferiority: half the data loses less than {MARGIN} Dice", EXTENSION,
                           kind="at least", margin=MARGIN)]),
    dict(claim_id="8", claim="The smaller student (S1) gains more from distillation by T1 than the larger (S2)",
         kind="greater",
         sentence="Since S2 is relatively larger than S1, the distillation effect is not as "
                  "significant when compared to KD(T1, S1) (section 4.5, Figure 4.12)",
         comparisons=[_row(_gain("T1", "S1", "baseline") + [(-c, s) for c, s in _gain("T1", "S2", "baseline")],
                           "against the thesis's baselines, as the thesis"),
                      _row(_gain("T1", "S1", "control") + [(-c, s) for c, s in _gain("T1", "S2", "control")],
                           AGAINST_CONTROL, EXTENSION)]),
]


def comparisons() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(claim, comparison) pairs, with each comparison's own kind and margin filled in."""
    return [(claim, {"kind": claim["kind"], "margin": claim.get("margin", 0.0), **row})
            for claim in CLAIMS for row in claim["comparisons"]]


def rows_claims_need(rows: Iterable[dict[str, Any]], claim_ids: Collection[str] | None = None
                     ) -> list[dict[str, Any]]:
    """The thesis rows (of `experiments.thesis_rows`/`grid_rows`) whose configuration some claim
    (or one of `claim_ids`) compares: the cut a CPU-sized profile trains when the whole grid
    does not fit, and the rows that get a profile's `headline_seeds`."""
    needed = {key(spec) for claim, row in comparisons() for _, spec in row["terms"]
              if claim_ids is None or claim["claim_id"] in claim_ids}
    return [row for row in rows if key(spec_of_row(row)) in needed]


# The thesis's headline (issue 21): "distillation improves both students" and "the smaller
# student gains more". Their rows (S1/S2 baselines, our KD-off controls, KD(T1,S1) and
# KD(T1,S2) B->B+PMD) get a profile's `headline_seeds`, every other row its `seeds`.
HEADLINE_CLAIMS = ("1", "8")


def is_headline_row(row: dict[str, Any]) -> bool:
    return bool(rows_claims_need([row], HEADLINE_CLAIMS))


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


ALPHA = 0.05  # family-wise, per framing and setting
CLAIM_COLUMNS = ["claim_id", "claim", "comparison", "role", "setting", "framing", "verdict", "claim_verdict",
                 "effect", "ci_low", "ci_high", "ci_level", "p", "p_holm", "mde", "seeds_per_fold", "folds",
                 "n_patients", "n_runs", "verdict_last_epoch", "effect_last_epoch", "thesis_effect",
                 "consistent_with_thesis", "criterion", "basis", "per_run_effects", "thesis_says", "note"]


def _family(index: RunIndex, setting: str, framing: str, metric: str, block: str | None,
            not_run_tables: Collection[str]) -> list[dict[str, Any]]:
    """Every claim row of one setting and framing, with Holm-adjusted verdicts over them all."""
    rows = []
    for claim, comp in comparisons():
        result = contrast(index, comp["terms"], setting, metric, framing, block)
        ran = not (result["missing"] and all(_deliberately_not_run(s, not_run_tables)
                                             for _, s in comp["terms"] if label(s) in result["missing"]))
        rows.append({"claim": claim, "comp": comp, "result": result, "estimate": result["estimate"],
                     "se": result["se"], "df": result["df"], "kind": comp["kind"], "margin": comp["margin"],
                     "ran": ran, "testable": result["run_noise_measured"] and result["converged"]})
    for row, decided in zip(rows, stats.family_verdicts(rows, ALPHA)):
        row.update(decided)
    return rows


def claims_table(runs, metric: str = "dice", not_run_tables: Collection[str] = ()) -> pd.DataFrame:
    """One row per comparison behind each claim, per setting among the runs and per framing
    (`population`, `these-patients`; `stats` module docstring).

    `not_run_tables`: thesis tables the profile deliberately did not train; a comparison
    missing only configurations listed solely there is "not run in this profile".
    Columns (`CLAIM_COLUMNS`): role (claim, or extension (ours): left out of the claim's
    verdict); verdict (Holm over all rows of that framing and setting, `stats.family_verdicts`);
    claim_verdict (`stats.combine_verdicts` of the claim's own rows in that framing); effect
    and ci_low/ci_high at ci_level (the row's Holm level); p (against the claim's boundary:
    0, or the margin) and p_holm; mde (the smallest effect this design detects at that level
    with 80% power, for inconclusive rows); seeds_per_fold, folds, n_patients, n_runs;
    verdict_last_epoch and effect_last_epoch (the same test on every run's last epoch instead
    of its kept checkpoint); thesis_effect and consistent_with_thesis (is the thesis's effect
    inside our interval); criterion, basis, per_run_effects (per fold and seed, mean over the
    fold's test patients), thesis_says, note.
    """
    index = RunIndex(runs)
    records = []
    for setting in index.settings or ["corrected"]:
        for framing in stats.FRAMINGS:
            kept = _family(index, setting, framing, metric, None, not_run_tables)
            last = _family(index, setting, framing, metric, "last_epoch", not_run_tables)
            claim_verdicts = {
                cid: stats.combine_verdicts([r["verdict"] for r in kept
                                             if r["claim"]["claim_id"] == cid and r["comp"]["role"] == CLAIM])
                for cid in {r["claim"]["claim_id"] for r in kept}}
            for row, row_last in zip(kept, last):
                claim, comp, result = row["claim"], row["comp"], row["result"]
                terms = comp["terms"]
                thesis_effect = float(sum(c * thesis_value(s, metric) for c, s in terms))
                notes = [comp["note"], result["reason"] or ""]
                if claim["claim_id"] == "5" and setting == "faithful" and any(s["pmd"] for _, s in terms):
                    notes.append(FAITHFUL_PMD_NOTE)
                records.append({
                    "claim_id": claim["claim_id"], "claim": claim["claim"], "comparison": _comparison_text(terms),
                    "role": comp["role"], "setting": setting, "framing": framing, "verdict": row["verdict"],
                    "claim_verdict": claim_verdicts[claim["claim_id"]], "effect": result["estimate"],
                    "ci_low": row["ci_low"], "ci_high": row["ci_high"], "ci_level": row["ci_level"],
                    "p": row["p"], "p_holm": row["p_holm"], "mde": row["mde"],
                    "seeds_per_fold": result["seeds_per_fold"], "folds": result["n_folds"],
                    "n_patients": result["n_patients"], "n_runs": result["n_runs"],
                    "verdict_last_epoch": row_last["verdict"], "effect_last_epoch": row_last["estimate"],
                    "thesis_effect": thesis_effect,
                    "consistent_with_thesis": stats.consistent_with(thesis_effect, row["ci_low"], row["ci_high"]),
                    "criterion": _criterion(comp["kind"], comp["margin"]), "basis": result["basis"],
                    "per_run_effects": result["per_run_effects"], "thesis_says": claim["sentence"],
                    "note": "; ".join(n for n in notes if n),
                })
    df = pd.DataFrame.from_records(records, columns=CLAIM_COLUMNS)
    df.attrs["caption"] = (f"Claims of the thesis, in two framings: population (new patients; folds, patients and "
                           f"seeds random) and these-patients (these test patients; seeds random). Per-volume "
                           f"{metric}, unit: the test patient; Holm over all rows of a framing and setting, "
                           f"family-wise alpha {ALPHA}; intervals at each row's Holm level (ci_level)")
    return df


POWER_COLUMNS = ["claim_id", "comparison", "role", "setting", "framing", "thesis_effect", "criterion", "sd_fold",
                 "sd_patient", "sd_seed", "sd_residual", "seeds_per_fold", "folds", "seeds_per_fold_needed",
                 "patients_needed", "note"]


def _needed(n: float) -> str:
    return f"> {stats.POWER_CAP:,}" if math.isinf(n) else f"{int(n)}"


def power_table(runs, metric: str = "dice", power: float = 0.8) -> pd.DataFrame:
    """Per claim row and framing: the seeds per fold (and, for `population`, the test
    patients) needed for `power` at the thesis's own effect, from the variance components
    (`stats.variance_components`, shown as SDs) that our runs of that row estimate. The
    level is Bonferroni's alpha / m over the m rows of the family, so the power holds
    whatever Holm's step-down does with the other rows. `population` patients: folds of the
    current patients per fold, each with the current seeds."""
    index = RunIndex(runs)
    m = len(comparisons())
    alpha = ALPHA / m
    records = []
    for setting in index.settings or ["corrected"]:
        for claim, comp in comparisons():
            result = contrast(index, comp["terms"], setting, metric, "these-patients")
            blocks = result["blocks"]
            comps = stats.variance_components(blocks)
            thesis_effect = float(sum(c * thesis_value(s, metric) for c, s in comp["terms"]))
            per_fold = [b.shape[1] for b in blocks]
            seeds = [b.shape[0] for b in blocks]
            for framing in stats.FRAMINGS:
                rec = {"claim_id": claim["claim_id"], "comparison": _comparison_text(comp["terms"]),
                       "role": comp["role"], "setting": setting, "framing": framing, "thesis_effect": thesis_effect,
                       "criterion": _criterion(comp["kind"], comp["margin"]),
                       **{f"sd_{k}": math.sqrt(v) if v >= 0 else math.nan for k, v in comps.items()},
                       "seeds_per_fold": result["seeds_per_fold"], "folds": len(blocks),
                       "seeds_per_fold_needed": "–", "patients_needed": "–", "note": ""}
                unknown = [k for k in (("seed", "residual") if framing == "these-patients" else comps)
                           if math.isnan(comps[k])]
                if math.isnan(thesis_effect):
                    rec["note"] = "the thesis has no effect for this row (a row of ours): no power target"
                elif not blocks:
                    rec["note"] = result["reason"] or "no runs"
                elif unknown:
                    rec["note"] = "components not estimable from these runs: " + ", ".join(unknown)
                else:
                    args = dict(effect=thesis_effect, kind=comp["kind"], margin=comp["margin"], alpha=alpha,
                                power=power)
                    rec["seeds_per_fold_needed"] = _needed(stats.seeds_needed(comps, per_fold, framing=framing, **args))
                    if framing == "population":
                        rec["patients_needed"] = _needed(stats.patients_needed(
                            comps, max(2, min(seeds)), max(1, round(float(np.mean(per_fold)))), **args))
                    if not stats.boundary_distance(thesis_effect, comp["kind"], comp["margin"]) > 0:
                        rec["note"] = "the thesis's own effect is not on the claimed side: no design supports it"
                records.append(rec)
    df = pd.DataFrame.from_records(records, columns=POWER_COLUMNS)
    df.attrs["caption"] = (f"Power: seeds per fold (and, for population, test patients) needed for {power:.0%} power "
                           f"at the thesis's own effect, two-sided alpha {ALPHA}/{m} (Bonferroni over the family); "
                           f"variance components of the contrast estimated from our runs (SDs, {metric})")
    return df


def headline_points(runs, setting: str = "corrected", metric: str = "dice") -> pd.DataFrame:
    """The per-seed paired differences behind the headline claims' comparisons
    (`HEADLINE_CLAIMS`): one row per (comparison, fold, seed) with the seed's effect (its
    row of the fold's block: the mean over the fold's test patients, the estimate's unit),
    and per comparison the within-fold seed-to-seed SD of those effects (`seed_sd`: the
    root of the mean over folds with >= 2 seeds of each fold's sample variance)."""
    index = RunIndex(runs)
    records = []
    for claim, comp in comparisons():
        if claim["claim_id"] not in HEADLINE_CLAIMS:
            continue
        result = contrast(index, comp["terms"], setting, metric, "these-patients")
        blocks = result["blocks"]
        sd = seed_sd(blocks)
        for fold, block in enumerate(blocks):
            for seed, effect in enumerate(np.asarray(block).mean(axis=1)):
                records.append({"claim_id": claim["claim_id"], "comparison": _comparison_text(comp["terms"]),
                                "role": comp["role"], "fold": fold, "seed_index": seed, "effect": float(effect),
                                "seed_sd": sd, "thesis_effect": float(sum(c * thesis_value(sp, metric)
                                                                          for c, sp in comp["terms"]))})
    return pd.DataFrame.from_records(records, columns=["claim_id", "comparison", "role", "fold", "seed_index",
                                                       "effect", "seed_sd", "thesis_effect"])


def seed_sd(blocks: Sequence[Any]) -> float:
    """Within-fold seed-to-seed SD of the per-seed means of `blocks` (seeds x units per fold):
    sqrt of the mean, over folds with at least 2 seeds, of the sample variance (ddof 1) of the
    seeds' means; NaN where no fold has 2 seeds. Folds are not pooled into one sample, because
    their means differ by patient, not by training noise."""
    variances = [float(np.var(np.asarray(b, dtype=float).mean(axis=1), ddof=1)) for b in blocks
                 if np.asarray(b).shape[0] >= 2]
    return math.sqrt(float(np.mean(variances))) if variances else math.nan


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
    `metric` with its 95% CI for new patients (`stats.population_interval`); with the
    thesis's value and rows."""
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
            "seed_sd": seed_sd(result["blocks"]),
            "thesis": thesis_value(spec, metric), "thesis_rows": thesis_rows_of(spec),
            "_order": {"4.1": 0, "baseline": 1, "control": 2, "kd": 3}[spec["table"]],
        })
    columns = ["label", "setting", "n_runs", "n_seeds", "n_folds", "pooled_best", "pooled_last_epoch", "patients",
               "patient_mean", "ci_low", "ci_high", "ci_method", "seed_sd", "thesis", "thesis_rows", "_order"]
    df = pd.DataFrame.from_records(records, columns=columns)
    df = df.sort_values(["setting", "_order", "label"], kind="stable").drop(columns="_order").reset_index(drop=True)
    df.attrs["caption"] = (f"Every configuration: pooled {metric} of the best checkpoint and of the last epoch "
                           f"(mean over runs); mean per-patient {metric} with its 95% CI (unit: test patient); seed_sd: the "
                           f"seed-to-seed SD of the per-run mean per-patient {metric} within a fold (`seed_sd`)")
    return df


def paired_comparisons(runs, metric: str = "dice") -> pd.DataFrame:
    """Each distilled student against its baseline and, where trained, its KD-off control
    (same student, data fraction, setting), with `contrast` (unit: the test patient).

    Columns (usable by `figures.forest_plot`): label, pair (teacher->student), setting,
    reference, n_pairs (patients), n_runs, reference_mean, mean, diff, ci_low, ci_high, p,
    p_holm (Holm over the whole table): the `population` framing (new patients); these_low,
    these_high, these_p: the `these-patients` framing (95%, unadjusted); method, reason.
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
            these = contrast(index, _vs(spec, ref), setting, metric, "these-patients")
            if diff["n_patients"] == 0:
                continue
            records.append({
                "label": label(spec), "pair": f"{spec['teacher']}->{spec['student']}", "setting": setting,
                "reference": label(ref), "n_pairs": diff["n_patients"], "n_runs": diff["n_runs"],
                "reference_mean": contrast(index, [(1, ref)], setting, metric)["estimate"],
                "mean": contrast(index, [(1, spec)], setting, metric)["estimate"], "diff": diff["estimate"],
                "ci_low": diff["ci_low"], "ci_high": diff["ci_high"], "p": diff["p"],
                "these_low": these["ci_low"], "these_high": these["ci_high"], "these_p": these["p"],
                "method": diff["method"], "reason": diff["reason"] or "",
            })
    columns = ["label", "pair", "setting", "reference", "n_pairs", "n_runs", "reference_mean", "mean", "diff",
               "ci_low", "ci_high", "p", "p_holm", "these_low", "these_high", "these_p", "method", "reason"]
    df = pd.DataFrame.from_records(records, columns=[c for c in columns if c != "p_holm"])
    df = df.sort_values(["setting", "pair", "reference", "label"], kind="stable").reset_index(drop=True)
    df.insert(df.columns.get_loc("p") + 1, "p_holm", stats.holm(list(df["p"])) if len(df) else [])
    if df["setting"].nunique() > 1:
        df["label"] = [f"{lab} ({s})" for lab, s in zip(df["label"], df["setting"])]
    df.attrs["caption"] = (f"Distilled students against their baseline and KD-off control, mean per-patient "
                           f"{metric} difference (unit: test patient); ci_low/ci_high: 95% for new patients "
                           f"(fold-level t, >= 3 folds); these_low/these_high: 95% for these patients against "
                           f"seed-to-seed noise")
    return df
