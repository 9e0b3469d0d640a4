"""Convert data sources into a compact slice cache, load it, and serve it to torch.

Cache layout (`out/`): `images.npy` uint8 (N, S, S), `masks.npy` uint8 (N, S, S) (255 =
spleen; soft values in faithful mode), `case_ids.npy` (N,) str, `slice_index.npy` (N,) int64,
`sources.npy` (N,) str (the reader each slice came from), `manifest.json`; optionally
`png/images/<case>_<slice:04d>.png` and `png/masks/...` for visual QC. In labels-only mode
the folder holds `inventory.json` and `manifest.json` only.

Two conversion modes
- faithful (the thesis's own preprocessing): HU float -> uint8 by clipping to [0, 255]
  (truncating, as PIL's float -> 8-bit conversion does), no rotation, images AND masks resized
  to `size` bilinearly, masks stored soft (mask*255 resized, not re-binarised), all slices.
- standard (default): HU window `hu_window` (default abdominal W400/L40 = (-160, 240)) mapped
  linearly to 0..255, images resized bilinearly (antialiased when downsampling), masks
  resized by nearest neighbour and kept binary (0/255), all slices.
8-bit slice sources are taken as they are (their intensity mapping was chosen by whoever
made them: for the thesis slices, HU clipped to 0..255). Mixing them with HU sources is only
allowed when the HU sources get the same mapping: faithful mode or hu_window=(0, 255).
Non-square slices are stretched to S x S (as the thesis did); the manifest says so.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ConfigError, DataError, KdlibError, KdlibWarning
from ..io import atomic_dir, atomic_write_json, config_hash, read_json, sha256_file
from ..progress import bar
from .readers import (DEFAULT_MASK_THRESHOLD, ORIENT_OPS, SLAB, Source, Volume, open_source,
                      orient_slices)

CACHE_VERSION = 1
MAX_SIZE = 2048  # slice size upper bound: 2048**2 bytes per slice is already 4 MiB
DEFAULT_HU_WINDOW = (-160.0, 240.0)  # abdominal window W400 / L40
ARRAY_FILES = ("images.npy", "masks.npy", "case_ids.npy", "slice_index.npy", "sources.npy")


# ------------------------------------------------------------------ intensity & resize
def hu_to_uint8(hu: np.ndarray, faithful: bool, hu_window=DEFAULT_HU_WINDOW) -> np.ndarray:
    """Map HU to 8 bits: clip to [0, 255] and truncate (faithful) or a linear window."""
    if faithful:
        return np.clip(hu, 0, 255).astype(np.uint8)
    lo, hi = float(hu_window[0]), float(hu_window[1])
    scaled = (hu.astype(np.float32) - lo) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _resize(slice2d: np.ndarray, size: int, method: str) -> np.ndarray:
    from PIL import Image

    if slice2d.shape == (size, size):
        return np.ascontiguousarray(slice2d)
    resample = Image.Resampling.BILINEAR if method == "bilinear" else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(np.ascontiguousarray(slice2d)).resize((size, size),
                                                                            resample))


def _slabs(volume, n: int):
    """(start, stop, slab) over a (H, W, S) array, or the slabs a lazy NiftiVolume reads."""
    if hasattr(volume, "slabs"):
        yield from volume.slabs()
        return
    for start in range(0, n, SLAB):
        yield start, min(start + SLAB, n), volume[:, :, start:start + SLAB]


def convert_volume(vol: Volume, size: int, faithful: bool, hu_window,
                   orient: str = "none") -> tuple:
    """One Volume -> (images uint8 (S, size, size) or None, masks uint8 (S, size, size)).

    Works slab by slab (SLAB slices at a time), so the full-size temporaries of the HU
    mapping never exist for a whole volume; `orient` (ORIENT_OPS) turns every slice."""
    n = vol.n_slices
    images = None
    if vol.image is not None:
        images = np.empty((n, size, size), dtype=np.uint8)
        for start, stop, slab in _slabs(vol.image, n):
            if vol.intensity == "8bit":
                img8 = slab.astype(np.uint8, copy=False)
            else:
                img8 = hu_to_uint8(slab, faithful, hu_window)
            img8 = orient_slices(img8, orient)
            for k in range(stop - start):
                images[start + k] = _resize(img8[:, :, k], size, "bilinear")
    masks = np.empty((n, size, size), dtype=np.uint8)
    soft = vol.soft_label if faithful and vol.soft_label is not None else None
    for k in range(n):
        if soft is not None:
            plane, method = soft[:, :, k], "bilinear"
        else:  # binary 0/255; faithful mode resizes it bilinearly (soft edges), as the thesis
            plane, method = vol.label[:, :, k] * np.uint8(255), "bilinear" if faithful else "nearest"
        masks[k] = _resize(orient_slices(plane, orient), size, method)
    return images, masks


# ------------------------------------------------------------------------ preprocess
def _as_inputs(input) -> list[Path]:
    if isinstance(input, (str, os.PathLike)):
        return [Path(input)]
    if isinstance(input, (list, tuple)):
        if not input:
            raise ConfigError("no input given", None, "give at least one input folder")
        return [Path(p) for p in input]
    raise ConfigError(f"input must be a path or a list of paths, got {type(input).__name__}")


def _check_params(size, faithful, hu_window, mask_threshold):
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) \
            or not 8 <= size <= MAX_SIZE:
        raise ConfigError(f"size must be an integer from 8 to {MAX_SIZE}, got {size!r}", None,
                          "use e.g. size=256 (the thesis's size)")
    if hu_window is not None:
        try:
            lo, hi = (float(v) for v in hu_window)
        except (TypeError, ValueError):
            raise ConfigError(f"hu_window must be two numbers (low, high), got {hu_window!r}",
                              None, "e.g. hu_window=(-160, 240)") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ConfigError(f"hu_window low must be below high, got {hu_window!r}", None,
                              "e.g. hu_window=(-160, 240)")
        if faithful:
            raise ConfigError("hu_window cannot be combined with faithful mode (faithful clips "
                              "HU to [0, 255] exactly as the thesis did)", None,
                              "drop hu_window, or drop faithful")
        hu_window = (lo, hi)
    if not 0 <= int(mask_threshold) < 255:
        raise ConfigError(f"mask_threshold must be in 0..254, got {mask_threshold!r}")
    return hu_window


def _params(size, faithful, label_id, labels_only, hu_window, export_png, mask_threshold,
            any_hu, any_8bit, orient="none"):
    mode = "faithful" if faithful else "standard"
    p = {
        "cache_version": CACHE_VERSION,
        "mode": mode,
        "size": int(size),
        "label_id": None if label_id is None else int(label_id),
        "labels_only": bool(labels_only),
        "export_png": bool(export_png) and not labels_only,
        "mask_threshold": int(mask_threshold),
        "orientation": "thesis (MSD data[:, :, k], no rotation; DICOM: both axes reversed, "
                       "then transposed)",
        "aspect": "stretched to size x size",
        "slices_kept": "all",
    }
    # NIfTI and DICOM volumes are brought to this orientation from their headers (RAS+, how
    # MSD stores its volumes); the text above is kept as it was so that caches made before
    # header-based orientation (identical for such data) keep their fingerprint.
    if orient != "none":
        p["orient"] = f"{orient} applied to every slice after the header-based orientation"
    if not labels_only:
        if any_hu:
            p["hu_mapping"] = ("clip HU to [0, 255], truncate to uint8" if faithful else
                               f"linear window {list(hu_window)} HU -> 0..255")
            p["hu_window"] = [0.0, 255.0] if faithful else list(hu_window)
        if any_8bit:
            p["slice_intensity"] = "8-bit slices taken as they are (no window applied)"
        p["image_resize"] = "bilinear (PIL, antialiased when downsampling)"
        p["mask_resize"] = ("bilinear, soft masks kept (mask*255, not re-binarised)" if faithful
                            else "nearest neighbour, binary 0/255")
    return p


def _input_record(src: Source, hashes: bool = True) -> dict:
    files = src.files()
    rec = {"format": src.fmt, "cases": list(src.cases), "intensity": src.intensity,
           "synthetic": bool(src.synthetic)}
    if hashes:
        root = src.path
        table = {}
        for f in files:
            try:
                rel = str(Path(f).relative_to(root))
            except ValueError:
                rel = str(f)
            table[rel] = sha256_file(f)
        rec["sha256"] = table
    return rec


def _summary(manifest: dict, out: Path, reused: bool) -> dict:
    counts = manifest["counts"]
    out_dict = {"cases": counts["cases"], "slices": counts["slices"],
                "positive_slices": counts["positive_slices"], "out": str(out),
                "reused": reused}
    if manifest["params"].get("labels_only"):
        out_dict["per_case"] = manifest["per_case"]
    return out_dict


def preprocess(input, out, fmt: str = "auto", size: int = 256, faithful: bool = False,
               label_id: int | None = None, labels_only: bool = False,
               hu_window: Sequence[float] | None = None, export_png: bool = False,
               mask_threshold: int = DEFAULT_MASK_THRESHOLD, orient: str = "none") -> dict:
    """Convert one input folder (or a list of them, merged) into a slice cache at `out`.

    Returns `{"cases", "slices", "positive_slices", "out", "reused"}` (labels-only mode adds
    `per_case` and writes `inventory.json` instead of arrays). An up-to-date cache at `out`
    (same parameters, same input checksums) is reused; a different one is an error. An
    existing empty folder is filled (its permissions untouched), never deleted. `orient`
    (one of ORIENT_OPS) rotates or flips every slice, for 2D sources that carry no
    orientation of their own.
    """
    inputs = _as_inputs(input)
    hu_window = _check_params(size, faithful, hu_window, mask_threshold)
    if orient not in ORIENT_OPS:
        raise ConfigError(f"unknown orient {orient!r}", None, f"use one of {', '.join(ORIENT_OPS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError("the output path is a file, not a folder", out,
                        "give a new or empty folder as the output")
    sources = [open_source(p, fmt, label_id=label_id, labels_only=labels_only,
                           mask_threshold=mask_threshold) for p in inputs]
    seen: dict[str, Path] = {}
    for src in sources:
        for case in src.cases:
            if case in seen:
                raise DataError(f"same case twice: {case!r} is in {seen[case]} and in "
                                f"{src.path}", src.path,
                                "give each case once (remove one input or rename the case)")
            seen[case] = src.path
    any_8bit = any(s.intensity == "8bit" for s in sources)
    any_hu = any(s.intensity == "hu" for s in sources)
    if hu_window is None and not faithful:
        hu_window = DEFAULT_HU_WINDOW
    if any_8bit and any_hu and not labels_only and not faithful \
            and tuple(hu_window) != (0.0, 255.0):
        raise ConfigError(
            f"cannot mix 8-bit slices (HU clipped to 0..255 by their author) with HU sources "
            f"windowed to {list(hu_window)}: the two would not match", None,
            "use hu_window=(0,255) (CLI: --hu-window 0 255) or faithful mode")

    params = _params(size, faithful, label_id, labels_only, hu_window, export_png,
                     mask_threshold, any_hu, any_8bit, orient)
    records = [_input_record(s) for s in sources]
    fingerprint = config_hash({"params": params,
                               "inputs": [{k: r[k] for k in ("format", "sha256")}
                                          for r in records]}, length=16)

    if out.exists() and any(not _leftover(p) for p in out.iterdir()):
        return _existing_cache(out, fingerprint, labels_only)

    t0 = time.time()
    images, masks, case_ids, slice_idx, source_names, per_case = [], [], [], [], [], []
    flattened: list[str] = []
    total = sum(len(s) for s in sources)
    progress = bar(total=total, desc="preprocess" if not labels_only else "inventory")
    try:
        for src in sources:
            for vol in src.volumes(lazy=True):
                if not labels_only:  # first: a lazy image is read (and checked) here
                    im, mk = convert_volume(vol, int(size), faithful, hu_window, orient)
                    images.append(im)
                    masks.append(mk)
                    case_ids += [vol.case_id] * vol.n_slices
                    slice_idx.append(np.asarray(vol.slice_index, dtype=np.int64))
                    source_names += [vol.source] * vol.n_slices
                row = {"case_id": vol.case_id, "source": vol.source, "slices": vol.n_slices,
                       "positive_slices": vol.positive_slices,
                       "shape": [int(v) for v in vol.label.shape],
                       "spacing": [round(float(v), 4) for v in vol.spacing],
                       "intensity": vol.intensity}
                if "gif_ranges" in vol.extra:
                    row["gif_ranges"] = vol.extra["gif_ranges"]
                flattened += vol.extra.get("colour_flattened", [])
                per_case.append(row)
                progress.update(1)
    finally:
        progress.close()

    counts = {"cases": len(per_case), "slices": sum(r["slices"] for r in per_case),
              "positive_slices": sum(r["positive_slices"] for r in per_case)}
    if label_id is not None and counts["slices"] and not counts["positive_slices"]:
        raise DataError(f"no voxel with label id {label_id} in any label map (0 positive "
                        "slices)", inputs[0] if len(inputs) == 1 else None,
                        "pass --label-id with the spleen's id in these label maps")
    synthetic = any(r["synthetic"] for r in records)
    manifest = {
        "kind": "kdlib slice cache" if not labels_only else "kdlib label inventory",
        "fingerprint": fingerprint,
        "params": params,
        "inputs": [dict(r, path=str(s.path.resolve())) for r, s in zip(records, sources)],
        "counts": counts,
        "per_case": per_case,
        "synthetic": synthetic,
        "slice_index_note": "msd/nifti: NIfTI slice k; dicom: position in patient order "
                            "(0 = lowest z); thesis-layout PNG: the slice number in the name; "
                            "GIF frames spleen_<c>_<first>_<c>_<last>_fNN: frame number NN "
                            "(not the MSD slice; see per_case gif_ranges)",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.time() - t0, 2),
    }
    if flattened:
        manifest["colour_flattened"] = {"files": len(flattened), "examples": flattened[:5],
                                        "how": "converted to grey with PIL's 'L' mode"}
        warnings.warn(f"{len(flattened)} colour or transparent slice file(s) were flattened "
                      f"to grey, e.g. {flattened[0]} (recorded in the cache manifest)",
                      KdlibWarning, stacklevel=2)

    def write(folder: Path) -> None:
        if labels_only:
            atomic_write_json(folder / "inventory.json", {"counts": counts, "per_case": per_case,
                                                          "synthetic": synthetic})
        else:
            n = counts["slices"]
            arr_images = np.concatenate(images) if images else np.zeros((0, size, size), np.uint8)
            arr_masks = np.concatenate(masks) if masks else np.zeros((0, size, size), np.uint8)
            np.save(folder / "images.npy", arr_images)
            np.save(folder / "masks.npy", arr_masks)
            np.save(folder / "case_ids.npy", np.asarray(case_ids, dtype=str).reshape(n))
            np.save(folder / "slice_index.npy",
                    np.concatenate(slice_idx) if slice_idx else np.zeros(0, np.int64))
            np.save(folder / "sources.npy", np.asarray(source_names, dtype=str).reshape(n))
            if export_png:
                _export_png(folder / "png", arr_images, arr_masks, case_ids,
                            np.concatenate(slice_idx) if slice_idx else [])
            manifest["arrays"] = {name: {"sha256": sha256_file(folder / name)}
                                  for name in ARRAY_FILES}
        atomic_write_json(folder / "manifest.json", manifest)

    if not _commit(out, write):
        return _existing_cache(out, fingerprint, labels_only)  # another process finished first
    return _summary(manifest, out, reused=False)


def _existing_cache(out: Path, fingerprint: str, labels_only: bool) -> dict:
    """The summary of the finished cache at `out` if it was made from the same parameters
    and inputs; otherwise an error (caches are never overwritten)."""
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        raise DataError("output folder exists and is not a kdlib cache", out,
                        "choose another output folder (nothing is ever overwritten)")
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("fingerprint") != fingerprint:
        raise ConfigError("a cache made with different parameters or inputs already "
                          "exists here", out,
                          "choose another output folder (caches are never overwritten)")
    needed = ["inventory.json"] if labels_only else list(ARRAY_FILES)
    missing = [n for n in needed if not (out / n).is_file()]
    if missing:
        raise DataError(f"incomplete cache (missing {', '.join(missing)})", out,
                        "delete the folder and run preprocess again")
    if not labels_only:  # reused only if its arrays are the ones it wrote
        check_arrays(out, manifest, {name: np.load(out / name, mmap_mode="r",
                                                   allow_pickle=False)
                                     for name in ARRAY_FILES})
    return _summary(manifest, out, reused=True)


_CHUNK = 1 << 22  # elements scanned at a time when checking values (memory stays flat)


def _values(array: np.ndarray) -> set[int]:
    """The distinct values of a uint8 array, counted in chunks."""
    counts = np.zeros(256, np.int64)
    rows = max(1, _CHUNK // max(1, int(np.prod(array.shape[1:], dtype=np.int64))))
    for start in range(0, len(array), rows):
        counts += np.bincount(np.asarray(array[start:start + rows]).ravel(), minlength=256)
    return set(np.flatnonzero(counts).tolist())


def check_arrays(path: Path, manifest: dict, arrays: dict[str, np.ndarray]) -> None:
    """A cache's arrays are the ones preprocess wrote: the sha256 the manifest records for
    each (caches made before checksums were recorded have none), the dtypes and shapes of
    the layout, and the value sets (standard-mode masks 0/255; faithful masks are soft)."""
    fix = "the cache was changed after it was written: delete the folder and run preprocess again"
    recorded = manifest.get("arrays") if isinstance(manifest.get("arrays"), dict) else {}
    for name in ARRAY_FILES:
        want = (recorded.get(name) or {}).get("sha256") if isinstance(recorded.get(name), dict) \
            else None
        if want and (path / name).is_file() and sha256_file(path / name) != want:
            raise DataError(f"{name} does not match the checksum in manifest.json", path / name, fix)
    images, masks = arrays.get("images.npy"), arrays.get("masks.npy")
    for name, arr in (("images.npy", images), ("masks.npy", masks)):
        if arr is None or arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
            raise DataError(f"{name} must be uint8 (N, S, S), got "
                            f"{None if arr is None else (str(arr.dtype), arr.shape)}", path / name, fix)
    if images.shape != masks.shape:
        raise DataError(f"images.npy {images.shape} and masks.npy {masks.shape} differ", path, fix)
    size = (manifest.get("params") or {}).get("size")
    if isinstance(size, int) and len(images) and images.shape[1] != size:
        raise DataError(f"images.npy holds {images.shape[1]}-pixel slices, the manifest says "
                        f"{size}", path / "images.npy", fix)
    for name, kinds in (("case_ids.npy", "U"), ("sources.npy", "U"), ("slice_index.npy", "iu")):
        arr = arrays.get(name)
        if arr is not None and (arr.dtype.kind not in kinds or arr.ndim != 1):
            raise DataError(f"{name} has dtype {arr.dtype} and {arr.ndim} dimension(s)",
                            path / name, fix)
    if (manifest.get("params") or {}).get("mode") != "faithful":
        odd = sorted(_values(masks) - {0, 255})
        if odd:
            raise DataError(f"masks.npy holds values {odd[:5]} (a standard cache's masks are "
                            "0/255)", path / "masks.npy", fix)


def _commit(out: Path, write) -> bool:
    """Write the cache with `write(folder)` so that `out` holds it complete or not at all.

    A new `out` is built under a temporary name and renamed into place. A user's existing
    empty folder is kept as it is (permissions included): the files are built in a hidden
    folder inside it and moved in, `manifest.json` last (a cache without its manifest is
    never taken as finished), each without replacing anything. Returns False when another
    process created `out` in the meantime (the caller then checks what it holds)."""
    try:
        if not out.is_dir():
            try:
                with atomic_dir(out) as tmp:
                    write(tmp)
            except KdlibError:
                if out.is_dir():
                    return False
                raise
            return True
        tmp = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, suffix=".tmp", dir=out))
        try:
            write(tmp)
            names = sorted(p.name for p in tmp.iterdir() if p.name != "manifest.json")
            for name in [*names, "manifest.json"]:
                move_new(tmp / name, out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and out.is_dir():
            return False
        if isinstance(exc, PermissionError):
            raise DataError("cannot write here (permission denied)", exc.filename or out,
                            "choose an output folder you can write to") from None
        raise DataError(f"cannot write the cache ({exc.strerror or exc})",
                        exc.filename or out, "check the disk space and the output folder") from None


STAGING_PREFIX = ".kdlib-cache."


def _leftover(path: Path) -> bool:
    """A staging folder left inside a user's folder by a killed run (ignored, not a result)."""
    return path.name.startswith(STAGING_PREFIX) and path.name.endswith(".tmp")


def move_new(src: Path, dest: Path) -> None:
    """Move `src` (a file or folder) to `dest`, failing with FileExistsError rather than
    replacing anything that exists at `dest` (a hard link is the atomic no-replace move)."""
    if src.is_dir():
        os.mkdir(dest)  # FileExistsError if it exists
        for child in src.iterdir():
            move_new(child, dest / child.name)
        src.rmdir()
        return
    try:
        os.link(src, dest)  # FileExistsError if it exists
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links: check, then rename
        if dest.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(dest)) from None
        os.replace(src, dest)
        return
    src.unlink()


def _export_png(folder: Path, images, masks, case_ids, slice_idx) -> None:
    """QC export: png/images/<case>_<slice:04d>.png (zero-padded: slice 10 sorts after 9)."""
    from PIL import Image

    width = max(4, len(str(int(max(slice_idx, default=0)))))
    for sub, arr in (("images", images), ("masks", masks)):
        (folder / sub).mkdir(parents=True)
        for k in range(len(arr)):
            name = f"{case_ids[k]}_{int(slice_idx[k]):0{width}d}.png"
            Image.fromarray(arr[k]).save(folder / sub / name)


# ---------------------------------------------------------------------- loading
class SliceCache:
    """A slice cache held in memory: `.images`, `.masks` uint8 (N, S, S), `.case_ids`,
    `.slice_index`, `.sources` (N,), `.manifest` (dict), `.cases` (sorted unique case ids)."""

    def __init__(self, path, images, masks, case_ids, slice_index, sources, manifest):
        self.path = Path(path)
        self.images, self.masks = images, masks
        self.case_ids, self.slice_index, self.sources = case_ids, slice_index, sources
        self.manifest = manifest
        self.cases = sorted(set(case_ids.tolist()))

    @classmethod
    def load(cls, path: str | Path) -> "SliceCache":
        path = Path(path)
        if not (path / "manifest.json").is_file():
            raise DataError("not a slice cache (no manifest.json)", path,
                            "run `python -m kdlib preprocess --input ... --out DIR` first")
        manifest = read_json(path / "manifest.json")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("params", {}), dict):
            raise DataError("manifest.json is not a cache manifest", path / "manifest.json",
                            "delete the folder and run preprocess again")
        if manifest.get("params", {}).get("labels_only"):
            raise DataError("this is a labels-only inventory, not a slice cache", path,
                            "run preprocess without labels_only to build a cache")
        arrays = {}
        for name in ARRAY_FILES:
            f = path / name
            if not f.is_file():
                if name == "sources.npy":
                    continue
                raise DataError(f"incomplete cache (missing {name})", path,
                                "delete the folder and run preprocess again")
            try:
                arrays[name] = np.load(f, allow_pickle=False)
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"cannot read {name} ({exc})", f,
                                "delete the cache folder and run preprocess again") from None
        check_arrays(path, manifest, arrays)
        n = len(arrays["case_ids.npy"])
        sources = arrays.get("sources.npy", np.asarray(["?"] * n))
        if not (len(arrays["images.npy"]) == len(arrays["masks.npy"]) == n
                == len(arrays["slice_index.npy"]) == len(sources)):
            raise DataError("cache arrays have different lengths", path,
                            "delete the folder and run preprocess again")
        return cls(path, arrays["images.npy"], arrays["masks.npy"], arrays["case_ids.npy"],
                   arrays["slice_index.npy"], sources, manifest)

    def __len__(self) -> int:
        return int(len(self.case_ids))

    def __repr__(self) -> str:
        return (f"SliceCache({str(self.path)!r}, slices={len(self)}, cases={len(self.cases)}, "
                f"size={self.size}, synthetic={self.synthetic})")

    @property
    def size(self) -> int:
        return int(self.images.shape[-1]) if self.images.ndim == 3 else 0

    @property
    def synthetic(self) -> bool:
        return bool(self.manifest.get("synthetic", False))

    @property
    def fingerprint(self) -> str:
        return str(self.manifest.get("fingerprint", ""))

    @property
    def positive(self) -> np.ndarray:
        """Boolean (N,): slices whose mask has spleen (mask >= 128 somewhere)."""
        return (self.masks >= 128).any(axis=(1, 2))

    def indices_of(self, cases: Iterable[str]) -> np.ndarray:
        """Sorted cache indices of all slices of the given cases."""
        return np.flatnonzero(np.isin(self.case_ids, list(cases)))


def _load_cache(cache) -> SliceCache:
    return cache if isinstance(cache, SliceCache) else SliceCache.load(cache)


# ---------------------------------------------------------------------- torch dataset
_DATASET_CLASS = None


def _make_dataset_class():
    global _DATASET_CLASS
    if _DATASET_CLASS is not None:
        return _DATASET_CLASS
    import torch
    from torch.utils.data import Dataset

    class SliceDataset(Dataset):
        """Slices of a SliceCache served straight from memory (no decoding per epoch).

        Item i -> (image float32 (3, S, S) in [0, 1], 3 identical channels; mask float32
        (1, S, S) = masks/255; the cache index (int) of the slice).
        """

        def __init__(self, cache, indices=None):
            self.cache = _load_cache(cache)
            n = len(self.cache)
            idx = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
            if idx.ndim != 1:
                raise ConfigError("indices must be a 1D list of slice indices")
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise ConfigError(f"slice index out of range for a cache of {n} slices", None,
                                  "the split was made for another cache; make a new split")
            self.indices = idx

        def __len__(self):
            return int(self.indices.size)

        def __getitem__(self, i):
            k = int(self.indices[i])
            img = torch.from_numpy(self.cache.images[k]).to(torch.float32).div_(255.0)
            mask = torch.from_numpy(self.cache.masks[k]).to(torch.float32).div_(255.0)
            return img.unsqueeze(0).repeat(3, 1, 1), mask.unsqueeze(0), k

        def __getitems__(self, positions):
            """Batched fetch used by DataLoader: one vectorised uint8 -> float conversion
            per batch instead of one per slice. The 3 channels are an `expand` view here;
            the DataLoader's collate turns them into an ordinary contiguous batch."""
            ks = self.indices[np.asarray(positions, dtype=np.int64)]
            imgs = torch.div(torch.from_numpy(self.cache.images[ks]), 255.0)  # float32
            masks = torch.div(torch.from_numpy(self.cache.masks[ks]), 255.0)
            return [(imgs[j].unsqueeze(0).expand(3, -1, -1), masks[j].unsqueeze(0), int(k))
                    for j, k in enumerate(ks)]

    SliceDataset.__module__ = __name__
    SliceDataset.__qualname__ = "SliceDataset"  # picklable (spawned DataLoader workers)
    _DATASET_CLASS = SliceDataset
    return SliceDataset


def __getattr__(name):  # PEP 562: build the torch class only when it is asked for
    if name == "SliceDataset":
        return _make_dataset_class()
    raise AttributeError(name)
