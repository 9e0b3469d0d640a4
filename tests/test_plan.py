"""Issue 20: `python -m kdlib run --plan` lists every run an invocation makes, from the code the
notebooks call, so it cannot drift: a tiny profile's plan equals the run folders its training
creates, and the thesis's plan lists Table 4.2's runs."""
import json
import subprocess
import sys

import pytest
import yaml

from kdlib import experiments, pipeline, plan, train

TINY = {
    "common": {"data": "phantom"},
    "01_preprocess": {"phantom_cases": 5, "phantom_size": 32, "size": 32, "settings": ["corrected"]},
    "02_teacher": {"teachers": ["T1"], "faithful_teachers": [], "epochs": 1},
    "03_student": {"epochs": 1, "seeds": [42, 43]},
    "04_ablations": {"epochs": 1, "seeds": [42], "grid": "claims", "faithful_grid": False},
}


@pytest.fixture
def tiny_profile(tmp_path):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return folder


def test_plan_of_a_tiny_invocation_is_what_it_trains(tiny_profile, tmp_path):
    out = tmp_path / "out"
    before = plan.plan_runs("tiny", out=out, profiles_dir=tiny_profile)
    assert before and all(r["run_dir"] is None for r in before)  # nothing prepared yet: names unknown
    # what notebooks 01, 02 and 03 do (their pipeline calls, with the profile's values)
    p = TINY["01_preprocess"]
    inputs = pipeline.data_inputs("phantom", out, p["phantom_cases"], p["phantom_size"], 0)
    prepared = pipeline.prepare(out, inputs, size=32, hu_window=[-160, 240], settings=["corrected"])
    after_01 = plan.plan_runs("tiny", out=out, profiles_dir=tiny_profile)
    teachers = pipeline.train_teachers(out, pipeline.teacher_plan(prepared, "corrected", ["T1"], []), epochs=1,
                                       precision="auto", patience=0, min_delta=0.0, min_epochs=0,
                                       keep_last=False, select_on="loss")
    configs = pipeline.student_configs(out, "corrected", epochs=1, seeds=[42, 43], precision="auto",
                                       patience=0, min_epochs=0, select_on="loss", keep_last=False)
    pipeline.train_all(out, configs)
    made = sorted(d.name for d in (out / "runs").iterdir() if d.is_dir())
    planned = sorted(r["run_dir"] for r in after_01 if r["notebook"] in ("02_teacher", "03_student"))
    assert planned == made  # the plan made before training names exactly the folders training made
    by_role = {r["role"] for r in after_01 if r["notebook"] == "03_student"}
    assert by_role == {"baseline", "control", "kd"}
    # 04's grid from the real teachers.json equals the plan's (made before any teacher existed)
    grid = pipeline.ablation_configs(out, "corrected", "claims", epochs=1, seeds=[42], precision="auto",
                                     faithful_grid=False, patience=0, min_epochs=0, select_on="loss",
                                     keep_last=False)
    assert sorted(c.run_dir(out / "runs").name for c in grid) == \
        sorted(r["run_dir"] for r in after_01 if r["notebook"] == "04_ablations")
    assert str(teachers["corrected"]["0"]["T1"]).endswith(after_01[0]["run_dir"])
    # the same plan now knows what is finished, and the image counts per epoch
    again = plan.plan_runs("tiny", out=out, profiles_dir=tiny_profile)
    assert all(r["finished"] for r in again if r["notebook"] != "04_ablations")
    assert all(r["train_images"] > 0 for r in again)
    shared = [r for r in again if r["shared_with"]]
    assert all(r["notebook"] == "04_ablations" and r["finished"] for r in shared)


def test_thesis_plan_lists_table_4_2_runs():
    runs = plan.plan_runs("thesis")
    students = [r for r in runs if r["notebook"] == "03_student"]
    rows = experiments.grid_rows(["4.2"])
    assert len(students) == len(rows) * 3  # every row and control, one fold, 3 seeds
    assert {r["seed"] for r in students} == {42, 43, 44} and {r["epochs"] for r in students} == {120}
    assert {r["role"] for r in students} == {"baseline", "control", "kd"}
    teachers = [r for r in runs if r["notebook"] == "02_teacher"]
    assert sorted((r["model"], r["setting"]) for r in teachers) == \
        [("T1", "corrected"), ("T1", "faithful"), ("T2", "corrected"), ("unet", "corrected")]
    grid = [r for r in runs if r["notebook"] == "04_ablations"]
    assert len(grid) > 100 and {r["epochs"] for r in grid} == {120} and {r["seed"] for r in grid} == {42, 43, 44}
    totals = plan.totals(runs)
    assert totals["02_teacher"]["epochs"] == 800 and totals["04_ablations"]["shared"] > 0


def test_plan_cost_from_measurements():
    run = {"model": "S1", "size": 256, "role": "kd", "epochs": 10, "train_images": 100, "val_images": 50,
           "train_share": 0.3, "val_share": 0.1}
    m = {"networks": {"S1": {"size": 256, "train_images_per_s": 100.0, "inference_images_per_s": 500.0}},
         "kd_epoch": {"S1": {"ratio": 2.0}}}
    assert plan.run_seconds(run, m) == pytest.approx(10 * (100 / 100 * 2 + 50 / 500))
    assert plan.run_seconds(run, None) is None
    assert plan.run_seconds({**run, "size": 64}, m) is None  # another size: no measurement
    assert plan.run_seconds({**run, "train_images": None}, m, cache_slices=1000) == \
        pytest.approx(10 * (300 / 100 * 2 + 100 / 500))


def test_plan_cli_text_and_json():
    text = subprocess.run([sys.executable, "-m", "kdlib", "run", "--profile", "thesis", "--plan"],
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "03_student: 24 runs" in text.stdout and "no measurement" in text.stdout
    done = subprocess.run([sys.executable, "-m", "kdlib", "run", "--profile", "thesis", "--plan", "--json",
                           "--only", "02"], capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 4 and {"role", "model", "name", "fold", "seed", "epochs", "run_dir"} <= set(lines[0])
    bad = subprocess.run([sys.executable, "-m", "kdlib", "run", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "--plan" in bad.stderr and "Traceback" not in bad.stderr
