"""Synthetic abdominal CT volumes in the MSD Task09 layout (for tests and the smoke profile).

Each case is an elliptic body (fat rim about -100 HU, soft tissue about 40 HU, air -1000 HU
outside) with a liver (about 60 HU), two kidneys (about 30 HU), a vertebral body (bone
300-700 HU), the aorta, Gaussian noise, and a spleen-like ellipsoid (about 45 HU, a few HU
brighter than soft tissue, wrapped in a thin fat rim so its edge is visible but not trivial)
whose size and position vary per case and that appears on about 29% of the slices, as in
MSD (1,051 of 3,650 slices).

Anatomy is laid out in the thesis orientation (MSD arrays sliced `data[:, :, k]`): axis 0 is
left-right (spleen at small i, liver at large i), axis 1 posterior-anterior (spine at small j).

Everything is drawn from `numpy.random.default_rng([seed, case])`, so a folder is identical
(byte for byte) for the same arguments. `dataset.json` carries `"synthetic": true`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..io import atomic_dir, read_json

MSD_SLICES = (31, 168)  # smallest and largest slice count of the MSD Task09 volumes
SPLEEN_FRACTION = 0.29  # MSD: 1,051 of 3,650 slices show spleen


def _default_slices(rng: np.random.Generator, size: int) -> int:
    """An MSD-like slice count, scaled down with the in-plane size (at least 12)."""
    msd = int(rng.integers(MSD_SLICES[0], MSD_SLICES[1] + 1))
    return max(12, int(round(msd * size / 512)))


def _ellipse(I, J, ci, cj, ai, aj):
    return ((I - ci) / ai) ** 2 + ((J - cj) / aj) ** 2


def phantom_volume(rng: np.random.Generator, size: int, n: int):
    """One synthetic case: (image int16 HU (size, size, n), label uint8, spacing)."""
    u = (np.arange(size, dtype=np.float32) + 0.5) / size
    I, J = np.meshgrid(u, u, indexing="ij")
    z = (np.arange(n, dtype=np.float32) + 0.5) / n

    vol = np.full((size, size, n), -1000.0, dtype=np.float32)
    # body: elliptic cylinder, fat rim then soft tissue
    bi, bj = 0.5 + rng.uniform(-0.02, 0.02), 0.5 + rng.uniform(-0.02, 0.02)
    ai, aj = rng.uniform(0.40, 0.44), rng.uniform(0.32, 0.36)
    d_body = _ellipse(I, J, bi, bj, ai, aj)
    body = d_body <= 1.0
    vol[body] = -100.0
    vol[d_body <= 0.86 ** 2] = 40.0

    def paint3d(ci, cj, cz, si, sj, sz, value, rim=None):
        d2 = _ellipse(I, J, ci, cj, si, sj)[:, :, None] + (((z - cz) / sz) ** 2)[None, None, :]
        inside = d2 <= 1.0
        if rim is not None:
            vol[(d2 <= rim[0] ** 2) & ~inside & body[:, :, None]] = rim[1]
        vol[inside] = value
        return inside

    # liver: large, on the patient's right (large i), most of the z range
    paint3d(0.68 + rng.uniform(-0.02, 0.02), 0.53, rng.uniform(0.5, 0.65),
            rng.uniform(0.17, 0.21), rng.uniform(0.18, 0.22), rng.uniform(0.4, 0.55),
            60.0 + rng.uniform(-5, 5))
    # kidneys: either side of the spine, lower half
    kz = rng.uniform(0.3, 0.45)
    for ki in (0.5 - 0.16, 0.5 + 0.16):
        paint3d(ki, 0.31, kz + rng.uniform(-0.03, 0.03), 0.055, 0.045, 0.18,
                30.0 + rng.uniform(-4, 4))
    # spine (bone rim + marrow) and aorta: cylinders
    d_sp = _ellipse(I, J, 0.5, 0.27, 0.06, 0.055)
    vol[(d_sp <= 1.0)] = 700.0
    vol[(d_sp <= 0.6 ** 2)] = 300.0
    vol[_ellipse(I, J, 0.44, 0.38, 0.03, 0.03) <= 1.0] = 150.0
    # spleen: patient's left (small i), posterior; ~29% of slices; on its slices it covers
    # about 1-2% of the slice, like the MSD spleens
    sz = rng.uniform(0.12, 0.17)
    cz = rng.uniform(sz + 0.08, 1.0 - sz - 0.02)
    spleen = paint3d(0.28 + rng.uniform(-0.03, 0.03), 0.40 + rng.uniform(-0.03, 0.03), cz,
                     rng.uniform(0.07, 0.10), rng.uniform(0.055, 0.08), sz,
                     45.0 + rng.uniform(-3, 8), rim=(1.18, -90.0))

    noise = rng.standard_normal(vol.shape, dtype=np.float32)
    vol += np.where(body[:, :, None], 12.0, 4.0).astype(np.float32) * noise
    image = np.clip(np.round(vol), -1024, 3071).astype(np.int16)
    label = spleen.astype(np.uint8)
    return image, label


def write_phantom_msd(out: str | Path, cases: int = 6, seed: int = 0, size: int = 128,
                      slices: int | None = None) -> Path:
    """Write a synthetic MSD-layout spleen folder at `out` and return its path.

    `slices=None` gives each case an MSD-like slice count scaled down by size/512 (at least
    12). If `out` already holds a phantom made with the same arguments it is returned as is;
    anything else at `out` is never overwritten.
    """
    import nibabel as nib

    out = Path(out)
    for name, value, low in (("cases", cases, 1), ("size", size, 16), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if size > 2048:  # a volume is size**2 * slices * 4 bytes while it is drawn
        raise ConfigError(f"size must be at most 2048, got {size!r}", None, "use e.g. size=128")
    if slices is not None and (not isinstance(slices, (int, np.integer)) or slices < 4):
        raise ConfigError(f"slices must be an integer >= 4 or None, got {slices!r}")
    params = {"cases": int(cases), "seed": int(seed), "size": int(size),
              "slices": None if slices is None else int(slices)}
    if out.exists():
        ds = out / "dataset.json"
        if ds.is_file() and read_json(ds).get("kdlib_phantom") == params:
            return out
        raise DataError("refusing to overwrite an existing folder", out,
                        "delete it or choose another output folder")

    fov = 400.0  # mm, so the in-plane spacing scales with size
    training = []
    with atomic_dir(out) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for case in range(1, cases + 1):
            rng = np.random.default_rng([int(seed), case])
            n = int(slices) if slices is not None else _default_slices(rng, size)
            image, label = phantom_volume(rng, size, n)
            dxy = fov / size
            dz = round(float(rng.choice([1.5, 2.5, 5.0])) * 512 / size, 3)  # MSD-like, scaled
            affine = np.diag([dxy, dxy, dz, 1.0])
            affine[:3, 3] = [-dxy * size / 2, -dxy * size / 2, -dz * n / 2]
            name = f"spleen_{case}.nii.gz"
            for arr, folder in ((image, "imagesTr"), (label, "labelsTr")):
                img = nib.Nifti1Image(arr, affine)
                img.header.set_xyzt_units("mm", "sec")
                img.set_qform(affine, code=1)
                img.set_sform(affine, code=1)
                nib.save(img, str(tmp / folder / name))
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        meta = {
            "name": "Spleen (synthetic phantom)",
            "description": "Synthetic abdominal CT phantom with a spleen-like ellipsoid, "
                           "written by kdlib.data.phantom; NOT real data",
            "synthetic": True,
            "reference": "kdlib",
            "licence": "CC0",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "spleen"},
            "numTraining": int(cases),
            "numTest": 0,
            "training": training,
            "test": [],
            "kdlib_phantom": params,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def write_phantom_cache(out: str | Path, cases: int = 6, seed: int = 0, size: int = 64,
                        slices: int | None = None) -> Path:
    """A slice cache (as `preprocess` writes it: `images.npy`, `masks.npy`, `case_ids.npy`,
    `slice_index.npy`, `sources.npy`, `manifest.json` with `"synthetic": true`) of the same
    phantom cases as `write_phantom_msd`, drawn at `size` and windowed with numpy alone: no
    NIfTI, so no nibabel (`benchmarks/gpu_check.py` runs where nibabel may be missing).

    The corrected setting's mapping (the abdominal HU window, binary 0/255 masks); the slice
    counts are `write_phantom_msd`'s for the same arguments."""
    from ..io import atomic_write_json, config_hash
    from .cache import DEFAULT_HU_WINDOW, hu_to_uint8

    out = Path(out)
    for name, value, low in (("cases", cases, 1), ("size", size, 16), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    params = {"cases": int(cases), "seed": int(seed), "size": int(size),
              "slices": None if slices is None else int(slices), "hu_window": list(DEFAULT_HU_WINDOW)}
    if out.exists():
        manifest = out / "manifest.json"
        if manifest.is_file() and read_json(manifest).get("params", {}).get("phantom_cache") == params:
            return out
        raise DataError("refusing to overwrite an existing folder", out,
                        "delete it or choose another output folder")
    images, masks, case_ids, slice_index, per_case = [], [], [], [], []
    for case in range(1, cases + 1):
        rng = np.random.default_rng([int(seed), case])
        n = int(slices) if slices is not None else _default_slices(rng, size)
        image, label = phantom_volume(rng, size, n)
        images.append(np.moveaxis(hu_to_uint8(image, False, DEFAULT_HU_WINDOW), 2, 0))
        masks.append(np.moveaxis(label.astype(np.uint8) * np.uint8(255), 2, 0))
        case_ids += [f"spleen_{case}"] * n
        slice_index.append(np.arange(n, dtype=np.int64))
        per_case.append({"case_id": f"spleen_{case}", "slices": n,
                         "positive_slices": int((label.reshape(-1, n).max(0) > 0).sum())})
    arrays = {"images.npy": np.ascontiguousarray(np.concatenate(images)),
              "masks.npy": np.ascontiguousarray(np.concatenate(masks)),
              "case_ids.npy": np.asarray(case_ids), "slice_index.npy": np.concatenate(slice_index),
              "sources.npy": np.asarray(["phantom"] * len(case_ids))}
    counts = {"cases": cases, "slices": len(case_ids),
              "positive_slices": int(sum(r["positive_slices"] for r in per_case))}
    manifest = {"kind": "kdlib slice cache", "fingerprint": config_hash({"phantom_cache": params}, length=16),
                "params": {"size": int(size), "faithful": False, "hu_window": list(DEFAULT_HU_WINDOW),
                           "phantom_cache": params},
                "inputs": [], "counts": counts, "per_case": per_case, "synthetic": True}
    with atomic_dir(out) as tmp:
        for name, array in arrays.items():
            np.save(tmp / name, array, allow_pickle=False)
        atomic_write_json(tmp / "manifest.json", manifest)
    return out
