"""Claims, ANOVA and summaries on fake studies whose true effects we chose."""
from __future__ import annotations

import math

import pytest

from kdlib import claims, experiments, stats

try:
    from test_tables import CASES, fake_study
except ImportError:  # tests collected as a package
    from tests.test_tables import CASES, fake_study

EFFECTS = {  # Dice gains over the student's baseline (baselines: S1 0.70, S2 0.76, S1 on 100% 0.73)
    "KD(T1,S1) B->B+PMD": 0.06,   # Table 4.2 KD(T1,S1): clearly helps S1        -> claim 1
    "KD(T1,S1) E->E": 0.04,       # E beats B (0.0) and D (-0.02) for T1->S1      -> claim 2
    "KD(T1,S1) D->D": -0.02,
    "KD(T2,S1) B->B": 0.03,       # ... but not for T2->S1
    "KD(T1,S1) B->B+E->E+D->D": -0.03,  # all scales worse than B                 -> claim 3
    "KD(T1,S1) B->B MSE": -0.04,  # contrastive beats MSE at B                    -> claim 4
    "KD(T1,S2) B->B+PMD": 0.01,   # S2 gains little                                -> claim 8
    "KD(T2,S1) E->E+PMD": 0.03,   # T2 no better than T1                           -> claim 6
    "KD(T2,S2) B->B+PMD": 0.01,
}
BASE = {"S1 (100% data)": 0.73}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return fake_study(tmp_path_factory.mktemp("claims") / "runs", effects=EFFECTS, base=BASE,
                      settings=("corrected", "faithful"))


@pytest.fixture(scope="module")
def table(study):
    return claims.claims_table(study, n_boot=2000)


def _rows(df, cid, setting="corrected"):
    return df[(df["claim_id"] == cid) & (df["setting"] == setting)]


def test_claims_table_shape(table):
    expected = {"claim_id", "claim", "comparison", "setting", "verdict", "effect", "ci_low", "ci_high",
                "n", "n_runs", "p", "p_holm", "thesis_effect", "criterion", "basis", "note"}
    assert expected <= set(table.columns)
    assert set(table["claim_id"]) == {str(i) for i in range(1, 9)}
    assert set(table["verdict"]) <= set(stats.VERDICTS)
    assert set(table["setting"]) == {"corrected", "faithful"}
    assert (table["n"] == len(CASES)).all()  # paired by test case
    assert table["basis"].str.contains("per-volume").all()
    assert (table["n_runs"] == 3).all()


def test_verdicts_follow_the_planted_effects(table):
    c1 = _rows(table, "1")
    assert c1.iloc[0]["verdict"] == "supported"
    assert c1.iloc[0]["effect"] == pytest.approx(0.06, abs=0.01)
    assert c1.iloc[0]["thesis_effect"] == pytest.approx(0.772 - 0.715)
    assert "post hoc" in c1.iloc[1]["note"] and "B->B+PMD" in c1.iloc[1]["comparison"]
    c2 = _rows(table, "2")
    t1s1 = c2[c2["comparison"].str.startswith("KD(T1,S1)")]
    assert (t1s1["verdict"] == "supported").all()          # E > B and E > D for T1->S1
    assert c2[c2["comparison"] == "KD(T2,S1) E->E − KD(T2,S1) B->B"]["verdict"].iloc[0] == "not supported"
    c3 = _rows(table, "3")
    assert c3[c3["comparison"].str.startswith("KD(T1,S1)")]["verdict"].iloc[0] == "supported"
    c4 = _rows(table, "4")
    assert c4[c4["comparison"] == "KD(T1,S1) B->B − KD(T1,S1) B->B MSE"]["verdict"].iloc[0] == "supported"
    c5 = _rows(table, "5")
    t1 = c5[c5["comparison"].str.startswith("KD(T1,S1)")].iloc[0]
    assert t1["verdict"] == "supported" and t1["effect"] > 0
    assert "identically zero" in _rows(table, "5", "faithful").iloc[0]["note"]
    assert "identically zero" not in t1["note"]
    c6 = _rows(table, "6")
    assert c6.iloc[0]["verdict"] == "supported"            # T2 - T1 = -0.03 < margin
    assert c6.iloc[0]["effect"] == pytest.approx(-0.03, abs=0.01)
    c7 = _rows(table, "7").iloc[0]                         # 0.70 + 0.06 vs 0.73: non-inferior
    assert c7["verdict"] == "supported" and c7["effect"] == pytest.approx(0.03, abs=0.01)
    c8 = _rows(table, "8").iloc[0]                         # S1 gains 0.06, S2 0.01
    assert c8["verdict"] == "supported" and c8["effect"] == pytest.approx(0.05, abs=0.01)
    assert c8["thesis_effect"] == pytest.approx((0.772 - 0.715) - (0.794 - 0.770))
    assert 0 <= table["p_holm"].min() and (table["p_holm"].dropna() >= table["p"].dropna()).all()


def test_not_testable_when_runs_missing(study):
    only_baselines = [r for r in study if r["config"]["role"] != "kd"]
    df = claims.claims_table(only_baselines, n_boot=500)
    assert (df["verdict"] == "not testable here").all()
    assert df["note"].str.contains("no runs for|no KD").all()
    empty = claims.claims_table([], n_boot=500)
    assert (empty["verdict"] == "not testable here").all() and len(empty) > 8


def test_pooled_fallback_and_single_seed(tmp_path):
    runs = fake_study(tmp_path / "runs", effects=EFFECTS, base=BASE, with_cases=False, seeds=(0, 1, 2))
    df = claims.claims_table(runs, n_boot=500)
    assert df["basis"].str.startswith("pooled dice per run").all()
    assert (df["n"] == 3).all()
    assert _rows(df, "1").iloc[0]["verdict"] == "supported"
    one = [r for r in runs if r["config"]["seed"] == 0]
    df1 = claims.claims_table(one, n_boot=500)
    assert (df1["verdict"] == "not testable here").all()  # one seed, no cases: n = 1 < 2


def test_anova_table(study):
    df = claims.anova_table(study)
    thesis = df.iloc[0]
    assert thesis["df_between"] == 1 and thesis["df_within"] == 11
    assert thesis["F"] == pytest.approx(4.40, abs=0.01)
    assert df.iloc[1]["F"] == pytest.approx(5.48, abs=0.02) and df.iloc[1]["p"] == pytest.approx(0.039, abs=0.002)
    ours = df[df["setting"] == "corrected"]
    assert list(ours["source"]) == ["ours: one value per configuration", "ours: one value per run"]
    assert (ours["configurations"] == "13 / 13").all()
    per_run = ours.iloc[1]
    assert per_run["df_within"] == 13 * 3 - 2 and not math.isnan(per_run["F"])
    groups = claims.anova_groups_rows()
    assert len(groups["S1"]) == 1 and len(groups["KD(T1,S1)"]) == 12
    assert all(r["teacher"] == "T1" and r["student"] == "S1" for r in groups["KD(T1,S1)"])
    assert claims.anova_table([]).shape[0] == 2


def test_configuration_summary_and_paired(study):
    summary = claims.configuration_summary(study, n_boot=500)
    s1 = summary[(summary["label"] == "S1 baseline") & (summary["setting"] == "corrected")].iloc[0]
    assert s1["n_runs"] == 3 and s1["ci_low"] <= s1["mean"] <= s1["ci_high"]
    assert s1["thesis"] == pytest.approx(0.715) and "4.2" in s1["thesis_rows"]
    assert summary.iloc[0]["label"].endswith("(teacher)")
    paired = claims.paired_comparisons([r for r in study if r["config"]["setting"] == "corrected"], n_boot=500)
    assert {"label", "diff", "ci_low", "ci_high", "p", "p_holm"} <= set(paired.columns)
    row = paired[paired["label"] == "KD(T1,S1) B->B+PMD"].iloc[0]
    assert row["baseline"] == "S1 baseline" and row["n_pairs"] == 8
    assert row["diff"] == pytest.approx(0.06, abs=0.01) and row["ci_low"] > 0
    assert not paired["label"].str.contains("teacher").any()
    both = claims.paired_comparisons(study, n_boot=200)
    assert both["label"].str.endswith("(faithful)").any()


def test_labels_and_thesis_lookup():
    spec = claims.kd_spec("T1", "S1", "B+E", True)
    assert claims.label(spec) == "KD(T1,S1) B->B+E->E+PMD"
    assert claims.thesis_value(spec) == pytest.approx(0.756)
    assert claims.label(claims.baseline_spec("S1", 1.0)) == "S1 baseline (100% data)"
    assert claims.thesis_value(claims.baseline_spec("S1", 1.0)) == pytest.approx(0.763)
    assert math.isnan(claims.thesis_value(claims.kd_spec("T2", "S2", "D", False)))
    for row in experiments.thesis_rows():
        assert claims.thesis_value(claims.spec_of_row(row)) == pytest.approx(
            next(r["dice"] for r in experiments.thesis_rows() if claims.spec_of_row(r) == claims.spec_of_row(row)))
