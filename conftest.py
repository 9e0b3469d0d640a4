"""Test-session settings that hold for every path pytest is given (tests/ and notebooks/).

The suite runs on pytest-xdist workers (`-n auto`, pyproject.toml); `-n 0` runs it in one
process."""
from __future__ import annotations

import os

import pytest


def _share_cores_among_workers() -> None:
    """Each xdist worker gets its share of the cores unless the user set the thread count:
    N workers at torch's default (every core) would oversubscribe the machine N times.
    Runs when pytest loads this file, before any test module imports numpy or torch, which
    read these variables once."""
    from kdlib import threads  # imports no torch and no numpy

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers <= 1 or "OMP_NUM_THREADS" in os.environ:
        return
    share = str(max(1, threads.usable_cores() // workers))
    for name in threads.THREAD_VARIABLES:
        os.environ[name] = share


_share_cores_among_workers()


NOTEBOOKS = "notebooks"  # the one xdist work unit that holds every notebook cell


def _is_notebook_cell(nodeid: str) -> bool:
    return nodeid.split("::", 1)[0].endswith(".ipynb")


def pytest_collection_modifyitems(config, items):
    """The notebooks' cells go first, in their order (a stable sort). They are the longest
    chain of the suite, so they start at once on one worker while the other workers share
    the test modules (see `pytest_xdist_make_scheduler`)."""
    items.sort(key=lambda item: not _is_notebook_cell(item.nodeid))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's load-by-scope, with every notebook cell in one scope: nbval's items are the
    cells of one kernel, and each notebook reads what the one before it wrote under
    results/<profile>, so the five run in one worker, in order. Tests are scheduled a module
    at a time (module fixtures are made once). (`--dist loadgroup` would do this with an
    xdist_group mark, but xdist 3.8 renames `item._nodeid`, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return NOTEBOOKS if _is_notebook_cell(nodeid) else super()._split_scope(nodeid)

    return NotebooksTogether(config, log)
