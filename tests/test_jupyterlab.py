"""`jupyter lab` comes with `pip install -r requirements.txt` and serves the five notebooks,
their jupytext .py pairs as notebooks, and the widget and jupytext front-end extensions.

The server runs on a free loopback port with a random token, with its config, runtime and
settings folders in a temporary folder (nothing from ~/.jupyter leaks in), and is always
stopped afterwards. `running_lab` is shared with tests/test_browser_viewer.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO

NOTEBOOK_RE = re.compile(r"^0[1-5]_\w+\.ipynb$")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Lab:
    def __init__(self, url: str, token: str, log: Path):
        self.url, self.token, self.log = url, token, log

    def get(self, path: str, **params) -> tuple[int, bytes]:
        query = "&".join(f"{k}={v}" for k, v in {**params, "token": self.token}.items())
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str, **params):
        status, body = self.get(path, **params)
        assert status == 200, f"GET {path}: HTTP {status}: {body[:300]!r}"
        return json.loads(body)


@contextlib.contextmanager
def running_lab(root: Path, scratch: Path, *extra: str, timeout: float = 60.0) -> Iterator[Lab]:
    """Start `jupyter lab --no-browser` serving `root`; yield a `Lab` once it answers; stop it."""
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(scratch / "config"),
               JUPYTER_RUNTIME_DIR=str(scratch / "runtime"), JUPYTER_DATA_DIR=str(scratch / "data"),
               JUPYTER_PLATFORM_DIRS="1")
    env.pop("MPLBACKEND", None)  # the kernel must keep its inline backend
    log = scratch / "lab.log"
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
               "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.extension_manager=readonly",
               f"--LabApp.user_settings_dir={scratch / 'settings'}",
               f"--LabApp.workspaces_dir={scratch / 'workspaces'}", *extra]
    with open(log, "wb") as log_handle:
        proc = subprocess.Popen(command, stdout=log_handle, stderr=subprocess.STDOUT, env=env,
                                cwd=root, start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if lab.get("/api/status")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer in {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield lab
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: kernels go with it
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    with running_lab(REPO, tmp_path_factory.mktemp("lab")) as server:
        yield server


def test_serves_the_five_notebooks(lab):
    listing = lab.json("/api/contents/notebooks", content=1)
    names = sorted(item["name"] for item in listing["content"] if NOTEBOOK_RE.match(item["name"]))
    expected = sorted(p.name for p in (REPO / "notebooks").glob("0[1-5]_*.ipynb"))
    assert len(expected) == 5 and names == expected
    for name in names:
        model = lab.json(f"/api/contents/notebooks/{name}", type="notebook", content=1)
        assert model["type"] == "notebook" and model["content"]["cells"]
        assert model["content"]["metadata"]["kernelspec"]["name"] == "python3"
    assert "python3" in lab.json("/api/kernelspecs")["kernelspecs"]


def test_py_pairs_open_as_notebooks(lab):
    """jupytext's server extension: a .py pair opens as a notebook with the same cells."""
    for py in sorted((REPO / "notebooks").glob("0[1-5]_*.py")):
        as_notebook = lab.json(f"/api/contents/notebooks/{py.name}", type="notebook", content=1)
        paired = lab.json(f"/api/contents/notebooks/{py.stem}.ipynb", type="notebook", content=1)
        assert as_notebook["type"] == "notebook"
        sources = [c["source"] for c in as_notebook["content"]["cells"]]
        assert sources == [c["source"] for c in paired["content"]["cells"]], py.name


def test_lab_page_loads_widget_and_jupytext_extensions(lab):
    status, body = lab.get("/lab")
    assert status == 200
    config = json.loads(re.search(rb'id="jupyter-config-data"[^>]*>(.*?)</script>', body, re.S)[1])
    loaded = {ext["name"] for ext in config["federated_extensions"]}
    assert {"@jupyter-widgets/jupyterlab-manager", "jupyterlab-jupytext"} <= loaded
