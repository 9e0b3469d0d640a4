"""Shared test fixtures.

- `SHARED_DATA`: the real data folder: env `KDLIB_SHARED_DATA`, else `<repo>/../shared/data`.
  Real-data tests call `require_shared("sub/folder")`, which skips with a clear message when
  the data is absent.
- `phantom_msd` (session): a tiny generated MSD folder (6 cases, 64x64, seed 0).
- `phantom_cache` (session): that phantom preprocessed (standard mode, size 64).
- `tiny` (module): a tiny phantom cache (32x32) and its patient split, for short training runs.
- helpers to write small bad/good inputs: `write_nifti`, `write_msd`, `write_slices`,
  `write_dicom_patient`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KDLIB_SHARED_DATA", REPO.parent / "shared" / "data"))


def published_real_mini() -> Path:
    """The newest published real-mini results: figures/real-mini once it holds run records,
    else the b818353 run, moved aside so that issue 21's run publishes into an empty folder."""
    current = REPO / "figures" / "real-mini"
    return current if (current / "runs").is_dir() else REPO / "figures" / "real-mini-b818353"


def require_shared(sub: str = "") -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (set KDLIB_SHARED_DATA to the "
                    "shared data folder to run this test)")
    return path


def pytest_collection_modifyitems(config, items):
    """`cuda`-marked tests skip with a message where torch sees no CUDA device."""
    cuda = [item for item in items if item.get_closest_marker("cuda")]
    if not cuda:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device: cuda-marked tests run on a GPU "
                                   "(python benchmarks/gpu_check.py --out DIR runs them)")
    for item in cuda:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def phantom_msd(tmp_path_factory) -> Path:
    from kdlib.data import write_phantom_msd

    return write_phantom_msd(tmp_path_factory.mktemp("phantom") / "Task09_Phantom", cases=6,
                             seed=0, size=64)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A folder with a tiny phantom cache (4 cases, 32x32, 12 slices each) and a patient
    split: `tiny / "cache"`, `tiny / "split.json"`; one per test module."""
    from kdlib.data import SliceCache, make_split, preprocess, save_split, write_phantom_msd

    root = tmp_path_factory.mktemp("tiny")
    data = write_phantom_msd(root / "phantom", cases=4, seed=3, size=32, slices=12)
    preprocess(data, root / "cache", size=32)
    save_split(make_split(SliceCache.load(root / "cache"), mode="patient", seed=0), root / "split.json")
    return root


@pytest.fixture(scope="session")
def phantom_cache(phantom_msd, tmp_path_factory) -> Path:
    from kdlib.data import preprocess

    out = tmp_path_factory.mktemp("phantom_cache") / "cache"
    preprocess(phantom_msd, out, size=64)
    return out


# ------------------------------------------------------------------ writers for tests
def write_nifti(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def toy_case(rng, shape=(16, 16, 5), fill=True):
    """A small CT-like volume (int16 HU) and a binary label with spleen on some slices."""
    image = rng.normal(0, 50, size=shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    if fill:
        label[4:9, 5:10, 1:3] = 1
    return image, label


def write_msd(root: Path, cases=("spleen_1", "spleen_2"), seed=0, shape=(16, 16, 5),
              dataset_json=True) -> Path:
    rng = np.random.default_rng(seed)
    for case in cases:
        image, label = toy_case(rng, shape)
        write_nifti(root / "imagesTr" / f"{case}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", label)
    if dataset_json:
        (root / "dataset.json").write_text(json.dumps({
            "name": "toy", "training": [{"image": f"./imagesTr/{c}.nii.gz",
                                         "label": f"./labelsTr/{c}.nii.gz"} for c in cases]}))
    return root


def write_slices(root: Path, cases=("spleen_3", "spleen_6"), per_case=4, size=32,
                 layout="images+masks", seed=0) -> Path:
    """A folder of 8-bit PNG slices (images/ + masks/ or the thesis layout)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for case in cases:
        for k in range(per_case):
            image = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
            mask = np.zeros((size, size), np.uint8)
            if k % 2 == 0:
                mask[8:16, 10:20] = 255
            if layout == "images+masks":
                names = (root / "images" / f"{case}_{k}.png", root / "masks" / f"{case}_{k}.png")
            else:
                names = (root / f"image_{case}_{k}.png", root / f"mask_{case}_{k}.png")
            for arr, name in zip((image, mask), names):
                name.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(name)
    return root


def _dicom_slice(path: Path, pixels: np.ndarray, z: float, instance: int, modality="CT",
                 intercept: float = 0):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, float(z)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.6
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsAllocated - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def write_dicom_patient(root: Path, n=4, size=16, shuffle_names=True, seed=0,
                        intercept: float = 0) -> Path:
    """A 3D-IRCADb-like patient: PATIENT_DICOM/image_i + MASKS_DICOM/spleen/image_i (0/255).

    With `shuffle_names`, file numbers do not follow the z order (the reader must sort by
    position). Slice at z-order k has HU value 100*k in pixel (0, 0); with `intercept`, the
    stored values are HU - intercept and RescaleIntercept says so."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n) if shuffle_names else np.arange(n)
    for k in range(n):
        name = f"image_{int(order[k])}"
        pixels = np.full((size, size), -1000 - intercept, np.int16)
        pixels[0, 0] = 100 * k - intercept
        mask = np.zeros((size, size), np.uint8)
        if k >= n // 2:
            mask[2:6, 3:8] = 255
        _dicom_slice(root / "PATIENT_DICOM" / name, pixels, z=1.6 * k, instance=int(order[k]),
                     intercept=intercept)
        _dicom_slice(root / "MASKS_DICOM" / "spleen" / name, mask, z=1.6 * k,
                     instance=int(order[k]))
    return root


# --------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished one-epoch S1 baseline on a tiny phantom (predict and hostile-input tests)."""
    from kdlib import train
    from kdlib.data import SliceCache, make_split, preprocess, save_split, write_phantom_msd

    root = tmp_path_factory.mktemp("run")
    data = write_phantom_msd(root / "phantom", cases=3, seed=0, size=32, slices=8)
    preprocess(data, root / "cache", size=32)
    save_split(make_split(SliceCache.load(root / "cache"), mode="patient", seed=0),
               root / "split.json")
    cfg = train.baseline_config("S1", root / "cache", root / "split.json", epochs=1, batch_size=8)
    return train.train(cfg, root / "runs", progress=False)


@pytest.fixture
def no_progress_bars(monkeypatch):
    """stderr then holds kdlib's own lines only (progress bars also write there)."""
    monkeypatch.setenv("KDLIB_PROGRESS", "0")


def run_cli(capsys, *args):
    """`kdlib.cli.main(args)` -> (exit code, stdout, non-empty stderr lines)."""
    from kdlib.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def assert_one_error(code, err, *words):
    """The CLI contract: exit 2 and exactly one `kdlib: error:` line mentioning `words`."""
    assert code == 2 and len(err) == 1 and err[0].startswith("kdlib: error:"), err
    for word in words:
        assert word.lower() in err[0].lower(), err[0]
