"""Training engine: determinism, resume, skip, the teacher computed once, predict/evaluate."""
import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from kdlib import losses, train
from kdlib.data import SliceCache, make_split, save_split
from kdlib.errors import KdlibError


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
    first = sorted((tiny / "phantom" / "imagesTr").glob("*.nii.gz"))[0]
    pred = nib.load(str(out / first.name.replace(".nii.gz", "_spleen.nii.gz")))  # <case>_spleen
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
    source = slices / "images" / (first.name[:-len("_spleen.png")] + ".png")  # <slice>_spleen
    assert Image.open(first).size == Image.open(source).size
    report = json.loads(_cli("evaluate", "--pred", tmp_path / "png", "--truth", slices))
    assert len(report["per_volume"]["cases"]) == 4  # the four MSD cases of the thesis slices
    summary = json.loads(_cli("predict", "--model", run, "--input", dicom, "--format", "dicom",
                              "--out", tmp_path / "nii").splitlines()[-1])
    assert summary["slices"] == 129
    # the truth folder holds patients 1 and 7: scoring one of them needs --allow-missing
    report = json.loads(_cli("evaluate", "--pred", tmp_path / "nii", "--truth", dicom.parent,
                             "--allow-missing"))
    assert list(report["per_volume"]["cases"]) == ["3Dircadb1.1"]
    assert report["missing"] == ["3Dircadb1.7"]


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
    real = train.validate

    def scripted(model, data, *args, **kwargs):  # the per-epoch validation (not the test)
        result = real(model, data, *args, **kwargs)
        loss, dice = next(script)
        return {**result, "loss": loss, "pooled": {**result["pooled"], "dice": dice}}

    monkeypatch.setattr(train, "validate", scripted)
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
    # kept as "auto" (issue 20): resolved on the device the run trains on, not where it is made
    assert cfg.precision == "auto" and cfg.to_dict()["precision"] == "auto"
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


# ---------------------------------------------------------------------------------------
# issue 17: epochs that cost their compute (layout, checkpoint cadence, no per-step host work)


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts the calls that bring a tensor's value to the host (a device sync on a GPU)."""

    READS = {"item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__",
             "__array__"}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_memory_format_is_channels_last_where_measured_faster():
    cl, nchw = torch.channels_last, torch.contiguous_format
    assert train.memory_format("S1", "cpu", "fp32") == cl and train.memory_format("s2", "cpu", "bf16") == cl
    assert train.memory_format("T1", "cpu", "bf16") == cl and train.memory_format("T1", "cpu", "fp32") == nchw
    assert train.memory_format("T2", "cpu", "bf16") == nchw
    assert train.memory_format("T2", "cuda", "bf16") == cl and train.memory_format("S1", "cuda", "fp32") == nchw


def _step(model, image, mask, precision):
    with train.autocast(torch.device("cpu"), precision):
        loss = losses.dice_bce_loss(model(image)["logits"], mask)
    loss.backward()
    return loss.detach().double(), torch.cat([p.grad.double().flatten() for p in model.parameters()])


@pytest.mark.parametrize("precision, loss_tol, grad_tol", [("fp32", 1e-6, 1e-3), ("bf16", 1e-4, 5e-2)])
def test_channels_last_step_matches_nchw_within_rounding(precision, loss_tol, grad_tol):
    """The tolerance of the layout change: one training step of S1 in channels_last gives
    NCHW's loss within `loss_tol` and its gradient within `grad_tol` (relative, L2 over all
    parameters). That is rounding: NCHW's own fp32 gradient is 2-4e-4 from a float64
    reference, its bf16 gradient 3-5e-2 (64x64, batch 8); channels_last is as close."""
    import copy

    torch.manual_seed(0)
    nchw = train.models.build("S1").train()
    last = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    image, mask = torch.rand(8, 3, 64, 64), (torch.rand(8, 1, 64, 64) > 0.7).float()
    loss_a, grad_a = _step(nchw, image, mask, precision)
    loss_b, grad_b = _step(last, image.contiguous(memory_format=torch.channels_last), mask, precision)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in last.parameters() if p.dim() == 4)
    assert float(abs(loss_a - loss_b) / abs(loss_a)) <= loss_tol
    assert float((grad_a - grad_b).norm() / grad_a.norm()) <= grad_tol


def test_a_run_trains_in_channels_last_and_stays_deterministic(tiny, tmp_path, monkeypatch):
    cfg = _baseline(tiny, epochs=2)
    first = _metrics(train.train(cfg, tmp_path / "a", progress=False))
    assert first["train_memory_format"] == "channels_last"
    again = _metrics(train.train(cfg, tmp_path / "b", progress=False))
    assert first["pooled"] == again["pooled"] and first["last_epoch"] == again["last_epoch"]
    # the same run in NCHW: its losses agree within the layout's rounding (2e-6 measured)
    monkeypatch.setattr(train, "memory_format", lambda *a: torch.contiguous_format)
    nchw = train.train(cfg, tmp_path / "c", progress=False)
    assert _metrics(nchw)["train_memory_format"] == "nchw"
    ours = train.load_history(cfg.run_dir(tmp_path / "a"))
    for key in ("train_total", "val_loss"):
        assert train.load_history(nchw)[key].tolist() == pytest.approx(ours[key].tolist(), rel=1e-4)


def _data(tiny, subset="val", device="cpu"):
    cache = SliceCache.load(tiny / "cache")
    split = json.loads((tiny / "split.json").read_text())
    return train.SliceTensors(cache, split[subset], torch.device(device))


class TinyMultitask(torch.nn.Module):
    """A stand-in for T1 at a fraction of its cost: logits and a reconstruction."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.seg, self.rec = torch.nn.Conv2d(4, 1, 1), torch.nn.Conv2d(4, 3, 1)
        self.feature_info = {"dec": (4, 1)}

    def forward(self, x):
        dec = torch.relu(self.body(x))
        return {"logits": self.seg(dec), "recon": self.rec(dec), "dec": dec}


def test_validation_reads_back_once_and_matches_the_test_metrics(tiny):
    """Per epoch, validation sums its confusion counts, loss, recon loss and PSNR on the
    device and reads them back in one transfer, however many batches; its numbers are the
    test evaluation's (pooled counts and loss exactly, PSNR to float64 rounding)."""
    torch.manual_seed(0)
    model = TinyMultitask().eval()
    data, dev = _data(tiny, "train"), torch.device("cpu")
    assert len(data) > 3 * 4
    with HostReads() as reads:
        val = train.validate(model, data, "prob", dev, batch_size=4, with_recon=True, seg_loss="dice")
    assert len(reads.calls) == 1
    full = train.evaluate_model(model, data, "prob", dev, batch_size=4, with_recon=True, seg_loss="dice")
    assert val["loss"] == full["loss"] and val["recon_loss"] == full["recon_loss"]
    assert val["pooled"] == {k: v for k, v in full["pooled"].items() if k != "tn"}
    assert val["psnr"] == pytest.approx(full["psnr"], rel=1e-12)
    assert "ssim" in full and "ssim" not in val


def test_teacher_validation_never_computes_ssim(tiny, tmp_path, monkeypatch):
    calls = []
    real = train.metrics.ssim
    monkeypatch.setattr(train.metrics, "ssim", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(train.models, "build", lambda name, **kw: TinyMultitask())  # T1's outputs
    cfg = train.teacher_config("T1", tiny / "cache", tiny / "split.json", epochs=3, batch_size=8)
    run = train.train(cfg, tmp_path, progress=False)
    history = train.load_history(run)
    assert len(history) == 3 and history["val_psnr"].notna().all()
    # only the test evaluations (kept checkpoint and last epoch, one batch each) call it
    assert len(calls) == 2 and "ssim" in _metrics(run) and "ssim" in _metrics(run)["last_epoch"]


def test_an_epoch_reads_its_losses_back_once(tiny):
    """The loss terms are summed on the device and read once per epoch, not per step; the
    means equal the per-step reads that kdlib made before (float64 sums, bit for bit)."""
    torch.manual_seed(0)
    model = train.models.build("S1")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # SGD itself reads nothing back
    data, dev = _data(tiny, "train"), torch.device("cpu")
    cfg = _baseline(tiny)
    steps = []

    def objective(rows, out, image, mask):
        terms = train._plain_objective(cfg, out, image, mask)
        steps.append({k: v.detach().clone() for k, v in terms.items()} | {"n": image.shape[0]})
        return terms

    with HostReads() as reads:
        means = train._train_epoch(model, optimizer, data, 4, torch.Generator().manual_seed(1),
                                   objective, dev, "fp32")
    assert len(steps) >= 3 and len(reads.calls) == 1
    for key in ("seg", "total"):
        per_step = 0.0
        for s in steps:
            per_step += float(s[key]) * s["n"]
        assert means[key] == per_step / len(data)


def test_batches_come_from_a_permutation_on_the_data_device(tiny):
    """Rows are indexed on the device (here the meta device, which only CUDA-like devices
    share with it); the order is the documented `torch.randperm` of the CPU generator."""
    meta = _data(tiny, "train", "meta")
    rows = [r for r, _, _ in meta.batches(5, torch.Generator().manual_seed(7))]
    assert {r.device.type for r in rows} == {"meta"}
    cpu = _data(tiny, "train")
    order = torch.cat([r for r, _, _ in cpu.batches(5, torch.Generator().manual_seed(7))])
    assert order.tolist() == torch.randperm(len(cpu), generator=torch.Generator().manual_seed(7)).tolist()


def test_cudnn_benchmark_only_on_cuda():
    before = torch.backends.cudnn.benchmark
    try:
        train.set_determinism(torch.device("cuda"))
        assert torch.backends.cudnn.benchmark is True
        train.set_determinism(torch.device("cpu"))
        assert torch.backends.cudnn.benchmark is False
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.backends.cudnn.benchmark = before
        train.set_determinism(torch.device("cpu"))


def _fake_clock(step=10.0):
    """A clock that advances `step` seconds each time the engine reads it."""
    ticks = iter(range(0, 10**6))
    return lambda: step * next(ticks)


def test_last_checkpoint_is_written_at_the_cadence_and_at_the_end(tiny, tmp_path, monkeypatch):
    saved = []
    real = train._save_checkpoint
    monkeypatch.setattr(train, "_save_checkpoint",
                        lambda path, state: saved.append((path.name, state["epoch"] + 1)) or real(path, state))
    # the clock reads 0 at the start and 10, 20, ... at the end of epochs 1, 2, ...: with 15 s
    # last.pt is written after epochs 2 and 4, and after epoch 5, the last
    monkeypatch.setattr(train, "_clock", _fake_clock())
    run = train.train(_baseline(tiny, epochs=5, checkpoint_seconds=15, keep_last=True), tmp_path / "a",
                      progress=False)
    assert [e for name, e in saved if name == "last.pt"] == [2, 4, 5]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 4
    # 0 writes it every epoch (the former behaviour); an early stop writes it at the stop
    saved.clear()
    train.train(_baseline(tiny, epochs=3, checkpoint_seconds=0), tmp_path / "b", progress=False)
    assert [e for name, e in saved if name == "last.pt"] == [1, 2, 3]
    saved.clear()
    monkeypatch.setattr(train, "_clock", _fake_clock())
    m = _metrics(train.train(_baseline(tiny, epochs=10, patience=2, min_delta=1.0), tmp_path / "c",
                             progress=False))
    assert m["stopped"] == "early" and [e for name, e in saved if name == "last.pt"] == [3]
    # the cadence changes no result: it is outside the run's identity, old folders keep their names
    assert _baseline(tiny, checkpoint_seconds=5).run_dir(tmp_path) == _baseline(tiny).run_dir(tmp_path)
    assert "checkpoint_seconds" not in _baseline(tiny).identity()
    with pytest.raises(train.ConfigError, match="checkpoint_seconds"):
        _baseline(tiny, checkpoint_seconds=-1)


KILLED_RUN = """
import itertools, json, os, signal, sys
import torch
torch.set_num_threads(int(sys.argv[3]))
from kdlib import train
ticks = itertools.count(0, 10)
train._clock = lambda: next(ticks)  # epoch ends at 10, 20, 30 s...: last.pt after epoch 3
real = train._write_history
def write(path, rows):
    real(path, rows)
    if len(rows) == 4:  # after epoch 4, before its state is ever written: no cleanup runs
        os.kill(os.getpid(), signal.SIGKILL)
train._write_history = write
train.train(train.RunConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], progress=False)
"""


def test_sigkill_between_checkpoints_resumes_to_the_straight_run(tiny, tmp_path):
    """A run killed (SIGKILL) one epoch after its last checkpoint resumes from that
    checkpoint and ends with the uninterrupted run's metrics, exactly."""
    import os
    import signal
    from pathlib import Path

    cfg = _baseline(tiny, epochs=5, checkpoint_seconds=25)
    straight = _metrics(train.train(cfg, tmp_path / "straight", progress=False))
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", KILLED_RUN, json.dumps(cfg.to_dict()),
                           str(tmp_path / "cut"), str(torch.get_num_threads())],
                          capture_output=True, text=True, timeout=300, env=env, cwd=repo)
    assert done.returncode == -signal.SIGKILL, done.stderr
    run = cfg.run_dir(tmp_path / "cut")
    assert not (run / "metrics.json").exists() and len(train.load_history(run)) == 4
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] + 1 == 3 and len(state["history"]) == 3
    resumed = train.train(cfg, tmp_path / "cut", progress=False)
    again = _metrics(resumed)
    assert again["pooled"] == straight["pooled"] and again["last_epoch"] == straight["last_epoch"]
    assert again["best_epoch"] == straight["best_epoch"] and again["loss"] == straight["loss"]
    assert len(train.load_history(resumed)) == 5
    assert json.loads((run / "config.json").read_text())["provenance"]["resumed"][0]["after_epoch"] == 3


def test_resume_puts_back_the_kept_checkpoint_of_its_state(tiny, tmp_path, monkeypatch):
    """best.pt may be newer than the last state (written between two last.pt writes, before
    a kill); the resumed run puts back the one its state kept, as its best_epoch says."""
    cfg = _baseline(tiny, epochs=4)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg, tmp_path, stop_after_epoch=2, progress=False)
    run = cfg.run_dir(tmp_path)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    train._save_checkpoint(run / "checkpoints" / "best.pt",  # a later epoch's (here: foreign) weights
                           {"model": train.models.build("S1").state_dict(), "epoch": 2})
    real = train.validate
    monkeypatch.setattr(train, "validate", lambda *a, **k: {**real(*a, **k), "loss": math.inf})
    train.train(cfg, tmp_path, progress=False)  # epochs 3-4 never improve on the state's best
    kept = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert kept["epoch"] + 1 == state["best_epoch"] == _metrics(run)["best_epoch"]
    assert all(torch.equal(kept["model"][k], v) for k, v in state["best_model"].items())


# ---------------------------------------------------------------------------------------
# issue 17: teachers that finish learning, selections that one epoch cannot win

# a teacher's validation Dice as on real-mini: a lucky epoch-3 peak on one small validation
# patient, then noise while the network keeps learning, and a plateau above 0.7 from epoch 17
NOISY_EARLY_PEAK = [0.10, 0.50, 0.85, 0.30, 0.40, 0.35, 0.45, 0.40, 0.50, 0.45, 0.55, 0.50,
                    0.60, 0.62, 0.65, 0.64, 0.70, 0.72, 0.71, 0.73, 0.72, 0.72, 0.71, 0.72]


def _history(dice):
    return [{"val_dice": d} for d in dice]


def test_trailing_mean_and_the_smoothed_stopping_rule(tiny):
    assert train.trailing_mean([1.0, 2.0, 3.0, 5.0], 1) == [1.0, 2.0, 3.0, 5.0]
    assert train.trailing_mean([1.0, 2.0, 3.0, 5.0], 2) == [1.0, 1.5, 2.5, 4.0]
    base = _baseline(tiny, epochs=30, patience=8, min_epochs=10)
    # the original rule: the epoch-3 peak is never beaten, so it stops at epoch 11
    stops = [n for n in range(1, 25) if train.should_stop(base, _history(NOISY_EARLY_PEAK[:n]))]
    assert stops[0] == 11
    # the teacher rule: no best before epoch 11, a 3-epoch mean: it runs on past its peak
    rule = replace(base, warmup=10, smooth=3)
    assert train.first_counted_epoch(rule) == 11
    assert not any(train.should_stop(rule, _history(NOISY_EARLY_PEAK[:n])) for n in range(1, 25))
    assert train.should_stop(rule, _history(NOISY_EARLY_PEAK + [0.5] * 8))  # 8 epochs below its best
    assert train.first_counted_epoch(replace(base, smooth=4)) == 4


def test_a_teacher_with_an_early_peak_runs_past_its_minimum_and_keeps_no_peak(tiny, tmp_path, monkeypatch):
    """The scripted noisy validation curve with an early peak: under the teacher rule
    (min_epochs 10, warmup 10, 3-epoch mean) the teacher neither stops before its minimum
    nor keeps the epoch-3 peak; the original rule stops at epoch 11 and keeps epoch 3."""
    monkeypatch.setattr(train.models, "build", lambda name, **kw: TinyMultitask())
    real = train.validate

    def scripted(model, data, *args, **kwargs):
        result = real(model, data, *args, **kwargs)
        return {**result, "pooled": {**result["pooled"], "dice": next(curve)}}

    monkeypatch.setattr(train, "validate", scripted)
    runs = {}
    for label, extra in (("original", {}), ("teacher rule", {"warmup": 10, "smooth": 3})):
        curve = iter(NOISY_EARLY_PEAK)
        cfg = train.teacher_config("T1", tiny / "cache", tiny / "split.json", epochs=24, batch_size=8,
                                   patience=8, min_epochs=10, select_on="dice", **extra)
        runs[label] = train.train(cfg, tmp_path / label, progress=False)
    old, new = _metrics(runs["original"]), _metrics(runs["teacher rule"])
    assert (old["epochs_run"], old["stopped"], old["best_epoch"]) == (11, "early", 3)
    assert new["epochs_run"] == 24 and new["stopped"] == "cap"
    assert new["best_epoch"] >= 17 and NOISY_EARLY_PEAK[new["best_epoch"] - 1] >= 0.7
    assert new["early_stopping"] == {"monitor": "val_dice", "patience": 8, "min_delta": 0.0,
                                     "min_epochs": 10, "smooth": 3, "warmup": 10}
    history = train.load_history(runs["teacher rule"])
    assert history["val_dice_smoothed"].tolist() == pytest.approx(train.trailing_mean(NOISY_EARLY_PEAK, 3))
    assert "val_dice_smoothed" not in train.load_history(runs["original"]).columns


def test_smoothing_and_warmup_keep_old_identities(tiny, tmp_path):
    base = _baseline(tiny)
    assert "smooth" not in base.identity() and "warmup" not in base.identity()
    assert _baseline(tiny, smooth=3).run_dir(tmp_path) != base.run_dir(tmp_path)
    assert _baseline(tiny, warmup=5).run_dir(tmp_path) != base.run_dir(tmp_path)
    for bad in ({"smooth": 0}, {"warmup": -1}, {"smooth": "x"}):
        with pytest.raises(train.ConfigError):
            _baseline(tiny, **bad)
    # a cap that ends inside the warm-up still keeps a checkpoint: the last epoch
    m = _metrics(train.train(_baseline(tiny, epochs=2, warmup=5), tmp_path, progress=False))
    assert m["best_epoch"] == 2


@pytest.mark.parametrize("rule", [
    {"select_on": "loss"}, {"select_on": "dice"}, {"select_on": "dice", "smooth": 3},
    {"select_on": "loss", "smooth": 2, "warmup": 2}, {"select_on": "dice", "warmup": 9}])
def test_replaying_the_rules_on_a_history_gives_the_runs_own_choice(tiny, tmp_path, rule):
    """replay_selection (what bench_selection applies to full trajectories) reaches the
    epochs run and the kept epoch that the engine itself reached; on_epoch sees every epoch."""
    seen = []
    cfg = _baseline(tiny, epochs=8, patience=2, min_epochs=3, **rule)
    run = train.train(cfg, tmp_path, progress=False, on_epoch=lambda e, m: seen.append((e, m.training)))
    m = _metrics(run)
    history = train.load_history(run).to_dict("records")
    assert train.replay_selection(cfg, history) == (m["epochs_run"], m["best_epoch"])
    assert seen == [(e, False) for e in range(1, m["epochs_run"] + 1)]
    # the same trajectory without early stopping, replayed with the rule, stops where it did
    full = train.load_history(train.train(replace(cfg, patience=0), tmp_path / "full", progress=False))
    assert train.replay_selection(cfg, full.to_dict("records")) == (m["epochs_run"], m["best_epoch"])


# ---------------------------------------------------------------------------------------
# issue 20: a run's identity does not depend on the machine or folder that makes it


def _moved_copy(tiny, target):
    """The tiny cache and split copied to another folder, as another machine would have
    them: the split made there (so its file records that folder's cache path)."""
    import shutil

    shutil.copytree(tiny / "cache", target / "cache")
    cache = SliceCache.load(target / "cache")
    save_split(make_split(cache, mode="patient", seed=0), target / "split.json")
    return target


def test_identity_is_the_same_in_another_folder(tiny, tmp_path):
    moved = _moved_copy(tiny, tmp_path / "elsewhere")
    here, there = _baseline(tiny), _baseline(moved)
    assert (tiny / "split.json").read_bytes() != (moved / "split.json").read_bytes()  # the paths differ
    assert here.identity()["split"] == there.identity()["split"]
    assert here.run_dir("runs") == there.run_dir("runs")
    # a kd run names its teacher by folder name only: the same in both places
    kd = losses.kd_config_for("T1", "S1", scales=("B",), loss="infonce", pmd="binary")
    a = train.kd_run_config(tmp_path / "a" / "runs" / "t1-s42-0123", "S1", kd, tiny / "cache", tiny / "split.json",
                            name="KD(T1,S1) B")
    b = train.kd_run_config(tmp_path / "b" / "t1-s42-0123", "S1", kd, moved / "cache", moved / "split.json",
                            name="KD(T1,S1) B")
    assert a.run_dir("r") == b.run_dir("r")
    # but another split (content) is another run
    other = tmp_path / "other"
    other.mkdir()
    save_split(make_split(SliceCache.load(tiny / "cache"), mode="patient", seed=1), other / "split.json")
    assert _baseline(tiny, split=str(other / "split.json")).run_dir("runs") != here.run_dir("runs")


def test_precision_auto_is_not_resolved_into_the_identity(tiny, monkeypatch):
    """A configuration made on a CPU host and one made on a GPU host get the same run folder."""
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    on_cpu = _baseline(tiny, precision="auto")
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: True)
    on_gpu = _baseline(tiny, precision="auto")
    assert on_cpu.identity()["precision"] == "auto" and on_cpu.run_dir("r") == on_gpu.run_dir("r")
    assert _baseline(tiny, precision="bf16").run_dir("r") != on_cpu.run_dir("r")


def test_auto_precision_is_decided_and_recorded_where_the_run_trains(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(train, "cpu_has_native_bf16", lambda: False)
    run = train.train(_baseline(tiny, precision="auto", epochs=1), tmp_path, device="cpu", progress=False)
    assert json.loads((run / "config.json").read_text())["precision"] == "auto"
    assert json.loads((run / "config.json").read_text())["provenance"]["precision"] == "fp32"
    assert _metrics(run)["precision"] == "fp32" and _metrics(run)["device"] == "cpu"
    # the same numbers as the explicit fp32 run (only the folder differs)
    explicit = train.train(_baseline(tiny, precision="fp32", epochs=1), tmp_path, device="cpu", progress=False)
    assert _metrics(explicit)["pooled"] == _metrics(run)["pooled"]


def test_teacher_outputs_keep_only_the_taps_asked_for(tiny, tmp_path, monkeypatch):
    """Issue 20: where all four taps do not fit the spare budget, the cache holds the taps a run
    distils from, filled in place; the values are the teacher's own outputs; another tap set
    reuses the loaded teacher."""
    teacher = train.train(train.teacher_config("unet", tiny / "cache", tiny / "split.json", epochs=1),
                          tmp_path, progress=False)
    monkeypatch.setattr(train, "spare_taps_budget", lambda device: 0)
    dev = torch.device("cpu")
    cache, split = SliceCache.load(tiny / "cache"), train.load_split(tiny / "split.json")
    data = train.SliceTensors(cache, split["student_train"], dev)
    loads = []
    real_load = train.load_model
    monkeypatch.setattr(train, "load_model", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    train._TEACHER_OUTPUTS.clear()
    got = train.teacher_outputs(teacher, data, ("bottleneck", "logits"), dev, batch_size=5)
    assert set(got) == {"bottleneck", "logits"} and set(train._TEACHER_OUTPUTS["taps"]) == set(got)
    assert train.teacher_outputs_bytes() == sum(t.numel() * 4 for t in got.values())
    model = real_load(teacher, dev)
    with torch.inference_mode():
        image, _ = data.batch(slice(0, len(data)), torch.contiguous_format)
        direct = model(image)
    for tap, value in got.items():  # batch by batch into one tensor: the same numbers
        assert value.shape == direct[tap].shape and torch.allclose(value, direct[tap], atol=1e-5)
    # a subset is served from what is held; a new tap frees the taps not asked for before its
    # pass, which runs with the teacher already loaded
    assert set(train.teacher_outputs(teacher, data, ("logits",), dev)) == {"logits"}
    assert set(train._TEACHER_OUTPUTS["taps"]) == {"bottleneck", "logits"}
    assert set(train.teacher_outputs(teacher, data, ("enc", "logits"), dev)) == {"enc", "logits"}
    assert set(train._TEACHER_OUTPUTS["taps"]) == {"enc", "logits"}
    assert len(loads) == 1
    with pytest.raises(KdlibError, match="unknown teacher taps"):
        train.teacher_outputs(teacher, data, ("nope",), dev)
    train._TEACHER_OUTPUTS.clear()


@pytest.mark.parametrize("all_fit, passes", [(True, 1), (False, 4)])
def test_one_teacher_pass_serves_every_tap_set_where_all_taps_fit(tiny, tmp_path, monkeypatch,
                                                                  all_fit, passes):
    """Where all four taps fit the spare budget, the first pass keeps them all: the
    configurations that distil from other scales (the ablation grid) pay no further pass.
    Without room, each new tap set costs one pass (budget 0: the issue-20 behaviour)."""
    teacher = train.train(train.teacher_config("unet", tiny / "cache", tiny / "split.json", epochs=1),
                          tmp_path, progress=False)
    dev = torch.device("cpu")
    cache, split = SliceCache.load(tiny / "cache"), train.load_split(tiny / "split.json")
    data = train.SliceTensors(cache, split["student_train"], dev)
    model = train.load_model(teacher, dev)
    with torch.inference_mode():
        out = model(data.batch(slice(0, 1), torch.contiguous_format)[0])
    per_slice = sum(out[t][0].numel() * 4 for t in train.ALL_TEACHER_TAPS)
    monkeypatch.setattr(train, "spare_taps_budget",
                        lambda device: per_slice * len(data) if all_fit else 0)
    forwards = []
    real_load = train.load_model

    def counted_load(*a, **k):
        net = real_load(*a, **k)
        net.register_forward_hook(lambda *_: forwards.append(1))
        return net

    monkeypatch.setattr(train, "load_model", counted_load)
    train._TEACHER_OUTPUTS.clear()
    batches = -(-len(data) // 16)
    for taps in (("bottleneck", "logits"), ("enc", "dec", "logits"), ("bottleneck",), ("enc", "logits")):
        got = train.teacher_outputs(teacher, data, taps, dev)
        assert set(got) == set(taps)
        for tap in taps:  # the same numbers whichever pass filled them
            assert torch.allclose(got[tap][:1], out[tap], atol=1e-5), tap
    assert len(forwards) == passes * batches
    kept = set(train._TEACHER_OUTPUTS["taps"])
    assert kept == (set(train.ALL_TEACHER_TAPS) if all_fit else {"enc", "logits"})
    train._TEACHER_OUTPUTS.clear()
