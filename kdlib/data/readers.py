"""Readers for every supported data source, each yielding `Volume` records.

All readers return slices in the *thesis orientation*: the orientation of an MSD NIfTI
array sliced as `data[:, :, k]` (no rotation), which is RAS+ (`CANONICAL_AXES`). Every NIfTI
volume is brought there from its affine (nibabel's orientation tools) and every DICOM series
from its ImageOrientationPatient, so a flipped or permuted volume reads like the others and
everything downstream sees one orientation. 2D slices carry no orientation: callers turn them
with `orient_slices` (CLI `--orient`).

Supported sources
- ``msd``: an MSD task folder (`dataset.json`, `imagesTr/`, `labelsTr/`, NIfTI). With
  ``labels_only=True`` only the label volumes are read (``Volume.image is None``).
- ``slices``: folders of 2D 8-bit slices, either the thesis's processed layout
  (`image_spleen_<case>_<slice>.png` + `mask_spleen_<case>_<slice>.png`, anywhere below the
  folder) or the generic `images/` + `masks/` layout paired by file name (PNG, JPEG, GIF;
  multi-frame GIFs give one slice per frame). Masks are thresholded (value > 127 is spleen
  by default). Case ids are parsed from names (see `parse_slice_name`).
- ``dicom``: 3D-IRCADb layout, `<patient>/PATIENT_DICOM/*` + `<patient>/MASKS_DICOM/spleen/*`,
  slices ordered by position along the slice normal (ImagePositionPatient), not by name.
- ``nifti``: a folder holding NIfTI image(s) and label map(s) (`read_nifti_pair` for one
  explicit pair). Multi-label maps need ``label_id``.

Slice index stored for each slice (``Volume.slice_index``)
- msd / nifti: the NIfTI slice number k; dicom: the position in patient order (0 = lowest
  z); thesis layout `image_spleen_<case>_<slice>`: <slice>.
- GIF frames `spleen_<case>_<first>_<case>_<last>_fNN` (the shared `thesis_slices`): the
  frame number NN, NOT the MSD slice number (the GIF shows slices <first>..<last> but not one
  frame per slice, so the MSD slice of a frame is unknown). When one case has several GIF
  ranges, the frames of later ranges are offset by the frame counts of the earlier ones.
  The ranges are recorded in ``Volume.extra["gif_ranges"]``.

Every problem with the input raises one `DataError` naming the file and the fix.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import DataError

FORMATS = ("msd", "slices", "dicom", "nifti")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".gif")
NIFTI_EXTS = (".nii.gz", ".nii")
DEFAULT_MASK_THRESHOLD = 127


@dataclass
class Volume:
    """One case (patient volume or group of 2D slices) in the thesis orientation.

    image: float32 (H, W, S) in HU for CT sources; uint8 (H, W, S) for 8-bit slice sources
    (``intensity == "8bit"``); None in labels-only mode.
    label: uint8 (H, W, S), 0/1.
    soft_label: for 8-bit slice sources, the grey mask values 0..255 before thresholding
    (used by faithful mode, which keeps soft masks); None otherwise.
    """

    case_id: str
    image: np.ndarray | None
    label: np.ndarray
    source: str
    spacing: tuple
    slice_index: np.ndarray
    intensity: str = "hu"
    path: str = ""
    soft_label: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_slices(self) -> int:
        return int(self.label.shape[2])

    @property
    def positive(self) -> np.ndarray:
        """Boolean (S,): which slices contain spleen."""
        return self.label.any(axis=(0, 1))

    @property
    def positive_slices(self) -> int:
        return int(self.positive.sum())


# --------------------------------------------------------------------------- helpers
def natural_key(text: str) -> list:
    """Sort key so that `spleen_2` < `spleen_10` and `image_9` < `image_10`."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text))]


def _visible(paths) -> list[Path]:
    """Regular files whose name does not start with '.' (drops macOS `._*` companions)."""
    return [p for p in paths if p.is_file() and not p.name.startswith(".")]


def nifti_stem(path: str | Path) -> str:
    name = Path(path).name
    for ext in NIFTI_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_EXTS) and not path.name.startswith(".")


def check_finite(array: np.ndarray, path, what: str = "image") -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{what} has {bad} NaN or infinite voxel(s)", path,
                        "fix or remove the file (kdlib does not guess values for missing voxels)")


def _label_values(array: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a label array (a histogram for uint8, which is fast)."""
    if array.dtype == np.uint8:
        return np.flatnonzero(np.bincount(array.ravel(), minlength=256))
    return np.unique(array)


def _check_label_values(values, path, label_id: int | None) -> None:
    """The rules of `binary_label`, on the set of values a label map holds."""
    values = sorted(values)
    shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    if label_id is not None:
        others = [v for v in values if v not in (0, label_id)]
        if label_id not in values and others:
            raise DataError(f"label id {label_id} is not in this label map (its values: {shown})",
                            path, "pass --label-id with one of the label map's own values "
                            "(the spleen's id: 1 for MSD and TotalSegmentator)")
        return
    if set(values) <= {0, 1} or set(values) <= {0, 255}:
        return
    raise DataError(
        f"label values are not binary ({len(values)} values: {shown}); "
        "a multi-label map needs label_id", path,
        "pass label_id (CLI: --label-id N) with the spleen's label id, e.g. 1 for MSD and "
        "TotalSegmentator")


def _check_integer(array: np.ndarray, path) -> None:
    check_finite(array, path, "label map")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise DataError("label map has non-integer values", path,
                        "labels must be integer ids (0 = background); re-export the label map")


def binary_label(array: np.ndarray, path, label_id: int | None = None) -> np.ndarray:
    """Turn a label array into uint8 0/1.

    Accepted without ``label_id``: values in {0, 1} or in {0, 255} (8-bit masks). Any other
    set of values is a multi-label map (or a broken mask), which needs ``label_id``. A
    ``label_id`` that the map does not hold while it holds other labels is an error (a wrong
    id would silently give empty masks).
    """
    _check_integer(array, path)
    if array.size == 0:
        return array.astype(np.uint8)
    _check_label_values(_label_values(array).tolist(), path, label_id)
    if label_id is not None:
        return (array == label_id).astype(np.uint8)
    return (array != 0).astype(np.uint8)


# ------------------------------------------------------------------------ orientation
CANONICAL_AXES = ("R", "A", "S")  # nibabel axis codes of the thesis orientation


def canonical_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform (3, 2) taking an array with this affine to the thesis
    orientation: RAS+ (axis 0 towards the patient's right, 1 anterior, 2 superior), which is
    how MSD Task09 volumes are stored, so they are left exactly as they are."""
    from nibabel import orientations

    return orientations.ornt_transform(orientations.io_orientation(affine),
                                       orientations.axcodes2ornt(CANONICAL_AXES))


def _reorder(values, ornt) -> tuple:
    """Per-axis values (e.g. voxel sizes) of the source axes, in the transformed axis order."""
    out = [0.0] * len(values)
    for source, (target, _) in enumerate(ornt):
        out[int(target)] = float(values[source])
    return tuple(out)


def apply_orientation(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """`array` (first axes as in `ornt`) reoriented; a view (flips and transposes only)."""
    from nibabel import orientations

    return orientations.apply_orientation(array, ornt)


def undo_orientation(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Inverse of `apply_orientation(., ornt)`: back to the source's own axes."""
    inverse = np.empty_like(np.asarray(ornt, dtype=float))
    for source, (target, flip) in enumerate(ornt):
        inverse[int(target)] = (source, flip)
    return apply_orientation(array, inverse)


ORIENT_OPS = ("none", "rot90", "rot180", "rot270", "flipud", "fliplr")
_ORIENT_INVERSE = {"rot90": "rot270", "rot270": "rot90"}


def orient_slices(array: np.ndarray, op: str, inverse: bool = False) -> np.ndarray:
    """Rotate (counter-clockwise, as numpy.rot90) or flip the slices of (H, W, ...) `array`
    (axes 0 and 1); `inverse=True` undoes `op`. For 2D sources, which carry no orientation."""
    if op not in ORIENT_OPS:
        raise DataError(f"unknown orientation {op!r}", None, f"use one of {', '.join(ORIENT_OPS)}")
    if inverse:
        op = _ORIENT_INVERSE.get(op, op)
    if op.startswith("rot"):
        return np.rot90(array, int(op[3:]) // 90, axes=(0, 1))
    if op == "flipud":
        return array[::-1]
    if op == "fliplr":
        return array[:, ::-1]
    return array


# ----------------------------------------------------------------------------- NIfTI
SLAB = 32  # slices read at a time: memory stays flat whatever the number of slices


MAX_DIM = 32767  # voxels along one axis (NIfTI-1 stores dimensions as int16)
MAX_VOXELS = 1 << 30  # voxels of one volume: its uint8 mask alone is then 1 GiB
# deflate inflates at most 1032:1; a .gz file cannot hold more than this many bytes per byte
MAX_DEFLATE_RATIO = 1032


def check_declared_size(path: Path, shape: tuple, header) -> None:
    """Refuse a header whose data cannot be in the file, before anything is allocated: its
    voxel count x item size must fit in an uncompressed file, and in what a .gz file of this
    size can inflate to (deflate's ratio is bounded); dimensions and voxel count are capped."""
    fix = "the header does not match the data: re-export the file"
    if any(not 0 < int(v) <= MAX_DIM for v in shape):
        raise DataError(f"header declares shape {tuple(shape)} (each dimension must be 1.."
                        f"{MAX_DIM})", path, fix)
    voxels = int(np.prod([int(v) for v in shape], dtype=object))
    if voxels > MAX_VOXELS:
        raise DataError(f"header declares {voxels:,} voxels, more than kdlib reads in one "
                        f"volume ({MAX_VOXELS:,})", path, "split or downsample the volume")
    try:
        need = int(header.get_data_offset()) + voxels * int(header.get_data_dtype().itemsize)
        size = path.stat().st_size
    except (OSError, TypeError, ValueError):
        return
    if path.name.lower().endswith(".gz"):
        if need > size * MAX_DEFLATE_RATIO + (1 << 16):
            raise DataError(f"header declares {need:,} bytes of data, more than a {size:,}-byte "
                            ".gz file can hold", path, fix)
    elif need > size:
        raise DataError(f"header declares {need:,} bytes of data but the file has {size:,}",
                        path, fix)


class NiftiVolume:
    """One NIfTI file in the thesis orientation, read in slabs of slices.

    Opening reads the header only. `slabs()` yields `(start, stop, array (H, W, stop-start))`
    in canonical slice numbers; when the file's slice axis is the canonical one (every MSD,
    3D-IRCADb and TotalSegmentator file) slabs come straight from the file in file order (a
    gzip stream is read once, front to back), otherwise the volume is read whole first.
    Images are float32; label maps keep their stored dtype. A file that cannot be decoded
    raises DataError when its bytes are read.
    """

    def __init__(self, path: str | Path, kind: str = "image"):
        import nibabel as nib

        self.path, self.kind = Path(path), kind
        try:
            self._img = nib.load(str(path), keep_file_open=True)
            shape = tuple(int(v) for v in self._img.shape)
        except FileNotFoundError:
            raise DataError("file not found", path, "check the path") from None
        except Exception as exc:  # noqa: BLE001 - gzip/zlib/nibabel raise many types
            raise self._unreadable(exc) from None
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) == 2:
            shape = (*shape, 1)
        if len(shape) != 3:
            raise DataError(f"expected a 3D {kind} volume, got shape {shape}", path,
                            "give one 3D volume per file")
        check_declared_size(self.path, shape, self._img.header)
        self.file_shape = shape
        self.affine, self.header = self._img.affine, self._img.header
        self.ornt = canonical_transform(self.affine)
        self.axcodes = "".join(nib.aff2axcodes(self.affine))
        self.shape = tuple(int(v) for v in _reorder(shape, self.ornt))
        zooms = tuple(float(z) for z in self._img.header.get_zooms()[:3])
        self.spacing = _reorder(zooms + (1.0,) * (3 - len(zooms)), self.ornt)
        self.dtype = np.dtype(np.float32) if kind == "image" else self._img.get_data_dtype()

    def _unreadable(self, exc) -> DataError:
        return DataError(f"cannot read NIfTI {self.kind} ({type(exc).__name__}: {exc}); the file "
                         "is corrupt or truncated", self.path, "re-download or re-export the file")

    def _read(self, start: int, stop: int) -> np.ndarray:
        """File slices [start, stop) along the file's axis 2, in the file's own axes."""
        ndim = len(self._img.shape)
        slicer = {2: (slice(None), slice(None)), 3: (slice(None), slice(None), slice(start, stop)),
                  4: (slice(None), slice(None), slice(start, stop), 0)}[ndim]
        try:
            raw = np.asarray(self._img.dataobj[slicer])
        except MemoryError:
            raise DataError(f"not enough memory to read slices {start}..{stop} of this "
                            f"{self.kind} (shape {self.file_shape})", self.path,
                            "free memory, or split or downsample the volume") from None
        except Exception as exc:  # noqa: BLE001
            raise self._unreadable(exc) from None
        if raw.ndim == 2:
            raw = raw[:, :, None]
        raw = raw.astype(np.float32, copy=False) if self.kind == "image" else raw
        if self.kind == "image":
            check_finite(raw, self.path, "image")
        return raw

    def slabs(self, size: int = SLAB) -> Iterator[tuple[int, int, np.ndarray]]:
        depth = self.file_shape[2]
        target, flip = int(self.ornt[2][0]), self.ornt[2][1] < 0
        if target != 2:  # slices are not along the file's axis 2: read the whole volume
            whole = self.read()
            for start in range(0, self.shape[2], size):
                yield start, min(start + size, self.shape[2]), whole[:, :, start:start + size]
            return
        in_plane = np.array(self.ornt, copy=True)
        in_plane[2] = (2, 1)  # slice order handled here, by slab position
        for start in range(0, depth, size):
            stop = min(start + size, depth)
            slab = apply_orientation(self._read(start, stop), in_plane)
            if flip:
                yield depth - stop, depth - start, slab[:, :, ::-1]
            else:
                yield start, stop, slab

    def read(self) -> np.ndarray:
        """The whole volume, canonical orientation (image float32; label stored dtype)."""
        return apply_orientation(self._read(0, self.file_shape[2]), self.ornt)

    def to_file_axes(self, array: np.ndarray) -> np.ndarray:
        """A canonical (H, W, S) array back in this file's own axes (for writing masks)."""
        return undo_orientation(array, self.ornt)


def read_nifti_label(nv: NiftiVolume, label_id: int | None = None) -> np.ndarray:
    """A label map -> uint8 0/1 (canonical orientation), built slab by slab (rules of
    `binary_label`)."""
    out = np.empty(nv.shape, np.uint8)
    values: set = set()
    for start, stop, slab in nv.slabs():
        _check_integer(slab, nv.path)
        values.update(_label_values(slab).tolist())
        out[:, :, start:stop] = (slab == label_id) if label_id is not None else (slab != 0)
    _check_label_values(values, nv.path, label_id)
    return out


def _nifti_volume(case_id, image_path, label_path, label_id, labels_only, source,
                  lazy=False) -> Volume:
    label_file = NiftiVolume(label_path, "label map")
    image = None
    spacing = label_file.spacing
    if not labels_only:
        image_file = NiftiVolume(image_path, "image")
        if image_file.shape != label_file.shape:
            raise DataError(f"image has shape {image_file.shape} but its label map "
                            f"{Path(label_path).name} has shape {label_file.shape}", image_path,
                            "image and label must come from the same scan (same voxel grid)")
        image, spacing = (image_file if lazy else image_file.read()), image_file.spacing
    label = read_nifti_label(label_file, label_id)
    return Volume(case_id=case_id, image=image, label=label, source=source, spacing=spacing,
                  slice_index=np.arange(label.shape[2]), intensity="hu",
                  path=str(image_path if not labels_only else label_path),
                  extra={"orientation": label_file.axcodes})


# --------------------------------------------------------------------------- sources
class Source:
    """A discovered input: knows its format, case ids and files before reading pixels."""

    fmt = "?"
    intensity = "hu"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.cases: list[str] = []
        self.synthetic = False

    def files(self) -> list[Path]:
        raise NotImplementedError

    def volumes(self, lazy: bool = False) -> Iterator[Volume]:
        """One Volume per case, read one at a time in case order. With `lazy=True` a NIfTI
        image is a `NiftiVolume` (read slab by slab by its consumer) instead of an array."""
        for case in self.cases:
            yield self._read_case(case, lazy) if self.lazy_images else self._read_case(case)

    lazy_images = False  # sources whose `_read_case` takes `lazy`

    def _read_case(self, case: str) -> Volume:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Volume]:
        return self.volumes()

    def __len__(self) -> int:
        return len(self.cases)


def _check_unique(cases: list[str], where: Path) -> None:
    seen = set()
    for case in cases:
        if case in seen:
            raise DataError(f"same case twice: {case!r}", where,
                            "each case may appear only once; remove the duplicate")
        seen.add(case)


class MSDSource(Source):
    fmt = "msd"

    def __init__(self, path, label_id=None, labels_only=False):
        super().__init__(path)
        root = self.path
        self.label_id, self.labels_only = label_id, labels_only
        meta = {}
        ds = root / "dataset.json"
        if ds.exists():
            try:
                meta = json.loads(ds.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(f"dataset.json is not valid JSON ({exc})", ds,
                                "restore the file from the MSD download") from None
        self.meta = meta
        self.synthetic = bool(meta.get("synthetic", False))
        pairs: dict[str, tuple[Path, Path]] = {}
        if isinstance(meta.get("training"), list) and meta["training"]:
            for entry in meta["training"]:
                try:
                    img, lbl = root / entry["image"], root / entry["label"]
                except (TypeError, KeyError):
                    raise DataError("dataset.json 'training' entries need 'image' and 'label'",
                                    ds, "restore the file from the MSD download") from None
                case = nifti_stem(img)
                if case in pairs:
                    raise DataError(f"same case twice: {case!r}", ds, "remove the duplicate entry")
                pairs[case] = (img, lbl)
        else:
            images = {nifti_stem(p): p for p in _visible((root / "imagesTr").glob("*"))
                      if _is_nifti(p)} if (root / "imagesTr").is_dir() else {}
            labels = {nifti_stem(p): p for p in _visible((root / "labelsTr").glob("*"))
                      if _is_nifti(p)} if (root / "labelsTr").is_dir() else {}
            for case in set(images) | set(labels):
                pairs[case] = (images.get(case, root / "imagesTr" / f"{case}.nii.gz"),
                               labels.get(case, root / "labelsTr" / f"{case}.nii.gz"))
        if not pairs:
            raise DataError("no cases found (no NIfTI files in imagesTr/ or labelsTr/, and no "
                            "'training' list in dataset.json)", root,
                            "point the input at an MSD task folder such as Task09_Spleen")
        if not labels_only and not (root / "imagesTr").is_dir():
            raise DataError("no imagesTr/ folder (this folder has label volumes only)", root,
                            "use labels_only=True (CLI: --labels-only) for an inventory, or "
                            "download the images with `python -m kdlib download`")
        for case, (img, lbl) in sorted(pairs.items()):
            if not lbl.is_file():
                raise DataError("image without its mask (no label volume "
                                f"labelsTr/{lbl.name})", img if img.is_file() else lbl,
                                "add the label volume or remove the case")
            if not labels_only and not img.is_file():
                raise DataError(f"label volume without its image (no imagesTr/{img.name})", lbl,
                                "add the image volume, remove the case, or use labels_only")
        self.pairs = pairs
        self.cases = sorted(pairs, key=natural_key)

    def files(self):
        out = []
        if (self.path / "dataset.json").exists():
            out.append(self.path / "dataset.json")
        for case in self.cases:
            img, lbl = self.pairs[case]
            if not self.labels_only:
                out.append(img)
            out.append(lbl)
        return out

    lazy_images = True

    def _read_case(self, case: str, lazy: bool = False) -> Volume:
        img, lbl = self.pairs[case]
        return _nifti_volume(case, img, lbl, self.label_id, self.labels_only, self.fmt, lazy)


def _label_like(path: Path) -> bool:
    tokens = re.split(r"[_\-.]", nifti_stem(path).lower())
    return any(t in ("seg", "segs", "label", "labels", "mask", "masks", "gt", "segmentation")
               for t in tokens)


def _pair_key(path: Path, label: bool) -> str:
    drop = ({"seg", "segs", "label", "labels", "mask", "masks", "gt", "segmentation"} if label
            else {"ct", "img", "image", "0000"})
    tokens = [t for t in re.split(r"[_\-.]", nifti_stem(path).lower()) if t not in drop]
    return "_".join(tokens)


class NiftiSource(Source):
    """Folder of NIfTI image(s) + label map(s), or one explicit (image, label) pair."""

    fmt = "nifti"

    def __init__(self, path, label_id=None, labels_only=False, pair=None):
        super().__init__(path)
        self.label_id, self.labels_only = label_id, labels_only
        if pair is not None:
            pairs = [tuple(Path(p) for p in pair)]
            for p in pairs[0]:
                if not p.is_file():
                    raise DataError("file not found", p, "check the path")
        else:
            files = sorted((p for p in _visible(self.path.iterdir()) if _is_nifti(p)),
                           key=lambda p: natural_key(p.name))
            if not files:
                raise DataError("no NIfTI files (.nii / .nii.gz) in this folder", self.path,
                                "point the input at a folder with an image and its label map")
            labels = [p for p in files if _label_like(p)]
            images = [p for p in files if not _label_like(p)]
            if not labels:
                raise DataError("image without its mask (no label map found: label files need "
                                "'seg', 'label' or 'mask' in the name)", images[0],
                                "add the label map, e.g. <name>_seg.nii.gz")
            if not images:
                raise DataError("label map without its image", labels[0],
                                "add the CT image next to it")
            if len(images) == 1 and len(labels) == 1:
                pairs = [(images[0], labels[0])]
            else:
                lab_by_key = {}
                for p in labels:
                    lab_by_key.setdefault(_pair_key(p, True), []).append(p)
                pairs, used = [], set()
                for img in images:
                    match = lab_by_key.get(_pair_key(img, False), [])
                    if len(match) != 1:
                        raise DataError("image without its mask (no label map with a matching "
                                        "name)" if not match else "image matches several label "
                                        "maps", img, "name label maps <image>_seg.nii.gz")
                    pairs.append((img, match[0]))
                    used.add(match[0])
                for p in labels:
                    if p not in used:
                        raise DataError("label map without its image", p,
                                        "add the image or remove the label map")
        self.pairs = {nifti_stem(img): (img, lbl) for img, lbl in pairs}
        self.cases = list(self.pairs)

    def files(self):
        out = []
        for case in self.cases:
            img, lbl = self.pairs[case]
            out += [lbl] if self.labels_only else [img, lbl]
        return out

    lazy_images = True

    def _read_case(self, case: str, lazy: bool = False) -> Volume:
        img, lbl = self.pairs[case]
        return _nifti_volume(case, img, lbl, self.label_id, self.labels_only, self.fmt, lazy)


# ------------------------------------------------------------------------ 2D slices
_RE_GIF_FRAME = re.compile(r"^(?P<case>[A-Za-z]+_(?P<num>\d+))_(?P<first>\d+)_(?P=num)_"
                           r"(?P<last>\d+)_f(?P<frame>\d+)$")
_RE_GIF_FILE = re.compile(r"^(?P<case>[A-Za-z]+_(?P<num>\d+))_(?P<first>\d+)_(?P=num)_"
                          r"(?P<last>\d+)$")
# `<case>_<slice>` where the case id is one or more words (a letter first; letters and hyphens)
# with at most one number, at its very end (`patient7`, `case-01`) or as a last token
# (`spleen_3`, `CT_0001`); a bare number, or digits inside the id, is not a case id kdlib can
# tell from a slice number
_RE_CASE_SLICE = re.compile(r"^(?P<case>[A-Za-z][A-Za-z-]*(?:_[A-Za-z][A-Za-z-]*)*"
                            r"(?:\d+|_\d+)?)_(?P<slice>\d+)$")


def parse_slice_name(stem: str) -> dict:
    """Case id and position of a 2D slice from its file name (without extension/prefix).

    - `spleen_22_40_22_70_f03`  -> case `spleen_22`, GIF range (40, 70), frame 3
    - `spleen_22_40_22_70`      -> case `spleen_22`, GIF range (40, 70), frames inside file
    - `spleen_3_10`             -> case `spleen_3`, slice 10 (thesis layout)
    - `patient7_12`, `my_case_12`, `case-01_5` -> case `patient7`, `my_case`, `case-01`
    - anything else             -> case = the whole name, one case per file

    `confident` says whether the name was parsed with confidence, defined as: it has one of
    the forms above other than the last, i.e. the GIF forms (the case number appears twice),
    or `<case>_<slice>` with `<slice>` a number and `<case>` made of words that start with a
    letter (letters and hyphens) holding at most one number, at the very end of the id
    (`patient7`) or as its own last token (`spleen_3`). A name whose would-be case id starts
    with a digit, is a bare number, or has digits inside it (`12_spleen_3`, `3_10`,
    `slice12_spleen_3`) could be `<slice>_..._<case>` as well as `<case>_<slice>`: it is
    not confident, becomes its own case, and callers that group by case warn (`evaluate`
    suggests --case-pattern).
    """
    m = _RE_GIF_FRAME.match(stem)
    if m:
        return {"case": m["case"], "range": (int(m["first"]), int(m["last"])),
                "frame": int(m["frame"]), "slice": None, "confident": True}
    m = _RE_GIF_FILE.match(stem)
    if m:
        return {"case": m["case"], "range": (int(m["first"]), int(m["last"])), "frame": None,
                "slice": None, "confident": True}
    m = _RE_CASE_SLICE.match(stem)
    if m:
        return {"case": m["case"], "range": None, "frame": None, "slice": int(m["slice"]),
                "confident": True}
    return {"case": stem, "range": None, "frame": None, "slice": None, "confident": False}


def _is_colour(frame) -> bool:
    """True when flattening `frame` to grey loses something: channels that differ, or an
    alpha channel that is not fully opaque (a grey palette or grey RGB loses nothing)."""
    if frame.mode in ("L", "1"):
        return False
    rgba = np.asarray(frame.convert("RGBA"))
    return bool((rgba[..., 0] != rgba[..., 1]).any() or (rgba[..., 1] != rgba[..., 2]).any()
                or (rgba[..., 3] != 255).any())


MAX_2D_PIXELS = 1 << 28  # pixels over all frames of one 2D file (a GIF's tiny frames each
                        # decode to its full canvas): 256 MiB as grey


def _read_2d(path: Path, kind: str, flattened: list | None = None) -> list[np.ndarray]:
    """All frames of an 8-bit image file as uint8 (H, W) arrays. Colour or transparent
    frames are flattened to grey (PIL's "L" conversion); such files are appended to
    `flattened` so that the caller can say so."""
    from PIL import Image, ImageSequence

    try:
        with Image.open(path) as im:
            width, height = im.size
            count = int(getattr(im, "n_frames", 1) or 1)
            if width * height * count > MAX_2D_PIXELS:  # before any frame is decoded
                raise DataError(f"{kind} declares {count} frame(s) of {width}x{height} pixels, "
                                f"more than kdlib reads from one file ({MAX_2D_PIXELS:,} "
                                "pixels)", path, "split the file or give smaller slices")
            frames, colour = [], False
            for frame in ImageSequence.Iterator(im):
                if frame.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                    raise DataError(f"{kind} is a 16-bit or float image (mode {frame.mode}); "
                                    "only 8-bit slices are supported", path,
                                    "export 8-bit slices, or convert the CT volume instead")
                colour = colour or _is_colour(frame)
                frames.append(np.asarray(frame.convert("L"), dtype=np.uint8).copy())
            if colour and flattened is not None:
                flattened.append(str(path))
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError("file not found", path, "check the path") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        raise DataError(f"cannot read {kind} ({type(exc).__name__}: {exc}); the file is corrupt "
                        "or truncated", path, "re-export or remove the slice") from None
    return frames


def _pair_slices(imgs: dict, msks: dict, mask_name, image_name) -> list[tuple]:
    """(key, image path, mask path) for every key; one clear error for an unpaired file."""
    entries = []
    for key in sorted(set(imgs) | set(msks), key=natural_key):
        if key not in msks:
            raise DataError("image without its mask", imgs[key], f"add {mask_name(key)} or remove the image")
        if key not in imgs:
            raise DataError("mask without its image", msks[key], f"add {image_name(key)} or remove the mask")
        entries.append((key, imgs[key], msks[key]))
    return entries


class SlicesSource(Source):
    fmt = "slices"
    intensity = "8bit"

    def __init__(self, path, labels_only=False, mask_threshold=DEFAULT_MASK_THRESHOLD):
        super().__init__(path)
        self.labels_only, self.mask_threshold = labels_only, int(mask_threshold)
        root = self.path
        entries = []  # (name key, image path, mask path)
        if (root / "images").is_dir() and (root / "masks").is_dir():
            self.layout = "images+masks"
            imgs = self._by_stem(root / "images")
            msks = self._by_stem(root / "masks")
            entries = _pair_slices(imgs, msks, lambda k: f"masks/{imgs[k].name}",
                                   lambda k: f"images/{msks[k].name}")
        else:
            self.layout = "thesis"
            imgs, msks = {}, {}
            for p in _visible(root.rglob("*")):
                if p.suffix.lower() not in IMAGE_EXTS:
                    continue
                for prefix, table in (("image_", imgs), ("mask_", msks)):
                    if p.name.startswith(prefix):
                        key = p.stem[len(prefix):]
                        if key in table:
                            raise DataError(f"two files for slice {key!r} ({table[key]} and "
                                            f"this one)", p, "remove one of them")
                        table[key] = p
            if not imgs and not msks:
                raise DataError("no 2D slices found (expected images/ + masks/ folders or "
                                "image_<case>_<slice>.png + mask_<case>_<slice>.png files)",
                                root, "point the input at a folder of slices")
            entries = _pair_slices(imgs, msks, lambda k: f"mask_{k}.png", lambda k: f"image_{k}.png")
        if not entries:
            raise DataError("empty folder: no image/mask pairs", root,
                            "add slices (PNG, JPEG or GIF) to images/ and masks/")
        groups: dict[str, list] = {}
        for key, img, msk in entries:
            info = parse_slice_name(key)
            groups.setdefault(info["case"], []).append((info, img, msk))
        self.groups = groups
        self.cases = sorted(groups, key=natural_key)

    @staticmethod
    def _by_stem(folder: Path) -> dict[str, Path]:
        table: dict[str, Path] = {}
        for p in sorted(_visible(folder.iterdir())):
            if p.suffix.lower() not in IMAGE_EXTS:
                continue
            if p.stem in table:
                raise DataError(f"two files with the name {p.stem!r} ({table[p.stem].name} and "
                                f"{p.name})", p, "keep one file per slice name")
            table[p.stem] = p
        return table

    def files(self):
        out = []
        for case in self.cases:
            for _, img, msk in self.groups[case]:
                out += [msk] if self.labels_only else [img, msk]
        return out

    def _read_case(self, case: str) -> Volume:
        items = self.groups[case]
        # order: GIF range first slice, then frame / slice number, then name
        def key(item):
            info = item[0]
            rng = info["range"][0] if info["range"] else -1
            pos = info["frame"] if info["frame"] is not None else (info["slice"] or 0)
            return (rng, pos, natural_key(item[1].name))

        items = sorted(items, key=key)
        images, masks, index, ranges, flattened = [], [], [], [], []
        shape = None
        offset, range_max, cur_range = 0, -1, None
        for info, img_path, msk_path in items:
            m_frames = _read_2d(msk_path, "mask", flattened)
            i_frames = None if self.labels_only else _read_2d(img_path, "image", flattened)
            if i_frames is not None and len(i_frames) != len(m_frames):
                raise DataError(f"image has {len(i_frames)} frame(s) but its mask "
                                f"{msk_path.name} has {len(m_frames)}", img_path,
                                "image and mask files must have the same frames")
            if info["range"] is not None and info["range"] != cur_range:
                if cur_range is not None:
                    offset += range_max + 1
                cur_range, range_max = info["range"], -1
                ranges.append(list(info["range"]))
            for f, mask in enumerate(m_frames):
                image = None if i_frames is None else i_frames[f]
                if image is not None and image.shape != mask.shape:
                    raise DataError(f"image has size {image.shape} but its mask {msk_path.name} "
                                    f"has size {mask.shape}", img_path,
                                    "image and mask must have the same size")
                if shape is None:
                    shape = mask.shape
                elif mask.shape != shape:
                    raise DataError(f"slice has size {mask.shape} but earlier slices of case "
                                    f"{case!r} have size {shape}", msk_path,
                                    "give all slices of one case the same size")
                if info["frame"] is not None:
                    pos = info["frame"]
                elif info["range"] is not None or len(m_frames) > 1:
                    pos = f
                elif info["slice"] is not None:
                    pos = info["slice"]
                else:
                    pos = len(index)
                if info["range"] is not None:
                    range_max = max(range_max, pos)
                    pos += offset
                if pos in index:
                    raise DataError(f"slice {pos} of case {case!r} appears twice", msk_path,
                                    "remove the duplicate slice")
                index.append(pos)
                masks.append(mask)
                if image is not None:
                    images.append(image)
        soft = np.stack(masks, axis=2)
        label = (soft > self.mask_threshold).astype(np.uint8)
        image = np.stack(images, axis=2) if images else None
        extra = {"layout": self.layout, "mask_threshold": self.mask_threshold}
        if flattened:
            extra["colour_flattened"] = flattened
        if ranges:
            extra["gif_ranges"] = ranges
        return Volume(case_id=case, image=image, label=label, source="slices",
                      spacing=(1.0, 1.0, 1.0), slice_index=np.asarray(index, dtype=np.int64),
                      intensity="8bit", path=str(items[0][1].parent), soft_label=soft,
                      extra=extra)


# ---------------------------------------------------------------------------- DICOM
def dicom_transform(ds) -> np.ndarray:
    """Orientation transform of a DICOM series stacked as (rows, columns, slices sorted along
    the slice normal) to the thesis orientation (RAS+), from ImageOrientationPatient (the
    standard axial [1,0,0, 0,1,0], also assumed when it is absent: both in-plane axes reversed,
    then transposed)."""
    iop = getattr(ds, "ImageOrientationPatient", None)
    iop = [float(v) for v in iop] if iop is not None and len(iop) == 6 else [1, 0, 0, 0, 1, 0]
    along_row, along_column = np.asarray(iop[:3]), np.asarray(iop[3:])
    # array axis 0 (row index) moves along the column cosine, axis 1 along the row cosine
    axes_lps = np.column_stack([along_column, along_row, np.cross(along_row, along_column)])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ axes_lps  # DICOM LPS -> RAS
    return canonical_transform(affine)


def _stack_oriented(items, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Sorted series -> ((H, W, S) array in the thesis orientation, the transform used)."""
    rows, cols = items[0][1].shape
    stack = np.empty((len(items), rows, cols), dtype=dtype)  # each slice contiguous
    for k, item in enumerate(items):
        stack[k] = item[1]
    ornt = dicom_transform(items[0][3])
    return apply_orientation(stack.transpose(1, 2, 0), ornt), ornt


def _oriented_spacing_and_positions(items, ornt):
    """Spacing (canonical axes) and slice positions (in canonical slice order, or None when
    the series' slices are not the canonical slices)."""
    ds = items[0][3]
    ps = [float(v) for v in getattr(ds, "PixelSpacing", [1.0, 1.0])]
    z = [item[0] for item in items]
    dz = float(np.median(np.diff(z))) if len(z) > 1 else \
        float(getattr(ds, "SliceThickness", 1.0) or 1.0)
    spacing = _reorder((ps[0], ps[1], dz), ornt)  # PixelSpacing = (between rows, columns)
    if int(ornt[2][0]) != 2:
        return spacing, None
    return spacing, (z[::-1] if ornt[2][1] < 0 else z)


def _check_sizes(items) -> None:
    shape = items[0][1].shape
    for item in items:
        if item[1].shape != shape:
            raise DataError(f"slice has size {item[1].shape} but the series has {shape}",
                            item[2], "all slices of a series must have one size")


def load_dicom_series(folder: str | Path, kind: str = "image"):
    """One DICOM series folder -> (array (H, W, S) in the thesis orientation, sorted by
    position; float32 HU for kind="image", stored values for kind="mask"), spacing (x, y, z),
    slice positions in the array's slice order)."""
    items = _read_dicom_series(Path(folder), kind)
    _check_sizes(items)
    array, ornt = _stack_oriented(items, np.float32 if kind == "image" else items[0][1].dtype)
    if kind == "image":
        check_finite(array, folder, "image")
    spacing, z = _oriented_spacing_and_positions(items, ornt)
    return array, spacing, z


DICOM_MAGIC_OFFSET = 128  # a DICOM file (PS3.10) has a 128-byte preamble, then b"DICM"


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def is_dicom_file(path: str | Path) -> bool:
    """True when `path` holds DICOM, told by content, never by name (scanners and PACS write
    files named by UIDs, `CT.1.3.12.2...`, or with no extension at all): the `DICM` magic at
    byte 128, or else, for a file written without the preamble, pydicom's own reader
    (forced) finds an image in it (Rows and Columns, or a SOP class) after a first tag of the
    file meta (group 0002) or identifying (group 0008) group."""
    path = Path(path)
    if not path.is_file() or path.name.startswith("."):
        return False
    if _has_dicom_magic(path):
        return True
    try:
        with open(path, "rb") as handle:
            first = handle.read(2)
    except OSError:
        return False
    if first not in (b"\x02\x00", b"\x08\x00"):  # little endian group 0002 or 0008
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), force=True, stop_before_pixels=True)
        return "SOPClassUID" in ds or ("Rows" in ds and "Columns" in ds)
    except Exception:  # noqa: BLE001 - not DICOM
        return False


def dicom_series_folders(path: str | Path) -> list[Path]:
    """Folders holding a DICOM series, found by content (`is_dicom_file`): `path` itself when
    any of its files is DICOM, else its subfolders that hold DICOM files (natural order)."""
    path = Path(path)
    if not path.is_dir():
        return []

    def holds_dicom(folder: Path) -> bool:
        return any(is_dicom_file(p) for p in sorted(folder.iterdir())
                   if p.is_file() and not p.name.startswith(".")
                   and not p.name.lower().endswith(IMAGE_EXTS + NIFTI_EXTS))

    if holds_dicom(path):
        return [path]
    subs = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))
    return [p for p in subs if holds_dicom(p)]


def _dcmread(path: Path):
    """Read one DICOM file; a file without preamble (no `DICM` magic) is read forced, and
    without file meta its transfer syntax is the encoding pydicom found."""
    import pydicom

    if _has_dicom_magic(path):
        return pydicom.dcmread(str(path))
    ds = pydicom.dcmread(str(path), force=True)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        if not little:
            raise ValueError("big endian DICOM without file meta")
        ds.file_meta = meta if meta is not None else FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else \
            ExplicitVRLittleEndian
    return ds


def _read_dicom_series(folder: Path, kind: str, with_pixels: bool = True):
    """Read every file of a series, sorted by position along the slice normal.

    Returns a list of (position, pixel array or None, path, header, (slope, intercept)); for
    kind="image" the pixels are float32 HU (rescale applied), masks are left as stored.
    """
    files = sorted(_visible(folder.iterdir()), key=lambda p: natural_key(p.name))
    if not files:
        raise DataError(f"empty folder: no DICOM files in this {kind} series", folder,
                        "point the input at a folder with DICOM slices")
    items = []
    for path in files:
        try:
            ds = _dcmread(path)
            pixels = None
            slope = float(getattr(ds, "RescaleSlope", 1) or 1)
            intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
            if with_pixels:
                pixels = ds.pixel_array
                if kind == "image":  # HU = stored value * slope + intercept
                    pixels = pixels.astype(np.float32)
                    if slope != 1 or intercept != 0:
                        pixels = pixels * np.float32(slope) + np.float32(intercept)
        except Exception as exc:  # noqa: BLE001 - any failure to decode means a bad file
            raise DataError(f"cannot read DICOM {kind} ({type(exc).__name__}: {exc}); the file "
                            "is corrupt or truncated", path,
                            "re-export or replace the file") from None
        if pixels is not None and pixels.ndim != 2:
            raise DataError(f"expected one 2D slice per DICOM file, got shape {pixels.shape}",
                            path, "split multi-frame DICOM files into one file per slice")
        del ds.PixelData  # keep the header only; the pixels are in `pixels`
        items.append((_dicom_position(ds, path), pixels, path, ds, (slope, intercept)))
    items.sort(key=lambda t: t[0])
    _check_orientations(items, kind)
    for a, b in zip(items, items[1:]):
        if abs(a[0] - b[0]) < 1e-4:
            raise DataError(f"two slices at the same position {a[0]:.3f} ({a[2].name} and "
                            f"{b[2].name})", b[2], "remove the duplicate slice")
    return items


def _iop(ds):
    iop = getattr(ds, "ImageOrientationPatient", None)
    try:
        return None if iop is None or len(iop) != 6 else np.asarray([float(v) for v in iop])
    except (TypeError, ValueError):
        return None


def _check_orientations(items, kind: str) -> None:
    """Every slice of a series must share the first slice's ImageOrientationPatient: a slice
    in another orientation would be stacked as if it were parallel to the others."""
    first = _iop(items[0][3])
    for item in items[1:]:
        iop = _iop(item[3])
        if (first is None) != (iop is None) or \
                (first is not None and not np.allclose(iop, first, atol=1e-3)):
            shown = lambda v: "none" if v is None else "[" + ", ".join(f"{x:g}" for x in v) + "]"
            raise DataError(f"slice has ImageOrientationPatient {shown(iop)} but the {kind} "
                            f"series has {shown(first)} ({items[0][2].name})", item[2],
                            "remove the slice: all slices of a series must share one "
                            "orientation")


def _dicom_position(ds, path) -> float:
    ipp = getattr(ds, "ImagePositionPatient", None)
    if ipp is not None and len(ipp) == 3:
        iop = getattr(ds, "ImageOrientationPatient", None)
        if iop is not None and len(iop) == 6:
            normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
            if np.linalg.norm(normal) > 0:
                return float(np.dot(np.asarray(ipp, float), normal))
        return float(ipp[2])
    for name in ("SliceLocation", "InstanceNumber"):
        value = getattr(ds, name, None)
        if value is not None and value != "":
            return float(value)
    raise DataError("DICOM slice has no ImagePositionPatient, SliceLocation or InstanceNumber, "
                    "so it cannot be placed in the series", path,
                    "re-export the series with position information")


class DicomSource(Source):
    fmt = "dicom"

    def __init__(self, path, labels_only=False, mask_name="spleen"):
        super().__init__(path)
        self.labels_only, self.mask_name = labels_only, mask_name
        root = self.path
        if (root / "PATIENT_DICOM").is_dir():
            patients = [root]
        else:
            patients = sorted((p for p in root.iterdir() if (p / "PATIENT_DICOM").is_dir()),
                              key=lambda p: natural_key(p.name)) if root.is_dir() else []
        if not patients:
            raise DataError("no DICOM series found (expected <patient>/PATIENT_DICOM/ and "
                            f"<patient>/MASKS_DICOM/{mask_name}/)", root,
                            "point the input at a 3D-IRCADb patient folder or its parent")
        for p in patients:
            if not (p / "MASKS_DICOM" / mask_name).is_dir():
                raise DataError(f"image without its mask (no MASKS_DICOM/{mask_name}/ series)",
                                p / "PATIENT_DICOM", f"add the {mask_name} mask series")
        self.patients = {p.name: p for p in patients}
        self.cases = [p.name for p in patients]

    def files(self):
        out = []
        for case in self.cases:
            p = self.patients[case]
            dirs = [p / "MASKS_DICOM" / self.mask_name]
            if not self.labels_only:
                dirs.insert(0, p / "PATIENT_DICOM")
            for d in dirs:
                out += sorted(_visible(d.iterdir()), key=lambda q: natural_key(q.name))
        return out

    def _read_case(self, case: str) -> Volume:
        p = self.patients[case]
        mask_dir = p / "MASKS_DICOM" / self.mask_name
        masks = _read_dicom_series(mask_dir, "mask")
        images = None
        if not self.labels_only:
            images = _read_dicom_series(p / "PATIENT_DICOM", "image")
            mpos = {round(m[0], 3): m for m in masks}
            ipos = {round(i[0], 3): i for i in images}
            for pos, item in ipos.items():
                if pos not in mpos:
                    raise DataError(f"image without its mask (no mask slice at position "
                                    f"{pos:.3f} in MASKS_DICOM/{self.mask_name})", item[2],
                                    "add the missing mask slice")
            for pos, item in mpos.items():
                if pos not in ipos:
                    raise DataError(f"mask without its image (no image slice at position "
                                    f"{pos:.3f})", item[2], "remove the extra mask slice")
        _check_sizes(masks + (images or []))
        stacked, ornt = _stack_oriented(masks, masks[0][1].dtype)
        label = binary_label(stacked, mask_dir)
        image = None
        if images is not None:
            image = _stack_oriented(images, np.float32)[0]
            check_finite(image, p / "PATIENT_DICOM", "image")
        spacing, z = _oriented_spacing_and_positions(masks, ornt)
        extra = {"z_positions": None if z is None else [round(v, 4) for v in z]}
        return Volume(case_id=case, image=image, label=label, source="dicom", spacing=spacing,
                      slice_index=np.arange(label.shape[2]), intensity="hu", path=str(p),
                      extra=extra)


# ---------------------------------------------------------------------------- entry
def detect_format(path: str | Path) -> str:
    """Guess the format of an input folder; DataError when it cannot be told."""
    path = Path(path)
    if not path.exists():
        raise DataError("input not found", path, "check the path")
    if path.is_file():
        if _is_nifti(path):
            raise DataError("a single NIfTI file is not enough (the label map is needed too)",
                            path, "give the folder holding the image and its label map")
        raise DataError("expected a folder, got a file", path,
                        "give the folder that holds the data")
    names = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    if not names:
        raise DataError("empty folder", path, "point the input at a folder with data")
    if names & {"dataset.json", "imagesTr", "labelsTr"}:
        return "msd"
    if "PATIENT_DICOM" in names or any((path / n / "PATIENT_DICOM").is_dir() for n in names):
        return "dicom"
    if {"images", "masks"} <= names:
        return "slices"
    if any(_is_nifti(path / n) for n in names):
        return "nifti"
    for p in path.rglob("*"):
        if p.suffix.lower() in IMAGE_EXTS and p.name.startswith(("image_", "mask_")):
            return "slices"
    subs = [path / n for n in names if (path / n / "dataset.json").is_file()]
    if len(subs) == 1:
        return "msd"
    raise DataError("cannot tell the data format of this folder", path,
                    "pass fmt= (CLI: --format msd|slices|dicom|nifti)")


def open_source(path: str | Path, fmt: str = "auto", label_id: int | None = None,
                labels_only: bool = False, mask_threshold: int = DEFAULT_MASK_THRESHOLD,
                mask_name: str = "spleen") -> Source:
    """Discover an input (format, cases, files) without reading any pixels."""
    path = Path(path)
    if fmt in (None, "auto"):
        fmt = detect_format(path)
    elif fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}", None, f"use one of {', '.join(FORMATS)}")
    elif not path.is_dir():
        raise DataError("input folder not found" if not path.exists() else
                        "expected a folder, got a file", path, "check the path")
    elif not any(not p.name.startswith(".") for p in path.iterdir()):
        raise DataError("empty folder", path, "point the input at a folder with data")
    if fmt == "msd":
        if not (path / "dataset.json").is_file() and not (path / "labelsTr").is_dir():
            subs = [p for p in path.iterdir() if (p / "dataset.json").is_file()]
            if len(subs) == 1:
                path = subs[0]
        src = MSDSource(path, label_id=label_id, labels_only=labels_only)
    elif fmt == "slices":
        src = SlicesSource(path, labels_only=labels_only, mask_threshold=mask_threshold)
    elif fmt == "dicom":
        src = DicomSource(path, labels_only=labels_only, mask_name=mask_name)
    else:
        src = NiftiSource(path, label_id=label_id, labels_only=labels_only)
    _check_unique(src.cases, path)
    return src


def read_msd(path, label_id: int | None = None, labels_only: bool = False) -> Iterator[Volume]:
    """Yield one Volume per case of an MSD task folder (natural case order)."""
    yield from open_source(path, "msd", label_id=label_id, labels_only=labels_only).volumes()


def read_slices(path, mask_threshold: int = DEFAULT_MASK_THRESHOLD,
                labels_only: bool = False) -> Iterator[Volume]:
    """Yield one Volume per case (patient) of a folder of 2D 8-bit slices."""
    yield from open_source(path, "slices", labels_only=labels_only,
                           mask_threshold=mask_threshold).volumes()


def read_dicom(path, mask_name: str = "spleen", labels_only: bool = False) -> Iterator[Volume]:
    """Yield one Volume per patient of a 3D-IRCADb-style DICOM folder (patient order)."""
    yield from open_source(path, "dicom", labels_only=labels_only,
                           mask_name=mask_name).volumes()


def read_nifti_pair(image, label, label_id: int | None = None,
                    labels_only: bool = False) -> Iterator[Volume]:
    """Yield the one Volume of an explicit NIfTI image + label map pair."""
    src = NiftiSource(Path(image).parent, label_id=label_id, labels_only=labels_only,
                      pair=(image, label))
    yield from src.volumes()


def read_any(path, fmt: str = "auto", **kwargs) -> Iterator[Volume]:
    """Yield Volumes from any supported source (format detected when fmt='auto')."""
    yield from open_source(path, fmt, **kwargs).volumes()
