"""Where a result came from: the code's commit, whether the tree was clean, the data's checksum.

Recorded in every run's `config.json` under `provenance`. It is a record, not an input: it
is not part of a run's identity (hash) and the "different configuration" check ignores it,
so committing code does not retrain anything.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def cpu_name(flags: bool = True) -> str:
    """The CPU's model name (Linux /proc/cpuinfo), with its bf16 flags unless `flags=False`
    (what every timing is recorded with)."""
    name, found = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                found.update(line.split(":", 1)[1].split())
    except OSError:
        pass
    if not flags:
        return name
    bf16 = sorted(found & {"amx_bf16", "amx_tile", "avx512_bf16"})
    return f"{name} ({', '.join(bf16) if bf16 else 'no native bf16'})"


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# what decides a result; README.md and figures/ are outputs (notebook 05 rewrites the README's
# results section), so their changes do not make the code unclean
CODE_PATHS = ("kdlib", "notebooks", "benchmarks", "pyproject.toml", "requirements.txt")


def code_state() -> dict[str, Any]:
    """`commit` (full hash, or "unknown" outside a git checkout), `clean` (True when no
    tracked file of the code (`CODE_PATHS`) differs from that commit; None when unknown) and
    `changed`: exactly those files (paths relative to the repository, sorted; absent when
    unknown)."""
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return {"commit": "unknown", "clean": None}
    names = _git("diff", "--name-only", "HEAD", "--", *CODE_PATHS)
    if names is None:
        return {"commit": commit, "clean": None}
    changed = sorted(line for line in names.splitlines() if line.strip())
    return {"commit": commit, "clean": not changed, "changed": changed}


def commit_stamp(state: dict[str, Any]) -> str:
    """What a figure's footer says about the code: the short commit, and for a tree whose code
    differed from it, `+uncommitted: <exactly the files that differed>` (never a bare
    `+uncommitted`); "unknown" outside a git checkout."""
    commit = str(state.get("commit") or "unknown")
    if commit == "unknown":
        return commit
    short = commit[:7]
    if state.get("clean") is False:
        changed = state.get("changed")
        return f"{short}+uncommitted: " + (", ".join(changed) if changed else
                                           "changed files not recorded")
    return short if state.get("clean") is True else f"{short} (tree state unknown)"


def run_provenance(data_checksum: str, split_checksum: str | None = None) -> dict[str, Any]:
    """The provenance block of a run: code state, data and split checksums, UTC date."""
    record = dict(code_state())
    record["data_checksum"] = data_checksum
    if split_checksum is not None:
        record["split_checksum"] = split_checksum
    record["date"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return record
