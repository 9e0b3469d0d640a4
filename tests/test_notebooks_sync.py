"""Each notebook is a jupytext pair: the .py and the .ipynb must hold the same cells,
the .ipynb must carry no outputs, and there must be exactly one `parameters` cell."""
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAIRS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def _cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_notebooks_exist():
    assert [p.stem[:2] for p in PAIRS] == ["01", "02", "03", "04", "05"][: len(PAIRS)]
    assert PAIRS, "no notebooks found"


@pytest.mark.parametrize("py", PAIRS, ids=[p.stem for p in PAIRS])
def test_pair_in_sync_and_clean(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{ipynb.name} missing: run `jupytext --sync {py.name}`"
    from_py, from_ipynb = jupytext.read(py), jupytext.read(ipynb)
    assert _cells(from_py) == _cells(from_ipynb), (
        f"{py.name} and {ipynb.name} differ: run `jupytext --sync notebooks/{py.name}`")
    for cell in from_ipynb.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{ipynb.name} has outputs: strip them before committing"
            assert cell.get("execution_count") is None
    tagged = [c for c in from_py.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{py.name} needs exactly one cell tagged 'parameters'"
    assert from_ipynb.metadata["kernelspec"]["name"] == "python3"
    first_md = next(c for c in from_py.cells if c.cell_type == "markdown")
    assert "--profile thesis" in first_md.source, "first markdown cell must say how to run the thesis profile"


@pytest.mark.parametrize("py", PAIRS, ids=[p.stem for p in PAIRS])
def test_papermill_sees_every_parameter(py):
    """papermill silently drops a parameter whose line it cannot parse (e.g. '=' in a comment)."""
    import re

    import papermill as pm

    cell = next(c for c in jupytext.read(py).cells if "parameters" in c.metadata.get("tags", []))
    names = [m.group(1) for line in cell.source.splitlines()
             if (m := re.match(r"^(\w+)\s*:\s*\w+\s*=", line))]
    assert names and list(pm.inspect_notebook(str(py.with_suffix(".ipynb")))) == names
