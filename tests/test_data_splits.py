"""Patient / faithful splits, folds, student subsets, save/load."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import write_msd
from kdlib.data import SliceCache, load_split, make_folds, make_split, preprocess, save_split
from kdlib.errors import ConfigError, DataError, KdlibError


@pytest.fixture(scope="module")
def cache(phantom_cache):
    return SliceCache.load(phantom_cache)


def _cases(cache, idx):
    return set(cache.case_ids[idx].tolist())


def test_patient_split(cache):
    s = make_split(cache)
    assert s["mode"] == "patient" and s["seed"] == 42 and s["fold"] is None
    train, val, test = set(s["train"]), set(s["val"]), set(s["test"])
    assert not (train & val or train & test or val & test)
    assert train | val | test == set(range(len(cache)))
    assert _cases(cache, s["test"]) == set(s["test_cases"])
    assert _cases(cache, s["val"]) == set(s["val_cases"])
    assert _cases(cache, s["train"]) == set(s["train_cases"])
    assert not set(s["test_cases"]) & (set(s["train_cases"]) | set(s["val_cases"]))
    assert len(s["test_cases"]) == 1 and len(s["val_cases"]) == 1  # 20% of 6, 20% of 5
    # student: half of the training patients, whole patients
    assert set(s["student_train"]) <= train
    assert s["student_by"] == "patient" and len(s["student_cases"]) == 2
    assert _cases(cache, s["student_train"]) == set(s["student_cases"])
    assert s["train"] == sorted(s["train"]) and all(isinstance(i, int) for i in s["train"])
    assert s["synthetic"] is True and s["n_slices"] == len(cache)


def test_deterministic_for_seed(cache):
    assert make_split(cache, seed=7) == make_split(cache, seed=7)
    a, b = make_split(cache, seed=1), make_split(cache, seed=2)
    assert (a["test_cases"], a["val_cases"], a["student_cases"]) != \
        (b["test_cases"], b["val_cases"], b["student_cases"])


def test_folds_cover_every_patient_once(cache):
    splits = make_folds(cache, folds=3)
    tested = [c for s in splits for c in s["test_cases"]]
    assert sorted(tested) == cache.cases
    for f, s in enumerate(splits):
        assert s["fold"] == f and s["folds"] == 3
        assert len(s["test_cases"]) == 2
        assert not set(s["test_cases"]) & set(s["train_cases"] + s["val_cases"])
        assert len(s["val_cases"]) == 1 and len(s["train_cases"]) == 3
    six = make_folds(cache, folds=6)
    assert sorted(c for s in six for c in s["test_cases"]) == cache.cases
    with pytest.raises(ConfigError):
        make_split(cache, folds=3)
    with pytest.raises(ConfigError):
        make_split(cache, folds=7, fold=0)
    with pytest.raises(ConfigError):
        make_split(cache, folds=3, fold=3)


def test_faithful_split(cache):
    s = make_split(cache, mode="faithful")
    n = len(cache)
    n_test = int(round(0.2 * n))
    perm = np.random.default_rng(42).permutation(n)
    assert s["test"] == sorted(perm[:n_test].tolist())
    assert s["train"] == sorted(perm[n_test:].tolist())
    assert s["val"] == s["test"]
    assert len(s["student_train"]) == round(0.5 * len(s["train"]))
    assert set(s["student_train"]) <= set(s["train"])
    assert make_split(cache, mode="faithful") == s
    with pytest.raises(ConfigError):
        make_split(cache, mode="faithful", folds=3, fold=0)
    with pytest.raises(ConfigError):
        make_split(cache, mode="random")


def test_few_patients_fall_back_to_slices(tmp_path):
    msd = write_msd(tmp_path / "msd", cases=("spleen_1", "spleen_2"), shape=(8, 8, 10))
    preprocess(msd, tmp_path / "c", size=8)
    small = SliceCache.load(tmp_path / "c")
    s = make_split(small)
    assert len(s["test_cases"]) == 1 and s["val_by"].startswith("slice")
    assert s["student_by"].startswith("slice")
    assert s["val"] and not set(s["val"]) & set(s["train"])
    assert set(s["student_train"]) <= set(s["train"])
    one = write_msd(tmp_path / "one", cases=("spleen_1",), shape=(8, 8, 10))
    preprocess(one, tmp_path / "c1", size=8)
    with pytest.raises(ConfigError, match="faithful"):
        make_split(tmp_path / "c1")
    assert len(make_split(tmp_path / "c1", mode="faithful")["test"]) == 2


def test_save_load(cache, tmp_path, phantom_msd):
    s = make_split(cache, folds=3, fold=1)
    path = save_split(s, tmp_path / "split.json")
    loaded = load_split(path, cache=cache)
    assert loaded == s
    assert save_split(s, path) == path  # same split again: no-op
    with pytest.raises(KdlibError, match="never overwritten"):
        save_split(make_split(cache, seed=1), path)
    other = tmp_path / "other"
    preprocess(phantom_msd, other, size=32, faithful=True)
    with pytest.raises(DataError, match="another cache"):
        load_split(path, cache=SliceCache.load(other))
    (tmp_path / "bad.json").write_text('{"train": [1]}')
    with pytest.raises(DataError, match="not a split"):
        load_split(tmp_path / "bad.json")


def test_named_test_and_val_patients(cache):
    names = cache.cases
    s = make_split(cache, test_cases=[names[0], names[3]], val_cases=[names[1]])
    assert s["test_cases"] == sorted([names[0], names[3]]) and s["val_cases"] == [names[1]]
    assert s["train_cases"] == sorted(set(names) - {names[0], names[1], names[3]})
    assert _cases(cache, s["test"]) == {names[0], names[3]}
    assert _cases(cache, s["val"]) == {names[1]} and s["val_by"] == "patient (named)"
    assert set(s["student_train"]) <= set(s["train"])
    # the names are what count, not the seed: the same patients for every seed
    other = make_split(cache, seed=5, test_cases=[names[0], names[3]], val_cases=[names[1]])
    assert (other["test"], other["val"], other["train"]) == (s["test"], s["val"], s["train"])
    # a fold label travels with named patients
    labelled = make_split(cache, test_cases=[names[2]], val_cases=[names[4]], folds=6, fold=2)
    assert (labelled["fold"], labelled["folds"]) == (2, 6)
    # only the test patients named: validation is drawn from the rest, never from the test set
    drawn_val = make_split(cache, test_cases=[names[5]])
    assert names[5] not in drawn_val["val_cases"] + drawn_val["train_cases"]
    # only the validation patients named: the test patients are drawn from the others
    drawn_test = make_split(cache, val_cases=[names[0]])
    assert names[0] not in drawn_test["test_cases"] and drawn_test["val_cases"] == [names[0]]


@pytest.mark.parametrize("kwargs,match", [
    (dict(test_cases=["nobody"]), "no patient 'nobody'"),
    (dict(val_cases=["spleen_x"]), "no patient"),
    (dict(test_cases=["{0}"], val_cases=["{0}"]), "both"),
    (dict(test_cases=["{0}", "{0}"]), "twice"),
    (dict(test_cases=[]), "empty"),
    (dict(test_cases=["{0}", "{1}", "{2}", "{3}", "{4}", "{5}"]), "none left"),
    (dict(test_cases=["{0}"], val_cases=["{1}", "{2}", "{3}", "{4}", "{5}"]), "no patient left"),
    (dict(val_cases=["{0}"], folds=3, fold=0), "name the test patients"),
    (dict(mode="faithful", test_cases=["{0}"]), "mode='patient'"),
    (dict(test_cases=["{0}"], folds=3, fold=3), "fold label"),
])
def test_named_patients_errors(cache, kwargs, match):
    def fill(value):
        if isinstance(value, list):
            return [v.format(*cache.cases) for v in value]
        return value
    with pytest.raises(ConfigError, match=match):
        make_split(cache, **{k: fill(v) for k, v in kwargs.items()})


def test_prepare_names_each_folds_patients(phantom_msd, tmp_path):
    from kdlib import pipeline

    folds = [{"test": ["spleen_1"], "val": ["spleen_2"]}, {"test": ["spleen_2", "spleen_3"]}]
    with pytest.raises(ConfigError, match="fold_cases entry"):
        pipeline.prepare(tmp_path / "bad", [phantom_msd], size=32, hu_window=[-160, 240],
                         settings=["corrected"], fold_cases=[{"val": ["spleen_1"]}])
    prepared = pipeline.prepare(tmp_path, [phantom_msd], size=32, hu_window=[-160, 240],
                                settings=["corrected", "faithful"], fold_cases=folds)
    splits = [load_split(p) for p in prepared["corrected"]["splits"]]
    assert [s["test_cases"] for s in splits] == [["spleen_1"], ["spleen_2", "spleen_3"]]
    assert splits[0]["val_cases"] == ["spleen_2"] and splits[0]["val_by"] == "patient (named)"
    assert [(s["fold"], s["folds"]) for s in splits] == [(0, 2), (1, 2)]
    assert len(prepared["faithful"]["splits"]) == 1  # the faithful split stays one split by slice


def test_student_by_slice_takes_the_same_share_of_every_training_patient(phantom_cache):
    cache = SliceCache.load(phantom_cache)
    split = make_split(cache, seed=3, student_by="slice")
    ids = np.asarray(cache.case_ids)
    for case in split["train_cases"]:
        rows = set(np.flatnonzero(ids == case).tolist())
        taken = rows & set(split["student_train"])
        assert taken and abs(len(taken) - 0.5 * len(rows)) <= 1, case
    assert set(split["student_train"]) <= set(split["train"])
    assert split["student_cases"] == split["train_cases"]
    by_patient = make_split(cache, seed=3)
    assert set(by_patient["student_cases"]) < set(by_patient["train_cases"])


def test_student_by_must_be_patient_or_slice(phantom_cache):
    with pytest.raises(ConfigError, match="student_by"):
        make_split(SliceCache.load(phantom_cache), student_by="volume")


@pytest.mark.parametrize("student_by", ["slice", "patient"])
def test_val_share_holds_out_runs_of_every_training_patient(phantom_cache, student_by):
    """val_share adds runs of consecutive slices of every training patient to the named
    validation patient; they leave the training set, and no student trains on them."""
    cache = SliceCache.load(phantom_cache)
    names = list(cache.cases)
    base = make_split(cache, test_cases=names[:1], val_cases=names[1:2], student_by=student_by)
    s = make_split(cache, test_cases=names[:1], val_cases=names[1:2], student_by=student_by,
                   val_share=0.25, val_block=3)
    held = s["val_held_out"]
    assert set(s["val"]) == set(base["val"]) | set(held) and not set(held) & set(base["val"])
    assert set(s["train"]) == set(base["train"]) - set(held)
    assert set(s["student_train"]) <= set(s["train"]) and not set(s["test"]) & set(s["val"])
    assert s["train_cases"] == base["train_cases"]
    for case in s["train_cases"]:
        rows = sorted(cache.indices_of([case]).tolist())
        mine = [i for i in held if i in set(rows)]
        runs = [rows[k:k + 3] for k in range(0, len(rows), 3)]
        # whole runs, about a quarter of them, never every run
        assert mine and set(mine) == {i for r in runs if set(r) & set(mine) for i in r}
        taken = sum(1 for r in runs if set(r) <= set(mine))
        assert taken == min(len(runs) - 1, max(1, round(0.25 * len(runs))))
    again = make_split(cache, test_cases=names[:1], val_cases=names[1:2], student_by=student_by,
                       val_share=0.25, val_block=3)
    assert again == s


@pytest.mark.parametrize("kwargs", [{"val_share": 1.2}, {"val_share": -0.1}, {"val_block": 0},
                                    {"val_block": True}, {"mode": "faithful", "val_share": 0.2}])
def test_val_share_errors(phantom_cache, kwargs):
    with pytest.raises(ConfigError):
        make_split(SliceCache.load(phantom_cache), **kwargs)
