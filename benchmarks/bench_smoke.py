"""Wall time and disk use of a batch run, alone or beside a CPU-burning process.

    python benchmarks/bench_smoke.py                    # idle machine: the README's numbers
    python benchmarks/bench_smoke.py --busy             # beside a 2-thread torch matmul loop
    python benchmarks/bench_smoke.py --only 01 --json /tmp/smoke.json

Runs `python -m kdlib run --profile PROFILE --out <empty temporary folder>` and records the
seconds of each notebook (from the runner's progress lines), the total, and the megabytes
left in the output folder. With `--busy`, a second process multiplies matrices on
`--busy-threads` threads during the whole run; it starts `--busy-warmup` seconds early, so that
the runner, which samples the busy cores when it starts, sees it (the warm-up was
sized for the 1-minute load average the runner read before).

The run gets the environment a user gets by default: OMP_NUM_THREADS, MKL_NUM_THREADS and
OMP_WAIT_POLICY are removed (the runner chooses them), unless `--keep-thread-env`.
Run it on an otherwise idle machine: `--wait-idle` waits until the load has settled.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kdlib import threads  # noqa: E402

DONE_LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+) done in ([0-9.]+) s")
# the busy neighbour: a plain torch loop, as another user's training job would be
BURNER = """import signal, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a = torch.randn(384, 384)
count, started = 0, time.perf_counter()
signal.signal(signal.SIGTERM, lambda *_: (print(count / (time.perf_counter() - started)), sys.exit(0)))
while True:
    a = torch.tanh(a @ a)
    count += 1
"""


def machine() -> str:
    """CPU model, cores, torch version (without importing torch into this process)."""
    from importlib.metadata import version

    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, torch {version('torch')}, Python {platform.python_version()}"


def folder_megabytes(folder: Path) -> dict[str, float]:
    """MB (10^6 bytes) of the files under `folder`, in total and per top-level entry."""
    sizes: dict[str, int] = {}
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            top = path.relative_to(folder).parts[0]
            sizes[top] = sizes.get(top, 0) + path.stat().st_size
    by_entry = {name: round(size / 1e6, 3) for name, size in sorted(sizes.items())}
    return {"total": round(sum(sizes.values()) / 1e6, 3), **by_entry}


def thread_free_env(keep: bool) -> dict[str, str]:
    env = dict(os.environ)
    if not keep:
        for name in (*threads.THREAD_VARIABLES, threads.WAIT_POLICY):
            env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def wait_until_idle(max_load: float, timeout: float) -> float:
    deadline = time.time() + timeout
    while (load := threads.load_average() or 0.0) > max_load and time.time() < deadline:
        time.sleep(5)
    return load


def start_burner(n_threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(n_threads))
    env.pop(threads.WAIT_POLICY, None)  # an ordinary neighbour: default OpenMP spinning
    return subprocess.Popen([sys.executable, "-c", BURNER, str(n_threads)], env=env,
                            stdout=subprocess.PIPE, text=True)


def stop_burner(burner: subprocess.Popen) -> float | None:
    """Stop the busy process; return its matmul iterations per second."""
    burner.terminate()
    try:
        out, _ = burner.communicate(timeout=30)
        return round(float(out.strip().splitlines()[-1]), 2)
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        burner.kill()
        burner.communicate()
        return None


def measure(command: list[str], out: Path, env: dict[str, str]) -> dict:
    """Run `command` (a batch run writing into `out`), echoing its log; time it."""
    per_notebook: dict[str, float] = {}
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        log.append(line)
        if match := DONE_LINE.match(line):
            per_notebook[match.group(3)] = float(match.group(4))
    proc.wait()
    total = time.perf_counter() - started
    return {"returncode": proc.returncode, "total_s": round(total, 1), "notebooks_s": per_notebook,
            "disk_mb": folder_megabytes(out) if out.exists() else {"total": 0.0},
            "log_tail": "".join(log[-5:]) if proc.returncode else ""}


def markdown(result: dict) -> str:
    command = f"python -m kdlib run --profile {result['profile']}"
    if result["only"]:
        command += f" --only {result['only']}"
    beside = (f"beside a {result['busy_threads']}-thread torch matmul process "
              f"({result['busy_iterations_per_s']} matmul iterations/s over its life)") if result["busy"] else "alone"
    rows = "\n".join(f"| {stem} | {sec:.1f} |" for stem, sec in result["notebooks_s"].items())
    disk = ", ".join(f"{k} {v:.1f}" for k, v in result["disk_mb"].items() if k != "total")
    return (f"### `{command}`, {beside}\n\n"
            f"Machine: {result['machine']}; {result['cores']} cores, 1-min load "
            f"{result['load_before']:.2f} at start, so the runner used {result['threads']} thread(s). "
            f"{result['date']}.\n\n"
            f"| notebook | seconds |\n|---|---:|\n{rows}\n"
            f"| **total (wall, with start-up)** | **{result['total_s']:.1f}** |\n\n"
            f"Disk written: **{result['disk_mb']['total']:.1f} MB** ({disk}).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--only", default=None, help="comma-separated notebook prefixes, e.g. 01")
    parser.add_argument("--busy", action="store_true", help="run beside a CPU-burning process")
    parser.add_argument("--busy-threads", type=int, default=2)
    parser.add_argument("--busy-warmup", type=float, default=60.0,
                        help="seconds the busy process runs before the batch run starts")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="first wait up to this long for the 1-min load to fall below 0.3")
    parser.add_argument("--keep-thread-env", action="store_true",
                        help="pass OMP_NUM_THREADS/MKL_NUM_THREADS/OMP_WAIT_POLICY on to the run")
    parser.add_argument("--keep", type=Path, default=None, help="write the outputs here and keep them")
    parser.add_argument("--json", type=Path, default=None, help="also write the result as JSON")
    parser.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()

    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep} is not empty: the disk figure needs an empty folder")
    out = args.keep or Path(tempfile.mkdtemp(prefix="kdlib-bench-smoke-")) / "out"
    command = [sys.executable, "-m", "kdlib", "run", "--profile", args.profile, "--out", str(out)]
    if args.only:
        command += ["--only", args.only]
    env = thread_free_env(args.keep_thread_env)
    if args.wait_idle:
        wait_until_idle(0.3, args.wait_idle)
    burner = start_burner(args.busy_threads) if args.busy else None
    try:
        if burner:
            time.sleep(args.busy_warmup)
        choice = threads.choose(environ=env)
        result = measure(command, out, env)
    finally:
        rate = stop_burner(burner) if burner else None
        if not args.keep:
            shutil.rmtree(out.parent, ignore_errors=True)
    result.update(profile=args.profile, only=args.only, busy=args.busy, busy_threads=args.busy_threads,
                  busy_iterations_per_s=rate, cores=choice.cores, load_before=choice.load or 0.0,
                  threads=choice.threads, machine=machine(),
                  date=time.strftime("%Y-%m-%d %H:%M:%S"))
    print()
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if result["returncode"] != 0:
        print(f"the run failed (exit {result['returncode']}): not recorded", file=sys.stderr)
        return 1
    if args.write_results:
        from _results import update_section

        update_section(f"bench_smoke_{args.profile}_{'busy' if args.busy else 'idle'}", markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
