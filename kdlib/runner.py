"""Batch execution of the notebooks with papermill: `python -m kdlib run --profile NAME`.

A profile (`notebooks/profiles/NAME.yaml`) holds a `common:` block of parameters given to
every notebook that declares them, and one optional block per notebook (`02_teacher:`).
Keys are validated against each notebook's `parameters` cell, because papermill itself
only warns about a misspelled parameter and then silently runs the default.

A run holds its output folder's lock (a second run on the same folder fails at once, naming
the first one's PID), starts its kernels with thread settings that fit the free cores
(`kdlib.threads`), and moves each executed notebook into place only when it is complete.
A run of all notebooks ends by writing `invocation.json` (commit, wall times, threads, the
machine's load before and after) into the output folder and, for a profile that publishes
(`publish_dir`), `PROVENANCE.md` beside the published results: what a reader needs to trust
that one invocation made them.
"""
from __future__ import annotations

import ast
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from . import threads
from .errors import ConfigError, KdlibError
from .io import atomic_write_json, atomic_write_text
from .locks import folder_lock
from .paths import NOTEBOOKS_DIR, PROFILES_DIR, check_no_stale_records, publish_path, results_dir
from .provenance import code_state, cpu_name

PARTIAL_SUFFIX = ".partial.ipynb"
KERNEL_START_TIMEOUT_S = 180  # papermill's 60 s is too short for a kernel start on a busy machine


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


def notebook_defaults(notebook: Path) -> dict[str, Any]:
    """The `parameters` cell's names and default values, read with `ast` from the .ipynb
    (no papermill, no kernel): what a notebook runs with when the profile says nothing."""
    try:
        nb = json.loads(Path(notebook).read_text())
    except (OSError, ValueError) as exc:
        raise KdlibError(f"cannot read the notebook ({exc})", notebook, "restore it from git") from None
    cells = [c for c in nb.get("cells", []) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise ConfigError("no cell tagged 'parameters'", notebook, "tag the parameters cell")
    source = "".join(cells[0]["source"]) if isinstance(cells[0]["source"], list) else cells[0]["source"]
    values: dict[str, Any] = {}
    for node in ast.parse(source).body:
        target = node.target if isinstance(node, ast.AnnAssign) else \
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and node.value is not None:
            try:
                values[target.id] = ast.literal_eval(node.value)
            except ValueError:
                values[target.id] = None
    return values


def declared_parameters(notebook: Path) -> dict[str, Any]:
    try:
        import papermill as pm
    except ImportError:  # a GPU machine without papermill can still plan: read the cell itself
        return notebook_defaults(notebook)
    params = pm.inspect_notebook(str(notebook))
    if not params:
        raise ConfigError("no cell tagged 'parameters'", notebook, "tag the parameters cell")
    return params


def notebook_parameters(profile: dict[str, Any], notebooks: list[Path], profile_name: str,
                        data: str | None, out: Path, folds: list[int] | None = None) -> dict[str, dict[str, Any]]:
    """Parameters for each notebook, with every profile key checked against the notebooks.
    `folds` (`--folds`): the folds this invocation trains (`train_folds` of 02-04)."""
    common = dict(profile.get("common") or {})
    common.update(profile=profile_name, out_dir=str(out))
    if data is not None:
        common["data"] = data
    if folds:
        common["train_folds"] = sorted(set(int(f) for f in folds))
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


# what a notebook would otherwise take from its defaults, which are the smoke profile's
# (2 epochs, one seed, no early stopping, every fold, "auto" precision): a profile that
# publishes results must set each one that a notebook declares (01: `folds` or `fold_cases`)
AT_SCALE_PARAMETERS = ("epochs", "seeds", "patience", "min_epochs", "grid", "grid_folds", "precision")
FOLD_PARAMETERS = ("folds", "fold_cases")


def defaulted_at_scale(params: dict[str, dict[str, Any]], notebooks: list[Path]) -> list[str]:
    """`notebook.parameter` for every at-scale parameter a notebook declares and the profile
    leaves to the notebook's default (`params` as `notebook_parameters` returns them)."""
    gaps = []
    for nb in notebooks:
        declared = set(declared_parameters(nb))
        given = params.get(nb.stem, {})
        gaps += [f"{nb.stem}.{name}" for name in AT_SCALE_PARAMETERS if name in declared and name not in given]
        folds = [name for name in FOLD_PARAMETERS if name in declared]
        if folds and not any(name in given for name in folds):
            gaps.append(f"{nb.stem}.{'|'.join(folds)}")
    return gaps


def _failing_cell(exc: Exception) -> str:
    exec_count = getattr(exc, "exec_count", None)
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    where = f"cell [{exec_count}]" if exec_count is not None else "a cell"
    return f"{where}: {ename}: {str(evalue).splitlines()[0] if evalue else ''}"


def _kernel_manager_config():
    """Kernel settings for papermill: CurveZMQ transport encryption where available.

    ipykernel warns "Kernel is running over TCP without encryption" once per kernel, i.e. in
    every notebook of a batch log. Our kernels listen on loopback only, so only someone on
    this machine could read the traffic (code, outputs); provisioning CurveZMQ keys (the remedy
    the warning itself names, supported by ipykernel's kernelspec) removes even that, and with
    it the warning: a fix, not a filter. Where pyzmq lacks Curve support (libzmq built without
    libsodium) the plain transport and its warning stay, because the warning is then true.
    """
    import zmq
    from traitlets.config import Config

    if not zmq.has("curve"):
        return None
    return Config({"KernelManager": {"transport_encryption": "auto"}})


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the kernels we start (they inherit os.environ), and
    restore the previous values afterwards so that a caller's process is left as it was."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _partial_path(target: Path) -> Path:
    # papermill saves after every cell; it writes here, and only a finished (or a failed but
    # complete) notebook is moved onto `target`. The name must end in .ipynb for papermill.
    return target.with_name(f".{target.stem}{PARTIAL_SUFFIX}")


def _publish(partial: Path, target: Path) -> None:
    """Move papermill's output onto `target`, recording `target` as the output path."""
    import nbformat

    nb = nbformat.read(partial, as_version=4)
    nb.metadata.setdefault("papermill", {})["output_path"] = str(target)
    atomic_write_text(target, nbformat.writes(nb))
    partial.unlink(missing_ok=True)


def execute_notebook(notebook: Path, target: Path, parameters: dict[str, Any]) -> None:
    """Run one notebook into `target`, atomically: an interrupted run leaves no half-written
    executed notebook (a failed cell still gives a complete copy showing the traceback)."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    partial = _partial_path(target)
    config = _kernel_manager_config()
    try:
        pm.execute_notebook(str(notebook), str(partial), parameters=parameters,
                            kernel_name="python3", cwd=str(notebook.parent), progress_bar=False,
                            log_output=False, start_timeout=KERNEL_START_TIMEOUT_S,
                            # a finished kernel has nothing left to say; a graceful shutdown of a
                            # kernel interrupted mid-cell prints a ZMQ traceback into the log
                            shutdown_kernel="immediate",
                            **({"config": config} if config is not None else {}))
    except pm.PapermillExecutionError as exc:
        if exc.ename == "KeyboardInterrupt":  # the kernel was sent SIGINT: an interruption
            raise KeyboardInterrupt from None
        _publish(partial, target)
        raise KdlibError(f"notebook {notebook.stem} failed in {_failing_cell(exc)}", target,
                         "open the executed copy to see the full traceback") from None
    except DeadKernelError:
        raise KdlibError(f"the kernel running {notebook.stem} died (killed, or out of memory?)",
                         notebook, "check free memory and run the same command again") from None
    else:
        _publish(partial, target)
    finally:
        partial.unlink(missing_ok=True)  # interrupted or crashed: nothing half-written stays


def _remove_partials(executed_dir: Path) -> None:
    for leftover in executed_dir.glob(f".*{PARTIAL_SUFFIX}"):
        leftover.unlink(missing_ok=True)


def run_notebooks(profile: str = "smoke", data: str | None = None, out: str | Path | None = None,
                  only: list[str] | None = None, notebooks_dir: Path = NOTEBOOKS_DIR,
                  profiles_dir: Path = PROFILES_DIR, folds: list[int] | None = None,
                  reuse: str | Path | None = None) -> list[Path]:
    """Execute the notebooks in order; stop at the first failure, naming notebook and cell.

    One run per output folder at a time: a second one fails at once naming the first's PID.

    A profile too long for one sitting runs as two invocations at one commit that split its
    folds (issue 21): `folds` trains only those folds (every fold's records still count in the
    tables), and `reuse` (the first invocation's published `runs/`) copies that invocation's
    finished records in after notebook 01, so the second one's tables and claims cover every
    fold and its teachers' records are shared by run identity (`pipeline.reuse_records`). Each
    writes its own `invocation-folds-<folds>.json` and `PROVENANCE-folds-<folds>.md`.
    """
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
                                 out_dir, folds)
    if reuse is not None:
        from .pipeline import reuse_source

        reuse_source(reuse)  # before hours of training, not after 01
    if out_dir.exists() and not out_dir.is_dir():
        raise KdlibError("the output folder is a file", out_dir, "choose a folder for --out")
    if _publish_dir(params) is not None and (gaps := defaulted_at_scale(params, all_notebooks)):
        raise ConfigError(f"a publishing profile leaves {', '.join(gaps)} to the notebooks' smoke defaults",
                          Path(profiles_dir) / f"{profile}.yaml", "set them in the profile")
    check_no_stale_records(out_dir, _publish_dir(params))  # before hours of training, not after
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(folder_lock(out_dir))
        except OSError as exc:  # read-only place, a file in the way...
            raise KdlibError(f"cannot create or lock the output folder ({exc.strerror})", out_dir,
                             "choose a folder you can write to with --out") from None
        executed_dir = out_dir / "notebooks"
        executed_dir.mkdir(parents=True, exist_ok=True)
        _remove_partials(executed_dir)  # left by a run that was killed (SIGKILL, power loss)
        choice = threads.choose()
        if message := choice.warning():
            print(f"kdlib: warning: {message}", file=sys.stderr, flush=True)
        # KDLIB_BATCH: text progress bars and static widgets in the kernels
        kernel_env = {"KDLIB_BATCH": "1", **threads.kernel_environment(choice)}
        written, seconds = [], {}
        # the code as it was when the run began: notebook 05 rewrites the README's results
        # section, so a check at the end would call every publishing run's tree unclean
        started_all, load_before, code = time.time(), threads.load_average(), code_state()
        reused = None
        with _environment(kernel_env):
            for i, nb in enumerate(notebooks, 1):
                if reuse is not None and reused is None and not nb.stem.startswith("01"):
                    from .pipeline import reuse_records  # after 01: the data it prepared is checked

                    reused = reuse_records(reuse, out_dir)
                    print(f"reused {reused['copied']} finished runs' records from {reuse} "
                          f"({reused['already_here']} already here; trained at {', '.join(reused['trained_at'])})",
                          flush=True)
                target = executed_dir / nb.name
                print(f"[{i}/{len(notebooks)}] {nb.stem} ...", flush=True)
                started = time.time()
                execute_notebook(nb, target, params[nb.stem])
                seconds[nb.stem] = round(time.time() - started, 1)
                print(f"[{i}/{len(notebooks)}] {nb.stem} done in {seconds[nb.stem]:.1f} s -> {target}",
                      flush=True)
                written.append(target)
        if notebooks == all_notebooks:
            record = invocation_record(profile, started_all, seconds, choice, load_before, code)
            if reuse is not None and _publish_dir(params) is not None:
                from .pipeline import adopt_publication  # the first part's checkpoint figures and students

                adopted = adopt_publication(Path(reuse).parent, _publish_dir(params))
                if reused is not None:
                    reused["adopted_files"] = len(adopted)
                print(f"adopted {len(adopted)} files of the first invocation's publication", flush=True)
            if folds:
                record.update(train_folds=params["02_teacher"].get("train_folds", sorted(folds)), reused=reused)
                record["command"] += f" --folds {','.join(str(f) for f in record['train_folds'])}" + \
                    (f" --reuse {reuse}" if reuse is not None else "")
            write_invocation(record, out_dir, _publish_dir(params))
    print(f"all {len(notebooks)} notebooks done in {time.time() - started_all:.1f} s; outputs in {out_dir}")
    return written


def _publish_dir(params: dict[str, dict[str, Any]]) -> Path | None:
    named = {p.get("publish_dir") for p in params.values()} - {None, ""}
    return publish_path(named.pop()) if len(named) == 1 else None


def invocation_record(profile: str, started: float, seconds: dict[str, float],
                      choice: "threads.ThreadChoice", load_before: float | None,
                      code: dict[str, Any]) -> dict[str, Any]:
    """One invocation of all notebooks: code (`code_state()` at its start), timing, and how
    busy the machine was."""
    stamp = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))  # noqa: E731
    rounded = lambda load: None if load is None else round(load, 2)  # noqa: E731
    ended = time.time()
    return {"profile": profile, "command": f"python -m kdlib run --profile {profile}",
            **code, "started": stamp(started), "ended": stamp(ended),
            "wall_s": round(ended - started, 1), "notebooks_s": seconds,
            "threads": choice.threads, "usable_cores": choice.cores, "cpu": cpu_name(),
            "busy_cores_at_start": choice.load,
            "load_average_1min": {"start": rounded(load_before), "end": rounded(threads.load_average())}}


def provenance_markdown(record: dict[str, Any]) -> str:
    load = record["load_average_1min"]
    rows = "\n".join(f"| {name} | {s:.1f} |" for name, s in record["notebooks_s"].items())
    clean = {True: "a clean tree", False: "uncommitted changes in the tree",
             None: "tree state unknown"}[record["clean"]]
    return (f"# Provenance of the `{record['profile']}` results\n\n"
            f"Written by `kdlib.runner` at the end of the invocation that made every file here.\n\n"
            f"- Command: `{record['command']}`, from an output folder it filled.\n"
            f"- Commit: `{record['commit']}` ({clean} when it started).\n"
            f"- Started {record['started']}, ended {record['ended']}: "
            f"wall time {record['wall_s'] / 60:.1f} min ({record['wall_s']:.0f} s).\n"
            f"- CPU: {record.get('cpu', 'not recorded')}.\n"
            + (f"- Folds trained: {record['train_folds']} (one of two invocations that split the profile's "
               f"folds); records reused: {record.get('reused') or 'none'}.\n" if record.get("train_folds") else "")
            + f"- Threads: {record['threads']} on {record['usable_cores']} usable cores; CPU cores busy "
            f"with other work at the start: {record['busy_cores_at_start']}; 1-minute load average "
            f"{load['start']} at the start, {load['end']} at the end (this run's own threads count).\n\n"
            f"| notebook | seconds |\n|---|---|\n{rows}\n")


def write_invocation(record: dict[str, Any], out_dir: Path, publish_dir: Path | None) -> None:
    """invocation.json and PROVENANCE.md; an invocation of some folds (`--folds`) writes
    `invocation-folds-<f>.json` and `PROVENANCE-folds-<f>.md`, so the two invocations that
    split a profile keep both records side by side in one published folder."""
    suffix = "-folds-" + "-".join(str(f) for f in record["train_folds"]) if record.get("train_folds") else ""
    atomic_write_json(out_dir / f"invocation{suffix}.json", record)
    if publish_dir is not None:
        publish_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(publish_dir / f"invocation{suffix}.json", record)
        atomic_write_text(publish_dir / f"PROVENANCE{suffix}.md", provenance_markdown(record))
