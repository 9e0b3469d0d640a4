"""Issue 21: a profile too long for one sitting runs as two invocations at one commit that split
its folds (`--folds`), the second reusing the first's finished records (`--reuse`): together
they plan exactly the runs of one invocation, and reused records are copied safely."""
import json
import os

import pytest

from conftest import assert_one_error, run_cli
from kdlib import pipeline, plan, runner
from kdlib.errors import ConfigError, KdlibError


def _keys(runs):
    return {(r["notebook"], r["role"], r["name"], r["train_subset"], r["fold"], r["seed"]) for r in runs
            if not r["shared_with"]}


def test_two_fold_parts_plan_exactly_the_whole_invocation():
    whole = _keys(plan.plan_runs("real-mini"))
    first, second = _keys(plan.plan_runs("real-mini", folds=[0, 1])), _keys(plan.plan_runs("real-mini", folds=[2]))
    assert first | second == whole and not first & second
    assert {k[4] for k in first} == {0, 1} and {k[4] for k in second} == {2}
    assert {k[1] for k in second} == {"teacher", "baseline", "control", "kd"}  # fold 2 trains its own teacher


def test_a_fold_that_was_not_prepared_is_one_clear_error():
    with pytest.raises(ConfigError, match="not prepared"):
        plan.plan_runs("real-mini", folds=[3])


def test_folds_reach_the_training_notebooks_only(tmp_path):
    notebooks = runner.list_notebooks()
    params = runner.notebook_parameters(runner.load_profile("real-mini"), notebooks, "real-mini", None,
                                        tmp_path, folds=[1, 0])
    assert all(params[s]["train_folds"] == [0, 1] for s in ("02_teacher", "03_student", "04_ablations"))
    assert "train_folds" not in params["01_preprocess"] and "train_folds" not in params["05_statistics"]


def test_bad_folds_on_the_command_line(capsys, no_progress_bars):
    code, _, err = run_cli(capsys, "run", "--profile", "real-mini", "--folds", "0,x", "--plan")
    assert_one_error(code, err, "--folds")


def _published(run, folder):
    """The run's records as a publication holds them (no checkpoints)."""
    (folder / run.name).mkdir(parents=True)
    for name in pipeline.RECORD_FILES:
        (folder / run.name / name).write_bytes((run / name).read_bytes())
    return folder


def test_reuse_copies_records_only_and_never_overwrites(run, tmp_path):
    source = _published(run, tmp_path / "published" / "runs")
    out = tmp_path / "second"
    (out / "runs").mkdir(parents=True)
    done = pipeline.reuse_records(source, out)
    copied = out / "runs" / run.name
    assert done["copied"] == 1 and done["already_here"] == 0
    assert sorted(p.name for p in copied.iterdir()) == ["config.json", "history.csv", "metrics.json"]
    assert not pipeline.has_checkpoint(copied) and pipeline.has_checkpoint(run)
    (copied / "history.csv").write_text("mine\n")  # a run folder already here is kept as it is
    again = pipeline.reuse_records(source, out)
    assert again == dict(done, copied=0, already_here=1) and (copied / "history.csv").read_text() == "mine\n"
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".")]  # no staging left behind


def test_reuse_refuses_hostile_or_incomplete_records(run, tmp_path):
    source = _published(run, tmp_path / "published" / "runs")
    record = source / run.name
    (record / "history.csv").unlink()
    os.symlink("/etc/passwd", record / "history.csv")
    out = tmp_path / "second"
    with pytest.raises(KdlibError, match="history.csv"):
        pipeline.reuse_records(source, out)
    assert not (out / "runs" / run.name).exists()
    (record / "history.csv").unlink()
    (record / "metrics.json").write_text("{}")
    with pytest.raises(KdlibError, match="incomplete or invalid"):
        pipeline.reuse_records(source, out)
    with pytest.raises(KdlibError, match="no runs folder"):
        pipeline.reuse_records(tmp_path / "nowhere", out)


def test_each_part_keeps_its_own_provenance(tmp_path):
    record = {"profile": "p", "command": "python -m kdlib run --profile p --folds 2", "commit": "abc",
              "clean": True, "started": "s", "ended": "e", "wall_s": 60.0, "notebooks_s": {"02_teacher": 1.0},
              "threads": 2, "usable_cores": 2, "cpu": "some CPU", "busy_cores_at_start": 0.0,
              "load_average_1min": {"start": 0.1, "end": 0.2}, "train_folds": [2],
              "reused": {"source": "x", "copied": 3, "already_here": 0, "trained_at": ["abc"]}}
    runner.write_invocation(record, tmp_path / "out", tmp_path / "pub")
    runner.write_invocation({k: v for k, v in record.items() if k not in ("train_folds", "reused")},
                            tmp_path / "out", tmp_path / "pub")
    assert sorted(p.name for p in (tmp_path / "pub").iterdir()) == [
        "PROVENANCE-folds-2.md", "PROVENANCE.md", "invocation-folds-2.json", "invocation.json"]
    text = (tmp_path / "pub" / "PROVENANCE-folds-2.md").read_text()
    assert "Folds trained: [2]" in text and "'copied': 3" in text and "CPU: some CPU" in text
    assert json.loads((tmp_path / "pub" / "invocation-folds-2.json").read_text())["train_folds"] == [2]


def test_the_second_publication_adopts_what_only_the_first_could_make(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for path, text in {"figures/fig4_9_reconstructions.png": "first's checkpoint figure",
                       "figures/headline_claim1_1.png": "first's partial figure",
                       "models/s1-run/checkpoints/best.pt": "weights", "PROVENANCE-folds-0-1.md": "part 1",
                       "invocation-folds-0-1.json": "{}", "tables/table4_2.md": "first's partial table",
                       "SUMMARY.md": "first's partial summary"}.items():
        (first / path).parent.mkdir(parents=True, exist_ok=True)
        (first / path).write_text(text)
    (second / "figures").mkdir(parents=True)
    (second / "figures" / "headline_claim1_1.png").write_text("second's, from every record")
    copied = pipeline.adopt_publication(first, second)
    assert sorted(copied) == ["PROVENANCE-folds-0-1.md", "figures/fig4_9_reconstructions.png",
                              "invocation-folds-0-1.json", "models/s1-run/checkpoints/best.pt"]
    assert (second / "figures" / "headline_claim1_1.png").read_text() == "second's, from every record"
    assert not (second / "tables").exists() and not (second / "SUMMARY.md").exists()
