"""The thesis's result tables (4.1 to 4.11), side by side with our runs.

`table("4.3", runs)` lays a table out like the thesis: one row per thesis row (and per
setting - corrected / faithful - present among the runs that match the table), with the
thesis's numbers, ours (pooled metrics, mean over runs: seeds x folds), the difference, and
the mean over test patients of per-volume Dice with its 95% CI for new patients
(`stats.population_interval`: the unit is the test patient, the fold effect included). A row that no run matches
keeps the thesis's numbers and shows `n_seeds = 0` and NaN for ours: nothing is ever
filled in. Table 4.2 also lists our KD-off control rows (`source` = "ours"), which the
thesis does not have.

Runs are joined to thesis rows with `experiments.describe` + `experiments.row_matches`,
so identical configurations (Table 4.2's KD(T1,S1) is Table 4.7's B->B+PMD) are trained
once and appear in every table that lists them.
"""
from __future__ import annotations

import io as _io
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from . import experiments, stats
from .errors import ConfigError
from .io import atomic_write_text
from .records import describe_runs, fold_blocks

TABLE_IDS = ("4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8", "4.9", "4.10", "4.11")
METRICS = experiments.METRICS  # iou, dice, recall, precision
METRIC_LEVELS = ("pooled", "per_volume", "per_image")
SYNTHETIC_NOTE = "SYNTHETIC DATA — not comparable to the thesis's numbers"

TABLE_TITLES = {
    "4.1": "Teachers: segmentation on the test set (with reconstruction quality for T1/T2)",
    "4.2": "Students without and with distillation (best configuration per teacher-student pair)",
    "4.3": "KD(T1,S1), contrastive, single scales and all scales, without PMD",
    "4.4": "KD(T2,S1), contrastive, without PMD",
    "4.5": "KD(T2,S1), contrastive, with PMD",
    "4.6": "KD(T1,S1), contrastive, pairs of scales, without PMD",
    "4.7": "KD(T1,S1), contrastive, with PMD",
    "4.8": "KD(T1,S2), contrastive, without PMD",
    "4.9": "KD(T1,S2), contrastive, with PMD",
    "4.10": "KD(T1,S1) with an MSE feature loss instead of the contrastive loss",
    "4.11": "S1 on 100% of the data: without and with distillation",
}


# ---------------------------------------------------------------------------------------
# Reading numbers out of runs


def is_synthetic(runs: Iterable[dict[str, Any]]) -> bool:
    """True if any run was trained on generated (phantom) data."""
    return any(bool(run.get("metrics", {}).get("synthetic", False)) for run in runs)


def metric_value(metrics: dict[str, Any], metric: str, level: str = "pooled") -> float:
    """One number from a run's metrics.json: `pooled`, `per_volume` (mean over cases) or `per_image`."""
    if level not in METRIC_LEVELS:
        raise ConfigError(f"metric_level={level!r} is not one of {METRIC_LEVELS}")
    block = metrics.get(level)
    if not isinstance(block, dict):
        return math.nan
    if isinstance(block.get("mean"), dict):  # per_volume / per_image: {"mean": {...}, ...}
        block = block["mean"]
    value = block.get(metric)
    return math.nan if value is None else float(value)


def matching_runs(row: dict[str, Any], described, setting: str | None = None) -> list[dict[str, Any]]:
    """Runs that train the configuration of a thesis row (optionally in one setting), by seed."""
    found = [(desc["seed"], run["run_dir"], run) for run, desc in described
             if experiments.row_matches(row, desc) and (setting is None or desc["setting"] == setting)]
    return [run for _, _, run in sorted(found, key=lambda t: (t[0], t[1]))]


def patient_interval(runs: list[dict[str, Any]], metric: str = "dice") -> dict[str, Any]:
    """Mean over test patients of one configuration's per-volume `metric`, with its 95% CI
    for new patients (`stats.population_interval` of `records.fold_blocks`; NaN, with a
    reason, for fewer than 3 folds)."""
    replicates = {(str(r["config"].get("split", "")), int(r["config"].get("seed", 0))): r for r in runs}
    blocks, _, _ = fold_blocks([(1.0, replicates)], metric) if replicates else ([], "", [])
    return stats.population_interval(blocks)


# ---------------------------------------------------------------------------------------
# Tables


def _table_settings(rows, described) -> list[str | None]:
    """Settings present among the runs matching any row of the table (stable layout)."""
    present = {desc["setting"] for row in rows for run, desc in described
               if experiments.row_matches(row, desc)}
    ordered = [s for s in experiments.SETTINGS if s in present]
    return ordered or [None]


def table(table_id: str, runs, metric_level: str = "pooled") -> pd.DataFrame:
    """Thesis table `table_id` with our numbers next to the thesis's (see module docstring).

    Columns: row, source (thesis, or ours for our control rows), setting, n_seeds (distinct
    seeds), n_runs (seeds x folds: the runs averaged), thesis_/ours_/diff_<metric> for iou,
    dice, recall, precision; n_patients, ours_dice_patients (mean over test patients of
    per-volume Dice) and ours_dice_ci_low/high (its 95% CI for new patients; NaN for fewer
    than 3 folds), ci_method ("fold-level t"; "–" without runs);
    params_m (the thesis's) and ours_params_m; for Table 4.1 also ours_psnr and ours_ssim.
    `df.attrs` holds table, caption, metric_level,
    synthetic.
    """
    table_id = str(table_id)
    rows = experiments.grid_rows([table_id])
    if not rows:
        raise ConfigError(f"unknown thesis table {table_id!r}", fix=f"use one of {', '.join(TABLE_IDS)}")
    if metric_level not in METRIC_LEVELS:
        raise ConfigError(f"metric_level={metric_level!r} is not one of {METRIC_LEVELS}")
    described = describe_runs(runs)
    settings = _table_settings(rows, described)
    records = []
    for row in rows:
        for setting in settings:
            matched = matching_runs(row, described, setting) if setting else []
            rec: dict[str, Any] = {"row": row["row"], "source": row.get("source", "thesis"), "setting": setting,
                                   "n_seeds": len({r["config"].get("seed") for r in matched}),
                                   "n_runs": len(matched),
                                   # training budget(s) behind the mean: runs of different
                                   # lengths must not be averaged silently
                                   "epochs": "/".join(str(e) for e in sorted(
                                       {r["config"].get("epochs") for r in matched})) or "–"}
            for m in METRICS:
                ours = [metric_value(r["metrics"], m, metric_level) for r in matched]
                ours = [v for v in ours if not math.isnan(v)]
                mean = float(np.mean(ours)) if ours else math.nan
                rec[f"thesis_{m}"] = row[m]
                rec[f"ours_{m}"] = mean
                rec[f"diff_{m}"] = mean - row[m] if ours else math.nan
            interval = patient_interval(matched)
            rec.update(n_patients=interval["n_patients"], ours_dice_patients=interval["estimate"],
                       ours_dice_ci_low=interval["ci_low"], ours_dice_ci_high=interval["ci_high"],
                       ci_method=interval["method"] or "–")
            rec["params_m"] = row["params_m"]
            params = [r["metrics"]["params"] / 1e6 for r in matched if r["metrics"].get("params")]
            rec["ours_params_m"] = float(np.mean(params)) if params else math.nan
            if table_id == "4.1":
                for key in ("psnr", "ssim"):
                    vals = [float(r["metrics"][key]) for r in matched if r["metrics"].get(key) is not None]
                    rec[f"ours_{key}"] = float(np.mean(vals)) if vals else math.nan
            records.append(rec)
    df = pd.DataFrame.from_records(records)
    df.attrs.update(table=table_id, caption=f"Table {table_id}: {TABLE_TITLES.get(table_id, '')}".rstrip(": "),
                    metric_level=metric_level, synthetic=is_synthetic(runs))
    return df


def all_tables(runs, tables: Iterable[str] = TABLE_IDS, metric_level: str = "pooled"
               ) -> dict[str, pd.DataFrame]:
    """{table id: table(...)} for several thesis tables (teacher configs are read once)."""
    runs = list(runs)
    described = describe_runs(runs)
    cached = [dict(run, _desc=desc) for run, desc in described]
    return {str(t): table(str(t), cached, metric_level) for t in tables}


def headline_table(runs, metric_level: str = "pooled") -> pd.DataFrame:
    """Table 4.2 in a compact form for the README: row, setting, runs, patients, pooled Dice,
    mean per-patient Dice with its 95% CI, thesis Dice (control rows: ours, no thesis value)."""
    full = table("4.2", runs, metric_level)
    out = pd.DataFrame({
        "row": full["row"], "setting": full["setting"], "n": full["n_runs"], "patients": full["n_patients"],
        "ours_dice": full["ours_dice"], "patient_dice": full["ours_dice_patients"],
        "ci_low": full["ours_dice_ci_low"], "ci_high": full["ours_dice_ci_high"], "thesis_dice": full["thesis_dice"],
    })
    out["ours_dice_text"] = [_dice_text(d, lo, hi) for d, lo, hi in
                             zip(out["patient_dice"], out["ci_low"], out["ci_high"])]
    out.attrs.update(full.attrs)
    return out


def teachers_by_fold(runs) -> pd.DataFrame:
    """One row per teacher run: its fold's test patients, how it trained (epochs run, why it
    stopped, best epoch), test Dice of the kept checkpoint and of the last epoch, and each
    test patient's Dice, so that a fold whose teacher missed is visible by name."""
    rows = []
    for run in runs:
        cfg, metrics = run["config"], run["metrics"]
        if cfg.get("role") != "teacher":
            continue
        cases = (metrics.get("per_volume") or {}).get("cases") or {}
        rows.append({
            "teacher": cfg.get("model"), "setting": cfg.get("setting"),
            "test patients": ", ".join(cases) or "–",
            "epochs run": metrics.get("epochs_run"), "stopped": metrics.get("stopped"),
            "best epoch": metrics.get("best_epoch"),
            "test Dice": metric_value(metrics, "dice"),
            "test Dice, last epoch": metric_value(metrics.get("last_epoch") or {}, "dice"),
            "Dice per patient": "; ".join(f"{c} {v['dice']:.3f}" for c, v in cases.items()),
        })
    columns = ["teacher", "setting", "test patients", "epochs run", "stopped", "best epoch", "test Dice",
               "test Dice, last epoch", "Dice per patient"]
    return pd.DataFrame(rows, columns=columns).sort_values(["setting", "teacher", "test patients"],
                                                          kind="stable", ignore_index=True)


def _dice_text(dice: float, low: float, high: float) -> str:
    if math.isnan(dice):
        return "not run"
    if math.isnan(low):
        return f"{dice:.3f}"
    return f"{dice:.3f} [{low:.3f}, {high:.3f}]"


# ---------------------------------------------------------------------------------------
# Writing


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}"
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value).replace("|", "\\|")


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table (floats to 3 decimals, NaN as an en dash); no extra dependency."""
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def write_table(df: pd.DataFrame, out_dir: str | Path, name: str, synthetic: bool,
                caption: str | None = None) -> tuple[Path, Path]:
    """Write `<name>.csv` and `<name>.md` atomically (regenerated outputs: overwritten).

    The Markdown's first line is a caption naming the table; with `synthetic` it says
    that the numbers come from generated data and are not comparable to the thesis's.
    """
    out_dir = Path(out_dir)
    caption = caption or df.attrs.get("caption") or name
    if df.attrs.get("metric_level") and df.attrs["metric_level"] != "pooled":
        caption = f"{caption} (metrics: {df.attrs['metric_level']})"
    if synthetic:
        caption = f"{caption} — {SYNTHETIC_NOTE}"
    buffer = _io.StringIO()
    df.to_csv(buffer, index=False)
    csv_path = atomic_write_text(out_dir / f"{name}.csv", buffer.getvalue())
    md_path = atomic_write_text(out_dir / f"{name}.md", f"{caption}\n\n{to_markdown(df)}")
    return csv_path, md_path


def write_all(runs, out_dir: str | Path, tables: Iterable[str] = TABLE_IDS,
              metric_level: str = "pooled") -> dict[str, tuple[Path, Path]]:
    """all_tables + write_table for each, named `table_4_2` etc.; returns the paths."""
    runs = list(runs)
    synthetic = is_synthetic(runs)
    written = {}
    for table_id, df in all_tables(runs, tables, metric_level).items():
        written[table_id] = write_table(df, out_dir, f"table_{table_id.replace('.', '_')}", synthetic)
    return written
