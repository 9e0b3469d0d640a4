"""Issue 18: untrusted files cannot exhaust the machine or corrupt a study.

Every hostile input here is a few KB written in tmp_path; each must be refused with one line
(exit 2) naming the file and the fix, before anything large is allocated."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_error, run_cli, write_nifti

pytestmark = pytest.mark.usefixtures("no_progress_bars")


def _copy_run(run, tmp_path) -> Path:
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy


def _ct(shape=(24, 20, 6), seed=0):
    return np.random.default_rng(seed).normal(0, 40, size=shape).astype(np.int16)


def _no_staging(folder: Path) -> bool:
    return not [p for p in folder.rglob(".kdlib-predict.*")]


# ------------------------------------------------------------- 1. a model's preprocessing.json
@pytest.mark.parametrize("change,words", [
    ({"size": 100000}, ["size"]), ({"size": 0}, ["size"]), ({"size": "256"}, ["size"]),
    ({"hu_window": [float("nan"), 240.0]}, ["hu_window"]),
    ({"hu_window": [240.0, -160.0]}, ["hu_window"]), ({"mode": "fancy"}, ["mode"])])
def test_model_preprocessing_json_is_checked(run, tmp_path, capsys, change, words):
    from kdlib.io import read_json
    from kdlib.train import RunConfig

    copy = _copy_run(run, tmp_path)
    cfg = RunConfig.from_dict(read_json(copy / "config.json"))
    manifest = read_json(Path(cfg.cache) / "manifest.json")
    manifest["params"].update(change)
    (copy / "preprocessing.json").write_text(json.dumps(manifest))
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    code, _, err = run_cli(capsys, "predict", "--model", copy, "--input", tmp_path / "in",
                           "--out", tmp_path / "pred")
    assert_one_error(code, err, "preprocessing.json", *words)
    assert not (tmp_path / "pred").exists() and _no_staging(tmp_path)


# ------------------------------------------------------------- 2. headers before allocating
def _hostile_nifti(path: Path, shape, gz: bool) -> Path:
    """A few-KB NIfTI whose header declares `shape` int16 voxels (the data is not there)."""
    import gzip

    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape(shape)
    header.set_qform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\0" * 4000
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("shape", [(30000, 30000, 10), (4000, 4000, 4000)])
@pytest.mark.parametrize("gz", [True, False])
def test_hostile_nifti_header_is_refused_before_allocating(run, tmp_path, capsys, shape, gz):
    import resource
    import time

    path = _hostile_nifti(tmp_path / "in" / ("big.nii.gz" if gz else "big.nii"), shape, gz)
    assert path.stat().st_size < 5000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                           "--out", tmp_path / "pred")
    assert_one_error(code, err, path.name, "header")
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    assert not (tmp_path / "pred").exists() and _no_staging(tmp_path)


def test_hostile_nifti_header_is_refused_by_preprocess(tmp_path, capsys):
    path = _hostile_nifti(tmp_path / "msd" / "imagesTr" / "spleen_1.nii.gz", (30000, 30000, 10), True)
    _hostile_nifti(tmp_path / "msd" / "labelsTr" / "spleen_1.nii.gz", (30000, 30000, 10), True)
    code, _, err = run_cli(capsys, "preprocess", "--input", tmp_path / "msd", "--out",
                           tmp_path / "cache")
    assert_one_error(code, err, "spleen_1.nii.gz", "header")


def test_memory_error_is_one_line(run, tmp_path, capsys, monkeypatch):
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("kdlib.predict._Segmenter.__call__", no_memory)
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                           "--out", tmp_path / "pred")
    assert_one_error(code, err, "a.nii.gz", "memory")


# ------------------------------------------------------------- 4. splits checked at training
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A phantom cache (3 patients x 8 slices, 16 px) and its patient split."""
    from kdlib.data import SliceCache, make_split, preprocess, write_phantom_msd

    root = tmp_path_factory.mktemp("small")
    write_phantom_msd(root / "phantom", cases=3, seed=0, size=16, slices=8)
    preprocess(root / "phantom", root / "cache", size=16)
    cache = SliceCache.load(root / "cache")
    return cache, make_split(cache, mode="patient", seed=0)


def _broken(split, cache, how):
    s = json.loads(json.dumps(split))
    test_patient_slice = s["test"][0]
    if how == "test=train":
        s["test"] = list(s["train"])
    elif how == "student holds a test patient":
        s["student_train"] = s["student_train"] + [test_patient_slice]
    elif how == "negative":
        s["train"] = s["train"] + [-1]
    elif how == "boolean":
        s["train"] = [True] + s["train"]
    elif how == "duplicate":
        s["train"] = s["train"] + s["train"][:1]
    elif how == "huge":
        s["val"] = s["val"] + [10 ** 6]
    elif how == "empty test":
        s["test"] = []
    elif how == "other cache":
        s["cache_fingerprint"] = "0" * 16
    elif how == "test patient slice in val":
        s["val"] = sorted(s["val"] + [test_patient_slice])
        s["test"] = [i for i in s["test"] if i != test_patient_slice]
    return s


HOW = ["test=train", "student holds a test patient", "negative", "boolean", "duplicate", "huge",
       "empty test", "other cache", "test patient slice in val"]


@pytest.mark.parametrize("how", HOW)
def test_check_split_refuses(small, how):
    from kdlib.data.splits import check_split
    from kdlib.errors import DataError

    cache, split = small
    check_split(split, cache, "corrected")  # the real split passes
    with pytest.raises(DataError, match="split"):
        check_split(_broken(split, cache, how), cache, "corrected", "split.json")


def test_faithful_split_passes_in_the_faithful_setting(small):
    from kdlib.data import make_split
    from kdlib.data.splits import check_split
    from kdlib.errors import DataError

    cache, _ = small
    faithful = make_split(cache, mode="faithful", seed=42)
    check_split(faithful, cache, "faithful")  # val == test, as the thesis did
    with pytest.raises(DataError, match="unseen patients"):
        check_split(faithful, cache, "corrected")


def test_training_refuses_a_bad_split_before_it_trains(small, tmp_path, monkeypatch):
    from kdlib import train
    from kdlib.errors import KdlibError

    cache, split = small
    (tmp_path / "split.json").write_text(json.dumps(_broken(split, cache, "test=train")))
    called = []
    monkeypatch.setattr(train, "_train_epoch", lambda *a, **k: called.append(1))
    cfg = train.baseline_config("S1", cache.path, tmp_path / "split.json", epochs=1)
    with pytest.raises(KdlibError, match="split.json.*share"):
        train.train(cfg, tmp_path / "runs", progress=False)
    assert not called


# ------------------------------------------------------------- 6. weights validated
@pytest.mark.parametrize("how", ["nan", "int64", "complex", "float64"])
def test_bad_weights_are_refused(run, tmp_path, capsys, how):
    import torch

    copy = _copy_run(run, tmp_path)
    best = copy / "checkpoints" / "best.pt"
    state = torch.load(best, map_location="cpu", weights_only=True)
    key = next(k for k, v in state["model"].items() if v.is_floating_point() and v.ndim == 4)
    value = state["model"][key].float()
    state["model"][key] = {"nan": value.clone().fill_(float("nan")), "int64": value.long(),
                           "complex": value.to(torch.complex64),
                           "float64": value.double()}[how]
    torch.save(state, best)
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    code, _, err = run_cli(capsys, "predict", "--model", copy, "--input", tmp_path / "in",
                           "--out", tmp_path / "pred")
    assert_one_error(code, err, "best.pt", key)
    assert not (tmp_path / "pred").exists()


# ------------------------------------------------------------- 8. no mask is lost
def test_gif_frames_beside_a_file_of_the_same_name(run, tmp_path, capsys):
    from PIL import Image

    (tmp_path / "in").mkdir()
    frames = [Image.fromarray(np.full((32, 32), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "in" / "x.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "in" / "x_f00.png")
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                           "--out", tmp_path / "pred")
    assert_one_error(code, err, "x_f00.png", "rename")
    assert not (tmp_path / "pred").exists() and _no_staging(tmp_path)


# ------------------------------------------------------------- 10. leftovers and small holes
def test_killed_predicts_staging_is_cleaned(run, tmp_path, capsys):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".kdlib-predict.{dead.pid}.0123abcd.tmp"
    (stale / "x").mkdir(parents=True)
    live = tmp_path / f".kdlib-predict.{1}.0123abcd.tmp"  # PID 1 is alive
    live.mkdir()
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    code, _, _ = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                         "--out", tmp_path / "pred")
    assert code == 0 and not stale.exists() and live.exists()


def test_predict_warns_when_it_flattens_rgba(run, tmp_path, capsys):
    from PIL import Image

    (tmp_path / "in").mkdir()
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 128  # half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in" / "s_1.png")
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                           "--out", tmp_path / "pred")
    assert code == 0 and len(err) == 1 and err[0].startswith("kdlib: warning:")
    assert "flattened" in err[0] and "s_1.png" in err[0]


@pytest.mark.parametrize("links", [True, False])
def test_atomic_path_never_replaces_a_file_created_meanwhile(tmp_path, monkeypatch, links):
    import errno
    import os

    from kdlib.errors import KdlibError
    from kdlib.io import atomic_path

    if not links:  # a file system without hard links: renameat2(RENAME_NOREPLACE)
        def no_link(src, dst, *a, **k):
            raise OSError(errno.EPERM, "Operation not permitted")
        monkeypatch.setattr(os, "link", no_link)
    dest = tmp_path / "result.json"
    with pytest.raises(KdlibError, match="meanwhile"):
        with atomic_path(dest, overwrite=False) as tmp:
            tmp.write_text("mine")
            dest.write_text("theirs")  # another process finishes first
    assert dest.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
    with atomic_path(tmp_path / "new.json", overwrite=False) as tmp:
        tmp.write_text("fresh")
    assert (tmp_path / "new.json").read_text() == "fresh"


@pytest.mark.parametrize("content", ["[1, 2]", '{"name": "x", "model": "S1"}', '"text"'])
def test_bad_config_json_is_one_line(run, tmp_path, capsys, content):
    copy = _copy_run(run, tmp_path / "runs")
    (copy / "config.json").write_text(content)
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    code, _, err = run_cli(capsys, "predict", "--model", copy, "--input", tmp_path / "in",
                           "--out", tmp_path / "pred")
    assert_one_error(code, err, "config.json")
    code, _, err = run_cli(capsys, "report", "--profile", "smoke", "--runs", tmp_path / "runs",
                           "--out", tmp_path / "report")
    assert_one_error(code, err, "config.json")


# ------------------------------------------------------------- 9. a copied run counted once
def test_a_copied_run_folder_is_counted_once(run, tmp_path):
    import warnings

    from kdlib.errors import KdlibWarning
    from kdlib.train import load_runs

    runs = tmp_path / "runs"
    _copy_run(run, runs)
    shutil.copytree(runs / run.name, runs / f"{run.name}-copy")
    with pytest.warns(KdlibWarning, match="copy"):
        rows = load_runs(runs)
    assert [Path(r["run_dir"]).name for r in rows] == [run.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_runs(run.parent)) == 1  # no copy: no warning


def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch):
    import errno

    import torch

    from kdlib import train
    from kdlib.errors import KdlibError

    def full(state, f, *a, **k):
        Path(f).write_bytes(b"PK half")
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter "
                           "failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(KdlibError, match="best.pt.*cannot write the checkpoint.*free disk") as info:
        train._save_checkpoint(tmp_path / "best.pt", {"model": {}})
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []

    def enospc(state, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", enospc)
    with pytest.raises(KdlibError, match="No space left"):
        train._save_checkpoint(tmp_path / "best.pt", {"model": {}})
    assert list(tmp_path.iterdir()) == []


def test_dicom_slice_in_another_orientation_is_refused(tmp_path, capsys):
    import pydicom

    from conftest import write_dicom_patient

    patient = write_dicom_patient(tmp_path / "ircadb" / "p1", n=4, size=16)
    for folder in ("PATIENT_DICOM", "MASKS_DICOM/spleen"):
        path = patient / folder / "image_2"
        ds = pydicom.dcmread(str(path))
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, -0.6]  # tilted by 37 degrees
        ds.save_as(str(path))
    code, _, err = run_cli(capsys, "preprocess", "--input", tmp_path / "ircadb", "--out",
                           tmp_path / "cache")
    assert_one_error(code, err, "image_2", "orientation")


# ------------------------------------------------------------- 3. archives inflate within a cap
try:
    from test_data_download import _sha, _tar_bytes, _zip_bytes, server  # noqa: F401 - fixture
except ImportError:  # tests collected as a package
    from tests.test_data_download import _sha, _tar_bytes, _zip_bytes, server  # noqa: F401


def _tar_gz_bomb(unpacked: int = 30 << 20) -> bytes:
    import gzip

    tar = _tar_bytes({"Task09_Spleen/dataset.json": b"{}",
                      "Task09_Spleen/imagesTr/zeros.nii": bytes(unpacked)})
    return gzip.compress(tar, compresslevel=9)


def test_tar_gz_bomb_is_refused_and_deleted(server, tmp_path, capsys):
    bomb = _tar_gz_bomb()
    assert len(bomb) < 100_000
    server.files["/Task09_Spleen.tar.gz"] = bomb
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "download", "--dataset", "msd", "--out", out, "--url",
                           server.url + "/Task09_Spleen.tar.gz", "--sha256", _sha(bomb))
    assert_one_error(code, err, "Task09_Spleen.tar.gz", "allowed")
    assert list(out.iterdir()) == []  # no archive, no task folder, no temporary folder


def test_zip_bomb_in_ircadb_is_refused_before_inflating(server, tmp_path):
    import resource

    from kdlib.data import download as dl
    from kdlib.errors import DataError

    import io
    import zipfile

    buf, block = io.BytesIO(), bytes(1 << 20)
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("MASKS_DICOM/spleen/image_0", "w", force_zip64=True) as member:
            for _ in range(300):  # 300 MB of zeros, deflated, never held in memory
                member.write(block)
    archive = _zip_bytes({"3Dircadb1/3Dircadb1.1/MASKS_DICOM.zip": buf.getvalue()})
    assert len(archive) < 2 << 20
    server.files["/3Dircadb1.zip"] = archive
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="allowed"):
        dl.download_ircadb(tmp_path / "d", url=server.url + "/3Dircadb1.zip", patients=[1],
                           digests={}, notify=lambda _: None)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    assert not (tmp_path / "d" / "3Dircadb1.zip").exists()  # the rejected archive is gone
    assert not list((tmp_path / "d" / "ircadb").iterdir())


def test_download_refuses_file_urls_and_bad_sha256_before_downloading(server, tmp_path, capsys):
    local = tmp_path / "Task09_Spleen.tar"
    local.write_bytes(_tar_bytes({"Task09_Spleen/dataset.json": b"{}"}))
    for dataset in ("msd", "ircadb", "thesis-slices"):
        code, _, err = run_cli(capsys, "download", "--dataset", dataset, "--out", tmp_path / "o",
                               "--url", local.as_uri())
        assert_one_error(code, err, "file://", "http")
    code, _, err = run_cli(capsys, "download", "--dataset", "msd", "--out", tmp_path / "o", "--url",
                           server.url + "/Task09_Spleen.tar", "--sha256", "abc")
    assert_one_error(code, err, "sha256", "64 hexadecimal")
    assert server.requests == [] and not (tmp_path / "o").exists()


def test_corrupt_archive_is_one_line_and_deleted(server, tmp_path, capsys):
    import gzip

    good = _tar_bytes({"Task09_Spleen/dataset.json": b"{}",
                       "Task09_Spleen/x": __import__("os").urandom(20000)})
    broken = gzip.compress(good)[:-5000]  # truncated
    server.files["/Task09_Spleen.tar.gz"] = broken
    code, _, err = run_cli(capsys, "download", "--dataset", "msd", "--out", tmp_path, "--url",
                           server.url + "/Task09_Spleen.tar.gz", "--sha256", _sha(broken))
    assert_one_error(code, err, "Task09_Spleen.tar.gz", "corrupt")
    assert list(tmp_path.iterdir()) == []


def test_download_help_states_the_cap(capsys):
    from kdlib.cli import UNPACK_HELP
    from kdlib.data import download as dl

    assert f"{dl.UNPACK_LIMIT >> 30} GiB" in UNPACK_HELP and f"{dl.UNPACK_RATIO}x" in UNPACK_HELP
    with pytest.raises(SystemExit):
        run_cli(capsys, "download", "--help")
    assert "GiB per data set" in " ".join(capsys.readouterr().out.split())


def test_deflated_checkpoint_that_inflates_hugely_is_refused(run, tmp_path, capsys):
    import resource
    import zipfile

    copy = _copy_run(run, tmp_path)
    best = copy / "checkpoints" / "best.pt"
    with zipfile.ZipFile(best) as original:
        members = [(info, original.read(info)) for info in original.infolist()]
    block = bytes(1 << 20)
    with zipfile.ZipFile(best, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as bomb:
        for info, data in members:
            bomb.writestr(info.filename, data)
        with bomb.open(f"{members[0][0].filename.split('/')[0]}/data/999", "w",
                       force_zip64=True) as member:
            for _ in range(300):  # 300 MB of zeros in about 300 KB
                member.write(block)
    assert best.stat().st_size < 2 << 20
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = run_cli(capsys, "predict", "--model", copy, "--input", tmp_path / "in",
                           "--out", tmp_path / "pred")
    assert_one_error(code, err, "best.pt", "declares")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


# ------------------------------------------------------------- 5. a cache checked after writing
@pytest.fixture
def toy_cache(tmp_path):
    from conftest import write_msd
    from kdlib.data import preprocess

    data = write_msd(tmp_path / "msd")
    preprocess(data, tmp_path / "cache", size=16)
    return data, tmp_path / "cache"


def test_cache_records_a_checksum_per_array(toy_cache):
    from kdlib.data.cache import ARRAY_FILES
    from kdlib.io import read_json, sha256_file

    _, cache = toy_cache
    arrays = read_json(cache / "manifest.json")["arrays"]
    assert {n: a["sha256"] for n, a in arrays.items()} == {n: sha256_file(cache / n) for n in ARRAY_FILES}


def test_a_zeroed_mask_file_is_not_reused(toy_cache, capsys):
    data, cache = toy_cache
    masks = np.load(cache / "masks.npy")
    np.save(cache / "masks.npy", np.zeros_like(masks))
    code, out, err = run_cli(capsys, "preprocess", "--input", data, "--out", cache, "--size", 16)
    assert_one_error(code, err, "masks.npy", "checksum", "preprocess again")
    assert out == ""
    from kdlib.data import SliceCache
    from kdlib.errors import DataError

    with pytest.raises(DataError, match="checksum"):
        SliceCache.load(cache)


@pytest.mark.parametrize("how", ["masks of 7", "float64 images x1000", "images (N, S)"])
def test_cache_arrays_are_checked_when_loading_even_without_checksums(toy_cache, how):
    from kdlib.data import SliceCache
    from kdlib.errors import DataError

    _, cache = toy_cache
    manifest = json.loads((cache / "manifest.json").read_text())
    del manifest["arrays"]  # as a cache made before checksums were recorded
    (cache / "manifest.json").write_text(json.dumps(manifest))
    SliceCache.load(cache)  # untouched: loads
    if how == "masks of 7":
        np.save(cache / "masks.npy", np.full_like(np.load(cache / "masks.npy"), 7))
    elif how == "float64 images x1000":
        np.save(cache / "images.npy", np.load(cache / "images.npy").astype(np.float64) * 1000)
    else:
        np.save(cache / "images.npy", np.load(cache / "images.npy")[:, :, 0])
    with pytest.raises(DataError, match="masks.npy|images.npy"):
        SliceCache.load(cache)


# ------------------------------------------------------------- 7. evaluate checks coverage and grid
def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _truth_msd(root: Path, cases=("spleen_1", "spleen_2"), shape=(8, 8, 3)):
    label = np.zeros(shape, np.uint8)
    label[2:5, 2:6, 1] = 1
    for case in cases:
        write_nifti(root / "imagesTr" / f"{case}.nii.gz", _ct(shape))
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    return label


def test_evaluate_refuses_uncovered_cases_unless_allowed(tmp_path, capsys):
    label = _truth_msd(tmp_path / "truth")
    write_nifti(tmp_path / "pred" / "spleen_1.nii.gz", label)
    args = ["evaluate", "--pred", tmp_path / "pred", "--truth", tmp_path / "truth"]
    code, _, err = run_cli(capsys, *args)
    assert_one_error(code, err, "1 of 2", "spleen_2", "--allow-missing")
    code, out, _ = run_cli(capsys, *args, "--allow-missing")
    assert code == 0 and json.loads(out)["missing"] == ["spleen_2"]


def test_evaluate_refuses_uncovered_slices_unless_allowed(tmp_path, capsys):
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    for k in range(3):
        _png(tmp_path / "truth" / "masks" / f"spleen_1_{k}.png", mask)
    _png(tmp_path / "pred" / "spleen_1_0.png", mask)
    args = ["evaluate", "--pred", tmp_path / "pred", "--truth", tmp_path / "truth"]
    code, _, err = run_cli(capsys, *args)
    assert_one_error(code, err, "2 of 3", "spleen_1_1")
    code, out, _ = run_cli(capsys, *args, "--allow-missing")
    assert code == 0 and json.loads(out)["missing"] == ["spleen_1_1", "spleen_1_2"]


@pytest.mark.parametrize("grid", ["3 mm voxels", "shifted origin"])
def test_evaluate_refuses_a_prediction_on_another_grid(tmp_path, capsys, grid):
    import nibabel as nib

    label = _truth_msd(tmp_path / "truth", cases=("spleen_1",))
    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # the truth's (conftest.write_nifti)
    if grid == "3 mm voxels":
        affine = np.diag([3.0, 3.0, 6.0, 1.0])
    else:
        affine[:3, 3] = [40.0, 0.0, 0.0]
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(label, affine), str(tmp_path / "pred" / "spleen_1.nii.gz"))
    code, _, err = run_cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth",
                           tmp_path / "truth")
    assert_one_error(code, err, "spleen_1.nii.gz", "voxels" if grid == "3 mm voxels" else "affine")


def test_a_gif_whose_frames_decode_beyond_the_cap_is_refused(run, tmp_path, capsys, monkeypatch):
    from PIL import Image

    from kdlib.data import readers

    (tmp_path / "in").mkdir()
    frames = []
    for k in range(5):  # tiny changes: each frame stored as a few bytes, decoded to the canvas
        plane = np.zeros((64, 64), np.uint8)
        plane[k, k] = 255
        frames.append(Image.fromarray(plane))
    frames[0].save(tmp_path / "in" / "many.gif", save_all=True, append_images=frames[1:])
    monkeypatch.setattr(readers, "MAX_2D_PIXELS", 64 * 64 * 4)  # the cap, scaled down
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                           "--out", tmp_path / "pred")
    assert_one_error(code, err, "many.gif", "frame(s) of 64x64")
