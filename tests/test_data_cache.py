"""preprocess -> slice cache -> SliceCache / SliceDataset, on generated data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_dicom_patient, write_msd, write_slices
from kdlib.data import SliceCache, hu_to_uint8, preprocess, read_msd
from kdlib.errors import ConfigError, DataError


def test_standard_cache(phantom_msd, phantom_cache):
    cache = SliceCache.load(phantom_cache)
    volumes = list(read_msd(phantom_msd))
    n = sum(v.n_slices for v in volumes)
    assert len(cache) == n
    assert cache.images.dtype == np.uint8 and cache.images.shape == (n, 64, 64)
    assert cache.masks.dtype == np.uint8 and cache.masks.shape == (n, 64, 64)
    assert set(np.unique(cache.masks)) == {0, 255}  # binary in standard mode
    assert cache.cases == sorted(v.case_id for v in volumes)
    assert cache.case_ids.dtype.kind == "U" and cache.slice_index.dtype == np.int64
    assert int(cache.positive.sum()) == sum(v.positive_slices for v in volumes)
    # same size: no resize, pure window mapping of the HU slice
    first = volumes[0]
    k = 3
    row = int(np.flatnonzero((cache.case_ids == first.case_id) & (cache.slice_index == k))[0])
    assert np.array_equal(cache.images[row], hu_to_uint8(first.image[:, :, k], False,
                                                         (-160, 240)))
    assert np.array_equal(cache.masks[row], first.label[:, :, k] * 255)
    m = cache.manifest
    assert m["synthetic"] is True and cache.synthetic
    assert m["params"]["mode"] == "standard" and m["params"]["hu_window"] == [-160.0, 240.0]
    assert m["counts"]["slices"] == n
    sha = m["inputs"][0]["sha256"]
    assert "dataset.json" in sha and "imagesTr/spleen_1.nii.gz" in sha and len(sha) == 13


def test_reuse_and_never_overwrite(phantom_msd, phantom_cache):
    before = (phantom_cache / "images.npy").stat().st_mtime_ns
    again = preprocess(phantom_msd, phantom_cache, size=64)
    assert again["reused"] is True
    assert (phantom_cache / "images.npy").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="another output folder"):
        preprocess(phantom_msd, phantom_cache, size=32)
    with pytest.raises(ConfigError, match="another output folder"):
        preprocess(phantom_msd, phantom_cache, size=64, hu_window=(-100, 200))


def test_not_a_cache_folder(phantom_msd, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not a kdlib cache"):
        preprocess(phantom_msd, tmp_path / "out", size=32)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_faithful_mode(phantom_msd, tmp_path):
    out = tmp_path / "faithful"
    summary = preprocess(phantom_msd, out, size=48, faithful=True, export_png=True)
    cache = SliceCache.load(out)
    assert summary["slices"] == len(cache) and summary["reused"] is False
    assert cache.images.shape[1:] == (48, 48)
    values = np.unique(cache.masks)
    assert values.min() == 0 and values.max() >= 250
    assert ((values > 0) & (values < 255)).any()  # soft masks, not re-binarised
    assert cache.manifest["params"]["mode"] == "faithful"
    # HU clipped to [0, 255]: air (-1000) and fat (-100) become 0
    assert (cache.images == 0).mean() > 0.3
    with pytest.raises(ConfigError, match="faithful"):
        preprocess(phantom_msd, tmp_path / "x", faithful=True, hu_window=(0, 255))
    pngs = sorted(p.name for p in (out / "png" / "images").iterdir())
    assert len(pngs) == len(cache) == len(list((out / "png" / "masks").iterdir()))
    assert "spleen_1_0009.png" in pngs and "spleen_1_0010.png" in pngs
    assert pngs.index("spleen_1_0009.png") < pngs.index("spleen_1_0010.png")


def test_hu_mapping():
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 1000.0, 100.7], np.float32)
    assert hu_to_uint8(hu, False, (-160, 240)).tolist() == [0, 0, 128, 255, 255, 166]
    assert hu_to_uint8(hu, True).tolist() == [0, 0, 40, 240, 255, 100]  # clip + truncate


def test_merge_inputs_and_mixing_rules(tmp_path):
    msd = write_msd(tmp_path / "msd", cases=("spleen_1", "spleen_2"))
    slices = write_slices(tmp_path / "slices", cases=("spleen_3", "spleen_6"), size=16)
    dicom = write_dicom_patient(tmp_path / "ircadb" / "3Dircadb1.1", n=4, size=16).parent
    with pytest.raises(ConfigError, match=r"hu_window=\(0,255\)"):
        preprocess([msd, slices], tmp_path / "mixed", size=16)
    assert not (tmp_path / "mixed").exists()
    summary = preprocess([msd, slices, dicom], tmp_path / "mixed", size=16,
                         hu_window=(0, 255))
    assert summary["cases"] == 5 and summary["slices"] == 5 + 5 + 8 + 4
    cache = SliceCache.load(tmp_path / "mixed")
    assert set(cache.sources.tolist()) == {"msd", "slices", "dicom"}
    assert "slice_intensity" in cache.manifest["params"]
    # 8-bit slices are taken as they are
    from PIL import Image

    png = np.asarray(Image.open(slices / "images" / "spleen_6_1.png"))
    row = int(np.flatnonzero((cache.case_ids == "spleen_6") & (cache.slice_index == 1))[0])
    assert np.array_equal(cache.images[row], png)
    assert preprocess([msd, slices], tmp_path / "faith", size=16, faithful=True)["cases"] == 4
    # DICOM slices come in patient order with HU 100*k in the corner pixel
    rows = np.flatnonzero(cache.case_ids == "3Dircadb1.1")
    assert cache.slice_index[rows].tolist() == [0, 1, 2, 3]
    corner = cache.images[rows, 15, 15].astype(int)
    assert corner.tolist() == [0, 100, 200, 255]


def test_same_case_twice(tmp_path):
    msd = write_msd(tmp_path / "msd")
    with pytest.raises(DataError, match="same case twice"):
        preprocess([msd, msd], tmp_path / "out", size=16)
    assert not (tmp_path / "out").exists()


def test_cache_load_errors(tmp_path, phantom_msd):
    with pytest.raises(DataError, match="not a slice cache"):
        SliceCache.load(tmp_path)
    inv = tmp_path / "inv"
    preprocess(phantom_msd, inv, labels_only=True)
    assert json.loads((inv / "inventory.json").read_text())["counts"]["cases"] == 6
    with pytest.raises(DataError, match="labels-only"):
        SliceCache.load(inv)


def test_slice_dataset(phantom_cache):
    import torch
    from torch.utils.data import DataLoader

    from kdlib.data import SliceDataset

    cache = SliceCache.load(phantom_cache)
    idx = np.flatnonzero(cache.positive)[:5]
    ds = SliceDataset(cache, idx)
    assert len(ds) == 5
    image, mask, index = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (1, 64, 64) and mask.dtype == torch.float32
    assert index == int(idx[0]) and isinstance(index, int)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert 0 <= image.min() and image.max() <= 1
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert torch.allclose(image[0], torch.from_numpy(cache.images[idx[0]]).float() / 255)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 3, 64, 64) and batch[1].shape == (4, 1, 64, 64)
    assert batch[2].tolist() == idx[:4].tolist()
    assert len(SliceDataset(phantom_cache)) == len(cache)  # a path works, all slices
    import pickle

    assert len(pickle.loads(pickle.dumps(ds))) == 5  # spawned DataLoader workers need this
    with pytest.raises(ConfigError, match="out of range"):
        SliceDataset(cache, [len(cache)])


# ------------------------------------------------------ output folder, races, memory
def test_existing_empty_output_folder_is_kept(tmp_path):
    import os

    from conftest import write_msd

    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o751)
    inode = out.stat().st_ino
    preprocess(write_msd(tmp_path / "m"), out, size=16)
    assert out.stat().st_ino == inode and (out.stat().st_mode & 0o777) == 0o751
    assert SliceCache.load(out).manifest["counts"]["cases"] == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_another_process_finishing_first_is_reused(tmp_path, monkeypatch):
    """Two preprocess runs on one output folder: the one that finishes second finds the
    first's identical cache there and reuses it (no traceback, nothing overwritten)."""
    from conftest import write_msd
    from kdlib.data import cache as cache_mod

    data, out = write_msd(tmp_path / "m"), tmp_path / "out"
    real, raced = cache_mod.convert_volume, []

    def convert_while_another_process_runs(*args, **kwargs):
        if not raced:
            raced.append(True)
            preprocess(data, out, size=16)  # "the other process", done first
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "convert_volume", convert_while_another_process_runs)
    stamp = None
    summary = preprocess(data, out, size=16)
    assert raced and summary["reused"] is True
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert preprocess(data, out, size=16)["reused"] and \
        (out / "manifest.json").stat().st_mtime_ns == stamp


def test_nifti_images_are_read_in_slabs(tmp_path, monkeypatch):
    """preprocess never holds a whole float32 volume: the image is read slab by slab (a
    whole-volume read would fail here), and the result equals the whole-volume conversion."""
    from conftest import write_msd
    from kdlib.data import readers
    from kdlib.data.cache import convert_volume

    data = write_msd(tmp_path / "m", shape=(16, 16, 40))
    vol = next(readers.read_msd(data))
    whole_images, whole_masks = convert_volume(vol, 16, False, (-160, 240))

    def no_whole_reads(self):
        raise AssertionError("whole-volume read")

    monkeypatch.setattr(readers.NiftiVolume, "read", no_whole_reads)
    preprocess(data, tmp_path / "c", size=16)
    cache = SliceCache.load(tmp_path / "c")
    first = cache.case_ids == vol.case_id
    assert np.array_equal(cache.images[first], whole_images)
    assert np.array_equal(cache.masks[first], whole_masks)
