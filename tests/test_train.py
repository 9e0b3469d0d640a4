"""Training engine: determinism, resume, skip, the teacher computed once, predict/evaluate."""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from kdlib import losses, train
from kdlib.data import SliceCache, make_split, preprocess, save_split, write_phantom_msd
from kdlib.errors import KdlibError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = write_phantom_msd(root / "phantom", cases=4, seed=3, size=32, slices=12)
    preprocess(data, root / "cache", size=32)
    cache = SliceCache.load(root / "cache")
    save_split(make_split(cache, mode="patient", seed=0), root / "split.json")
    return root


def _baseline(tiny, **kw):
    cfg = train.baseline_config("S1", tiny / "cache", tiny / "split.json", epochs=3, batch_size=8)
    return replace(cfg, **kw)


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def test_deterministic_on_cpu(tiny, tmp_path):
    a = train.train(_baseline(tiny), tmp_path / "a", progress=False)
    b = train.train(_baseline(tiny), tmp_path / "b", progress=False)
    assert a.name == b.name  # same configuration, same folder name
    ma, mb = _metrics(a), _metrics(b)
    assert ma["pooled"] == mb["pooled"] and ma["loss"] == mb["loss"]
    c = train.train(_baseline(tiny, seed=7), tmp_path / "a", progress=False)
    assert c != a and _metrics(c)["loss"] != ma["loss"]


def test_interrupted_run_resumes_to_same_result(tiny, tmp_path):
    full = train.train(_baseline(tiny), tmp_path / "full", progress=False)
    with pytest.raises(KeyboardInterrupt):
        train.train(_baseline(tiny), tmp_path / "cut", stop_after_epoch=1, progress=False)
    cut_dir = _baseline(tiny).run_dir(tmp_path / "cut")
    assert not (cut_dir / "metrics.json").exists() and (cut_dir / "checkpoints" / "last.pt").exists()
    resumed = train.train(_baseline(tiny), tmp_path / "cut", progress=False)
    assert _metrics(resumed)["pooled"] == _metrics(full)["pooled"]
    assert _metrics(resumed)["loss"] == pytest.approx(_metrics(full)["loss"], abs=0)
    assert len(train.load_history(resumed)) == 3


def test_finished_run_is_skipped_and_never_overwritten(tiny, tmp_path):
    run = train.train(_baseline(tiny), tmp_path, progress=False)
    stamp = (run / "metrics.json").stat().st_mtime_ns
    assert train.train(_baseline(tiny), tmp_path, progress=False) == run
    assert (run / "metrics.json").stat().st_mtime_ns == stamp
    # a folder holding a different configuration is refused
    other = _baseline(tiny, lr=1e-3)
    target = other.run_dir(tmp_path)
    target.mkdir(parents=True)
    (target / "config.json").write_text(json.dumps(_baseline(tiny).to_dict()))
    with pytest.raises(KdlibError, match="different configuration"):
        train.train(other, tmp_path, progress=False)


def test_kd_uses_teacher_outputs_computed_once(tiny, tmp_path, monkeypatch):
    teacher = train.train(train.teacher_config("unet", tiny / "cache", tiny / "split.json", epochs=1),
                          tmp_path, progress=False)
    calls = []
    real_load = train.load_model
    monkeypatch.setattr(train, "load_model", lambda *a, **k: calls.append(a[0]) or real_load(*a, **k))
    train._TEACHER_OUTPUTS.clear()
    for scales in (("B",), ("E", "D")):
        kd = losses.kd_config_for("T1", "S1", scales=scales, pmd="binary")
        cfg = train.kd_run_config(teacher, "S1", kd, tiny / "cache", tiny / "split.json", epochs=2)
        run = train.train(cfg, tmp_path, progress=False)
        history = train.load_history(run)
        assert {f"train_{s}" for s in scales} <= set(history.columns)
        assert "train_pmd" in history.columns and history["train_pmd"].abs().sum() > 0
    teacher_loads = [c for c in calls if str(c) == str(teacher)]
    # one teacher pass for both configurations: never one per step, epoch or configuration
    assert len(teacher_loads) == 1


def test_predict_and_evaluate_cli(tiny, tmp_path):
    run = train.train(_baseline(tiny), tmp_path / "runs", progress=False)
    out = tmp_path / "pred"
    cmd = [sys.executable, "-m", "kdlib", "predict", "--model", str(run),
           "--input", str(tiny / "phantom"), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["inputs"] == 4 and summary["slices"] == 48 and summary["slices_per_second"] > 0
    import nibabel as nib

    source = nib.load(str(sorted((tiny / "phantom" / "imagesTr").glob("*.nii.gz"))[0]))
    pred = nib.load(str(out / sorted((tiny / "phantom" / "imagesTr").glob("*.nii.gz"))[0].name))
    assert pred.shape == source.shape and np.allclose(pred.affine, source.affine)
    done = subprocess.run([sys.executable, "-m", "kdlib", "evaluate", "--pred", str(out),
                           "--truth", str(tiny / "phantom")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) >= {"pooled", "per_image", "per_volume"}
    assert 0.0 <= report["pooled"]["dice"] <= 1.0


def test_predict_rejects_unfinished_run(tmp_path):
    done = subprocess.run([sys.executable, "-m", "kdlib", "predict", "--model", str(tmp_path),
                           "--input", str(tmp_path), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "metrics.json" in done.stderr


def _cli(*args):
    done = subprocess.run([sys.executable, "-m", "kdlib", *map(str, args)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_predict_and_evaluate_on_real_slices_and_dicom(tiny, tmp_path):
    """A trained model segments the real thesis slices (PNG masks at each input's own size)
    and a real 3D-IRCADb DICOM series (NIfTI mask), and `evaluate` scores both."""
    from conftest import require_shared

    slices, dicom = require_shared("thesis_slices"), require_shared("ircadb/3Dircadb1.1")
    run = train.train(_baseline(tiny), tmp_path / "runs", progress=False)
    summary = json.loads(_cli("predict", "--model", run, "--input", slices, "--out", tmp_path / "png").splitlines()[-1])
    assert summary["inputs"] == 85 and summary["slices"] == 85
    from PIL import Image

    first = sorted((tmp_path / "png").glob("*.png"))[0]
    assert Image.open(first).size == Image.open(slices / "images" / first.name).size
    report = json.loads(_cli("evaluate", "--pred", tmp_path / "png", "--truth", slices))
    assert len(report["per_volume"]["cases"]) == 4  # the four MSD cases of the thesis slices
    summary = json.loads(_cli("predict", "--model", run, "--input", dicom, "--format", "dicom",
                              "--out", tmp_path / "nii").splitlines()[-1])
    assert summary["slices"] == 129
    report = json.loads(_cli("evaluate", "--pred", tmp_path / "nii", "--truth", dicom.parent))
    assert list(report["per_volume"]["cases"]) == ["3Dircadb1.1"]


# ---------------------------------------------------------------------------------------
# issue 8: a run's randomness is its own; the KD-off control; provenance


def test_kd_run_does_not_depend_on_what_ran_before(tiny, tmp_path):
    """Faithful random projectors draw from the run's generator: the same run gives the same
    metrics whether or not the teacher's outputs were cached, whatever consumed the RNG."""
    teacher = train.train(train.teacher_config("unet", tiny / "cache", tiny / "split.json", epochs=1),
                          tmp_path / "teacher", progress=False)
    kd = losses.kd_config_for("T1", "S1", scales=("B",), pmd="faithful", projector="random")
    cfg = train.kd_run_config(teacher, "S1", kd, tiny / "cache", tiny / "split.json", epochs=2,
                              batch_size=8)
    train._TEACHER_OUTPUTS.clear()  # first run: loads the teacher (builds a network) itself
    first = _metrics(train.train(cfg, tmp_path / "a", progress=False))
    torch.rand(1000)  # second run: teacher outputs cached, global RNG elsewhere
    np.random.rand(10)
    second = _metrics(train.train(cfg, tmp_path / "b", progress=False))
    assert first["pooled"] == second["pooled"] and first["loss"] == second["loss"]
    assert first["last_epoch"]["pooled"] == second["last_epoch"]["pooled"]


def test_control_config_is_the_kd_recipe_without_a_teacher(tiny, tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text(json.dumps({"model": "T1"}))
    kd = train.kd_run_config(teacher, "S2", losses.kd_config_for("T1", "S2"), tiny / "cache",
                             tiny / "split.json", epochs=7, patience=3)
    control = train.control_config("S2", tiny / "cache", tiny / "split.json", epochs=7, patience=3)
    assert control.role == "control" and control.name == "S2 KD-off control"
    assert control.teacher_run is None and control.kd is None
    differ = {k for k, v in control.to_dict().items() if kd.to_dict()[k] != v}
    assert differ == {"name", "role", "teacher_run", "kd"}
    assert (control.optimizer, control.lr, control.batch_size, control.loss, control.train_subset) == \
        ("rmsprop", 1e-2, 20, "dice", "student_train")
    with pytest.raises(KdlibError, match="no teacher_run"):
        replace(control, teacher_run=str(teacher))
    run = train.train(replace(control, epochs=1), tmp_path / "runs", progress=False)
    assert json.loads((run / "config.json").read_text())["role"] == "control"


def test_config_records_provenance_outside_the_identity(tiny, tmp_path):
    cfg = _baseline(tiny)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, tmp_path, stop_after_epoch=1, progress=False)
    run = cfg.run_dir(tmp_path)
    record = json.loads((run / "config.json").read_text())["provenance"]
    manifest = json.loads((tiny / "cache" / "manifest.json").read_text())
    assert record["data_checksum"] == manifest["fingerprint"]
    from kdlib.io import sha256_file

    assert record["split_checksum"] == sha256_file(tiny / "split.json")
    assert isinstance(record["commit"], str) and record["clean"] in (True, False, None)
    # another commit in the record is no "different configuration": the run resumes
    stored = json.loads((run / "config.json").read_text())
    stored["provenance"]["commit"] = "0" * 40
    (run / "config.json").write_text(json.dumps(stored))
    assert train.train(cfg, tmp_path, progress=False) == run
    record = json.loads((run / "config.json").read_text())["provenance"]
    assert record["commit"] == "0" * 40 and [r["after_epoch"] for r in record["resumed"]] == [1]


# ---------------------------------------------------------------------------------------
# issue 9: early stopping, the cap, continuation, precision


def test_epochs_without_improvement_hand_values():
    assert train.epochs_without_improvement([]) == 0
    assert train.epochs_without_improvement([0.1, 0.2, 0.3]) == 0
    assert train.epochs_without_improvement([0.5, 0.4, 0.45]) == 2
    # gains of at most min_delta do not count as improvements
    assert train.epochs_without_improvement([0.5, 0.52, 0.54], min_delta=0.05) == 2
    assert train.epochs_without_improvement([0.5, 0.52, 0.54, 0.56], min_delta=0.05) == 0
    assert train.epochs_without_improvement([0.5, float("nan"), 0.4]) == 2


def test_early_stopping_and_the_cap(tiny, tmp_path):
    # min_delta 1 cannot be beaten: the first epoch sets the best, patience 2 stops after 3
    cfg = _baseline(tiny, epochs=10, patience=2, min_delta=1.0)
    run = train.train(cfg, tmp_path, progress=False)
    m = _metrics(run)
    assert (m["epochs_run"], m["stopped"]) == (3, "early")
    assert 1 <= m["best_epoch"] <= 3 and len(train.load_history(run)) == 3
    assert set(m["last_epoch"]) >= {"pooled", "per_image", "per_volume"}
    assert m["early_stopping"] == {"monitor": "val_dice", "patience": 2, "min_delta": 1.0,
                                   "min_epochs": 0}
    assert "val_dice" in train.load_history(run).columns
    # the cap is not part of the identity, and a run that stopped early is finished for any cap
    assert _baseline(tiny, epochs=50, patience=2, min_delta=1.0).run_dir(tmp_path) == run
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert train.train(replace(cfg, epochs=50), tmp_path, progress=False) == run
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == stamps
    # without patience a run trains to its cap
    plain = _metrics(train.train(_baseline(tiny, epochs=2), tmp_path, progress=False))
    assert (plain["epochs_run"], plain["stopped"]) == (2, "cap")


def test_no_early_stop_before_min_epochs(tiny, tmp_path):
    # the same unbeatable min_delta as above would stop at epoch 3; min_epochs 5 holds it to 5
    run = train.train(_baseline(tiny, epochs=10, patience=2, min_delta=1.0, min_epochs=5), tmp_path,
                      progress=False)
    m = _metrics(run)
    assert (m["epochs_run"], m["stopped"]) == (5, "early")
    assert m["early_stopping"]["min_epochs"] == 5
    # a stopping rule changes the outcome: its own folder, while min_epochs 0 keeps the old name
    assert run != _baseline(tiny, epochs=10, patience=2, min_delta=1.0).run_dir(tmp_path)
    assert "min_epochs" not in _baseline(tiny, epochs=10).identity()
    with pytest.raises(train.ConfigError, match="min_epochs"):
        _baseline(tiny, epochs=10, min_epochs=-1)


@pytest.mark.parametrize("select_on, kept", [("loss", 4), ("dice", 2)])
def test_the_kept_checkpoint_is_the_best_epoch_of_the_chosen_validation_number(tiny, tmp_path, monkeypatch,
                                                                                select_on, kept):
    # scripted validation numbers that disagree, as a distilled student's did on real CT: the
    # soft Dice loss keeps falling (best at epoch 4) while the thresholded Dice peaks at epoch 2
    script = iter([(0.9, 0.30), (0.8, 0.70), (0.7, 0.50), (0.6, 0.40)])
    real = train.evaluate_model

    def scripted(model, data, *args, **kwargs):
        result = real(model, data, *args, **kwargs)
        if "seg_loss" in kwargs:  # the per-epoch validation call (the test calls pass through)
            loss, dice = next(script)
            result = {**result, "loss": loss, "pooled": {**result["pooled"], "dice": dice}}
        return result

    monkeypatch.setattr(train, "evaluate_model", scripted)
    run = train.train(_baseline(tiny, epochs=4, select_on=select_on), tmp_path, progress=False)
    assert _metrics(run)["best_epoch"] == kept
    history = train.load_history(run)
    expected = history["val_loss"] if select_on == "loss" else 1.0 - history["val_dice"]  # lower is better
    assert history["val_criterion"].tolist() == pytest.approx(expected.tolist())
    # the original's rule keeps the old folder names; the other is its own configuration
    assert ("select_on" in _baseline(tiny, select_on=select_on).identity()) == (select_on == "dice")


def test_select_on_rejects_unknown_values(tiny):
    with pytest.raises(train.ConfigError, match="select_on"):
        _baseline(tiny, select_on="iou")


def test_continue_to_a_higher_cap_equals_a_straight_run(tiny, tmp_path):
    straight = train.train(_baseline(tiny, epochs=3), tmp_path / "straight", progress=False)
    short = train.train(_baseline(tiny, epochs=2, keep_last=True), tmp_path / "cont", progress=False)
    assert _metrics(short)["epochs_run"] == 2
    longer = train.train(_baseline(tiny, epochs=3, keep_last=True), tmp_path / "cont", progress=False)
    assert longer == short and longer.name == straight.name
    assert _metrics(longer)["epochs_run"] == 3
    assert _metrics(longer)["pooled"] == _metrics(straight)["pooled"]
    assert _metrics(longer)["last_epoch"] == _metrics(straight)["last_epoch"]
    assert len(train.load_history(longer)) == 3
    # without its last state (keep_last off, the default) a finished run cannot be continued
    with pytest.raises(KdlibError, match="cannot be continued"):
        train.train(_baseline(tiny, epochs=4), tmp_path / "straight", progress=False)


def test_precision_auto(monkeypatch):
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    assert train.resolve_precision("auto", "cpu") == "fp32"
    assert train.resolve_precision("auto", "cuda") == "bf16"
    assert train.resolve_precision("fp32", "cuda") == "fp32"
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: True)
    assert train.resolve_precision("auto", "cpu") == "bf16"
    cfg = train.RunConfig(name="x", model="S1", role="baseline", cache="c", split="s")
    assert cfg.precision == "bf16" and cfg.to_dict()["precision"] == "bf16"  # resolved on creation
    with pytest.raises(KdlibError):
        train.RunConfig(name="x", model="S1", role="baseline", cache="c", split="s", precision="fp8")


def test_cpu_bf16_detection_reads_cpuinfo(monkeypatch, tmp_path):
    from pathlib import Path as RealPath

    fake = tmp_path / "cpuinfo"
    for flags, expected in (("fpu sse avx2 avx512f", False), ("fpu avx512f avx512_bf16", True),
                            ("fpu amx_tile amx_bf16", True)):
        fake.write_text(f"processor : 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(train, "Path", lambda p: fake if str(p) == "/proc/cpuinfo" else RealPath(p))
        train.cpu_has_native_bf16.cache_clear()
        assert train.cpu_has_native_bf16() is expected
    train.cpu_has_native_bf16.cache_clear()


# ---------------------------------------------------------------------------------------
# issue 10: completion, never rewriting, leftovers, disk


def test_empty_metrics_is_not_finished(tiny, tmp_path):
    run = train.train(_baseline(tiny), tmp_path, progress=False)
    good = _metrics(run)
    for broken in ("{}", '{"pooled": {"dice": 0.5}}', "not json", "[]"):
        (run / "metrics.json").write_text(broken)
        assert not train.is_finished(run)
        if broken != '{"pooled": {"dice": 0.5}}':  # tables read records that have test scores
            assert [r for r in train.load_runs(tmp_path) if r["run_dir"] == str(run)] == []
    # an unfinished run without its last state trains again, to the same result
    train.train(_baseline(tiny), tmp_path, progress=False)
    assert train.is_finished(run) and _metrics(run)["pooled"] == good["pooled"]


def test_leftover_tmp_files_are_removed_at_the_next_start(tiny, tmp_path):
    cfg = _baseline(tiny)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, tmp_path, stop_after_epoch=1, progress=False)
    run = cfg.run_dir(tmp_path)
    leftovers = [run / "checkpoints" / ".last.pt.k1ll3d.tmp", run / ".metrics.json.abc.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    train.train(cfg, tmp_path, progress=False)
    assert not any(p.exists() for p in leftovers) and train.is_finished(run)


def test_finished_run_keeps_only_the_weights(tiny, tmp_path):
    run = train.train(_baseline(tiny), tmp_path, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt"]
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert set(state) == {"model", "epoch"}  # no optimiser state, no projectors
    kept = train.train(_baseline(tiny, keep_last=True), tmp_path / "keep", progress=False)
    assert (kept / "checkpoints" / "last.pt").exists()
    assert "optimizer" in torch.load(kept / "checkpoints" / "last.pt", weights_only=True)


def test_code_state_is_clean_when_only_outputs_changed(tmp_path, monkeypatch):
    """A publishing run rewrites README.md; only a change to the code makes the tree unclean."""
    from kdlib import provenance

    repo = tmp_path / "repo"
    (repo / "kdlib").mkdir(parents=True)
    (repo / "kdlib" / "train.py").write_text("x = 1\n")
    (repo / "README.md").write_text("results\n")
    git = lambda *args: subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(provenance, "REPO_ROOT", repo)
    (repo / "README.md").write_text("new results\n")
    assert provenance.code_state()["clean"] is True
    (repo / "kdlib" / "train.py").write_text("x = 2\n")
    assert provenance.code_state()["clean"] is False
