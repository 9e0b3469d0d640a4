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
    proc = subprocess.run([sys.executable, "-m", "kdlib", "download", "--dataset", "msd", "--out", str(tmp_path),
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


# ------------------------------------------------------------------ --dataset thesis-slices
import zipfile  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import require_shared, write_dicom_patient  # noqa: E402
from kdlib.data import download as dl  # noqa: E402
from kdlib.data.readers import read_dicom, read_slices  # noqa: E402


def _gif_bytes(frames: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], loop=0)
    return buf.getvalue()


def _fake_gifs(n: int = 3, size: int = 24) -> tuple[dict[str, bytes], list, list]:
    """One image GIF and one mask GIF for range 3_01_3_26; mask edges carry grey levels
    (64, 128) like the author's GIFs, which the unpacking must threshold at 127."""
    images, masks = [], []
    for k in range(n):
        img = np.zeros((size, size), np.uint8)
        img[4:20, 4:20] = 60 + 70 * k
        mask = np.zeros((size, size), np.uint8)
        if k:  # frames differ (PIL merges identical consecutive GIF frames)
            mask[6:12, 6:12 + k] = 255
            mask[5, 6:12 + k] = 128
            mask[12, 6:12 + k] = 64
        images.append(img)
        masks.append(mask)
    files = {"GIF_1_IM_3_01_3_26.gif": _gif_bytes(images), "GIF_1_M_3_01_3_26.gif": _gif_bytes(masks)}
    return files, images, masks


def _serve(server, files: dict[str, bytes], folder: str = "/assets/") -> str:
    for name, body in files.items():
        server.files[folder + name] = body
    return server.url + folder


def test_thesis_slices_download_unpacks_for_the_reader(server, tmp_path):
    files, images, masks = _fake_gifs()
    url = _serve(server, files)
    notes = []
    dest = dl.download_thesis_slices(tmp_path, url=url, notify=notes.append,
                                     checksums={k: _sha(v) for k, v in files.items()})
    assert dest == tmp_path / "thesis_slices" and "CC BY-SA 4.0" in notes[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis_slices"]  # staging gone
    assert sorted(p.name for p in (dest / "gif_originals").iterdir()) == sorted(files)
    for k in range(3):
        png = np.array(Image.open(dest / "images" / f"spleen_3_01_3_26_f{k:02d}.png"))
        assert png.dtype == np.uint8 and np.array_equal(png, images[k])
        mask = np.array(Image.open(dest / "masks" / f"spleen_3_01_3_26_f{k:02d}.png"))
        assert np.array_equal(mask, np.where(masks[k] > 127, 255, 0))
    (volume,) = list(read_slices(dest))
    assert volume.case_id == "spleen_3" and volume.n_slices == 3
    assert volume.positive.tolist() == [False, True, True]
    assert volume.label[:, :, 1].sum() == 7 * 7  # the 128 row counts, the 64 row does not
    requests = len(server.requests)
    assert dl.download_thesis_slices(tmp_path, url=url, notify=notes.append) == dest
    assert len(server.requests) == requests  # already there: nothing fetched


def test_thesis_slices_resume_one_gif(server, tmp_path):
    files, _, _ = _fake_gifs()
    url = _serve(server, files)
    staging = tmp_path / "thesis_slices.download"
    staging.mkdir()
    body = files["GIF_1_IM_3_01_3_26.gif"]
    (staging / "GIF_1_IM_3_01_3_26.gif.part").write_bytes(body[:100])
    dl.download_thesis_slices(tmp_path, url=url, notify=lambda _: None,
                              checksums={k: _sha(v) for k, v in files.items()})
    assert "bytes=100-" in server.requests
    assert (tmp_path / "thesis_slices" / "gif_originals" / "GIF_1_IM_3_01_3_26.gif").read_bytes() == body


def test_thesis_slices_frame_count_mismatch(server, tmp_path):
    files, images, masks = _fake_gifs()
    files["GIF_1_M_3_01_3_26.gif"] = _gif_bytes(masks[:2])
    url = _serve(server, files)
    with pytest.raises(DataError, match="frames"):
        dl.download_thesis_slices(tmp_path, url=url, notify=lambda _: None,
                                  checksums={k: _sha(v) for k, v in files.items()})
    assert not (tmp_path / "thesis_slices").exists()


def test_cli_thesis_slices_checks_the_known_checksums(server, tmp_path):
    files, _, _ = _fake_gifs()  # not the author's GIFs: the built-in sha256 must refuse them
    url = _serve(server, {name: files[name.replace("_22_40_22_70", "_3_01_3_26")
                                      .replace("_6_60_6_82", "_3_01_3_26")
                                      .replace("_8_01_8_24", "_3_01_3_26")]
                          for name in dl.THESIS_GIF_SHA256})
    proc = subprocess.run([sys.executable, "-m", "kdlib", "download", "--dataset",
                           "thesis-slices", "--url", url, "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, KDLIB_PROGRESS="0"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "sha256 checksum mismatch" in last and "GIF_1_IM_3_01_3_26.gif" in last
    assert not (tmp_path / "thesis_slices").exists()


def test_real_thesis_gifs_match_constants_and_shared_slices(tmp_path):
    shared = require_shared("thesis_slices")
    gifs = shared / "gif_originals"
    for name, sha in dl.THESIS_GIF_SHA256.items():
        assert dl.file_digest(gifs / name, "sha256") == sha
        dl.unpack_thesis_gif(gifs / name, tmp_path)
    for sub in ("images", "masks"):
        ours = sorted(p.name for p in (tmp_path / sub).iterdir())
        assert ours == sorted(p.name for p in (shared / sub).iterdir())
        for name in ours:
            assert np.array_equal(np.array(Image.open(tmp_path / sub / name)),
                                  np.array(Image.open(shared / sub / name))), name


# ------------------------------------------------------------------ --dataset ircadb
def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _zip_folder(folder, below) -> bytes:
    return _zip_bytes({p.relative_to(below).as_posix(): p.read_bytes()
                       for p in sorted(folder.rglob("*")) if p.is_file()})


def _fake_ircadb(tmp_path, patients=(1, 7), extra_inner=None) -> tuple[bytes, dict]:
    """The archive's shape: 3Dircadb1/3Dircadb1.<n>/{PATIENT_DICOM,MASKS_DICOM,MESHES_VTK}.zip,
    with a liver mask next to the spleen mask (not kept)."""
    entries, digests = {}, {}
    for n in patients:
        src = write_dicom_patient(tmp_path / "src" / f"3Dircadb1.{n}", n=4, size=16, seed=n)
        liver = src / "MASKS_DICOM" / "liver"
        liver.mkdir()
        (liver / "image_0").write_bytes(b"not kept")
        digests[n] = dl.tree_sha256(src)
        prefix = f"3Dircadb1/3Dircadb1.{n}/"
        entries[prefix + "PATIENT_DICOM.zip"] = _zip_folder(src / "PATIENT_DICOM", src)
        masks = {p.relative_to(src).as_posix(): p.read_bytes()
                 for p in sorted((src / "MASKS_DICOM").rglob("*")) if p.is_file()}
        masks.update(extra_inner or {})
        entries[prefix + "MASKS_DICOM.zip"] = _zip_bytes(masks)
        entries[prefix + "MESHES_VTK.zip"] = _zip_bytes({"MESHES_VTK/spleen.vtk": b"mesh"})
    return _zip_bytes(entries), digests


def test_ircadb_prints_licence_first_and_unpacks_for_the_reader(server, tmp_path):
    archive, digests = _fake_ircadb(tmp_path)
    server.files["/3Dircadb1.zip"] = archive
    out = tmp_path / "data"
    notes = []
    root = dl.download_ircadb(out, url=server.url + "/3Dircadb1.zip", digests=digests,
                              notify=lambda text: notes.append((text, len(server.requests))))
    (text, requests_before), = notes
    assert "CC BY-NC-ND 4.0" in text and requests_before == 0  # printed before downloading
    assert root == out / "ircadb"
    assert sorted(p.name for p in out.iterdir()) == ["ircadb"]  # archive deleted
    assert sorted(p.name for p in root.iterdir()) == ["3Dircadb1.1", "3Dircadb1.7", "LICENSE.txt"]
    assert "CC BY-NC-ND" in (root / "LICENSE.txt").read_text()
    assert sorted(p.name for p in (root / "3Dircadb1.1" / "MASKS_DICOM").iterdir()) == ["spleen"]
    volumes = list(read_dicom(root))
    assert [v.case_id for v in volumes] == ["3Dircadb1.1", "3Dircadb1.7"]
    assert all(v.n_slices == 4 and v.positive_slices == 2 for v in volumes)
    assert dl.download_ircadb(out, url=server.url + "/3Dircadb1.zip", notify=notes.append) == root
    assert len(server.requests) == 1 and len(notes) == 1  # present: no request, no notice


def test_ircadb_checksum_mismatch_leaves_nothing(server, tmp_path):
    archive, digests = _fake_ircadb(tmp_path, patients=(1,))
    server.files["/3Dircadb1.zip"] = archive
    with pytest.raises(DataError, match="known checksum"):
        dl.download_ircadb(tmp_path / "data", url=server.url + "/3Dircadb1.zip", patients=[1],
                           digests={1: "0" * 64}, notify=lambda _: None)
    assert not (tmp_path / "data" / "ircadb" / "3Dircadb1.1").exists()


def test_ircadb_resumes_the_archive(server, tmp_path):
    archive, digests = _fake_ircadb(tmp_path, patients=(7,))
    server.files["/3Dircadb1.zip"] = archive
    out = tmp_path / "data"
    out.mkdir()
    (out / "3Dircadb1.zip.part").write_bytes(archive[:1000])
    dl.download_ircadb(out, url=server.url + "/3Dircadb1.zip", patients=[7], digests=digests,
                       notify=lambda _: None)
    assert server.requests == ["bytes=1000-"]
    assert (out / "ircadb" / "3Dircadb1.7" / "PATIENT_DICOM").is_dir()


def test_ircadb_unsafe_or_missing_patient(server, tmp_path):
    archive, digests = _fake_ircadb(tmp_path, patients=(1,),
                                    extra_inner={"../../evil": b"gotcha"})
    server.files["/3Dircadb1.zip"] = archive
    with pytest.raises(DataError, match="unsafe path"):
        dl.download_ircadb(tmp_path / "a", url=server.url + "/3Dircadb1.zip", patients=[1],
                           digests=digests, notify=lambda _: None, keep_archive=True)
    assert not list(tmp_path.rglob("evil"))
    archive, digests = _fake_ircadb(tmp_path / "b", patients=(1,))
    server.files["/3Dircadb1.zip"] = archive
    with pytest.raises(DataError, match="3Dircadb1.2"):
        dl.download_ircadb(tmp_path / "b", url=server.url + "/3Dircadb1.zip", patients=[2],
                           notify=lambda _: None)
    with pytest.raises(DataError, match="1..20"):
        dl.download_ircadb(tmp_path / "b", patients=[21], notify=lambda _: None)


def test_cli_ircadb_prints_licence_and_fails_cleanly(server, tmp_path):
    archive, _ = _fake_ircadb(tmp_path)  # fake patients: the built-in digests refuse them
    server.files["/3Dircadb1.zip"] = archive
    proc = subprocess.run([sys.executable, "-m", "kdlib", "download", "--dataset", "ircadb",
                           "--url", server.url + "/3Dircadb1.zip", "--out", str(tmp_path / "d")],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=dict(os.environ, KDLIB_PROGRESS="0"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "CC BY-NC-ND 4.0" in lines[0] and "known checksum" in lines[-1]


def test_real_ircadb_patients_match_constants():
    shared = require_shared("ircadb")
    for n, digest in dl.IRCADB_TREE_SHA256.items():
        assert dl.tree_sha256(shared / f"3Dircadb1.{n}") == digest


def test_download_dataset_dispatch(tmp_path):
    with pytest.raises(DataError, match="msd only"):
        dl.download_dataset("ircadb", tmp_path, sha256="0" * 64)
    with pytest.raises(DataError, match="unknown dataset"):
        dl.download_dataset("nope", tmp_path)


def test_downloaded_folder_serves_the_real_mini_data_spec(server, tmp_path, monkeypatch):
    """real-mini's `shared:ircadb,shared:thesis_slices` (or `--data A,B`) reads a download
    folder given by KDLIB_SHARED_DATA, with the formats detected from the layout."""
    from kdlib.data.readers import detect_format
    from kdlib.paths import resolve_data

    files, _, _ = _fake_gifs()
    url = _serve(server, files)
    dl.download_thesis_slices(tmp_path, url=url, notify=lambda _: None,
                              checksums={k: _sha(v) for k, v in files.items()})
    archive, digests = _fake_ircadb(tmp_path / "src_ircadb", patients=(1,))
    server.files["/3Dircadb1.zip"] = archive
    dl.download_ircadb(tmp_path, url=server.url + "/3Dircadb1.zip", patients=[1],
                       digests=digests, notify=lambda _: None)
    monkeypatch.setenv("KDLIB_SHARED_DATA", str(tmp_path))
    assert resolve_data("shared:ircadb") == (tmp_path / "ircadb").resolve()
    assert detect_format(resolve_data("shared:ircadb")) == "dicom"
    assert detect_format(resolve_data("shared:thesis_slices")) == "slices"
    assert detect_format(resolve_data(str(tmp_path / "thesis_slices"))) == "slices"
