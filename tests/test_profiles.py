"""Issue 20: a profile that publishes results sets every parameter the notebooks use at scale,
so no notebook silently falls back to its smoke defaults (2 epochs, one seed, no patience)."""
import pytest
import yaml

from kdlib import plan, runner
from kdlib.errors import ConfigError
from kdlib.paths import PROFILES_DIR

PROFILES = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _params(name, tmp_path, profiles_dir=PROFILES_DIR):
    notebooks = runner.list_notebooks()
    return runner.notebook_parameters(runner.load_profile(name, profiles_dir), notebooks, name, None,
                                      tmp_path), notebooks


def _publishes(name):
    profile = runner.load_profile(name)
    return any((block or {}).get("publish_dir") for block in profile.values())


PUBLISHING = [name for name in PROFILES if _publishes(name)]


def test_the_thesis_and_real_mini_profiles_publish():
    assert {"thesis", "real-mini"} <= set(PUBLISHING)


@pytest.mark.parametrize("name", PUBLISHING)
def test_publishing_profile_sets_every_at_scale_parameter(name, tmp_path):
    params, notebooks = _params(name, tmp_path)
    assert runner.defaulted_at_scale(params, notebooks) == []
    # and the values are not the smoke defaults a notebook would have used
    defaults = {nb.stem: plan.notebook_defaults(nb) for nb in notebooks}
    for stem in ("02_teacher", "03_student", "04_ablations"):
        assert params[stem]["epochs"] > defaults[stem]["epochs"], f"{name}: {stem} at smoke epochs"
        assert params[stem]["patience"] > 0 and params[stem]["precision"] != "auto"


def test_thesis_profile_seeds_for_table_4_2_its_controls_and_the_claims():
    profile = runner.load_profile("thesis")
    assert len(profile["03_student"]["seeds"]) >= 3 and len(profile["04_ablations"]["seeds"]) >= 3
    assert profile["04_ablations"]["grid"] in ("all", "claims")  # both hold every claim's rows
    assert all(profile[nb]["keep_last"] for nb in ("02_teacher", "03_student", "04_ablations"))
    text = (PROFILES_DIR / "thesis.yaml").read_text()
    assert "0.82 EFLOP" in text and "3 seeds" in text  # the cost, stated in the profile


def test_a_gap_is_found_and_the_runner_refuses_it(tmp_path):
    thesis = runner.load_profile("thesis")
    del thesis["04_ablations"]  # the bug of issue 20: the grid at 2 epochs
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "gappy.yaml").write_text(yaml.safe_dump(thesis))
    params, notebooks = _params("gappy", tmp_path, folder)
    gaps = runner.defaulted_at_scale(params, notebooks)
    assert "04_ablations.epochs" in gaps and "04_ablations.seeds" in gaps and "04_ablations.grid" in gaps
    assert "04_ablations.precision" not in gaps  # set in common
    with pytest.raises(ConfigError, match="04_ablations.epochs"):
        runner.run_notebooks("gappy", out=tmp_path / "out", profiles_dir=folder)
    assert not (tmp_path / "out").exists()  # refused before anything was made


def test_notebook_defaults_match_papermill():
    import papermill as pm

    for nb in runner.list_notebooks():
        ours = plan.notebook_defaults(nb)
        theirs = pm.inspect_notebook(str(nb))
        assert set(ours) == set(theirs)
        for name, info in theirs.items():
            assert ours[name] == eval(info["default"]), (nb.stem, name)  # noqa: S307 (our own notebooks)


def test_real_mini_seeds_for_the_headline_and_every_other_claim_row():
    """Issue 21: claims 1 and 8's rows at >= 10 seeds per fold, every other row a claim compares
    at >= 3, on all 3 folds (the plan lists what the invocation trains)."""
    from kdlib import claims, experiments

    runs = [r for r in plan.plan_runs("real-mini") if r["notebook"] in ("03_student", "04_ablations")
            and not r["shared_with"]]
    headline = {(r["role"], r["name"], "student_train") for r in runs if r["role"] in ("baseline", "control")}
    headline |= {("kd", f"KD(T1,{s}) infonce B+PMD", "student_train") for s in ("S1", "S2")}
    seeds: dict = {}
    for r in runs:  # a configuration: its name and its data (Table 4.11 trains B on 100%)
        config = (r["role"], r["name"], r["train_subset"])
        seeds.setdefault(config, {}).setdefault(r["fold"], set()).add(r["seed"])
    assert headline <= set(seeds)
    for config, by_fold in seeds.items():
        assert sorted(by_fold) == [0, 1, 2], config  # every fold
        assert all(len(s) >= (10 if config in headline else 3) for s in by_fold.values()), config
    # and every configuration some claim compares is among them
    needed = claims.rows_claims_need(experiments.grid_rows())
    assert len(seeds) >= len({claims.key(claims.spec_of_row(r)) for r in needed if r["table"] != "4.1"})
    assert {r["table"] for r in claims.rows_claims_need(experiments.grid_rows(), claims.HEADLINE_CLAIMS)} \
        >= {"4.2"}
