"""Using a trained model outside the notebooks: `python -m kdlib predict` and `evaluate`.

`predict` applies exactly the preprocessing the model was trained with (read from the slice
cache manifest that its run folder points to): the same HU mapping, the same slice size.
Outputs keep each input's own geometry:
- a NIfTI volume (or an MSD folder of them) -> a NIfTI mask with the input's affine;
- a folder of 2D slices (PNG/JPEG/GIF) -> one PNG mask (0/255) per input, at its own size;
- a DICOM series (3D-IRCADb layout) -> a NIfTI mask per patient, in the orientation kdlib's
  reader uses (the thesis orientation), with the series' pixel spacing.
"""
from __future__ import annotations

import gzip
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .data.cache import _resize, hu_to_uint8
from .data.readers import (IMAGE_EXTS, _dicom_orient, _load_nifti, _read_2d, _read_dicom_series,
                           natural_key, nifti_stem, parse_slice_name)
from .errors import DataError
from .io import atomic_path, atomic_write_bytes, read_json
from .metrics import SegmentationMeter

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class InputItem:
    name: str                  # output file stem / case id
    kind: str                  # nifti | slice | dicom
    pixels: np.ndarray         # (H, W, S) float HU, or (H, W, F) uint8 for 2D slices
    path: Path
    spacing: tuple = (1.0, 1.0, 1.0)


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def _inputs(path: Path, fmt: str) -> Iterator[InputItem]:
    """Images only (no labels needed): what a user wants segmented."""
    if not path.exists():
        raise DataError("input not found", path, "check the path")
    if path.is_file():
        if not _is_nifti(path):
            raise DataError("a single input file must be NIfTI", path, "give a folder for 2D slices or DICOM")
        pixels, spacing = _load_nifti(path, "image")
        yield InputItem(nifti_stem(path), "nifti", pixels, path, spacing)
        return
    for sub in ("imagesTs", "imagesTr"):
        if fmt in ("auto", "msd") and (path / sub).is_dir():
            yield from _inputs(path / sub, "nifti")
            return
    entries = sorted((p for p in path.iterdir() if not p.name.startswith(".")), key=lambda p: natural_key(p.name))
    if not entries:
        raise DataError("empty folder", path, "point --input at a folder with images")
    patients = [p for p in entries if (p / "PATIENT_DICOM").is_dir()]
    if (path / "PATIENT_DICOM").is_dir():
        patients = [path]
    if fmt == "dicom" or (fmt == "auto" and patients):
        for patient in patients or [path]:
            series = patient / "PATIENT_DICOM" if (patient / "PATIENT_DICOM").is_dir() else patient
            items = _read_dicom_series(series, "image")
            volume = np.stack([_dicom_orient(item[1]) for item in items], axis=2)
            spacing = tuple(float(v) for v in getattr(items[0][3], "PixelSpacing", [1.0, 1.0]))
            yield InputItem(patient.name, "dicom", volume, series, (*spacing, 1.0))
        return
    niftis = [p for p in entries if _is_nifti(p)]
    if fmt in ("nifti", "msd") or (fmt == "auto" and niftis):
        for p in niftis:
            pixels, spacing = _load_nifti(p, "image")
            yield InputItem(nifti_stem(p), "nifti", pixels, p, spacing)
        return
    folder = path / "images" if (path / "images").is_dir() else path
    images = [p for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
              if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(("mask_", "."))]
    if not images:
        raise DataError("no NIfTI, DICOM or 2D image files found", path,
                        "use --format, or point --input at the folder holding the images")
    for p in images:
        yield InputItem(p.stem, "slice", np.stack(_read_2d(p, "image"), axis=2), p)


def _resize_back(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if mask.shape == shape:
        return mask
    return np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def predict(model: str | Path, input: str | Path, out: str | Path, fmt: str = "auto",
            label_id: int | None = None, device: str | None = None) -> dict[str, Any]:
    """Segment every input with the trained run `model`; returns a summary with slices/s."""
    from .train import RunConfig, infer, is_finished, load_model, pick_device

    run_dir, out = Path(model), Path(out)
    if not is_finished(run_dir):
        raise DataError("not a finished run folder (no metrics.json)", run_dir,
                        "point --model at a run folder under results/<profile>/runs/")
    cfg = RunConfig.from_dict(read_json(run_dir / "config.json"))
    params = read_json(Path(cfg.cache) / "manifest.json")["params"]
    size, faithful, window = int(params["size"]), params.get("mode") == "faithful", params.get("hu_window")
    out.mkdir(parents=True, exist_ok=True)
    network = load_model(run_dir, pick_device(device))  # once, not once per input file
    n_slices, n_items, seconds = 0, 0, 0.0
    for item in _inputs(Path(input), fmt):
        if item.kind == "slice":
            img8 = item.pixels.astype(np.uint8)
        else:
            img8 = hu_to_uint8(item.pixels, faithful, window)
        height, width, depth = img8.shape
        batch = np.stack([_resize(img8[:, :, k], size, "bilinear") for k in range(depth)])
        started = time.perf_counter()
        masks = infer(run_dir, batch, device=device, model=network)["mask"].astype(np.uint8)
        seconds += time.perf_counter() - started
        full = np.stack([_resize_back(masks[k], (height, width)) for k in range(depth)], axis=2)
        n_slices, n_items = n_slices + depth, n_items + 1
        if item.kind == "slice":
            _write_png_masks(out, item, full)
        else:
            _write_nifti_mask(out / f"{item.name}.nii.gz", item, full)
    return {"inputs": n_items, "slices": n_slices, "out": str(out),
            "slices_per_second": round(n_slices / seconds, 1) if seconds else None,
            "model": cfg.model, "run": run_dir.name}


def _write_png_masks(out: Path, item: InputItem, mask: np.ndarray) -> None:
    from PIL import Image

    frames = mask.shape[2]
    for f in range(frames):
        name = f"{item.name}.png" if frames == 1 else f"{item.name}_f{f:02d}.png"
        with atomic_path(out / name) as tmp:
            Image.fromarray(mask[:, :, f] * np.uint8(255)).save(tmp, format="PNG")


def _write_nifti_mask(dest: Path, item: InputItem, mask: np.ndarray) -> None:
    import nibabel as nib

    if item.kind == "nifti":
        source = nib.load(str(item.path))
        image = nib.Nifti1Image(mask, source.affine, source.header)
    else:
        image = nib.Nifti1Image(mask, np.diag([*item.spacing, 1.0]))
    image.set_data_dtype(np.uint8)
    atomic_write_bytes(dest, gzip.compress(image.to_bytes(), compresslevel=6))


# ------------------------------------------------------------------------------- evaluate


def _slice_key(stem: str) -> str:
    for prefix in ("image_", "mask_"):
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


def evaluate(pred: str | Path, truth: str | Path, fmt: str = "auto") -> dict[str, Any]:
    """Pooled, per-image and per-volume metrics of predicted masks against ground truth."""
    from .data.readers import open_source

    pred, truth = Path(pred), Path(truth)
    if not pred.is_dir():
        raise DataError("prediction folder not found", pred, "give the --out folder of predict")
    meter = SegmentationMeter()
    niftis = sorted(p for p in pred.iterdir() if _is_nifti(p))
    if niftis:
        truths = {vol.case_id: vol.label for vol in open_source(truth, fmt, labels_only=True).volumes()}
        for path in niftis:
            case = nifti_stem(path)
            if case not in truths:
                raise DataError(f"no ground truth for case {case!r}", path,
                                f"the truth has cases {sorted(truths)[:5]}...")
            predicted, _ = _load_nifti(path, "label map")
            if predicted.shape != truths[case].shape:
                raise DataError(f"prediction has shape {predicted.shape}, truth {truths[case].shape}",
                                path, "predict from the same images the truth belongs to")
            meter.update(np.moveaxis(predicted > 0, 2, 0), np.moveaxis(truths[case] > 0, 2, 0),
                         [case] * predicted.shape[2])
    else:
        masks_dir = truth / "masks" if (truth / "masks").is_dir() else truth
        truth_files = {_slice_key(p.stem): p for p in masks_dir.iterdir()
                       if p.suffix.lower() in IMAGE_EXTS and (masks_dir.name == "masks" or p.name.startswith("mask_"))}
        preds = sorted(p for p in pred.iterdir() if p.suffix.lower() == ".png")
        if not preds:
            raise DataError("no predicted masks (.png or .nii.gz)", pred, "run predict first")
        for path in preds:
            key = _slice_key(path.stem)
            if key not in truth_files:
                raise DataError("no ground-truth mask with this name", path,
                                f"masks are matched by file name in {masks_dir}")
            predicted = _read_2d(path, "mask")[0] > 127
            true = _read_2d(truth_files[key], "mask")[0] > 127
            meter.update(predicted[None], true[None], [parse_slice_name(key)["case"]])
    result = meter.result()
    result["pred"], result["truth"] = str(pred), str(truth)
    return result
