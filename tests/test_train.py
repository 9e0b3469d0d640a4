"""Training engine: determinism, resume, skip, the teacher computed once, predict/evaluate."""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from kdlib import losses, train
from kdlib.data import SliceCache, make_split, preprocess, save_split, write_phantom_msd
from kdlib.errors import KdlibError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = write_phantom_msd(root / "phantom", cases=4, seed=3, size=32, slices=12)
    preprocess(data, root / "cache", size=32)
    cache = SliceCache.load(root / "cache")
    save_split(make_split(cache, mode="patient", seed=0), root / "split.json")
    return root


def _baseline(tiny, **kw):
    cfg = train.baseline_config("S1", tiny / "cache", tiny / "split.json", epochs=3, batch_size=8)
    return replace(cfg, **kw)


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_deterministic_on_cpu(tiny, tmp_path):
    a = train.train(_baseline(tiny), tmp_path / "a", progress=False)
    b = train.train(_baseline(tiny), tmp_path / "b", progress=False)
    assert a.name == b.name  # same configuration, same folder name
    ma, mb = _metrics(a), _metrics(b)
    assert ma["pooled"] == mb["pooled"] and ma["loss"] == mb["loss"]
    c = train.train(_baseline(tiny, seed=7), tmp_path / "a", progress=False)
    assert c != a and _metrics(c)["loss"] != ma["loss"]


def test_interrupted_run_resumes_to_same_result(tiny, tmp_path):
    full = train.train(_baseline(tiny), tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train.train(_baseline(tiny), tmp_path / "cut", stop_after_epoch=1, progress=False)
    cut_dir = _baseline(tiny).run_dir(tmp_path / "cut")
    assert not (cut_dir / "metrics.json").exists() and (cut_dir / "checkpoints" / "last.pt").exists()
    resumed = train.train(_baseline(tiny), tmp_path / "cut", progress=False)
    assert _metrics(resumed)["pooled"] == _metrics(full)["pooled"]
    assert _metrics(resumed)["loss"] == pytest.approx(_metrics(full)["loss"], abs=0)
    assert len(train.load_history(resumed)) == 3


def test_finished_run_is_skipped_and_never_overwritten(tiny, tmp_path):
    run = train.train(_baseline(tiny), tmp_path, progress=False)
    stamp = (run / "metrics.json").stat().st_mtime_ns
    assert train.train(_baseline(tiny), tmp_path, progress=False) == run
    assert (run / "metrics.json").stat().st_mtime_ns == stamp
    # a folder holding a different configuration is refused
    other = _baseline(tiny, epochs=2)
    target = other.run_dir(tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text(json.dumps(_baseline(tiny).to_dict()))
    with pytest.raises(KdlibError, match="different configuration"):
        train.train(other, tmp_path, progress=False)


def test_kd_uses_teacher_outputs_computed_once(tiny, tmp_path, monkeypatch):
    teacher = train.train(train.teacher_config("unet", tiny / "cache", tiny / "split.json", epochs=1),
                          tmp_path, progress=False)
    calls = []
    real_load = train.load_model
    monkeypatch.setattr(train, "load_model", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    train._TEACHER_OUTPUTS.clear()
    for scales in (("B",), ("E", "D")):
        kd = losses.kd_config_for("T1", "S1", scales=scales, pmd="binary")
        cfg = train.kd_run_config(teacher, "S1", kd, tiny / "cache", tiny / "split.json", epochs=2)
        run = train.train(cfg, tmp_path, progress=False)
        history = train.load_history(run)
        assert {f"train_{s}" for s in scales} <= set(history.columns)
        assert "train_pmd" in history.columns and history["train_pmd"].abs().sum() > 0
    teacher_loads = [c for c in calls if str(c) == str(teacher)]
    # one teacher pass for both configurations: never one per step, epoch or configuration
    assert len(teacher_loads) == 1


def test_predict_and_evaluate_cli(tiny, tmp_path):
    run = train.train(_baseline(tiny), tmp_path / "runs", progress=False)
    out = tmp_path / "pred"
    cmd = [sys.executable, "-m", "kdlib", "predict", "--model", str(run),
           "--input", str(tiny / "phantom"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["inputs"] == 4 and summary["slices"] == 48 and summary["slices_per_second"] > 0
    import nibabel as nib

    source = nib.load(str(sorted((tiny / "phantom" / "imagesTr").glob("*.nii.gz"))[0]))
    pred = nib.load(str(out / sorted((tiny / "phantom" / "imagesTr").glob("*.nii.gz"))[0].name))
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)
    done = subprocess.run([sys.executable, "-m", "kdlib", "evaluate", "--pred", str(out),
                           "--truth", str(tiny / "phantom")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) >= {"pooled", "per_image", "per_volume"}
    assert 0.0 <= report["pooled"]["dice"] <= 1.0


def test_predict_rejects_unfinished_run(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kdlib", "predict", "--model", str(tmp_path),
                           "--input", str(tmp_path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "metrics.json" in done.stderr


def _cli(*args):
    done = subprocess.run([sys.executable, "-m", "kdlib", *map(str, args)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_predict_and_evaluate_on_real_slices_and_dicom(tiny, tmp_path):
    """A trained model segments the real thesis slices (PNG masks at each input's own size)
    and a real 3D-IRCADb DICOM series (NIfTI mask), and `evaluate` scores both."""
    from conftest import require_shared

    slices, dicom = require_shared("thesis_slices"), require_shared("ircadb/3Dircadb1.1")
    run = train.train(_baseline(tiny), tmp_path / "runs", progress=False)
    summary = json.loads(_cli("predict", "--model", run, "--input", slices, "--out", tmp_path / "png").splitlines()[-1])
    assert summary["inputs"] == 85 and summary["slices"] == 85
    from PIL import Image

    first = sorted((tmp_path / "png").glob("*.png"))[0]
    assert Image.open(first).size == Image.open(slices / "images" / first.name).size
    report = json.loads(_cli("evaluate", "--pred", tmp_path / "png", "--truth", slices))
    assert len(report["per_volume"]["cases"]) == 4  # the four MSD cases of the thesis slices
    summary = json.loads(_cli("predict", "--model", run, "--input", dicom, "--format", "dicom",
                              "--out", tmp_path / "nii").splitlines()[-1])
    assert summary["slices"] == 129
    report = json.loads(_cli("evaluate", "--pred", tmp_path / "nii", "--truth", dicom.parent))
    assert list(report["per_volume"]["cases"]) == ["3Dircadb1.1"]
