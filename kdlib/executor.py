"""The grid on a cluster: `python -m kdlib run --profile NAME --executor slurm|local --stage 02|03|04`.

One submitit job-array task per run of the stage (the runs `kdlib.plan` lists for that
notebook, so the same ones the notebook trains), teachers before students: stage 02 trains
the teachers and, when its tasks are done, writes `teachers.json` as notebook 02 would;
stages 03 and 04 refuse to start until every teacher they distil from is finished. Each task
is `kdlib.train.train` on one RunConfig: it skips a finished run, resumes an interrupted one,
and holds the run folder's lock. A second invocation submits only the runs that are neither
finished nor locked by a live process (a run still training in an earlier job is left to it).

The tables come from the notebooks as always: afterwards `python -m kdlib run --profile NAME`
finds every run finished (skipped in an instant) and writes the tables and figures.
Notebook 01 must have prepared the data first (`python -m kdlib run --profile NAME --only 01`).

`local` runs the tasks as processes on this machine (submitit's LocalExecutor), for tests and
for a workstation with several GPUs.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, KdlibError

STAGES = {"02": "02_teacher", "03": "03_student", "04": "04_ablations"}
EXECUTORS = ("slurm", "local")


def train_task(config: dict[str, Any], runs_dir: str, device: str | None = None) -> dict[str, Any]:
    """One job-array task: train one run (or find it finished, or held by a live job)."""
    from .train import RunConfig, read_metrics, train

    cfg = RunConfig.from_dict(config)
    try:
        run_dir = train(cfg, runs_dir, device=device, progress=False)
    except KdlibError as exc:
        if "in use by another kdlib process" in str(exc):
            return {"run_dir": str(cfg.run_dir(runs_dir)), "status": "locked"}
        raise
    metrics = read_metrics(run_dir) or {}
    return {"run_dir": str(run_dir), "status": "finished", "epochs_run": metrics.get("epochs_run")}


def stage_runs(profile: str, stage: str, data: str | None = None, out: str | Path | None = None,
               **dirs) -> dict[str, Any]:
    """The stage's runs from `kdlib.plan`, split into `todo` (RunConfigs), `finished`, `locked`
    and `shared` (trained by an earlier stage), plus the plan's context."""
    from . import pipeline, plan
    from .locks import is_locked
    from .train import is_finished

    if stage not in STAGES:
        raise ConfigError(f"--stage {stage} is not one of {', '.join(STAGES)}", None,
                          "use --stage 02 (teachers), then 03, then 04")
    enumerated = plan.enumerate_runs(profile, data, out, only=["02", STAGES[stage][:2]], **dirs)
    out_dir = enumerated["out"]
    if not enumerated["known"]:
        raise KdlibError("the data is not prepared", out_dir / pipeline.PREPARED,
                         f"run notebook 01 first: python -m kdlib run --profile {profile} --only 01")
    runs_dir = out_dir / "runs"
    split: dict[str, list] = {"todo": [], "finished": [], "locked": [], "shared": []}
    teachers_unfinished = []
    for run, cfg in zip(enumerated["runs"], enumerated["configs"]):
        if run["notebook"] == "02_teacher" and stage != "02":
            if not is_finished(cfg.run_dir(runs_dir)):
                teachers_unfinished.append(run["name"])
            continue
        if run["notebook"] != STAGES[stage]:
            continue
        run_dir = cfg.run_dir(runs_dir)
        if run["shared_with"]:
            split["shared"].append(cfg)
        elif is_finished(run_dir, cfg.epochs):
            split["finished"].append(cfg)
        elif is_locked(run_dir):
            split["locked"].append(cfg)
        else:
            split["todo"].append(cfg)
    if teachers_unfinished:
        raise KdlibError(f"{len(teachers_unfinished)} teacher runs are not finished "
                         f"({', '.join(sorted(set(teachers_unfinished)))})", runs_dir,
                         f"run --stage 02 first and wait for its jobs: python -m kdlib run --profile "
                         f"{profile} --executor ... --stage 02")
    return {**enumerated, **split, "runs_dir": runs_dir}


@contextlib.contextmanager
def _this_kdlib_first():
    from .paths import REPO_ROOT

    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *([saved] if saved else [])])
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def make_executor(kind: str, folder: Path, partition: str | None = None, gpus: int = 1,
                  time_min: int = 240, cpus: int = 8, mem_gb: int | None = None,
                  parallel: int | None = None, extra: dict[str, Any] | None = None):
    try:
        import submitit
    except ImportError:
        raise KdlibError("--executor needs submitit", None, "pip install submitit==1.5.2") from None
    if kind not in EXECUTORS:
        raise ConfigError(f"--executor {kind} is not one of {EXECUTORS}", None, "use slurm or local")
    if kind == "local":
        executor = submitit.LocalExecutor(folder=str(folder))
        executor.update_parameters(timeout_min=time_min)
        return executor
    executor = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params: dict[str, Any] = {"timeout_min": time_min, "gpus_per_node": gpus, "cpus_per_task": cpus,
                              "nodes": 1, "tasks_per_node": 1, "name": "kdlib"}
    if partition:
        params["slurm_partition"] = partition
    if mem_gb:
        params["mem_gb"] = mem_gb
    if parallel:
        params["slurm_array_parallelism"] = parallel
    params.update(extra or {})
    executor.update_parameters(**params)
    return executor


def submit_stage(profile: str, stage: str, executor_kind: str, data: str | None = None,
                 out: str | Path | None = None, wait: bool = True, device: str | None = None,
                 executor_options: dict[str, Any] | None = None, **dirs) -> dict[str, Any]:
    """Submit the stage's unfinished, unlocked runs as one job array; with `wait`, wait for
    them, and after stage 02 write `teachers.json`. Returns counts and the task results."""
    from . import pipeline
    from .io import atomic_write_json, read_json

    found = stage_runs(profile, stage, data, out, **dirs)
    todo, runs_dir = found["todo"], found["runs_dir"]
    summary = {"stage": stage, "submitted": len(todo), "finished_before": len(found["finished"]),
               "locked": len(found["locked"]), "shared": len(found["shared"]), "results": []}
    print(f"stage {stage}: {len(todo)} runs to submit, {len(found['finished'])} finished, "
          f"{len(found['locked'])} held by a live job, {len(found['shared'])} trained by an earlier stage",
          flush=True)
    if todo:
        folder = found["out"] / "submitit"
        executor = make_executor(executor_kind, folder, **(executor_options or {}))
        with _this_kdlib_first():  # the tasks import this checkout's kdlib, not another installed one
            jobs = executor.map_array(train_task, [c.to_dict() for c in todo], [str(runs_dir)] * len(todo),
                                      [device] * len(todo))
        print(f"submitted {len(jobs)} tasks ({executor_kind}; logs in {folder}): "
              f"{jobs[0].job_id.split('_')[0] if jobs else ''}", flush=True)
        summary["job_ids"] = [j.job_id for j in jobs]
        if not wait:
            return summary
        failed = []
        for job, cfg in zip(jobs, todo):
            try:
                summary["results"].append(job.result())
            except Exception as exc:  # noqa: BLE001 (one failed task must not hide the others)
                failed.append(f"{cfg.name} seed {cfg.seed}: {str(exc).strip().splitlines()[-1][:200]}")
        if failed:
            raise KdlibError(f"{len(failed)} of {len(jobs)} tasks failed, e.g. {failed[0]}", folder,
                             "read the task logs there, fix the cause and run the same command again")
    if stage == "02" and wait:  # what notebook 02 leaves for 03 and 04
        path = found["out"] / pipeline.TEACHERS
        registry = read_json(path) if path.exists() else {}
        for setting, by_fold in found["registry"].items():
            for fold, by_model in by_fold.items():
                registry.setdefault(setting, {}).setdefault(fold, {}).update(by_model)
        atomic_write_json(path, registry)
    return summary


def main_options(args) -> dict[str, Any]:
    return {"partition": args.partition, "gpus": args.gpus, "time_min": args.time, "cpus": args.cpus,
            "mem_gb": args.mem, "parallel": args.parallel}


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: python -m kdlib run --profile NAME --executor slurm|local --stage 02|03|04")
