"""`kdlib report`: every table and claim regenerated from run records alone, byte for byte."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from kdlib import pipeline, report
from kdlib.cli import main

from conftest import REPO, published_real_mini

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


def test_published_records_name_no_folder_of_this_machine(published):
    """config.json is published with its cache, split and teacher relative to the results
    folder: the teacher's path resolves inside the publication itself, and the identity every
    table joins runs by is unchanged."""
    from kdlib.train import load_runs, record_identity

    out, publish = published
    teachers = 0
    for config in (publish / "runs").glob("*/config.json"):
        text, data = config.read_text(), json.loads(config.read_text())
        assert str(out) not in text
        assert not any(Path(str(data[key])).is_absolute() for key in pipeline.RECORD_PATHS if data.get(key))
        if data.get("teacher_run"):
            teachers += 1
            assert data["teacher_run"].startswith("runs/") and (publish / data["teacher_run"] / "config.json").is_file()
    assert teachers > 0
    ours = sorted(record_identity(r["config"]) for r in load_runs(out / "runs"))
    assert sorted(record_identity(r["config"]) for r in load_runs(publish / "runs")) == ours


@pytest.mark.parametrize("value, expected", [
    ("{out}/cache-corrected-64", "cache-corrected-64"),
    ("{out}/splits/corrected-64-fold1.json", "splits/corrected-64-fold1.json"),
    ("{out}/runs/t1-s42-0f2138b8a177", "runs/t1-s42-0f2138b8a177"),
    ("/elsewhere/other/cache-64", "cache-64"),  # outside the results folder: its name only
    ("cache", "cache"),  # relative already: as recorded
])
def test_portable_config_paths(tmp_path, value, expected):
    config = {"cache": value.format(out=tmp_path), "name": "S1 baseline", "seed": 42}
    assert pipeline.portable_config(config, tmp_path) == {**config, "cache": expected}
    manifest = {"params": {"size": 64}, "inputs": [{"path": value.format(out=tmp_path), "format": "dicom"}]}
    assert pipeline.portable_manifest(manifest)["inputs"] == [{"path": Path(expected).name, "format": "dicom"}]


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
    # the figures that need records only, the training curves of fold 0 among them
    assert {"fig4_1_teacher_curves_corrected", "fig4_2_student_curves_corrected",
            "per_patient_dice_corrected", "validation_dice_corrected"} <= set(written)
    assert any(name.startswith("forest_dice_corrected") for name in written)
    first = _digest(tmp_path / "a")
    report.report("smoke", runs_dir=publish / "runs", publish_dir=tmp_path / "b")
    assert _digest(tmp_path / "b") == first  # same records elsewhere: same bytes, figures included
    report.report("smoke", runs_dir=records, publish_dir=tmp_path / "a", draw=False)
    assert _digest(tmp_path / "a") == first  # rerunning over its own output changes no byte


def test_summary_is_derived_from_the_run(published, tmp_path):
    _, publish = published
    report.report("smoke", runs_dir=publish / "runs", publish_dir=tmp_path, draw=False)
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
    assert main(["report", "--profile", "smoke", "--runs", str(publish / "runs"), "--out", str(tmp_path),
                 "--no-figures"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert "SUMMARY" in written and not any(Path(p).suffix == ".png" for p in written.values())
    assert not (tmp_path / "figures").exists() or not list((tmp_path / "figures").glob("*.png"))
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


def test_validation_curves_come_from_the_records_of_the_headline_configurations(published, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from kdlib import claims, figures
    from kdlib.train import load_runs

    _, publish = published
    records = tmp_path / "runs"
    shutil.copytree(publish / "runs", records)
    # one S1 baseline hit its cap still improving (kept epoch within patience of the end)
    target = next(p for p in sorted(records.iterdir())
                  if p.is_dir() and json.loads((p / "config.json").read_text())["name"] == "S1 baseline")
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "patience": 5}))
    metrics = json.loads((target / "metrics.json").read_text())
    epochs = len(pd.read_csv(target / "history.csv"))
    metrics.update(stopped="cap", epochs_run=epochs, best_epoch=epochs - 1)
    (target / "metrics.json").write_text(json.dumps(metrics))
    (next(p for p in records.iterdir() if p.name.startswith("s2-baseline")) / "history.csv").unlink()

    runs = load_runs(records)
    points = claims.curve_points(runs)
    kd_labels = {lab for lab in points["label"] if lab.startswith("KD(")}
    assert kd_labels == {"KD(T1,S1) B->B+PMD", "KD(T1,S2) B->B+PMD", "KD(T2,S1) E->E+PMD", "KD(T2,S2) B->B+PMD"}
    assert {"S1 baseline", "S1 control (KD recipe, no teacher)"} <= set(points["label"])
    per_run = points.groupby(["label", "fold", "seed"])
    assert (per_run["kept"].sum() == 1).all()  # exactly one kept epoch per run
    assert per_run.ngroups == sum(1 for _ in per_run)
    mine = points[(points["fold"] == Path(config["split"]).stem) & (points["seed"] == config["seed"])
                  & (points["label"] == "S1 baseline")]
    assert mine["val_dice"].tolist() == pytest.approx(pd.read_csv(target / "history.csv")["val_dice"].tolist())
    assert mine.loc[mine["kept"], "epoch"].tolist() == [epochs - 1]
    plateau = points.drop_duplicates(["label", "fold", "seed"]).set_index(["label", "fold", "seed"])["plateau"]
    assert (plateau == False).sum() == 1  # noqa: E712 - the one run made to hit its cap
    assert plateau.isna().sum() == len(plateau) - 1  # the others had no stopping rule
    s2 = points[points["label"] == "S2 baseline"].drop_duplicates(["fold", "seed"])
    assert len(s2) == 3  # 2 folds x 2 seeds, less the run whose history.csv is gone

    fig = figures.validation_curves(points)
    assert sum(ax.get_visible() for ax in fig.axes) == points["label"].nunique()
    written = report.report("smoke", runs_dir=records, publish_dir=tmp_path / "out")
    assert written["validation_dice_corrected"].exists()
    with pytest.raises(Exception, match="no validation curves"):
        figures.validation_curves(points.iloc[0:0])


def test_selection_table_hand_values():
    import pandas as pd

    from kdlib import claims

    def run(fold, seed, dice, kept, test, last):
        return [{"label": "A", "setting": "corrected", "fold": fold, "test_patients": "p", "seed": seed,
                 "epoch": e + 1, "val_dice": d, "kept": e + 1 == kept, "plateau": True,
                 "test_dice": test, "test_dice_last": last} for e, d in enumerate(dice)]

    points = pd.DataFrame(run("f0", 1, [0.2, 0.8, 0.5], 3, 0.6, 0.7) + run("f1", 1, [0.4, 0.6], 2, 0.5, 0.5))
    row = claims.selection_table(points).iloc[0]
    assert row["runs"] == 2
    assert row["val Dice, kept"] == pytest.approx(0.55) and row["val Dice, best epoch"] == pytest.approx(0.7)
    assert row["gap"] == pytest.approx(0.15) and row["largest gap"] == pytest.approx(0.3)
    assert row["test Dice, kept"] == pytest.approx(0.55) and row["test Dice, last epoch"] == pytest.approx(0.6)
    assert claims.selection_table(points.iloc[0:0]).empty


@pytest.mark.parametrize("rules, text", [
    ([None, "loss"], "validation loss"),  # records made before select_on existed used the loss
    (["dice", "dice"], "validation Dice"),
    (["loss", "dice"], "validation loss or Dice (see each run's config.json)"),
])
def test_summary_names_the_rule_that_kept_the_checkpoints(rules, text):
    runs = [{"config": {} if rule is None else {"select_on": rule}} for rule in rules]
    assert pipeline._kept_rule(runs) == text


def test_readme_reads_the_selection_table_as_its_test_numbers_do():
    """The README once said the kept checkpoint "handicaps the distilled students" from
    validation maxima alone. On test, the published selection table shows the distilled
    students' kept checkpoints and last epochs scoring alike, with the sign changing between
    pairs; the README must say what the test numbers say."""
    import pandas as pd

    # the table the README's prose cites (b818353's until issue 21's run regenerates the prose),
    # not merely the newest publication: the sentence must match the numbers it points to
    cited = re.search(r"\((figures/[^)]*/tables/selection_corrected)\.md\)", (REPO / "README.md").read_text())
    table = (REPO / f"{cited.group(1)}.csv") if cited else published_real_mini() / "tables" / "selection_corrected.csv"
    if not table.exists():
        pytest.skip("no published real-mini selection table")
    df = pd.read_csv(table)
    distilled = df[df["configuration"].str.startswith("KD(")]
    gaps = distilled["test Dice, kept"] - distilled["test Dice, last epoch"]
    assert abs(gaps.mean()) < 0.02 and (gaps > 0).any() and (gaps < 0).any()
    readme = " ".join((REPO / "README.md").read_text().split())
    assert "handicaps the distilled students" not in readme
    assert "score alike on test" in readme


def test_report_out_without_runs_reads_the_profiles_published_records(published, tmp_path, capsys,
                                                                      monkeypatch):
    """Issue 19: `report --out DIR` alone reads `<profile publish_dir>/runs`, not DIR/runs."""
    from kdlib import runner

    _, publish = published
    monkeypatch.setattr(runner, "load_profile", lambda name: {"common": {"publish_dir": str(publish)}})
    out = tmp_path / "elsewhere"
    assert main(["report", "--profile", "smoke", "--out", str(out), "--no-figures"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert Path(written["SUMMARY"]).parent == out and not (out / "runs").exists()
