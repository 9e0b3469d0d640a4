"""What an invocation would train, without training: `python -m kdlib run --profile NAME --plan`.

The runs are enumerated by the functions the notebooks themselves call (`pipeline.
teacher_plan` + `teacher_configs` for 02, `student_configs` for 03, `ablation_configs` for 04)
with each notebook's parameters as the runner would give them (the profile over the
notebook's own defaults, read from its `parameters` cell), the data layout that 01 writes
(`pipeline.prepared_layout`) and the teacher registry 02 would write. So the plan cannot
drift from the notebooks: tests/test_plan.py trains a small profile and compares.

A run's folder name (slug + identity hash) needs the slice cache and split files, which
hash into it: before 01 has prepared the data, `run_dir` is None and the plan says so.
A run that an earlier notebook of the same invocation already trains (03's Table 4.2 students
reappear in 04's grid) is listed again with `shared_with` and counted once.

Projected cost: from measured training and inference rates (`gpu_check.json`, written by
`benchmarks/gpu_check.py`; the default is `benchmarks/gpu_check.json` when it exists), for
runs whose network and slice size were measured; "no measurement" otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import KdlibError
from .paths import NOTEBOOKS_DIR, PROFILES_DIR, REPO_ROOT, results_dir
from .runner import notebook_defaults  # noqa: F401 (part of this module's interface)

DEFAULT_MEASUREMENTS = REPO_ROOT / "benchmarks" / "gpu_check.json"
TRAINING_NOTEBOOKS = ("02_teacher", "03_student", "04_ablations")


def invocation_parameters(profile: str, data: str | None = None, out: str | Path | None = None,
                          notebooks_dir: Path = NOTEBOOKS_DIR, profiles_dir: Path = PROFILES_DIR,
                          folds: list[int] | None = None) -> tuple[Path, dict[str, dict[str, Any]]]:
    """The output folder and, per notebook, the parameters it would run with: its defaults
    updated with what the runner injects (`runner.notebook_parameters`, which also checks
    every profile key against the notebooks)."""
    from . import runner

    out_dir = results_dir(profile, out)
    notebooks = runner.list_notebooks(notebooks_dir)
    injected = runner.notebook_parameters(runner.load_profile(profile, profiles_dir), notebooks,
                                          profile, data, out_dir, folds)
    return out_dir, {nb.stem: {**notebook_defaults(nb), **injected[nb.stem]} for nb in notebooks}


def _subset_share(p01: dict[str, Any], setting: str, subset: str) -> float:
    """The share of the cache's slices in a split subset, from 01's fractions (an estimate
    for a plan made before the splits exist)."""
    if setting == "faithful":  # random 80/20 by slice, val == test
        return {"train": 0.8, "student_train": 0.8 * p01["student_fraction"], "val": 0.2, "test": 0.2}[subset]
    train_all = (1 - p01["test_fraction"]) * (1 - p01["val_fraction"])
    return {"train": train_all, "student_train": train_all * p01["student_fraction"],
            "val": (1 - p01["test_fraction"]) * p01["val_fraction"], "test": p01["test_fraction"]}[subset]


def plan_runs(profile: str, data: str | None = None, out: str | Path | None = None,
              only: list[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR,
              profiles_dir: Path = PROFILES_DIR, folds: list[int] | None = None) -> list[dict[str, Any]]:
    """One dict per run the invocation would make (see the module docstring); `folds`: of
    an invocation that trains only those folds (`--folds`)."""
    return enumerate_runs(profile, data, out, only, notebooks_dir, profiles_dir, folds)["runs"]


def enumerate_runs(profile: str, data: str | None = None, out: str | Path | None = None,
                   only: list[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR,
                   profiles_dir: Path = PROFILES_DIR, folds: list[int] | None = None) -> dict[str, Any]:
    """`plan_runs`'s runs (`runs`), with the RunConfig behind each (`configs`, same order), the
    results folder (`out`), whether the data is prepared (`known`) and the teacher registry
    notebook 02 would write (`registry`): what `kdlib.executor` submits."""
    from . import pipeline
    from .data import load_split
    from .io import read_json
    from .train import is_finished

    out_dir, params = invocation_parameters(profile, data, out, notebooks_dir, profiles_dir, folds)
    stems = [s for s in params if not only or any(s.startswith(p) for p in only)]
    p01 = params["01_preprocess"]
    if "01_preprocess" not in stems and (out_dir / pipeline.PREPARED).exists():
        layout = pipeline.load_prepared(out_dir)  # what the notebooks will read
    else:
        layout = pipeline.prepared_layout(out_dir, p01["size"], p01["settings"], p01["folds"],
                                          p01["fold_cases"] or None)
    entries = [v for v in layout.values() if isinstance(v, dict) and "cache" in v]
    known = all((Path(e["cache"]) / "manifest.json").is_file() and all(Path(s).is_file() for s in e["splits"])
                for e in entries)
    runs_dir = out_dir / "runs"
    split_sizes: dict[str, dict[str, int]] = {}
    if known:
        for e in entries:
            for s in e["splits"]:
                split_sizes[s] = {k: len(v) for k, v in load_split(s).items()
                                  if k in ("train", "student_train", "val", "test")}
    fold_of = {s: (setting, fold) for setting, e in layout.items() if isinstance(e, dict) and "splits" in e
               for fold, s in enumerate(e["splits"])}

    # 02: the teachers, and the registry (teachers.json) it would leave for 03 and 04
    p02 = params["02_teacher"]
    teacher_plan = pipeline.teacher_plan(layout, p02["setting"], p02["teachers"], p02["faithful_teachers"])
    teachers = pipeline.teacher_configs(
        layout, teacher_plan, epochs=p02["epochs"], batch_size=p02["batch_size"], precision=p02["precision"],
        patience=p02["patience"], min_delta=p02["min_delta"], min_epochs=p02["min_epochs"],
        keep_last=p02["keep_last"], select_on=p02["select_on"], smooth=p02["smooth"], warmup=p02["warmup"],
        folds=p02["train_folds"])
    registry: dict[str, Any] = read_json(out_dir / pipeline.TEACHERS) if (out_dir / pipeline.TEACHERS).exists() else {}
    teacher_model_of: dict[str, str] = {}
    for setting, fold, cfg in teachers:
        run = str(cfg.run_dir(runs_dir)) if known else str(runs_dir / f"{cfg.model.lower()}-(not yet prepared)")
        registry.setdefault(setting, {}).setdefault(str(fold), {})[cfg.model] = run
    for by_fold in registry.values():
        for by_model in by_fold.values():
            teacher_model_of.update({run: model for model, run in by_model.items()})

    by_notebook: dict[str, list] = {}
    if "02_teacher" in stems:
        by_notebook["02_teacher"] = [cfg for _, _, cfg in teachers]
    student_options = ("patience", "min_epochs", "select_on", "smooth", "warmup", "keep_last")
    if "03_student" in stems:
        p = params["03_student"]
        by_notebook["03_student"] = pipeline.student_configs(
            out_dir, p["setting"], epochs=p["epochs"], seeds=p["seeds"], precision=p["precision"],
            headline_seeds=p["headline_seeds"], folds=p["train_folds"], prepared=layout, teachers=registry,
            **{k: p[k] for k in student_options})
    if "04_ablations" in stems:
        p = params["04_ablations"]
        by_notebook["04_ablations"] = pipeline.ablation_configs(
            out_dir, p["setting"], p["grid"], epochs=p["epochs"], seeds=p["seeds"], precision=p["precision"],
            headline_seeds=p["headline_seeds"], grid_folds=p["grid_folds"], folds=p["train_folds"], faithful_grid=p["faithful_grid"], prepared=layout, teachers=registry,
            **{k: p[k] for k in student_options})

    planned, first_in, cfgs = [], {}, []
    for stem, configs in by_notebook.items():
        for cfg in pipeline.training_order(configs) if stem != "02_teacher" else configs:
            cfgs.append(cfg)
            key = pipeline._dedup_key(cfg)
            run_dir = cfg.run_dir(runs_dir) if known else None
            setting, fold = fold_of.get(cfg.split, (cfg.setting, None))
            sizes = split_sizes.get(cfg.split)
            select = "test" if cfg.selection == "test" else "val"
            planned.append({
                "notebook": stem, "role": cfg.role, "model": cfg.model, "name": cfg.name,
                "teacher": teacher_model_of.get(cfg.teacher_run) if cfg.teacher_run else None,
                "setting": setting, "fold": fold, "seed": cfg.seed, "epochs": cfg.epochs,
                "patience": cfg.patience, "min_epochs": cfg.min_epochs, "precision": cfg.precision,
                "batch_size": cfg.batch_size, "train_subset": cfg.train_subset,
                "size": layout.get("size"),
                "train_images": sizes[cfg.train_subset] if sizes else None,
                "val_images": sizes[select] if sizes else None,
                "train_share": round(_subset_share(p01, setting, cfg.train_subset), 4),
                "val_share": round(_subset_share(p01, setting, select), 4),
                "run_dir": run_dir.name if run_dir else None,
                "finished": bool(run_dir) and is_finished(run_dir, cfg.epochs),
                "shared_with": first_in.get(key),
            })
            first_in.setdefault(key, stem)
    return {"runs": planned, "configs": cfgs, "out": out_dir, "known": known, "registry": registry}


# --------------------------------------------------------------------------- cost


def load_measurements(path: str | Path | None = None) -> dict[str, Any] | None:
    """Measured rates (`gpu_check.json`), or None when there are none."""
    path = Path(path) if path else DEFAULT_MEASUREMENTS
    if not path.is_file():
        if path != DEFAULT_MEASUREMENTS:
            raise KdlibError("no measurements file", path, "run benchmarks/gpu_check.py --out DIR first")
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise KdlibError("measurements file is not JSON", path, "rerun benchmarks/gpu_check.py") from None
    return data


def run_seconds(run: dict[str, Any], measurements: dict[str, Any] | None, cache_slices: int | None = None,
                epochs: int | None = None) -> float | None:
    """Projected seconds of one run at its cap (or `epochs`): epochs x (training images /
    measured training rate [x the measured KD-over-student epoch ratio for a distilled run]
    + validation images / measured inference rate). None without a measurement of this
    network at this size, or without the image counts (`cache_slices` x the split shares
    stands in for a split not yet made)."""
    if not measurements:
        return None
    net = (measurements.get("networks") or {}).get(run["model"])
    if not net or net.get("size") != run.get("size") or not net.get("train_images_per_s"):
        return None
    train_images, val_images = run.get("train_images"), run.get("val_images")
    if train_images is None and cache_slices:
        train_images, val_images = cache_slices * run["train_share"], cache_slices * run["val_share"]
    if train_images is None:
        return None
    ratio = 1.0
    if run["role"] == "kd":
        ratio = ((measurements.get("kd_epoch") or {}).get(run["model"]) or {}).get("ratio") or 1.0
    per_epoch = train_images / net["train_images_per_s"] * ratio
    if net.get("inference_images_per_s"):
        per_epoch += (val_images or 0) / net["inference_images_per_s"]
    return per_epoch * (epochs or run["epochs"])


def totals(runs: list[dict[str, Any]], measurements: dict[str, Any] | None = None,
           cache_slices: int | None = None) -> dict[str, dict[str, Any]]:
    """Per notebook: runs, runs to train (not shared with an earlier notebook, not finished),
    epochs at the caps, training image-epochs where known, projected hours where measured."""
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        t = out.setdefault(run["notebook"], {"runs": 0, "shared": 0, "finished": 0, "epochs": 0,
                                             "image_epochs": 0, "seconds": 0.0, "unmeasured": 0})
        t["runs"] += 1
        if run["shared_with"]:
            t["shared"] += 1
            continue
        t["finished"] += bool(run["finished"])
        t["epochs"] += run["epochs"]
        if run["train_images"] is not None and t["image_epochs"] is not None:
            t["image_epochs"] += run["train_images"] * run["epochs"]
        else:
            t["image_epochs"] = None
        seconds = run_seconds(run, measurements, cache_slices)
        if seconds is None:
            t["unmeasured"] += 1
        else:
            t["seconds"] += seconds
    return out


def format_plan(runs: list[dict[str, Any]], measurements: dict[str, Any] | None = None,
                profile: str = "") -> str:
    lines = [f"plan of `python -m kdlib run --profile {profile}` (nothing is trained):", ""]
    header = f"{'notebook':<13} {'role':<8} {'model':<5} {'configuration':<34} {'setting':<9} fold seed   cap  run folder"
    lines.append(header)
    for r in runs:
        where = r["run_dir"] or "(after 01 has prepared the data)"
        if r["shared_with"]:
            where += f"  [also in {r['shared_with']}: trained once]"
        elif r["finished"]:
            where += "  [finished]"
        fold = "-" if r["fold"] is None else str(r["fold"])
        lines.append(f"{r['notebook']:<13} {r['role']:<8} {r['model']:<5} {r['name'][:34]:<34} "
                     f"{r['setting']:<9} {fold:>4} {r['seed']:>4} {r['epochs']:>5}  {where}")
    lines.append("")
    for stem, t in totals(runs, measurements).items():
        todo = t["runs"] - t["shared"] - t["finished"]
        cost = ("no measurement" if t["unmeasured"] and not t["seconds"] else
                f"projected {t['seconds'] / 3600:.2f} h at the caps"
                + (f" ({t['unmeasured']} runs without a measurement)" if t["unmeasured"] else ""))
        images = "unknown until 01 has run" if t["image_epochs"] is None else f"{t['image_epochs']:,}"
        lines.append(f"{stem}: {t['runs']} runs ({t['shared']} shared with an earlier notebook, "
                     f"{t['finished']} finished, {todo} to train), {t['epochs']:,} epochs at the caps, "
                     f"training image-epochs {images}; {cost}")
    lines.append(f"total: {sum(1 for r in runs if not r['shared_with'])} distinct runs")
    return "\n".join(lines)
