"""Data layer: readers, phantom, slice cache, splits, download and QC.

Public API (see DESIGN.md for the contracts):
    preprocess, SliceCache, SliceDataset, make_split, make_folds, save_split, load_split, split_fingerprint,
    write_phantom_msd, download_msd, read_msd, read_slices, read_dicom, read_nifti_pair,
    read_any, load_dicom_series, open_source, detect_format, Volume.

`SliceDataset` (a torch Dataset) is built on first use so that importing `kdlib.data` (and
the CLI's `preprocess`) does not import torch.
"""
from .cache import DEFAULT_HU_WINDOW, SliceCache, hu_to_uint8, preprocess
from .download import download_msd
from .phantom import write_phantom_msd
from .readers import (Volume, detect_format, load_dicom_series, open_source, read_any,
                      read_dicom, read_msd, read_nifti_pair, read_slices)
from .splits import load_split, make_folds, make_split, save_split, split_fingerprint

__all__ = [
    "DEFAULT_HU_WINDOW", "SliceCache", "SliceDataset", "Volume", "detect_format",
    "download_msd", "hu_to_uint8", "load_dicom_series", "load_split", "make_folds", "make_split", "open_source",
    "preprocess", "read_any", "read_dicom", "read_msd", "read_nifti_pair", "read_slices",
    "save_split", "split_fingerprint", "write_phantom_msd",
]


def __getattr__(name):
    if name == "SliceDataset":
        from .cache import _make_dataset_class

        return _make_dataset_class()
    raise AttributeError(f"module 'kdlib.data' has no attribute {name!r}")
