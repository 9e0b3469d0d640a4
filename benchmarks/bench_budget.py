"""What a profile's invocation would cost, from measured runs: for every run the plan lists
(`python -m kdlib run --profile NAME --plan`), the mean `train_seconds` of the recorded runs of
the same configuration (name and data subset; the same fold where it was recorded, else any
fold), summed per notebook. Configurations never recorded are counted and listed, not guessed.

    python benchmarks/bench_budget.py --profile real-mini --records figures/real-mini-b818353/runs
    python benchmarks/bench_budget.py --profile real-mini --records figures/real-mini-b818353/runs --folds 0,1

The records carry the engine, stopping rule and machine they were made with: the sum is the
cost at *their* rates, and the machine they ran on is printed beside it. Compare it with a
budget only after scaling by ratios measured in one run on one machine (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kdlib import plan  # noqa: E402
from kdlib.train import load_runs  # noqa: E402


def _fold(split: str) -> int | None:
    stem = Path(split).stem
    return int(stem.rsplit("fold", 1)[1]) if "fold" in stem and stem.rsplit("fold", 1)[1].isdigit() else None


def recorded_seconds(records: Path) -> dict[tuple, list[float]]:
    seconds: dict[tuple, list[float]] = defaultdict(list)
    for run in load_runs(records):
        cfg, m = run["config"], run["metrics"]
        key = (cfg["name"], cfg["train_subset"])
        seconds[key].append(float(m["train_seconds"]))
        seconds[(*key, _fold(cfg["split"]))].append(float(m["train_seconds"]))
    return seconds


def budget(profile: str, records: Path, folds: list[int] | None = None) -> dict:
    seconds = recorded_seconds(records)
    runs = [r for r in plan.plan_runs(profile, folds=folds) if not r["shared_with"]]
    per_notebook: dict[str, dict] = defaultdict(lambda: {"runs": 0, "seconds": 0.0, "unrecorded": 0})
    unrecorded = set()
    for r in runs:
        key = (r["name"], r["train_subset"])
        values = seconds.get((*key, r["fold"])) or seconds.get(key)
        row = per_notebook[r["notebook"]]
        row["runs"] += 1
        if values:
            row["seconds"] += sum(values) / len(values)
        else:
            row["unrecorded"] += 1
            unrecorded.add(f"{r['name']} ({r['train_subset']})")
    return {"per_notebook": dict(per_notebook), "unrecorded": sorted(unrecorded),
            "minutes": sum(v["seconds"] for v in per_notebook.values()) / 60}


def machines(records: Path) -> list[str]:
    """The CPU the records' invocation ran on (its invocation.json beside the runs folder,
    since the runner records it), or that it was not recorded."""
    invocation = records.parent / "invocation.json"
    cpu = json.loads(invocation.read_text()).get("cpu") if invocation.exists() else None
    return [cpu or "CPU not recorded by that invocation"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="real-mini")
    parser.add_argument("--records", type=Path, required=True, help="a runs folder with finished runs")
    parser.add_argument("--folds", default=None, help="e.g. 0,1: one part of an invocation split by folds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    result = budget(args.profile, args.records, folds)
    result["records"] = str(args.records)
    result["record_machines"] = machines(args.records)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"profile {args.profile}{f' --folds {args.folds}' if folds else ''}, at the rates of {args.records} ({'; '.join(result['record_machines'])}):")
    for stem, row in result["per_notebook"].items():
        print(f"  {stem}: {row['runs']} runs, {row['seconds'] / 60:.1f} min"
              + (f" ({row['unrecorded']} runs of configurations never recorded, not counted)"
                 if row["unrecorded"] else ""))
    print(f"  total: {result['minutes']:.1f} min; never recorded: {', '.join(result['unrecorded']) or 'none'}")


if __name__ == "__main__":
    main()
