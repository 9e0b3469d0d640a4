"""What an epoch costs beyond its training steps, per network, at real-mini's size (issue 17).

For S1, S2 (the distilled students' and KD-off controls' recipe: RMSprop 1e-2, Dice, batch
20, 96 training slices) and T1 (the teachers' recipe: AdamW 1e-4, Dice-BCE + 0.2 recon,
batch 8, 192 training slices), at 64x64 and 24 validation slices, as real-mini's fold 0:
- `step_images_per_s`: training steps only (from each training forward pass to the end of
  its optimiser step, batching and everything between steps left out), timed inside the
  epochs below, so that steps and epochs see the same machine load;
- `step_images_per_s_nchw`, `step_images_per_s_channels_last`: the same step on one fixed
  batch in each layout (`bench_epochs.step_time`), interleaved rounds, median; kdlib trains
  in `memory_format` (key `memory_format`; before issue 17 always NCHW on the CPU);
- `epoch_images_per_s`: whole epochs as `kdlib.train.train` runs them (batching, steps,
  validation, checkpoints, history), the first epoch left out (warm-up), on a phantom cache
  the script writes itself (`kdlib.data.write_phantom_msd`, 10 cases x 24 slices); the last
  timed epoch writes last.pt (always written at the end), which a long run writes only
  every `checkpoint_seconds`, so short runs overstate its share;
- `overhead_ratio`: step rate / epoch rate (1.0: an epoch costs its steps only).
Steps run in kdlib's deterministic CPU mode (`train.set_determinism`), as training does.

    python benchmarks/bench_overhead.py --json            # one JSON object on stdout
    python benchmarks/bench_overhead.py --before old.json --write-results
    python benchmarks/bench_overhead.py --steps-only --precision fp32 --models S1,S2,T1,T2,unet \
        --write-results                                   # the layout table behind CHANNELS_LAST_CPU

`--before` takes the JSON of the same script run against an older kdlib (copy this file,
bench_epochs.py and _results.py into that checkout's benchmarks/), measured just before on
the same machine, and writes a before/after table (section bench_overhead). About 2
minutes on 2 idle cores; a busy machine makes it 3-5x slower (RESULTS.md, top).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import cpu_name, machine_line, update_section  # noqa: E402
from bench_epochs import step_time  # noqa: E402
from kdlib import train  # noqa: E402
from kdlib.data import SliceCache, make_split, preprocess, save_split, write_phantom_msd  # noqa: E402

SIZE = 64
NETWORKS = ("S1", "S2", "T1")




def phantom(root: Path) -> tuple[Path, Path]:
    """A 64x64 phantom cache shaped like real-mini's fold 0: 192 training slices (96 for
    students), 24 validation and 24 test slices."""
    data = write_phantom_msd(root / "phantom", cases=10, seed=0, size=SIZE, slices=24)
    preprocess(data, root / "cache", size=SIZE)
    cache = SliceCache.load(root / "cache")
    cases = sorted({str(c) for c in cache.case_ids})
    split = make_split(cache, mode="patient", seed=0, test_cases=[cases[0]], val_cases=[cases[1]],
                       student_by="slice")
    save_split(split, root / "split.json")
    return root / "cache", root / "split.json"


def recipe(name: str, cache: Path, split: Path, epochs: int, precision: str) -> train.RunConfig:
    if name in ("T1", "T2", "unet"):
        return train.teacher_config(name, cache, split, epochs=epochs, precision=precision,
                                    model_kwargs={"img_size": SIZE} if name == "T2" else {})
    return train.control_config(name, cache, split, epochs=epochs, precision=precision)


def epoch_and_step_rates(cfg: train.RunConfig, runs: Path, train_slices: int) -> tuple[float, float]:
    """(epoch rate, step rate) in training images per second over epochs 2.. of one
    `train.train` run (epoch 1 warms up). The step rate counts the time from each training
    forward pass to the end of its optimiser step (a forward pre-hook on the network, a step
    post-hook on the optimiser), so steps and epochs are timed under the same machine load."""
    stamps: list[float] = []
    steps: list[tuple[float, float, int]] = []
    begun: list[tuple[float, int]] = []

    def timed(iterable, **_):
        for item in iterable:
            stamps.append(time.perf_counter())
            yield item
        stamps.append(time.perf_counter())  # after the last epoch's checkpoint and history

    def build(*args, **kwargs):
        model = real_build(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda mod, inputs: begun.append((time.perf_counter(), inputs[0].shape[0])) if mod.training else None)
        return model

    def make_optimizer(*args, **kwargs):
        optimizer = real_optimizer(*args, **kwargs)
        optimizer.register_step_post_hook(lambda *_: steps.append((*begun[-1][:1], time.perf_counter(),
                                                                   begun[-1][1])))
        return optimizer

    real_bar, real_build, real_optimizer = train.bar, train.models.build, train._make_optimizer
    train.bar, train.models.build, train._make_optimizer = timed, build, make_optimizer
    try:
        train.train(cfg, runs, progress=False)
    finally:
        train.bar, train.models.build, train._make_optimizer = real_bar, real_build, real_optimizer
    timed_steps = [(t1 - t0, n) for t0, t1, n in steps if t0 >= stamps[1]]
    epoch = train_slices * (len(stamps) - 2) / (stamps[-1] - stamps[1])
    return epoch, sum(n for _, n in timed_steps) / sum(t for t, _ in timed_steps)


def measure(name: str, cache: Path, split: Path, runs: Path, epochs: int, threads: int,
            min_time: float, rounds: int, precision: str, steps_only: bool) -> dict:
    cfg = recipe(name, cache, split, epochs, precision)
    layout = getattr(train, "memory_format", None)  # absent before issue 17: NCHW everywhere
    ours = "nchw" if layout is None or layout(name, "cpu", cfg.precision) == torch.contiguous_format \
        else "channels_last"
    fixed: dict[str, list[float]] = {"nchw": [], "channels_last": []}
    for _ in range(rounds):  # interleaved, so that a drifting load hits both layouts alike
        for fmt in fixed:
            sec, batch = step_time(name, SIZE, cfg.precision, threads, min_time, 3, batch=cfg.batch_size,
                                   channels_last=fmt == "channels_last", recipe=cfg)
            fixed[fmt].append(batch / sec)
    result = {"batch": cfg.batch_size, "precision": cfg.precision, "memory_format": ours,
              **{f"step_images_per_s_{fmt}": round(statistics.median(v), 1) for fmt, v in fixed.items()}}
    if not steps_only:
        slices = len(json.loads(split.read_text())[cfg.train_subset])
        epoch, step = epoch_and_step_rates(cfg, runs, slices)
        result.update(train_slices=slices, epochs_timed=epochs - 1, step_images_per_s=round(step, 1),
                      epoch_images_per_s=round(epoch, 1), overhead_ratio=round(step / epoch, 3))
    print(f"{name}: {result}", file=sys.stderr, flush=True)
    return result


def table(after: dict, before: dict | None, names: list[str]) -> str:
    rows = ["| network | precision | batch | layout | step img/s (NCHW) | step img/s (channels_last) | "
            "step img/s (kdlib, in epochs) | epoch img/s | overhead ratio |", "|---" * 9 + "|"]
    for label, data in (("before", before), ("after", after)):
        for name in names if data is not None else []:
            r = data[name]
            cells = [f"{r[k]:.1f}" if k in r else "-" for k in
                     ("step_images_per_s_nchw", "step_images_per_s_channels_last", "step_images_per_s",
                      "epoch_images_per_s")] + [f"{r['overhead_ratio']:.2f}" if "overhead_ratio" in r else "-"]
            rows.append(f"| {name}{f' ({label})' if before else ''} | {r['precision']} | {r['batch']} | "
                        f"{r['memory_format']} | " + " | ".join(cells) + " |")
    if before is not None and all("epoch_images_per_s" in after[n] for n in names):
        rows += ["", "| network | step rate after / before | epoch rate after / before |", "|---|---|---|"]
        rows += [f"| {n} | {after[n]['step_images_per_s'] / before[n]['step_images_per_s']:.2f}x | "
                 f"{after[n]['epoch_images_per_s'] / before[n]['epoch_images_per_s']:.2f}x |"
                 for n in names]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--models", default=",".join(NETWORKS), help="of S1, S2, T1, T2, unet")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--steps-only", action="store_true", help="the two layouts' step rates only")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--student-epochs", type=int, default=6, help="epochs per student run (1st untimed)")
    parser.add_argument("--teacher-epochs", type=int, default=2, help="epochs of the T1 run (1st untimed)")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed steps per layout and round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved NCHW / channels_last rounds")
    parser.add_argument("--before", type=Path, help="JSON of this script against the older code")
    parser.add_argument("--write-results", action="store_true", help="write section bench_overhead")
    args = parser.parse_args()

    names = args.models.split(",")
    torch.set_num_threads(args.threads)
    train.set_determinism(torch.device("cpu"))
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    result: dict = {}
    # kdlib prints a summary line per finished run: to stderr, so that stdout holds the JSON only
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp, contextlib.redirect_stdout(sys.stderr):
        cache, split = phantom(Path(tmp))
        for name in names:
            epochs = args.student_epochs if name in ("S1", "S2") else args.teacher_epochs
            result[name] = measure(name, cache, split, Path(tmp) / "runs", epochs, args.threads,
                                   args.min_time, args.rounds, args.precision, args.steps_only)
    result.update(threads=args.threads, cpu=cpu_name(), torch=torch.__version__,
                  load_start=round(load_start, 2), load_end=round(os.getloadavg()[0], 2),
                  seconds=round(time.perf_counter() - started, 1),
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if args.json:
        print(json.dumps(result))
    before = json.loads(args.before.read_text()) if args.before else None
    text = "\n".join([
        (f"### Training step in NCHW and channels_last at 64x64 (`benchmarks/bench_overhead.py "
         f"--steps-only --precision {args.precision} --models {args.models}`)" if args.steps_only else
         "### Epoch overhead at 64x64 (`benchmarks/bench_overhead.py`)"),
        "",
        f"CPU: {result['cpu']}; {machine_line()}. "
        + (f"Before: {before['date']}, load {before['load_start']:.2f} -> {before['load_end']:.2f}, "
           f"{before['seconds']:.0f} s. " if before else "")
        + f"{'After' if before else 'Measured'}: {result['date']}, 1-min load {load_start:.2f} -> "
        f"{result['load_end']:.2f}, "
        f"{result['seconds']:.0f} s.",
        "",
        table(result, before, names),
    ])
    if not args.json:
        print(text)
    if args.write_results:
        update_section("bench_overhead" + ("_steps_" + args.precision if args.steps_only else ""), text)


if __name__ == "__main__":
    main()
