"""`python -m kdlib run`: profile validation, failure reporting, one run per folder,
atomic executed notebooks, kernel environment (the smoke notebooks themselves are executed
by nbval, so they are not run a second time here: these tests use tiny fake notebooks)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from kdlib import runner, threads
from kdlib.errors import ConfigError, KdlibError
from kdlib.paths import PROFILES_DIR

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


# --- tiny fake notebooks, so that kernel-level behaviour is tested in seconds -------------

KERNELSPEC = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
# the cell waits until the test creates `release` in the output folder (at most 60 s)
WAIT_CELL = """import os, pathlib, time
pathlib.Path(out_dir, "kernel.pid").write_text(str(os.getpid()))
for _ in range(600):
    if pathlib.Path(out_dir, "release").exists():
        break
    time.sleep(0.1)"""
# runs the CLI with the fake notebooks and profiles folders
DRIVER = """import functools, sys
from kdlib import cli, runner
runner.run_notebooks = functools.partial(runner.run_notebooks, notebooks_dir=sys.argv[1],
                                         profiles_dir=sys.argv[2])
sys.exit(cli.main(sys.argv[3:]))
"""


def _fake_project(root: Path, cells: list[str], names: tuple[str, ...] = ("01_fake",),
                  parameters: str = "profile = ''\nout_dir = ''", common: dict | None = None
                  ) -> tuple[Path, Path]:
    """A notebooks folder with notebooks `names`, each declaring `parameters` and running
    `cells`, and a profile `p` whose common block is `common`."""
    nb_dir = root / "nbs"
    nb_dir.mkdir(parents=True)
    for name in names:
        nb = nbformat.v4.new_notebook(metadata=KERNELSPEC)
        nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})]
        nb.cells += [nbformat.v4.new_code_cell(src) for src in cells]
        nbformat.write(nb, nb_dir / f"{name}.ipynb")
    return nb_dir, _write_profile(root / "profiles", {"common": common or {}})


def _start_cli(root: Path, nb_dir: Path, profiles: Path, out: Path) -> subprocess.Popen:
    (root / "driver.py").write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(root / "driver.py"), str(nb_dir), str(profiles),
                             "run", "--profile", "p", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.communicate()}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)


def test_second_run_on_the_same_folder_fails_at_once_naming_the_first(tmp_path):
    nb_dir, profiles = _fake_project(tmp_path, [WAIT_CELL])
    out = tmp_path / "out"
    first = _start_cli(tmp_path, nb_dir, profiles, out)
    try:
        _wait_for(out / "kernel.pid", first)  # the first run is inside its notebook
        started = time.time()
        (tmp_path / "driver.py").write_text(DRIVER)
        second = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(nb_dir), str(profiles),
                                 "run", "--profile", "p", "--out", str(out)],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"PID {first.pid}" in second.stderr and str(out) in second.stderr
        assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert time.time() - started < 30  # it did not wait for the first run
        assert first.poll() is None  # ... nor disturb it
    finally:
        (out / "release").touch()
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert (out / "notebooks" / "01_fake.ipynb").exists()
    # the whole batch log: no "Kernel is running over TCP without encryption" (issue 11)
    assert "without encryption" not in stdout + stderr and "WARNING" not in stdout + stderr


def test_interrupted_run_leaves_no_half_written_notebook(tmp_path):
    nb_dir, profiles = _fake_project(tmp_path, [WAIT_CELL])
    out = tmp_path / "out"
    run = _start_cli(tmp_path, nb_dir, profiles, out)
    _wait_for(out / "kernel.pid", run)
    # papermill has saved the notebook after the parameters cell: a half-written copy exists
    assert list((out / "notebooks").glob(f".*{runner.PARTIAL_SUFFIX}"))
    run.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal does
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr
    assert list((out / "notebooks").iterdir()) == []  # neither the partial copy nor a target
    kernel = int((out / "kernel.pid").read_text())
    for _ in range(50):  # the kernel is stopped too, not left training in the background
        try:
            os.kill(kernel, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(kernel, signal.SIGKILL)
        pytest.fail("the kernel outlived the interrupted run")
    assert not (out / ".kdlib.lock").exists()


def test_interrupted_kernel_is_an_interruption_not_a_failed_notebook(tmp_path):
    nb_dir, profiles = _fake_project(tmp_path, ["raise KeyboardInterrupt"])
    out = tmp_path / "out"
    (out / "notebooks").mkdir(parents=True)
    (out / "notebooks" / f".01_fake{runner.PARTIAL_SUFFIX}").write_text("{")  # left by a SIGKILL
    with pytest.raises(KeyboardInterrupt):
        runner.run_notebooks("p", out=out, notebooks_dir=nb_dir, profiles_dir=profiles)
    assert list((out / "notebooks").iterdir()) == []


def test_kernels_get_thread_settings_and_the_caller_keeps_its_environment(tmp_path, monkeypatch, capfd):
    for name in (*threads.THREAD_VARIABLES, threads.WAIT_POLICY, "KDLIB_BATCH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.7)  # one core taken by other work
    dump = ("import json, os, pathlib\n"
            "names = ['OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OMP_WAIT_POLICY', 'KDLIB_BATCH']\n"
            "pathlib.Path(out_dir, 'env.json').write_text(json.dumps({n: os.environ.get(n) for n in names}))")
    nb_dir, profiles = _fake_project(tmp_path, [dump])
    runner.run_notebooks("p", out=tmp_path / "out", notebooks_dir=nb_dir, profiles_dir=profiles)
    seen = json.loads((tmp_path / "out" / "env.json").read_text())
    assert seen == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
                    "KDLIB_BATCH": "1"}
    assert not any(os.environ.get(n) for n in seen)  # restored in the calling process
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "load 1.7 on 2 cores" in line]
    assert len(warnings) == 1 and "1 torch/OpenMP thread" in warnings[0]
    assert "without encryption" not in err
    executed = nbformat.read(tmp_path / "out" / "notebooks" / "01_fake.ipynb", as_version=4)
    assert executed.metadata.papermill.output_path == str(tmp_path / "out" / "notebooks" / "01_fake.ipynb")


def test_out_that_is_a_file_is_a_one_line_error(tmp_path):
    nb_dir, profiles = _fake_project(tmp_path, [])
    (tmp_path / "taken").write_text("x")
    with pytest.raises(KdlibError, match="output folder"):
        runner.run_notebooks("p", out=tmp_path / "taken", notebooks_dir=nb_dir, profiles_dir=profiles)


def _bench_smoke():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_smoke.py"
    spec = importlib.util.spec_from_file_location("bench_smoke", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_smoke_times_each_notebook_and_measures_disk(tmp_path, monkeypatch):
    bench = _bench_smoke()
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    env = bench.thread_free_env(keep=False)
    assert "OMP_NUM_THREADS" not in env and "OMP_WAIT_POLICY" not in env  # the runner chooses
    write_blob = "import pathlib\npathlib.Path(out_dir, 'blob').write_bytes(b'x' * 2_500_000)"
    nb_dir, profiles = _fake_project(tmp_path, [write_blob])
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "out"
    command = [sys.executable, str(tmp_path / "driver.py"), str(nb_dir), str(profiles), "run",
               "--profile", "p", "--out", str(out)]
    burner = bench.start_burner(1)  # the busy neighbour starts and stops cleanly
    try:
        result = bench.measure(command, out, env)
    finally:
        rate = bench.stop_burner(burner)
    assert burner.poll() is not None and rate is not None and rate > 0
    assert result["returncode"] == 0 and set(result["notebooks_s"]) == {"01_fake"}
    assert 0 < result["notebooks_s"]["01_fake"] <= result["total_s"]
    assert result["disk_mb"]["blob"] == 2.5 and result["disk_mb"]["total"] >= 2.5
    assert result["disk_mb"]["notebooks"] > 0  # the executed notebook is counted too


def test_a_full_invocation_records_its_commit_times_and_load_beside_the_published_results(tmp_path, monkeypatch):
    monkeypatch.setattr(threads, "busy_cores", lambda: 0.25)
    published = tmp_path / "published"
    nb_dir, profiles = _fake_project(tmp_path, ["x = 1"], names=("01_first", "02_second"),
                                     parameters="profile = ''\nout_dir = ''\npublish_dir = ''",
                                     common={"publish_dir": str(published)})
    runner.run_notebooks("p", out=tmp_path / "out", notebooks_dir=nb_dir, profiles_dir=profiles)
    record = json.loads((published / "invocation.json").read_text())
    assert record == json.loads((tmp_path / "out" / "invocation.json").read_text())
    assert list(record["notebooks_s"]) == ["01_first", "02_second"]
    # each time is rounded to 0.1 s on its own: the rounded parts may exceed the rounded whole
    assert record["wall_s"] >= sum(record["notebooks_s"].values()) - 0.05 * (len(record["notebooks_s"]) + 1)
    assert record["busy_cores_at_start"] == 0.25 and record["profile"] == "p"
    assert len(record["commit"]) in (40, len("unknown"))
    text = (published / "PROVENANCE.md").read_text()
    assert record["commit"] in text and f"({record['wall_s']:.0f} s)" in text and "| 02_second |" in text
    # a partial run (--only) is not one invocation of everything: it records nothing
    (published / "invocation.json").unlink()
    runner.run_notebooks("p", out=tmp_path / "out2", notebooks_dir=nb_dir, profiles_dir=profiles,
                         only=["02"])
    assert not (published / "invocation.json").exists()


def test_the_invocation_records_the_code_as_it_was_when_the_run_began(tmp_path, monkeypatch):
    """Notebook 05 rewrites the README's results section (a tracked file); the record must
    still say the run began on a clean tree."""
    dirty = tmp_path / "dirty"
    monkeypatch.setattr(runner, "code_state", lambda: {"commit": "c" * 40, "clean": not dirty.exists()})
    nb_dir, profiles = _fake_project(tmp_path, [f"open({str(dirty)!r}, 'w').close()"])
    runner.run_notebooks("p", out=tmp_path / "out", notebooks_dir=nb_dir, profiles_dir=profiles)
    assert dirty.exists()
    record = json.loads((tmp_path / "out" / "invocation.json").read_text())
    assert record["clean"] is True and record["commit"] == "c" * 40
    assert "a clean tree when it started" in runner.provenance_markdown(record)


def test_an_invocation_refuses_to_publish_beside_another_invocations_records(tmp_path):
    """Checked before any notebook runs: found only at notebook 05, hours of training would
    end in an error (or, before this check, in tables that mixed two invocations' runs)."""
    published = tmp_path / "published"
    (published / "runs" / "t1-s42-older").mkdir(parents=True)
    ran = tmp_path / "ran"
    nb_dir, profiles = _fake_project(tmp_path, [f"open({str(ran)!r}, 'w').close()"],
                                     parameters="profile = ''\nout_dir = ''\npublish_dir = ''",
                                     common={"publish_dir": str(published)})
    with pytest.raises(runner.KdlibError, match="runs/t1-s42-older"):
        runner.run_notebooks("p", out=tmp_path / "out", notebooks_dir=nb_dir, profiles_dir=profiles)
    assert not ran.exists()
