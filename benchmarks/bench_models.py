"""Throughput of the five networks and the cost of the original's KD training step.

    python benchmarks/bench_models.py            # CPU (or CUDA if available), writes RESULTS.md
    python benchmarks/bench_models.py --fast     # CUDA: bf16 autocast + channels_last
    python benchmarks/bench_models.py --quick --no-record   # smoke test (64x64, 1 iteration)

Measures, at 256x256 input:
- inference: forward under torch.inference_mode, eval mode, images/s;
- training: forward + backward + AdamW step (the teachers' and baseline students' optimiser),
  images/s, with each model's own training loss (Dice-BCE, + 0.2 recon MSE for T1/T2);
- the KD step of T1->S1 as the original ran it (RMSprop, teacher forward under no_grad at
  every step, faithful random projectors, E+B+D InfoNCE + PMD) against a student-only step
  and a KD step that reads cached teacher outputs instead of running the teacher.

Each measurement runs warm-up iterations, then timed iterations until both a minimum count
and a minimum time are reached (fewer for the big teachers on CPU). The markdown goes to
section "bench_models" of benchmarks/RESULTS.md ("bench_models_cuda" for CUDA runs).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import machine_line, update_section  # noqa: E402
from kdlib.losses import Distiller, dice_bce_loss, dice_loss, kd_config_for, recon_mse  # noqa: E402
from kdlib.models import MODEL_NAMES, build, count_parameters  # noqa: E402

# batch sizes (CPU, CUDA)
BATCH = {"S1": (8, 64), "S2": (8, 64), "unet": (2, 16), "T1": (2, 16), "T2": (2, 16)}
KD_BATCH = (4, 20)   # the original used 20


class Bench:
    def __init__(self, device: torch.device, fast: bool, min_time: float, quick: bool):
        self.device, self.fast, self.min_time, self.quick = device, fast, min_time, quick

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def autocast(self):
        if not self.fast:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.fast else model

    def images(self, batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, 3, size, size, generator=g)
        y = (torch.rand(batch, 1, size, size, generator=g) > 0.8).float()
        x, y = x.to(self.device), y.to(self.device)
        if self.fast:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def time(self, step, batch: int, warmup: int, min_iters: int, max_iters: int) -> dict:
        """Run `step()` warm-up times, then until min_iters and min_time (or max_iters)."""
        if self.quick:
            warmup, min_iters, max_iters = 1, 1, 1
        for _ in range(warmup):
            step()
        self.sync()
        times = []
        start = time.perf_counter()
        while len(times) < max_iters:
            t0 = time.perf_counter()
            step()
            self.sync()
            times.append(time.perf_counter() - t0)
            if len(times) >= min_iters and time.perf_counter() - start >= self.min_time:
                break
        total = sum(times)
        return {"iters": len(times), "batch": batch, "sec_per_iter": total / len(times),
                "img_per_s": batch * len(times) / total}


def seg_training_loss(name: str, out: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if name in ("T1", "T2"):
        return dice_bce_loss(out["logits"], y) + 0.2 * recon_mse(out["recon"], x)
    return dice_loss(out["logits"], y) if name == "S1" else dice_bce_loss(out["logits"], y)


def bench_model(b: Bench, name: str, size: int) -> dict:
    cuda = b.device.type == "cuda"
    batch = BATCH[name][1 if cuda else 0]
    big = name in ("unet", "T1", "T2") and not cuda
    torch.manual_seed(0)
    model = b.prepare(build(name, **({"img_size": size} if name == "T2" else {})))
    x, y = b.images(batch, size)
    row = {"name": name, "params": count_parameters(model)}

    model.eval()

    def infer():
        with torch.inference_mode(), b.autocast():
            model(x)

    row["infer"] = b.time(infer, batch, warmup=1 if big else 2, min_iters=2 if big else 5,
                          max_iters=4 if big else 200)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                            weight_decay=0.05)

    def train():
        opt.zero_grad(set_to_none=True)
        with b.autocast():
            out = model(x)
        seg_training_loss(name, out, x, y).backward()
        opt.step()

    row["train"] = b.time(train, batch, warmup=1, min_iters=1 if big else 3,
                          max_iters=2 if big else 100)
    del model, opt
    if cuda:
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()
    return row


def bench_kd(b: Bench, size: int) -> dict:
    cuda = b.device.type == "cuda"
    batch = KD_BATCH[1 if cuda else 0]
    torch.manual_seed(0)
    teacher = b.prepare(build("T1")).eval().requires_grad_(False)
    student = b.prepare(build("S1")).train()
    cfg = kd_config_for("T1", "S1")          # original: E+B+D, faithful PMD, random projectors
    dist = Distiller(cfg, teacher.feature_info, student.feature_info, "T1", "S1")
    opt = torch.optim.RMSprop(student.parameters(), lr=1e-2, alpha=0.99, eps=1e-8)
    x, y = b.images(batch, size, seed=1)
    with torch.no_grad(), b.autocast():
        cached = {k: v.to(torch.bfloat16) for k, v in teacher(x).items()}

    def student_only():
        opt.zero_grad(set_to_none=True)
        with b.autocast():
            loss = dice_loss(student(x)["logits"], y)
        loss.backward()
        opt.step()

    def kd_cached():
        opt.zero_grad(set_to_none=True)
        with b.autocast():
            loss = dist(student(x), cached, y)["total"]
        loss.backward()
        opt.step()

    def kd_teacher():
        opt.zero_grad(set_to_none=True)
        with torch.no_grad(), b.autocast():
            t_out = teacher(x)
        with b.autocast():
            loss = dist(student(x), t_out, y)["total"]
        loss.backward()
        opt.step()

    res = {"batch": batch,
           "student_only": b.time(student_only, batch, 2, 3, 100),
           "kd_cached": b.time(kd_cached, batch, 1, 3, 100),
           "kd_teacher": b.time(kd_teacher, batch, 1, 5 if cuda else 1, 100 if cuda else 3)}
    return res


def markdown(rows: list[dict], kd: dict, args, device_desc: str, elapsed: float,
             load: tuple[float, float]) -> str:
    mode = "bf16 autocast + channels_last" if args.fast else "float32"
    lines = [f"## Model throughput (`benchmarks/bench_models.py`{' --fast' if args.fast else ''})",
             "", f"Machine: {machine_line()}. Device: {device_desc}, {mode}, input "
             f"{args.size}x{args.size}. Total runtime {elapsed:.0f} s; 1-min load average "
             f"{load[0]:.1f} at start, {load[1]:.1f} at end (other jobs share the machine: "
             "CPU numbers are indicative).", "",
             "| model | params | batch | inference img/s | train img/s (fwd+bwd+AdamW) | timed iters (inf/train) |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['params']:,} | {r['infer']['batch']} | "
                     f"{r['infer']['img_per_s']:.2f} | {r['train']['img_per_s']:.2f} | "
                     f"{r['infer']['iters']}/{r['train']['iters']} |")
    so, kc, kt = kd["student_only"], kd["kd_cached"], kd["kd_teacher"]
    lines += ["", f"KD step T1->S1 as the original (RMSprop, E+B+D InfoNCE, faithful PMD, random "
              f"projectors), batch {kd['batch']}:", "",
              "| step | s/step | img/s | cost vs student-only |", "|---|---:|---:|---:|"]
    for label, r in (("student only (Dice)", so), ("KD, cached teacher outputs (bf16)", kc),
                     ("KD, teacher forward every step (original)", kt)):
        lines.append(f"| {label} | {r['sec_per_iter']:.3f} | {r['img_per_s']:.2f} | "
                     f"{r['sec_per_iter'] / so['sec_per_iter']:.1f}x |")
    lines += ["", f"Running the teacher at every step costs {kt['sec_per_iter'] / kc['sec_per_iter']:.1f}x "
              "a KD step that reuses cached teacher outputs (the teacher is frozen, and there is no "
              "augmentation, so its outputs per image never change)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--fast", action="store_true", help="bf16 autocast + channels_last")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--models", default=",".join(MODEL_NAMES))
    ap.add_argument("--quick", action="store_true", help="one iteration each (smoke test)")
    ap.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    ap.add_argument("--md-out", help="also write the markdown to this file")
    args = ap.parse_args(argv)

    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        desc = torch.cuda.get_device_name(device)
    else:
        desc = f"CPU, {torch.get_num_threads()} threads"
    b = Bench(device, args.fast, args.min_time, args.quick)
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    rows = []
    for name in [n.strip() for n in args.models.split(",") if n.strip()]:
        row = bench_model(b, name, args.size)
        rows.append(row)
        print(f"{name:5s} infer {row['infer']['img_per_s']:8.2f} img/s  "
              f"train {row['train']['img_per_s']:8.2f} img/s", flush=True)
    kd = bench_kd(b, args.size)
    print("KD T1->S1: " + ", ".join(f"{k} {v['sec_per_iter']:.3f} s/step" for k, v in kd.items()
                                    if isinstance(v, dict)), flush=True)
    md = markdown(rows, kd, args, desc, time.perf_counter() - t0, (load0, os.getloadavg()[0]))
    print(md)
    if args.md_out:
        Path(args.md_out).write_text(md + "\n")
    if not args.no_record and not args.quick:
        update_section("bench_models" if device.type == "cpu" else "bench_models_cuda", md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
