"""How many torch/OpenMP threads to use: as many as there are free CPU cores.

Why: on a machine where other work runs, two 2-thread jobs on 2 cores slowed each other
3-5x, not 2x, because OpenMP threads that wait for work spin and steal the cores the
other job needs. Using only the free cores, and letting idle OpenMP threads sleep
(`OMP_WAIT_POLICY=PASSIVE`), keeps a busy machine's cost near its fair share.

`python -m kdlib run` chooses once, before its first notebook, and hands the choice to
the kernels through their environment (`kernel_environment`). Interactive sessions call
`configure()`. Settings the user made (`OMP_NUM_THREADS`, `MKL_NUM_THREADS`,
`OMP_WAIT_POLICY`) always win.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Mapping

log = logging.getLogger(__name__)

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
WAIT_POLICY = "OMP_WAIT_POLICY"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """The 1-minute load average (runnable processes), or None where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def _cpu_times() -> tuple[float, float] | None:
    """(total, idle) jiffies of all CPUs from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as handle:
            fields = [float(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    return sum(fields[:8]), fields[3] + fields[4]  # idle + iowait


def busy_cores(interval: float = 0.5) -> float | None:
    """Cores kept busy by other work right now: the non-idle share of all CPUs over
    `interval` seconds (Linux /proc/stat), else the 1-minute load average.

    Why not the load average alone: it trails by about a minute, so right after another job
    ends it still reports that job and a new run would take too few threads."""
    first = _cpu_times()
    if first is None:
        return load_average()
    time.sleep(interval)
    second = _cpu_times()
    total, idle = second[0] - first[0], second[1] - first[1]
    if total <= 0:
        return load_average()
    cpus = os.cpu_count() or 1
    return round(cpus * (total - idle) / total, 2)


def threads_for(cores: int, load: float | None) -> int:
    """Threads that fit in the free cores: cores minus the load, rounded, at least 1."""
    if load is None:
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def _user_threads(environ: Mapping[str, str]) -> int | None:
    value = environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cores: int
    load: float | None
    user_set: bool  # True when OMP_NUM_THREADS came from the user and was kept

    @property
    def busy(self) -> bool:
        """Other work runs: we use fewer threads than cores, or the load exceeds the cores."""
        if self.load is None:
            return False
        return self.load > self.cores or (not self.user_set and self.threads < self.cores)

    def warning(self) -> str | None:
        """One line saying what was chosen on a busy machine; None on an idle one."""
        if not self.busy:
            return None
        state = "oversubscribed" if self.load > self.cores else "busy"
        how = "as OMP_NUM_THREADS asks" if self.user_set else "to fit the free cores"
        return (f"machine {state} (CPU load {self.load:.1f} on {self.cores} cores): using "
                f"{self.threads} torch/OpenMP thread(s) {how}; expect longer run times than on an "
                f"idle machine")


def choose(environ: Mapping[str, str] | None = None, cores: int | None = None,
           load: float | None = None) -> ThreadChoice:
    """Thread count for this machine now (the user's OMP_NUM_THREADS if set)."""
    environ = os.environ if environ is None else environ
    cores = usable_cores() if cores is None else cores
    load = busy_cores() if load is None else load
    user = _user_threads(environ)
    if user is not None:
        return ThreadChoice(user, cores, load, user_set=True)
    return ThreadChoice(threads_for(cores, load), cores, load, user_set=False)


def kernel_environment(choice: ThreadChoice, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables to add to a child process's environment (nothing the user already set).

    They must be in place before the child starts: OpenMP reads them when it loads.
    """
    environ = os.environ if environ is None else environ
    wanted = {name: str(choice.threads) for name in THREAD_VARIABLES}
    wanted[WAIT_POLICY] = "PASSIVE"  # idle OpenMP threads sleep instead of spinning
    return {name: value for name, value in wanted.items() if not environ.get(name)}


def configure(warn: bool = True) -> ThreadChoice:
    """Choose the thread count and apply it to torch in this process; return the choice.

    For notebooks opened interactively and scripts: a batch run's kernels already start
    with OMP_NUM_THREADS set by the runner, and the user's own setting is kept. (The wait
    policy cannot be changed here: OpenMP read it when torch was imported.)
    """
    import torch

    choice = choose()
    torch.set_num_threads(choice.threads)
    if warn and (message := choice.warning()):
        log.warning("kdlib: %s", message)
    return choice
