"""download_msd against a small generated tar served on 127.0.0.1 (no other network)."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading

import pytest

from conftest import REPO
from kdlib.data import download_msd
from kdlib.errors import DataError


def _tar_bytes(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()


GOOD = _tar_bytes({
    "Task09_Spleen/dataset.json": json.dumps({"name": "Spleen", "training": []}).encode(),
    "Task09_Spleen/imagesTr/spleen_1.nii.gz": os.urandom(50_000),
    "Task09_Spleen/labelsTr/spleen_1.nii.gz": os.urandom(20_000),
})


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        server = self.server
        server.requests.append(self.headers.get("Range"))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        if rng and server.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.requests, httpd.ranges = {}, [], True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_unpack_and_skip_when_present(server, tmp_path):
    server.files["/Task09_Spleen.tar"] = GOOD
    url = server.url + "/Task09_Spleen.tar"
    task = download_msd(tmp_path, url=url, sha256=_sha(GOOD))
    assert task == tmp_path / "Task09_Spleen"
    assert (task / "dataset.json").is_file()
    assert (task / "imagesTr" / "spleen_1.nii.gz").stat().st_size == 50_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task09_Spleen"]  # no leftovers
    assert server.requests == [None]
    assert download_msd(tmp_path, url=url, sha256=_sha(GOOD)) == task
    assert len(server.requests) == 1  # already there: no request


def test_md5_verification(server, tmp_path):
    server.files["/Task09_Spleen.tar"] = GOOD
    md5 = hashlib.md5(GOOD).hexdigest()
    task = download_msd(tmp_path, url=server.url + "/Task09_Spleen.tar", md5=md5)
    assert (task / "dataset.json").is_file()


def test_resume_from_partial_file(server, tmp_path):
    server.files["/Task09_Spleen.tar"] = GOOD
    half = len(GOOD) // 2
    (tmp_path / "Task09_Spleen.tar.part").write_bytes(GOOD[:half])
    task = download_msd(tmp_path, url=server.url + "/Task09_Spleen.tar", sha256=_sha(GOOD))
    assert server.requests == [f"bytes={half}-"]
    assert (task / "labelsTr" / "spleen_1.nii.gz").is_file()
    assert not (tmp_path / "Task09_Spleen.tar.part").exists()


def test_restart_when_server_ignores_range(server, tmp_path):
    server.files["/Task09_Spleen.tar"] = GOOD
    server.ranges = False
    (tmp_path / "Task09_Spleen.tar.part").write_bytes(b"stale bytes")
    task = download_msd(tmp_path, url=server.url + "/Task09_Spleen.tar", sha256=_sha(GOOD))
    assert (task / "dataset.json").is_file()


def test_complete_part_file_gets_416(server, tmp_path):
    server.files["/Task09_Spleen.tar"] = GOOD
    (tmp_path / "Task09_Spleen.tar.part").write_bytes(GOOD)
    task = download_msd(tmp_path, url=server.url + "/Task09_Spleen.tar", sha256=_sha(GOOD))
    assert (task / "dataset.json").is_file()


def test_checksum_mismatch(server, tmp_path):
    server.files["/Task09_Spleen.tar"] = GOOD
    with pytest.raises(DataError, match="checksum mismatch"):
        download_msd(tmp_path, url=server.url + "/Task09_Spleen.tar", sha256="0" * 64)
    assert not (tmp_path / "Task09_Spleen").exists()
    assert not (tmp_path / "Task09_Spleen.tar").exists()  # the bad file is gone
    proc = subprocess.run([sys.executable, "-m", "kdlib", "download", "--out", str(tmp_path),
                           "--url", server.url + "/Task09_Spleen.tar", "--sha256", "0" * 64],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, KDLIB_PROGRESS="0"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "checksum mismatch" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_path_traversal_is_refused(server, tmp_path):
    evil = _tar_bytes({"Task09_Spleen/dataset.json": b"{}", "../evil.txt": b"gotcha"})
    server.files["/Task09_Spleen.tar"] = evil
    out = tmp_path / "out"
    with pytest.raises(DataError, match="unsafe path"):
        download_msd(out, url=server.url + "/Task09_Spleen.tar", sha256=_sha(evil))
    assert not (tmp_path / "evil.txt").exists()
    assert not (out / "Task09_Spleen").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # temp folder removed


def test_links_are_refused(server, tmp_path):
    evil = _tar_bytes({"Task09_Spleen/dataset.json": b"{}"},
                      links={"Task09_Spleen/imagesTr": "/etc"})
    server.files["/Task09_Spleen.tar"] = evil
    with pytest.raises(DataError, match="link"):
        download_msd(tmp_path, url=server.url + "/Task09_Spleen.tar", sha256=_sha(evil))
    assert not (tmp_path / "Task09_Spleen").exists()


def test_http_error_and_no_server(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        download_msd(tmp_path, url=server.url + "/missing.tar", sha256="0" * 64)
    with pytest.raises(DataError, match="download failed"):
        download_msd(tmp_path, url="http://127.0.0.1:9/Task09_Spleen.tar", sha256="0" * 64,
                     timeout=5)
