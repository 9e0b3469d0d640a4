"""Readers on small generated files: layouts, naming rules, ordering, format detection."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import write_dicom_patient, write_msd, write_nifti, write_slices
from kdlib.data import (SliceCache, detect_format, preprocess, read_any, read_dicom, read_msd,
                        read_slices)
from kdlib.data.readers import parse_slice_name
from kdlib.errors import DataError


def test_parse_slice_name():
    assert parse_slice_name("spleen_22_40_22_70_f03") == {
        "case": "spleen_22", "range": (40, 70), "frame": 3, "slice": None, "confident": True}
    assert parse_slice_name("spleen_22_40_22_70")["frame"] is None
    assert parse_slice_name("spleen_3_10") == {"case": "spleen_3", "range": None,
                                               "frame": None, "slice": 10, "confident": True}
    assert parse_slice_name("patient7_12")["case"] == "patient7"
    assert parse_slice_name("scan")["case"] == "scan"


@pytest.mark.parametrize("stem,case,confident", [
    ("spleen_3_10", "spleen_3", True), ("patient7_12", "patient7", True),
    ("my_case_12", "my_case", True), ("case-01_5", "case-01", True),
    ("CT_0001_0100", "CT_0001", True), ("spleen_22_40_22_70_f03", "spleen_22", True),
    # could be <slice>_..._<case>: each its own case, not confident
    ("12_spleen_3", "12_spleen_3", False), ("3_10", "3_10", False),
    ("slice12_spleen_3", "slice12_spleen_3", False), ("scan", "scan", False)])
def test_parse_slice_name_confidence(stem, case, confident):
    info = parse_slice_name(stem)
    assert (info["case"], info["confident"]) == (case, confident)


def test_thesis_layout(tmp_path):
    root = write_slices(tmp_path / "t", cases=("spleen_3", "spleen_10"), per_case=12,
                        layout="thesis")
    volumes = list(read_slices(root))
    assert [v.case_id for v in volumes] == ["spleen_3", "spleen_10"]  # natural order
    assert list(volumes[0].slice_index) == list(range(12))  # 10 after 9
    assert volumes[0].positive_slices == 6
    assert volumes[0].extra["layout"] == "thesis"
    assert detect_format(root) == "slices"


def test_gif_frames_and_ranges(tmp_path):
    """Frames of `spleen_<c>_<first>_<c>_<last>_fNN` keep NN as slice index; a second GIF
    range of the same case is offset after the first."""
    for first, last, frames in ((1, 20, 3), (30, 40, 2)):
        for f in range(frames):
            for sub, value in (("images", 50 + f), ("masks", 255 if f == 1 else 0)):
                path = tmp_path / "s" / sub / f"spleen_4_{first:02d}_4_{last}_f{f:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    (vol,) = list(read_slices(tmp_path / "s"))
    assert vol.case_id == "spleen_4"
    assert list(vol.slice_index) == [0, 1, 2, 3, 4]
    assert vol.extra["gif_ranges"] == [[1, 20], [30, 40]]
    assert vol.positive.tolist() == [False, True, False, False, True]
    assert vol.image[0, 0].tolist() == [50, 51, 52, 50, 51]


def test_multiframe_gif_and_jpeg(tmp_path):
    root = tmp_path / "g"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    frames = [Image.fromarray(np.full((16, 16), 40 * k, np.uint8)) for k in range(4)]
    masks = [Image.fromarray(np.where(np.arange(256).reshape(16, 16) < 100 * k, 255, 0)
                             .astype(np.uint8)) for k in range(4)]
    frames[0].save(root / "images" / "spleen_8_01_8_24.gif", save_all=True,
                   append_images=frames[1:])
    masks[0].save(root / "masks" / "spleen_8_01_8_24.gif", save_all=True,
                  append_images=masks[1:])
    Image.fromarray(np.full((16, 16), 90, np.uint8)).save(root / "images" / "other_1.jpg")
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(root / "masks" / "other_1.png")
    vols = {v.case_id: v for v in read_slices(root)}
    gif = vols["spleen_8"]
    assert gif.n_slices == 4 and list(gif.slice_index) == [0, 1, 2, 3]
    assert gif.positive.tolist() == [False, True, True, True]
    assert abs(int(vols["other"].image[0, 0, 0]) - 90) <= 2  # JPEG, lossy
    assert vols["other"].positive_slices == 1  # 200 > 127
    assert [v.positive_slices for v in read_slices(root, mask_threshold=220)
            if v.case_id == "other"] == [0]


def test_mask_threshold_recorded(tmp_path):
    root = write_slices(tmp_path / "s", size=16)
    preprocess(root, tmp_path / "c", size=16, mask_threshold=100)
    manifest = SliceCache.load(tmp_path / "c").manifest
    assert manifest["params"]["mask_threshold"] == 100
    assert "taken as they are" in manifest["params"]["slice_intensity"]


def test_16bit_png_is_refused(tmp_path):
    root = write_slices(tmp_path / "s", size=16)
    Image.fromarray(np.zeros((16, 16), np.uint16)).save(root / "images" / "spleen_3_0.png")
    with pytest.raises(DataError, match="16-bit"):
        list(read_slices(root))


def test_dicom_ordered_by_position_not_name(tmp_path):
    root = write_dicom_patient(tmp_path / "p1", n=6, shuffle_names=True, seed=3)
    # file numbers do not follow z (the writer shuffles them with this permutation)
    assert not np.array_equal(np.random.default_rng(3).permutation(6), np.arange(6))
    (vol,) = list(read_dicom(root))  # the patient folder itself works too
    assert vol.case_id == "p1"
    assert vol.image[15, 15, :].tolist() == [0, 100, 200, 300, 400, 500]  # z order
    assert vol.positive.tolist() == [False, False, False, True, True, True]
    assert vol.spacing == pytest.approx((0.7, 0.7, 1.6))
    # orientation: raw pixel (row 0, col 0) -> reverse both axes -> transpose -> (15, 15)
    assert vol.image[0, 0, 5] == -1000


def test_dicom_rescale_applied(tmp_path):
    root = write_dicom_patient(tmp_path / "p2", n=3, intercept=-1024)
    (vol,) = list(read_dicom(root))
    assert vol.image[15, 15, :].tolist() == [0, 100, 200]
    assert vol.image[0, 0, 0] == -1000
    from kdlib.data import load_dicom_series

    array, spacing, z = load_dicom_series(root / "PATIENT_DICOM")
    assert np.array_equal(array, vol.image) and z == sorted(z)


def test_nifti_folder_pairs_by_name(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_nifti(tmp_path / "n" / f"{name}.nii.gz", rng.normal(size=(8, 8, 3)).astype(
            np.float32))
        label = np.zeros((8, 8, 3), np.uint8)
        label[1:3, 1:3, 0] = 1 if name == "a" else 0
        write_nifti(tmp_path / "n" / f"{name}_seg.nii.gz", label)
    assert detect_format(tmp_path / "n") == "nifti"
    vols = {v.case_id: v for v in read_any(tmp_path / "n")}
    assert sorted(vols) == ["a", "b"]
    assert vols["a"].positive_slices == 1 and vols["b"].positive_slices == 0


def test_msd_without_dataset_json_and_labels_only(tmp_path):
    root = write_msd(tmp_path / "m", cases=("spleen_2", "spleen_10"), dataset_json=False)
    (root / "imagesTr" / "._spleen_2.nii.gz").write_bytes(b"mac resource fork")  # ignored
    vols = list(read_msd(root))
    assert [v.case_id for v in vols] == ["spleen_2", "spleen_10"]
    labels = list(read_msd(root, labels_only=True))
    assert all(v.image is None for v in labels)
    assert [v.positive_slices for v in labels] == [2, 2]


def test_detect_format(tmp_path, phantom_msd):
    assert detect_format(phantom_msd) == "msd"
    assert detect_format(phantom_msd.parent) == "msd"  # parent of one task folder
    assert detect_format(write_dicom_patient(tmp_path / "ir" / "p", n=2).parent) == "dicom"
    assert detect_format(write_slices(tmp_path / "s")) == "slices"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="--format"):
        detect_format(tmp_path / "junk")
    with pytest.raises(DataError, match="not found"):
        detect_format(tmp_path / "missing")


def test_labels_only_inventory_of_any_source(tmp_path):
    root = write_dicom_patient(tmp_path / "ir" / "p", n=4).parent
    summary = preprocess(root, tmp_path / "inv", labels_only=True)
    assert summary["slices"] == 4 and summary["positive_slices"] == 2
    assert summary["per_case"][0]["case_id"] == "p"
    inventory = json.loads((tmp_path / "inv" / "inventory.json").read_text())
    assert inventory["per_case"] == summary["per_case"]


# ------------------------------------------------------------------ orientation
def _write_with_affine(path, array, axes, flips):
    """`array` stored so that its file axis i points along world axis axes[i] (sign flips[i])."""
    import nibabel as nib

    affine = np.zeros((4, 4))
    for source, (axis, flip) in enumerate(zip(axes, flips)):
        affine[axis, source] = flip * (0.5 + source)  # distinct spacings: 0.5, 1.5, 2.5
    affine[3, 3] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.mark.parametrize("axes,flips", [((0, 1, 2), (-1, 1, 1)), ((0, 1, 2), (1, 1, -1)),
                                        ((1, 0, 2), (-1, 1, 1)), ((2, 0, 1), (1, -1, 1))])
def test_nifti_brought_to_one_orientation_from_its_affine(tmp_path, axes, flips):
    """The same anatomy stored flipped or with permuted axes reads to the same array."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    ras = rng.normal(0, 50, size=(6, 7, 5)).astype(np.float32)  # canonical (RAS) truth
    label = np.zeros(ras.shape, np.uint8)
    label[1:3, 2:6, 1:4] = 1
    # file array = canonical array reoriented into the file's axes
    def to_file(a):
        file_axes = np.transpose(a, axes)
        for i, flip in enumerate(flips):
            if flip < 0:
                file_axes = np.flip(file_axes, i)
        return np.ascontiguousarray(file_axes)

    _write_with_affine(tmp_path / "n" / "ct.nii.gz", to_file(ras), axes, flips)
    _write_with_affine(tmp_path / "n" / "ct_seg.nii.gz", to_file(label), axes, flips)
    assert "".join(nib.aff2axcodes(nib.load(str(tmp_path / "n" / "ct.nii.gz")).affine)) != "RAS"
    (vol,) = list(read_any(tmp_path / "n"))
    assert np.array_equal(vol.image, ras) and np.array_equal(vol.label, label)
    spacing = [0.0] * 3
    for source, axis in enumerate(axes):
        spacing[axis] = 0.5 + source
    assert vol.spacing == pytest.approx(tuple(spacing))
    # the slab reader (used by preprocess and predict) gives the same slices
    from kdlib.data.readers import NiftiVolume

    lazy = NiftiVolume(tmp_path / "n" / "ct.nii.gz")
    streamed = np.empty(lazy.shape, np.float32)
    for start, stop, slab in lazy.slabs(size=2):
        streamed[:, :, start:stop] = slab
    assert np.array_equal(streamed, ras)
    assert np.array_equal(lazy.to_file_axes(streamed), to_file(ras))


def test_msd_data_is_left_as_stored(tmp_path):
    """RAS volumes (MSD, the phantom, TotalSegmentator) are not turned at all."""
    root = write_msd(tmp_path / "m", cases=("spleen_1",))
    import nibabel as nib

    stored = np.asarray(nib.load(str(root / "imagesTr" / "spleen_1.nii.gz")).dataobj)
    (vol,) = list(read_msd(root))
    assert np.array_equal(vol.image, stored)


def test_dicom_oriented_from_image_orientation_patient(tmp_path):
    """A series stored rotated by 180 degrees in-plane (rows and columns both reversed, IOP
    [-1,0,0, 0,-1,0]) reads to the same array as the standard one."""
    import pydicom

    standard = write_dicom_patient(tmp_path / "a" / "p", n=3, size=8, shuffle_names=False)
    turned = write_dicom_patient(tmp_path / "b" / "p", n=3, size=8, shuffle_names=False)
    for series in ("PATIENT_DICOM", "MASKS_DICOM/spleen"):
        for path in sorted((turned / series).iterdir()):
            ds = pydicom.dcmread(str(path))
            pixels = ds.pixel_array[::-1, ::-1]
            ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]
            ds.PixelData = np.ascontiguousarray(pixels).tobytes()
            ds.save_as(str(path))
    (a,) = list(read_dicom(standard))
    (b,) = list(read_dicom(turned))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert b.extra["z_positions"] == sorted(b.extra["z_positions"])


def test_orient_slices_inverse():
    from kdlib.data.readers import ORIENT_OPS, orient_slices

    a = np.arange(12).reshape(3, 4, 1)
    for op in ORIENT_OPS:
        assert np.array_equal(orient_slices(orient_slices(a, op), op, inverse=True), a)
    assert np.array_equal(orient_slices(a, "rot90")[:, :, 0], np.rot90(a[:, :, 0]))
