"""Teacher passes and wall time of a run of the ablation grid, under the two policies of the
teacher-outputs cache, measured in one invocation (`kdlib.train.teacher_outputs`):

- `asked taps only`: a pass keeps only the taps its run distils from (budget 0), so the next
  configuration that distils from other scales pays another pass;
- `all taps where they fit` (kdlib's default): a pass keeps all four taps when they fit
  `spare_taps_budget` (1/8 of the device's memory).

Both train the same first `--runs` configurations of notebook 04 (in `pipeline.training_order`,
one process, fresh run folders each), from a results folder where notebooks 01 and 02 have run:

    python -m kdlib run --profile smoke --only 01,02 --out /tmp/smoke
    python benchmarks/bench_teacher_passes.py --out /tmp/smoke --runs 16

The order alternates (A B A B ...) over `--repeats` rounds, so a drift of the machine's speed
falls on both; every run's metrics (timings aside) must agree between the policies.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _results import cpu_name, machine_line, update_section
from kdlib import pipeline, train

POLICIES = {"asked taps only": lambda device: 0, "all taps where they fit": train.spare_taps_budget}


def grid(out: Path, runs: int) -> list:
    configs = pipeline.ablation_configs(out, "corrected", "all", epochs=2, seeds=[42], headline_seeds=[],
                                        precision="auto", grid_folds=[], folds=[], faithful_grid=False,
                                        patience=0, min_epochs=0, select_on="loss", smooth=1, warmup=0,
                                        keep_last=False)
    return pipeline.training_order([c for c in configs if c.role == "kd"])[:runs]


def one_round(configs: list, budget) -> tuple[float, int, dict]:
    """Train `configs` into a fresh folder with the cache cleared; (seconds, teacher forward
    batches, metrics). Only the teachers' forwards count (a run also loads its own best
    checkpoint to test it)."""
    passes = []
    real_load, real_budget = train.load_model, train.spare_taps_budget
    teachers = {str(Path(c.teacher_run).resolve()) for c in configs}

    def counted_load(*a, **k):
        net = real_load(*a, **k)
        if str(Path(a[0]).resolve()) in teachers:
            net.register_forward_pre_hook(lambda *_: passes.append(1))
        return net

    train.spare_taps_budget, train.load_model = budget, counted_load
    train._TEACHER_OUTPUTS.clear()
    try:
        with tempfile.TemporaryDirectory() as runs:
            started = time.perf_counter()
            dirs = [train.train(cfg, runs, progress=False) for cfg in configs]
            seconds = time.perf_counter() - started
            metrics = {Path(d).name: {k: v for k, v in train.read_metrics(d).items()
                                      if "seconds" not in k and "time" not in k}
                       for d in dirs}
    finally:
        train.load_model, train.spare_taps_budget = real_load, real_budget
        train._TEACHER_OUTPUTS.clear()
    return seconds, len(passes), metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a results folder where 01 and 02 have run")
    parser.add_argument("--runs", type=int, default=16, help="the first N KD configurations of 04")
    parser.add_argument("--repeats", type=int, default=2, help="rounds per policy, alternating")
    parser.add_argument("--no-record", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    configs = grid(args.out, args.runs)
    teachers = sorted({Path(c.teacher_run).name for c in configs})
    seconds = {name: [] for name in POLICIES}
    passes, metrics = {}, {}
    for _ in range(args.repeats):
        for name, budget in POLICIES.items():
            s, n, m = one_round(configs, budget)
            seconds[name].append(s)
            passes[name], metrics[name] = n, m
            print(f"{name:<26} {s:6.1f} s, {n} teacher batches", flush=True)
    same = json.dumps(metrics["asked taps only"], sort_keys=True) == json.dumps(metrics["all taps where they fit"],
                                                                                sort_keys=True)
    base = statistics.median(seconds["asked taps only"])
    lines = [f"### Teacher passes: the first {len(configs)} KD runs of the smoke grid (04, corrected, "
             f"2 epochs; teachers {', '.join(teachers)})", "",
             f"Machine: {machine_line()}; CPU: {cpu_name()}. Median of {args.repeats} alternating rounds, "
             "one process, fresh run folders.", "",
             "| teacher-outputs policy | teacher forward batches | seconds (median) | ratio |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {passes[name]} | {statistics.median(v):.1f} | {base / statistics.median(v):.2f}x |"
              for name, v in seconds.items()]
    lines += ["", f"Every run's metrics (timings aside) identical between the policies: **{same}**."]
    print("\n".join(lines))
    if not same:
        raise SystemExit("the two policies gave different metrics")
    if not args.no_record:
        update_section("bench_teacher_passes", "\n".join(lines))


if __name__ == "__main__":
    main()
