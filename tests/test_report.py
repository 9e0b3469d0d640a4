"""`kdlib report`: every table and claim regenerated from run records alone, byte for byte."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from kdlib import pipeline, report
from kdlib.cli import main

try:
    from test_tables import CASES, fake_study
except ImportError:  # tests collected as a package
    from tests.test_tables import CASES, fake_study


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A profile's output folder (runs + prepared.json + a cache manifest), published."""
    out = tmp_path_factory.mktemp("results")
    fake_study(out / "runs", effects={"KD(T1,S1) B->B+PMD": 0.05}, seeds=(0, 1), folds=2)
    cache = out / "cache-corrected-64"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"params": {
        "size": 64, "hu_window": [-160.0, 240.0], "hu_mapping": "linear window [-160.0, 240.0] HU -> 0..255"}}))
    (out / "prepared.json").write_text(json.dumps({"corrected": {
        "cache": str(cache), "splits": ["a", "b"], "summary": {"cases": 8, "slices": 200}, "synthetic": True},
        "size": 64}))
    first = next((out / "runs").iterdir())
    (first / "checkpoints").mkdir()
    (first / "checkpoints" / "best.pt").write_bytes(b"weights")
    publish = tmp_path_factory.mktemp("figures")
    pipeline.publish_runs(out, publish)
    return out, publish


def test_publish_copies_small_records_only(published):
    out, publish = published
    runs = sorted(p for p in (publish / "runs").iterdir() if p.is_dir())
    assert len(runs) == len(list((out / "runs").iterdir()))
    assert {f.name for r in runs for f in r.iterdir()} == {"config.json", "history.csv", "metrics.json"}
    facts = json.loads((publish / "runs" / "DATA.json").read_text())["corrected"]
    assert facts["hu_window"] == [-160.0, 240.0] and facts["size"] == 64 and facts["cases"] == 8
    before = _digest(publish)
    pipeline.publish_runs(out, publish)
    assert _digest(publish) == before


def test_report_is_deterministic_and_needs_only_records(published, tmp_path):
    _, publish = published
    # the records moved somewhere else: nothing but them is read (teachers are found by name)
    records = tmp_path / "elsewhere" / "runs"
    shutil.copytree(publish / "runs", records)
    for config in records.glob("*/config.json"):  # as on another machine: recorded paths are gone
        data = json.loads(config.read_text())
        if data.get("teacher_run"):
            data["teacher_run"] = f"/nonexistent/results/runs/{Path(data['teacher_run']).name}"
            config.write_text(json.dumps(data))
    written = report.report("smoke", runs_dir=records, publish_dir=tmp_path / "a")
    assert {"table4_2", "table4_11", "claims_corrected", "anova_corrected", "paired_corrected",
            "configurations_corrected", "SUMMARY"} <= set(written)
    first = _digest(tmp_path / "a")
    report.report("smoke", runs_dir=records, publish_dir=tmp_path / "a")
    assert _digest(tmp_path / "a") == first  # rerunning changes no byte
    report.report("smoke", runs_dir=publish / "runs", publish_dir=tmp_path / "b")
    assert _digest(tmp_path / "b") == first  # same records elsewhere: same bytes


def test_summary_is_derived_from_the_run(published, tmp_path):
    _, publish = published
    report.report("smoke", runs_dir=publish / "runs", publish_dir=tmp_path)
    text = (tmp_path / "SUMMARY.md").read_text()
    assert f"{len(CASES)} test patients of 8 in the cache (200 slices) at 64x64" in text
    assert "HU window [-160, 240]" in text and "2 fold(s) x 2 seed(s)" in text
    assert "students trained 3 epochs" in text and "6 patients" not in text
    assert "S1 control: KD recipe, no teacher (ours)" in text
    assert "KD-off control" in text and "**inconclusive**" in text
    claims_md = (tmp_path / "tables" / "claims_corrected.md").read_text()
    assert "KD(T1,S1) B->B+PMD − S1 control (KD recipe, no teacher)" in claims_md


def test_report_cli(published, tmp_path, capsys):
    _, publish = published
    assert main(["report", "--profile", "smoke", "--runs", str(publish / "runs"), "--out", str(tmp_path)]) == 0
    assert "SUMMARY" in json.loads(capsys.readouterr().out)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--profile", "smoke", "--runs", str(empty), "--out", str(tmp_path)]) == 2
    assert "no run records" in capsys.readouterr().err


def test_plateau_sentence_counts_runs_still_improving_per_configuration():
    def run(name, stopped, best, patience=10):
        return {"config": {"name": name, "patience": patience},
                "metrics": {"stopped": stopped, "epochs_run": 50, "best_epoch": best}}

    runs = [run("S1 baseline", "cap", 50), run("S1 baseline", "cap", 30), run("S1 baseline", "early", 20),
            run("T1", "cap", 45), run("T1", "early", 12)]
    text = pipeline.plateau_sentence(runs)
    assert "S1 baseline: 1 of 3" in text and "T1: 1 of 2" in text
    assert pipeline.plateau_sentence([run("T1", "early", 12)]).startswith("Every run ended on a plateau")
    assert pipeline.plateau_sentence([run("T1", "cap", 50, patience=0)]) == ""
