"""One-command GPU check (issue 20): is kdlib right and fast on this card, and what would the
thesis profile cost here?

    python benchmarks/gpu_check.py --out DIR            # on a GPU machine: about 6-8 minutes
    python benchmarks/gpu_check.py --out DIR --tiny     # the same code on the CPU, under 60 s

Needs only Python, torch, numpy, scipy, pandas, matplotlib, scikit-image, tqdm and PyYAML
(no papermill, nbclient, jupytext, ipywidgets, nibabel or pydicom: the data is a phantom
slice cache written with numpy, `kdlib.data.phantom.write_phantom_cache`), and no network.
Writes `DIR/gpu_check.json` (rewritten after every phase, so a killed run keeps what it
measured) and `DIR/gpu_check.log`. Phases, each inside one time budget (`--budget-s`; the
default sizes the whole check for 6-8 minutes on one H100/H200, machine start excluded):

1. the `cuda` tests (tests/test_cuda.py) with pytest, or with a built-in runner where pytest is
   missing; on a CPU they skip with a message;
2. per network at `--size` (256) with the thesis's batch sizes (teachers 8, students 16):
   training images/s (forward, loss, backward, AdamW; bf16 autocast and the engine's memory
   layout on CUDA), inference images/s (batch 32, as validation), forward FLOPs per image
   (`torch.utils.flop_counter`), and the achieved fraction of the card's dense bf16 peak
   (training counted as 3x the forward FLOPs; null where the card's peak is not in
   `PEAK_BF16_TFLOPS`, e.g. on a CPU);
3. the epoch of a distilled student (T1 -> S1 and S2, B + binary PMD, cached teacher outputs,
   batch 20) against its student-only KD-off control, both through `kdlib.train.train`;
4. the thesis profile projected from these rates, at 1 seed and at 3 seeds (the runs are
   `kdlib.plan.plan_runs("thesis")`, the same enumeration as `run --plan`; image counts from
   the split files when they exist, else MSD Task09's 3,650 slices times the split shares):
   hours and EFLOP (issue 20 estimated about 0.82 EFLOP at one seed, 0.72 of it teachers);
5. several students at once: `torch.func.stack_module_state` + `vmap` over 3 S1 members'
   training gradients against the same 3 one after another (CUDA only: on the CPU vmap was
   measured slower, 0.25-0.8x at 64x64, so it is skipped with that reason).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from the vendors' data sheets; matched
# in this order against torch.cuda.get_device_name (so "L40S" before "L4", PCIe before SXM).
PEAK_BF16_TFLOPS = (
    ("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0),
    ("L40S", 362.0), ("L4", 121.0),
)
OPTIONAL_MODULES = ("papermill", "nbclient", "jupytext", "ipywidgets", "nibabel", "pydicom", "pytest")
TEACHERS = ("unet", "T1", "T2")
TRAIN_BATCH = {"S1": 16, "S2": 16, "unet": 8, "T1": 8, "T2": 8}  # baseline students 16, teachers 8
INFERENCE_BATCH = 32  # validation's batch
MSD_TASK09_SLICES = 3650  # kdlib.data.phantom: MSD Task09 has 1,051 spleen slices of 3,650
ISSUE_ESTIMATE = {"eflop_1_seed": 0.82, "teachers_eflop": 0.72, "source": "issue 20"}

MODES = {
    # cases x slices of the phantom cache, sizes, seconds per timed measurement, KD epochs
    # full: about 1 min of cuda tests, 5 x ~25 s of networks, ~1.5 min of KD epochs, the rest
    # small; 420 s is the hard limit (phases that no longer fit are skipped and say so)
    "full": dict(size=256, cases=8, slices=40, train_s=15.0, infer_s=6.0, kd_epochs=5, budget_s=420.0),
    "tiny": dict(size=32, cases=4, slices=12, train_s=0.4, infer_s=0.2, kd_epochs=2, budget_s=55.0),
}


class Check:
    def __init__(self, out: Path, mode: str, budget_s: float, size: int):
        self.out, self.mode, self.size = out, mode, size
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.result: dict = {"schema": 1, "mode": mode, "budget_s": budget_s, "size": size,
                             "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                             "phases_s": {}, "skipped": {}, "errors": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(out / "gpu_check.log", "a", buffering=1)

    def log(self, text: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f} s] {text}"
        print(line, flush=True)
        self.log_file.write(line + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        from kdlib.io import atomic_write_json

        self.result["wall_s"] = round(time.monotonic() - self.started, 1)
        atomic_write_json(self.out / "gpu_check.json", self.result)

    @contextlib.contextmanager
    def phase(self, name: str, needs_s: float = 0.0):
        """Run a phase if `needs_s` seconds are left; record its time, or why it did not run,
        or its error (the check goes on with the next phase)."""
        if self.left() < needs_s:
            self.result["skipped"][name] = f"time budget: {self.left():.0f} s left, needs about {needs_s:.0f} s"
            self.log(f"{name}: skipped ({self.result['skipped'][name]})")
            self.save()
            yield False
            return
        self.log(f"{name} ...")
        t0 = time.monotonic()
        try:
            yield True
        except Exception as exc:  # noqa: BLE001 (one failing phase must not lose the others)
            self.result["errors"][name] = f"{type(exc).__name__}: {exc}"
            self.log(f"{name}: ERROR {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
        self.result["phases_s"][name] = round(time.monotonic() - t0, 1)
        self.log(f"{name} done in {self.result['phases_s'][name]:.1f} s")
        self.save()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
           "device": device.type, "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
           else (platform.processor() or platform.machine()),
           "torch_threads": torch.get_num_threads(), "peak_bf16_tflops": peak_tflops(device),
           "missing_modules": [m for m in OPTIONAL_MODULES if _missing(m)]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1),
                   multiprocessors=props.multi_processor_count)
    return env


def _missing(name: str) -> bool:
    if name in sys.modules:
        return sys.modules[name] is None
    try:
        return importlib.util.find_spec(name) is None
    except (ValueError, ImportError):
        return True


# --------------------------------------------------------------------------- 1. cuda tests


def run_cuda_tests(check: Check) -> dict:
    tests = REPO / "tests" / "test_cuda.py"
    if not _missing("pytest"):
        ini = check.out / "pytest.ini"  # not pyproject's addopts: nbval may be missing here
        ini.write_text("[pytest]\nmarkers =\n    cuda: needs a CUDA device\n    slow: longer tests\n")
        report = check.out / "cuda_tests.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-c", str(ini),
               "--rootdir", str(REPO), "-m", "cuda", f"--junitxml={report}", str(tests)]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                              timeout=max(30, int(check.left())))
        check.log(done.stdout[-3000:] + done.stderr[-2000:])
        return {"runner": "pytest", "returncode": done.returncode, "results": _junit(report),
                **_counts(_junit(report))}
    return _builtin_runner(tests)


def _junit(path: Path) -> list[dict]:
    import xml.etree.ElementTree as ET

    if not path.is_file():
        return []
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (node.get("message") or "")[:300]
        rows.append({"name": case.get("name"), "outcome": outcome, "message": message})
    return rows


def _counts(rows: list[dict]) -> dict:
    return {k: sum(r["outcome"] == k for r in rows) for k in ("passed", "failed", "skipped")}


class _Skip(Exception):
    pass


def _builtin_runner(tests: Path) -> dict:
    """tests/test_cuda.py without pytest: a stand-in module with `mark` and `skip`, each test
    called with a fresh temporary folder as `tmp_path`."""
    import runpy
    import types

    class _Mark:
        def __getattr__(self, name):
            return lambda *a, **k: (a[0] if len(a) == 1 and callable(a[0]) and not k else (lambda f: f))

    def _skip(reason=""):
        raise _Skip(reason)

    stub = types.ModuleType("pytest")
    stub.mark, stub.skip = _Mark(), _skip
    saved = sys.modules.get("pytest")
    sys.modules["pytest"] = stub
    try:
        namespace = runpy.run_path(str(tests))
    finally:
        if saved is None:
            sys.modules.pop("pytest", None)
        else:
            sys.modules["pytest"] = saved
    rows = []
    for name, fn in namespace.items():
        if not (name.startswith("test_") and callable(fn)):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                fn(Path(tmp))
                rows.append({"name": name, "outcome": "passed", "message": ""})
            except _Skip as exc:
                rows.append({"name": name, "outcome": "skipped", "message": str(exc)})
            except Exception as exc:  # noqa: BLE001
                rows.append({"name": name, "outcome": "failed", "message": f"{type(exc).__name__}: {exc}"[:300]})
    return {"runner": "builtin (no pytest here)", "results": rows, **_counts(rows)}


# --------------------------------------------------------------------------- 2. networks


def _timed(fn, device: torch.device, seconds: float, warmup: int = 2, min_iters: int = 2) -> tuple[float, int]:
    """Seconds per call of `fn` (after `warmup` calls), timed for about `seconds`."""
    for _ in range(warmup):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - t0 < seconds:
        fn()
        n += 1
        if n % 4 == 0:
            sync(device)
    sync(device)
    return (time.perf_counter() - t0) / n, n


def forward_flops(model: torch.nn.Module, size: int, device: torch.device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def measure_network(name: str, size: int, device: torch.device, precision: str, train_s: float,
                    infer_s: float, tiny: bool) -> dict:
    from kdlib import losses, models, train

    model_kwargs = {"img_size": size} if name == "T2" else {}
    torch.manual_seed(0)
    model = models.build(name, **model_kwargs).to(device)
    layout = train.memory_format(name, device, precision)
    model = model.to(memory_format=layout)
    batch = TRAIN_BATCH[name] if not tiny else 2
    g = torch.Generator().manual_seed(0)
    image = torch.rand(batch, 1, size, size, generator=g).expand(-1, 3, -1, -1).contiguous().to(device)
    image = image.contiguous(memory_format=layout)
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.7).float().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05)

    def step():
        with train.autocast(device, precision):
            out = model(image)
            loss = losses.dice_bce_loss(out["logits"], mask)
            if "recon" in out:
                loss = loss + 0.2 * losses.recon_mse(out["recon"], image)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    train_step_s, train_iters = _timed(step, device, train_s)
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    model.eval()
    ibatch = INFERENCE_BATCH if not tiny else 4
    x = torch.rand(ibatch, 1, size, size, generator=g).expand(-1, 3, -1, -1).contiguous().to(device)
    x = x.contiguous(memory_format=layout)

    def infer():
        with torch.inference_mode(), train.autocast(device, precision):
            model(x)

    infer_s_per, infer_iters = _timed(infer, device, infer_s)
    flops = forward_flops(model.to(memory_format=torch.contiguous_format), size, device)
    peak = peak_tflops(device)
    train_ips, infer_ips = batch / train_step_s, ibatch / infer_s_per
    row = {"size": size, "batch": batch, "inference_batch": ibatch, "precision": precision,
           "memory_format": "channels_last" if layout == torch.channels_last else "nchw",
           "params": models.count_parameters(model),
           "train_images_per_s": round(train_ips, 2), "inference_images_per_s": round(infer_ips, 2),
           "timed_train_steps": train_iters, "timed_inference_batches": infer_iters,
           "forward_flops_per_image": flops, "train_flops_per_image": 3 * flops,
           "train_peak_fraction": round(3 * flops * train_ips / (peak * 1e12), 4) if peak else None,
           "inference_peak_fraction": round(flops * infer_ips / (peak * 1e12), 4) if peak else None}
    if device.type == "cuda":
        row["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.reset_peak_memory_stats(device)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


# --------------------------------------------------------------------------- 3. KD epochs


def kd_epochs(check: Check, cache: Path, split: Path, device: torch.device, precision: str, epochs: int) -> dict:
    import pandas as pd

    from kdlib import losses, train

    runs = check.out / "runs"
    t0 = time.monotonic()
    teacher = train.train(train.teacher_config("T1", cache, split, epochs=1, precision=precision),
                          runs, device=device.type, progress=False)
    result = {"teacher": "T1", "teacher_epoch_s": round(time.monotonic() - t0, 2)}
    for student in ("S1", "S2"):
        if check.left() < 15:
            result[student] = {"skipped": "time budget"}
            continue
        kd = losses.kd_config_for("T1", student, scales=("B",), pmd="binary")
        kd_cfg = train.kd_run_config(teacher, student, kd, cache, split, epochs=epochs, precision=precision,
                                     checkpoint_seconds=1e9)
        control = train.control_config(student, cache, split, epochs=epochs, precision=precision,
                                       checkpoint_seconds=1e9)
        train._TEACHER_OUTPUTS.clear()
        t1 = time.monotonic()
        kd_run = train.train(kd_cfg, runs, device=device.type, progress=False)
        kd_total = time.monotonic() - t1
        control_run = train.train(control, runs, device=device.type, progress=False)
        kd_hist, ctl_hist = pd.read_csv(kd_run / "history.csv"), pd.read_csv(control_run / "history.csv")
        # the first epoch pays the teacher pass, cudnn's search and allocator warm-up
        steady = lambda h: float(h["seconds"].iloc[1:].median() if len(h) > 1 else h["seconds"].iloc[0])  # noqa: E731
        kd_s, ctl_s = steady(kd_hist), steady(ctl_hist)
        images = len(train.load_split(split)["student_train"])
        result[student] = {"kd_epoch_s": round(kd_s, 4), "student_epoch_s": round(ctl_s, 4),
                           "ratio": round(kd_s / ctl_s, 3) if ctl_s > 0 else None,
                           "kd_first_epoch_s": round(float(kd_hist["seconds"].iloc[0]), 3),
                           "kd_run_s": round(kd_total, 2), "epochs": epochs, "train_images": images,
                           "batch_size": kd_cfg.batch_size, "kd": "T1 -> " + student + " B + binary PMD",
                           "teacher_cache_bytes": train.teacher_outputs_bytes()}
    train._TEACHER_OUTPUTS.clear()
    return result


# --------------------------------------------------------------------------- 4. projection


def projection(measured: dict, kd: dict, size_override: int | None) -> dict:
    from kdlib import plan

    runs = plan.plan_runs("thesis")
    if size_override is not None:  # --tiny: the rates are at another size; exercise the code only
        runs = [dict(r, size=size_override) for r in runs]
    measurements = {"networks": measured, "kd_epoch": {k: v for k, v in kd.items() if isinstance(v, dict)}}
    out = {"profile": "thesis", "runs": len(runs), "cache_slices_assumed":
           None if all(r["train_images"] is not None for r in runs) else MSD_TASK09_SLICES,
           "issue_estimate": ISSUE_ESTIMATE}
    for label, chosen in (("seeds_1", [r for r in runs if r["seed"] == 42]), ("seeds_3", runs)):
        seconds = teacher_s = flop = teacher_flop = 0.0
        unmeasured = []
        for r in chosen:
            if r["shared_with"]:
                continue
            s = plan.run_seconds(r, measurements, MSD_TASK09_SLICES)
            net = measured.get(r["model"]) or {}
            train_images = r["train_images"] if r["train_images"] is not None else MSD_TASK09_SLICES * r["train_share"]
            val_images = r["val_images"] if r["val_images"] is not None else MSD_TASK09_SLICES * r["val_share"]
            if net.get("forward_flops_per_image"):
                f = r["epochs"] * (3 * train_images + val_images) * net["forward_flops_per_image"]
                flop += f
                teacher_flop += f if r["role"] == "teacher" else 0.0
            if s is None:
                unmeasured.append(r["model"])
                continue
            seconds += s
            teacher_s += s if r["role"] == "teacher" else 0.0
        out[label] = {"runs": sum(1 for r in chosen if not r["shared_with"]),
                      "hours_at_caps": round(seconds / 3600, 3), "teacher_hours": round(teacher_s / 3600, 3),
                      "eflop_at_caps": round(flop / 1e18, 4), "teacher_eflop": round(teacher_flop / 1e18, 4),
                      "unmeasured_runs": len(unmeasured)}
    out["note"] = ("at the epoch caps (early stopping can only shorten it), from step rates x images per epoch "
                   "(+ validation at the inference rate; distilled students x the measured KD/student epoch "
                   "ratio); FLOPs = epochs x (3 x training + validation images) x forward FLOPs per image")
    if size_override is not None:
        out["note"] = "TINY MODE: rates measured at a tiny size, so these numbers are not a projection. " + out["note"]
    return out


# --------------------------------------------------------------------------- 5. stacked students


def stacked_students(device: torch.device, size: int, precision: str, seconds: float, members: int = 3) -> dict:
    from torch.func import functional_call, grad, replace_all_batch_norm_modules_, stack_module_state, vmap

    from kdlib import losses, models, train

    batch = 20  # the distilled students' batch
    nets = []
    for seed in range(members):
        torch.manual_seed(seed)
        net = models.build("S1").to(device)
        replace_all_batch_norm_modules_(net)  # vmap cannot update running stats in place
        nets.append(net.train())
    params, buffers = stack_module_state(nets)
    base = models.build("S1").to("meta")
    replace_all_batch_norm_modules_(base)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(members, batch, 1, size, size, generator=g).expand(-1, -1, 3, -1, -1).contiguous().to(device)
    y = (torch.rand(members, batch, 1, size, size, generator=g) > 0.7).float().to(device)

    def loss_of(p, b, xi, yi):
        with train.autocast(device, precision):
            return losses.dice_loss(functional_call(base, (p, b), (xi,))["logits"], yi)

    stacked_grad = vmap(grad(loss_of), in_dims=(0, 0, 0, 0))

    def stacked():
        grads = stacked_grad(params, buffers, x, y)
        with torch.no_grad():
            for k in params:
                params[k].sub_(1e-3 * grads[k])

    def sequential():
        for i, net in enumerate(nets):
            net.zero_grad(set_to_none=True)
            with train.autocast(device, precision):
                loss = losses.dice_loss(net(x[i])["logits"], y[i])
            loss.backward()
            with torch.no_grad():
                for p in net.parameters():
                    p.sub_(1e-3 * p.grad)

    seq_s, seq_n = _timed(sequential, device, seconds)
    st_s, st_n = _timed(stacked, device, seconds)
    images = members * batch
    return {"model": "S1", "members": members, "batch": batch, "size": size, "precision": precision,
            "sequential_images_per_s": round(images / seq_s, 2), "stacked_images_per_s": round(images / st_s, 2),
            "gain": round(seq_s / st_s, 3), "timed": {"sequential": seq_n, "stacked": st_n},
            "note": "training-step gradients (vmap(grad)) + an SGD update, BatchNorm without running stats; "
                    "no CUDA graphs"}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json and gpu_check.log")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU, under 60 s (CI)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="time limit of the whole check (default: 420 full, 55 tiny)")
    parser.add_argument("--size", type=int, default=None, help="slice size (default: 256 full, 32 tiny)")
    parser.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    args = parser.parse_args(argv)
    mode = MODES["tiny" if args.tiny else "full"]
    size = args.size or mode["size"]
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda" if torch.cuda.is_available() else "cpu"))
    check = Check(args.out, "tiny" if args.tiny else "full", args.budget_s or mode["budget_s"], size)
    if args.tiny:  # one thread: CI machines are shared, and oversubscribed OpenMP threads spin
        torch.set_num_threads(1)
    from kdlib import train

    precision = train.resolve_precision("auto", device) if device.type == "cuda" else "fp32"
    check.result["environment"] = environment(device)
    check.result["precision"] = precision
    check.log(f"device {check.result['environment']['device_name']}, torch {torch.__version__}, "
              f"precision {precision}, budget {check.left():.0f} s")
    if device.type != "cuda" and not args.tiny:
        check.log("no CUDA device: running the full-size check on the CPU will not finish in its budget")
    check.save()

    with check.phase("cuda_tests", needs_s=20 if not args.tiny else 5) as ok:
        if ok:
            check.result["cuda_tests"] = run_cuda_tests(check)
            c = check.result["cuda_tests"]
            check.log(f"cuda tests: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")

    with check.phase("data", needs_s=1) as ok:
        if ok:
            from kdlib.data import SliceCache, make_split, save_split
            from kdlib.data.phantom import write_phantom_cache

            cache = write_phantom_cache(check.out / f"cache-{size}", cases=mode["cases"], seed=0, size=size,
                                        slices=mode["slices"])
            split = check.out / f"split-{size}.json"
            save_split(make_split(SliceCache.load(cache), mode="patient", seed=42), split)
            check.result["data"] = {"cache": cache.name, "slices": len(SliceCache.load(cache)), "synthetic": True}

    measured: dict = {}
    check.result["networks"] = measured
    order = ("S1", "S2", "unet", "T1", "T2")
    for name in order:
        per = mode["train_s"] + mode["infer_s"]
        with check.phase(f"network_{name}", needs_s=per * 2 + (5 if not args.tiny else 0.5)) as ok:
            if ok:
                measured[name] = measure_network(name, size, device, precision, mode["train_s"],
                                                 mode["infer_s"], args.tiny)
                r = measured[name]
                check.log(f"{name}: train {r['train_images_per_s']} img/s, inference {r['inference_images_per_s']} "
                          f"img/s, {r['forward_flops_per_image'] / 1e9:.2f} GFLOP/image forward, peak fraction "
                          f"{r['train_peak_fraction']}")

    kd: dict = {}
    with check.phase("kd_epoch", needs_s=40 if not args.tiny else 5) as ok:
        if ok and "data" in check.result:
            kd = kd_epochs(check, check.out / f"cache-{size}", check.out / f"split-{size}.json", device,
                           precision, mode["kd_epochs"])
            check.result["kd_epoch"] = kd
            check.log(f"KD epochs: {json.dumps(kd)}")

    with check.phase("projection", needs_s=-1e9) as ok:  # seconds, from what was measured: always
        if ok:
            check.result["projection"] = projection(measured, kd, size if args.tiny or size != 256 else None)
            p = check.result["projection"]
            check.log(f"thesis projection: 1 seed {p['seeds_1']}, 3 seeds {p['seeds_3']}")

    with check.phase("stacked_students", needs_s=20 if not args.tiny else 0) as ok:
        if ok:
            if device.type != "cuda":
                check.result["stacked_students"] = {
                    "skipped": "CPU: vmap over stacked students was measured slower than sequential there "
                               "(0.25-0.8x at 64x64, issue 20), so it is a GPU path only"}
            else:
                check.result["stacked_students"] = stacked_students(device, size, precision, 8.0)
            check.log(f"stacked students: {check.result['stacked_students']}")

    check.result["ended"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    check.save()
    check.log(f"wrote {check.out / 'gpu_check.json'} in {check.result['wall_s']} s")
    failed = (check.result.get("cuda_tests") or {}).get("failed", 0)
    return 1 if failed or check.result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
