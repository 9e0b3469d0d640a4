"""Checkpoints: read with weights_only=True (a pickle payload never runs), clear errors for
broken files, fp16 teacher weights that leave the metrics unchanged."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlib import train
from kdlib.data import SliceCache, load_split
from kdlib.errors import KdlibError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher(tiny, tmp_path_factory):
    """A finished teacher (fp16 weights, the teachers' default) with its last state kept."""
    cfg = train.teacher_config("unet", tiny / "cache", tiny / "split.json", epochs=2, keep_last=True)
    return train.train(cfg, tmp_path_factory.mktemp("runs"), progress=False)


@pytest.fixture
def run_copy(teacher, tmp_path):
    """A copy of the finished run that a test may damage."""
    import shutil

    return Path(shutil.copytree(teacher, tmp_path / teacher.name))


class Payload:
    """Unpickling this runs code: creates the file named by MARKER."""

    def __reduce__(self):
        return (open, (os.environ["KDLIB_TEST_MARKER"], "w"))


def test_no_weights_only_false_anywhere():
    offenders = [str(p) for p in (REPO / "kdlib").rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_pickle_payload_is_not_executed(run_copy, tiny, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("KDLIB_TEST_MARKER", str(marker))
    torch.save({"model": Payload(), "epoch": 0}, run_copy / "checkpoints" / "best.pt")
    with pytest.raises(KdlibError, match="cannot load checkpoint") as info:
        train.load_model(run_copy, torch.device("cpu"))
    assert "best.pt" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()
    # the same through the CLI: exit 2, one line, no traceback, nothing executed
    done = subprocess.run([sys.executable, "-m", "kdlib", "predict", "--model", str(run_copy),
                           "--input", str(tiny / "phantom"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, KDLIB_TEST_MARKER=str(marker)))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "best.pt" in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize("damage,match", [
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "cannot load checkpoint"),
    (lambda p: p.write_bytes(b""), "cannot load checkpoint"),
    (lambda p: p.unlink(), "no checkpoint"),
    (lambda p: torch.save({"epoch": 1}, p), "not a kdlib checkpoint"),
    (lambda p: torch.save({"model": train.models.build("S1").state_dict()}, p), "does not fit"),
])
def test_broken_best_checkpoint_is_a_one_line_error(run_copy, damage, match):
    damage(run_copy / "checkpoints" / "best.pt")
    with pytest.raises(KdlibError, match=match) as info:
        train.load_model(run_copy, torch.device("cpu"))
    assert "\n" not in str(info.value)


def test_truncated_last_checkpoint_is_a_one_line_error(tiny, tmp_path):
    cfg = train.baseline_config("S1", tiny / "cache", tiny / "split.json", epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, tmp_path, stop_after_epoch=1, progress=False)
    last = cfg.run_dir(tmp_path) / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(KdlibError, match="last.pt: cannot load checkpoint"):
        train.train(cfg, tmp_path, progress=False)


def test_fp16_weights_leave_the_metrics_unchanged(teacher, tiny):
    """The teacher's best.pt holds fp16 weights and its test metrics are those of the stored
    weights; the same weights in fp32 and in fp16 give the same masks and the same Dice."""
    state = torch.load(teacher / "checkpoints" / "best.pt", weights_only=True)["model"]
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    dev = torch.device("cpu")
    cfg = train.RunConfig.from_dict(json.loads((teacher / "config.json").read_text()))
    cache = SliceCache.load(tiny / "cache")
    test_idx = load_split(tiny / "split.json")["test"]
    data = train.SliceTensors(cache, test_idx, dev)
    stored = train.evaluate_model(train.load_model(teacher, dev), data, cfg.threshold, dev,
                                  precision=cfg.precision)
    assert json.loads((teacher / "metrics.json").read_text())["pooled"] == stored["pooled"]
    # fp32 weights (the last state) against the same weights rounded as best.pt stores them
    weights = torch.load(teacher / "checkpoints" / "last.pt", weights_only=True)["model"]
    fp32, fp16 = train.models.build("unet").eval(), train.models.build("unet").eval()
    fp32.load_state_dict(weights)
    fp16.load_state_dict(train._stored_weights(weights, "fp16"))
    p32 = train.infer(teacher, cache.images[test_idx], model=fp32)["prob"]
    p16 = train.infer(teacher, cache.images[test_idx], model=fp16)["prob"]
    assert np.abs(p32 - p16).max() < 0.01
    # an untrained-looking teacher predicts few positives at 0.5: compare masks at a cut
    # that makes half the pixels positive, so the comparison has something to compare
    cut = float(np.median(p32))
    m32, m16 = p32 > cut, p16 > cut
    assert (m32 == m16).mean() > 0.99
    truth = cache.masks[test_idx] > 127
    dice = [2 * (m & truth).sum() / (m.sum() + truth.sum()) for m in (m32, m16)]
    assert dice[0] > 0 and dice[1] == pytest.approx(dice[0], abs=0.01)
