"""Train / validation / test / student splits of a slice cache, saved as JSON.

Modes
- ``patient`` (default): test patients never appear in training. Without `folds`, a share
  `test_fraction` of the patients (at least one, at most all but one) is drawn with
  `numpy.random.default_rng(seed)`; with `folds=K, fold=f` the patients are permuted once
  with the seed and cut into K near-equal groups, group f is the test set, so every patient is
  tested exactly once across the K folds. Validation patients (`val_fraction` of the remaining
  patients, at least one) are drawn from the training patients for model selection; with a
  single training patient, validation falls back to a random share of its slices
  (`val_by: "slice"`).
- ``faithful``: what the thesis did: a random 80/20 split by *slice*
  (`default_rng(seed).permutation(N)`, the first `round(test_fraction*N)` are the test set),
  and the test set doubles as validation set (`val == test`).

Named patients (patient mode): `test_cases=[...]` makes exactly those patients the test set
(instead of a draw; with `folds`/`fold` these only label the split), `val_cases=[...]` makes
exactly those the validation set; the rest train. A name that is not in the cache, or a patient
named twice, is an error. `fold_cases` in `pipeline.prepare` names them per fold.

`student_train` is `student_fraction` of the teacher's training data: whole patients in
patient mode (falls back to slices, `student_by: "slice"`, with fewer than 2 training
patients), slices in faithful mode. `student_by="slice"` in patient mode takes that share of
every training patient's slices instead, so that students see every training patient (with a
few patients of very different sizes, a draw of whole patients may leave the students one).
Every draw is deterministic for a seed.

All index lists are sorted cache indices (python ints).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, KdlibError
from ..io import atomic_write_json, read_json
from .cache import SliceCache, _load_cache

INDEX_KEYS = ("train", "val", "test", "student_train")
REQUIRED_KEYS = INDEX_KEYS + ("mode", "seed", "fold", "folds", "test_cases", "val_cases",
                              "train_cases")


def _sorted_ints(values) -> list[int]:
    return sorted(int(v) for v in values)


def _take(rng: np.random.Generator, items: list, count: int) -> tuple[list, list]:
    """Split `items` into (chosen `count`, rest), chosen by a permutation from `rng`."""
    order = rng.permutation(len(items))
    chosen = [items[i] for i in order[:count]]
    rest = [items[i] for i in order[count:]]
    return chosen, rest


def _case_sizes(cache) -> dict[str, int]:
    names, counts = np.unique(np.asarray(cache.case_ids), return_counts=True)
    return {str(n): int(c) for n, c in zip(names, counts)}


def _take_patients(rng: np.random.Generator, cases: list, sizes: dict[str, int],
                   fraction: float, keep_one: bool) -> tuple[list, list]:
    """The set of patients whose slice count is closest to `fraction` of all their slices
    (at least one patient; `keep_one` leaves at least one behind); ties go to the seeded order.

    Patients differ a lot in size (20 to 150 slices here), so counting patients instead of
    slices would give validation or student sets far from the intended share of the data.
    Up to 16 patients every subset is tried; beyond that, the best prefix of the seeded order.
    """
    order = [cases[i] for i in rng.permutation(len(cases))]
    counts = [sizes[c] for c in order]
    target = fraction * sum(counts)
    limit = len(order) - 1 if keep_one else len(order)
    if len(order) <= 16:
        best = min((mask for mask in range(1, 1 << len(order)) if bin(mask).count("1") <= limit),
                   key=lambda m: (abs(sum(c for i, c in enumerate(counts) if m >> i & 1) - target), m))
        chosen = [c for i, c in enumerate(order) if best >> i & 1]
    else:
        totals = np.cumsum(counts[:limit])
        chosen = order[: int(np.argmin(np.abs(totals - target))) + 1]
    return chosen, [c for c in order if c not in set(chosen)]


def _check_fraction(name: str, value: float, low_open: bool = True,
                    high_open: bool = True) -> float:
    value = float(value)
    ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be in {interval}, got {value}")
    return value


def _held_out_runs(cache, cases: list[str], share: float, block: int,
                   rng: np.random.Generator) -> list[int]:
    """`share` of each case's slices (at least one run, never all of them), as whole runs of
    `block` consecutive slices in the cache's slice order, drawn with `rng`."""
    held: list[int] = []
    for case in sorted(cases):
        rows = _sorted_ints(cache.indices_of([case]))
        runs = [rows[i:i + block] for i in range(0, len(rows), block)]
        if len(runs) < 2:
            continue  # a patient of one run keeps it for training
        n_runs = min(len(runs) - 1, max(1, int(round(share * len(runs)))))
        for k in sorted(rng.choice(len(runs), size=n_runs, replace=False).tolist()):
            held += runs[k]
    return _sorted_ints(held)


def _named_cases(cache, names, what: str) -> list[str] | None:
    """Validate a list of patient names against the cache (None: not named)."""
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    names = [str(n) for n in names]
    if not names:
        raise ConfigError(f"{what} is an empty list", None, f"name at least one patient or leave {what} out")
    unknown = [n for n in names if n not in set(cache.cases)]
    if unknown:
        raise ConfigError(f"{what}: no patient {', '.join(map(repr, unknown))} in the cache",
                          cache.path, f"choose from {', '.join(cache.cases)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{what} names a patient twice: {names}", None, "name each patient once")
    return names


def make_split(cache, mode: str = "patient", seed: int = 42, test_fraction: float = 0.2,
               val_fraction: float = 0.2, student_fraction: float = 0.5,
               folds: int | None = None, fold: int | None = None,
               test_cases: list[str] | None = None, val_cases: list[str] | None = None,
               student_by: str = "patient", val_share: float = 0.0, val_block: int = 4) -> dict:
    """Split a cache (SliceCache or path) into train/val/test/student_train index lists.

    `test_cases` / `val_cases` name the test / validation patients instead of drawing them.
    `student_by`: "patient" (whole training patients) or "slice" (the same share of every
    training patient's slices). `val_share` > 0 (patient mode) adds to the validation set that
    share of every training patient's slices, drawn as runs of `val_block` consecutive
    slices (neighbouring slices are near copies: whole runs leak less than single slices), so
    that validation represents every source the models train on, not one patient."""
    cache = _load_cache(cache)
    n = len(cache)
    if n == 0:
        raise DataError("the cache has no slices", cache.path, "preprocess some data first")
    if mode not in ("patient", "faithful"):
        raise ConfigError(f"unknown split mode {mode!r}", None, "use 'patient' or 'faithful'")
    test_fraction = _check_fraction("test_fraction", test_fraction)
    val_fraction = _check_fraction("val_fraction", val_fraction, low_open=False)
    student_fraction = _check_fraction("student_fraction", student_fraction, high_open=False)
    val_share = _check_fraction("val_share", val_share, low_open=False)
    if isinstance(val_block, bool) or not isinstance(val_block, (int, np.integer)) or val_block < 1:
        raise ConfigError(f"val_block must be a positive integer, got {val_block!r}", None,
                          "e.g. val_block=4 (runs of 4 consecutive slices)")
    if val_share and mode == "faithful":
        raise ConfigError("val_share is for mode='patient' (the faithful split validates on "
                          "its test set)", None, "drop val_share")
    seed = int(seed)
    if student_by not in ("patient", "slice"):
        raise ConfigError(f"student_by={student_by!r} is not 'patient' or 'slice'", None,
                          "use student_by='patient' (whole patients) or 'slice'")
    extra: dict = {}

    named_test = _named_cases(cache, test_cases, "test_cases")
    named_val = _named_cases(cache, val_cases, "val_cases")
    if mode == "faithful" and (named_test or named_val):
        raise ConfigError("test_cases/val_cases are for mode='patient' (the faithful split is "
                          "by slice)", None, "drop test_cases and val_cases")
    if named_test and named_val and set(named_test) & set(named_val):
        raise ConfigError(f"patient(s) {sorted(set(named_test) & set(named_val))} named both "
                          "for test and for validation", None, "name each patient in one role")
    if named_val and not named_test and (folds is not None or fold is not None):
        raise ConfigError("val_cases with drawn folds could name a fold's test patient", None,
                          "name the test patients too (test_cases, or fold_cases per fold)")

    if mode == "faithful":
        if folds is not None or fold is not None:
            raise ConfigError("folds/fold are for mode='patient' (the faithful split is one "
                              "random 80/20 split by slice)", None, "drop folds and fold")
        perm = np.random.default_rng(seed).permutation(n)
        n_test = int(round(test_fraction * n))
        n_test = min(max(n_test, 1), n - 1) if n > 1 else 0
        test = _sorted_ints(perm[:n_test])
        train = _sorted_ints(perm[n_test:])
        val = list(test)
        n_student = int(round(student_fraction * len(train)))
        student, _ = _take(np.random.default_rng([seed, 2]), train, n_student)
        student = _sorted_ints(student)
        train_cases, val_cases, test_cases, student_cases = (
            sorted(set(cache.case_ids[idx].tolist())) if idx else []
            for idx in (train, val, test, student))
        extra.update(val_by="slice (val == test, as in the thesis)", student_by="slice")
    else:
        cases = list(cache.cases)
        if len(cases) < 2:
            raise ConfigError(f"a patient split needs at least 2 patients; this cache has "
                              f"{len(cases)}", None,
                              "use mode='faithful' (split by slice) or add patients")
        perm = [cases[i] for i in np.random.default_rng(seed).permutation(len(cases))]
        if named_test is not None:
            # named: the fold number (if any) is a label; the caller names every fold's patients
            if (folds is None) != (fold is None) or \
                    (folds is not None and not 0 <= int(fold) < int(folds)):
                raise ConfigError(f"fold label {fold} of {folds} folds is invalid", None,
                                  "give both folds and fold, with 0 <= fold < folds")
            test_cases = list(named_test)
            pool = [c for c in perm if c not in set(test_cases)]
            if not pool:
                raise ConfigError("test_cases names every patient: none left to train on", None,
                                  "leave at least one patient out of test_cases")
            folds = None if folds is None else int(folds)
            fold = None if fold is None else int(fold)
        elif folds is not None or fold is not None:
            if folds is None or fold is None:
                raise ConfigError("cross-validation needs both folds and fold", None,
                                  f"e.g. folds={min(3, len(cases))}, fold=0 (then 1, 2, ...)")
            folds, fold = int(folds), int(fold)
            if not 2 <= folds <= len(cases):
                raise ConfigError(f"folds must be in 2..{len(cases)} (the number of "
                                  f"patients), got {folds}")
            if not 0 <= fold < folds:
                raise ConfigError(f"fold must be in 0..{folds - 1}, got {fold}")
            # balanced by slice count: the largest patients first, each to the fold with the
            # fewest slices so far (ties broken by the seeded order), so one fold does not
            # test on most of the data while training on a sliver
            sizes = _case_sizes(cache)
            load = [0] * folds
            members: list[list[str]] = [[] for _ in range(folds)]
            for case in sorted(perm, key=lambda c: -sizes[c]):
                target = min(range(folds), key=lambda f: (load[f], f))
                members[target].append(case)
                load[target] += sizes[case]
            test_cases = members[fold]
            pool = [c for c in perm if c not in set(test_cases)]
        else:
            drawable = [c for c in perm if c not in set(named_val or [])]
            if not drawable:
                raise ConfigError("val_cases names every patient: none left to test on", None,
                                  "leave patients out of val_cases")
            n_test = min(len(cases) - 1, max(1, int(round(test_fraction * len(cases)))))
            n_test = min(n_test, len(drawable))
            test_cases = drawable[:n_test]
            pool = [c for c in perm if c not in set(test_cases)]
        sub = 0 if fold is None else fold + 1
        val_rng = np.random.default_rng([seed, 1, sub])
        if named_val is not None:
            val_cases = list(named_val)
            train_cases = [c for c in pool if c not in set(val_cases)]
            if not train_cases:
                raise ConfigError("no patient left to train on after test_cases and val_cases",
                                  None, "name fewer test or validation patients")
            extra["val_by"] = "patient (named)"
        elif val_fraction == 0:
            val_cases, train_cases = [], list(pool)
            extra["val_by"] = "none"
        elif len(pool) >= 2:
            val_cases, train_cases = _take_patients(val_rng, pool, _case_sizes(cache),
                                                    val_fraction, keep_one=True)
            extra["val_by"] = "patient"
        else:
            val_cases, train_cases = [], list(pool)
            extra["val_by"] = "slice (only one training patient)"
        test = _sorted_ints(cache.indices_of(test_cases))
        val = _sorted_ints(cache.indices_of(val_cases))
        train = _sorted_ints(cache.indices_of(train_cases))
        if extra["val_by"].startswith("slice"):
            n_val = max(1, int(round(val_fraction * len(train))))
            chosen, rest = _take(val_rng, train, n_val)
            val, train = _sorted_ints(chosen), _sorted_ints(rest)
        if val_share:
            held = _held_out_runs(cache, train_cases, val_share, int(val_block),
                                  np.random.default_rng([seed, 3, sub]))
            remaining = set(train)
            held = [i for i in held if i in remaining]
            taken = set(held)
            val, train = _sorted_ints(val + held), [i for i in train if i not in taken]
            extra["val_by"] += f" + {val_share:g} of every training patient's slices " \
                f"(runs of {int(val_block)})"
            extra.update(val_share=val_share, val_block=int(val_block), val_held_out=held)
        st_rng = np.random.default_rng([seed, 2, sub])
        training = set(train)  # a student trains on the teacher's training slices only
        if student_by == "slice":
            student = []
            for case in sorted(train_cases):
                rows = [i for i in _sorted_ints(cache.indices_of([case])) if i in training]
                n_case = max(1, int(round(student_fraction * len(rows))))
                student += _take(st_rng, rows, n_case)[0]
            student = _sorted_ints(student)
            student_cases = list(train_cases)
            extra["student_by"] = "slice (the same share of every training patient)"
        elif len(train_cases) >= 2:
            student_cases, _ = _take_patients(st_rng, list(train_cases), _case_sizes(cache),
                                              student_fraction, keep_one=False)
            student = [i for i in _sorted_ints(cache.indices_of(student_cases)) if i in training]
            extra["student_by"] = "patient"
        else:
            n_st = max(1, int(round(student_fraction * len(train))))
            student = _sorted_ints(_take(st_rng, train, n_st)[0])
            student_cases = list(train_cases)
            extra["student_by"] = "slice (fewer than 2 training patients)"
        test_cases, val_cases = sorted(test_cases), sorted(val_cases)
        train_cases, student_cases = sorted(train_cases), sorted(student_cases)

    positive = cache.positive
    split = {
        "mode": mode, "seed": seed, "fold": fold, "folds": folds,
        "test_fraction": test_fraction, "val_fraction": val_fraction,
        "student_fraction": student_fraction,
        "train": train, "val": val, "test": test, "student_train": student,
        "train_cases": train_cases, "val_cases": val_cases, "test_cases": test_cases,
        "student_cases": student_cases,
        "counts": {k: {"slices": len(v), "positive_slices": int(positive[v].sum()) if v else 0}
                   for k, v in (("train", train), ("val", val), ("test", test),
                                ("student_train", student))},
        "n_slices": n,
        "cache": str(cache.path),
        "cache_fingerprint": cache.fingerprint,
        "synthetic": cache.synthetic,
        **extra,
    }
    return split


def make_folds(cache, folds: int, **kwargs) -> list[dict]:
    """All `folds` patient-level cross-validation splits (fold 0 .. folds-1)."""
    cache = _load_cache(cache)
    return [make_split(cache, mode="patient", folds=folds, fold=f, **kwargs)
            for f in range(int(folds))]


def _validate(split: dict, where) -> None:
    if not isinstance(split, dict):
        raise DataError("a split must be a JSON object", where, "make it with make_split")
    missing = [k for k in REQUIRED_KEYS if k not in split]
    if missing:
        raise DataError(f"not a split file (missing {', '.join(missing)})", where,
                        "make it with kdlib.data.make_split and save_split")
    for key in INDEX_KEYS:
        values = split[key]
        if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
            raise DataError(f"split[{key!r}] must be a list of integers", where,
                            "make it with kdlib.data.make_split")


def save_split(split: dict, path: str | Path) -> Path:
    """Write a split as JSON (atomically). Saving the same split again is a no-op; a
    different split at the same path is never overwritten."""
    _validate(split, path)
    path = Path(path)
    payload = json.loads(json.dumps(split, default=str))
    if path.exists():
        try:
            same = json.loads(path.read_text()) == payload
        except (json.JSONDecodeError, UnicodeDecodeError):
            same = False
        if same:
            return path
        raise KdlibError("a different split is already saved here", path,
                         "choose another file name (splits are never overwritten)")
    atomic_write_json(path, payload, overwrite=False)
    return path


# where the split file was made: not part of what the split is (the cache's content is, via
# `cache_fingerprint`), so it stays out of `split_fingerprint`
LOCATION_KEYS = ("cache",)


def split_fingerprint(split: dict | str | Path) -> str:
    """sha256 of a split's content less where it was made (the absolute `cache` path): the
    same split made in another folder or on another machine has the same fingerprint, which
    the run identity (`RunConfig.identity`) hashes instead of the file's bytes."""
    import hashlib

    data = read_json(Path(split)) if isinstance(split, (str, Path)) else split
    payload = {k: v for k, v in json.loads(json.dumps(data, default=str)).items() if k not in LOCATION_KEYS}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def load_split(path: str | Path, cache: SliceCache | str | Path | None = None) -> dict:
    """Read a split saved by save_split; with `cache`, check it was made for that cache."""
    path = Path(path)
    split = read_json(path)
    _validate(split, path)
    if cache is not None:
        cache = _load_cache(cache)
        fp = split.get("cache_fingerprint")
        if split.get("n_slices") != len(cache) or (fp and cache.fingerprint and
                                                   fp != cache.fingerprint):
            raise DataError(f"split was made for another cache ({split.get('n_slices')} slices"
                            f", fingerprint {fp}) than {cache.path} ({len(cache)} slices, "
                            f"{cache.fingerprint})", path,
                            "make a new split for this cache with make_split")
    return split


def check_split(split: dict, cache: SliceCache | str | Path, setting: str = "corrected",
                where: str | Path | None = None) -> None:
    """Check a split against the cache it is used with, before any training: every index an
    integer (not a boolean) in range and listed once; train, validation and test disjoint
    (the faithful split's `val == test` excepted); `student_train` inside `train`; a test
    set; in the corrected setting no test patient among the training or validation patients;
    and the split made for this cache (its recorded slice count and fingerprint)."""
    cache = _load_cache(cache)
    fix = "make a new split for this cache with make_split and save_split"
    if not isinstance(split, dict):
        raise DataError("a split must be a JSON object", where, fix)
    n = len(cache)
    recorded, fp = split.get("n_slices"), split.get("cache_fingerprint")
    if recorded != n or (fp and cache.fingerprint and fp != cache.fingerprint) \
            or (cache.fingerprint and not fp):
        raise DataError(f"split was made for another cache ({recorded} slices, fingerprint "
                        f"{fp}) than {cache.path} ({n} slices, {cache.fingerprint})", where, fix)
    sets: dict[str, set] = {}
    for key in INDEX_KEYS:
        values = split.get(key)
        if not isinstance(values, list) or \
                not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise DataError(f"split[{key!r}] must be a list of integer slice indices", where, fix)
        bad = [v for v in values if not 0 <= v < n]
        if bad:
            raise DataError(f"split[{key!r}] has index {bad[0]} outside 0..{n - 1} (the cache "
                            f"has {n} slices)", where, fix)
        if len(set(values)) != len(values):
            twice = next(v for v in values if values.count(v) > 1)
            raise DataError(f"split[{key!r}] lists slice {twice} twice", where, fix)
        sets[key] = set(values)
    if not sets["test"]:
        raise DataError("the split's test set is empty", where, fix)
    pairs = [("train", "val"), ("train", "test")]
    if not (split.get("mode") == "faithful" and sets["val"] == sets["test"]):
        pairs.append(("val", "test"))
    for a, b in pairs:
        common = sets[a] & sets[b]
        if common:
            raise DataError(f"split's {a} and {b} sets share {len(common)} slice(s), e.g. "
                            f"{min(common)}", where, fix)
    outside = sets["student_train"] - sets["train"]
    if outside:
        raise DataError(f"split's student_train has {len(outside)} slice(s) outside train, e.g. "
                        f"{min(outside)}", where, fix)
    # a release split (kdlib.release) has no test patients by design: its "test" slices are
    # held-out slices of its training patients, and its records say so
    if setting == "corrected" and split.get("mode") != "release":
        ids = np.asarray(cache.case_ids)
        cases = {k: set(ids[sorted(v)].tolist()) if v else set() for k, v in sets.items()}
        for other in ("train", "val"):
            shared = cases["test"] & cases[other]
            if shared:
                raise DataError(f"test patient(s) {sorted(shared)[:3]} also in the {other} set: "
                                "the corrected setting tests on unseen patients", where,
                                "make a patient split (make_split mode='patient')")
