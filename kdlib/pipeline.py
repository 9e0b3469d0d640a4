"""The steps the notebooks call, so notebooks stay narrative + parameters + one call each.

Files shared between notebooks, all under the profile's output folder:
- `prepared.json` (01): per setting, the slice cache and the split files (one per fold);
- `teachers.json` (02): per setting and fold, the run folder of each trained teacher;
- `runs/` (02-04): one folder per training run (see `kdlib.train`).
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import experiments
from .data import SliceCache, make_split, preprocess, save_split, write_phantom_msd
from .errors import ConfigError, KdlibError
from .io import atomic_write_json, atomic_write_text, read_json
from .paths import REPO_ROOT, resolve_data, results_dir
from .train import RunConfig, is_finished, train

PREPARED, TEACHERS = "prepared.json", "teachers.json"


def out_folder(profile: str, out_dir: str = "") -> Path:
    out = results_dir(profile, out_dir or None)
    out.mkdir(parents=True, exist_ok=True)
    return out


def provenance(profile: str, data: str, started: float | None = None) -> dict[str, Any]:
    """Who made a figure or table: profile, data, commit, date, wall time."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit = commit + ("+uncommitted" if dirty else "") if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    prov = {"profile": profile, "data": data, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if started is not None:
        prov["wall_time_s"] = round(time.time() - started, 1)
    return prov


# --------------------------------------------------------------------------- 01_preprocess


def data_inputs(data: str, out: Path, phantom_cases: int, phantom_size: int,
                phantom_seed: int) -> list[Path]:
    """Resolve the `data` parameter: "phantom", a folder, or several folders joined by ","."""
    if data == "phantom":
        folder = out / "data" / f"phantom-c{phantom_cases}-s{phantom_size}-seed{phantom_seed}"
        if not (folder / "dataset.json").exists():
            write_phantom_msd(folder, cases=phantom_cases, seed=phantom_seed, size=phantom_size)
        return [folder]
    inputs = [resolve_data(part.strip()) for part in data.split(",") if part.strip()]
    for path in inputs:
        if not path.exists():
            raise KdlibError("data folder not found", path,
                             "set `data` to an existing folder (or 'phantom'); real data lives in "
                             "../shared/data or $KDLIB_SHARED_DATA")
    return inputs


def prepare(out: Path, inputs: list[Path], size: int, hu_window: list[float], settings: list[str],
            split_seed: int = 42, folds: int = 0, test_fraction: float = 0.2,
            val_fraction: float = 0.2, student_fraction: float = 0.5,
            export_png: bool = False) -> dict[str, Any]:
    """Slice cache + split(s) per setting; writes and returns `prepared.json`."""
    prepared: dict[str, Any] = {}
    for setting in settings:
        if setting not in experiments.SETTINGS:
            raise ConfigError(f"unknown setting {setting!r}", fix=f"use {experiments.SETTINGS}")
        faithful = setting == "faithful"
        cache_dir = out / f"cache-{setting}-{size}"
        summary = preprocess(inputs if len(inputs) > 1 else inputs[0], cache_dir, size=size,
                             faithful=faithful, hu_window=None if faithful else tuple(hu_window),
                             export_png=export_png)
        cache = SliceCache.load(cache_dir)
        split_paths = []
        n_folds = 1 if faithful or not folds else folds
        for fold in range(n_folds):
            split = make_split(cache, mode="faithful" if faithful else "patient", seed=split_seed,
                               test_fraction=test_fraction, val_fraction=val_fraction,
                               student_fraction=student_fraction,
                               folds=None if n_folds == 1 else n_folds,
                               fold=None if n_folds == 1 else fold)
            path = out / "splits" / f"{setting}-{size}-fold{fold}.json"
            save_split(split, path)
            split_paths.append(str(path))
        prepared[setting] = {"cache": str(cache_dir), "splits": split_paths, "summary": summary,
                             "synthetic": bool(cache.manifest.get("synthetic", False))}
    prepared["size"] = size
    atomic_write_json(out / PREPARED, prepared)
    return prepared


def load_prepared(out: Path) -> dict[str, Any]:
    path = out / PREPARED
    if not path.exists():
        raise KdlibError("no prepared data", path, "run notebook 01_preprocess first (same profile)")
    return read_json(path)


# --------------------------------------------------------------------------- 02_teacher


def model_kwargs(model: str, size: int) -> dict[str, Any]:
    return {"img_size": size} if model == "T2" else {}


def train_teachers(out: Path, teachers_by_setting: dict[str, list[str]], epochs: int,
                   batch_size: int = 8, seeds: list[int] | None = None, precision: str = "fp32",
                   device: str | None = None) -> dict[str, Any]:
    """Train every teacher for every setting and fold; writes and returns `teachers.json`."""
    prepared = load_prepared(out)
    registry: dict[str, Any] = read_json(out / TEACHERS) if (out / TEACHERS).exists() else {}
    for setting, teachers in teachers_by_setting.items():
        if setting not in prepared:
            raise ConfigError(f"setting {setting!r} was not prepared by 01_preprocess",
                              out / PREPARED, f"add it to 01's `settings`")
        entry = prepared[setting]
        for fold, split in enumerate(entry["splits"]):
            for model in teachers:
                for seed in seeds or [42]:
                    cfg = experiments.teacher_run_config(
                        model, entry["cache"], split, setting, epochs=epochs, batch_size=batch_size,
                        seed=seed, precision=precision, model_kwargs=model_kwargs(model, prepared["size"]),
                        name=model)
                    run_dir = train(cfg, out / "runs", device=device)
                    registry.setdefault(setting, {}).setdefault(str(fold), {})[model] = str(run_dir)
                    atomic_write_json(out / TEACHERS, registry)
    return registry


def teacher_runs(out: Path, setting: str, fold: int) -> dict[str, str]:
    path = out / TEACHERS
    if not path.exists():
        raise KdlibError("no trained teachers", path, "run notebook 02_teacher first (same profile)")
    return read_json(path).get(setting, {}).get(str(fold), {})


# --------------------------------------------------------------------------- 03/04 students


def row_configs(out: Path, rows: list[dict[str, Any]], setting: str, epochs: int,
                seeds: list[int], precision: str = "fp32", folds: list[int] | None = None,
                **overrides) -> list[RunConfig]:
    """One RunConfig per (thesis row, fold, seed), deduplicated by run folder."""
    prepared = load_prepared(out)[setting]
    configs, seen = [], set()
    for fold, split in enumerate(prepared["splits"]):
        if folds is not None and fold not in folds:
            continue
        teachers = teacher_runs(out, setting, fold)
        for row in rows:
            if row.get("teacher") and row["teacher"] not in teachers:
                continue  # teacher not trained in this profile: the row stays empty in tables
            cfg = experiments.row_config(row, prepared["cache"], split, setting, teachers,
                                         epochs=epochs, precision=precision, **overrides)
            if cfg is None:
                continue
            for seed in seeds:
                seeded = replace(cfg, seed=seed)
                key = seeded.run_dir(out / "runs")
                if key not in seen:
                    seen.add(key)
                    configs.append(seeded)
    return configs


def train_all(out: Path, configs: list[RunConfig], device: str | None = None) -> list[Path]:
    """Train a list of configurations in order (finished ones are skipped instantly).

    Configurations that share a teacher run are adjacent, so the teacher's outputs on the
    student training set are computed once for the whole group.
    """
    ordered = sorted(configs, key=lambda c: (c.teacher_run or "", c.split, c.train_subset, c.model))
    todo = sum(not is_finished(c.run_dir(out / "runs")) for c in ordered)
    print(f"{len(ordered)} runs, {len(ordered) - todo} already finished, {todo} to train")
    return [train(cfg, out / "runs", device=device) for cfg in ordered]


def publish_folder(out: Path, publish_dir: str = "") -> Path:
    """Where a notebook writes its tables and figures: `<out>` or a repo folder (real-mini
    commits its results under figures/real-mini)."""
    folder = (REPO_ROOT / publish_dir) if publish_dir else out
    (folder / "tables").mkdir(parents=True, exist_ok=True)
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    return folder


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def write_summary(publish: Path, runs: list[dict[str, Any]], claims_df, prov: dict[str, Any],
                  setting: str, synthetic: bool, readme: bool = False) -> Path:
    """`SUMMARY.md` beside the tables: the headline table (Table 4.2) and the claims table,
    with provenance; with `readme`, the same text replaces the README's results section, so
    the numbers a user reads there come from the pipeline, never from hand edits."""
    from . import tables

    headline = tables.headline_table([r for r in runs if r["config"]["setting"] == setting])
    shown = headline[["row", "setting", "n", "ours_dice_text", "thesis_dice"]].rename(
        columns={"n": "runs (folds x seeds)", "ours_dice_text": "ours: pooled Dice (95% CI)",
                 "thesis_dice": "thesis Dice"})
    verdicts = claims_df[[c for c in ("claim", "comparison", "verdict", "effect", "ci_low", "ci_high", "n")
                          if c in claims_df.columns]]
    stamp = ", ".join(f"{k}: {v}" for k, v in prov.items())
    text = "\n".join([
        f"### Results of the `{prov.get('profile')}` profile ({setting} setting)",
        "",
        ("**Generated (SYNTHETIC) data: not comparable to the thesis.**" if synthetic else
         "Real CT, but a small set (6 patients), not the full MSD Task09: absolute numbers are "
         "not comparable to the thesis; the comparisons between configurations are the point."),
        "",
        f"Provenance: {stamp}.",
        "",
        "Headline (Table 4.2 equivalent):",
        "",
        tables.to_markdown(shown),
        "Claims of the thesis, one verdict each:",
        "",
        tables.to_markdown(verdicts),
    ])
    path = publish / "SUMMARY.md"
    atomic_write_text(path, text)
    if readme:
        readme_path = REPO_ROOT / "README.md"
        current = readme_path.read_text()
        if README_START in current and README_END in current:
            head, rest = current.split(README_START, 1)
            _, tail = rest.split(README_END, 1)
            atomic_write_text(readme_path, f"{head}{README_START}\n{text}\n{README_END}{tail}")
    return path
