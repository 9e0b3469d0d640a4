"""How to train many seeds of a small student faster on a CPU (issue 21's "first make it faster").

Three ways to train K seeds of one student configuration, measured in one invocation on one
machine:

- **sequential**: one process with all the cores, one seed after another (what `kdlib run`
  does today), through the real engine (`train.train`: validation, checkpoints, test);
- **processes**: P processes with cores/P threads each, the seeds dealt out round-robin, started
  together (what `run --executor local` does with one task per run), the same engine;
- **stacked** (training step only, fp32): the K seeds' networks stacked with torch.func
  (`benchmarks/gpu_check.py`'s `stacked_students`: vmap(grad), BatchNorm without running
  statistics, an SGD update), against the same K networks stepped one after another in the
  same process: an upper bound of what stacking could give, not an engine.

Data: a generated phantom (SYNTHETIC) at 64x64 with about real-mini's student set per fold.

    python benchmarks/bench_seeds.py [--model S1] [--seeds 4] [--epochs 20] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import cpu_name  # noqa: E402

WORKER = r"""
import sys, time, json
from dataclasses import replace
import torch
sys.path.insert(0, {repo!r})
from kdlib import train
cfg = train.RunConfig.from_dict(json.loads({cfg!r}))
for seed in {seeds!r}:
    train.train(replace(cfg, seed=seed), {runs!r}, progress=False)
"""


def _config(root: Path, model: str, epochs: int):
    from kdlib import train
    from kdlib.data import SliceCache, make_split, preprocess, save_split, write_phantom_msd

    if not (root / "cache" / "manifest.json").exists():
        data = write_phantom_msd(root / "phantom", cases=6, seed=0, size=64, slices=48)
        preprocess(data, root / "cache", size=64)
        save_split(make_split(SliceCache.load(root / "cache"), mode="patient", seed=0,
                              student_by="slice", val_share=0.15), root / "split.json")
    return replace(train.control_config(model, root / "cache", root / "split.json"),
                   epochs=epochs, precision="bf16", checkpoint_seconds=60.0)


def _images(cfg) -> int:
    split = json.loads(Path(cfg.split).read_text())
    return len(split[cfg.train_subset])


def _run_processes(cfg, seeds: list[int], processes: int, runs: Path) -> float:
    threads = max(1, (os.cpu_count() or 2) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cfg_json = json.dumps(cfg.to_dict())
    started = time.perf_counter()
    jobs = [subprocess.Popen([sys.executable, "-c", WORKER.format(repo=str(REPO), cfg=cfg_json,
                                                                   seeds=seeds[k::processes],
                                                                   runs=str(runs))],
                             env=env, stdout=subprocess.DEVNULL) for k in range(processes)]
    for job in jobs:
        if job.wait() != 0:
            raise SystemExit("a worker failed")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="S1")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = _config(root, args.model, args.epochs)
        seeds = list(range(100, 100 + args.seeds))
        images = _images(cfg) * args.epochs * args.seeds
        result = {"model": args.model, "seeds": args.seeds, "epochs": args.epochs,
                  "train_images_per_epoch": _images(cfg), "cores": cores, "cpu": cpu_name(),
                  "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "data": "SYNTHETIC phantom, 64x64"}
        seq = _run_processes(cfg, seeds, 1, root / "runs-seq")
        par = _run_processes(cfg, seeds, 2, root / "runs-par")
        result["sequential"] = {"processes": 1, "threads": cores, "seconds": round(seq, 2),
                                "images_per_s": round(images / seq, 1)}
        result["processes"] = {"processes": 2, "threads": max(1, cores // 2), "seconds": round(par, 2),
                               "images_per_s": round(images / par, 1)}
        result["processes_gain"] = round(seq / par, 3)

    from benchmarks.gpu_check import stacked_students

    print(json.dumps(result), file=sys.stderr, flush=True)  # kept if the stacked part fails
    torch.set_num_threads(cores)
    # fp32: under vmap(grad), the CPU's bf16 autocast fails in backward ("expected scalar type
    # BFloat16 but found Float", torch 2.13), so both sides of this ratio run in fp32
    stacked = stacked_students(torch.device("cpu"), 64, "fp32", seconds=6.0, members=args.seeds)
    result["stacked_step_only"] = stacked
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model}, {args.seeds} seeds x {args.epochs} epochs, {result['cpu']}, {cores} cores")
        print(f"sequential (1 process x {cores} threads): {seq:.1f} s")
        print(f"2 processes x {max(1, cores // 2)} thread(s): {par:.1f} s  (gain {seq / par:.2f}x)")
        print(f"stacked steps (vmap, {args.seeds} members): gain {stacked['gain']}x over the same steps one by one")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
