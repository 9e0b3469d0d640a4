"""Thesis tables from fake run folders (made-up numbers; no model is trained).

`write_run` / `fake_study` below are also used by test_figures.py and test_claims.py.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kdlib import experiments, records, tables
from kdlib.errors import ConfigError
from kdlib.train import load_runs

# ----------------------------------------------------------------------------------------
# fixture helpers: fake run folders in the layout kdlib.train writes


def _scores(dice: float) -> dict:
    dice = float(np.clip(dice, 0.0, 1.0))
    return {"dice": dice, "iou": dice / (2 - dice), "precision": min(1.0, dice + 0.03),
            "recall": max(0.0, dice - 0.03)}


def write_run(runs_dir: Path, name: str, *, model: str, role: str, seed: int = 0,
              teacher_run: str | None = None, scales: str = "", loss: str = "infonce", pmd: bool = False,
              fraction: float = 0.5, setting: str = "corrected", split: str = "split-fold0.json",
              dice: float = 0.7, cases: dict[str, float] | None = None, synthetic: bool = True,
              psnr: float | None = None, epochs: int = 3, params: int = 57_297,
              last_epoch_drop: float = 0.01) -> dict:
    """One finished run folder (config.json, metrics.json, history.csv); returns its path.
    `role` "control" is our KD-off control (the KD recipe without a teacher)."""
    kd = None
    if role == "kd":
        kd = {"scales": scales.split("+"), "loss": loss,
              "pmd": ("faithful" if setting == "faithful" else "binary") if pmd else "off",
              "projector": "random" if setting == "faithful" else "learned"}
    config = {"name": name, "model": model, "role": role, "cache": "cache", "split": split,
              "train_subset": "train" if fraction >= 1.0 or role == "teacher" else "student_train",
              "seed": seed, "teacher_run": teacher_run, "kd": kd, "setting": setting,
              "threshold": "logit" if setting == "faithful" else "prob", "epochs": epochs}
    if role == "control":
        config.update(optimizer="rmsprop", lr=1e-2, batch_size=20, loss="dice")
    metrics = {"pooled": _scores(dice), "per_image": _scores(dice - 0.05), "loss": 1 - dice,
               "params": params, "synthetic": synthetic, "best_epoch": epochs,
               "last_epoch": {"pooled": _scores(dice - last_epoch_drop)}}
    if cases is not None:
        per_case = {cid: _scores(v) for cid, v in cases.items()}
        metrics["per_volume"] = {"mean": _scores(float(np.mean(list(cases.values())))),
                                 "cases": per_case, "n_cases": len(cases)}
        metrics["last_epoch"]["per_volume"] = {
            "mean": _scores(float(np.mean(list(cases.values()))) - last_epoch_drop),
            "cases": {cid: _scores(v - last_epoch_drop) for cid, v in cases.items()}, "n_cases": len(cases)}
    if psnr is not None:
        metrics.update(psnr=psnr, ssim=0.9)
    slug = f"{name.lower().replace(' ', '-').replace('(', '').replace(')', '').replace(',', '-')}-s{seed}-{setting}"
    run_dir = runs_dir / f"{slug}-{abs(hash((name, seed, setting, split, fraction))) % 10**8}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    hist = pd.DataFrame({"epoch": range(1, epochs + 1),
                         "train_total": np.linspace(1.0, 0.4, epochs), "train_seg": np.linspace(0.9, 0.3, epochs),
                         "val_loss": np.linspace(0.95, 0.5, epochs), "val_dice": np.linspace(0.3, dice, epochs),
                         "val_iou": np.linspace(0.2, dice / (2 - dice), epochs), "seconds": 1.0})
    if model in ("T1", "T2"):
        hist["train_recon"] = np.linspace(0.1, 0.02, epochs)
        hist["val_recon_loss"] = np.linspace(0.12, 0.03, epochs)
    hist.to_csv(run_dir / "history.csv", index=False)
    return str(run_dir)


CASES = [f"spleen_{i}" for i in range(1, 9)]


def fake_study(runs_dir: Path, effects: dict | None = None, seeds=(0, 1, 2), settings=("corrected",),
               base: dict | None = None, noise: float = 0.004, with_cases: bool = True, folds: int = 1,
               kd_scale_order: str = "EBD") -> list[dict]:
    """Teachers, baselines, KD-off controls and every KD configuration the claims use, with
    per-case Dice = student baseline + effect(config) + case effect + small seed noise
    (deterministic). With `folds` > 1 the cases are split among folds (each case tested by
    one fold's runs, as in the real design) and every run is trained per fold and seed.

    `effects` maps claims' labels (e.g. "KD(T1,S1) B->B+PMD", "S1 control") to Dice gains
    over the student's baseline; unlisted KD configurations get `effects["default"]` (0.0).
    KD scales are stored in `kd_scale_order` (losses.KDConfig stores E, B, D).
    """
    effects = {"default": 0.0, **(effects or {})}
    base = {"S1": 0.70, "S2": 0.76, "S1 (100% data)": 0.74, **(base or {})}
    rng = np.random.default_rng(0)
    case_effect = dict(zip(CASES, np.linspace(-0.05, 0.05, len(CASES))))
    for setting in settings:
        for fold in range(folds):
            split = f"split-fold{fold}.json"
            fold_cases = CASES[fold::folds]
            teachers = {}
            for t in ("unet", "T1", "T2"):
                teachers[t] = write_run(runs_dir, t, model=t, role="teacher", setting=setting, dice=0.95,
                                        psnr=30.0 if t != "unet" else None, params=43_236_036, fraction=1.0,
                                        split=split)
            configs = [("S1 baseline", "S1", None, "", False, "none", 0.5, base["S1"]),
                       ("S2 baseline", "S2", None, "", False, "none", 0.5, base["S2"]),
                       ("S1 baseline (100% data)", "S1", None, "", False, "none", 1.0, base["S1 (100% data)"]),
                       ("S1 control", "S1", None, "", False, "none", 0.5, base["S1"]),
                       ("S2 control", "S2", None, "", False, "none", 0.5, base["S2"])]
            pairs = [("T1", "S1"), ("T2", "S1"), ("T1", "S2"), ("T2", "S2")]
            for t, s in pairs:
                extra = ("E+D", "B+D") if (t, s) == ("T1", "S1") else ()
                for scales in ("B", "E", "D", "B+E", "B+E+D", *extra):
                    for pmd in (False, True):
                        configs.append((None, s, t, scales, pmd, "infonce", 0.5, base[s]))
            configs.append((None, "S1", "T1", "B", False, "infonce", 1.0, base["S1 (100% data)"]))
            for scales in ("B", "B+E", "B+E+D"):
                for pmd in (False, True):
                    configs.append((None, "S1", "T1", scales, pmd, "mse", 0.5, base["S1"]))
            for name, student, teacher, scales, pmd, loss, fraction, dice0 in configs:
                role = "kd" if teacher else "control" if "control" in name else "baseline"
                spec_label = name or _label(teacher, student, scales, pmd, loss, fraction)
                gain = effects.get(spec_label, effects["default"] if role == "kd" else 0.0) \
                    if role != "baseline" else 0.0
                stored = "+".join(c for c in kd_scale_order if c in scales.split("+"))
                for seed in seeds:
                    jitter = float(rng.normal(0, noise))
                    cases = {c: dice0 + gain + case_effect[c] + jitter + float(rng.normal(0, noise))
                             for c in fold_cases}
                    write_run(runs_dir, spec_label, model=student, role=role, seed=seed,
                              teacher_run=teachers[teacher] if teacher else None, scales=stored, loss=loss,
                              pmd=pmd, fraction=fraction, setting=setting, split=split,
                              dice=float(np.mean(list(cases.values()))), cases=cases if with_cases else None)
    return load_runs(runs_dir)


def _label(teacher, student, scales, pmd, loss, fraction=0.5):
    arrows = "+".join(f"{s}->{s}" for s in scales.split("+"))
    data = " (100% data)" if fraction >= 1.0 else ""
    return f"KD({teacher},{student}) {arrows}{'+PMD' if pmd else ''}{' MSE' if loss == 'mse' else ''}{data}"


# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    return fake_study(root / "runs", effects={"KD(T1,S1) B->B+PMD": 0.05}, settings=("corrected", "faithful"),
                      folds=3)


def test_table_layout_and_values(study):
    df = tables.table("4.2", study)
    thesis = experiments.thesis_rows(["4.2"])
    ours = [r["row"] for r in experiments.CONTROL_ROWS]
    assert list(df["row"].unique()) == [r["row"] for r in thesis] + ours  # controls last, marked ours
    assert len(df) == 2 * (len(thesis) + len(ours))  # one row per row and setting
    assert set(df[df["row"].isin(ours)]["source"]) == {"ours"} and df[df["row"].isin(ours)]["thesis_dice"].isna().all()
    control = df[(df["row"] == ours[0]) & (df["setting"] == "corrected")].iloc[0]
    assert control["n_runs"] == 9 and control["ours_dice"] == pytest.approx(0.70, abs=0.01)
    assert set(df["setting"]) == {"corrected", "faithful"}
    for m in ("iou", "dice", "recall", "precision"):
        for prefix in ("thesis_", "ours_", "diff_"):
            assert f"{prefix}{m}" in df.columns
    kd = df[(df["row"] == "KD(T1,S1)") & (df["setting"] == "corrected")].iloc[0]
    assert kd["n_seeds"] == 3
    assert kd["thesis_dice"] == pytest.approx(0.772)
    runs = [r for r in study if r["config"]["setting"] == "corrected" and r["config"]["role"] == "kd"
            and r["config"]["kd"]["scales"] == ["B"] and r["config"]["kd"]["pmd"] != "off"
            and r["config"]["model"] == "S1" and "T1" in Path(r["config"]["teacher_run"]).name.upper()
            and r["config"]["kd"]["loss"] == "infonce"]
    expected = np.mean([r["metrics"]["pooled"]["dice"] for r in runs])
    assert len(runs) == 9  # 3 folds x 3 seeds
    assert kd["ours_dice"] == pytest.approx(expected)
    assert kd["diff_dice"] == pytest.approx(expected - 0.772)
    assert kd["ours_dice_ci_low"] <= kd["ours_dice_patients"] <= kd["ours_dice_ci_high"]
    assert kd["n_patients"] == len(CASES)
    assert kd["params_m"] == pytest.approx(0.057)
    assert kd["ours_params_m"] == pytest.approx(0.057297)
    assert df.attrs["synthetic"] is True and df.attrs["table"] == "4.2"


def test_rows_without_runs_keep_thesis_numbers(tmp_path, study):
    one_seed = [r for r in study if r["config"]["seed"] == 0 and r["config"]["setting"] == "corrected"
                and r["config"]["split"] == "split-fold0.json"]
    df = tables.table("4.2", one_seed)
    row = df[df["row"] == "S1: U-Net-S"].iloc[0]
    # one fold: no interval for new patients (the fold effect cannot be estimated), and no fill-in
    assert row["n_seeds"] == 1 and math.isnan(row["ours_dice_ci_low"]) and not math.isnan(row["ours_dice_patients"])
    assert row["ci_method"] == "fold-level t"
    empty = tables.table("4.3", [])
    assert (empty["n_seeds"] == 0).all()
    assert empty["ours_dice"].isna().all() and empty["diff_iou"].isna().all()
    assert empty["thesis_dice"].tolist() == [r["dice"] for r in experiments.thesis_rows(["4.3"])]
    assert empty["setting"].isna().all()


def test_table_4_1_teachers_and_metric_levels(study):
    df = tables.table("4.1", study)
    assert {"ours_psnr", "ours_ssim"} <= set(df.columns)
    t1 = df[(df["row"].str.startswith("T1")) & (df["setting"] == "corrected")].iloc[0]
    assert t1["n_seeds"] == 1 and t1["ours_dice"] == pytest.approx(0.95) and t1["ours_psnr"] == 30.0
    unet = df[df["row"] == "SpleenSeg-U-Net"].iloc[0]
    assert math.isnan(unet["ours_psnr"])
    per_volume = tables.table("4.2", study, metric_level="per_volume")
    assert per_volume["ours_dice"].notna().all()
    with pytest.raises(ConfigError):
        tables.table("4.2", study, metric_level="nonsense")
    with pytest.raises(ConfigError):
        tables.table("9.9", study)


def test_all_tables_and_headline(study):
    result = tables.all_tables(study)
    assert list(result) == list(tables.TABLE_IDS)
    assert all(len(df) > 0 for df in result.values())
    # identical configurations appear in every table listing them: 4.2 KD(T1,S1) == 4.7 B->B+PMD
    t42, t47 = result["4.2"], result["4.7"]
    a = t42[(t42["row"] == "KD(T1,S1)") & (t42["setting"] == "corrected")]["ours_dice"].iloc[0]
    b = t47[(t47["row"] == "B->B+PMD") & (t47["setting"] == "corrected")]["ours_dice"].iloc[0]
    assert a == b
    head = tables.headline_table(study)
    assert list(head.columns[:4]) == ["row", "setting", "n", "patients"]
    assert head["ours_dice_text"].str.contains(r"\[").all()
    assert (head["thesis_dice"].dropna() > 0).all() and head["thesis_dice"].isna().sum() == 4  # controls


def test_write_table(tmp_path, study):
    df = tables.table("4.3", study)
    csv_path, md_path = tables.write_table(df, tmp_path / "out", "table4_3", synthetic=True)
    text = md_path.read_text()
    first = text.splitlines()[0]
    assert first.startswith("Table 4.3") and "SYNTHETIC DATA" in first
    assert "| row | source | setting |" in text
    back = pd.read_csv(csv_path)
    assert len(back) == len(df) and list(back.columns) == list(df.columns)
    # regenerated outputs are overwritten; no temporary files left
    tables.write_table(df.head(2), tmp_path / "out", "table4_3", synthetic=False)
    assert "SYNTHETIC" not in md_path.read_text().splitlines()[0]
    assert len(pd.read_csv(csv_path)) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["table4_3.csv", "table4_3.md"]


def test_markdown_cells():
    df = pd.DataFrame({"a": ["x|y", None], "b": [0.12345, float("nan")], "c": [np.int64(3), 4]})
    md = tables.to_markdown(df)
    assert "x\\|y" in md and "0.123" in md and "–" in md and "| 3 |" in md


def test_folds_count_as_runs_not_seeds(tmp_path):
    runs_dir = tmp_path / "runs"
    for fold, dice in ((0, 0.70), (1, 0.74), (2, 0.72)):
        write_run(runs_dir, "S1 baseline", model="S1", role="baseline", seed=42, split=f"split-fold{fold}.json",
                  dice=dice)
    df = tables.table("4.2", load_runs(runs_dir))
    s1 = df[df["row"] == "S1: U-Net-S"].iloc[0]
    assert (s1["n_seeds"], s1["n_runs"]) == (1, 3)
    assert s1["ours_dice"] == pytest.approx(0.72)
    # no per-volume results: each fold's test set is one unit; three folds, one seed each
    assert s1["n_patients"] == 3 and s1["ours_dice_ci_low"] < 0.70 and s1["ours_dice_ci_high"] > 0.74
    assert df[df["row"] == "S2: U-Net"]["n_runs"].iloc[0] == 0


def test_moved_results_folder_still_joins(tmp_path):
    import shutil

    runs_dir = tmp_path / "a" / "runs"
    teacher = write_run(runs_dir, "T1", model="T1", role="teacher", fraction=1.0)
    write_run(runs_dir, "KD", model="S1", role="kd", teacher_run=teacher, scales="B", pmd=True, dice=0.8)
    shutil.move(str(tmp_path / "a"), str(tmp_path / "b"))
    df = tables.table("4.2", load_runs(tmp_path / "b" / "runs"))
    assert df[df["row"] == "KD(T1,S1)"]["ours_dice"].iloc[0] == pytest.approx(0.8)


def test_scales_stored_by_kd_config_join_the_thesis_rows(tmp_path):
    """Runs with B and E together reach their tables: the join goes through the real
    KDConfig (which stores scales E, B, D) and a real RunConfig, not a hand-written name."""
    from kdlib import losses
    from kdlib.train import RunConfig

    teacher = tmp_path / "t1"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model": "T1"}))
    for scales, table_id, label in ((("B", "E"), "4.6", "B->B+E->E"), (("B", "E", "D"), "4.3", "B->B+E->E+D->D"),
                                    (("E", "D"), "4.6", "E->E+D->D"), (("B", "D"), "4.6", "B->B+D->D")):
        kd = losses.kd_config_for("T1", "S1", scales=scales, pmd="off", loss="infonce")
        cfg = RunConfig(name="kd", model="S1", role="kd", cache="c", split="s", train_subset="student_train",
                        teacher_run=str(teacher), kd=kd.to_dict())
        desc = experiments.describe(cfg)
        assert desc["scales"] == "+".join(scales)
        assert experiments.row_matches(experiments.find_row(table_id, label), desc)


def test_row_config_accepts_a_name(tmp_path):
    row = experiments.find_row("4.2", "S1: U-Net-S")
    cfg = experiments.row_config(row, tmp_path / "cache", tmp_path / "split.json", "corrected", {}, name="my S1")
    assert cfg.name == "my S1" and cfg.role == "baseline"


def test_control_rows_train_the_kd_recipe(tmp_path):
    from kdlib import train

    if not hasattr(train, "control_config"):
        pytest.skip("train.control_config is not there yet (training helper)")
    row = experiments.CONTROL_ROWS[0]
    cfg = experiments.row_config(row, tmp_path / "cache", tmp_path / "split.json", "corrected", {}, epochs=3)
    assert cfg.role == "control" and cfg.optimizer == "rmsprop" and cfg.batch_size == 20
    assert cfg.teacher_run is None and cfg.train_subset == "student_train" and cfg.epochs == 3
    assert row in experiments.grid_rows(["4.2"]) and row not in experiments.grid_rows(["4.3"])


def test_teachers_by_fold_names_each_folds_patients_and_how_the_teacher_trained(tmp_path):
    runs_dir = tmp_path / "runs"
    write_run(runs_dir, "T1", model="T1", role="teacher", split="f0.json", dice=0.61,
              cases={"3Dircadb1.1": 0.6, "spleen_3": 0.625}, epochs=20)
    write_run(runs_dir, "T1", model="T1", role="teacher", split="f1.json", dice=0.82,
              cases={"spleen_8": 0.89, "spleen_22": 0.31}, epochs=13)
    write_run(runs_dir, "S1 baseline", model="S1", role="baseline", split="f0.json", dice=0.5,
              cases={"3Dircadb1.1": 0.5})
    for path in runs_dir.glob("t1-*/metrics.json"):  # stopping facts as train.py records them
        metrics = json.loads(path.read_text())
        metrics.update(epochs_run=metrics["best_epoch"], stopped="cap" if metrics["best_epoch"] == 20 else "early")
        path.write_text(json.dumps(metrics))
    df = tables.teachers_by_fold(load_runs(runs_dir))
    assert list(df["teacher"]) == ["T1", "T1"]  # students are not teachers
    by_patients = df.set_index("test patients")
    first, second = by_patients.loc["3Dircadb1.1, spleen_3"], by_patients.loc["spleen_8, spleen_22"]
    assert (first["epochs run"], first["stopped"], second["stopped"]) == (20, "cap", "early")
    assert first["test Dice"] == pytest.approx(0.61)
    assert first["test Dice, last epoch"] == pytest.approx(0.61 - 0.01)
    assert second["Dice per patient"] == "spleen_8 0.890; spleen_22 0.310"


@pytest.mark.parametrize("patience, stopped, epochs_run, best_epoch, expected", [
    (20, "early", 57, 37, True),      # stopped by its patience
    (20, "early", 57, 50, False),     # stopped early on Dice, but its kept (loss-selected) epoch is recent
    (20, "cap", 120, 100, True),      # at the cap, but flat for its last 20 epochs
    (20, "cap", 120, 101, False),     # at the cap, still improving 19 epochs before the end
    (20, "cap", 120, 120, False),
    (0, "cap", 3, 3, None),           # no stopping rule: a plateau was never asked for
])
def test_reached_plateau(patience, stopped, epochs_run, best_epoch, expected):
    run = {"config": {"patience": patience},
           "metrics": {"stopped": stopped, "epochs_run": epochs_run, "best_epoch": best_epoch}}
    assert records.reached_plateau(run) is expected
