"""Readers on real files that nobody here wrote (skipped when ../shared/data is absent)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_shared
from kdlib.data import preprocess, read_dicom, read_nifti_pair, read_slices
from kdlib.errors import DataError


def _spleen_row_fraction(volumes) -> float:
    """Mean row (axis 0) of spleen pixels as a fraction of the height: the thesis
    orientation puts the spleen in the upper half (< 0.5)."""
    rows, total = 0.0, 0
    for v in volumes:
        i = np.nonzero(v.label)[0]
        rows += (i / v.label.shape[0]).sum()
        total += i.size
    return rows / total


@pytest.fixture(scope="module")
def msd_inventory(tmp_path_factory):
    labels = require_shared("msd_spleen_labels/Task09_Spleen")
    out = tmp_path_factory.mktemp("inventory") / "inv"
    return out, preprocess(labels, out, labels_only=True)


def test_msd_labels_inventory(msd_inventory):
    out, summary = msd_inventory
    assert (summary["cases"], summary["slices"], summary["positive_slices"]) == (41, 3650, 1051)
    assert summary["reused"] is False
    per_case = {row["case_id"]: row for row in summary["per_case"]}
    assert len(per_case) == 41
    assert per_case["spleen_10"]["slices"] == 55
    assert all(row["shape"][:2] == [512, 512] for row in per_case.values())
    inventory = json.loads((out / "inventory.json").read_text())
    assert inventory["counts"] == {"cases": 41, "slices": 3650, "positive_slices": 1051}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["synthetic"] is False
    assert len(manifest["inputs"][0]["sha256"]) == 42  # dataset.json + 41 label volumes
    assert not (out / "images.npy").exists()


def test_msd_inventory_is_reused(msd_inventory):
    out, first = msd_inventory
    again = preprocess(require_shared("msd_spleen_labels/Task09_Spleen"), out, labels_only=True)
    assert again["reused"] is True
    assert again["slices"] == first["slices"] and again["per_case"] == first["per_case"]


def test_msd_labels_without_images_needs_labels_only(tmp_path):
    labels = require_shared("msd_spleen_labels/Task09_Spleen")
    with pytest.raises(DataError, match="labels-only|labels_only"):
        preprocess(labels, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_thesis_slices():
    path = require_shared("thesis_slices")
    volumes = list(read_slices(path))
    assert [v.case_id for v in volumes] == ["spleen_3", "spleen_6", "spleen_8", "spleen_22"]
    assert sum(v.n_slices for v in volumes) == 85
    assert sum(v.positive_slices for v in volumes) == 56
    for v in volumes:
        assert v.intensity == "8bit" and v.image.dtype == np.uint8
        assert v.image.shape == v.label.shape and v.image.shape[:2] == (256, 256)
        # slice index = GIF frame number
        assert list(v.slice_index) == list(range(v.n_slices))
        assert len(v.extra["gif_ranges"]) == 1
    assert volumes[3].extra["gif_ranges"] == [[40, 70]]
    assert _spleen_row_fraction(volumes) < 0.5


def test_ircadb_patient_order():
    path = require_shared("ircadb")
    volumes = list(read_dicom(path))
    assert [v.case_id for v in volumes] == ["3Dircadb1.1", "3Dircadb1.7"]
    assert [v.n_slices for v in volumes] == [129, 151]
    assert [v.positive_slices for v in volumes] == [46, 54]
    for v in volumes:
        z = v.extra["z_positions"]
        assert z == sorted(z) and len(set(z)) == len(z)  # ordered by position in the patient
        assert v.image.dtype == np.float32 and v.image.shape == v.label.shape
        assert v.image.min() >= -1100 and v.image.max() > 300  # HU
        assert set(np.unique(v.label)) <= {0, 1}
    # spleen slices form one contiguous run in patient order
    for v in volumes:
        pos = np.flatnonzero(v.positive)
        assert pos[-1] - pos[0] + 1 == pos.size
    assert _spleen_row_fraction(volumes) < 0.5  # rotated into the thesis orientation


def test_totalsegmentator_label_id():
    folder = require_shared("totalsegmentator_example")
    image, seg = folder / "example_ct_sm.nii.gz", folder / "example_seg.nii.gz"
    (vol,) = list(read_nifti_pair(image, seg, label_id=1))
    assert vol.image.shape == vol.label.shape == (122, 101, 30)
    assert set(np.unique(vol.label)) == {0, 1}
    assert vol.positive_slices > 0
    with pytest.raises(DataError, match="label_id") as err:
        list(read_nifti_pair(image, seg))
    assert "example_seg.nii.gz" in str(err.value)


def test_totalsegmentator_preprocess(tmp_path):
    folder = require_shared("totalsegmentator_example")
    summary = preprocess(folder, tmp_path / "c", label_id=1, size=64)
    assert summary["cases"] == 1 and summary["slices"] == 30
    with pytest.raises(DataError, match="label_id"):
        preprocess(folder, tmp_path / "c2", size=64)
    assert not (tmp_path / "c2").exists()
