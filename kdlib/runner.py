"""Batch execution of the notebooks with papermill: `python -m kdlib run --profile NAME`.

A profile (`notebooks/profiles/NAME.yaml`) holds a `common:` block of parameters given to
every notebook that declares them, and one optional block per notebook (`02_teacher:`).
Keys are validated against each notebook's `parameters` cell, because papermill itself
only warns about a misspelled parameter and then silently runs the default.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, KdlibError
from .paths import NOTEBOOKS_DIR, PROFILES_DIR, results_dir


def list_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    return sorted(p for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))


def load_profile(name: str, profiles_dir: Path = PROFILES_DIR) -> dict[str, Any]:
    path = Path(profiles_dir) / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in Path(profiles_dir).glob("*.yaml"))
        raise ConfigError(f"unknown profile {name!r}", path, f"choose one of {', '.join(known)}")
    try:
        profile = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", path, "fix the file") from None
    if not isinstance(profile, dict):
        raise ConfigError("a profile must be a mapping", path)
    return profile


def declared_parameters(notebook: Path) -> dict[str, Any]:
    import papermill as pm

    params = pm.inspect_notebook(str(notebook))
    if not params:
        raise ConfigError("no cell tagged 'parameters'", notebook, "tag the parameters cell")
    return params


def notebook_parameters(profile: dict[str, Any], notebooks: list[Path], profile_name: str,
                        data: str | None, out: Path) -> dict[str, dict[str, Any]]:
    """Parameters for each notebook, with every profile key checked against the notebooks."""
    common = dict(profile.get("common") or {})
    common.update(profile=profile_name, out_dir=str(out))
    if data is not None:
        common["data"] = data
    declared = {nb.stem: set(declared_parameters(nb)) for nb in notebooks}
    known_sections = {"common", *declared}
    for key in profile:
        if key not in known_sections:
            raise ConfigError(f"profile section {key!r} matches no notebook", profile_name,
                              f"use one of {sorted(known_sections)}")
    all_declared = set().union(*declared.values()) if declared else set()
    unknown = set(common) - all_declared - {"profile", "out_dir", "data"}
    if unknown:
        raise ConfigError(f"parameters {sorted(unknown)} are declared by no notebook", profile_name,
                          "check their spelling against the notebooks' parameters cells")
    result = {}
    for nb in notebooks:
        own = dict(profile.get(nb.stem) or {})
        bad = set(own) - declared[nb.stem]
        if bad:
            raise ConfigError(f"{nb.stem} declares no parameters {sorted(bad)}", profile_name,
                              "check their spelling against the notebook's parameters cell")
        merged = {k: v for k, v in common.items() if k in declared[nb.stem]}
        merged.update(own)
        result[nb.stem] = merged
    return result


def _failing_cell(exc: Exception) -> str:
    exec_count = getattr(exc, "exec_count", None)
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    where = f"cell [{exec_count}]" if exec_count is not None else "a cell"
    return f"{where}: {ename}: {str(evalue).splitlines()[0] if evalue else ''}"


def run_notebooks(profile: str = "smoke", data: str | None = None, out: str | Path | None = None,
                  only: list[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR,
                  profiles_dir: Path = PROFILES_DIR) -> list[Path]:
    """Execute the notebooks in order; stop at the first failure, naming notebook and cell."""
    import papermill as pm

    out_dir = results_dir(profile, out)
    all_notebooks = notebooks = list_notebooks(notebooks_dir)
    if not notebooks:
        raise KdlibError("no notebooks found", notebooks_dir)
    if only:
        chosen = [nb for nb in notebooks if any(nb.stem.startswith(p) for p in only)]
        if not chosen:
            raise ConfigError(f"--only {','.join(only)} matches no notebook", notebooks_dir,
                              f"use prefixes of {', '.join(nb.stem for nb in notebooks)}")
        notebooks = chosen
    # parameters are checked against every notebook, so --only does not hide a typo
    params = notebook_parameters(load_profile(profile, profiles_dir), all_notebooks, profile, data,
                                 out_dir)
    executed_dir = out_dir / "notebooks"
    executed_dir.mkdir(parents=True, exist_ok=True)
    os.environ["KDLIB_BATCH"] = "1"  # inherited by the kernels: text progress bars, static widgets
    written = []
    started_all = time.time()
    for i, nb in enumerate(notebooks, 1):
        target = executed_dir / nb.name
        print(f"[{i}/{len(notebooks)}] {nb.stem} ...", flush=True)
        started = time.time()
        try:
            pm.execute_notebook(str(nb), str(target), parameters=params[nb.stem],
                                kernel_name="python3", cwd=str(nb.parent), progress_bar=False,
                                log_output=False)
        except pm.PapermillExecutionError as exc:
            raise KdlibError(f"notebook {nb.stem} failed in {_failing_cell(exc)}", target,
                             "open the executed copy to see the full traceback") from None
        print(f"[{i}/{len(notebooks)}] {nb.stem} done in {time.time() - started:.1f} s -> {target}",
              flush=True)
        written.append(target)
    print(f"all {len(notebooks)} notebooks done in {time.time() - started_all:.1f} s; outputs in {out_dir}")
    return written
