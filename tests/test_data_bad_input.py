"""Every kind of bad input gives ONE DataError naming the file and the fix, and writes
nothing: through the Python API and through the CLI (exit 2, one line, no traceback)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, write_dicom_patient, write_msd, write_nifti, write_slices
from kdlib.data import preprocess, read_msd
from kdlib.errors import DataError


def _truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def corrupt_nifti(tmp):
    root = write_msd(tmp / "msd")
    (root / "imagesTr" / "spleen_2.nii.gz").write_bytes(b"this is not a nifti file" * 10)
    return root, "spleen_2.nii.gz", "corrupt"


def truncated_nifti(tmp):
    root = write_msd(tmp / "msd", shape=(32, 32, 8))
    _truncate(root / "labelsTr" / "spleen_1.nii.gz")
    return root, "spleen_1.nii.gz", "truncated"


def corrupt_png(tmp):
    root = write_slices(tmp / "slices")
    (root / "images" / "spleen_6_2.png").write_bytes(b"\x89PNG garbage" * 5)
    return root, "spleen_6_2.png", "corrupt"


def truncated_png(tmp):
    root = write_slices(tmp / "slices")
    _truncate(root / "masks" / "spleen_3_1.png")
    return root, "spleen_3_1.png", "truncated"


def corrupt_dicom(tmp):
    root = write_dicom_patient(tmp / "ircadb" / "p1", n=4)
    (root / "PATIENT_DICOM" / "image_2").write_bytes(b"garbage" * 40)
    return root.parent, "image_2", "corrupt"


def truncated_dicom(tmp):
    root = write_dicom_patient(tmp / "ircadb" / "p1", n=4, size=32)
    _truncate(root / "MASKS_DICOM" / "spleen" / "image_1", 0.7)
    return root.parent, "image_1", "truncated"


def shape_mismatch(tmp):
    root = write_msd(tmp / "msd")
    write_nifti(root / "labelsTr" / "spleen_2.nii.gz", np.zeros((16, 16, 4), np.uint8))
    return root, "spleen_2.nii.gz", "shape"


def png_size_mismatch(tmp):
    from PIL import Image

    root = write_slices(tmp / "slices", size=32)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "masks" / "spleen_6_0.png")
    return root, "spleen_6_0.png", "size"


def multilabel(tmp):
    root = write_msd(tmp / "msd")
    label = np.zeros((16, 16, 5), np.uint8)
    label[2:5, 2:5, 1] = 1
    label[8:12, 8:12, 2] = 2
    write_nifti(root / "labelsTr" / "spleen_1.nii.gz", label)
    return root, "spleen_1.nii.gz", "label_id"


def non_integer_labels(tmp):
    root = write_msd(tmp / "msd")
    label = np.zeros((16, 16, 5), np.float32)
    label[2:5, 2:5, 1] = 0.5
    write_nifti(root / "labelsTr" / "spleen_2.nii.gz", label)
    return root, "spleen_2.nii.gz", "non-integer"


def nan_voxels(tmp):
    root = write_msd(tmp / "msd")
    image = np.zeros((16, 16, 5), np.float32)
    image[3, 3, 3] = np.nan
    write_nifti(root / "imagesTr" / "spleen_2.nii.gz", image)
    return root, "spleen_2.nii.gz", "NaN"


def inf_voxels(tmp):
    root = write_msd(tmp / "msd")
    image = np.zeros((16, 16, 5), np.float32)
    image[1, 2, 0] = np.inf
    write_nifti(root / "imagesTr" / "spleen_1.nii.gz", image)
    return root, "spleen_1.nii.gz", "infinite"


def empty_folder(tmp):
    (tmp / "empty").mkdir()
    return tmp / "empty", "empty", "empty folder"


def empty_images_folder(tmp):
    (tmp / "slices" / "images").mkdir(parents=True)
    (tmp / "slices" / "masks").mkdir()
    return tmp / "slices", "slices", "empty folder"


def msd_image_without_mask(tmp):
    root = write_msd(tmp / "msd")
    (root / "labelsTr" / "spleen_2.nii.gz").unlink()
    return root, "spleen_2.nii.gz", "without its mask"


def slices_image_without_mask(tmp):
    root = write_slices(tmp / "slices")
    (root / "masks" / "spleen_3_2.png").unlink()
    return root, "spleen_3_2.png", "without its mask"


def thesis_layout_image_without_mask(tmp):
    root = write_slices(tmp / "slices", layout="thesis")
    (root / "mask_spleen_6_1.png").unlink()
    return root, "image_spleen_6_1.png", "without its mask"


def dicom_image_without_mask(tmp):
    root = write_dicom_patient(tmp / "ircadb" / "p1", n=4)
    (root / "MASKS_DICOM" / "spleen" / "image_3").unlink()
    return root.parent, "image_3", "without its mask"


def nifti_image_without_mask(tmp):
    write_nifti(tmp / "nii" / "ct.nii.gz", np.zeros((8, 8, 3), np.int16))
    return tmp / "nii", "ct.nii.gz", "without its mask"


def same_case_twice(tmp):
    root = write_msd(tmp / "msd")
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"].append(meta["training"][0])
    (root / "dataset.json").write_text(json.dumps(meta))
    return root, "dataset.json", "same case twice"


CASES = [corrupt_nifti, truncated_nifti, corrupt_png, truncated_png, corrupt_dicom,
         truncated_dicom, shape_mismatch, png_size_mismatch, multilabel, non_integer_labels,
         nan_voxels, inf_voxels, empty_folder, empty_images_folder, msd_image_without_mask,
         slices_image_without_mask, thesis_layout_image_without_mask,
         dicom_image_without_mask, nifti_image_without_mask, same_case_twice]


@pytest.mark.parametrize("make", CASES, ids=[f.__name__ for f in CASES])
def test_api(make, tmp_path):
    inp, name, words = make(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        preprocess(inp, out, size=16)
    message = str(err.value)
    assert name in message and words.lower() in message.lower()
    assert " -- " in message  # the fix
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp left


def _cli_command(inp, out):
    return [sys.executable, "-m", "kdlib", "preprocess", "--input", str(inp), "--out",
            str(out), "--size", "16"]


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Run the CLI on every bad input, all processes at once (2 shared cores: the runs are
    mostly interpreter start-up). Progress bars also write to stderr; they are switched off
    so that stderr holds the error line alone (test_cli_with_progress checks that the error
    is still the last line with them on)."""
    env = dict(os.environ, KDLIB_PROGRESS="0")
    runs = {}
    for make in CASES:
        tmp = tmp_path_factory.mktemp(make.__name__)
        inp, name, words = make(tmp)
        out = tmp / "out"
        proc = subprocess.Popen(_cli_command(inp, out), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
        runs[make.__name__] = (proc, name, words, out)
    results = {}
    for key, (proc, name, words, out) in runs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[key] = (proc.returncode, stdout, stderr, name, words, out)
    return results


@pytest.mark.parametrize("make", CASES, ids=[f.__name__ for f in CASES])
def test_cli(make, cli_runs):
    returncode, stdout, stderr, name, words, out = cli_runs[make.__name__]
    assert returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("kdlib: error:") and name in lines[0]
    assert words.lower() in lines[0].lower()
    assert "Traceback" not in stderr + stdout
    assert not out.exists()


def test_cli_with_progress(tmp_path):
    inp, name, _ = nan_voxels(tmp_path)
    proc = subprocess.run(_cli_command(inp, tmp_path / "out"), capture_output=True, text=True,
                          cwd=REPO, timeout=120, env=dict(os.environ, KDLIB_PROGRESS="1"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("kdlib: error:") and name in lines[-1]
    assert not (tmp_path / "out").exists()


def test_same_case_twice_across_inputs(tmp_path):
    a = write_msd(tmp_path / "a", cases=("spleen_1", "spleen_2"))
    b = write_msd(tmp_path / "b", cases=("spleen_2", "spleen_5"))
    with pytest.raises(DataError, match="same case twice: 'spleen_2'"):
        preprocess([a, b], tmp_path / "out", size=16)
    assert not (tmp_path / "out").exists()


def test_255_masks_and_label_id_are_accepted(tmp_path):
    root = write_msd(tmp_path / "msd")
    label = np.zeros((16, 16, 5), np.uint8)
    label[2:6, 2:6, 1:4] = 255
    write_nifti(root / "labelsTr" / "spleen_1.nii.gz", label)
    vols = {v.case_id: v for v in read_msd(root)}
    assert set(np.unique(vols["spleen_1"].label)) == {0, 1}
    assert vols["spleen_1"].positive_slices == 3
    multi = label // 255 * 3
    multi[10:12, 10:12, :] = 7  # another organ
    for case in ("spleen_1", "spleen_2"):
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", multi)
    vols = {v.case_id: v for v in read_msd(root, label_id=3)}
    assert vols["spleen_2"].positive_slices == 3


def test_label_id_absent_from_the_map_is_an_error(tmp_path):
    """A wrong --label-id used to give empty masks silently (0 positive slices)."""
    root = write_msd(tmp_path / "msd")
    label = np.zeros((16, 16, 5), np.uint8)
    label[2:6, 2:6, 1:4] = 1
    label[8:12, 8:12, 1:4] = 2
    write_nifti(root / "labelsTr" / "spleen_1.nii.gz", label)
    with pytest.raises(DataError, match="label id 5 is not in this label map") as err:
        preprocess(root, tmp_path / "out", size=16, label_id=5)
    assert "spleen_1.nii.gz" in str(err.value) and "0, 1, 2" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_label_id_with_no_positive_slice_at_all_is_an_error(tmp_path):
    """Every map is empty, so the id selects nothing anywhere: 0 positive slices."""
    root = write_msd(tmp_path / "msd")
    for case in ("spleen_1", "spleen_2"):
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", np.zeros((16, 16, 5), np.uint8))
    with pytest.raises(DataError, match="no voxel with label id 1"):
        preprocess(root, tmp_path / "out", size=16, label_id=1)
    assert not (tmp_path / "out").exists()


def test_phantom_size_has_an_upper_bound(tmp_path):
    from kdlib.data import write_phantom_msd
    from kdlib.errors import ConfigError

    with pytest.raises(ConfigError, match="at most 2048"):
        write_phantom_msd(tmp_path / "p", size=100000)
    assert not (tmp_path / "p").exists()
