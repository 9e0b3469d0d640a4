"""Claims, ANOVA and summaries on fake studies whose true effects we chose, laid out as the
real design: 3 folds, each testing its own patients with its own 3 seeds."""
from __future__ import annotations

import math

import pytest

from kdlib import claims, experiments, records, stats

try:
    from test_tables import CASES, fake_study
except ImportError:  # tests collected as a package
    from tests.test_tables import CASES, fake_study

EFFECTS = {  # Dice gains over the student's baseline (baselines: S1 0.70, S2 0.76, S1 on 100% 0.73)
    "KD(T1,S1) B->B+PMD": 0.06,   # Table 4.2 KD(T1,S1): clearly helps S1, and is the best +PMD variant
    "KD(T1,S2) B->B+PMD": 0.03,   # ... and S2, by less                            -> claims 1, 5, 8
    "S1 control": 0.08,           # ... but the KD recipe alone helps S1 more     -> claim 1 vs control
    "S2 control": 0.0,
    "KD(T1,S1) E->E": 0.04,       # E beats B (0.0) and D (-0.02) for T1->S1      -> claim 2
    "KD(T1,S1) D->D": -0.02,
    "KD(T1,S1) B->B+E->E+D->D": -0.04,  # all scales worse than B, E and D       -> claim 3
    "KD(T1,S1) B->B MSE": -0.04,  # contrastive beats MSE at B                    -> claim 4
    "KD(T2,S1) E->E+PMD": 0.03,   # T2 no better than T1                           -> claim 6
    "KD(T2,S2) B->B+PMD": 0.03,
    "KD(T1,S1) B->B (100% data)": -0.03,  # B->B on 50% (0.70) vs on 100% (0.73 - 0.03) -> claim 7
}
BASE = {"S1 (100% data)": 0.73}
FRAMINGS = ("population", "these-patients")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return fake_study(tmp_path_factory.mktemp("claims") / "runs", effects=EFFECTS, base=BASE,
                      settings=("corrected", "faithful"), folds=3, noise=0.001)


@pytest.fixture(scope="module")
def table(study):
    return claims.claims_table(study)


def _rows(df, cid, setting="corrected", framing=None):
    rows = df[(df["claim_id"] == cid) & (df["setting"] == setting)]
    return rows if framing is None else rows[rows["framing"] == framing]


def _one(df, comparison, setting="corrected", framing="these-patients", role=None):
    rows = df[(df["comparison"] == comparison) & (df["setting"] == setting) & (df["framing"] == framing)]
    if role is not None:
        rows = rows[rows["role"] == role]
    assert len(rows) == 1, comparison
    return rows.iloc[0]


def test_claims_table_shape(table):
    assert list(table.columns) == claims.CLAIM_COLUMNS
    assert set(table["claim_id"]) == {str(i) for i in range(1, 9)}
    assert set(table["verdict"]) <= set(stats.VERDICTS) and set(table["framing"]) == set(FRAMINGS)
    assert set(table["role"]) == {claims.CLAIM, claims.EXTENSION}
    n_rows = len(claims.comparisons())
    assert len(table) == n_rows * 2 * 2  # rows x framings x settings
    assert (table["n_patients"] == len(CASES)).all() and (table["folds"] == 3).all()
    assert (table["n_runs"] == 9).all() and (table["seeds_per_fold"] == "3/3/3").all()  # never counted as patients
    assert table["basis"].str.contains("unit: patient").all()
    with_thesis = table["thesis_effect"].notna()  # control rows have no thesis value
    assert set(table[with_thesis]["consistent_with_thesis"]) <= {"yes", "no"}
    assert (table[~with_thesis]["consistent_with_thesis"] == "–").all()
    assert table[~with_thesis]["comparison"].str.contains("control").all()
    assert (table[table["verdict"] != "not testable here"]["ci_level"] >= 0.95).all()


def test_single_run_per_configuration_is_not_testable(study):
    one = [r for r in study if r["config"]["seed"] == 0]
    df = claims.claims_table(one)
    these = df[df["framing"] == "these-patients"]
    assert (these["verdict"] == "not testable here").all()
    assert these["note"].str.contains("run-to-run variation is not measured").all()
    # one seed per fold still answers for new patients from the spread of 3 fold means
    assert df[df["framing"] == "population"]["ci_low"].isna().sum() == 0


def test_two_folds_cannot_answer_for_new_patients(tmp_path):
    runs = fake_study(tmp_path / "runs", effects=EFFECTS, base=BASE, folds=2, noise=0.001)
    df = claims.claims_table(runs)
    population = df[df["framing"] == "population"]
    assert (population["verdict"] == "not testable here").all()
    assert population["note"].str.contains("not testable here: 2 fold").all()
    assert population["p"].isna().all() and population["ci_low"].isna().all()
    these = df[df["framing"] == "these-patients"]
    assert (these["verdict"] != "not testable here").any()


def test_pooled_fallback_uses_folds_not_seeds(tmp_path):
    runs = fake_study(tmp_path / "runs", effects=EFFECTS, base=BASE, with_cases=False, seeds=(0, 1), folds=3)
    df = claims.claims_table(runs)
    assert df["basis"].str.startswith("pooled dice").all()
    assert (df["n_patients"] == 3).all()  # three fold test sets, not six runs


def test_every_claim_cites_the_thesis_sentence():
    text = " ".join((experiments.THESIS_TABLES.parent.parent.parent / "shared" / "reference"
                     / "thesis_full_text.txt").read_text().split()) \
        if (experiments.THESIS_TABLES.parent.parent.parent / "shared" / "reference").exists() else None
    for claim in claims.CLAIMS:
        assert claim["sentence"] and claim["comparisons"]
        assert any(row["role"] == claims.CLAIM for row in claim["comparisons"])
        if text is not None:  # the quoted words (before the first bracket) occur in the thesis
            quoted = claim["sentence"].split(" (")[0].split(" [...]")[0].split("; ")[0]
            assert quoted in text, claim["claim_id"]


def _labels(claim_id, role=claims.CLAIM):
    return [claims._comparison_text(row["terms"]) for claim, row in claims.comparisons()
            if claim["claim_id"] == claim_id and row["role"] == role]


def test_claim_rows_test_the_sentences_as_they_read():
    by_id = {c["claim_id"]: c for c in claims.CLAIMS}
    first, = [row for row in by_id["7"]["comparisons"] if row["role"] == claims.CLAIM]
    # B->B on 50% (0.617 IoU) against B->B on 100% (0.615): "better", so a test of > 0
    assert [round(claims.thesis_value(s, "iou"), 3) for _, s in first["terms"]] == [0.617, 0.615]
    kinds = {(c["claim_id"], r["role"]): r["kind"] for c, r in claims.comparisons()}
    assert kinds[("7", claims.CLAIM)] == "greater" and kinds[("7", claims.EXTENSION)] == "at least"
    # claim 1: both halves of the sentence (S1 and S2 against their baselines); controls are ours
    assert _labels("1") == ["KD(T1,S1) B->B+PMD − S1 baseline", "KD(T1,S2) B->B+PMD − S2 baseline"]
    assert all("control" in lab for lab in _labels("1", claims.EXTENSION))
    # claim 3 speaks of Table 4.3 (T1->S1) only, against each single scale
    assert _labels("3") == [f"KD(T1,S1) B->B+E->E+D->D − KD(T1,S1) {s}->{s}" for s in "BED"]
    assert not _labels("3", claims.EXTENSION)
    # claim 5: PMD helps, and B->B+PMD is the best T1->S1 variant of Table 4.7
    best = [lab for lab in _labels("5") if lab.startswith("KD(T1,S1) B->B+PMD − ")]
    assert len(best) == 7 and "KD(T1,S1) B->B+PMD − KD(T1,S1) B->B+E->E+D->D+PMD" in best
    # claim 8 is about KD(T1, .): no T2 row at all
    assert _labels("8") == ["[KD(T1,S1) B->B+PMD − S1 baseline] − [KD(T1,S2) B->B+PMD − S2 baseline]"]
    assert not any("T2" in lab for lab in _labels("8") + _labels("8", claims.EXTENSION))


def test_verdicts_follow_the_planted_effects(table):
    for framing in FRAMINGS:
        against_base = _one(table, "KD(T1,S1) B->B+PMD − S1 baseline", framing=framing)
        assert against_base["verdict"] == "supported" and against_base["effect"] == pytest.approx(0.06, abs=0.005)
        assert against_base["thesis_effect"] == pytest.approx(0.772 - 0.715)
        assert against_base["consistent_with_thesis"] in ("yes", "no")
        assert _rows(table, "1", framing=framing)["claim_verdict"].eq("supported").all()
        against_control = _one(table, "KD(T1,S1) B->B+PMD − S1 control (KD recipe, no teacher)", framing=framing)
        assert against_control["verdict"] == "contradicted" and against_control["role"] == claims.EXTENSION
        assert (_rows(table, "2", framing=framing)["verdict"] == "supported").all()
        assert (_rows(table, "3", framing=framing)["verdict"] == "supported").all()
        assert _one(table, "KD(T1,S1) B->B − KD(T1,S1) B->B MSE", framing=framing)["verdict"] == "supported"
        pmd = _one(table, "KD(T1,S1) B->B+PMD − KD(T1,S1) B->B", framing=framing)
        assert pmd["verdict"] == "supported" and "identically zero" not in pmd["note"]
        assert _rows(table, "5", framing=framing)["claim_verdict"].eq("supported").all()
        c6 = _rows(table, "6", framing=framing)               # T2 - T1 = -0.03 and 0.0 < margin
        assert (c6["verdict"] == "supported").all()
        c7 = _rows(table, "7", framing=framing)               # 0.70 vs 0.70: not better, but non-inferior
        assert list(c7["verdict"]) == ["inconclusive", "supported"]
        assert list(c7["claim_verdict"]) == ["inconclusive", "inconclusive"]
        s1_vs_s2 = _rows(table, "8", framing=framing).iloc[0]
        assert s1_vs_s2["verdict"] == "supported" and s1_vs_s2["effect"] == pytest.approx(0.03, abs=0.005)
    assert "identically zero" in _one(table, "KD(T1,S1) B->B+PMD − KD(T1,S1) B->B", "faithful")["note"]
    # inconclusive rows say what effect this design could detect; the others do not
    assert table[table["verdict"] == "inconclusive"]["mde"].notna().all()
    assert table[table["verdict"] != "inconclusive"]["mde"].isna().all()
    assert (table["p_holm"].dropna() >= table["p"].dropna()).all()


def test_the_last_epoch_verdicts_stand_beside_the_kept_ones(table):
    # the fake runs lose 0.01 Dice everywhere at their last epoch: contrasts and verdicts unchanged
    assert (table["effect_last_epoch"] - table["effect"]).abs().max() < 1e-9
    assert list(table["verdict_last_epoch"]) == list(table["verdict"])


CRITERION_KIND = {"CI above 0": "greater", "CI below 0": "less", f"CI below +{claims.MARGIN:g}": "at most",
                  f"CI above -{claims.MARGIN:g}": "at least"}


def test_no_verdict_contradicts_its_interval(table):
    decided = table[table["verdict"].isin(["supported", "contradicted"])]
    assert len(decided) > 20
    for row in decided.itertuples():
        assert row.p_holm < claims.ALPHA
        assert stats.verdict(row.ci_low, row.ci_high, CRITERION_KIND[row.criterion], claims.MARGIN) == row.verdict


def test_holm_decides_the_verdicts(tmp_path):
    """A row significant on its own (p < 0.05) but not after Holm over the family reads
    inconclusive: the claims table no longer judges each row alone."""
    runs = fake_study(tmp_path / "runs", effects=dict(EFFECTS, **{"KD(T1,S2) B->B+PMD": 0.008}), base=BASE,
                      folds=3, noise=0.004)
    df = claims.claims_table(runs)
    row = _one(df, "KD(T1,S2) B->B+PMD − S2 baseline")
    assert row["p"] < 0.05 <= row["p_holm"]
    assert row["verdict"] == "inconclusive"
    m = df[df["framing"] == "these-patients"]["p"].notna().sum()
    assert row["p_holm"] >= min(1.0, row["p"] * 2) and m > 20


def test_margin_claims_are_tested_against_their_margin(study, table):
    index = claims.RunIndex([r for r in study if r["config"]["setting"] == "corrected"])
    (claim, comp), = [(c, r) for c, r in claims.comparisons() if c["claim_id"] == "6"][:1]
    result = claims.contrast(index, comp["terms"], "corrected", framing="these-patients")
    row = _one(table, claims._comparison_text(comp["terms"]))
    assert row["p"] == pytest.approx(stats.boundary_p(result["estimate"], result["se"], result["df"], "at most",
                                                      claims.MARGIN))
    assert row["p"] != pytest.approx(result["p"])  # not the test of 0


def test_per_run_effects_are_in_the_estimates_unit(study):
    """per_run_effects: each (fold, seed)'s mean over its patients, the unit of the estimate,
    not the pooled Dice (which weights big volumes more)."""
    corrected = [r for r in study if r["config"]["setting"] == "corrected"]
    skewed = [dict(r, metrics=dict(r["metrics"], pooled=dict(r["metrics"]["pooled"], dice=0.0)))
              if r["config"]["role"] == "baseline" else r for r in corrected]
    index = claims.RunIndex(skewed)
    result = claims.contrast(index, claims._gain("T1", "S1", "baseline"), "corrected")
    effects = [float(v) for v in result["per_run_effects"].split(", ")]
    assert effects == pytest.approx([row.mean() for b in result["blocks"] for row in b], abs=1e-3)
    assert max(effects) < 0.2  # a pooled Dice of 0 would make them ~0.76


def test_power_table(study):
    df = claims.power_table([r for r in study if r["config"]["setting"] == "corrected"])
    assert list(df.columns) == claims.POWER_COLUMNS
    assert len(df) == 2 * len(claims.comparisons()) and set(df["framing"]) == set(FRAMINGS)
    row = df[(df["comparison"] == "KD(T1,S1) B->B+PMD − S1 baseline") & (df["framing"] == "these-patients")].iloc[0]
    assert row["thesis_effect"] == pytest.approx(0.057) and row["sd_seed"] >= 0
    assert int(row["seeds_per_fold_needed"]) >= 2 and row["patients_needed"] == "–"
    pop = df[(df["comparison"] == "KD(T1,S1) B->B+PMD − S1 baseline") & (df["framing"] == "population")].iloc[0]
    assert pop["patients_needed"] != "–"
    controls = df[df["comparison"].str.contains("control")]
    assert controls["note"].str.contains("no power target").all()


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
    assert "9 (fold, seed) replicate(s)" in ours.iloc[0]["note"]
    # a configuration run on other seeds is compared only on the seeds all share
    partial = [r for r in study if not (r["config"]["seed"] == 2 and r["config"].get("role") == "baseline")]
    assert "6 (fold, seed)" in claims.anova_table(partial).iloc[3]["note"]
    groups = claims.anova_groups_rows()
    assert len(groups["S1"]) == 1 and len(groups["KD(T1,S1)"]) == 12
    assert claims.anova_table([]).shape[0] == 3


def test_configuration_summary_and_paired(study):
    summary = claims.configuration_summary(study)
    s1 = summary[(summary["label"] == "S1 baseline") & (summary["setting"] == "corrected")].iloc[0]
    assert s1["n_runs"] == 9 and s1["n_folds"] == 3 and s1["patients"] == len(CASES)
    assert s1["ci_low"] <= s1["patient_mean"] <= s1["ci_high"] and s1["ci_method"] == "fold-level t"
    assert s1["pooled_last_epoch"] == pytest.approx(s1["pooled_best"] - 0.01)
    assert s1["thesis"] == pytest.approx(0.715) and "4.2" in s1["thesis_rows"]
    assert summary.iloc[0]["label"].endswith("(teacher)")
    corrected = [r for r in study if r["config"]["setting"] == "corrected"]
    paired = claims.paired_comparisons(corrected)
    row = paired[(paired["label"] == "KD(T1,S1) B->B+PMD") & (paired["reference"] == "S1 baseline")].iloc[0]
    assert row["n_pairs"] == len(CASES) and row["diff"] == pytest.approx(0.06, abs=0.01) and row["ci_low"] > 0
    # the same contrast gets the same interval as the claims' (one method everywhere): 95%, population
    index = claims.RunIndex(corrected)
    for framing, low, high in (("population", "ci_low", "ci_high"), ("these-patients", "these_low", "these_high")):
        same = claims.contrast(index, claims._gain("T1", "S1", "baseline"), "corrected", framing=framing)
        assert (row[low], row[high]) == pytest.approx((same["ci_low"], same["ci_high"]))
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
    expected = sum(len(records.case_values(run) or {}) for run in study
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
    only_headline = [run for run, desc in records.describe_runs(corrected)
                     if any(experiments.row_matches(h, desc) for h in headline)]
    assert {r["config"]["role"] for r in only_headline} >= {"baseline", "kd"}
    assert report.tables_not_run(only_headline) == list(experiments.ABLATION_TABLES)
    df = claims.claims_table(only_headline, not_run_tables=report.tables_not_run(only_headline))
    assert set(df[df["claim_id"] == "4"]["verdict"]) == {"not run in this profile"}
    # one run of a row of its own makes that table run
    own = [run for run, desc in records.describe_runs(corrected)
           if not any(experiments.row_matches(h, desc) for h in headline)
           and any(experiments.row_matches(row, desc) for row in experiments.thesis_rows(["4.10"]))]
    assert "4.10" not in report.tables_not_run(only_headline + own[:1])


def _with_rule(run, stopped, best_epoch, epochs_run=10, patience=2):
    config = dict(run["config"], patience=patience)
    metrics = dict(run["metrics"], stopped=stopped, epochs_run=epochs_run, best_epoch=best_epoch)
    return dict(run, config=config, metrics=metrics)


def test_a_comparison_with_a_run_still_improving_is_not_testable(study):
    """A model that has not converged answers no question: its interval is shown, but the
    verdict is "not testable here" and the note says which configuration did not settle.
    Judged on the criterion that kept the checkpoint: a run stopped early (by its Dice) whose
    kept epoch is within `patience` of its end has not settled either."""
    corrected = [r for r in study if r["config"]["setting"] == "corrected"]
    settled = [_with_rule(r, "early", 5) for r in corrected]
    for stopped in ("cap", "early"):
        baseline_open = [_with_rule(r, stopped, 9) if r["config"]["role"] == "baseline" and r["config"]["model"] == "S1"
                         else _with_rule(r, "early", 5) for r in corrected]
        before, after = (_rows(claims.claims_table(runs), "1", framing="these-patients")
                         for runs in (settled, baseline_open))
        vs_baseline = after["comparison"].str.endswith("S1 baseline")
        assert (before["verdict"] != "not testable here").all()
        assert (after[vs_baseline]["verdict"] == "not testable here").all()
        assert after[vs_baseline]["note"].str.contains("not converged: runs of S1 baseline").all()
        assert list(after[vs_baseline]["effect"]) == list(before[vs_baseline]["effect"])  # still shown
        assert after[vs_baseline]["ci_low"].notna().all()
        assert list(after[~vs_baseline]["verdict"]) == list(before[~vs_baseline]["verdict"])  # the others stand


def test_a_student_inherits_its_teachers_non_convergence(study):
    corrected = [r for r in study if r["config"]["setting"] == "corrected"]
    t1_fold0 = [r for r in corrected if r["config"]["role"] == "teacher" and r["config"]["model"] == "T1"
                and r["config"]["split"] == "split-fold0.json"]
    assert len(t1_fold0) == 1
    open_teacher = [_with_rule(r, "cap", 10) if r is t1_fold0[0] else _with_rule(r, "early", 5) for r in corrected]
    df = claims.claims_table(open_teacher)
    these = df[df["framing"] == "these-patients"]
    uses_t1 = these["comparison"].str.contains("KD(T1,", regex=False)
    assert (these[uses_t1]["verdict"] == "not testable here").all()
    assert these[uses_t1]["note"].str.contains("its teacher T1").all()
    by_name = {r["run_dir"].split("/")[-1]: r for r in open_teacher}
    student = next(r for r in open_teacher if r["config"].get("teacher_run") == str(t1_fold0[0]["run_dir"]))
    assert records.unsettled(student, by_name) == ["its teacher T1"]


def test_seed_sd_is_the_within_fold_sd_of_seed_means():
    import numpy as np

    blocks = [np.array([[1.0, 1.0], [3.0, 3.0]]),  # seed means 1 and 3: variance 2
              np.array([[0.0, 2.0], [2.0, 0.0]]),  # seed means 1 and 1: variance 0
              np.array([[5.0, 9.0]])]              # one seed: no within-fold variance, left out
    assert claims.seed_sd(blocks) == pytest.approx(1.0)
    assert math.isnan(claims.seed_sd([np.array([[1.0, 2.0]])]))


def test_headline_points_are_each_seeds_paired_difference(study, table):
    from kdlib import figures

    points = claims.headline_points(study, "corrected")
    assert set(points["claim_id"]) == set(claims.HEADLINE_CLAIMS)
    per_comparison = points.groupby(["comparison", "role"], sort=False)
    assert len(per_comparison) == 6 and (per_comparison.size() == 3 * 3).all()  # 3 folds x 3 seeds
    expected = {("KD(T1,S1) B->B+PMD − S1 baseline", claims.CLAIM): 0.06,
                ("KD(T1,S2) B->B+PMD − S2 baseline", claims.CLAIM): 0.03,
                ("KD(T1,S1) B->B+PMD − S1 control (KD recipe, no teacher)", claims.EXTENSION): -0.02}
    for key_, effect in expected.items():
        part = per_comparison.get_group(key_)
        assert (abs(part["effect"] - effect) < 0.01).all(), key_
        assert part["seed_sd"].iloc[0] < 0.01  # the study's seed noise is 0.001
    figs = figures.headline_contrasts(points, table[table["setting"] == "corrected"])
    assert list(figs) == ["claim1_1", "claim1_2", "claim1_3", "claim1_4", "claim8_1", "claim8_2"]
    text = " ".join(t.get_text() for t in figs["claim1_1"].axes[0].get_xticklabels())
    assert "population" in text and "these-patients" in text and "last epoch" in text
