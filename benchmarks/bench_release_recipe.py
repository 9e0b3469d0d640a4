"""Which optimiser the release students train with under augmentation: chosen on validation
data only (issue 19).

With the KD-off control recipe (RMSprop 1e-2) and augmentation, two of the first release
attempt's cross-validation runs collapsed to an all-background output mid-run (validation Dice
0.5-0.7, then 0.00 for every later epoch). This pilot trains, on one fold of the release's
cross-validation (its 4 training patients; validation = the held-out 15% of their slices),
every candidate recipe with augmentation and reports only validation numbers: the best
5-epoch mean of validation Dice, the epoch it came at, and whether the run collapsed (an
all-background validation output, Dice 0, for 5 epochs in a row after a Dice >= 0.3). The
test patients are never looked at.

    python benchmarks/bench_release_recipe.py --work DIR [--fold 0] [--json]

DIR is a `kdlib release --out` folder (its cache and splits are made if absent).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import cpu_name  # noqa: E402
from kdlib import release, train  # noqa: E402

CANDIDATES = {
    "rmsprop 1e-2 (KD-off control recipe)": dict(optimizer="rmsprop", lr=1e-2, weight_decay=0.0),
    "rmsprop 1e-3": dict(optimizer="rmsprop", lr=1e-3, weight_decay=0.0),
    "adamw 1e-3": dict(optimizer="adamw", lr=1e-3, weight_decay=0.05),
}


def collapsed(curve: list[float], run: int = 5) -> bool:
    zeros, peaked = 0, False
    for value in curve:
        peaked = peaked or value >= 0.3
        zeros = zeros + 1 if value == 0.0 else 0
        if peaked and zeros >= run:
            return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--models", default="S1,S2")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cfg = release.ReleaseConfig(out=str(args.work), epochs=args.epochs)
    prepared = release.prepare(cfg, args.work.resolve())
    split = prepared["cv_splits"][args.fold]
    rows = []
    started = time.time()
    for model in args.models.split(","):
        for label, opt in CANDIDATES.items():
            run_cfg = replace(release.run_config(cfg, model, prepared["cache"], split, True, "cv"),
                              name=f"{model} recipe pilot {label.split(' (')[0]}", **opt)
            # the engine prints each finished run's test Dice on stdout: swallowed, unread
            with contextlib.redirect_stdout(io.StringIO()):
                run_dir = train.train(run_cfg, args.work.resolve() / "pilot", progress=False)
            history = train.load_history(run_dir)
            curve = [float(v) for v in history["val_dice"]]
            smoothed = train.trailing_mean(curve, cfg.smooth)[cfg.smooth - 1:]
            best = max(range(len(smoothed)), key=smoothed.__getitem__)
            rows.append({"model": model, "recipe": label, "epochs_run": len(curve),
                         "best_smoothed_val_dice": round(smoothed[best], 4),
                         "at_epoch": best + cfg.smooth, "collapsed": collapsed(curve),
                         "final_smoothed_val_dice": round(smoothed[-1], 4), "run": run_dir.name})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {"fold": args.fold, "rows": rows, "cpu": cpu_name(), "minutes": round((time.time() - started) / 60, 1),
              "note": "validation only (held-out 15% of the fold's training patients); test never read"}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("| model | recipe | best 5-epoch val Dice | at epoch | epochs run | collapsed |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['recipe']} | {r['best_smoothed_val_dice']:.3f} | {r['at_epoch']} | "
                  f"{r['epochs_run']} | {'yes' if r['collapsed'] else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
