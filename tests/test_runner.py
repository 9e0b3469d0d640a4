"""`python -m kdlib run`: profile validation and failure reporting (the smoke notebooks
themselves are executed by nbval, so they are not run a second time here)."""
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from kdlib import runner
from kdlib.errors import ConfigError, KdlibError
from kdlib.paths import NOTEBOOKS_DIR, PROFILES_DIR

PROFILES = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


@pytest.mark.parametrize("name", PROFILES)
def test_every_profile_matches_the_notebooks(name, tmp_path):
    notebooks = runner.list_notebooks()
    params = runner.notebook_parameters(runner.load_profile(name), notebooks, name, None, tmp_path)
    assert set(params) == {nb.stem for nb in notebooks}
    for stem, values in params.items():
        assert values["out_dir"] == str(tmp_path) and values["profile"] == name


def test_profiles_exist():
    assert {"smoke", "real-mini", "thesis"} <= set(PROFILES)


def _write_profile(folder: Path, content: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.yaml").write_text(yaml.safe_dump(content))
    return folder


def test_misspelled_parameter_is_an_error(tmp_path):
    profiles = _write_profile(tmp_path, {"02_teacher": {"epoch": 3}})
    with pytest.raises(ConfigError, match="epoch"):
        runner.notebook_parameters(runner.load_profile("p", profiles), runner.list_notebooks(),
                                   "p", None, tmp_path)
    profiles = _write_profile(tmp_path, {"common": {"sedd": 1}})
    with pytest.raises(ConfigError, match="sedd"):
        runner.notebook_parameters(runner.load_profile("p", profiles), runner.list_notebooks(),
                                   "p", None, tmp_path)
    profiles = _write_profile(tmp_path, {"07_nothing": {}})
    with pytest.raises(ConfigError, match="07_nothing"):
        runner.notebook_parameters(runner.load_profile("p", profiles), runner.list_notebooks(),
                                   "p", None, tmp_path)


def test_unknown_profile_and_only(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile"):
        runner.load_profile("nope")
    with pytest.raises(ConfigError, match="matches no notebook"):
        runner.run_notebooks("smoke", out=tmp_path, only=["99"])


def test_failure_names_notebook_and_cell(tmp_path):
    nb_dir, profiles = tmp_path / "nbs", _write_profile(tmp_path / "profiles", {"common": {"x": 2}})
    nb_dir.mkdir()
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("x = 1\nprofile = ''\nout_dir = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(x)"),
                nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nbformat.write(nb, nb_dir / "01_fail.ipynb")
    with pytest.raises(KdlibError) as info:
        runner.run_notebooks("p", out=tmp_path / "out", notebooks_dir=nb_dir, profiles_dir=profiles)
    message = str(info.value)
    assert "01_fail" in message and "ValueError" in message and "boom" in message and "cell" in message
    assert (tmp_path / "out" / "notebooks" / "01_fail.ipynb").exists()


def test_cli_reports_errors_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kdlib", "run", "--profile", "nope", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown profile" in done.stderr and "Traceback" not in done.stderr
