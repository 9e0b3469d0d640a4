"""Cost of a distillation epoch against a student-only epoch, measured in one run.

Three ways to train KD(T1,S1) for one epoch over the same images (batch 20, RMSprop):
- `student only`: the baseline student, no teacher;
- `kdlib`: the teacher's taps computed once beforehand (not timed per epoch: paid once per
  teacher for all epochs and configurations), projector applied at the teacher's resolution;
- `original`: a teacher forward at every step, as the original code did.
The one-off cost of computing the teacher's outputs is reported separately.

    python benchmarks/bench_kd_overhead.py --size 96 --images 120
"""
from __future__ import annotations

import argparse
import time

import torch

from _results import machine_line, update_section
from kdlib import losses, models


def one_epoch(student, optimizer, images, masks, batch, step_fn) -> float:
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        x, y = images[start:start + batch], masks[start:start + batch]
        out = student(x)
        loss = step_fn(out, x, y, slice(start, start + batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--scales", default="B", help="e.g. B or E+B+D")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per variant (median)")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(args.images, 3, args.size, args.size)
    masks = (torch.rand(args.images, 1, args.size, args.size) > 0.7).float()
    teacher = models.build("T1").eval()
    scales = tuple(args.scales.split("+"))
    kd = losses.kd_config_for("T1", "S1", scales=scales, pmd="binary")
    taps = [{"E": "enc", "B": "bottleneck", "D": "dec"}[s] for s in scales] + ["logits"]

    started = time.perf_counter()
    with torch.inference_mode():
        cached = {t: [] for t in taps}
        for start in range(0, len(images), 20):
            out = teacher(images[start:start + 20])
            for t in taps:
                cached[t].append(out[t])
        cached = {t: torch.cat(v) for t, v in cached.items()}
    teacher_once = time.perf_counter() - started

    def student_only(out, x, y, rows):
        return losses.dice_loss(out["logits"], y)

    def make(variant):
        student = models.build("S1")
        distiller = losses.Distiller(kd, teacher.feature_info, student.feature_info)
        params = list(student.parameters()) + list(distiller.parameters())
        optimizer = torch.optim.RMSprop(params, lr=1e-2)

        def kd_cached(out, x, y, rows):
            return distiller(out, {t: v[rows] for t, v in cached.items()}, y)["total"]

        def kd_original(out, x, y, rows):
            with torch.no_grad():
                t_out = teacher(x)
            return distiller(out, t_out, y)["total"]

        fn = {"student only": student_only, "kdlib (teacher cached)": kd_cached,
              "original (teacher every step)": kd_original}[variant]
        return student, optimizer, fn

    times = {}
    for variant in ("student only", "kdlib (teacher cached)", "original (teacher every step)"):
        student, optimizer, fn = make(variant)
        one_epoch(student, optimizer, images[:40], masks[:40], 20, fn)  # warm-up
        runs = sorted(one_epoch(student, optimizer, images, masks, 20, fn) for _ in range(args.epochs))
        times[variant] = runs[len(runs) // 2]
        print(f"{variant:<32} {times[variant]:.2f} s/epoch")
    base = times["student only"]
    lines = [f"### KD overhead: T1->S1 ({'+'.join(scales)} + binary PMD), {args.images} images at "
             f"{args.size}x{args.size}, batch 20", "", f"Machine: {machine_line()}", "",
             "| variant | s / epoch | ratio to student-only |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {v / base:.2f} |" for k, v in times.items()]
    lines += ["", f"One-off teacher pass over the {args.images} images (paid once per teacher, "
              f"shared by all epochs and configurations): {teacher_once:.2f} s."]
    update_section(f"bench_kd_overhead_{args.size}_{'_'.join(scales)}", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
