"""Progress bars that stay readable both in JupyterLab and in papermill batch logs.

Interactively we use tqdm.auto (a widget in JupyterLab). In batch runs (`KDLIB_BATCH=1`,
set by `python -m kdlib run`) tqdm.auto would store a widget per bar and log a misleading
"0%", so we fall back to plain text tqdm on stdout with a long `mininterval`: a handful of
lines per loop instead of thousands.
"""
from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def batch_mode() -> bool:
    return os.environ.get("KDLIB_BATCH", "") not in ("", "0")


def bar(iterable: Iterable[T] | None = None, desc: str = "", total: int | None = None,
        leave: bool = True, **kwargs) -> "tqdm":  # noqa: F821
    if os.environ.get("KDLIB_PROGRESS", "1") == "0":
        kwargs["disable"] = True
    if batch_mode():
        from tqdm import tqdm

        kwargs.setdefault("mininterval", float(os.environ.get("KDLIB_PROGRESS_INTERVAL", "30")))
        return tqdm(iterable, desc=desc, total=total, leave=leave, file=sys.stdout,
                    ascii=True, dynamic_ncols=False, ncols=100, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=leave, **kwargs)
