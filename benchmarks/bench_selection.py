"""Checkpoint selection and early stopping, compared on the same training trajectories (issue 17).

Question: which validation set and which rule keeps a checkpoint that a single lucky epoch
cannot win, so that the seed-to-seed spread of test Dice shrinks and no kept checkpoint
collapses on test (validation Dice >= 0.6, test Dice < 0.2)?

Design, on one fold of the real-mini data (fold 0 by default: its collapses are in the
published records), at real-mini's size (64x64) and recipes:
1. The split names the fold's validation patient (part A, as real-mini does today) and, with
   `--val-share`, holds out runs of consecutive slices of every training patient (part B,
   `make_split(val_share=...)`); the union A+B is the new validation set.
2. T1 trains once with the teacher rule (a 3-epoch mean of validation Dice, warm-up and
   minimum past the early peak); every epoch is also scored on A, B and the test patients
   (`train(on_epoch=...)`, which changes nothing in the run).
3. Each student configuration (S1 baseline, S1 KD-off control, KD(T1,S1) B+PMD of Table 4.2)
   trains for each seed to a fixed cap WITHOUT early stopping, scored the same way.
4. Every rule is then replayed on every trajectory with `kdlib.train.replay_selection`, the
   engine's own rule code (a test shows a replay reaches the engine's own choice): stopping
   epoch, kept epoch, and the kept epoch's validation and test Dice. Rules differ only in
   what they watch, so their comparison is paired: same networks, same epochs.
5. The rule is CHOSEN on validation data only, by a rule fixed before any number was seen:
   select on part A and score the kept epoch on part B, and the reverse; per criterion
   (loss or Dice, smoothed over 1, 3 or 5 epochs), the mean over configurations of the
   seed SD of that out-of-part Dice; the smallest SD wins among criteria whose mean
   out-of-part Dice is within 0.02 of the best. The winner, applied to A+B, is the "after"
   rule. Test Dice is reported for every rule and never enters the choice.
Limits: one fold and one teacher; the "before" rule is replayed on trajectories trained on
the training set less part B (15% fewer slices than real-mini's); test Dice per epoch comes
from the live weights (the engine scores the fp16-stored copy: the script reports the
largest difference at the epochs the engine kept).

    python benchmarks/bench_selection.py --out /tmp/sel          # about 50 min on 2 idle cores
    python benchmarks/bench_selection.py --out /tmp/sel --tiny   # phantom data, a few minutes
    python benchmarks/bench_selection.py --out /tmp/sel --write-results   # + RESULTS.md section 9

Writes `selection.json`, `selection.md` and `selection.png` in --out; resumes (finished runs
and their per-epoch scores are reused).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from kdlib import experiments, metrics, pipeline, train  # noqa: E402
from kdlib.data import SliceCache, load_split  # noqa: E402
from kdlib.errors import KdlibError  # noqa: E402
from kdlib.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from _results import cpu_name  # noqa: E402

COLLAPSE_VAL, COLLAPSE_TEST = 0.6, 0.2
CHOICE_MARGIN = 0.02
CRITERIA = [("loss", 1), ("dice", 1), ("dice", 3), ("dice", 5), ("loss", 5)]
STUDENT_ROWS = ["S1: U-Net-S", "S1 control: KD recipe, no teacher (ours)", "KD(T1,S1)"]
# real-mini's student stopping (notebooks/profiles/real-mini.yaml) and teacher rules
STUDENT_STOP = dict(patience=20, min_epochs=40)
TEACHER_BEFORE = dict(select_on="loss", smooth=1, warmup=0, patience=8, min_epochs=10, epochs=30)
TEACHER_AFTER = dict(select_on="dice", smooth=3, warmup=10, patience=8, min_epochs=15)



# --------------------------------------------------------------------------- data


def prepare(out: Path, tiny: bool, fold: int, val_share: float) -> dict[str, Any]:
    profile = yaml.safe_load((ROOT / "notebooks" / "profiles" / "real-mini.yaml").read_text())
    pre = profile["01_preprocess"]
    if tiny:
        inputs = pipeline.data_inputs("phantom", out, phantom_cases=6, phantom_size=32, phantom_seed=5)
        fold_cases, size, window = None, 32, [0, 255]
    else:
        inputs = pipeline.data_inputs(profile["common"]["data"], out, 0, 0, 0)
        fold_cases, size, window = [pre["fold_cases"][fold]], pre["size"], pre["hu_window"]
    prepared = pipeline.prepare(out, inputs, size=size, hu_window=window, settings=["corrected"],
                                folds=3 if tiny else 0, fold_cases=fold_cases,
                                student_by=pre["student_by"], val_share=val_share)
    entry = prepared["corrected"]
    split_path = entry["splits"][fold if tiny else 0]
    return {"cache": entry["cache"], "split": split_path, "size": size}


def parts(cache: SliceCache, split: dict[str, Any]) -> dict[str, list[int]]:
    held = set(split.get("val_held_out", []))
    return {"A": [i for i in split["val"] if i not in held], "B": sorted(held), "test": list(split["test"])}


# --------------------------------------------------------------------------- scoring every epoch


class EpochScores:
    """`on_epoch` hook: confusion counts and loss sums of the network on each part."""

    def __init__(self, cfg: train.RunConfig, cache: SliceCache, indices: dict[str, list[int]], device):
        layout = train.memory_format(cfg.model, device, cfg.precision)
        self.cfg, self.device = cfg, device
        self.data = {k: train.SliceTensors(cache, v, device, layout) for k, v in indices.items() if v}
        self.rows: list[dict[str, Any]] = []

    def __call__(self, epoch: int, model) -> None:
        row: dict[str, Any] = {"epoch": epoch}
        for name, data in self.data.items():
            v = train.validate(model, data, self.cfg.threshold, self.device, precision=self.cfg.precision,
                               with_recon=self.cfg.role == "teacher",
                               seg_loss="dice" if self.cfg.role == "kd" else self.cfg.loss)
            n = len(data)
            row[name] = {**{k: v["pooled"][k] for k in ("tp", "fp", "fn")}, "n": n,
                         "loss_sum": (v["loss"] + v.get("recon_loss", 0.0)) * n}
        self.rows.append(row)


def trained(cfg: train.RunConfig, runs: Path, logs: Path, cache: SliceCache,
            indices: dict[str, list[int]], device) -> dict[str, Any]:
    """Train `cfg` with the scoring hook (or reuse a finished run and its saved scores)."""
    run_dir = cfg.run_dir(runs)
    log_path = logs / f"{run_dir.name}.json"
    if log_path.exists():
        return read_json(log_path)
    if train.is_finished(run_dir, cfg.epochs):
        raise KdlibError("finished run without its per-epoch scores", run_dir,
                         "delete this run folder and start the benchmark again")
    hook = EpochScores(cfg, cache, indices, device)
    train.train(cfg, runs, device=device, progress=False, on_epoch=hook)
    record = {"run": run_dir.name, "name": cfg.name, "seed": cfg.seed, "epochs": hook.rows,
              "history": train.load_history(run_dir).to_dict("records"),
              "metrics": read_json(run_dir / "metrics.json")}
    atomic_write_json(log_path, record)
    return record


# --------------------------------------------------------------------------- replaying the rules


def dice_of(counts: list[dict[str, Any]]) -> float:
    return float(metrics.scores({k: sum(c[k] for c in counts) for k in ("tp", "fp", "fn")})["dice"])


def val_history(record: dict[str, Any], on: str) -> list[dict[str, float]]:
    """What the engine's history would hold with `on` ("A", "B" or "A+B") as validation set."""
    rows = []
    for epoch in record["epochs"]:
        counts = [epoch[p] for p in on.split("+") if p in epoch]
        n = sum(c["n"] for c in counts)
        rows.append({"val_dice": dice_of(counts), "val_loss": sum(c["loss_sum"] for c in counts) / n})
    return rows


def apply_rule(cfg: train.RunConfig, record: dict[str, Any], on: str, select_on: str, smooth: int,
               **stop) -> dict[str, Any]:
    rule = replace(cfg, select_on=select_on, smooth=smooth, **stop)
    history = [{**r, "val_criterion": r["val_loss"] if select_on == "loss" else 1.0 - r["val_dice"]}
               for r in val_history(record, on)]
    stopped_at, kept = train.replay_selection(rule, history)
    epoch = record["epochs"][kept - 1]
    return {"stopped_at": stopped_at, "kept": kept, "censored": stopped_at >= len(record["epochs"]),
            "val_dice": history[kept - 1]["val_dice"], "test_dice": dice_of([epoch["test"]]),
            "out_of_part": {p: dice_of([epoch[p]]) for p in ("A", "B") if p in epoch}}


def sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def summarise(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per configuration: seed SD and mean of test Dice, collapsed runs."""
    out = {}
    for config, runs in results.items():
        test = [r["test_dice"] for r in runs]
        out[config] = {"test_dice": test, "mean": statistics.fmean(test), "sd": sd(test),
                       "collapsed": sum(r["val_dice"] >= COLLAPSE_VAL and r["test_dice"] < COLLAPSE_TEST
                                        for r in runs),
                       "kept": [r["kept"] for r in runs], "stopped_at": [r["stopped_at"] for r in runs],
                       "censored": sum(r["censored"] for r in runs)}
    return out


def choose(student_logs: dict[str, list[dict[str, Any]]], configs: dict[str, train.RunConfig]) -> dict[str, Any]:
    """The pre-declared choice on validation data only (module docstring, step 5)."""
    table = {}
    for select_on, smooth in CRITERIA:
        sds, means = [], []
        for config, records in student_logs.items():
            for on, other in (("A", "B"), ("B", "A")):
                scores = [apply_rule(configs[config], r, on, select_on, smooth, **STUDENT_STOP)["out_of_part"][other]
                          for r in records]
                sds.append(sd(scores))
                means.append(statistics.fmean(scores))
        table[f"{select_on}/{smooth}"] = {"seed_sd": statistics.fmean(sds), "mean_dice": statistics.fmean(means)}
    best_mean = max(v["mean_dice"] for v in table.values())
    eligible = {k: v for k, v in table.items() if v["mean_dice"] >= best_mean - CHOICE_MARGIN}
    winner = min(eligible, key=lambda k: (eligible[k]["seed_sd"], -eligible[k]["mean_dice"]))
    return {"criteria": table, "winner": winner}


# --------------------------------------------------------------------------- report


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Fold {result['fold']}, {result['data']}, seeds {result['seeds']}; {result['cpu']}, "
             f"torch {result['torch']}, {result['minutes']:.0f} min, commit {result['commit']}.", "",
             "Choice on validation data only (select on one part, score on the other; mean of the "
             "seed SDs over configurations and directions):", "",
             "| criterion/smoothing | seed SD of out-of-part Dice | mean out-of-part Dice |", "|---|---|---|"]
    for k, v in result["choice"]["criteria"].items():
        mark = " (chosen)" if k == result["choice"]["winner"] else ""
        lines.append(f"| {k}{mark} | {v['seed_sd']:.3f} | {v['mean_dice']:.3f} |")
    lines += ["", "Test Dice of the kept checkpoints (never used for the choice): seed SD, mean, "
              "collapsed runs (val >= 0.6, test < 0.2), kept epochs:", "",
              "| rule | configuration | seed SD | mean | collapsed | kept epochs | censored at cap |",
              "|---|---|---|---|---|---|---|"]
    for rule, per in result["rules"].items():
        for config, s in per.items():
            lines.append(f"| {rule} | {config} | {s['sd']:.3f} | {s['mean']:.3f} | {s['collapsed']}/"
                         f"{len(s['test_dice'])} | {' '.join(map(str, s['kept']))} | {s['censored']} |")
    lines += ["", "Paired contrasts (per seed, same seed's runs), seed SD and mean:", "",
              "| rule | contrast | seed SD | mean |", "|---|---|---|---|"]
    for rule, per in result["contrasts"].items():
        for name, c in per.items():
            lines.append(f"| {rule} | {name} | {c['sd']:.3f} | {c['mean']:+.3f} |")
    t = result["teacher"]
    lines += ["", f"T1 (fold {result['fold']}): before rule kept epoch {t['before']['kept']} "
              f"(stop {t['before']['stopped_at']}), test Dice {t['before']['test_dice']:.3f}; after rule "
              f"kept epoch {t['after']['kept']} (stop {t['after']['stopped_at']}), test Dice "
              f"{t['after']['test_dice']:.3f}; engine's own: {t['engine']}.",
              f"Largest |live - stored| test Dice at the engine's kept epochs: {result['stored_vs_live']:.4f}."]
    return "\n".join(lines) + "\n"


def results_section(result: dict[str, Any], out: Path) -> str:
    return (f"## 9. Checkpoint selection and early stopping (`benchmarks/bench_selection.py`, issue 17)\n\n"
            f"`python benchmarks/bench_selection.py --out {out.name} --write-results` (records: "
            f"`{out.name}/selection.json`, per-epoch scores in `{out.name}/scores/`).\n\n" + markdown(result))


def figure(result: dict[str, Any], teacher: dict[str, Any], path: Path, synthetic: bool) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    rules = list(result["rules"])
    configs = list(result["rules"][rules[0]])
    for j, config in enumerate(configs):
        for i, rule in enumerate(rules):
            ys = result["rules"][rule][config]["test_dice"]
            x = j * (len(rules) + 1) + i
            left.scatter([x] * len(ys), ys, s=14, color=f"C{i}", label=rule if j == 0 else None)
    left.axhline(COLLAPSE_TEST, color="grey", lw=0.8, ls=":")
    left.set_xticks([j * (len(rules) + 1) + (len(rules) - 1) / 2 for j in range(len(configs))])
    left.set_xticklabels([c.replace(": KD recipe, no teacher (ours)", "").replace(": U-Net-S", " baseline")
                          for c in configs], fontsize=8)
    left.set_ylabel("test Dice of the kept checkpoint")
    left.set_title("each dot a seed; same trajectories, rule replayed", fontsize=9)
    left.legend(fontsize=7, loc="lower right")
    epochs = [r["epoch"] for r in teacher["epochs"]]
    for on in ("A", "B", "A+B"):
        right.plot(epochs, [r["val_dice"] for r in val_history(teacher, on)], label=f"val {on}")
    right.plot(epochs, [dice_of([r["test"]]) for r in teacher["epochs"]], "k--", label="test (not used)")
    right.set_xlabel("epoch")
    right.set_ylabel("Dice")
    right.set_title("T1: Dice by epoch", fontsize=9)
    right.legend(fontsize=7)
    tag = "SYNTHETIC (phantom) smoke" if synthetic else f"real CT, fold {result['fold']}"
    fig.suptitle(f"bench_selection: {tag}; commit {result['commit']}", fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--seeds", default="42,43,44,45,46")
    p.add_argument("--val-share", type=float, default=0.15)
    p.add_argument("--student-cap", type=int, default=200)
    p.add_argument("--baseline-cap", type=int, default=300)
    p.add_argument("--teacher-cap", type=int, default=40)
    p.add_argument("--tiny", action="store_true", help="phantom data, tiny caps (a smoke check)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--write-results", action="store_true",
                   help="also write section bench_selection of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    started = time.time()
    if args.tiny:
        args.student_cap, args.baseline_cap, args.teacher_cap = 8, 8, 6
        stop, t_before, t_after = dict(patience=2, min_epochs=3), \
            dict(TEACHER_BEFORE, patience=2, min_epochs=2, epochs=4), dict(TEACHER_AFTER, warmup=1, patience=2, min_epochs=2)
        teacher_model = "T1"
    else:
        stop, t_before, t_after, teacher_model = STUDENT_STOP, TEACHER_BEFORE, TEACHER_AFTER, "T1"
    seeds = [int(s) for s in args.seeds.split(",")]
    out = args.out.resolve()
    runs, logs = out / "runs", out / "scores"
    logs.mkdir(parents=True, exist_ok=True)
    data = prepare(out, args.tiny, args.fold, args.val_share)
    cache, split = SliceCache.load(data["cache"]), load_split(data["split"])
    indices = parts(cache, split)
    device = train.pick_device(None)

    teacher_cfg = experiments.teacher_run_config(
        teacher_model, data["cache"], data["split"], "corrected", epochs=args.teacher_cap,
        model_kwargs=pipeline.model_kwargs(teacher_model, data["size"]), **t_after)
    teacher = trained(teacher_cfg, runs, logs, cache, indices, device)
    teacher_run = str(teacher_cfg.run_dir(runs))
    before_cfg = replace(teacher_cfg, epochs=min(t_before["epochs"], args.teacher_cap))
    t_stop = {k: v for k, v in t_before.items() if k not in ("select_on", "smooth", "epochs")}
    teacher_result = {
        "before": apply_rule(before_cfg, teacher, "A", t_before["select_on"], t_before["smooth"], **t_stop),
        "after": apply_rule(teacher_cfg, teacher, "A+B", t_after["select_on"], t_after["smooth"],
                            **{k: v for k, v in t_after.items() if k not in ("select_on", "smooth")}),
        "engine": {k: teacher["metrics"][k] for k in ("best_epoch", "epochs_run", "stopped")}
        | {"test_dice": teacher["metrics"]["pooled"]["dice"]}}

    configs, student_logs = {}, {}
    for label in STUDENT_ROWS:
        row = next(r for r in experiments.grid_rows(["4.2"]) if r["row"] == label)
        cap = args.baseline_cap if experiments.row_role(row) == "baseline" else args.student_cap
        cfg = experiments.row_config(row, data["cache"], data["split"], "corrected", {"T1": teacher_run},
                                     epochs=cap, patience=0)
        configs[label] = cfg
        student_logs[label] = [trained(replace(cfg, seed=s), runs, logs, cache, indices, device) for s in seeds]

    choice = choose(student_logs, configs)
    sel, smooth = choice["winner"].split("/")
    rules = {"before (val A, loss, 1 epoch)": ("A", "loss", 1),
             "val A+B, loss, 1 epoch": ("A+B", "loss", 1),
             f"val A, {sel}, {smooth} epochs": ("A", sel, int(smooth)),
             f"after (val A+B, {sel}, {smooth} epochs)": ("A+B", sel, int(smooth))}
    per_rule = {name: {c: [apply_rule(configs[c], r, on, s, k, **stop) for r in recs]
                       for c, recs in student_logs.items()} for name, (on, s, k) in rules.items()}
    contrasts = {}
    base, control, kd = STUDENT_ROWS
    for name, per in per_rule.items():
        contrasts[name] = {}
        for label, (a, b) in {"KD(T1,S1) - control": (kd, control), "control - baseline": (control, base)}.items():
            diffs = [x["test_dice"] - y["test_dice"] for x, y in zip(per[a], per[b])]
            contrasts[name][label] = {"values": diffs, "sd": sd(diffs), "mean": statistics.fmean(diffs)}
    # the engine scored its own kept epoch from the stored (fp16) weights; the replay from live ones
    stored_vs_live = max(abs(r["metrics"]["pooled"]["dice"] - dice_of([r["epochs"][r["metrics"]["best_epoch"] - 1]["test"]]))
                         for recs in [*student_logs.values(), [teacher]] for r in recs)
    # the hook's A+B numbers are the engine's own validation numbers, epoch by epoch
    engine_vs_hook = max(abs(h["val_dice"] - v["val_dice"])
                         for recs in [*student_logs.values(), [teacher]] for r in recs
                         for h, v in zip(r["history"], val_history(r, "A+B")))
    import torch
    from kdlib.provenance import code_state
    state = code_state()
    result = {"fold": args.fold, "seeds": seeds, "val_share": args.val_share,
              "data": "phantom (synthetic)" if args.tiny else "real-mini CT",
              "caps": {"student": args.student_cap, "baseline": args.baseline_cap, "teacher": args.teacher_cap},
              "parts": {k: len(v) for k, v in indices.items()},
              "choice": choice, "rules": {k: summarise(v) for k, v in per_rule.items()},
              "contrasts": contrasts, "teacher": teacher_result, "stored_vs_live": stored_vs_live,
              "engine_vs_hook_val_dice": engine_vs_hook,
              "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "commit": state.get("commit", "unknown") + ("" if state.get("clean", True) else "+uncommitted"),
              "minutes": (time.time() - started) / 60}
    atomic_write_json(out / "selection.json", result)
    atomic_write_text(out / "selection.md", markdown(result))
    figure(result, teacher, out / "selection.png", args.tiny)
    if args.write_results:
        from _results import update_section
        update_section("bench_selection", results_section(result, out))
    if args.json:
        print(json.dumps(result))
    else:
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
