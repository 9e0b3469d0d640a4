"""`predict` and `evaluate`: the contract (checked before writing, all or nothing, never
overwriting), orientation (headers for volumes, --orient for 2D slices) and case grouping.

Geometry tests replace the network by a fixed rule (mask = bright pixels of the slice the
model sees), so they check where masks land, not what a 1-epoch model learnt."""
from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import write_dicom_patient, write_nifti, assert_one_error, run_cli
from kdlib import predict as predict_mod


pytestmark = pytest.mark.usefixtures("no_progress_bars")


@pytest.fixture
def bright_rule(monkeypatch):
    """The network replaced by `mask = slice > 127`; the batches it saw are kept."""
    seen = []

    def infer(run_dir, images, device=None, model=None, tta=False):
        seen.append(np.array(images))
        return {"mask": (np.asarray(images) > 127).astype(np.uint8)}

    monkeypatch.setattr("kdlib.train.infer", infer)
    return seen


def _ct(shape=(24, 20, 6), seed=0):
    return np.random.default_rng(seed).normal(0, 40, size=shape).astype(np.int16)


# ----------------------------------------------------------------------- the contract
def test_second_input_corrupt_leaves_nothing(run, tmp_path, capsys):
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    (tmp_path / "in" / "b.nii.gz").write_bytes(b"not a nifti" * 50)
    code, out, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                          "--out", tmp_path / "new" / "pred")
    assert_one_error(code, err, "b.nii.gz", "corrupt")
    assert not (tmp_path / "new").exists() and out == ""
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".kdlib")]


def test_existing_folder_is_filled_and_nothing_is_overwritten(run, tmp_path, capsys):
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    write_nifti(tmp_path / "in" / "b.nii.gz", _ct(seed=1))
    out = tmp_path / "pred"
    out.mkdir(mode=0o750)
    os.chmod(out, 0o750)
    (out / "notes.txt").write_text("mine")
    assert run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in", "--out", out)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_spleen.nii.gz", "b_spleen.nii.gz",
                                                      "notes.txt", "spleen.csv"]
    assert (out / "notes.txt").read_text() == "mine" and (out.stat().st_mode & 0o777) == 0o750
    stamp, table = (out / "a_spleen.nii.gz").read_bytes(), (out / "spleen.csv").read_bytes()
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in", "--out", out)
    assert_one_error(code, err, "a_spleen.nii.gz", "overwrite")
    assert (out / "a_spleen.nii.gz").read_bytes() == stamp
    write_nifti(tmp_path / "in2" / "c.nii.gz", _ct(seed=2))  # a new input: the table is taken
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in2",
                           "--out", out)
    assert_one_error(code, err, "spleen.csv", "overwrite")
    assert (out / "spleen.csv").read_bytes() == table and not (out / "c_spleen.nii.gz").exists()


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_image_is_refused(run, tmp_path, capsys, value):
    image = _ct().astype(np.float32)
    image[3, 4, 2] = value
    write_nifti(tmp_path / "in" / "scan.nii.gz", image)
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                        "--out", tmp_path / "pred")
    assert_one_error(code, err, "scan.nii.gz", "NaN or infinite")
    assert not (tmp_path / "pred").exists()


def test_label_maps_in_a_nifti_folder_are_not_segmented(run, tmp_path, capsys, bright_rule):
    write_nifti(tmp_path / "in" / "ct.nii.gz", _ct())
    write_nifti(tmp_path / "in" / "ct_seg.nii.gz", np.zeros((24, 20, 6), np.uint8))
    code, out, _ = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                        "--out", tmp_path / "pred")
    assert code == 0 and json.loads(out)["inputs"] == 1
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["ct_spleen.nii.gz",
                                                                    "spleen.csv"]


def test_dicom_slices_of_mixed_sizes(run, tmp_path, capsys):
    write_dicom_patient(tmp_path / "ircadb" / "p1", n=3, size=16)
    write_dicom_patient(tmp_path / "other", n=5, size=20, shuffle_names=False)
    os.replace(tmp_path / "other" / "PATIENT_DICOM" / "image_4",  # z = 6.4: a new position
               tmp_path / "ircadb" / "p1" / "PATIENT_DICOM" / "image_9")
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "ircadb",
                        "--out", tmp_path / "pred")
    assert_one_error(code, err, "image_", "size")
    assert not (tmp_path / "pred").exists()


def test_out_is_a_file(run, tmp_path, capsys):
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    (tmp_path / "taken").write_text("x")
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                        "--out", tmp_path / "taken")
    assert_one_error(code, err, "taken", "is a file")


def test_unwritable_output(run, tmp_path, capsys, monkeypatch):
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())

    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr("pathlib.Path.mkdir", refuse)
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                        "--out", tmp_path / "pred")
    assert_one_error(code, err, "permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(run, tmp_path, capsys):
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                        "--out", tmp_path / "ro" / "pred")
    assert_one_error(code, err, "permission")


def test_other_process_creates_the_folder_meanwhile(run, tmp_path, capsys, monkeypatch):
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    out = tmp_path / "pred"

    def infer(run_dir, images, device=None, model=None, tta=False):
        out.mkdir(exist_ok=True)
        (out / "theirs.nii.gz").write_text("another process's result")
        return {"mask": np.zeros(np.shape(images), np.uint8)}

    monkeypatch.setattr("kdlib.train.infer", infer)
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in", "--out", out)
    assert_one_error(code, err, "another process")
    assert [p.name for p in out.iterdir()] == ["theirs.nii.gz"]


def _copy_run(run, tmp_path):
    import shutil

    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy, copy / "checkpoints" / "best.pt"


def test_truncated_checkpoint(run, tmp_path, capsys):
    copy, best = _copy_run(run, tmp_path)
    best.write_bytes(best.read_bytes()[:200])
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    code, _, err = run_cli(capsys, "predict", "--model", copy, "--input", tmp_path / "in",
                        "--out", tmp_path / "pred")
    assert_one_error(code, err, "best.pt")
    assert not (tmp_path / "pred").exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # creating the marker file = code ran


def test_checkpoint_with_a_pickle_payload_does_not_run(run, tmp_path, capsys):
    import torch

    copy, best = _copy_run(run, tmp_path)
    marker = tmp_path / "payload-ran"
    state = torch.load(best, map_location="cpu", weights_only=True)
    state["payload"] = _Payload(marker)
    torch.save(state, best)  # loading it with weights_only=False would create the marker
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    code, _, err = run_cli(capsys, "predict", "--model", copy, "--input", tmp_path / "in",
                        "--out", tmp_path / "pred")
    assert_one_error(code, err, "best.pt")
    assert not marker.exists()


# ----------------------------------------------------------------------- orientation
def _blob(shape):
    image = np.full(shape, -500, np.int16)
    image[2:7, 3:12, 1:4] = 500  # bright and asymmetric: any flip or swap moves it
    return image


@pytest.mark.parametrize("axes,flips", [((0, 1, 2), (-1, 1, 1)), ((1, 0, 2), (1, -1, -1)),
                                        ((2, 0, 1), (1, 1, 1))])
def test_nifti_mask_comes_back_in_the_inputs_own_voxel_order(run, tmp_path, capsys, bright_rule,
                                                              axes, flips):
    import nibabel as nib

    image = _blob((12, 16, 5))
    affine = np.zeros((4, 4))
    for source, (axis, flip) in enumerate(zip(axes, flips)):
        affine[axis, source] = flip * 0.8
    affine[3, 3] = 1
    path = tmp_path / "in" / "scan.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(image, affine), str(path))
    assert run_cli(capsys, "predict", "--model", run, "--input", path, "--out", tmp_path / "p")[0] == 0
    written = nib.load(str(tmp_path / "p" / "scan_spleen.nii.gz"))
    assert np.allclose(written.affine, affine)
    assert np.array_equal(np.asarray(written.dataobj), (image > 0).astype(np.uint8))
    # the model saw the slices in the canonical (RAS) orientation
    canonical = nib.as_closest_canonical(nib.Nifti1Image(image, affine)).get_fdata()
    seen = np.concatenate(bright_rule)
    assert len(seen) == canonical.shape[2]
    assert [bool((s > 127).any()) for s in seen] == list((canonical > 0).any(axis=(0, 1)))


@pytest.mark.parametrize("op", ["rot90", "flipud", "fliplr", "rot270"])
def test_orient_turns_2d_slices_and_masks_come_back(run, tmp_path, capsys, bright_rule, op):
    from PIL import Image

    from kdlib.data.readers import orient_slices

    plane = np.zeros((32, 32), np.uint8)
    plane[2:10, 4:20] = 255
    (tmp_path / "in").mkdir()
    Image.fromarray(plane).save(tmp_path / "in" / "slice_1.png")
    code, out, _ = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                        "--orient", op, "--out", tmp_path / "p")
    assert code == 0 and json.loads(out)["orient"] == op
    assert np.array_equal(bright_rule[0][0], orient_slices(plane, op))  # what the model saw
    mask = np.asarray(Image.open(tmp_path / "p" / "slice_1_spleen.png"))
    assert np.array_equal(mask, plane)  # turned back to the input's orientation


def test_warns_per_input_when_no_spleen_is_found(run, tmp_path, capsys, monkeypatch):
    """Issue 19: a run that found no spleen in a volume says so, naming the volume, whatever
    the training share (the phantom has spleen on about 29% of its slices); inputs with
    spleen are not named."""
    from PIL import Image

    def infer(run_dir, images, device=None, model=None, tta=False):  # spleen only in bright inputs
        images = np.asarray(images)
        return {"mask": (images > 127).astype(np.uint8)}

    monkeypatch.setattr("kdlib.train.infer", infer)
    write_nifti(tmp_path / "in" / "a.nii.gz", np.full((24, 20, 6), -1000, np.int16))
    bright = np.full((24, 20, 6), -1000, np.int16)
    bright[4:8, 4:8, 2:4] = 1000
    write_nifti(tmp_path / "in" / "b.nii.gz", bright)
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                           "--out", tmp_path / "p1")
    assert code == 0 and len(err) == 1 and err[0].startswith("kdlib: warning:"), err
    assert "a.nii.gz" in err[0] and "no spleen" in err[0] and "b.nii.gz" not in err[0]
    # 2D slices: one line per case, suggesting --orient
    (tmp_path / "flat").mkdir()
    for k in range(3):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "flat" / f"spleen_4_{k}.png")
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "flat",
                           "--out", tmp_path / "p2")
    assert code == 0 and len(err) == 1 and "spleen_4" in err[0] and "--orient" in err[0], err


def test_warns_when_spleen_is_in_more_slices_than_training_makes_likely(run, tmp_path, capsys,
                                                                        monkeypatch):
    """Spleen on every slice of a 12-slice volume, from a model trained with spleen on at
    most half of its slices: one warning naming the input; with the training share unknown,
    that half is skipped."""
    from kdlib.predict import training_share
    from kdlib.train import RunConfig
    from kdlib.io import read_json

    monkeypatch.setattr("kdlib.train.infer", lambda run_dir, images, device=None, model=None, tta=False:
                        {"mask": np.ones(np.shape(images), np.uint8)})
    cfg = RunConfig.from_dict(read_json(run / "config.json"))
    share = training_share(cfg, read_json(Path(cfg.cache) / "manifest.json"))
    assert share is not None and 0 < share <= 0.5
    write_nifti(tmp_path / "in" / "full.nii.gz", _ct((24, 20, 12)))
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                           "--out", tmp_path / "p1")
    assert code == 0 and len(err) == 1 and "full.nii.gz" in err[0] and "12 of 12" in err[0]
    monkeypatch.setattr(predict_mod, "training_share", lambda cfg, manifest: None)
    code, _, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                           "--out", tmp_path / "p2")
    assert code == 0 and not err


def test_spleen_csv_and_json_give_volumes_in_ml(run, tmp_path, capsys, bright_rule):
    """Masks are named <case>_spleen.nii.gz / <slice>_spleen.png; spleen.csv has one row per
    input with the spleen's volume in mL from the voxel spacing (2D: pixels, the spacing of a
    PNG being unknown), and stdout's one JSON summary holds the same rows."""
    import csv

    from PIL import Image

    image = np.full((24, 20, 6), -1000, np.int16)
    image[2:6, 3:8, 1:4] = 1000  # 4 x 5 x 3 = 60 voxels of 0.5 x 0.5 x 2 mm = 30 mm^3
    write_nifti(tmp_path / "in" / "ct.nii.gz", image, spacing=(0.5, 0.5, 2.0))
    code, out, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "in",
                             "--out", tmp_path / "p")
    assert code == 0 and not err, err
    summary = json.loads(out)
    rows = list(csv.DictReader(open(tmp_path / "p" / "spleen.csv")))
    assert [r["case"] for r in rows] == ["ct"] and summary["csv"] == str(tmp_path / "p" / "spleen.csv")
    (row,) = rows
    assert (row["slices"], row["slices_with_spleen"], row["unit"]) == ("6", "3", "mL")
    assert float(row["spleen_size"]) == pytest.approx(0.03)
    assert row["model"] == "S1" and row["run"] == str(run)
    assert summary["rows"][0]["spleen_size"] == pytest.approx(0.03)
    written = nib.load(str(tmp_path / "p" / "ct_spleen.nii.gz"))
    assert np.allclose(written.affine, nib.load(str(tmp_path / "in" / "ct.nii.gz")).affine)
    plane = np.zeros((32, 32), np.uint8)
    plane[2:6, 3:8] = 255
    (tmp_path / "flat").mkdir()
    Image.fromarray(plane).save(tmp_path / "flat" / "spleen_2_7.png")
    code, out, _ = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "flat",
                           "--out", tmp_path / "p2")
    (row,) = list(csv.DictReader(open(tmp_path / "p2" / "spleen.csv")))
    assert (row["case"], row["spleen_size"], row["unit"]) == ("spleen_2_7", "20", "pixels")
    assert (tmp_path / "p2" / "spleen_2_7_spleen.png").is_file()


# ----------------------------------------------------------------------- evaluate
def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_evaluate_missing_truth(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    code, _, err = run_cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth",
                        tmp_path / "nowhere")
    assert_one_error(code, err, "nowhere", "not found")


@pytest.mark.parametrize("values", [(0, 128), (0, 1, 2)])
def test_evaluate_refuses_non_binary_predictions(tmp_path, capsys, values):
    mask = np.zeros((8, 8), np.uint8)
    for k, v in enumerate(values):
        mask[k] = v
    _png(tmp_path / "pred" / "spleen_1_0.png", mask)
    _png(tmp_path / "truth" / "masks" / "spleen_1_0.png", np.zeros((8, 8), np.uint8))
    code, _, err = run_cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth", tmp_path / "truth")
    assert_one_error(code, err, "spleen_1_0.png", "not binary")


def test_evaluate_refuses_nan_in_nifti_predictions(tmp_path, capsys):
    label = np.zeros((8, 8, 3), np.uint8)
    write_nifti(tmp_path / "truth" / "imagesTr" / "spleen_1.nii.gz", _ct((8, 8, 3)))
    write_nifti(tmp_path / "truth" / "labelsTr" / "spleen_1.nii.gz", label)
    pred = label.astype(np.float32)
    pred[1, 1, 1] = np.nan
    write_nifti(tmp_path / "pred" / "spleen_1.nii.gz", pred)
    code, _, err = run_cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth",
                        tmp_path / "truth", "--format", "msd")
    assert_one_error(code, err, "spleen_1.nii.gz", "NaN")


def test_case_pattern_groups_slices_by_the_right_case(tmp_path, capsys):
    """Names `<slice>_<organ>_<case>.png`: the default rule (text before the last
    `_<number>`) cannot find the case; --case-pattern can."""
    rng = np.random.default_rng(0)
    names = [f"{k}_spleen_{case}" for case in ("caseA", "caseB") for k in range(3)]
    for name in names:
        mask = (rng.random((8, 8)) > 0.5).astype(np.uint8) * 255
        _png(tmp_path / "pred" / f"{name}.png", mask)
        _png(tmp_path / "truth" / "masks" / f"{name}.png", mask)
    code, out, _ = run_cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth",
                        tmp_path / "truth")
    assert code == 0 and len(json.loads(out)["per_volume"]["cases"]) == 6  # one per file
    code, out, _ = run_cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth",
                        tmp_path / "truth", "--case-pattern", r"_(?P<case>[^_]+)$")
    report = json.loads(out)
    assert code == 0 and sorted(report["per_volume"]["cases"]) == ["caseA", "caseB"]
    assert all(c["n_slices"] == 3 for c in report["per_volume"]["cases"].values())
    code, _, err = run_cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth",
                        tmp_path / "truth", "--case-pattern", r"^case(\d+)$")
    assert_one_error(code, err, "does not match --case-pattern")


def test_published_model_segments_without_its_cache(run, tmp_path):
    """`pipeline.publish_models` copies a student with its preprocessing: `predict` then needs
    neither the results folder's cache nor anything but the published folder, and gives the
    same masks as the original run folder."""
    import shutil

    from kdlib import pipeline
    from kdlib.io import read_json
    from kdlib.predict import predict
    from kdlib.train import RunConfig, load_model

    out = tmp_path / "results"
    shutil.copytree(run.parent, out / "runs")
    models = pipeline.publish_models(out, tmp_path / "publish")
    published = models / run.name
    assert sorted(p.name for p in published.rglob("*") if p.is_file()) == [
        "best.pt", "config.json", "history.csv", "metrics.json", "preprocessing.json"]
    load_model(published, "cpu")  # weights only: loads with weights_only=True
    for name in ("config.json", "preprocessing.json"):  # no folder of the machine that made it
        text = (published / name).read_text()
        assert str(tmp_path) not in text and str(run.parent.parent) not in text, name
    cache = Path(RunConfig.from_dict(read_json(run / "config.json")).cache)
    inputs = tmp_path / "phantom"
    shutil.copytree(cache.parent / "phantom", inputs)
    first = predict(run, inputs, tmp_path / "from_run")
    hidden = cache.with_name("cache-moved-away")
    cache.rename(hidden)
    try:
        second = predict(published, inputs, tmp_path / "from_published")
    finally:
        hidden.rename(cache)
    assert first["slices"] == second["slices"] > 0
    for mask in (tmp_path / "from_run").rglob("*.nii.gz"):
        twin = tmp_path / "from_published" / mask.relative_to(tmp_path / "from_run")
        assert np.array_equal(nib.load(mask).get_fdata(), nib.load(twin).get_fdata())


# ------------------------------------------------------- DICOM as scanners export it (issue 19)
def _uid_series(folder: Path, iop, normal_positions, size=32, preambleless=()):
    """A CT series named by UIDs (`CT.1.3.12.2.1107.5.1.4.<n>`, no extension) whose names
    sort against the slice order (scrambled: neither forwards nor backwards); slice k (k-th along the normal) has k+1 bright pixels in
    row 0. `preambleless`: slice numbers written without preamble or file meta."""
    import pydicom

    from conftest import _dicom_slice

    iop = np.asarray(iop, float)
    normal = np.cross(iop[:3], iop[3:])
    scrambled = [3, 1, 4, 2, 6, 5]
    for k, along in enumerate(normal_positions):
        pixels = np.full((size, size), -1000, np.int16)
        pixels[0, : k + 1] = 1000
        path = folder / f"CT.1.3.12.2.1107.5.1.4.{scrambled[k]}"  # name order != slice order
        _dicom_slice(path, pixels, z=0.0, instance=scrambled[k])
        ds = pydicom.dcmread(str(path))
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.ImagePositionPatient = [float(v) for v in normal * along + np.array([3.0, -2.0, 5.0])]
        if k in preambleless:
            ds.preamble = None
            del ds.file_meta
            ds.save_as(str(path), enforce_file_format=False)
        else:
            ds.save_as(str(path), enforce_file_format=True)
    return folder


@pytest.mark.parametrize("iop", [[1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1]],
                         ids=["axial", "coronal"])
def test_dicom_without_extensions_is_found_by_content_in_slice_order(run, tmp_path, capsys,
                                                                     bright_rule, iop):
    """No --format, no .dcm: the series is found by content and its slices are ordered by
    ImagePositionPatient along the slice normal (for the coronal series every slice has the
    same z, so neither z nor the names could order it)."""
    from kdlib.data.readers import is_dicom_file

    series = _uid_series(tmp_path / "scan" / "series1", iop, [0.0, 2.5, 5.0, 7.5],
                         preambleless=(1,))
    (tmp_path / "scan" / "notes.txt").write_text("not DICOM")
    assert is_dicom_file(series / "CT.1.3.12.2.1107.5.1.4.1")  # no preamble: pydicom's check
    assert not is_dicom_file(tmp_path / "scan" / "notes.txt")
    code, out, err = run_cli(capsys, "predict", "--model", run, "--input", tmp_path / "scan",
                             "--out", tmp_path / "pred")
    assert code == 0, err
    mask = np.asarray(nib.load(str(next((tmp_path / "pred").glob("series1*.nii.gz")))).dataobj)
    # the mask is in kdlib's canonical orientation: find the series' slice axis (length 4)
    per_slice = [mask.sum(axis=tuple(a for a in range(3) if a != axis)).tolist()
                 for axis in range(3) if mask.shape[axis] == 4]
    assert [1, 2, 3, 4] in per_slice or [4, 3, 2, 1] in per_slice, per_slice


def test_evaluate_label_id_scores_a_multi_label_truth_map_given_as_a_file(tmp_path, capsys):
    """Issue 19: a multi-label truth map needs --label-id, which evaluate now accepts (the
    error says so and is true), and --truth may be one file."""
    labels = np.zeros((8, 8, 3), np.uint8)
    labels[1:4, 1:4, 1] = 1  # spleen
    labels[5:7, 5:7, :] = 2  # another organ
    write_nifti(tmp_path / "truth" / "ct_labels.nii.gz", labels)
    write_nifti(tmp_path / "pred" / "ct_spleen.nii.gz", (labels == 1).astype(np.uint8))
    args = ("evaluate", "--pred", tmp_path / "pred", "--truth",
            tmp_path / "truth" / "ct_labels.nii.gz")
    code, _, err = run_cli(capsys, *args)
    assert_one_error(code, err, "ct_labels.nii.gz", "--label-id")
    code, out, err = run_cli(capsys, *args, "--label-id", "1")
    assert code == 0, err
    report = json.loads(out)
    assert report["pooled"]["dice"] == pytest.approx(1.0)
    code, out, _ = run_cli(capsys, *args, "--label-id", "2")
    assert code == 0 and json.loads(out)["pooled"]["dice"] == pytest.approx(0.0)
    # a 2D truth mask file, multi-label too
    truth2d = np.zeros((8, 8), np.uint8)
    truth2d[2:5, 2:5], truth2d[6:, 6:] = 3, 7
    _png(tmp_path / "t2" / "mask_7.png", truth2d)
    _png(tmp_path / "p2" / "7_spleen.png", (truth2d == 3).astype(np.uint8) * 255)
    code, out, err = run_cli(capsys, "evaluate", "--pred", tmp_path / "p2", "--truth",
                             tmp_path / "t2" / "mask_7.png", "--label-id", "3")
    assert code == 0 and json.loads(out)["pooled"]["dice"] == pytest.approx(1.0), err


def test_default_grouping_of_18_slices_of_10_patients_is_safe(tmp_path, capsys, no_progress_bars):
    """Issue 19: `<slice>_spleen_<case>.jpg`, 18 slices of 10 patients. The old default (text
    before the last `_<number>`) made 15 wrong cases, merging patients that share a slice
    number; now no name is parsed with confidence, so each slice is its own case and one
    warning suggests --case-pattern, which then gives the 10 patients."""
    rng = np.random.default_rng(1)
    patients = [3, 6, 8, 10, 12, 14, 17, 19, 21, 22]
    slices = [(40, 3), (41, 3), (40, 6), (12, 8), (13, 8), (40, 10), (12, 12), (7, 14),
              (8, 14), (40, 17), (12, 19), (13, 19), (7, 21), (40, 22), (41, 22), (42, 22),
              (12, 10), (8, 6)]
    assert len(slices) == 18 and {c for _, c in slices} == set(patients)
    for k, case in slices:
        mask = np.zeros((16, 16), np.uint8)
        mask[2:2 + rng.integers(3, 10), 3:12] = 255
        _png(tmp_path / "pred" / f"{k}_spleen_{case}_spleen.png", mask)  # what predict writes
        (tmp_path / "truth" / "masks").mkdir(parents=True, exist_ok=True)
        from PIL import Image

        Image.fromarray(mask).save(tmp_path / "truth" / "masks" / f"{k}_spleen_{case}.jpg",
                                   quality=100)
    code, out, err = run_cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth",
                             tmp_path / "truth")
    cases = json.loads(out)["per_volume"]["cases"]
    assert code == 0 and len(cases) == 18 and all(c["n_slices"] == 1 for c in cases.values())
    assert len(err) == 1 and err[0].startswith("kdlib: warning:") and "--case-pattern" in err[0]
    code, out, err = run_cli(capsys, "evaluate", "--pred", tmp_path / "pred", "--truth",
                             tmp_path / "truth", "--case-pattern", r"_(?P<case>[^_]+)$")
    cases = json.loads(out)["per_volume"]["cases"]
    assert code == 0 and not err and sorted(cases, key=int) == [str(c) for c in patients]
    assert sum(c["n_slices"] for c in cases.values()) == 18
