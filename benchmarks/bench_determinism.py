"""What deterministic mode costs per training step on the CPU, and what kdlib keeps of it.

Three modes, interleaved (so machine load drifts alike over all three), median over repeats:
- `off`: torch's default (no deterministic algorithms);
- `deterministic + NaN fill`: `torch.use_deterministic_algorithms(True)` as torch sets it,
  which also fills every new tensor with NaN (`fill_uninitialized_memory`);
- `kdlib`: deterministic algorithms without the fill (`train.set_determinism` on the CPU).
It also checks that the fill changes no result (same loss after the same steps).

    python benchmarks/bench_determinism.py --size 96 --precision bf16
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from _results import machine_line, update_section
from kdlib import losses, models
from kdlib.train import autocast

MODES = {"off": (False, False), "deterministic + NaN fill": (True, True), "kdlib": (True, False)}


def set_mode(name: str) -> None:
    deterministic, fill = MODES[name]
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = fill


def steps(name: str, size: int, batch: int, n: int, precision: str) -> tuple[float, float]:
    """Seconds per step of `n` training steps, and the last loss (same seed every time)."""
    torch.manual_seed(0)
    model = models.build(name, **({"img_size": size} if name == "T2" else {}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.7).float()
    device = torch.device("cpu")
    with autocast(device, precision):  # warm-up step: allocator and oneDNN primitives
        loss = losses.dice_loss(model(x)["logits"], y)
    loss.backward()
    started = time.perf_counter()
    for _ in range(n):
        with autocast(device, precision):
            loss = losses.dice_loss(model(x)["logits"], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / n, float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="S1:20:6,T1:8:2", help="name:batch:steps,...")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args()
    rows = []
    for spec in args.models.split(","):
        name, batch, n = spec.split(":")
        times: dict[str, list[float]] = {m: [] for m in MODES}
        last_loss: dict[str, float] = {}
        for _ in range(args.repeats):
            for mode in MODES:
                set_mode(mode)
                seconds, last_loss[mode] = steps(name, args.size, int(batch), int(n), args.precision)
                times[mode].append(seconds)
        base = statistics.median(times["off"])
        same = last_loss["deterministic + NaN fill"] == last_loss["kdlib"]
        for mode in MODES:
            t = statistics.median(times[mode])
            rows.append(f"| {name} | {batch} | {mode} | {t * 1000:.0f} | {100 * (t / base - 1):+.1f}% | "
                        f"{'yes' if same else 'NO'} |")
    set_mode("kdlib")
    text = "\n".join([
        "## Deterministic mode: cost per training step (CPU)",
        "",
        f"`python benchmarks/bench_determinism.py --size {args.size} --precision {args.precision}` "
        f"({args.repeats} interleaved repeats, median). {machine_line()}.",
        "",
        "| network | batch | mode | ms / step | vs off | same loss with and without the fill |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "kdlib trains on the CPU in the `kdlib` mode: deterministic algorithms (a seed gives the "
        "same metrics), without torch's NaN fill of new memory, which changes no result.",
    ])
    print(text)
    if not args.no_write:
        update_section("determinism", text)


if __name__ == "__main__":
    main()
