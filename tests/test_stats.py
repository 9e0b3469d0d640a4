"""kdlib.stats: the thesis's section 4.7 ANOVA, the one interval method (with a coverage
simulation of the real design), verdicts (with a property test) and power."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from kdlib import stats as S
from kdlib.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
CSV_CANDIDATES = [REPO / "kdlib" / "thesis_tables.csv",
                  Path("/work/shared/reference/thesis_tables.csv")]


def _csv_path() -> Path:
    for p in CSV_CANDIDATES:
        if p.exists():
            return p
    pytest.skip("thesis_tables.csv not available")


@pytest.fixture(scope="module")
def thesis_rows():
    with open(_csv_path(), newline="") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ ANOVA
def test_anova_by_hand():
    # a = [1,2,3], b = [4,5,6]; grand mean 3.5
    # SSB = 3 (2-3.5)^2 + 3 (5-3.5)^2 = 13.5 (df 1); SSW = 2 + 2 = 4 (df 4); F = 13.5 / 1
    r = S.one_way_anova({"a": [1, 2, 3], "b": [4, 5, 6]})
    assert r["F"] == pytest.approx(13.5)
    assert (r["df_between"], r["df_within"]) == (1, 4)
    assert r["p"] == pytest.approx(st.f.sf(13.5, 1, 4))
    assert r["groups"]["a"] == {"n": 3, "mean": 2.0, "std": 1.0}


def test_anova_bad_input():
    with pytest.raises(DataError):
        S.one_way_anova({"a": [1, 2]})
    with pytest.raises(DataError):
        S.one_way_anova({"a": [1], "b": [2]})  # N = k: no within-group df


def test_thesis_f_and_p_fit_df_1_11():
    # Thesis: F = 5.48, p = 0.039. Two groups, 13 observations -> F(1, 11).
    assert round(st.f.sf(5.48, 1, 11), 3) == 0.039
    assert round(st.f.sf(5.48, 1, 10), 3) != 0.039
    assert round(st.f.sf(5.48, 1, 12), 3) != 0.039


def test_thesis_anova_groups_table_4_11(thesis_rows):
    g = S.thesis_anova_groups(thesis_rows)
    # Table 4.11 lower block: Base (S1) + 12 KD(T1,S1) configurations = 13 observations
    assert g["S1"] == [0.557]
    assert sorted(g["KD(T1,S1)"]) == sorted([
        0.617, 0.621, 0.612, 0.593,                       # table 4.3: B, E, D, B+E+D
        0.610, 0.616,                                     # table 4.6: B+E, E+D
        0.629, 0.607, 0.617, 0.604, 0.541, 0.628,         # table 4.7 (+PMD): B, B+E, E, B+E+D, D, E+D
    ])
    r = S.one_way_anova(g)
    assert (r["df_between"], r["df_within"]) == (1, 11)
    # with the tabulated baseline 0.557 the thesis's numbers are NOT reproduced
    assert r["F"] == pytest.approx(4.397, abs=1e-3)
    assert r["p"] == pytest.approx(0.0599, abs=1e-4)
    assert r["groups"]["KD(T1,S1)"]["mean"] == pytest.approx(0.6079, abs=1e-4)


def test_thesis_anova_text_value_and_solved_value(thesis_rows):
    # the text's rounded "0.55" gives F = 5.69, p = 0.036: not the reported 5.48
    r = S.one_way_anova(S.thesis_anova_groups(thesis_rows, baseline_iou=0.55))
    assert round(r["F"], 2) == 5.69 and round(r["p"], 3) == 0.036
    # solving F(b) = 5.48 for the baseline b gives about 0.551
    r = S.one_way_anova(S.thesis_anova_groups(thesis_rows, baseline_iou=0.55107))
    assert round(r["F"], 2) == 5.48 and round(r["p"], 3) == 0.039
    assert (r["df_between"], r["df_within"]) == (1, 11)
    r = S.one_way_anova(S.thesis_anova_groups(thesis_rows, baseline_iou=0.551))
    assert round(r["F"], 2) == 5.49 and round(r["p"], 3) == 0.039
    # the baseline that solves F = 5.48 exactly, from F = (n1 n2 / N)(m - b)^2 / MSW
    kd = np.array(S.thesis_anova_groups(thesis_rows)["KD(T1,S1)"])
    msw = ((kd - kd.mean()) ** 2).sum() / 11
    b = kd.mean() - math.sqrt(5.48 * msw * 13 / 12)
    assert 0.55105 < b < 0.55110 and round(b, 2) == 0.55


def test_thesis_anova_groups_all_t1_s1(thesis_rows):
    g = S.thesis_anova_groups(thesis_rows, selection="all")
    assert len(g["KD(T1,S1)"]) == 14  # tables 4.3 (4) + 4.6 (3) + 4.7 (7)
    r = S.one_way_anova(g)
    assert (r["df_between"], r["df_within"]) == (1, 13)
    assert r["F"] == pytest.approx(5.312, abs=1e-3) and r["p"] == pytest.approx(0.0383, abs=1e-4)


def test_thesis_anova_groups_accepts_dataframe(thesis_rows):
    pd = pytest.importorskip("pandas")
    # read without dtypes: "4.10" becomes 4.1 and empty teachers NaN; must not matter
    df = pd.read_csv(_csv_path())
    assert S.thesis_anova_groups(df) == S.thesis_anova_groups(thesis_rows)
    with pytest.raises(ConfigError):
        S.thesis_anova_groups(df, selection="some")


def test_anova_docstring_states_the_numbers_exactly():
    doc = S.thesis_anova_groups.__doc__
    assert "F(1, 11) = 4.40, p = 0.060" in doc and "5.69" in doc and "solving" in doc
    assert "many" not in doc and "125,970" in doc
    assert "the text itself gives" not in doc


# ------------------------------------------------------------------ the one interval method
def _simulate(rng, folds=3, patients_per_fold=2, seeds=2, truth=0.05,
              sd_fold=0.01, sd_seed=0.03, sd_patient=0.03, sd_noise=0.02):
    """One experiment of the real design: seeds nested in folds, patients nested in folds."""
    blocks = []
    for _ in range(folds):
        fold = rng.normal(0, sd_fold)
        seed = rng.normal(0, sd_seed, size=(seeds, 1))
        patient = rng.normal(0, sd_patient, size=(1, patients_per_fold))
        blocks.append(truth + fold + seed + patient + rng.normal(0, sd_noise, size=(seeds, patients_per_fold)))
    return blocks


@pytest.mark.parametrize("components", [
    dict(sd_fold=0.01, sd_seed=0.03, sd_patient=0.03, sd_noise=0.02),   # a mix
    dict(sd_fold=0.0, sd_seed=0.05, sd_patient=0.02, sd_noise=0.02),    # seed noise dominates
    dict(sd_fold=0.0, sd_seed=0.0, sd_patient=0.04, sd_noise=0.02),     # patients dominate
])
def test_coverage_of_the_nested_interval(components):
    rng = np.random.default_rng(20261126)
    covered = 0
    for _ in range(200):
        r = S.nested_interval(_simulate(rng, **components))
        assert r["method"] == "nested" and r["n_patients"] == 6 and r["n_runs"] == 6
        covered += r["ci_low"] <= 0.05 <= r["ci_high"]
    assert 0.90 <= covered / 200 <= 0.99


def test_patient_t_interval_would_undercover_when_seeds_dominate():
    # why the nested interval: a plain t interval over the 6 patient means ignores that a
    # fold's patients share its runs (the rejected method, checked on the same design)
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(200):
        means = np.concatenate([b.mean(axis=0) for b in _simulate(rng, sd_fold=0.0, sd_seed=0.06,
                                                                   sd_patient=0.01, sd_noise=0.01)])
        half = st.t.ppf(0.975, 5) * means.std(ddof=1) / math.sqrt(6)
        covered += abs(means.mean() - 0.05) <= half
    assert covered / 200 < 0.90


def test_nested_interval_by_hand():
    # one fold, 2 seeds x 2 patients: patient means [1.5, 3.5] -> W = 2 (df 1);
    # seed means [2, 3] -> R = 0.5 (df 1); Var = 2^2 * 0.5 / 2 / 4 + 2 / 2 = 1.25
    r = S.nested_interval([[[1.0, 3.0], [2.0, 4.0]]])
    assert r["estimate"] == 2.5 and r["method"] == "nested" and r["run_noise_measured"]
    assert r["se"] == pytest.approx(math.sqrt(1.25))
    df = 1.25 ** 2 / (0.25 ** 2 + 1.0 ** 2)
    assert r["df"] == pytest.approx(df)
    half = st.t.ppf(0.975, df) * math.sqrt(1.25)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((2.5 - half, 2.5 + half))


def test_nested_interval_fallbacks():
    # one seed per fold, 3 folds: the fold means carry run noise; df = folds - 1
    r = S.nested_interval([[0.1, 0.2], [0.3, 0.2], [0.0, 0.1]])
    assert r["method"] == "folds" and r["df"] == 2 and r["run_noise_measured"]
    assert r["ci_low"] < r["estimate"] < r["ci_high"]
    # one run in all: only patients vary, flagged
    one = S.nested_interval([[0.1, 0.2, 0.4]])
    assert one["method"] == "patients only" and not one["run_noise_measured"]
    # one patient: no interval
    single = S.nested_interval([[0.3]])
    assert single["estimate"] == 0.3 and math.isnan(single["ci_low"])
    assert math.isnan(S.nested_interval([])["estimate"])
    with pytest.raises(DataError):
        S.nested_interval([[[0.1, float("nan")]]])
    # seeds of one fold are not patients: 2 seeds x 1 patient is one patient, not two
    assert S.nested_interval([[[0.1], [0.3]]])["n_patients"] == 1


def test_minimal_detectable_effect():
    assert S.minimal_detectable_effect(0.01, 10) == pytest.approx(
        (st.t.ppf(0.975, 10) + st.t.ppf(0.8, 10)) * 0.01)
    assert math.isnan(S.minimal_detectable_effect(float("nan"), 3))


# ------------------------------------------------------------------ verdicts
@pytest.mark.parametrize(
    "low, high, kwargs, expected",
    [(0.01, 0.05, {}, "supported"),
     (-0.01, 0.05, {}, "inconclusive"),
     (-0.05, -0.01, {}, "contradicted"),
     (-0.05, -0.01, {"kind": "less"}, "supported"),
     (0.01, 0.05, {"testable": False}, "not testable here"),
     (0.01, 0.05, {"ran": False}, "not run in this profile"),
     (float("nan"), float("nan"), {}, "not testable here"),
     (None, 0.1, {}, "not testable here"),
     (-0.03, 0.01, {"kind": "at most", "margin": 0.02}, "supported"),
     (0.03, 0.05, {"kind": "at most", "margin": 0.02}, "contradicted"),
     (-0.01, 0.01, {"kind": "equivalent", "margin": 0.02}, "supported"),
     (0.03, 0.05, {"kind": "equivalent", "margin": 0.02}, "contradicted"),
     (-0.01, 0.05, {"kind": "equivalent", "margin": 0.02}, "inconclusive"),
     (-0.015, 0.2, {"kind": "at least", "margin": 0.02}, "supported")],
)
def test_verdict(low, high, kwargs, expected):
    assert S.verdict(low, high, **kwargs) == expected
    assert expected in S.VERDICTS


def test_no_verdict_contradicts_its_own_interval():
    rng = np.random.default_rng(1)
    for _ in range(3000):
        lo, hi = np.sort(rng.normal(0, 0.05, size=2))
        kind = S.CLAIM_KINDS[rng.integers(len(S.CLAIM_KINDS))]
        margin = float(rng.uniform(0, 0.04)) if kind in ("at most", "at least", "equivalent") else 0.0
        v = S.verdict(lo, hi, kind=kind, margin=margin)
        # the region the claim asserts, as an interval of effects
        claimed = {"greater": (0, math.inf), "less": (-math.inf, 0), "at most": (-math.inf, margin),
                   "at least": (-margin, math.inf), "equivalent": (-margin, margin)}[kind]
        inside = claimed[0] < lo and hi < claimed[1]
        outside = hi < claimed[0] or lo > claimed[1]
        assert (v == "supported") == inside
        assert (v == "contradicted") == outside
        assert (v == "inconclusive") == (not inside and not outside)


def test_verdict_bad_input():
    with pytest.raises(ConfigError):
        S.verdict(0, 1, kind="bigger")
    with pytest.raises(DataError):
        S.verdict(0.2, 0.1)


def test_consistent_with():
    assert S.consistent_with(0.05, 0.0, 0.1) == "yes"
    assert S.consistent_with(0.2, 0.0, 0.1) == "no"
    assert S.consistent_with(0.05, float("nan"), 0.1) == "–"


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4 = 0.02; 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> max(0.06, .) = 0.06
    assert S.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm({"x": 0.5, "y": 0.6}) == {"x": 1.0, "y": 1.0}  # 0.5*2 capped at 1
    out = S.holm([0.02, float("nan"), 0.04])  # NaN ignored: m = 2
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
