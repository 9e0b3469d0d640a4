"""The students published with the real-mini results segment new scans through `predict`, and
score what their committed metrics say (skipped before a real-mini run is published, or where
../shared/data is absent)."""
from __future__ import annotations

import json

import pytest

from conftest import REPO, require_shared

MODELS = REPO / "figures" / "real-mini" / "models"


def _published() -> list:
    return sorted(p for p in MODELS.glob("*") if (p / "metrics.json").exists()) if MODELS.is_dir() else []


def _thesis_cases(model) -> dict[str, float]:
    """The model's committed per-patient test Dice on the thesis's own MSD slices."""
    cases = json.loads((model / "metrics.json").read_text())["per_volume"]["cases"]
    return {case: scores["dice"] for case, scores in cases.items() if case.startswith("spleen_")}


@pytest.mark.skipif(not _published(), reason="no published real-mini students in figures/real-mini/models yet")
def test_published_students_load_with_weights_only_and_carry_their_preprocessing():
    from kdlib.train import load_model

    for model in _published():
        assert (model / "preprocessing.json").exists() and (model / "checkpoints" / "best.pt").exists()
        assert not (model / "checkpoints" / "last.pt").exists()
        load_model(model, "cpu")  # torch.load(weights_only=True) inside


@pytest.mark.skipif(not _published(), reason="no published real-mini students in figures/real-mini/models yet")
def test_a_published_student_segments_the_real_thesis_slices_as_its_metrics_say(tmp_path):
    from kdlib.predict import evaluate, predict

    slices = require_shared("thesis_slices")
    candidates = [m for m in _published() if _thesis_cases(m)]
    assert candidates, "every fold tests at least one of the thesis's MSD patients"
    model = candidates[0]
    predict(model, slices, tmp_path / "masks")
    scores = evaluate(tmp_path / "masks", slices)["per_volume"]["cases"]
    for case, committed in _thesis_cases(model).items():
        assert scores[case]["dice"] == pytest.approx(committed, abs=0.02), case
