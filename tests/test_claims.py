"""Claims, ANOVA and summaries on fake studies whose true effects we chose, laid out as the
real design: 2 folds, each testing its own 4 patients with its own 3 seeds."""
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
    "S1 control": 0.08,           # ... but the KD recipe alone helps more       -> claim 1 vs control
    "KD(T1,S1) E->E": 0.04,       # E beats B (0.0) and D (-0.02) for T1->S1      -> claim 2
    "KD(T1,S1) D->D": -0.02,
    "KD(T1,S1) B->B+E->E+D->D": -0.03,  # all scales worse than B                 -> claim 3
    "KD(T1,S1) B->B MSE": -0.04,  # contrastive beats MSE at B                    -> claim 4
    "KD(T1,S2) B->B+PMD": 0.01,   # S2 gains little                                -> claim 8
    "KD(T2,S1) E->E+PMD": 0.03,   # T2 no better than T1                           -> claim 6
    "KD(T2,S2) B->B+PMD": 0.01,
    "KD(T1,S1) B->B (100% data)": -0.03,  # B->B on 50% (0.70) vs on 100% (0.73 - 0.03) -> claim 7
}
BASE = {"S1 (100% data)": 0.73}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return fake_study(tmp_path_factory.mktemp("claims") / "runs", effects=EFFECTS, base=BASE,
                      settings=("corrected", "faithful"), folds=2)


@pytest.fixture(scope="module")
def table(study):
    return claims.claims_table(study)


def _rows(df, cid, setting="corrected"):
    return df[(df["claim_id"] == cid) & (df["setting"] == setting)]


def _one(df, comparison, setting="corrected"):
    rows = df[(df["comparison"] == comparison) & (df["setting"] == setting)]
    assert len(rows) == 1, comparison
    return rows.iloc[0]


def test_claims_table_shape(table):
    expected = {"claim_id", "claim", "comparison", "setting", "verdict", "effect", "ci_low", "ci_high",
                "thesis_effect", "consistent_with_thesis", "criterion", "mde", "n_patients", "n_folds",
                "n_runs", "p", "p_holm", "basis", "thesis_says", "note"}
    assert expected <= set(table.columns)
    assert set(table["claim_id"]) == {str(i) for i in range(1, 9)}
    assert set(table["verdict"]) <= set(stats.VERDICTS)
    assert (table["n_patients"] == len(CASES)).all() and (table["n_folds"] == 2).all()
    assert (table["n_runs"] == 6).all()  # 2 folds x 3 seeds: never counted as patients
    assert table["basis"].str.contains("unit: patient").all()
    with_thesis = table["thesis_effect"].notna()  # control rows have no thesis value
    assert set(table[with_thesis]["consistent_with_thesis"]) <= {"yes", "no"}
    assert (table[~with_thesis]["consistent_with_thesis"] == "–").all()
    assert table[~with_thesis]["comparison"].str.contains("control").all()


def test_every_claim_cites_the_thesis_sentence():
    text = " ".join((experiments.THESIS_TABLES.parent.parent.parent / "shared" / "reference"
                     / "thesis_full_text.txt").read_text().split()) \
        if (experiments.THESIS_TABLES.parent.parent.parent / "shared" / "reference").exists() else None
    for claim in claims.CLAIMS:
        assert claim["sentence"] and claim["comparisons"]
        if text is not None:  # the quoted words (before the first bracket) occur in the thesis
            quoted = claim["sentence"].split(" (")[0].split(" [...]")[0].split("; ")[0]
            assert quoted in text, claim["claim_id"]


def test_claim_rows_match_the_thesis_text():
    by_id = {c["claim_id"]: c for c in claims.CLAIMS}
    (terms, _), = by_id["7"]["comparisons"]  # B->B on 50% (0.617 IoU) against B->B on 100% (0.615)
    assert [round(claims.thesis_value(s, "iou"), 3) for _, s in terms] == [0.617, 0.615]
    (t1, _), (t1c, _) = by_id["1"]["comparisons"]
    assert claims.thesis_value(t1[0][1]) == pytest.approx(0.772)
    assert claims.label(t1c[1][1]).startswith("S1 control")
    assert len(by_id["8"]["comparisons"]) == 4  # T1 and T2, against baseline and against control


def test_verdicts_follow_the_planted_effects(table):
    c1 = _rows(table, "1")
    against_base = c1[c1["comparison"] == "KD(T1,S1) B->B+PMD − S1 baseline"].iloc[0]
    assert against_base["verdict"] == "supported" and against_base["effect"] == pytest.approx(0.06, abs=0.01)
    assert against_base["thesis_effect"] == pytest.approx(0.772 - 0.715)
    assert against_base["consistent_with_thesis"] == "yes"
    against_control = c1[c1["comparison"].str.endswith("S1 control (KD recipe, no teacher)")].iloc[0]
    assert against_control["verdict"] == "contradicted" and against_control["effect"] == pytest.approx(-0.02, abs=0.01)
    c2 = _rows(table, "2")
    assert (c2["verdict"] == "supported").all() and len(c2) == 2  # E > B and E > D for T1->S1
    assert _one(table, "KD(T1,S1) B->B+E->E+D->D − KD(T1,S1) B->B")["verdict"] == "supported"
    assert _one(table, "KD(T1,S1) B->B − KD(T1,S1) B->B MSE")["verdict"] == "supported"
    pmd = _one(table, "KD(T1,S1) B->B+PMD − KD(T1,S1) B->B")
    assert pmd["verdict"] == "supported" and "identically zero" not in pmd["note"]
    assert "identically zero" in _one(table, "KD(T1,S1) B->B+PMD − KD(T1,S1) B->B", "faithful")["note"]
    c6 = _rows(table, "6").iloc[0]                          # T2 - T1 = -0.03 < margin
    assert c6["verdict"] == "supported" and c6["effect"] == pytest.approx(-0.03, abs=0.01)
    c7 = _rows(table, "7").iloc[0]                          # 0.70 vs 0.70: non-inferior
    assert c7["verdict"] == "supported" and c7["effect"] == pytest.approx(0.0, abs=0.01)
    c8 = _rows(table, "8")
    s1_vs_s2 = c8[c8["comparison"] == "[KD(T1,S1) B->B+PMD − S1 baseline] − [KD(T1,S2) B->B+PMD − S2 baseline]"]
    assert s1_vs_s2["verdict"].iloc[0] == "supported" and s1_vs_s2["effect"].iloc[0] == pytest.approx(0.05, abs=0.01)
    assert s1_vs_s2["thesis_effect"].iloc[0] == pytest.approx((0.772 - 0.715) - (0.794 - 0.770))
    # inconclusive rows say what effect this design could detect; the others do not
    assert table[table["verdict"] == "inconclusive"]["mde"].notna().all()
    assert table[table["verdict"] != "inconclusive"]["mde"].isna().all()
    assert (table["p_holm"].dropna() >= table["p"].dropna()).all()


def test_no_verdict_contradicts_its_interval(table):
    for row in table.itertuples():
        if row.verdict == "supported":
            assert not (row.ci_low <= 0 <= row.ci_high) or row.criterion.startswith("CI above -") \
                or row.criterion.startswith("CI below +")


def test_not_testable_and_not_run(study):
    only_baselines = [r for r in study if r["config"]["role"] != "kd"]
    df = claims.claims_table(only_baselines)
    assert (df["verdict"] == "not testable here").all()
    assert df["note"].str.contains("no runs for").all()
    empty = claims.claims_table([])
    assert (empty["verdict"] == "not testable here").all() and len(empty) > 8
    grid_skipped = claims.claims_table(only_baselines, not_run_tables=experiments.ABLATION_TABLES)
    c2 = grid_skipped[grid_skipped["claim_id"] == "2"]
    assert (c2["verdict"] == "not run in this profile").all()
    c1 = grid_skipped[grid_skipped["claim_id"] == "1"]   # Table 4.2's KD run is missing: not deliberate
    assert (c1["verdict"] == "not testable here").all()


def test_single_run_per_configuration_is_not_testable(study):
    one = [r for r in study if r["config"]["seed"] == 0 and r["config"]["split"] == "split-fold0.json"]
    df = claims.claims_table(one)
    assert (df["verdict"] == "not testable here").all()
    assert df["note"].str.contains("run-to-run variation is not measured").all()


def test_pooled_fallback_uses_folds_not_seeds(tmp_path):
    runs = fake_study(tmp_path / "runs", effects=EFFECTS, base=BASE, with_cases=False, seeds=(0, 1), folds=2)
    df = claims.claims_table(runs)
    assert df["basis"].str.startswith("pooled dice").all()
    assert (df["n_patients"] == 2).all()  # two fold test sets, not four runs


def test_anova_table(study):
    df = claims.anova_table(study)
    tab, text, solved = df.iloc[0], df.iloc[1], df.iloc[2]
    assert (tab["df_between"], tab["df_within"]) == (1, 11) and tab["F"] == pytest.approx(4.40, abs=0.01)
    assert text["F"] == pytest.approx(5.69, abs=0.01) and "'0.55'" in text["source"]
    assert solved["F"] == pytest.approx(5.48, abs=0.02) and "solved" in solved["source"]
    assert "text's" not in solved["source"]
    ours = df[df["setting"] == "corrected"]
    assert list(ours["source"]) == ["ours: one value per configuration"]
    assert ours.iloc[0]["configurations"] == "13 / 13" and ours.iloc[0]["df_within"] == 11
    assert "6 (fold, seed) replicate(s)" in ours.iloc[0]["note"]
    # a configuration run on other seeds is compared only on the seeds all share
    partial = [r for r in study if not (r["config"]["seed"] == 2 and r["config"].get("role") == "baseline")]
    assert "4 (fold, seed)" in claims.anova_table(partial).iloc[3]["note"]
    groups = claims.anova_groups_rows()
    assert len(groups["S1"]) == 1 and len(groups["KD(T1,S1)"]) == 12
    assert claims.anova_table([]).shape[0] == 3


def test_configuration_summary_and_paired(study):
    summary = claims.configuration_summary(study)
    s1 = summary[(summary["label"] == "S1 baseline") & (summary["setting"] == "corrected")].iloc[0]
    assert s1["n_runs"] == 6 and s1["n_folds"] == 2 and s1["patients"] == len(CASES)
    assert s1["ci_low"] <= s1["patient_mean"] <= s1["ci_high"] and s1["ci_method"] == "nested"
    assert s1["pooled_last_epoch"] == pytest.approx(s1["pooled_best"] - 0.01)
    assert s1["thesis"] == pytest.approx(0.715) and "4.2" in s1["thesis_rows"]
    assert summary.iloc[0]["label"].endswith("(teacher)")
    corrected = [r for r in study if r["config"]["setting"] == "corrected"]
    paired = claims.paired_comparisons(corrected)
    row = paired[(paired["label"] == "KD(T1,S1) B->B+PMD") & (paired["reference"] == "S1 baseline")].iloc[0]
    assert row["n_pairs"] == len(CASES) and row["diff"] == pytest.approx(0.06, abs=0.01) and row["ci_low"] > 0
    # the same contrast gets the same interval in the claims table (one method everywhere)
    claim = _one(claims.claims_table(corrected), "KD(T1,S1) B->B+PMD − S1 baseline")
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((claim["ci_low"], claim["ci_high"]))
    assert set(paired["reference"]) == {"S1 baseline", "S2 baseline", "S1 control (KD recipe, no teacher)",
                                        "S2 control (KD recipe, no teacher)", "S1 baseline (100% data)"}
    both = claims.paired_comparisons(study)
    assert both["label"].str.endswith("(faithful)").any()


def test_labels_and_thesis_lookup():
    spec = claims.kd_spec("T1", "S1", "E+B", True)
    assert claims.label(spec) == "KD(T1,S1) B->B+E->E+PMD"
    assert claims.thesis_value(spec) == pytest.approx(0.756)
    assert claims.label(claims.baseline_spec("S1", 1.0)) == "S1 baseline (100% data)"
    assert claims.thesis_value(claims.baseline_spec("S1", 1.0)) == pytest.approx(0.763)
    assert math.isnan(claims.thesis_value(claims.kd_spec("T2", "S2", "D", False)))
    assert math.isnan(claims.thesis_value(claims.control_spec("S1")))


def test_per_patient_points_keep_every_patient_and_seed(study):
    from kdlib import figures

    points = claims.per_patient_points(study)
    # every finished run contributes one value per patient it tested, nothing is averaged
    expected = sum(len(claims.case_values(run) or {}) for run in study
                   if run["config"]["role"] != "teacher")
    students = points[~points["label"].str.endswith("(teacher)")]
    assert len(students) == expected
    assert set(points["seed"]) == {r["config"]["seed"] for r in study}
    assert points.groupby(["setting", "label", "patient", "seed"]).size().max() == 1
    fig = figures.per_patient_plot(points, synthetic=True)
    assert len(fig.axes[0].get_yticklabels()) == points["label"].nunique()
    assert "SYNTHETIC" in fig.axes[0].get_title()


def test_a_headline_only_profile_ran_no_ablation_table_and_its_claims_say_so(study):
    """Table 4.2's distilled students reappear as rows of Tables 4.4-4.9; a profile that
    trained only Table 4.2 (real-mini) still did not run those tables, so a claim resting on
    their other rows is "not run in this profile", not "not testable here"."""
    from kdlib import report, tables

    headline = experiments.thesis_rows(["4.2"])
    corrected = [r for r in study if r["config"]["setting"] == "corrected"]
    only_headline = [run for run, desc in tables.describe_runs(corrected)
                     if any(experiments.row_matches(h, desc) for h in headline)]
    assert {r["config"]["role"] for r in only_headline} >= {"baseline", "kd"}
    assert report.tables_not_run(only_headline) == list(experiments.ABLATION_TABLES)
    df = claims.claims_table(only_headline, not_run_tables=report.tables_not_run(only_headline))
    assert set(df[df["claim_id"] == "4"]["verdict"]) == {"not run in this profile"}
    # one run of a row of its own makes that table run
    own = [run for run, desc in tables.describe_runs(corrected)
           if not any(experiments.row_matches(h, desc) for h in headline)
           and any(experiments.row_matches(row, desc) for row in experiments.thesis_rows(["4.10"]))]
    assert "4.10" not in report.tables_not_run(only_headline + own[:1])


def test_a_comparison_with_a_run_still_improving_at_its_cap_is_not_testable(study):
    """A model that has not converged answers no question: its interval is shown, but the
    verdict is "not testable here" and the note says which configuration did not settle."""
    def with_rule(run, stopped, best_epoch):
        config = dict(run["config"], patience=2)
        metrics = dict(run["metrics"], stopped=stopped, epochs_run=10, best_epoch=best_epoch)
        return dict(run, config=config, metrics=metrics)

    corrected = [r for r in study if r["config"]["setting"] == "corrected"]
    settled = [with_rule(r, "early", 5) for r in corrected]
    baseline_open = [with_rule(r, "cap", 10) if r["config"]["role"] == "baseline" and r["config"]["model"] == "S1"
                     else with_rule(r, "early", 5) for r in corrected]
    before, after = (_rows(claims.claims_table(runs), "1") for runs in (settled, baseline_open))
    vs_baseline = after["comparison"].str.endswith("S1 baseline")
    assert (before["verdict"] != "not testable here").all()
    assert (after[vs_baseline]["verdict"] == "not testable here").all()
    assert after[vs_baseline]["note"].str.contains("not converged: runs of S1 baseline").all()
    assert list(after[vs_baseline]["ci_low"]) == list(before[vs_baseline]["ci_low"])  # interval still shown
    assert list(after[~vs_baseline]["verdict"]) == list(before[~vs_baseline]["verdict"])  # the control row stands
