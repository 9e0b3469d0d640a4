"""Training speed of each network with its own recipe: images/s and seconds per epoch, fp32
against bf16 autocast, 1 thread against 2, at one resolution (issue 9).

    python benchmarks/bench_epochs.py --size 64            # writes section bench_epochs_64
    python benchmarks/bench_epochs.py --size 96 --slices 200
    python benchmarks/bench_epochs.py --quick --no-record  # a few steps each (smoke test)

One training step is what `kdlib.train` runs: forward (under bf16 autocast where asked),
the run's loss, backward, optimiser step, at the recipe's batch size (teachers: AdamW, batch
8, Dice-BCE + 0.2 recon MSE; baseline students: AdamW, batch 16). Distilled students cost
1.1-2.2x a student step with the cached teacher (section 3). Run it on an idle machine: the
1-minute load average at start and end is printed beside the numbers, because a busy 2-core
machine slows CPU timings 3-5x.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine_line, update_section  # noqa: E402
from kdlib import losses  # noqa: E402
from kdlib.models import build  # noqa: E402
from kdlib.train import cpu_has_native_bf16  # noqa: E402

# batch size per network, as kdlib's recipes train them
RECIPE = {"S1": 16, "S2": 16, "T1": 8, "T2": 8}


def step_time(name: str, size: int, precision: str, threads: int, min_time: float,
              min_steps: int, batch: int | None = None, channels_last: bool = False,
              recipe=None) -> tuple[float, int]:
    """(seconds per training step, batch size): median of the timed steps after two warm-ups.

    `batch` defaults to the recipe's; `channels_last` puts network and input in that layout;
    `recipe` (a kdlib RunConfig) trains with that run's optimiser and loss
    (`kdlib.train._make_optimizer`, `_plain_objective`) instead of AdamW and Dice-BCE + 0.2 recon."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(name, **({"img_size": size} if name == "T2" else {})).train()
    batch = batch or RECIPE[name]
    x = torch.rand(batch, 3, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.7).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if recipe is None:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    else:
        from kdlib import train

        opt = train._make_optimizer(recipe, list(model.parameters()))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            out = model(x)
            if recipe is not None:
                loss = train._plain_objective(recipe, out, x, y)["total"]
            else:
                loss = losses.dice_bce_loss(out["logits"], y)
                if "recon" in out:
                    loss = loss + 0.2 * losses.recon_mse(out["recon"], x)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_steps or time.perf_counter() - started < min_time:
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--slices", type=int, default=200, help="training slices per epoch, for s/epoch")
    parser.add_argument("--models", default="S1,S2,T1,T2")
    parser.add_argument("--min-time", type=float, default=4.0, help="seconds of timed steps per cell")
    parser.add_argument("--quick", action="store_true", help="one timed step each (smoke test)")
    parser.add_argument("--no-record", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()

    load_start = os.getloadavg()[0]
    rows = []
    for name in args.models.split(","):
        cells = {}
        for precision in ("fp32", "bf16"):
            for threads in (1, 2):
                sec, batch = step_time(name, args.size, precision, threads,
                                       0.0 if args.quick else args.min_time, 1 if args.quick else 3)
                cells[(precision, threads)] = batch / sec
                print(f"{name} {precision} {threads} thread(s): {batch / sec:.1f} images/s", flush=True)
        rows.append((name, RECIPE[name], cells))
    load_end = os.getloadavg()[0]

    head = "| network | batch | " + " | ".join(f"{p} {t}T img/s" for p in ("fp32", "bf16") for t in (1, 2)) + \
        f" | s/epoch ({args.slices} slices), best | bf16 / fp32 (2T) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, batch, cells in rows:
        best = max(cells.values())
        lines.append(f"| {name} | {batch} | " + " | ".join(f"{cells[(p, t)]:.1f}" for p in ("fp32", "bf16")
                                                          for t in (1, 2))
                     + f" | {args.slices / best:.1f} | {cells[('bf16', 2)] / cells[('fp32', 2)]:.2f}x |")
    text = "\n".join([
        f"### Training speed at {args.size}x{args.size} (`benchmarks/bench_epochs.py --size {args.size}`)",
        "",
        f"Machine: {machine_line()}; native bf16: {cpu_has_native_bf16()}; 1-min load {load_start:.2f} at start, "
        f"{load_end:.2f} at end. Images/s of one training step (forward, loss, backward, AdamW) at each "
        f"recipe's batch size; median step.",
        "",
        *lines,
    ])
    print(text)
    if not (args.no_record or args.quick):
        update_section(f"bench_epochs_{args.size}", text)


if __name__ == "__main__":
    main()
