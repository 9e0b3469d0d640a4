"""Numbers out of run records (`train.load_runs` entries): what a run is, whether it settled,
and the per-fold (seeds x test patients) matrices that `kdlib.stats` turns into intervals.

Both `kdlib.tables` (the thesis's tables) and `kdlib.claims` (the claims) read runs through
this module, so neither imports the other.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import experiments

BLOCKS = (None, "last_epoch")  # None: the kept checkpoint's metrics; "last_epoch": the last epoch's


def describe_runs(runs: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(run, experiments.describe(config)) pairs.

    A distilled run names its teacher by folder, found as `experiments.with_teacher_found` does.
    """
    out = []
    for run in runs:
        desc = run.get("_desc")
        if desc is None:
            desc = experiments.describe(experiments.with_teacher_found(run["config"], run["run_dir"]))
        out.append((run, desc))
    return out


def reached_plateau(run: dict[str, Any]) -> bool | None:
    """Whether a finished run ended on a plateau *of the criterion that kept its checkpoint*:
    its kept epoch (`best_epoch`, chosen by `select_on`) lies at least `patience` epochs
    before its last. This holds for runs stopped early and at the cap alike: a run stopped by
    early stopping on validation Dice while its checkpoint was kept on a validation loss that
    was still falling has not settled on that loss. False: it answers no question yet. None:
    it had no stopping rule (patience 0), so a plateau was never asked for."""
    patience = int(run["config"].get("patience") or 0)
    metrics = run["metrics"]
    if patience <= 0 or metrics.get("stopped") not in ("early", "cap"):
        return None
    return int(metrics["epochs_run"]) - int(metrics["best_epoch"]) >= patience


def unsettled(run: dict[str, Any], by_name: dict[str, dict[str, Any]]) -> list[str]:
    """Why a run has not converged: [] if it has, else what did not settle -- the run itself
    and, for a distilled student, its teacher (found by folder name in `by_name`), since a
    student inherits an unconverged teacher's answer to nothing."""
    why = []
    if reached_plateau(run) is False:
        why.append("itself")
    teacher = run["config"].get("teacher_run")
    if teacher:
        record = by_name.get(Path(teacher).name)
        if record is not None and reached_plateau(record) is False:
            why.append(f"its teacher {record['config'].get('model', Path(teacher).name)}")
    return why


def _metrics(run: dict[str, Any], block: str | None) -> dict[str, Any]:
    return run["metrics"] if block is None else (run["metrics"].get(block) or {})


def pooled_value(run: dict[str, Any], metric: str = "dice", block: str | None = None) -> float:
    value = (_metrics(run, block).get("pooled") or {}).get(metric)
    return math.nan if value is None else float(value)


def case_values(run: dict[str, Any], metric: str = "dice", block: str | None = None) -> dict[str, float] | None:
    """{case id: per-volume metric} of a run (of its kept checkpoint, or of `block`), or None
    without per-volume results."""
    per_volume = _metrics(run, block).get("per_volume") or {}
    cases = per_volume.get("cases") if isinstance(per_volume, dict) else None
    if not cases:
        return None
    out = {}
    for case, scores in cases.items():
        value = scores.get(metric) if isinstance(scores, dict) else scores
        if value is not None and not math.isnan(float(value)):
            out[str(case)] = float(value)
    return out


def fold_blocks(groups: Sequence[tuple[float, dict[tuple, dict]]], metric: str = "dice",
                block: str | None = None) -> tuple[list[np.ndarray], str, list[float]]:
    """Per fold (split) that every term ran on: the (seeds x test patients) matrix of
    sum(coef * value). Seeds shared by all terms are paired; a fold where the terms share
    no seed is averaged per term over its own seeds (one row). Returns (blocks, unit,
    per-run effects); unit is "patient" or, when some run lacks per-volume results, "fold
    test set" (pooled metric, one unit per fold). A per-run effect is the mean of a seed's
    row over its fold's units: the same unit as the estimate."""
    splits = sorted(set.intersection(*({r[0] for r in reps} for _, reps in groups)))
    runs = [run for _, reps in groups for rep, run in reps.items() if rep[0] in splits]
    per_patient = all(case_values(run, metric, block) is not None for run in runs)
    value = (lambda run: case_values(run, metric, block)) if per_patient else \
        (lambda run: {"test set": pooled_value(run, metric, block)})
    blocks, per_run = [], []
    for split in splits:
        by_term = [{seed: reps[(sp, seed)] for sp, seed in reps if sp == split} for _, reps in groups]
        seeds = sorted(set.intersection(*(set(t) for t in by_term)))
        fold_runs = [run for t in by_term for run in t.values()]
        cases = sorted(set.intersection(*(set(value(run)) for run in fold_runs)))
        if not cases or any(math.isnan(value(run)[case]) for run in fold_runs for case in cases):
            continue
        if seeds:
            rows = [[sum(c * value(t[s])[case] for (c, _), t in zip(groups, by_term)) for case in cases]
                    for s in seeds]
            per_run += [float(np.mean(row)) for row in rows]
        else:
            rows = [[sum(c * float(np.mean([value(r)[case] for r in t.values()]))
                         for (c, _), t in zip(groups, by_term)) for case in cases]]
        blocks.append(np.array(rows, dtype=float))
    return blocks, "patient" if per_patient else "fold test set", per_run
