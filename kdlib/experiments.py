"""The thesis's experiment grid, driven by its own result tables.

Every row of `thesis_tables.csv` (Tables 4.1 to 4.11) names a teacher, a student, a
distillation loss, the scales, PMD on/off and the fraction of the teacher's data. Here
each row becomes a `RunConfig`; identical configurations (e.g. Table 4.2's KD(T1,S1) and
Table 4.7's B->B+PMD) hash to the same run folder and are trained once.

Two settings (see README, "faithful and corrected"):
- `faithful`: what the original code did: random projector per step, softmax PMD over one
  channel (identically zero), logit > 0.5 threshold, model selection on the test set.
- `corrected`: what the text describes, done soundly: learned projectors, binary PMD,
  probability > 0.5, model selection on validation patients.
(Preprocessing and split differ too; they are chosen in notebook 01 per setting.)
"""
from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import losses
from . import train as _train
from .train import RunConfig, baseline_config, kd_run_config, teacher_config

THESIS_TABLES = Path(__file__).with_name("thesis_tables.csv")
SETTINGS = ("corrected", "faithful")
METRICS = ("iou", "dice", "recall", "precision")
# the thesis writes combined scales bottleneck first: B+E, B+E+D, B+D, E+D
SCALE_ORDER = ("B", "E", "D")
# Our KD-off controls (not the thesis's): each student with its distilled students' recipe
# (RMSprop 1e-2, batch 20, Dice loss, 50% data, same epochs and selection) and no teacher,
# so "distillation helps" is not confounded with the optimiser. Shown in Table 4.2 as ours.
CONTROL_ROWS = tuple(
    {"table": "4.2", "row": f"{s} control: KD recipe, no teacher (ours)", "teacher": "", "student": s,
     "kd_loss": "none", "scales": "", "pmd": False, "train_fraction": 0.5, "role": "control",
     "source": "ours", **{m: float("nan") for m in (*METRICS, "params_m")}}
    for s in ("S1", "S2"))


def canonical_scales(scales) -> str:
    """One spelling of a scale set, the thesis's: "B+E+D" whatever order it is stored in."""
    parts = scales.split("+") if isinstance(scales, str) else list(scales or ())
    parts = [p.strip().upper() for p in parts if p and p.strip()]
    return "+".join(s for s in SCALE_ORDER if s in parts)


def row_role(row: dict[str, Any]) -> str:
    """teacher (Table 4.1), baseline, control (ours) or kd."""
    if row.get("role"):
        return row["role"]
    if row["table"] == "4.1":
        return "teacher"
    return "baseline" if row["kd_loss"] == "none" else "kd"


def grid_rows(tables: list[str] | None = None, controls: bool = True) -> list[dict[str, Any]]:
    """The rows to train: the thesis's rows of `tables` plus, when Table 4.2 is among them
    (or `tables` is None), our KD-off control rows."""
    rows = thesis_rows(tables)
    if controls and (tables is None or "4.2" in tables):
        rows += [dict(r) for r in CONTROL_ROWS]
    return rows


def thesis_rows(tables: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of the thesis's result tables (numbers as floats), optionally only some tables."""
    with open(THESIS_TABLES, newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = []
    for row in rows:
        if tables and row["table"] not in tables:
            continue
        for key in (*METRICS, "params_m", "train_fraction"):
            row[key] = float(row[key])
        row["pmd"] = row["pmd"] == "1"
        row["source"] = "thesis"
        out.append(row)
    return out


def setting_overrides(setting: str) -> dict[str, Any]:
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}")
    faithful = setting == "faithful"
    return dict(setting=setting, threshold="logit" if faithful else "prob",
                selection="test" if faithful else "val")


def teacher_run_config(model: str, cache, split, setting: str, **overrides) -> RunConfig:
    return teacher_config(model, cache, split, **setting_overrides(setting), **overrides)


def kd_config_for_row(row: dict[str, Any], setting: str) -> "losses.KDConfig":
    faithful = setting == "faithful"
    scales = tuple(s for s in row["scales"].split("+") if s)
    pmd = ("faithful" if faithful else "binary") if row["pmd"] else "off"
    return losses.kd_config_for(row["teacher"], row["student"], scales=scales, loss=row["kd_loss"],
                                pmd=pmd, projector="random" if faithful else "learned")


def row_config(row: dict[str, Any], cache, split, setting: str, teacher_runs: dict[str, str],
               **overrides) -> RunConfig | None:
    """The run behind one table row (None for teacher rows of Table 4.1). `name` in
    `overrides` replaces the run's default label."""
    subset = "train" if row["train_fraction"] >= 1.0 else "student_train"
    name = overrides.pop("name", None)
    common = dict(setting_overrides(setting), train_subset=subset, **overrides)
    role = row_role(row)
    if role == "teacher":
        return None
    if role == "baseline":
        return baseline_config(row["student"], cache, split, name=name or f"{row['student']} baseline", **common)
    if role == "control":
        return _train.control_config(row["student"], cache, split, name=name or f"{row['student']} control",
                                     **common)
    teacher_run = teacher_runs.get(row["teacher"])
    if teacher_run is None:
        raise KeyError(f"no trained teacher {row['teacher']} for row {row['row']!r}")
    name = name or (f"KD({row['teacher']},{row['student']}) {row['kd_loss']} {row['scales']}"
                    f"{'+PMD' if row['pmd'] else ''}")
    return kd_run_config(teacher_run, row["student"], kd_config_for_row(row, setting), cache, split,
                         name=name, **common)


def with_teacher_found(config: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """A distilled run's config with `teacher_run` pointing at a teacher record that exists: as
    recorded when that path is absolute and still there; else beside the run, in the same runs
    folder (results that were moved, or a published record, whose path is relative to its
    results folder and must never be read against the current directory)."""
    teacher = config.get("teacher_run")
    if teacher and (not Path(teacher).is_absolute() or not (Path(teacher) / "config.json").exists()):
        moved = Path(run_dir).parent / Path(teacher).name
        if (moved / "config.json").exists():
            return dict(config, teacher_run=str(moved))
    return config


def describe(config: dict[str, Any] | RunConfig) -> dict[str, Any]:
    """The thesis-table columns a run corresponds to (to join runs with thesis rows).

    Scales are written in the thesis's order (`canonical_scales`), whatever order the
    run's KD configuration stores them in, so every join uses one name per configuration."""
    cfg = config.to_dict() if isinstance(config, RunConfig) else config
    kd = cfg.get("kd") or {}
    teacher = None
    if cfg.get("teacher_run"):
        from .io import read_json

        teacher = read_json(Path(cfg["teacher_run"]) / "config.json")["model"]
    return {
        "student": cfg["model"] if cfg["role"] != "teacher" else None,
        "model": cfg["model"],
        "role": cfg["role"],
        "teacher": teacher,
        "kd_loss": kd.get("loss", "none") if kd else "none",
        "scales": canonical_scales(kd.get("scales", [])) if kd else "",
        "pmd": bool(kd) and kd.get("pmd", "off") != "off",
        "train_fraction": 1.0 if cfg["train_subset"] == "train" else 0.5,
        "setting": cfg["setting"],
        "seed": cfg["seed"],
    }


def row_matches(row: dict[str, Any], desc: dict[str, Any]) -> bool:
    role = row_role(row)
    if role == "teacher":
        return desc["role"] == "teacher" and desc["model"] == row["student"]
    if role in ("baseline", "control") or desc["role"] in ("baseline", "control"):
        return (desc["role"] == role and desc["student"] == row["student"]
                and desc["train_fraction"] == row["train_fraction"])
    return (desc["student"] == row["student"]
            and (desc["teacher"] or "") == (row["teacher"] or "")
            and desc["kd_loss"] == row["kd_loss"] and desc["scales"] == canonical_scales(row["scales"])
            and desc["pmd"] == row["pmd"] and desc["train_fraction"] == row["train_fraction"])


def with_epochs(cfg: RunConfig, epochs: int | None) -> RunConfig:
    return cfg if not epochs else replace(cfg, epochs=epochs)


# Which thesis rows each training-curve figure shows (one figure per teacher-student pair).
CURVE_FIGURES = {
    "4.3": ("T1->S1, contrastive, without PMD", ["4.3", "4.6"]),
    "4.4": ("T1->S1, contrastive, with PMD", ["4.7"]),
    "4.5": ("T2->S1, contrastive, without PMD", ["4.4"]),
    "4.6": ("T2->S1, contrastive, with PMD", ["4.5"]),
    "4.7": ("T1->S2, contrastive, with and without PMD", ["4.8", "4.9"]),
    "4.8": ("T1->S1, feature MSE", ["4.10"]),
}

# Qualitative comparisons of Figures 4.17-4.19: (title, [(table, row label), ...]).
QUALITATIVE_FIGURES = {
    "4.17": ("T1->S1 at different scales", [("4.3", "B->B"), ("4.3", "E->E"), ("4.3", "D->D"),
                                            ("4.3", "B->B+E->E+D->D")]),
    "4.18": ("T1->S1 with and without PMD", [("4.3", "B->B"), ("4.7", "B->B+PMD"),
                                            ("4.3", "B->B+E->E+D->D"), ("4.7", "B->B+E->E+D->D+PMD")]),
    "4.19": ("T1->S1, MSE against contrastive", [("4.3", "B->B"), ("4.10", "B->B"),
                                                ("4.3", "B->B+E->E+D->D"), ("4.10", "B->B+E->E+D->D")]),
}
ABLATION_TABLES = ["4.3", "4.4", "4.5", "4.6", "4.7", "4.8", "4.9", "4.10", "4.11"]
# the grid also run in the faithful setting, so the original's defects are measured
FAITHFUL_GRID_TABLES = ["4.3", "4.6", "4.7"]


def find_row(table_id: str, label: str) -> dict[str, Any]:
    for row in thesis_rows([table_id]):
        if row["row"] == label:
            return row
    raise KeyError(f"no row {label!r} in table {table_id}")


def runs_for_row(row: dict[str, Any], runs: list[dict[str, Any]], setting: str | None = None,
                 split: str | None = None) -> list[dict[str, Any]]:
    """Finished runs (from `train.load_runs`) behind a thesis row, optionally one setting/split.
    A run described already (`_desc`, from `records.describe_runs`) is not described again."""
    chosen = []
    for run in runs:
        desc = run.get("_desc") or describe(with_teacher_found(run["config"], run["run_dir"]))
        if setting and desc["setting"] != setting:
            continue
        if split and run["config"]["split"] != split:
            continue
        if row_matches(row, desc):
            chosen.append(run)
    return chosen
