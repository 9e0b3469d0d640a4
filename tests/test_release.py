"""`kdlib release` on a generated phantom (SYNTHETIC, 2 epochs): the splits, the runs it
trains, the numbers its model cards print, resume and refusal to overwrite."""
import json

import numpy as np
import pytest
import torch

from kdlib import release
from kdlib.data import SliceCache, load_split
from kdlib.errors import DataError


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    from kdlib.data import write_phantom_msd

    root = tmp_path_factory.mktemp("release")
    phantom = write_phantom_msd(root / "Task09_Phantom", cases=6, seed=0, size=32, slices=12)
    cases = sorted(p.name.split(".")[0] for p in (phantom / "imagesTr").iterdir())
    cfg = release.ReleaseConfig(data=str(phantom), out=str(root / "work"), size=32,
                                publish=str(root / "pub"), models=("S1",), epochs=2,
                                min_epochs=0, patience=0, smooth=1, precision="fp32",
                                latency=False,
                                fold_test_cases=tuple(tuple(cases[i:i + 2]) for i in (0, 2, 4)))
    summary = release.build_release(cfg, progress=lambda line: None)
    return cfg, root, summary


def test_splits_test_every_patient_once_and_the_release_trains_on_all(made):
    cfg, root, _ = made
    cache = SliceCache.load(root / "work" / "cache-32")
    ids = np.asarray(cache.case_ids)
    tested = []
    for fold in range(3):
        split = load_split(root / "work" / "splits" / f"cv-fold{fold}.json")
        test, train = set(ids[split["test"]]), set(ids[split["train"]])
        assert test == set(cfg.fold_test_cases[fold]) and not test & train
        assert not test & set(ids[split["val"]])
        tested += sorted(test)
    assert sorted(tested) == sorted(cache.cases)
    rel = load_split(root / "work" / "splits" / "release.json")
    assert set(ids[rel["train"]]) == set(cache.cases)  # all six patients train
    parts = [set(rel[k]) for k in ("train", "val", "test")]
    assert sum(map(len, parts)) == len(cache) and not (parts[0] & parts[1] or parts[0] & parts[2]
                                                      or parts[1] & parts[2])
    assert rel["mode"] == "release" and "not new patients" in rel["test_by"]


def test_runs_are_the_recipe_with_and_without_augmentation(made):
    _, root, summary = made
    configs = [json.loads(p.read_text()) for p in (root / "work" / "runs").glob("*/config.json")]
    assert len(configs) == 7  # 3 folds x (augmented, as given) + the release model
    assert sum(c["augment"] for c in configs) == 4
    assert {c["role"] for c in configs} == {"baseline"} and {c["optimizer"] for c in configs} == {"adamw"} and all(c["train_subset"] == "train" for c in configs)
    assert summary["models"]["S1"]["release"]["config"]["augment"] is True
    # the augmented runs stop and select on validation in all 8 orientations; the as-given ones as given
    assert all(c.get("val_orientations", False) == c["augment"] for c in configs)
    # the release names no folder of the machine that made it, and carries every run's records
    published = root / "pub"
    assert str(root) not in (published / "release.json").read_text()
    assert all(str(root) not in (published / "S1" / name).read_text() for name in ("config.json", "preprocessing.json"))
    assert len([p for p in (published / "runs").iterdir() if (p / "metrics.json").is_file()]) == 7


def test_orientations_and_the_card_read_release_json(made):
    cfg, root, summary = made
    s = summary["models"]["S1"]
    for key in ("augmented", "as_given"):
        block = s[key]
        assert len(block["orientation_dice"]) == 8
        # op 0 is the test set as given: in fp32 it is the run's own pooled test Dice
        for fold in block["folds"]:
            assert fold["orientations"][0] == pytest.approx(fold["test_dice"], abs=1e-9)
        assert block["cv_dice_mean"] == pytest.approx(np.mean([f["test_dice"] for f in block["folds"]]))
        spread = max(block["orientation_dice"]) - min(block["orientation_dice"])
        assert block["orientation_spread"] == pytest.approx(spread)
        # with --tta the mask does not depend on the orientation (up to rounding)
        assert block["orientation_spread_tta"] <= 1e-6
    card = (root / "pub" / "S1" / "README.md").read_text()
    assert f"**Expected Dice on a new patient like these: {s['augmented']['cv_dice_mean']:.3f}**" in card
    assert f"**{s['augmented']['orientation_spread']:.3f}**" in card
    stored = json.loads((root / "pub" / "release.json").read_text())
    assert stored["models"]["S1"]["augmented"]["cv_dice_mean"] == s["augmented"]["cv_dice_mean"]
    for name in ("checkpoints/best.pt", "preprocessing.json", "model.onnx", "model.onnx.json"):
        assert (root / "pub" / "S1" / name).is_file()
    assert json.loads((root / "pub" / "S1" / "model.onnx.json").read_text())["check"]["mask_pixels_differing"] == 0
    assert (root / "pub" / "orientations.png").stat().st_size > 10_000


def test_a_published_release_is_never_replaced_and_runs_resume(made, tmp_path):
    cfg, root, _ = made
    stamp = (root / "pub" / "release.json").read_bytes()
    with pytest.raises(DataError, match="already published"):
        release.build_release(cfg, progress=lambda line: None)
    assert (root / "pub" / "release.json").read_bytes() == stamp
    # publishing elsewhere reuses every finished run: nothing is trained again
    metrics = {p: p.stat().st_mtime_ns for p in (root / "work" / "runs").glob("*/metrics.json")}
    lines = []
    from dataclasses import replace
    release.build_release(replace(cfg, publish=str(tmp_path / "again")), progress=lines.append)
    assert {p: p.stat().st_mtime_ns for p in metrics} == metrics


def test_the_release_student_predicts(made, tmp_path):
    from kdlib.predict import predict

    _, root, _ = made
    slices = (np.random.default_rng(0).integers(0, 255, (4, 48, 48))).astype(np.uint8)
    from PIL import Image

    (tmp_path / "in").mkdir()
    for k, s in enumerate(slices):
        Image.fromarray(s).save(tmp_path / "in" / f"slice_{k}.png")
    summary = predict(root / "pub" / "S1", tmp_path / "in", tmp_path / "out")
    assert summary["inputs"] == 4 and (tmp_path / "out" / "spleen.csv").is_file()
    # --tta: a slice turned by 90 degrees gets its mask turned by 90 degrees
    (tmp_path / "turned").mkdir()
    for k, s in enumerate(slices):
        Image.fromarray(np.rot90(s).copy()).save(tmp_path / "turned" / f"slice_{k}.png")
    predict(root / "pub" / "S1", tmp_path / "in", tmp_path / "tta", tta=True)
    predict(root / "pub" / "S1", tmp_path / "turned", tmp_path / "tta_turned", tta=True)
    for k in range(4):
        a = np.asarray(Image.open(tmp_path / "tta" / f"slice_{k}_spleen.png"))
        b = np.asarray(Image.open(tmp_path / "tta_turned" / f"slice_{k}_spleen.png"))
        assert np.array_equal(np.rot90(a), b)


def test_latency_rows_for_both_engines(made, tmp_path):
    from kdlib import export, train

    _, root, _ = made
    model = train.load_model(root / "pub" / "S1", torch.device("cpu"))
    rows = release.measure_latency({"S1": (model, root / "pub" / "S1" / "model.onnx")},
                                   sizes=(32,), batches=(1, 2), threads=(1,), repeats=2)
    assert {(r["engine"], r["batch"]) for r in rows} == {("torch", 1), ("torch", 2),
                                                          ("onnxruntime", 1), ("onnxruntime", 2)}
    assert all(r["ms_per_slice"] > 0 and 1 <= r["calls"] <= 2 for r in rows)
    assert export.describe(root / "pub" / "S1" / "model.onnx")["model"] == "S1"
