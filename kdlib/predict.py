"""Using a trained model outside the notebooks: `python -m kdlib predict` and `evaluate`.

`predict` applies exactly the preprocessing the model was trained with (read from the slice
cache manifest that its run folder points to): the same HU mapping, the same slice size.
Outputs keep each input's own geometry:
- a NIfTI volume (or an MSD folder of them; label maps found next to the images are not
  segmented) -> a NIfTI mask with the input's affine, in the input's own voxel order;
- a folder of 2D slices (PNG/JPEG/GIF) -> one PNG mask (0/255) per input, at its own size;
- a DICOM series (3D-IRCADb layout, or any folder of DICOM files told by content: the
  `DICM` magic at byte 128, else pydicom's forced read finds an image; files named by UIDs
  with no extension are found with no --format) -> a NIfTI mask per series, in kdlib's
  canonical orientation, with the series' voxel spacing; slices are ordered by
  ImagePositionPatient along the slice normal, never by file name.
Volumes are brought to the thesis orientation from their headers (as the readers do) before
the model sees them; 2D slices carry no orientation, so `orient` (rot90, flipud, ...) turns
them, and every mask is turned back to the input's orientation.

The contract: every input is found and checked before anything is written; all outputs are
written to a staging folder and moved into `out` only when every input succeeded; an
existing file is never replaced. Work goes slab by slab, so memory does not grow with the
number of slices of a NIfTI volume (beyond the uint8 mask it writes).
"""
from __future__ import annotations

import errno
import gzip
import os
import re
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.cache import SLAB, _resize, hu_to_uint8, move_new
from .data.readers import (IMAGE_EXTS, ORIENT_OPS, NiftiVolume, _is_nifti, _label_like,
                           _read_2d, dicom_series_folders, load_dicom_series, natural_key,
                           nifti_stem, orient_slices, parse_slice_name)
from .errors import ConfigError, DataError, KdlibError, KdlibWarning
from .io import read_json
from .metrics import SegmentationMeter

MASK_SUFFIX = "_spleen"  # <case>_spleen.nii.gz, <slice>_spleen.png: never the image's own name
CSV_NAME = "spleen.csv"  # one row per input (CSV_COLUMNS), beside the masks
CSV_COLUMNS = ("case", "input", "slices", "slices_with_spleen", "spleen_size", "unit", "model",
               "run")
# "spleen in more slices than the training data make likely": a share of slices with spleen
# above likely_limit(p) = (1 + p) / 2, halfway from the training share p to every slice (43%
# -> 72%; always below 100%, so spleen on every slice always warns), judged only on inputs of
# at least MIN_SLICES_FOR_SHARE slices (one slice with spleen says nothing about a share)
MIN_SLICES_FOR_SHARE = 8


def likely_limit(share: float) -> float:
    return (1.0 + share) / 2.0


@dataclass
class InputItem:
    name: str    # output file stem / case id
    kind: str    # nifti | slice | dicom
    path: Path   # the file (nifti, slice) or the series folder (dicom)

    def outputs(self) -> list[str]:
        """Output names known before reading pixels (multi-frame slices: `<name>_fNN_spleen`)."""
        return [f"{self.name}{MASK_SUFFIX}.png"] if self.kind == "slice" else \
            [f"{self.name}{MASK_SUFFIX}.nii.gz"]


def _discover(path: Path, fmt: str) -> list[InputItem]:
    """The images to segment (no labels needed), found and named before any pixel is read."""
    if not path.exists():
        raise DataError("input not found", path, "check the path")
    if path.is_file():
        if not _is_nifti(path):
            raise DataError("a single input file must be NIfTI", path,
                            "give a folder for 2D slices or DICOM")
        return [InputItem(nifti_stem(path), "nifti", path)]
    for sub in ("imagesTs", "imagesTr"):
        if fmt in ("auto", "msd") and (path / sub).is_dir():
            return _discover(path / sub, "nifti")
    entries = sorted((p for p in path.iterdir() if not p.name.startswith(".")),
                     key=lambda p: natural_key(p.name))
    if not entries:
        raise DataError("empty folder", path, "point --input at a folder with images")
    patients = [p for p in entries if (p / "PATIENT_DICOM").is_dir()]
    if (path / "PATIENT_DICOM").is_dir():
        patients = [path]
    if fmt == "dicom" or (fmt == "auto" and patients):
        return [InputItem(p.name, "dicom", p / "PATIENT_DICOM" if (p / "PATIENT_DICOM").is_dir()
                          else p) for p in patients or [path]]
    niftis = [p for p in entries if _is_nifti(p)]
    if fmt == "auto" and not niftis:  # DICOM told by content: files named by UIDs, no .dcm
        series = dicom_series_folders(path)
        if series:
            return [InputItem(p.name, "dicom", p) for p in series]
    if fmt in ("nifti", "msd") or (fmt == "auto" and niftis):
        images = [p for p in niftis if not _label_like(p)]  # a label map is not an input
        if not images:
            raise DataError("no NIfTI images here (only label maps: names with seg, label or "
                            "mask)", path, "point --input at the images")
        return [InputItem(nifti_stem(p), "nifti", p) for p in images]
    folder = path / "images" if (path / "images").is_dir() else path
    images = [p for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
              if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(("mask_", "."))]
    if not images:
        raise DataError("no NIfTI, DICOM or 2D image files found", path,
                        "use --format, or point --input at the folder holding the images")
    return [InputItem(p.stem, "slice", p) for p in images]


def _check_outputs(items: list[InputItem], out: Path) -> None:
    seen: dict[str, Path] = {}
    for item in items:
        for name in item.outputs():
            if name in seen:
                raise DataError(f"two inputs would both write {name} ({seen[name].name} and "
                                f"{item.path.name})", item.path, "rename one of them")
            seen[name] = item.path
            if out.is_dir():
                taken = [out / name] if (out / name).exists() else []
                if item.kind == "slice":
                    taken += list(out.glob(f"{glob_escape(item.name)}_f[0-9][0-9]"
                                           f"{MASK_SUFFIX}.png"))
                if taken:
                    raise DataError("refusing to overwrite an existing result", taken[0],
                                    "delete it or choose another --out folder")
    if (out / CSV_NAME).exists():  # one predict per folder: its table lists every input
        raise DataError("refusing to overwrite an existing result", out / CSV_NAME,
                        "delete it or choose another --out folder")


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _resize_back(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if mask.shape == shape:
        return mask
    return np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


class _Segmenter:
    """Slabs of one input -> a uint8 0/1 mask of the input's own (H, W, S) shape."""

    def __init__(self, run_dir: Path, network, size: int, faithful: bool, window, orient: str,
                 device, tta: bool = False):
        self.run_dir, self.network, self.size, self.tta = run_dir, network, size, tta
        self.faithful, self.window, self.orient, self.device = faithful, window, orient, device
        self.seconds = 0.0
        self.flattened: list[str] = []  # colour or transparent slices flattened to grey

    def __call__(self, slabs, shape: tuple, eight_bit: bool) -> np.ndarray:
        from .train import infer

        mask = np.zeros(shape, np.uint8)
        for start, stop, slab in slabs:
            img8 = slab.astype(np.uint8) if eight_bit else hu_to_uint8(slab, self.faithful,
                                                                       self.window)
            img8 = orient_slices(img8, self.orient)
            batch = np.stack([_resize(img8[:, :, k], self.size, "bilinear")
                              for k in range(stop - start)])
            started = time.perf_counter()
            masks = infer(self.run_dir, batch, device=self.device, model=self.network,
                          tta=self.tta)["mask"].astype(np.uint8)
            self.seconds += time.perf_counter() - started
            turned = np.stack([_resize_back(m, img8.shape[:2]) for m in masks], axis=2)
            mask[:, :, start:stop] = orient_slices(turned, self.orient, inverse=True)
        return mask


def _array_slabs(array: np.ndarray):
    for start in range(0, array.shape[2], SLAB):
        yield start, min(start + SLAB, array.shape[2]), array[:, :, start:start + SLAB]


def _load_network(run_dir: Path, device):
    from .train import load_model

    try:
        return load_model(run_dir, device)
    except KdlibError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise DataError(f"cannot load the trained weights ({type(exc).__name__}); the "
                        "checkpoint is corrupt or truncated", run_dir / "checkpoints",
                        "train the run again or restore its checkpoints") from None


def _staging(out: Path) -> tuple[Path, bool]:
    """A fresh folder for the outputs, on the same file system as `out`: inside `out` when
    it exists (its files are then moved in), else next to where `out` will be (it is then
    renamed to `out`). Created with the umask's permissions."""
    inside = out.is_dir()
    base = out if inside else next(p for p in out.absolute().parents if p.is_dir())
    remove_stale_staging(base)
    staging = base / f".kdlib-predict.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    return staging, inside


_STAGING = re.compile(r"^\.kdlib-predict\.(?P<pid>\d+)\.[0-9a-f]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's live process (or a number we cannot test): keep it
    return True


def remove_stale_staging(folder: Path) -> list[Path]:
    """Delete the staging folders that a killed `predict` left in `folder` (those whose PID
    is no longer running; a live run's own staging is left alone)."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING.match(entry.name)
        if match and int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"])) \
                and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _publish(staging: Path, out: Path, inside: bool) -> None:
    if not inside:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, out)  # fails if another process made `out` meanwhile
        return
    names = sorted(p.name for p in staging.iterdir())
    taken = [n for n in names if (out / n).exists()]
    if taken:
        raise DataError("refusing to overwrite an existing result", out / taken[0],
                        "delete it or choose another --out folder")
    for name in names:
        move_new(staging / name, out / name)


def model_preprocessing(manifest: Any, path: Path) -> tuple[int, bool, list[float]]:
    """(size, faithful, HU window) of a model's cache manifest (`preprocessing.json` of a
    published model), checked with the bounds `preprocess` applies: a model folder is input
    like any other, and a size of 100000 would allocate without limit."""
    from .data.cache import _check_params

    fix = "restore the model's preprocessing.json (a copy of its cache's manifest.json)"
    params = manifest.get("params") if isinstance(manifest, dict) else None
    if not isinstance(params, dict):
        raise DataError("not a cache manifest (no 'params' object)", path, fix)
    mode = params.get("mode", "standard")
    if mode not in ("standard", "faithful"):
        raise DataError(f"mode must be 'standard' or 'faithful', got {mode!r}", path, fix)
    faithful = mode == "faithful"
    # a model trained on 8-bit slices only has no HU window: HU inputs get the thesis slices'
    # own mapping (HU clipped to 0..255)
    window = params.get("hu_window") or [0.0, 255.0]
    try:
        window = _check_params(params.get("size"), False, window, 0)
    except ConfigError as exc:
        raise DataError(str(exc).split(" -- ")[0], path, fix) from None
    return int(params["size"]), faithful, list(window)


def run_preprocessing(run_dir: Path):
    """(config, cache manifest, size, faithful, HU window) of a trained run: a published model
    (pipeline.publish_models) carries its cache manifest with it as preprocessing.json."""
    from .train import RunConfig

    cfg = RunConfig.from_dict(read_json(run_dir / "config.json"), run_dir / "config.json")
    published = run_dir / "preprocessing.json"
    cache = Path(cfg.cache)
    if not cache.is_absolute():  # a published record: relative to the results folder holding runs/
        cache = run_dir.parent.parent / cache
    manifest_path = published if published.exists() else cache / "manifest.json"
    manifest = read_json(manifest_path)
    return (cfg, manifest, *model_preprocessing(manifest, manifest_path))


def predict(model: str | Path, input: str | Path, out: str | Path, fmt: str = "auto",
            device: str | None = None, orient: str = "none", tta: bool = False) -> dict[str, Any]:
    """Segment every input with the trained run `model`; returns a summary with slices/s.
    `tta`: average the model over the 8 orientations of every slice (8 forward passes), so
    the orientation a slice comes in does not change its mask."""
    from .train import is_finished, pick_device

    run_dir, out = Path(model), Path(out)
    if orient not in ORIENT_OPS:
        raise DataError(f"unknown orient {orient!r}", None, f"use one of {', '.join(ORIENT_OPS)}")
    if not is_finished(run_dir):
        raise DataError("not a finished run folder (no complete metrics.json)", run_dir,
                        "point --model at a run folder under results/<profile>/runs/")
    if out.exists() and not out.is_dir():
        raise DataError("the output path is a file, not a folder", out,
                        "give a new or existing folder as --out")
    cfg, manifest, size, faithful, window = run_preprocessing(run_dir)
    items = _discover(Path(input), fmt)
    _check_outputs(items, out)
    dev = pick_device(device)
    segment = _Segmenter(run_dir, _load_network(run_dir, dev), size, faithful, window, orient,
                         device, tta)
    n_slices, found, rows = 0, 0, []
    try:
        staging, inside = _staging(out)
    except PermissionError as exc:
        raise DataError("cannot write here (permission denied)", exc.filename or out,
                        "choose an output folder you can write to") from None
    try:
        for item in items:
            try:
                mask, spacing = _predict_one(item, segment, staging)
            except MemoryError:
                raise DataError("not enough memory to segment this input", item.path,
                                "free memory, or split or downsample the input") from None
            n_slices += mask.shape[2]
            found += int(mask.any())
            rows.append(_row(item, mask, spacing, cfg.model, run_dir))
        _write_csv(staging / CSV_NAME, rows)
        _publish(staging, out, inside)
    except FileExistsError as exc:
        raise DataError("refusing to overwrite an existing result (another process wrote it)",
                        exc.filename or out, "choose another --out folder") from None
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # `out` appeared meanwhile
            raise DataError("another process created the output folder meanwhile", out,
                            "choose another --out folder") from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if segment.flattened:
        warnings.warn(f"{len(segment.flattened)} colour or transparent slice file(s) were "
                      f"flattened to grey, e.g. {segment.flattened[0]}", KdlibWarning,
                      stacklevel=2)
    for message in spleen_warnings(rows, training_share(cfg, manifest)):
        warnings.warn(message, KdlibWarning, stacklevel=2)
    return {"inputs": len(items), "slices": n_slices, "out": str(out), "orient": orient, "tta": tta,
            "inputs_with_spleen": found,
            "slices_per_second": round(n_slices / segment.seconds, 1) if segment.seconds else None,
            "model": cfg.model, "run": run_dir.name, "csv": str(out / CSV_NAME), "rows": rows}


def training_share(cfg, manifest: Any) -> float | None:
    """The share of slices with spleen in what the model trained on: its split file's count
    for its training subset (`train` or `student_train`) when the split is still there, else
    its cache manifest's counts (a published model's `preprocessing.json`: the data its
    training set was drawn from); None when neither records it."""
    candidates = []
    try:
        split = read_json(cfg.split) if cfg.split and Path(cfg.split).is_file() else None
    except KdlibError:
        split = None
    if isinstance(split, dict) and isinstance(split.get("counts"), dict):
        candidates.append(split["counts"].get(cfg.train_subset))
    if isinstance(manifest, dict):
        candidates.append(manifest.get("counts"))
    for counts in candidates:
        if isinstance(counts, dict):
            slices, positive = counts.get("slices"), counts.get("positive_slices")
            if isinstance(slices, int) and isinstance(positive, int) and slices > 0 \
                    and 0 <= positive <= slices:
                return positive / slices
    return None


def _row(item: InputItem, mask: np.ndarray, spacing, model: str, run_dir: Path) -> dict:
    """One line of spleen.csv: the spleen's size in mL from the voxel spacing (volumes), in
    mm^2 for 2D slices whose pixel spacing is known, else in pixels."""
    voxels = int(np.count_nonzero(mask))
    if item.kind == "slice":
        size, unit = (round(voxels * float(np.prod(spacing[:2])), 3), "mm2") if spacing \
            else (voxels, "pixels")
    else:
        size, unit = round(voxels * float(np.prod(spacing[:3])) / 1000.0, 3), "mL"
    return {"case": item.name, "input": str(item.path), "kind": item.kind,
            "slices": int(mask.shape[2]),
            "slices_with_spleen": int(mask.any(axis=(0, 1)).sum()),
            "spleen_size": size, "unit": unit, "model": model, "run": str(run_dir)}


def _write_csv(dest: Path, rows: list[dict]) -> None:
    import csv
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with open(dest, "x", encoding="utf-8") as handle:  # in the staging folder, moved in whole
        handle.write(text.getvalue())


def spleen_warnings(rows: list[dict], share: float | None) -> list[str]:
    """One line per input (volumes: a NIfTI, a DICOM series, a multi-frame 2D file) or per
    case of single 2D slices (grouped as `evaluate` groups them) where the model found no
    spleen at all, or spleen in a larger share of its slices than `likely_limit(share)`
    (inputs of at least MIN_SLICES_FOR_SHARE slices; skipped when the training share is
    unknown). 2D
    slices carry no orientation, so their lines suggest --orient."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        single = row["kind"] == "slice" and row["slices"] == 1
        key = "slice case " + _case_of(_slice_key(Path(row["input"]).stem), Path(row["input"]),
                                       None) if single else row["input"]
        groups.setdefault(key, []).append(row)
    orient = " (2D slices carry no orientation: try --orient rot90|rot180|rot270|flipud|fliplr)"
    lines = []
    for key, members in groups.items():
        slices = sum(r["slices"] for r in members)
        positive = sum(r["slices_with_spleen"] for r in members)
        flat = members[0]["kind"] == "slice"
        where = key if len(members) == 1 else f"{key} ({len(members)} files, e.g. " \
                                               f"{members[0]['input']})"
        hint = orient if flat else " (is the spleen in the scan's field of view?)"
        if positive == 0:
            lines.append(f"{where}: the model found no spleen in any of its {slices} "
                         f"slice(s){hint}")
        elif share is not None and slices >= MIN_SLICES_FOR_SHARE and \
                positive > likely_limit(share) * slices:
            lines.append(f"{where}: the model found spleen in {positive} of {slices} slices "
                         f"({positive / slices:.0%}), far more than the {share:.0%} of its "
                         f"training slices{hint}")
    return lines


def _predict_one(item: InputItem, segment: _Segmenter, staging: Path):
    """Segment one input and stage its mask(s); returns (mask, voxel spacing in mm or None)."""
    name = f"{item.name}{MASK_SUFFIX}.nii.gz"
    if item.kind == "nifti":
        volume = NiftiVolume(item.path, "image")
        mask = segment(volume.slabs(), volume.shape, eight_bit=False)
        _write_nifti(staging / name, volume.to_file_axes(mask), volume.affine,
                     volume.header, item)
        return mask, volume.spacing
    if item.kind == "dicom":
        array, spacing, _ = load_dicom_series(item.path, "image")
        mask = segment(_array_slabs(array), array.shape, eight_bit=False)
        _write_nifti(staging / name, mask, np.diag([*spacing, 1.0]), None, item)
        return mask, spacing
    frames = np.stack(_read_2d(item.path, "image", segment.flattened), axis=2)
    mask = segment(_array_slabs(frames), frames.shape, eight_bit=True)
    _write_png_masks(staging, item, mask)
    return mask, None  # PNG/JPEG/GIF record no patient pixel spacing


def _write_png_masks(folder: Path, item: InputItem, mask: np.ndarray) -> None:
    from PIL import Image

    frames = mask.shape[2]
    for f in range(frames):
        name = f"{item.name}{MASK_SUFFIX}.png" if frames == 1 else \
            f"{item.name}_f{f:02d}{MASK_SUFFIX}.png"
        with _create(folder / name, item) as handle:
            Image.fromarray(mask[:, :, f] * np.uint8(255)).save(handle, format="PNG")


def _create(dest: Path, item: InputItem):
    """Open a new output file with exclusive creation: a name that another input (a GIF's
    frames beside a file of the same name) already wrote is an error, never overwritten."""
    try:
        return open(dest, "xb")
    except FileExistsError:
        raise DataError(f"two inputs would both write {dest.name} (one of them is this one)",
                        item.path, "rename one of them") from None


def _write_nifti(dest: Path, mask: np.ndarray, affine: np.ndarray, header,
                 item: InputItem) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(mask), affine, header)
    image.set_data_dtype(np.uint8)
    image.header.set_slope_inter(1, 0)
    data = gzip.compress(image.to_bytes(), compresslevel=6)
    with _create(dest, item) as handle:
        handle.write(data)


# ------------------------------------------------------------------------------- evaluate
DEFAULT_CASE_RULE = ("kdlib's slice-name rule (readers.parse_slice_name): `<case>_<slice>` -> "
                     "<case> when <case> is words starting with a letter holding at most one "
                     "number, at its end (`spleen_3`, `patient7`); GIF frames "
                     "`spleen_<c>_<first>_<c>_<last>_fNN` -> spleen_<c>; any other name "
                     "(`12_spleen_3`, `3_10`) is its own case, with one warning")
CASE_PATTERN_EXAMPLE = "_(?P<case>[^_]+)$"  # <slice>_<organ>_<case>


def _slice_key(stem: str) -> str:
    for prefix in ("image_", "mask_"):
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


def _pred_key(stem: str, known) -> str:
    """A prediction's name as its truth's: `<name>_spleen` (what predict writes) -> `<name>`,
    unless the truth itself has the full name."""
    if stem not in known and stem.endswith(MASK_SUFFIX) and stem[:-len(MASK_SUFFIX)] in known:
        return stem[:-len(MASK_SUFFIX)]
    return stem


def _case_of(key: str, path: Path, pattern: re.Pattern | None,
             unsure: list[str] | None = None) -> str:
    """The case id of a 2D mask name: by `pattern`, else by DEFAULT_CASE_RULE (names it does
    not parse with confidence are appended to `unsure`)."""
    if pattern is None:
        info = parse_slice_name(key)
        if not info["confident"] and unsure is not None:
            unsure.append(key)
        return info["case"]
    match = pattern.search(key)
    if match is None:
        raise DataError(f"name {key!r} does not match --case-pattern {pattern.pattern!r}", path,
                        "give a pattern that matches every mask name (a group named 'case', "
                        "or the first group, is the case id)")
    if "case" in pattern.groupindex:
        return match.group("case")
    return match.group(1) if pattern.groups else match.group(0)


def _compile(case_pattern: str | None) -> re.Pattern | None:
    if case_pattern is None:
        return None
    try:
        return re.compile(case_pattern)
    except re.error as exc:
        raise DataError(f"--case-pattern is not a valid regular expression ({exc})", None,
                        "e.g. --case-pattern '_(?P<case>[^_]+)$'") from None


def _binary_prediction(values: np.ndarray, path: Path) -> np.ndarray:
    """A predicted mask must be 0/1 or 0/255 (what predict writes); anything else (NaN,
    probabilities, label maps) is refused rather than thresholded silently."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise DataError("predicted mask has NaN or infinite values", path,
                        "give binary masks (0/1 or 0/255), e.g. the output of predict")
    present = set(np.unique(values).tolist())
    if not (present <= {0, 1} or present <= {0, 255}):
        shown = ", ".join(f"{v:g}" for v in sorted(present)[:6])
        raise DataError(f"predicted mask is not binary (values {shown})", path,
                        "give binary masks (0/1 or 0/255), e.g. the output of predict")
    return values > 0


def _uncovered(missing: list[str], total: int, what: str, pred: Path, allow: bool) -> None:
    if missing and not allow:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataError(f"no prediction for {len(missing)} of {total} ground-truth {what}: "
                        f"{shown}", pred, "predict every one of them, or pass --allow-missing "
                        "to score only those predicted")


def _same_grid(path: Path, predicted: "NiftiVolume", truth_volume) -> None:
    """A NIfTI prediction must lie on its truth's voxel grid: same shape, voxel sizes and (for
    NIfTI truth) affine; a mask on another grid would be scored voxel by voxel regardless."""
    fix = "predict from the same images the truth belongs to (same grid)"
    true_shape = tuple(truth_volume.label.shape)
    if tuple(predicted.shape) != true_shape:
        raise DataError(f"prediction has shape {tuple(predicted.shape)}, truth {true_shape}",
                        path, fix)
    if not np.allclose(predicted.spacing, truth_volume.spacing, rtol=1e-3, atol=1e-4):
        shown = lambda v: "x".join(f"{float(x):g}" for x in v)
        raise DataError(f"prediction has voxels of {shown(predicted.spacing)} mm, truth "
                        f"{shown(truth_volume.spacing)} mm", path, fix)
    truth_path = Path(truth_volume.path) if truth_volume.path else None
    if truth_volume.source in ("msd", "nifti") and truth_path is not None and _is_nifti(truth_path):
        affine = NiftiVolume(truth_path, "label map").affine
        if not np.allclose(predicted.affine, affine, rtol=1e-3, atol=1e-2):
            raise DataError(f"prediction's affine differs from its truth's ({truth_path.name})",
                            path, fix)


def _truth_file(truth: Path, label_id: int | None):
    """A single NIfTI label map as --truth: its one case (named by the file)."""
    from .data.readers import Volume, read_nifti_label

    volume = NiftiVolume(truth, "label map")
    label = read_nifti_label(volume, label_id)
    return Volume(case_id=nifti_stem(truth), image=None, label=label, source="nifti",
                  spacing=volume.spacing, slice_index=np.arange(label.shape[2]),
                  path=str(truth))


def _truth_mask(path: Path, label_id: int | None) -> np.ndarray:
    """A 2D truth mask: value > 127 is spleen, or with `label_id` the pixels of that value (a
    multi-label 2D map; an id it does not hold, while it holds others, is an error)."""
    from .data.readers import _check_label_values

    values = _read_2d(path, "mask")[0]
    if label_id is None:
        return values > 127
    _check_label_values(np.unique(values).tolist(), path, label_id)
    return values == label_id


def evaluate(pred: str | Path, truth: str | Path, fmt: str = "auto",
             case_pattern: str | None = None, allow_missing: bool = False,
             label_id: int | None = None) -> dict[str, Any]:
    """Pooled, per-image and per-volume metrics of predicted masks against ground truth.

    2D masks are grouped into volumes by case id: by `case_pattern` (a regular expression
    searched in each name without its `mask_`/`image_` prefix; its group named `case`, else
    its first group, else the whole match) or, by default, DEFAULT_CASE_RULE. Every truth case
    (NIfTI) or mask (2D) needs a prediction unless `allow_missing` (the result's `missing`
    lists those left out); a NIfTI prediction must be on its truth's grid.

    `truth` is a data folder or one file (a NIfTI label map or a 2D mask; a single truth file
    is paired with the only prediction when `pred` holds one, else by name). `pred` is a
    folder or one mask file. `label_id` picks the spleen's value in multi-label truth maps
    (NIfTI or 2D); without it a truth map must be binary."""
    from .data.readers import open_source

    pred, truth = Path(pred), Path(truth)
    pattern = _compile(case_pattern)
    if not pred.exists():
        raise DataError("prediction folder not found", pred, "give the --out folder of predict")
    if not truth.exists():
        raise DataError("ground truth not found", truth,
                        "give the folder (or the file) holding the ground-truth masks")
    if truth.is_file() and not (_is_nifti(truth) or truth.suffix.lower() in IMAGE_EXTS):
        raise DataError("a ground-truth file must be a NIfTI label map or a 2D mask", truth,
                        "give that file, or the folder holding the ground-truth masks")
    pred_files = [pred] if pred.is_file() else sorted(pred.iterdir())
    meter = SegmentationMeter()
    niftis = sorted(p for p in pred_files if _is_nifti(p))
    if niftis:
        if truth.is_file():
            if not _is_nifti(truth):
                raise DataError("NIfTI predictions need a NIfTI ground truth", truth,
                                "give the label map (.nii.gz) or its folder")
            single = _truth_file(truth, label_id)
            truths = {single.case_id: single}
        else:
            truths = {vol.case_id: vol for vol in
                      open_source(truth, fmt, label_id=label_id, labels_only=True).volumes()}
        cases = [_pred_key(nifti_stem(p), truths) for p in niftis]
        if truth.is_file() and len(niftis) == 1:
            cases = [single.case_id]  # one prediction, one truth file: paired whatever the names
        for path, case in zip(niftis, cases):
            if case not in truths:
                raise DataError(f"no ground truth for case {case!r}", path,
                                f"the truth has cases {sorted(truths)[:5]}...")
        missing = sorted((c for c in truths if c not in set(cases)), key=natural_key)
        _uncovered(missing, len(truths), "case(s)", pred, allow_missing)
        for path, case in zip(niftis, cases):
            volume = NiftiVolume(path, "predicted mask")
            _same_grid(path, volume, truths[case])
            predicted = _binary_prediction(volume.read(), path)
            meter.update(np.moveaxis(predicted, 2, 0),
                         np.moveaxis(truths.pop(case).label > 0, 2, 0),
                         [case] * predicted.shape[2])
    else:
        preds = sorted(p for p in pred_files if p.suffix.lower() == ".png")
        if truth.is_file():
            masks_dir = truth.parent
            truth_files = {_slice_key(truth.stem): truth}
            if len(preds) == 1:  # one prediction, one truth file: paired whatever the names
                truth_files = {_pred_key(_slice_key(preds[0].stem), {}): truth}
        else:
            masks_dir = truth / "masks" if (truth / "masks").is_dir() else truth
            truth_files = {_slice_key(p.stem): p for p in masks_dir.iterdir()
                           if p.suffix.lower() in IMAGE_EXTS and
                           (masks_dir.name == "masks" or p.name.startswith("mask_"))}
        if not preds:
            raise DataError("no predicted masks (.png or .nii.gz)", pred, "run predict first")
        keys = {path: _pred_key(_slice_key(path.stem), truth_files) for path in preds}
        unsure: list[str] = []
        for path in preds:
            if keys[path] not in truth_files:
                raise DataError("no ground-truth mask with this name", path,
                                f"masks are matched by file name in {masks_dir}")
        covered = set(keys.values())
        missing = sorted((k for k in truth_files if k not in covered), key=natural_key)
        _uncovered(missing, len(truth_files), "slice mask(s)", pred, allow_missing)
        for path in preds:
            key = keys[path]
            predicted = _binary_prediction(_read_2d(path, "mask")[0], path)
            true = _truth_mask(truth_files[key], label_id)
            if predicted.shape != true.shape:
                raise DataError(f"prediction has size {predicted.shape}, truth {true.shape}",
                                path, "predict from the same images the truth belongs to")
            meter.update(predicted[None], true[None], [_case_of(key, path, pattern, unsure)])
        if unsure:
            warnings.warn(f"{len(unsure)} of {len(preds)} mask name(s) do not show their case "
                          f"with confidence (e.g. {unsure[0]!r}): each is scored as its own case; "
                          "give --case-pattern REGEX to group slices into volumes, e.g. "
                          f"--case-pattern '{CASE_PATTERN_EXAMPLE}' for <slice>_spleen_<case>",
                          KdlibWarning, stacklevel=2)
    result = meter.result()
    result["pred"], result["truth"] = str(pred), str(truth)
    result["missing"] = missing
    return result
