"""Write one benchmark's section of benchmarks/RESULTS.md, leaving the other sections alone.

Each benchmark owns the text between `<!-- NAME:start -->` and `<!-- NAME:end -->`.
"""
from __future__ import annotations

import platform
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kdlib import provenance  # noqa: E402
from kdlib.io import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun the script to refresh it.\n"


def cpu_name() -> str:
    """Model name and the bf16 flags of the CPU (Linux /proc/cpuinfo)."""
    return provenance.cpu_name(flags=True)


def machine_line() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"{device}, torch {torch.__version__}, {datetime.now(timezone.utc):%Y-%m-%d}")


def update_section(name: str, markdown: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    block = f"<!-- {name}:start -->\n{markdown.strip()}\n<!-- {name}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(RESULTS, text)
