"""Issue 18: untrusted files cannot exhaust the machine or corrupt a study.

Every hostile input here is a few KB written in tmp_path; each must be refused with one line
(exit 2) naming the file and the fix, before anything large is allocated."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_error, run_cli, write_nifti

pytestmark = pytest.mark.usefixtures("no_progress_bars")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from kdlib import train
    from kdlib.data import SliceCache, make_split, preprocess, save_split, write_phantom_msd

    root = tmp_path_factory.mktemp("run")
    data = write_phantom_msd(root / "phantom", cases=3, seed=0, size=32, slices=8)
    preprocess(data, root / "cache", size=32)
    save_split(make_split(SliceCache.load(root / "cache"), mode="patient", seed=0),
               root / "split.json")
    cfg = train.baseline_config("S1", root / "cache", root / "split.json", epochs=1, batch_size=8)
    return train.train(cfg, root / "runs", progress=False)


def _copy_run(run, tmp_path) -> Path:
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy


def _ct(shape=(24, 20, 6), seed=0):
    return np.random.default_rng(seed).normal(0, 40, size=shape).astype(np.int16)


def _no_staging(folder: Path) -> bool:
    return not [p for p in folder.rglob(".kdlib-predict.*")]


# ------------------------------------------------------------- 1. a model's preprocessing.json
@pytest.mark.parametrize("change,words", [
    ({"size": 100000}, ["size"]), ({"size": 0}, ["size"]), ({"size": "256"}, ["size"]),
    ({"hu_window": [float("nan"), 240.0]}, ["hu_window"]),
    ({"hu_window": [240.0, -160.0]}, ["hu_window"]), ({"mode": "fancy"}, ["mode"])])
def test_model_preprocessing_json_is_checked(run, tmp_path, capsys, change, words):
    from kdlib.io import read_json
    from kdlib.train import RunConfig

    copy = _copy_run(run, tmp_path)
    cfg = RunConfig.from_dict(read_json(copy / "config.json"))
    manifest = read_json(Path(cfg.cache) / "manifest.json")
    manifest["params"].update(change)
    (copy / "preprocessing.json").write_text(json.dumps(manifest))
    write_nifti(tmp_path / "in" / "a.nii.gz", _ct())
    code, _, err = run_cli(capsys, "predict", "--model", copy, "--input", tmp_path / "in",
                           "--out", tmp_path / "pred")
    assert_one_error(code, err, "preprocessing.json", *words)
    assert not (tmp_path / "pred").exists() and _no_staging(tmp_path)
