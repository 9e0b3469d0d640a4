"""The generated phantom: layout, determinism, CT-like values, speed."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from kdlib.data import read_msd, write_phantom_msd
from kdlib.errors import ConfigError, KdlibError


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_layout_and_synthetic_flag(phantom_msd):
    meta = json.loads((phantom_msd / "dataset.json").read_text())
    assert meta["synthetic"] is True and meta["numTraining"] == 6
    assert sorted(p.name for p in (phantom_msd / "imagesTr").iterdir()) == \
        sorted(f"spleen_{i}.nii.gz" for i in range(1, 7))
    assert sorted(p.name for p in (phantom_msd / "labelsTr").iterdir()) == \
        sorted(f"spleen_{i}.nii.gz" for i in range(1, 7))


def test_values_and_spleen_fraction(phantom_msd):
    volumes = list(read_msd(phantom_msd))
    slices = [v.n_slices for v in volumes]
    assert len(set(slices)) > 1  # varies per case like MSD
    total = sum(slices)
    positive = sum(v.positive_slices for v in volumes)
    assert 0.2 <= positive / total <= 0.4  # MSD: 29%
    centres = []
    for v in volumes:
        assert v.image.shape == v.label.shape and v.image.shape[:2] == (64, 64)
        assert set(np.unique(v.label)) == {0, 1}
        assert v.image.min() < -900 and v.image.max() > 400  # air and bone
        spleen = v.image[v.label == 1]
        assert 30 < spleen.mean() < 65  # spleen-like HU
        assert all(s > 0 for s in v.spacing)
        # spleen slices form one contiguous run
        pos = np.flatnonzero(v.positive)
        assert pos[-1] - pos[0] + 1 == pos.size
        centres.append(np.argwhere(v.label).mean(axis=0)[:2])
    centres = np.array(centres)
    assert centres.std(axis=0).max() > 0.5  # the spleen moves between cases
    assert (centres[:, 0] < 32).all()  # upper half: thesis orientation


def test_deterministic(tmp_path):
    a = write_phantom_msd(tmp_path / "a", cases=2, seed=3, size=32)
    b = write_phantom_msd(tmp_path / "b", cases=2, seed=3, size=32)
    c = write_phantom_msd(tmp_path / "c", cases=2, seed=4, size=32)
    assert _files(a) == _files(b)
    assert _files(a)["imagesTr/spleen_1.nii.gz"] != _files(c)["imagesTr/spleen_1.nii.gz"]


def test_fixed_slices_and_idempotent(tmp_path):
    out = write_phantom_msd(tmp_path / "p", cases=1, seed=0, size=32, slices=10)
    (vol,) = list(read_msd(out))
    assert vol.n_slices == 10
    assert write_phantom_msd(tmp_path / "p", cases=1, seed=0, size=32, slices=10) == out
    with pytest.raises(KdlibError, match="overwrite"):
        write_phantom_msd(tmp_path / "p", cases=2, seed=0, size=32, slices=10)
    with pytest.raises(ConfigError):
        write_phantom_msd(tmp_path / "q", cases=0, seed=0)


def test_fast(tmp_path):
    write_phantom_msd(tmp_path / "warm", cases=1, seed=0, size=16)  # imports
    start = time.perf_counter()
    write_phantom_msd(tmp_path / "p", cases=6, seed=1, size=64)
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"6 cases at 64x64 took {elapsed:.2f} s"


def test_phantom_cache_without_nibabel(tmp_path):
    """Issue 20: a slice cache written with numpy alone (gpu_check's data): the same cases and
    slice counts as the MSD-layout phantom, loadable and splittable like a preprocessed cache."""
    import subprocess
    import sys

    from kdlib.data import SliceCache, make_split
    from kdlib.data.phantom import write_phantom_cache

    code = ("import sys; sys.modules['nibabel'] = None; sys.modules['pydicom'] = None\n"
            "from kdlib.data.phantom import write_phantom_cache\n"
            f"write_phantom_cache({str(tmp_path / 'c')!r}, cases=3, seed=1, size=32)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cache = SliceCache.load(tmp_path / "c")
    msd = read_msd(write_phantom_msd(tmp_path / "msd", cases=3, seed=1, size=32))
    assert [v.n_slices for v in msd] == [int((cache.case_ids == c).sum()) for c in cache.cases]
    assert cache.images.dtype == np.uint8 and cache.images.shape[1:] == (32, 32)
    assert set(np.unique(cache.masks)) <= {0, 255} and cache.masks.max() == 255
    assert cache.manifest["synthetic"] is True
    assert write_phantom_cache(tmp_path / "c", cases=3, seed=1, size=32) == tmp_path / "c"  # same: reused
    with pytest.raises(KdlibError):
        write_phantom_cache(tmp_path / "c", cases=4, seed=1, size=32)
    split = make_split(cache, mode="patient", seed=0)
    assert split["train"] and split["test"]
