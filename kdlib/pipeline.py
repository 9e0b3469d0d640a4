"""The steps the notebooks call, so notebooks stay narrative + parameters + one call each.

Files shared between notebooks, all under the profile's output folder:
- `prepared.json` (01): per setting, the slice cache and the split files (one per fold);
- `teachers.json` (02): per setting and fold, the run folder of each trained teacher;
- `runs/` (02-04): one folder per training run (see `kdlib.train`).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import experiments
from .data import SliceCache, make_split, preprocess, save_split, write_phantom_msd
from .errors import ConfigError, KdlibError
from .io import atomic_write_json, atomic_write_text, read_json
from .paths import REPO_ROOT, check_no_stale_records, publish_path, resolve_data, results_dir
from .progress import bar
from .train import NOT_IDENTITY, RunConfig, is_finished, pick_device, train

PREPARED, TEACHERS = "prepared.json", "teachers.json"


def out_folder(profile: str, out_dir: str = "") -> Path:
    out = results_dir(profile, out_dir or None)
    out.mkdir(parents=True, exist_ok=True)
    return out


def provenance(profile: str, data: str, started: float | None = None) -> dict[str, Any]:
    """Who made a figure or table: profile, data, commit, date, wall time. `commit` is
    `provenance.commit_stamp`: the code (`provenance.CODE_PATHS`) only, so the README and
    figures a publishing run rewrites do not count; code that differed from the commit is
    listed file by file (`<commit>+uncommitted: kdlib/figures.py, ...`)."""
    from .provenance import code_state, commit_stamp

    prov = {"profile": profile, "data": data, "commit": commit_stamp(code_state()),
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


def prepared_layout(out: Path, size: int, settings: list[str], folds: int = 0,
                    fold_cases: list[dict[str, list[str]]] | None = None) -> dict[str, Any]:
    """Where `prepare` puts each setting's cache and split files (one per fold), computed
    from its parameters alone: `prepare` writes there, and `kdlib.plan` enumerates the runs
    of an invocation from it before anything is prepared."""
    layout: dict[str, Any] = {}
    for setting in settings:
        if setting not in experiments.SETTINGS:
            raise ConfigError(f"unknown setting {setting!r}", fix=f"use {experiments.SETTINGS}")
        faithful = setting == "faithful"
        named = [] if faithful else list(fold_cases or [])
        n_folds = len(named) if named else (1 if faithful or not folds else int(folds))
        layout[setting] = {"cache": str(out / f"cache-{setting}-{size}"),
                           "splits": [str(out / "splits" / f"{setting}-{size}-fold{fold}.json")
                                      for fold in range(n_folds)]}
    layout["size"] = size
    return layout


def prepare(out: Path, inputs: list[Path], size: int, hu_window: list[float], settings: list[str],
            split_seed: int = 42, folds: int = 0, test_fraction: float = 0.2,
            val_fraction: float = 0.2, student_fraction: float = 0.5,
            export_png: bool = False, fold_cases: list[dict[str, list[str]]] | None = None,
            student_by: str = "patient", val_share: float = 0.0) -> dict[str, Any]:
    """Slice cache + split(s) per setting; writes and returns `prepared.json`.

    `fold_cases` names each fold's patients, e.g. `[{"test": ["3Dircadb1.1"], "val":
    ["spleen_3"]}, ...]` (one dict per fold; "val" optional): it replaces `folds` in the
    corrected setting (the faithful split stays one split by slice). `student_by`: how the
    students' share of the training data is drawn in the corrected setting (`make_split`);
    `val_share`: the share of every training patient's slices that joins the validation set
    in the corrected setting (`make_split`)."""
    prepared: dict[str, Any] = {}
    layout = prepared_layout(out, size, settings, folds, fold_cases)
    for setting in settings:
        faithful = setting == "faithful"
        cache_dir = Path(layout[setting]["cache"])
        summary = preprocess(inputs if len(inputs) > 1 else inputs[0], cache_dir, size=size,
                             faithful=faithful, hu_window=None if faithful else tuple(hu_window),
                             export_png=export_png)
        cache = SliceCache.load(cache_dir)
        split_paths = []
        named = [] if faithful else list(fold_cases or [])
        for entry in named:
            if not isinstance(entry, dict) or not entry.get("test") or set(entry) - {"test", "val"}:
                raise ConfigError(f"fold_cases entry {entry!r} is invalid", None,
                                  'give one {"test": [...], "val": [...]} per fold')
        n_folds = len(layout[setting]["splits"])
        for fold in range(n_folds):
            split = make_split(cache, mode="faithful" if faithful else "patient", seed=split_seed,
                               test_fraction=test_fraction, val_fraction=val_fraction,
                               student_fraction=student_fraction,
                               folds=None if n_folds == 1 else n_folds,
                               fold=None if n_folds == 1 else fold,
                               test_cases=named[fold]["test"] if named else None,
                               val_cases=named[fold].get("val") if named else None,
                               student_by="patient" if faithful else student_by,
                               val_share=0.0 if faithful else val_share)
            path = Path(layout[setting]["splits"][fold])
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


def teacher_plan(prepared: dict[str, Any], setting: str, teachers: list[str],
                 faithful_teachers: list[str]) -> dict[str, list[str]]:
    """The teachers notebook 02 trains, per setting: `teachers` in `setting`, and
    `faithful_teachers` in the faithful setting too when it was prepared."""
    plan = {setting: list(teachers)}
    if faithful_teachers and "faithful" in prepared and setting != "faithful":
        plan["faithful"] = list(faithful_teachers)
    return plan


def check_folds(folds: list[int] | None, n_folds: int) -> None:
    """One clear error for a fold that 01 did not prepare (a typo would train nothing)."""
    bad = sorted(set(folds or []) - set(range(n_folds)))
    if bad:
        raise ConfigError(f"fold(s) {bad} not prepared: notebook 01 made folds 0..{n_folds - 1}", None,
                          f"use --folds with numbers from 0 to {n_folds - 1}")


def teacher_configs(prepared: dict[str, Any], teachers_by_setting: dict[str, list[str]], epochs: int,
                    batch_size: int = 8, seeds: list[int] | None = None, precision: str = "fp32",
                    folds: list[int] | None = None, **options) -> list[tuple[str, int, RunConfig]]:
    """(setting, fold, RunConfig) of every teacher `train_teachers` trains, in its order
    (only `folds`, when given and not empty)."""
    found = []
    for setting, teachers in teachers_by_setting.items():
        if setting not in prepared:
            raise ConfigError(f"setting {setting!r} was not prepared by 01_preprocess",
                              None, "add it to 01's `settings`")
        entry = prepared[setting]
        check_folds(folds, len(entry["splits"]))
        for fold, split in enumerate(entry["splits"]):
            if folds and fold not in folds:
                continue
            for model in teachers:
                for seed in seeds or [42]:
                    cfg = experiments.teacher_run_config(
                        model, entry["cache"], split, setting, epochs=epochs, batch_size=batch_size,
                        seed=seed, precision=precision, model_kwargs=model_kwargs(model, prepared["size"]),
                        name=model, **options)
                    found.append((setting, fold, cfg))
    return found


def train_teachers(out: Path, teachers_by_setting: dict[str, list[str]], epochs: int,
                   batch_size: int = 8, seeds: list[int] | None = None, precision: str = "fp32",
                   device: str | None = None, folds: list[int] | None = None, **options) -> dict[str, Any]:
    """Train every teacher for every setting and fold (only `folds`, when given and not
    empty); writes and returns `teachers.json`.

    `options` go to every teacher's RunConfig, e.g. `patience`, `min_delta` (early stopping
    on validation Dice; `epochs` is then the cap), `weights_dtype`, `keep_last`."""
    prepared = load_prepared(out)
    registry: dict[str, Any] = read_json(out / TEACHERS) if (out / TEACHERS).exists() else {}
    for setting, fold, cfg in teacher_configs(prepared, teachers_by_setting, epochs, batch_size, seeds,
                                              precision, folds=folds, **options):
        run_dir = train(cfg, out / "runs", device=device)
        registry.setdefault(setting, {}).setdefault(str(fold), {})[cfg.model] = str(run_dir)
        atomic_write_json(out / TEACHERS, registry)
    return registry


def teacher_runs(out: Path, setting: str, fold: int) -> dict[str, str]:
    path = out / TEACHERS
    if not path.exists():
        raise KdlibError("no trained teachers", path, "run notebook 02_teacher first (same profile)")
    return read_json(path).get(setting, {}).get(str(fold), {})


# --------------------------------------------------------------------------- 03/04 students


def _dedup_key(cfg: RunConfig) -> str:
    """Equal for two configurations exactly when their run folders are (within one results
    folder), without reading the cache or split files the run folder's hash reads."""
    return json.dumps({k: v for k, v in cfg.to_dict().items() if k not in NOT_IDENTITY},
                      sort_keys=True, default=str)


def row_configs(out: Path, rows: list[dict[str, Any]], setting: str, epochs: int,
                seeds: list[int], precision: str = "fp32", folds: list[int] | None = None,
                prepared: dict[str, Any] | None = None, teachers: dict[str, Any] | None = None,
                headline_seeds: list[int] | None = None, **overrides) -> list[RunConfig]:
    """One RunConfig per (thesis row, fold, seed), deduplicated by run folder.

    `headline_seeds` (when given) replace `seeds` for the rows of the thesis's headline claims
    (`claims.HEADLINE_CLAIMS`), which need more seeds to tell their small effects from training
    noise. `prepared` (as `prepared.json`) and `teachers` (as `teachers.json`) default to the
    files of `out`; `kdlib.plan` passes the ones an invocation would write."""
    from . import claims

    prepared = (prepared or load_prepared(out))[setting]
    check_folds(folds, len(prepared["splits"]))
    configs, seen = [], set()
    for fold, split in enumerate(prepared["splits"]):
        if folds is not None and fold not in folds:
            continue
        fold_teachers = (teachers.get(setting, {}).get(str(fold), {}) if teachers is not None
                         else teacher_runs(out, setting, fold))
        for row in rows:
            if row.get("teacher") and row["teacher"] not in fold_teachers:
                continue  # teacher not trained in this profile: the row stays empty in tables
            cfg = experiments.row_config(row, prepared["cache"], split, setting, fold_teachers,
                                         epochs=epochs, precision=precision, **overrides)
            if cfg is None:
                continue
            for seed in headline_seeds if headline_seeds and claims.is_headline_row(row) else seeds:
                seeded = replace(cfg, seed=seed)
                key = _dedup_key(seeded)
                if key not in seen:
                    seen.add(key)
                    configs.append(seeded)
    return configs


def student_configs(out: Path, setting: str, epochs: int, seeds: list[int], precision: str = "fp32",
                    prepared: dict[str, Any] | None = None, teachers: dict[str, Any] | None = None,
                    headline_seeds: list[int] | None = None, folds: list[int] | None = None,
                    **overrides) -> list[RunConfig]:
    """Notebook 03's runs: Table 4.2's rows and our KD-off controls, every fold (or `folds`)
    and seed (`headline_seeds` for the rows of claims 1 and 8)."""
    rows = experiments.grid_rows(["4.2"])  # the thesis's Table 4.2 rows + our KD-off controls
    return row_configs(out, rows, setting, epochs=epochs, seeds=seeds, precision=precision,
                       folds=list(folds) if folds else None, prepared=prepared, teachers=teachers,
                       headline_seeds=headline_seeds, **overrides)


GRIDS = ("all", "claims", "none")


def ablation_configs(out: Path, setting: str, grid: str, epochs: int, seeds: list[int],
                     precision: str = "fp32", grid_folds: list[int] | None = None,
                     faithful_grid: bool = True, prepared: dict[str, Any] | None = None,
                     teachers: dict[str, Any] | None = None, headline_seeds: list[int] | None = None,
                     folds: list[int] | None = None, **overrides) -> list[RunConfig]:
    """Notebook 04's runs: the rows of Tables 4.3-4.11 (`grid`: all | claims, only the rows
    some claim compares | none) on `grid_folds` ([] or None: every fold), and with
    `faithful_grid` the T1->S1 grid (Tables 4.3, 4.6, 4.7 and 4.2's S1 rows) in the faithful
    setting when it was prepared."""
    from . import claims

    if grid not in GRIDS:
        raise ConfigError(f"grid={grid!r} is not one of {GRIDS}", None, "use 'all', 'claims' or 'none'")
    prepared = prepared or load_prepared(out)
    rows = experiments.thesis_rows(experiments.ABLATION_TABLES)
    rows = claims.rows_claims_need(rows) if grid == "claims" else [] if grid == "none" else rows
    chosen = [f for f in grid_folds if not folds or f in folds] if grid_folds else (list(folds) if folds else None)
    configs = row_configs(out, rows, setting, epochs=epochs, seeds=seeds, precision=precision,
                          folds=chosen, prepared=prepared, teachers=teachers, headline_seeds=headline_seeds,
                          **overrides)
    if faithful_grid and "faithful" in prepared and setting != "faithful":
        faithful_rows = [r for r in experiments.thesis_rows(experiments.FAITHFUL_GRID_TABLES + ["4.2"])
                         if r["student"] == "S1" and r["teacher"] in ("T1", "")]
        configs += row_configs(out, faithful_rows, "faithful", epochs=epochs, seeds=seeds,
                               precision=precision, folds=list(folds) if folds else None, prepared=prepared,
                               teachers=teachers, **overrides)
    return configs


def training_order(configs: list[RunConfig]) -> list[RunConfig]:
    """The order `train_all` trains in: configurations that share a teacher run and need the
    same teacher taps are adjacent, so each set of the teacher's outputs is computed once."""
    from .train import kd_taps_of

    return sorted(configs, key=lambda c: (c.teacher_run or "", c.split, c.train_subset,
                                          kd_taps_of(c), c.model))


def train_all(out: Path, configs: list[RunConfig], device: str | None = None,
              workers: int = 1) -> list[Path]:
    """Train a list of configurations in order (finished ones are skipped instantly).

    Configurations that share a teacher run are adjacent, so the teacher's outputs on the
    student training set are computed once for the whole group (once per worker).

    `workers` > 1 trains that many runs at once on the CPU, each in its own process with an
    equal share of the torch threads: on a 2-core machine two 1-thread processes train the
    tiny students about 1.2x faster than one 2-thread process (benchmarks/RESULTS.md,
    section 11), because a 57k-parameter network at 64x64 cannot keep two threads busy. A
    run's numbers then come from a 1-thread process, which rounds differently from a 2-thread
    one; each run stays deterministic for its seed and thread count (recorded in its record).
    On CUDA the runs go one after another (one device).
    """
    ordered = training_order(configs)
    todo = [c for c in ordered if not is_finished(c.run_dir(out / "runs"))]
    print(f"{len(ordered)} runs, {len(ordered) - len(todo)} already finished, {len(todo)} to train"
          + (f", {workers} at a time" if workers > 1 and len(todo) > 1 else ""))
    if workers > 1 and len(todo) > 1 and pick_device(device).type != "cuda":
        _train_in_processes(out, todo, device, workers)
        return [c.run_dir(out / "runs") for c in ordered]
    # One bar over the runs, not one per run: a grid's worth of widget bars floods the
    # kernel's output channel (nbval then lost the cell's final message) and the notebook.
    # Each run still prints one line with its validation curve when it finishes.
    done = []
    for cfg in bar(ordered, desc="runs", total=len(ordered)):
        done.append(train(cfg, out / "runs", device=device, progress=False))
    return done


def _finished_line(cfg: RunConfig, run_dir: Path) -> str:
    """A worker's run as the parent prints it: the run's own line, plus its seconds and threads."""
    from .train import finished_line, read_metrics

    m = read_metrics(run_dir) or {}
    return f"{finished_line(cfg, m)}, {m.get('train_seconds', 0):.0f} s on {m.get('train_threads', '?')} thread(s)"


def _worker_start(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _train_in_processes(out: Path, todo: list[RunConfig], device: str | None, workers: int) -> None:
    """Train `todo` in `workers` processes; the first failure is raised once the runs already
    started have ended (each holds its run folder's lock and resumes where it stopped)."""
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    import torch

    threads = max(1, torch.get_num_threads() // workers)
    # spawn, not fork: a forked child would inherit the parent's OpenMP thread pool state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_start,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(train, cfg, str(out / "runs"), device, None, False): cfg for cfg in todo}
        progress = bar(total=len(futures), desc=f"runs ({workers} processes)")
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                progress.update(len(finished))
                failed = [f for f in finished if f.exception() is not None]
                for f in finished:  # the worker's own line goes to the kernel's log, not here
                    if f.exception() is None:
                        print(_finished_line(futures[f], Path(f.result())), flush=True)
                if failed:
                    for f in pending:
                        f.cancel()
                    wait(pending)
                    cfg = futures[failed[0]]
                    exc = failed[0].exception()
                    if isinstance(exc, KdlibError):
                        raise exc
                    raise KdlibError(f"run {cfg.name} (seed {cfg.seed}) failed in a worker process: {exc}",
                                     cfg.run_dir(out / "runs"),
                                     "run the same command again: finished runs are kept") from exc
        finally:
            progress.close()


def publish_folder(out: Path, publish_dir: str = "") -> Path:
    """Where a notebook writes its tables and figures: `<out>` or a repo folder (real-mini
    commits its results under figures/real-mini)."""
    folder = publish_path(publish_dir) or out
    (folder / "tables").mkdir(parents=True, exist_ok=True)
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    return folder


RECORD_FILES = ("config.json", "history.csv", "metrics.json")  # never checkpoints
RECORD_PATHS = ("cache", "split", "teacher_run")  # the fields of config.json that name files
DATA_FACTS = "DATA.json"


def portable_config(config: dict[str, Any], results: Path) -> dict[str, Any]:
    """config.json as it is published: the files it names (cache, split, teacher run) relative
    to the results folder that held the run (`cache-corrected-64`, `splits/corrected-64-fold0.json`,
    `runs/t1-s42-<hash>`), so that a publication names no folder of the machine that made it; a
    path outside that folder keeps its name only. Nothing is lost: a run's identity hashes the
    content of its cache and split, never their paths (`RunConfig.identity`), tables key folds by
    the split's name, and a moved teacher is found beside its student (`records.describe_runs`)."""
    root = Path(results).resolve()
    portable = dict(config)
    for key in RECORD_PATHS:
        value = portable.get(key)
        if not value or not Path(str(value)).is_absolute():
            continue
        path = Path(str(value)).resolve()
        portable[key] = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
    return portable


def portable_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """A cache manifest as a published model carries it (`preprocessing.json`): each input
    source by its folder's name (`ircadb`, `thesis_slices`) instead of the absolute path it was
    read from; its format, intensity, cases and file checksums are kept."""
    inputs = [dict(entry, path=Path(str(entry["path"])).name) if isinstance(entry, dict) and entry.get("path")
              else entry for entry in manifest.get("inputs", [])]
    return {**manifest, "inputs": inputs} if "inputs" in manifest else dict(manifest)


def _published_bytes(name: str, path: Path, results: Path) -> bytes:
    """A record file's bytes as published: config.json made portable, anything else as is."""
    from .io import json_text

    if name == "config.json":
        return json_text(portable_config(read_json(path), results)).encode()
    if name == PREPROCESSING:
        return json_text(portable_manifest(read_json(path))).encode()
    return path.read_bytes()


def data_facts(out: Path) -> dict[str, Any]:
    """What the profile's data was, per setting, from `prepared.json` and each cache's
    manifest: resolution, HU window (None when the sources were 8-bit slices only),
    intensity mapping, patients and slices in the cache, folds, synthetic."""
    prepared = load_prepared(out)
    facts: dict[str, Any] = {}
    for setting, entry in prepared.items():
        if not isinstance(entry, dict) or "cache" not in entry:
            continue
        manifest_path = Path(entry["cache"]) / "manifest.json"
        manifest = read_json(manifest_path) if manifest_path.exists() else {}
        params = manifest.get("params", {})
        summary = entry.get("summary", {})
        facts[setting] = {"size": params.get("size", prepared.get("size")), "hu_window": params.get("hu_window"),
                          "hu_mapping": params.get("hu_mapping") or params.get("slice_intensity") or "",
                          "cases": summary.get("cases"), "slices": summary.get("slices"),
                          "folds": len(entry.get("splits", [])), "synthetic": bool(entry.get("synthetic"))}
    return facts


def publish_runs(out: Path, publish: Path) -> Path:
    """Copy every finished run's small records (config.json, history.csv, metrics.json;
    never checkpoints) to `<publish>/runs/<run folder>/`, with `DATA.json` (`data_facts`),
    so that `kdlib.report` can regenerate every table and claim from them alone. config.json
    is published with its paths relative to `out` (`portable_config`)."""
    from .train import load_runs

    check_no_stale_records(out, publish)
    target = publish / "runs"
    for run in load_runs(out / "runs"):
        source = Path(run["run_dir"])
        publish_record_files(source, target / source.name, out)
    atomic_write_json(target / DATA_FACTS, data_facts(out))
    return target


def publish_record_files(source: Path, dest: Path, results: Path) -> Path:
    """One run's small records (RECORD_FILES) into `dest`, config.json made portable against
    the results folder `results` (`portable_config`); a file already there with the same bytes is
    kept, so publishing again rewrites nothing."""
    from .io import atomic_write_bytes

    for name in RECORD_FILES:
        if (source / name).exists():
            data = _published_bytes(name, source / name, results)
            if not (dest / name).exists() or (dest / name).read_bytes() != data:
                atomic_write_bytes(dest / name, data)
    return dest


RECORD_LIMIT = 64 * 2**20  # bytes per record file: a run's records are kilobytes; anything larger is refused


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether a run folder holds its kept weights (a run reused as records only does not: the
    figures that need its masks are drawn by the invocation that trained it)."""
    return (Path(run_dir) / "checkpoints" / "best.pt").is_file()


def reuse_source(source: str | Path) -> Path:
    """The runs folder to reuse, or one clear error (checked again before any training)."""
    source = Path(source)
    if not source.is_dir():
        raise KdlibError("no runs folder to reuse", source,
                         "give the first invocation's runs folder (e.g. figures/real-mini/runs of its publication)")
    return source


def reuse_records(source: str | Path, out: Path) -> dict[str, Any]:
    """Copy the finished run records of another invocation of the same profile at the same
    commit (a runs folder: e.g. the published `runs/` of the first of two invocations that
    split a profile's folds) into `<out>/runs`, so that this invocation's tables and claims
    count them and its notebooks skip them as finished. Records only (config.json,
    history.csv, metrics.json): a reused run has no checkpoint, so figures that need one are
    drawn by the invocation that trained it.

    A run folder already in `<out>/runs` is never overwritten; a folder whose records are
    incomplete, not regular files or larger than RECORD_LIMIT is refused with one error. The
    records must come from the data this folder prepared (same `DATA.json` facts, when both
    have them), since tables would otherwise mix two data sets. Returns what was reused: the
    source, the runs copied and kept, and the commits they were trained at."""
    from .io import atomic_write_bytes
    from .train import RunConfig, read_metrics

    source = reuse_source(source)
    facts = source / DATA_FACTS
    if facts.exists() and (out / PREPARED).exists():
        theirs, ours = read_json(facts), data_facts(out)
        if theirs != ours:
            raise KdlibError("the runs to reuse were trained on other data than this folder prepared", facts,
                             "reuse records of the same profile, data and commit only")
    target = out / "runs"
    copied, kept, commits = [], [], set()
    for folder in sorted(p for p in source.iterdir() if p.is_dir() and not p.is_symlink()):
        files = {name: folder / name for name in RECORD_FILES}
        bad = [n for n, f in files.items() if f.exists() and (f.is_symlink() or not f.is_file()
                                                               or f.stat().st_size > RECORD_LIMIT)]
        if bad or read_metrics(folder) is None or not files["config.json"].is_file():
            raise KdlibError(f"run records that cannot be reused ({', '.join(bad) or 'incomplete or invalid'})",
                             folder, "reuse only the finished records that `kdlib run` published")
        config = read_json(files["config.json"])
        RunConfig.from_dict(config, where=files["config.json"])  # a valid configuration, or one clear error
        commits.add(str((config.get("provenance") or {}).get("commit", "unknown")))
        if (target / folder.name).exists():
            kept.append(folder.name)
            continue
        staging = target / f".{folder.name}.reusing"
        shutil.rmtree(staging, ignore_errors=True)
        for name, path in files.items():
            if path.exists():
                atomic_write_bytes(staging / name, path.read_bytes())
        staging.rename(target / folder.name)  # the whole folder appears at once, or not at all
        copied.append(folder.name)
    return {"source": str(source), "copied": len(copied), "already_here": len(kept),
            "trained_at": sorted(commits)}


def adopt_publication(first: str | Path, publish: Path) -> list[str]:
    """Complete the second invocation's publication with what only the first could make: its
    figures that need checkpoints (fold 0's qualitative panels), its published students, and
    its provenance records (`invocation-folds-*.json`, `PROVENANCE-folds-*.md`). `first` is
    the first invocation's publication folder (the parent of the runs folder reused). Files
    already in `publish` (tables, SUMMARY.md and every figure the second invocation drew
    from all records) are never overwritten. Returns the files copied, relative to `publish`."""
    from .io import atomic_write_bytes

    first, copied = Path(first), []
    wanted = [*sorted((first / "figures").glob("*.png")), *sorted(first.glob("invocation-folds-*.json")),
              *sorted(first.glob("PROVENANCE-folds-*.md")),
              *sorted(p for p in (first / "models").rglob("*") if p.is_file())]
    for path in wanted:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > RECORD_LIMIT:
            continue
        relative = path.relative_to(first)
        if not (publish / relative).exists():
            atomic_write_bytes(publish / relative, path.read_bytes())
            copied.append(str(relative))
    return copied


PREPROCESSING = "preprocessing.json"  # a published model's copy of its cache manifest
STUDENT_ROLES = ("baseline", "control", "kd")


def publish_models(out: Path, publish: Path, roles: tuple[str, ...] = STUDENT_ROLES) -> Path:
    """Copy the first seed's students of every fold, ready for `kdlib predict`, to
    `<publish>/models/<run folder>/`: their records, `checkpoints/best.pt` (weights only,
    loadable with weights_only=True) and `preprocessing.json` (the cache manifest they were
    trained on, which `predict` reads when the cache itself is absent). Students are small
    (S1 about 0.12 MB, S2 about 0.46 MB in fp16); teachers are never published. Runs reused
    as records only (`reuse_records`) have no weights: the invocation that trained them
    published them."""
    from .train import load_runs

    target = publish / "models"
    runs = [r for r in load_runs(out / "runs") if r["config"].get("role") in roles and has_checkpoint(r["run_dir"])]
    first_seed = {}
    for run in runs:
        key = (run["config"]["name"], run["config"]["split"], run["config"]["setting"])
        first_seed[key] = min(first_seed.get(key, run["config"]["seed"]), run["config"]["seed"])
    for run in runs:
        cfg = run["config"]
        if cfg["seed"] != first_seed[(cfg["name"], cfg["split"], cfg["setting"])]:
            continue
        source = Path(run["run_dir"])
        copy_model(source, target / source.name)
    return target


def copy_model(source: Path, dest: Path) -> Path:
    """A run's records, `checkpoints/best.pt` and its cache manifest as `preprocessing.json`
    under `dest`, ready for `kdlib predict`; a file already there with the same bytes is kept.
    config.json and preprocessing.json name no folder of this machine (`portable_config`,
    relative to the results folder that holds the run's `runs/`; `portable_manifest`)."""
    from .io import atomic_write_bytes

    cfg = read_json(source / "config.json")
    files = {name: source / name for name in RECORD_FILES}
    files["checkpoints/best.pt"] = source / "checkpoints" / "best.pt"
    files[PREPROCESSING] = Path(cfg["cache"]) / "manifest.json"
    for name, path in files.items():
        data = _published_bytes(name, path, source.parent.parent)
        if not (dest / name).exists() or (dest / name).read_bytes() != data:
            atomic_write_bytes(dest / name, data)
    return dest


README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"
THESIS_SCALE = {"patients": 41, "size": 256, "student_epochs": 120, "teacher_epochs": 200}

FRAMING_DEFINITIONS = (
    "Two framings, reported side by side and never mixed. **population**: would the difference hold for new "
    "patients from the same source? The test patient is the unit; folds (which patients trained the models), "
    "patients and seeds are all random, so the interval is a t interval over the fold means, and it needs at "
    "least 3 folds. **these-patients**: on these test patients, held fixed, is the difference larger than "
    "seed-to-seed training noise? Seeds are the random unit; the answer is about these patients only. The "
    "thesis's own evidence, one run per configuration on one fixed split, is the these-patients question with "
    "one seed: it had no estimate of its own noise.")

VERDICT_DEFINITIONS = (
    "Verdicts, per framing, with Holm's correction over every claim row of that framing (`p_holm`, family-wise "
    "alpha 0.05; each interval is drawn at its row's Holm level, `ci_level`): **supported**: p_holm < 0.05 and "
    "the interval lies entirely on the side the thesis claims; **contradicted**: p_holm < 0.05 and it lies on "
    "the other side; **inconclusive**: otherwise (`mde` says what effect this design could detect); **not "
    "testable here**: runs are missing, run-to-run variation is unmeasured, too few folds (population) or seeds, "
    "or a run or its teacher had not converged; **not run in this profile**: the profile did not train those "
    "runs on purpose. Claims of the form \"no better than\" test the stated margin (`criterion`), and their p "
    "tests the margin. `claim_verdict` combines the rows the thesis's sentence asserts together (role "
    "`claim`); rows marked `extension (ours)` are our questions, left out of it. `verdict_last_epoch`: the "
    "same test on every run's last epoch instead of its kept checkpoint. `consistent_with_thesis`: whether "
    "the thesis's own effect lies inside our interval.")


def _kept_rule(runs: list[dict[str, Any]]) -> str:
    """What picked the kept checkpoints, from the runs' configs (older records: the loss)."""
    chosen = {r["config"].get("select_on", "loss") for r in runs}
    return {frozenset({"loss"}): "validation loss", frozenset({"dice"}): "validation Dice"}.get(
        frozenset(chosen), "validation loss or Dice (see each run's config.json)")


def _epochs(runs: list[dict[str, Any]], roles: tuple[str, ...]) -> tuple[str, int]:
    """How long the runs of `roles` trained, in words, and their largest cap (0: none)."""
    chosen = [r for r in runs if r["config"].get("role") in roles and r["config"].get("epochs")]
    if not chosen:
        return "–", 0
    caps = sorted({int(r["config"]["epochs"]) for r in chosen})
    ran = [r["metrics"].get("epochs_run") for r in chosen]
    cap_text = "/".join(map(str, caps))
    if any(r["config"].get("patience") for r in chosen) and all(isinstance(e, int) for e in ran):
        return f"{min(ran)}-{max(ran)} epochs (early stopping on validation Dice, cap {cap_text})", caps[-1]
    return f"{cap_text} epochs", caps[-1]


def describe_budget(runs: list[dict[str, Any]], facts: dict[str, Any] | None, synthetic: bool) -> str:
    """The data and training budget behind a summary, from the runs' own records (and the
    profile's `data_facts` when available): never a sentence written once for all profiles."""
    facts = facts or {}
    patients = sorted({c for r in runs for c in ((r["metrics"].get("per_volume") or {}).get("cases") or {})})
    folds = len({r["config"].get("split") for r in runs if r["config"].get("role") != "teacher"})
    seeds = len({r["config"].get("seed") for r in runs if r["config"].get("role") != "teacher"})
    size = facts.get("size")
    window = facts.get("hu_window")
    window_text = (f"HU window [{window[0]:g}, {window[1]:g}]" if window else
                   "no HU window recorded (8-bit slices, or data facts not published)")
    if facts.get("hu_mapping"):
        window_text += f" ({facts['hu_mapping']})"
    (student_epochs, student_cap), (teacher_epochs, _) = (_epochs(runs, ("baseline", "control", "kd")),
                                                          _epochs(runs, ("teacher",)))
    patients_text = f"{len(patients)} test patients" + (
        f" of {facts['cases']} in the cache" if facts.get("cases") else "") + (
        f" ({facts['slices']} slices)" if facts.get("slices") else "") + (f" at {size}x{size}" if size else "")
    parts = [("Generated (SYNTHETIC) data" if synthetic else "Real CT") + f": {patients_text};", f"{window_text};",
             f"students trained {student_epochs}, teachers {teacher_epochs};",
             f"{folds} fold(s) x {seeds} seed(s)."]
    text = " ".join(p for p in parts if p)
    smaller = [what for what, ours, thesis in (
        ("patients", len(patients) if not facts.get("cases") else facts["cases"], THESIS_SCALE["patients"]),
        ("resolution", size or 0, THESIS_SCALE["size"]),
        ("student epochs", student_cap, THESIS_SCALE["student_epochs"])) if ours < thesis]
    if synthetic:
        return text + " Not comparable to the thesis."
    if smaller:
        return (text + f" Smaller than the thesis's setup (MSD Task09: 41 patients, 256x256, 120 student / 200 "
                f"teacher epochs) in {', '.join(smaller)}: absolute numbers are not comparable to the thesis's.")
    return text + " At the thesis's scale."


def plateau_sentence(runs: list[dict[str, Any]]) -> str:
    """Which runs had not settled on the criterion that kept their checkpoint
    (`records.reached_plateau`), counted per configuration; "" when no run had a stopping rule."""
    from .records import reached_plateau

    judged = [(r["config"].get("name", "?"), reached_plateau(r)) for r in runs]
    judged = [(name, ok) for name, ok in judged if ok is not None]
    if not judged:
        return ""
    names = sorted({name for name, _ in judged})
    open_ = [(n, sum(ok is False for m, ok in judged if m == n), sum(m == n for m, _ in judged)) for n in names]
    open_ = [(n, bad, total) for n, bad, total in open_ if bad]
    if not open_:
        return ("Every run ended on a plateau (its kept checkpoint at least `patience` epochs before its last "
                "epoch).")
    listed = "; ".join(f"{n}: {bad} of {total}" for n, bad, total in open_)
    return (f"Runs that ended within `patience` epochs of their kept checkpoint, so still improving on the "
            f"criterion that kept it (not converged; a claim resting on them, or on students of such a teacher, "
            f"reads \"not testable here\"): {listed}.")


def summary_text(runs: list[dict[str, Any]], claims_df, prov: dict[str, Any], setting: str, synthetic: bool,
                 facts: dict[str, Any] | None = None) -> str:
    """SUMMARY.md's text: budget, headline table (Table 4.2 with our controls), claim 1
    against the baseline and against the control, and every claim's verdict."""
    from . import tables

    runs = [r for r in runs if r["config"]["setting"] == setting]
    headline = tables.headline_table(runs)
    shown = headline[["row", "setting", "n", "patients", "ours_dice", "ours_dice_text", "thesis_dice"]].rename(
        columns={"n": "runs (folds x seeds)", "ours_dice": "ours: pooled Dice",
                 "ours_dice_text": "ours: mean per-patient Dice (95% CI, new patients)", "thesis_dice": "thesis Dice"})
    claims_df = claims_df[claims_df["setting"] == setting] if len(claims_df) else claims_df
    columns = ["claim_id", "comparison", "role", "framing", "verdict", "verdict_last_epoch", "claim_verdict",
               "effect", "ci_low", "ci_high", "ci_level", "p_holm", "thesis_effect", "consistent_with_thesis",
               "criterion", "mde", "seeds_per_fold", "n_patients"]
    verdicts = claims_df[[c for c in columns if c in claims_df.columns]]
    first = verdicts[verdicts["claim_id"].isin(["1", "8"])] if len(verdicts) else verdicts
    stamp = ", ".join(f"{k}: {v}" for k, v in prov.items())
    return "\n".join([
        f"### Results of the `{prov.get('profile')}` profile ({setting} setting)",
        "",
        describe_budget(runs, (facts or {}).get(setting), synthetic),
        "",
        plateau_sentence(runs),
        "",
        f"Provenance: {stamp}.",
        "",
        f"Teachers, one row per fold (test Dice of the kept checkpoint, selected on {_kept_rule(runs)}, "
        "and of the last epoch):",
        "",
        tables.to_markdown(tables.teachers_by_fold(runs)),
        "Headline (Table 4.2; the control rows are ours, not the thesis's: each student trained with its "
        "distilled students' recipe and no teacher):",
        "",
        tables.to_markdown(shown),
        FRAMING_DEFINITIONS,
        "",
        "Does distillation improve the students (claim 1), and S1 more than S2 (claim 8)? Against the thesis's "
        "baselines (as the thesis) and, as extensions of ours, against the KD-off controls (distillation itself), "
        "in both framings, with the kept checkpoint and with the last epoch (`figures/headline_"
        f"{setting}_claim*.png` draw each seed's paired difference per fold beside both intervals):",
        "",
        tables.to_markdown(first),
        *headline_noise_text(runs, setting),
        "Claims of the thesis, one verdict per comparison and framing (unit: the test patient):",
        "",
        tables.to_markdown(verdicts),
        VERDICT_DEFINITIONS,
        "",
    ])


def headline_noise_text(runs: list[dict[str, Any]], setting: str) -> list[str]:
    """What the headline's data can and cannot say: the seed-to-seed SD of each Table 4.2
    configuration and of each headline contrast (`claims.seed_sd`), and the seeds per fold
    the power table says each headline row needs; in plain words, with the framing each
    number belongs to."""
    import pandas as pd

    from . import claims, tables

    summary = claims.configuration_summary(runs)
    rows42 = experiments.grid_rows(["4.2"])
    keys42 = {claims.label(claims.spec_of_row(r)) for r in rows42 if experiments.row_role(r) != "teacher"}
    configs = summary[summary["label"].isin(keys42)][["label", "n_runs", "n_seeds", "n_folds", "seed_sd"]]
    points = claims.headline_points(runs, setting)
    contrasts = (points.groupby(["claim_id", "comparison", "role"], sort=False)["seed_sd"].first().reset_index()
                 if len(points) else pd.DataFrame(columns=["claim_id", "comparison", "role", "seed_sd"]))
    power = claims.power_table(runs)
    power = power[(power["claim_id"].isin(claims.HEADLINE_CLAIMS)) & (power["setting"] == setting)]
    power = power[["claim_id", "comparison", "role", "framing", "thesis_effect", "seeds_per_fold",
                   "seeds_per_fold_needed", "patients_needed", "note"]]
    return [
        "Seed-to-seed noise (within a fold: the SD of one configuration's per-run mean per-patient Dice, or of a "
        "contrast's per-seed paired difference, over the seeds of one fold, averaged over folds as variances). "
        "It is what the these-patients interval weighs an effect against:",
        "",
        tables.to_markdown(configs.rename(columns={"label": "Table 4.2 configuration", "n_runs": "runs",
                                                   "n_seeds": "seeds", "n_folds": "folds",
                                                   "seed_sd": "seed SD of test Dice"})),
        tables.to_markdown(contrasts.rename(columns={"seed_sd": "seed SD of the paired difference"})),
        "What these runs can and cannot say: the **these-patients** verdicts speak about these test patients "
        "only, against training noise; the **population** verdicts ask about new patients, and that interval's "
        "width is set by the number of folds and test patients, which no number of seeds can replace. Seeds per fold (and patients, "
        "for population) that 80% power at the thesis's own effect would need, from the variance components of "
        "these runs (the power table):",
        "",
        tables.to_markdown(power),
    ]


def write_summary(publish: Path, runs: list[dict[str, Any]], claims_df, prov: dict[str, Any],
                  setting: str, synthetic: bool, readme: bool = False,
                  facts: dict[str, Any] | None = None) -> Path:
    """`SUMMARY.md` beside the tables (`summary_text`); with `readme`, the same text replaces
    the README's results section, so the numbers a user reads there come from the pipeline,
    never from hand edits."""
    text = summary_text(runs, claims_df, prov, setting, synthetic, facts)
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
