"""Release students: trained for users, not for the thesis's claims (`python -m kdlib release`).

The cross-validation models of real-mini each saw 3 patients at 64x64, as given; on a new
scanner's CT they can find the spine instead of the spleen. A release student instead:

- trains on **all six** real patients (`train` subset: every slice but the held-out ones),
  stopping and keeping its checkpoint on a held-out 15% of every patient's slices (runs of
  4), with real-mini's rule (validation Dice over a 5-epoch mean, patience 20, min 40 epochs),
  the augmented runs' validation counting each held-out slice in all 8 orientations
  (`val_orientations`: a model meant for any orientation is kept for all of them, not for the
  one the slices come in);
- trains with AdamW 1e-3 (weight decay 0.05, betas 0.9/0.95), batch 20, Dice loss: chosen on
  validation data only among RMSprop 1e-2 (the KD-off control recipe), RMSprop 1e-3 and AdamW
  1e-3 (`benchmarks/bench_release_recipe.py`, benchmarks/RESULTS.md section 10); with
  augmentation, RMSprop 1e-2 collapsed to an all-background output mid-run;
- **augments** every batch (`kdlib.augment`: the 8 orientations, zoom and small rotations,
  contrast and brightness).

What a user may expect of it is measured on a **cross-validation of the same recipe**
(real-mini's three folds by patient: each fold trains on its 4 other patients and tests on its
2), with and without augmentation: the model card reports that, never a score of the release
model on slices it was selected on. Its own record's "test" slices are a second held-out
share of the training patients' slices (neighbours of slices it trained on: optimistic,
reported as such).

A distilled release student is not made yet. Since issue 19's last step a distilled run can
augment (its teacher's outputs are cached for each of the 8 orientations, `kdlib.augment`), but
releasing one needs a teacher trained on the six patients and one per cross-validation fold for
its expected Dice: hours of T1 training on a 2-core CPU. In the published real-mini
cross-validation no distilled student beat its KD-off control.

Every step resumes: runs are `kdlib.train` runs (a finished one is never trained again), and
publishing refuses a folder that already holds a release.
"""
from __future__ import annotations

import dataclasses
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .io import atomic_write_json, atomic_write_text, read_json

# real-mini's folds (notebooks/profiles/real-mini.yaml): every patient is tested exactly once
FOLD_TEST_CASES = (("3Dircadb1.1", "spleen_3"), ("3Dircadb1.7", "spleen_6"),
                   ("spleen_8", "spleen_22"))
ORIENTATIONS = ("as given", "rot90", "rot180", "rot270", "fliplr", "rot90+fliplr",
                "rot180+fliplr", "rot270+fliplr")  # kdlib.augment.dihedral's ops 0..7
MAX_ORIENTATION_SPREAD = 0.05  # the issue's bound on the 8 orientations' Dice


@dataclass
class ReleaseConfig:
    data: str = "shared:ircadb,shared:thesis_slices"
    out: str = "results/release"          # caches, splits and runs (not committed)
    publish: str = "figures/release"      # the release: weights, ONNX, model cards
    size: int = 64
    hu_window: tuple[float, float] = (0.0, 255.0)
    models: tuple[str, ...] = ("S1", "S2")
    fold_test_cases: tuple[tuple[str, ...], ...] = FOLD_TEST_CASES
    val_share: float = 0.15               # held out of every patient: stopping and selection
    check_share: float = 0.10             # release runs only: a second held-out share
    epochs: int = 300
    patience: int = 20
    min_epochs: int = 40
    smooth: int = 5
    seed: int = 42
    # fp32: what `predict` and the ONNX model run in, and the same arithmetic on every CPU (bf16
    # is emulated, at half the speed, on CPUs without native bf16); the first release used bf16
    precision: str = "fp32"
    # augmented runs stop and keep their checkpoint on validation Dice over all 8 orientations of
    # the held-out slices: on the slices as given, selection favoured the orientation they come in
    # (first release: one-pass spread S1 0.058, S2 0.139, "as given" among the best)
    val_orientations: bool = True
    # chosen on validation data only (benchmarks/bench_release_recipe.py, RESULTS.md 10): with
    # augmentation, RMSprop 1e-2 (the KD-off control recipe) collapsed to all-background
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    latency: bool = True


# ---------------------------------------------------------------------------------------
# data and splits

def _cache(cfg: ReleaseConfig, out: Path) -> Path:
    from .data import preprocess
    from .pipeline import data_inputs

    inputs = data_inputs(cfg.data, out, 0, 0, 0)
    cache_dir = out / f"cache-{cfg.size}"
    preprocess(inputs if len(inputs) > 1 else inputs[0], cache_dir, size=cfg.size,
               faithful=False, hu_window=tuple(cfg.hu_window))
    return cache_dir


def _release_split(cache, cfg: ReleaseConfig) -> dict[str, Any]:
    """All patients train; `val_share` of every patient's slices validates, a further
    `check_share` is the record's "test" (held-out neighbours, not new patients)."""
    from .data.splits import _held_out_runs

    cases = sorted(cache.cases)
    val = _held_out_runs(cache, cases, cfg.val_share, 4, np.random.default_rng([cfg.seed, 3, 0]))
    rest_rng = np.random.default_rng([cfg.seed, 4, 0])
    check = [i for i in _held_out_runs(cache, cases, cfg.check_share, 4, rest_rng)
             if i not in set(val)]
    taken = set(val) | set(check)
    train = [i for i in range(len(cache)) if i not in taken]
    ids = np.asarray(cache.case_ids)
    untrained = sorted(set(cases) - set(ids[train].tolist()))
    if untrained:
        raise DataError(f"patient(s) {', '.join(untrained)} have too few slices to hold out "
                        f"{cfg.val_share:g} + {cfg.check_share:g} of them and still train",
                        cache.path, "use patients with more slices, or lower val_share/check_share")
    return {"mode": "release", "seed": cfg.seed, "fold": None, "folds": None,
            "train": train, "val": sorted(val), "test": sorted(check), "student_train": train,
            "train_cases": cases, "val_cases": cases, "test_cases": cases, "student_cases": cases,
            "val_by": f"{cfg.val_share:g} of every patient's slices (runs of 4)",
            "test_by": f"a further {cfg.check_share:g} of every patient's slices (runs of 4): "
                       "held-out neighbours of training slices, not new patients",
            "n_slices": len(cache), "cache": str(cache.path),
            "cache_fingerprint": cache.fingerprint, "synthetic": cache.synthetic}


def prepare(cfg: ReleaseConfig, out: Path) -> dict[str, Any]:
    """The cache, the cross-validation splits and the release split (written once)."""
    from .data import SliceCache, make_split, save_split

    cache_dir = _cache(cfg, out)
    cache = SliceCache.load(cache_dir)
    missing = sorted({c for fold in cfg.fold_test_cases for c in fold} - set(cache.cases))
    if missing:
        raise DataError(f"the data lack patient(s) {', '.join(missing)} of the folds", cfg.data,
                        "give the real-mini data (shared:ircadb,shared:thesis_slices)")
    splits = []
    for fold, test in enumerate(cfg.fold_test_cases):
        split = make_split(cache, mode="patient", seed=cfg.seed, test_cases=list(test),
                           val_fraction=0.0, val_share=cfg.val_share,
                           folds=len(cfg.fold_test_cases), fold=fold)
        splits.append(str(save_split(split, out / "splits" / f"cv-fold{fold}.json")))
    release = save_split(_release_split(cache, cfg), out / "splits" / "release.json")
    return {"cache": str(cache_dir), "cv_splits": splits, "release_split": str(release)}


# ---------------------------------------------------------------------------------------
# runs

def run_config(cfg: ReleaseConfig, model: str, cache: str, split: str, augment: bool,
               kind: str):
    from .train import baseline_config

    name = f"{model} release recipe{' +aug' if augment else ''}{' (CV)' if kind == 'cv' else ''}"
    return baseline_config(model, cache, split, name=name, train_subset="train", loss="dice",
                           optimizer=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                           batch_size=20, epochs=cfg.epochs, patience=cfg.patience,
                           min_epochs=cfg.min_epochs, smooth=cfg.smooth, select_on="dice",
                           augment=augment, precision=cfg.precision,
                           val_orientations=augment and cfg.val_orientations)


def plan(cfg: ReleaseConfig, prepared: dict[str, Any]) -> list[dict[str, Any]]:
    """Every run, cheapest first within a model: CV with and without augmentation, then the
    release model."""
    runs = []
    for model in cfg.models:
        for augment in (True, False):
            for fold, split in enumerate(prepared["cv_splits"]):
                runs.append({"model": model, "kind": "cv", "fold": fold, "augment": augment,
                             "config": run_config(cfg, model, prepared["cache"], split,
                                                  augment, "cv")})
        runs.append({"model": model, "kind": "release", "fold": None, "augment": True,
                     "config": run_config(cfg, model, prepared["cache"],
                                          prepared["release_split"], True, "release")})
    return runs


# ---------------------------------------------------------------------------------------
# measurements

def orientation_dice(run_dir: Path) -> dict[bool, list[float]]:
    """Pooled test Dice of a run's kept checkpoint on its test slices turned into each of the
    8 orientations (masks turned alike), in fp32 as `predict` runs it: {False: one pass,
    True: as `predict --tta` runs it}."""
    import torch

    from .augment import dihedral
    from .data import SliceCache, load_split
    from .figures import dice
    from .train import RunConfig, infer, load_model

    cfg = RunConfig.from_dict(read_json(run_dir / "config.json"))
    cache, split = SliceCache.load(cfg.cache), load_split(cfg.split)
    rows = np.asarray(split["test"])
    images = torch.from_numpy(np.asarray(cache.images[rows]))
    truth = torch.from_numpy(np.asarray(cache.masks[rows]) > 127)
    model = load_model(run_dir, torch.device("cpu"))
    scores: dict[bool, list[float]] = {False: [], True: []}
    for op in range(8):
        turned = dihedral(images, op).contiguous().numpy()
        for tta, out in scores.items():
            pred = infer(run_dir, turned, device="cpu", model=model, tta=tta)["mask"]
            out.append(dice(pred, dihedral(truth, op).numpy()))
    return scores


def measure_latency(models: dict[str, Any], sizes=(256, 512), batches=(1, 16), threads=(1, 2),
                    repeats: int = 3, budget_s: float = 10.0) -> list[dict[str, Any]]:
    """Milliseconds per slice of a forward pass (fp32, CPU) for each network in `models`
    ({name: (torch module, ONNX file or None)}), by torch and by onnxruntime: the median of
    up to `repeats` timed calls (fewer when they pass `budget_s`: T1 at 512x512, batch 16,
    takes over a minute a call on 1 thread), after one untimed warm-up call per size."""
    import torch

    from .export import _onnxruntime

    rows = []
    previous = torch.get_num_threads()
    try:
        for name, (module, onnx_file) in models.items():
            module = module.eval()
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                engines: dict[str, Any] = {"torch": lambda x, grey: module(x)}
                if onnx_file is not None:
                    ort = _onnxruntime()
                    options = ort.SessionOptions()
                    options.intra_op_num_threads, options.inter_op_num_threads = n_threads, 1
                    session = ort.InferenceSession(str(onnx_file), options,
                                                   providers=["CPUExecutionProvider"])
                    engines["onnxruntime"] = \
                        lambda x, grey, session=session: session.run(["logits"], {"image": grey})
                for size in sizes:
                    for engine, call in engines.items():
                        for batch in batches:
                            x = torch.rand(batch, 3, size, size,
                                           generator=torch.Generator().manual_seed(0))
                            grey = np.ascontiguousarray(x[:, :1].numpy())
                            with torch.inference_mode():
                                if batch == batches[0]:
                                    call(x, grey)  # warm-up: allocations, kernel selection
                                times: list[float] = []
                                while len(times) < repeats and sum(times) < budget_s:
                                    started = time.perf_counter()
                                    call(x, grey)
                                    times.append(time.perf_counter() - started)
                            rows.append({"model": name, "engine": engine, "threads": n_threads,
                                         "size": size, "batch": batch, "calls": len(times),
                                         "ms_per_slice": 1000 * float(np.median(times)) / batch})
    finally:
        torch.set_num_threads(previous)
    return rows


# ---------------------------------------------------------------------------------------
# the whole release

def _record(run_dir: Path) -> dict[str, Any]:
    m = read_json(run_dir / "metrics.json")
    return {"run": run_dir.name, "test_dice": float(m["pooled"]["dice"]),
            "last_epoch_test_dice": float(m["last_epoch"]["pooled"]["dice"]),
            "best_epoch": int(m["best_epoch"]), "epochs_run": int(m["epochs_run"]),
            "stopped": m["stopped"], "train_seconds": round(float(m.get("train_seconds", 0)), 1),
            "per_patient": {case: float(v["dice"]) for case, v in m["per_volume"]["cases"].items()}}


def build_release(cfg: ReleaseConfig, progress=print) -> dict[str, Any]:
    """Prepare, train (resuming), measure, export and publish; returns release.json's content."""
    import torch

    from .paths import publish_path, results_dir
    from .provenance import code_state, cpu_name
    from .pipeline import publish_record_files
    from .train import load_model, train

    out = results_dir("release", cfg.out)
    publish = publish_path(cfg.publish)
    if (publish / "release.json").exists():
        raise DataError("a release is already published here", publish,
                        "move it away first (e.g. `git mv figures/release "
                        "figures/release-<commit>`), or publish elsewhere (--publish)")
    started = time.time()
    prepared = prepare(cfg, out)
    runs = plan(cfg, prepared)
    for k, item in enumerate(runs, 1):
        where = "all six patients" if item["fold"] is None else f"fold {item['fold']}"
        progress(f"[{k}/{len(runs)}] {item['config'].name}, {where}")
        item["run_dir"] = train(item["config"], out / "runs", progress=False)
    progress("measuring: 8 orientations of every cross-validation model's test slices")
    for item in runs:
        item["record"] = _record(item["run_dir"])
        if item["kind"] == "cv":
            scores = orientation_dice(item["run_dir"])
            item["orientations"], item["orientations_tta"] = scores[False], scores[True]

    summary: dict[str, Any] = {"models": {}, "config": _portable_release_config(cfg)}
    staging = publish.with_name(f".{publish.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        onnx_files = {}
        for model in cfg.models:
            summary["models"][model] = _model_summary(model, runs)
            release = next(r for r in runs if r["model"] == model and r["kind"] == "release")
            onnx_files[model] = _publish_model(release["run_dir"], staging / model)
        for run in runs:  # every run's small records, for a reader to recompute the cards' numbers
            publish_record_files(run["run_dir"], staging / "runs" / run["run_dir"].name, out)
        if cfg.latency:
            progress("measuring latency (torch and onnxruntime, 256 and 512, batch 1 and 16)")
            from .models import build

            nets = {m: (load_model(runs_of(runs, m, "release")[0]["run_dir"], torch.device("cpu")),
                        onnx_files[m]) for m in cfg.models}
            nets["T1"] = (build("T1"), None)  # latency does not depend on the weights
            summary["latency"] = measure_latency(nets)
        trained_at = sorted({str((read_json(r["run_dir"] / "config.json").get("provenance") or {})
                                 .get("commit", "unknown"))[:7] for r in runs})
        summary.update(provenance={**code_state(), "runs_trained_at": trained_at,
                                   "cpu": cpu_name(flags=False), "torch": torch.__version__,
                                   "python": platform.python_version(),
                                   "threads": torch.get_num_threads(),
                                   "minutes": round((time.time() - started) / 60, 1),
                                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
        atomic_write_json(staging / "release.json", summary)
        for model in cfg.models:
            atomic_write_text(staging / model / "README.md", model_card(model, summary))
        _orientation_figure(summary, staging / "orientations.png")
        atomic_write_text(staging / "README.md", index_text(summary))
        publish.parent.mkdir(parents=True, exist_ok=True)
        if publish.exists():  # an empty or partial folder of an earlier failed attempt
            if (publish / "release.json").exists():
                raise DataError("a release was published meanwhile", publish, "publish elsewhere")
            shutil.rmtree(publish)
        staging.rename(publish)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def runs_of(runs: list[dict[str, Any]], model: str, kind: str, augment: bool | None = None):
    return [r for r in runs if r["model"] == model and r["kind"] == kind
            and (augment is None or r["augment"] == augment)]


def _portable_release_config(cfg: ReleaseConfig) -> dict[str, Any]:
    """The configuration as release.json records it: a folder given as an absolute path (the
    data sources, the work folder, the publication) by its name only, since a publication names
    no folder of the machine that made it; dataset names (`shared:ircadb`) as given."""
    def portable(value: str) -> str:
        return ",".join(Path(part).name if Path(part).is_absolute() else part for part in value.split(","))

    return {**dataclasses.asdict(cfg), **{key: portable(getattr(cfg, key)) for key in ("data", "out", "publish")}}


def _model_summary(model: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    from .pipeline import portable_config

    result: dict[str, Any] = {}
    for augment in (True, False):
        cv = sorted(runs_of(runs, model, "cv", augment), key=lambda r: r["fold"])
        per_fold = [r["record"]["test_dice"] for r in cv]
        orient = np.asarray([r["orientations"] for r in cv])  # folds x 8
        by_orientation = orient.mean(axis=0)
        tta = np.asarray([r["orientations_tta"] for r in cv])
        by_orientation_tta = tta.mean(axis=0)
        result["augmented" if augment else "as_given"] = {
            "folds": [{"fold": r["fold"], **r["record"], "orientations": r["orientations"],
                       "orientations_tta": r["orientations_tta"]} for r in cv],
            "cv_dice_mean": float(np.mean(per_fold)),
            "orientation_dice": [float(v) for v in by_orientation],
            "orientation_spread": float(by_orientation.max() - by_orientation.min()),
            "orientation_spread_per_fold": [float(row.max() - row.min()) for row in orient],
            "orientation_dice_tta": [float(v) for v in by_orientation_tta],
            "orientation_spread_tta": float(by_orientation_tta.max() - by_orientation_tta.min()),
            "orientation_spread_tta_per_fold": [float(row.max() - row.min()) for row in tta],
        }
    aug, plain = result["augmented"], result["as_given"]
    diffs = [a["test_dice"] - p["test_dice"] for a, p in zip(aug["folds"], plain["folds"])]
    result["augmentation_effect"] = {"per_fold": diffs, "mean": float(np.mean(diffs))}
    release = runs_of(runs, model, "release")[0]
    result["release"] = release["record"]
    result["release"]["config"] = portable_config(read_json(release["run_dir"] / "config.json"),
                                                  release["run_dir"].parent.parent)
    return result


def _publish_model(run_dir: Path, dest: Path) -> Path:
    """Records, weights (best.pt), preprocessing.json and model.onnx (+ .json) of a release run."""
    from .export import export_onnx
    from .pipeline import copy_model

    copy_model(run_dir, dest)  # into a fresh staging folder
    export_onnx(dest, dest / "model.onnx")  # checked on the release split's held-out slices
    return dest / "model.onnx"


# ---------------------------------------------------------------------------------------
# model cards

def _fmt(v: float) -> str:
    return f"{v:.3f}"


def _latency_table(summary: dict[str, Any], names: tuple[str, ...]) -> str:
    rows = [r for r in summary.get("latency", []) if r["model"] in names]
    if not rows:
        return "Latency was not measured in this release."
    lines = ["| network | engine | threads | 256x256, batch 1 | 256x256, batch 16 | 512x512, batch 1 | 512x512, batch 16 |",
             "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["engine"], r["threads"]) for r in rows},
                  key=lambda k: (names.index(k[0]), k[1] != "torch", k[2]))
    for model, engine, threads in keys:
        cells = []
        for size in (256, 512):
            for batch in (1, 16):
                hit = [r for r in rows if (r["model"], r["engine"], r["threads"], r["size"],
                                           r["batch"]) == (model, engine, threads, size, batch)]
                cells.append(f"{hit[0]['ms_per_slice']:.1f}" if hit else "-")
        lines.append(f"| {model} | {engine} | {threads} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _oriented_selection(cfg: dict[str, Any]) -> str:
    """How the augmented runs' validation counted orientations (releases before the option: as given)."""
    if cfg.get("val_orientations"):
        return "; the augmented runs' validation counts every held-out slice in each of the 8 orientations"
    return "; validation on the slices as given"


def model_card(model: str, summary: dict[str, Any]) -> str:
    """The model card (README.md) of one release student, from release.json alone."""
    from .models import PAPER_PARAMS

    s = summary["models"][model]
    aug, plain, rel = s["augmented"], s["as_given"], s["release"]
    prov = summary["provenance"]
    cfg = summary["config"]
    spread_ok = aug["orientation_spread"] <= MAX_ORIENTATION_SPREAD
    fold_rows = "\n".join(
        f"| {a['fold']} | {', '.join(cfg['fold_test_cases'][a['fold']])} | {_fmt(a['test_dice'])} | "
        f"{_fmt(p['test_dice'])} | {a['test_dice'] - p['test_dice']:+.3f} | {a['best_epoch']}/{a['epochs_run']} "
        f"({a['stopped']}) | {p['best_epoch']}/{p['epochs_run']} ({p['stopped']}) |"
        for a, p in zip(aug["folds"], plain["folds"]))
    orient_rows = "\n".join(f"| {name} | {_fmt(a)} | {_fmt(t)} | {_fmt(p)} |" for name, a, t, p in
                            zip(ORIENTATIONS, aug["orientation_dice"], aug["orientation_dice_tta"],
                                plain["orientation_dice"]))
    spread_tta_ok = aug["orientation_spread_tta"] <= MAX_ORIENTATION_SPREAD
    return f"""# kdlib release student {model} ({PAPER_PARAMS[model]:,} parameters)

Made by `python -m kdlib release` at commit `{prov.get('commit', '?')}` (its runs trained at {', '.join(prov.get('runs_trained_at', ['?']))}){' (tree with uncommitted changes: ' + ', '.join(prov.get('changed', [])) + ')' if not prov.get('clean', True) else ''}, {prov['date']}, on {prov['cpu']} ({prov['minutes']} min for the whole release). Every number below is read from `../release.json`; nothing here is typed by hand.

## Use

```bash
python -m kdlib predict --model figures/release/{model} --input CT_OR_SLICES --out OUT --tta
```

`--tta` averages the model over the 8 orientations of every slice (8 forward passes): the orientation a 2D slice comes in
then does not change its mask (below). Without it, one pass.

or, without torch or kdlib, `model.onnx` with onnxruntime (input `image`: float32 (N, 1, H, W), grey / 255 after the
preprocessing in `model.onnx.json`; mask = `logits > 0`). Its masks equal torch's on the check slices
(`model.onnx.json`, `check`).

## What it was trained on

- **Data**: the six real patients of real-mini (3D-IRCADb-01 patients 1 and 7, DICOM; the thesis's own slices of
  MSD spleen 3, 6, 8 and 22), {cfg['size']}x{cfg['size']} slices, HU clipped to {cfg['hu_window'][0]:g}..{cfg['hu_window'][1]:g}
  and mapped to 0..255, in the thesis orientation.
- **Recipe**: {cfg['optimizer']} lr {cfg['lr']:g} (weight decay {cfg['weight_decay']:g}), batch 20, Dice loss, no teacher (chosen on
  validation data only: benchmarks/RESULTS.md section 10); every slice of every patient
  except held-out runs: {cfg['val_share']:g} of each patient's slices for stopping and selection (validation Dice over a
  {cfg['smooth']}-epoch mean, patience {cfg['patience']}, no stop before epoch {cfg['min_epochs']}, cap {cfg['epochs']}{_oriented_selection(cfg)}),
  and a further {cfg['check_share']:g} kept out as a check.
- **Augmentation** (`kdlib.augment`): the 8 orientations (90-degree rotations x flips), zoom 0.85-1.15 and rotation up to
  15 degrees, contrast x0.8-1.2 and brightness +-0.1. Seed {cfg['seed']}, precision {cfg['precision']}.
- This model: kept epoch {rel['best_epoch']} of {rel['epochs_run']} (stopped at the {'patience' if rel['stopped'] == 'early' else 'cap'});
  Dice {_fmt(rel['test_dice'])} on its held-out check slices. Those are neighbours of slices it trained on, so this
  number is optimistic and is **not** what to expect on a new patient: see below.

## Expected Dice: a cross-validation of the same recipe

Real-mini's three folds by patient; each fold's model trains with this recipe on the 4 other patients and is tested on
the fold's 2 patients (pooled test Dice of the kept checkpoint; one seed per fold). The release model itself is not
tested here.

| fold | test patients | with augmentation | as given | difference | kept/run (aug) | kept/run (as given) |
|---|---|---|---|---|---|---|
{fold_rows}

**Expected Dice on a new patient like these: {_fmt(aug['cv_dice_mean'])}** (mean of the 3 folds; as given
{_fmt(plain['cv_dice_mean'])}; the augmentation's effect per fold {', '.join(f'{d:+.3f}' for d in s['augmentation_effect']['per_fold'])},
mean {s['augmentation_effect']['mean']:+.3f}). Three folds and one seed each: a seed-to-seed SD of 0.03-0.09 per
configuration was measured on fold 0 (benchmarks/RESULTS.md section 9), so fold-to-fold differences of that size are noise.

## Orientation

Pooled Dice of each fold's model on its test slices turned into each orientation (masks turned alike), mean of the 3
folds, fp32 as `predict` runs it:

| orientation | this recipe (one pass) | this recipe, `--tta` | the recipe without augmentation (one pass) |
|---|---|---|---|
{orient_rows}

Spread (max - min over the 8): **{_fmt(aug['orientation_spread'])}** in one pass ({'within' if spread_ok else 'NOT within'} the
{MAX_ORIENTATION_SPREAD:g} bound; per fold {', '.join(_fmt(v) for v in aug['orientation_spread_per_fold'])}); **{_fmt(aug['orientation_spread_tta'])}** with `--tta`
({'within' if spread_tta_ok else 'NOT within'} the bound; per fold {', '.join(_fmt(v) for v in aug['orientation_spread_tta_per_fold'])}); {_fmt(plain['orientation_spread'])} without augmentation.
With `--tta` the expected Dice as given is {_fmt(aug['orientation_dice_tta'][0])}. Figure: `../orientations.png`.

## Latency (CPU, fp32, ms per slice: median of up to 3 calls after a warm-up; `release.json` gives the count)

On {prov['cpu']}, torch {prov['torch']}; T1 (the 43M-parameter teacher, random weights: latency does not depend on them) for
comparison. `--size` is the slice size the network runs at (this model was trained at {cfg['size']}x{cfg['size']}; `predict` resizes
every input to it, so its own cost per slice is far below these).

{_latency_table(summary, (model, 'T1'))}

## Intended use and limits

- For research and teaching: a tiny CT spleen segmenter for 2D axial slices or volumes, where compute is scarce.
  **Not for clinical use.**
- Trained on 6 patients from 2 sources (contrast CT, 0.57-0.78 mm pixels); expect lower Dice on other scanners,
  protocols, non-contrast CT, pathology (splenomegaly, lesions), children, and slices far from the spleen's level.
- 64x64 input: thin structures and small spleens at the edge of the organ are lost; masks are resized back to the
  input's size.
- The spleen volume that `predict` reports inherits every error of the mask.
- Licences of the training data: MSD CC-BY-SA 4.0; 3D-IRCADb-01 CC BY-NC-ND 4.0 (non-commercial).
"""


def index_text(summary: dict[str, Any]) -> str:
    prov = summary["provenance"]
    rows = "\n".join(
        f"| [{m}]({m}/README.md) | {_fmt(s['augmented']['cv_dice_mean'])} | {_fmt(s['augmented']['orientation_dice_tta'][0])} | "
        f"{_fmt(s['as_given']['cv_dice_mean'])} | {_fmt(s['augmented']['orientation_spread'])} | "
        f"{_fmt(s['augmented']['orientation_spread_tta'])} | {_fmt(s['as_given']['orientation_spread'])} |"
        for m, s in summary["models"].items())
    return f"""# Release students

Students trained for users on all six real patients, with augmentation (`python -m kdlib release`, commit
`{prov.get('commit', '?')}`, {prov['date']}, {prov['cpu']}). Each folder is predict-ready (`checkpoints/best.pt`, weights
only; `preprocessing.json`), with `model.onnx` and its model card. Numbers: `release.json`.

| model | expected Dice (CV) | with `--tta` | recipe without augmentation | orientation spread | with `--tta` | without augmentation |
|---|---|---|---|---|---|---|
{rows}

No distilled student is released: that needs a teacher trained on all six patients and one per cross-validation fold
(a distilled run augments from the teacher's outputs cached for each orientation), and in the published real-mini
cross-validation no distilled student beat its KD-off control.

![Dice per orientation](orientations.png)
"""


def _orientation_figure(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(summary["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models), 3.6), squeeze=False,
                             sharey=True)
    x = np.arange(8)
    for ax, model in zip(axes[0], models):
        s = summary["models"][model]
        for key, column, label, marker in (("augmented", "orientations", "with augmentation", "o"),
                                          ("augmented", "orientations_tta", "with augmentation, --tta", "^"),
                                          ("as_given", "orientations", "without augmentation", "s")):
            folds = np.asarray([f[column] for f in s[key]["folds"]])
            ax.plot(x, folds.mean(0), marker=marker, label=f"{label} (mean of 3 folds)")
            for row in folds:
                ax.plot(x, row, marker=marker, alpha=0.25, lw=0.8, color=ax.lines[-1].get_color())
        ax.set_xticks(x, ORIENTATIONS, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{model}: test Dice by orientation (CV)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pooled test Dice")
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
