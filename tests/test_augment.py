"""Augmentation of the release students: the 8 orientations, image and mask moved alike,
determinism per seed, and the configurations that may (not) augment."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from kdlib import augment, losses, train
from kdlib.errors import ConfigError


def _numpy_dihedral(a: np.ndarray, op: int) -> np.ndarray:
    out = np.rot90(a, op // 2, axes=(-2, -1))
    return np.flip(out, axis=-1) if op % 2 else out


@pytest.mark.parametrize("op", range(8))
def test_dihedral_matches_numpy(op):
    a = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    got = augment.dihedral(torch.from_numpy(a), op).numpy()
    np.testing.assert_array_equal(got, _numpy_dihedral(a, op))


def test_the_8_orientations_are_distinct_and_op_0_is_the_identity():
    a = torch.arange(16.0).reshape(4, 4)
    views = {tuple(augment.dihedral(a, op).flatten().tolist()) for op in range(8)}
    assert len(views) == 8
    assert torch.equal(augment.dihedral(a, 0), a)
    with pytest.raises(ValueError):
        augment.dihedral(a, 8)


def _batch(n=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, 1, size, size), np.float32)
    for k in range(n):  # an off-centre, asymmetric blob: every orientation moves it
        r, c = rng.integers(4, 12, size=2)
        mask[k, 0, r:r + 10, c:c + 6] = 1.0
        mask[k, 0, r:r + 3, c:c + 14] = 1.0
    image = torch.from_numpy(mask).expand(-1, 3, -1, -1).contiguous()
    return image, torch.from_numpy(mask)


def test_image_and_mask_move_alike(monkeypatch):
    # with intensity changes off, the image is the mask resampled like the mask
    monkeypatch.setattr(augment, "CONTRAST", (1.0, 1.0))
    monkeypatch.setattr(augment, "BRIGHTNESS", 0.0)
    image, mask = _batch()
    out, out_mask = augment.augment_batch(image, mask, torch.Generator().manual_seed(1))
    assert out.shape == image.shape and out_mask.shape == mask.shape
    assert torch.equal(out[:, 0] > 0.5, out_mask[:, 0] > 0.5)
    assert torch.equal(out[:, 0], out[:, 2])  # the channels stay equal
    assert not torch.equal(out_mask, mask)  # something moved


def test_range_determinism_and_memory_format():
    image, mask = _batch()
    image = image.contiguous(memory_format=torch.channels_last)
    a = augment.augment_batch(image, mask, torch.Generator().manual_seed(5))
    b = augment.augment_batch(image, mask, torch.Generator().manual_seed(5))
    c = augment.augment_batch(image, mask, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert float(a[0].min()) >= 0.0 and float(a[0].max()) <= 1.0
    assert set(torch.unique(a[1]).tolist()) <= {0.0, 1.0}
    assert a[0].is_contiguous(memory_format=torch.channels_last)
    # the spleen's area survives (zoom 0.85-1.15: area x0.72-1.38; none pushed out here)
    ratio = a[1].sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))
    assert bool(((ratio > 0.6) & (ratio < 1.5)).all())


def test_orientations_are_drawn_uniformly():
    ops = torch.randint(0, 8, (8000,), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(ops, minlength=8).numpy()
    # chi-square with 7 df: 24.3 is its 0.999 quantile
    chi2 = ((counts - 1000) ** 2 / 1000).sum()
    assert chi2 < 24.3


def _cfg(tiny, **kw):
    cfg = train.control_config("S1", tiny / "cache", tiny / "split.json", epochs=2, batch_size=8)
    return replace(cfg, **kw)


def test_augmented_run_is_deterministic_and_differs_from_the_plain_run(tiny, tmp_path):
    a = train.train(_cfg(tiny, augment=True), tmp_path / "a", progress=False)
    b = train.train(_cfg(tiny, augment=True), tmp_path / "b", progress=False)
    plain = train.train(_cfg(tiny), tmp_path / "a", progress=False)
    metrics = [json.loads((r / "metrics.json").read_text()) for r in (a, b, plain)]
    assert metrics[0]["pooled"] == metrics[1]["pooled"] and metrics[0]["loss"] == metrics[1]["loss"]
    assert a != plain and metrics[0]["loss"] != metrics[2]["loss"]
    assert json.loads((a / "config.json").read_text())["augment"] is True


def test_a_run_without_augmentation_keeps_its_identity(tiny):
    # `augment` came later: runs that do not augment keep the folder names they had
    assert "augment" not in _cfg(tiny).identity()
    assert _cfg(tiny, augment=True).identity()["augment"] is True


def test_who_may_augment(tiny):
    with pytest.raises(ConfigError, match="corrected setting"):
        _cfg(tiny, augment=True, setting="faithful")
    kd = losses.KDConfig(scales=("B",), pmd="binary")
    distilled = train.RunConfig(name="kd", model="S1", role="kd", cache=str(tiny / "cache"),
                                split=str(tiny / "split.json"), teacher_run="t", kd=kd.to_dict(), augment=True)
    assert distilled.augment  # a distilled run may augment (orientations + intensity; issue 19)
    with pytest.raises(ConfigError, match="corrected setting"):
        train.RunConfig(name="kd", model="S1", role="kd", cache=str(tiny / "cache"), setting="faithful",
                        split=str(tiny / "split.json"), teacher_run="t", kd=kd.to_dict(), augment=True)
    with pytest.raises(ConfigError, match="augment"):
        _cfg(tiny, augment="yes")


@pytest.mark.parametrize("op", range(8))
def test_undo_dihedral_inverts(op):
    a = torch.arange(2 * 6 * 6.0).reshape(2, 6, 6)
    assert torch.equal(augment.undo_dihedral(augment.dihedral(a, op), op), a)


def test_tta_makes_a_network_orientation_equivariant():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 1, 5, padding=2)).double()
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    base = augment.dihedral_mean(net, x)
    plain = net(x)
    for op in range(8):
        turned = augment.dihedral_mean(net, augment.dihedral(x, op))
        torch.testing.assert_close(turned, augment.dihedral(base, op), rtol=1e-12, atol=1e-12)
        if op:  # the network alone is not: TTA is what makes it so
            assert not torch.allclose(net(augment.dihedral(x, op)), augment.dihedral(plain, op))


def test_kd_augmentation_orients_image_and_mask_alike_and_only_jitters_intensity():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(16, 3, 8, 8)
    mask = (torch.rand(16, 1, 8, 8) > 0.5).float()
    out, moved, ops = augment.kd_augment_batch(image, mask, g)
    assert ops.shape == (16,) and set(ops.tolist()) <= set(range(8)) and len(set(ops.tolist())) > 1
    for i, op in enumerate(ops.tolist()):
        assert torch.equal(moved[i], augment.dihedral(mask[i], op))  # a permutation: no zoom, no resampling
        plain = augment.dihedral(image[i, :1], op)
        # contrast about the mean and brightness: the same affine map of every pixel (before clipping)
        inside = (out[i, :1] > 1e-6) & (out[i, :1] < 1 - 1e-6)
        if inside.sum() > 3:
            a, b = plain[inside], out[i, :1][inside]
            fit = torch.linalg.lstsq(torch.stack([a, torch.ones_like(a)], 1), b[:, None]).solution
            assert torch.allclose(fit[0, 0] * a + fit[1, 0], b, atol=1e-5)
    again = augment.kd_augment_batch(image, mask, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], out) and torch.equal(again[2], ops)


def test_oriented_teacher_outputs_are_the_teacher_on_each_orientation(tiny, tmp_path):
    teacher = train.train(train.teacher_config("unet", tiny / "cache", tiny / "split.json", epochs=1),
                          tmp_path / "teacher", progress=False)
    from kdlib.data import SliceCache, load_split

    cache = SliceCache.load(tiny / "cache")
    data = train.SliceTensors(cache, load_split(tiny / "split.json")["student_train"][:5], torch.device("cpu"))
    train._TEACHER_OUTPUTS.clear()
    held = train.teacher_outputs(teacher, data, ("bottleneck", "logits"), torch.device("cpu"), orientations=True)
    net = train.load_model(teacher, torch.device("cpu"))
    image, _ = data.batch(slice(0, 5), torch.contiguous_format)
    with torch.inference_mode():
        for op in (0, 3, 6):
            direct = net(augment.dihedral(image, op).contiguous())
            assert held["logits"].shape[:2] == (8, 5)
            assert torch.allclose(held["logits"][op], direct["logits"], atol=1e-5)
            assert torch.allclose(held["bottleneck"][op], direct["bottleneck"], atol=1e-5)
    train._TEACHER_OUTPUTS.clear()


def test_augmented_distilled_run_is_deterministic_and_differs_from_the_plain_one(tiny, tmp_path):
    teacher = train.train(train.teacher_config("unet", tiny / "cache", tiny / "split.json", epochs=1),
                          tmp_path / "teacher", progress=False)
    kd = losses.kd_config_for("T1", "S1", scales=("B",), pmd="binary")
    cfg = train.kd_run_config(teacher, "S1", kd, tiny / "cache", tiny / "split.json", epochs=2, batch_size=8)
    plain = json.loads((train.train(cfg, tmp_path / "plain", progress=False) / "metrics.json").read_text())
    runs = [train.train(replace(cfg, augment=True), tmp_path / name, progress=False) for name in ("a", "b")]
    a, b = (json.loads((r / "metrics.json").read_text()) for r in runs)
    assert runs[0].name == runs[1].name != cfg.run_dir(tmp_path).name  # augment is part of its identity
    assert a["loss"] == b["loss"] and a["pooled"] == b["pooled"] and a["loss"] != plain["loss"]
    train._TEACHER_OUTPUTS.clear()


def test_oriented_validation_pools_the_8_orientations_of_every_slice(tiny):
    """validate(orientations=True): the confusion counts of the network on each of the 8
    orientations of every slice against the mask turned alike (computed here with numpy's
    rot90/flip), summed; the loss is the mean over the 8 x n images."""
    from kdlib.data import SliceCache

    class Ramp(torch.nn.Module):  # finds bright pixels, more readily on the right: not equivariant
        def forward(self, x):
            return {"logits": 8.0 * (x[:, :1] - 0.4) + torch.linspace(-2.0, 2.0, x.shape[-1])}

    net = Ramp()
    cache = SliceCache.load(tiny / "cache")
    data = train.SliceTensors(cache, json.loads((tiny / "split.json").read_text())["train"], torch.device("cpu"))
    image, mask = data.batch(slice(None))
    counts, losses_ = np.zeros(3, dtype=np.int64), []
    with torch.no_grad():
        for op in range(8):
            turned = torch.from_numpy(_numpy_dihedral(image.numpy(), op).copy())
            logits = net(turned)["logits"]
            truth = _numpy_dihedral(mask.numpy(), op) > 0.5
            pred = torch.sigmoid(logits).numpy() > 0.5
            counts += [(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()]
            losses_.append(float(losses.dice_loss(logits, torch.from_numpy(truth.astype(np.float32)))))
    val = train.validate(net, data, "prob", torch.device("cpu"), batch_size=5, seg_loss="dice", orientations=True)
    pooled = val["pooled"]
    assert [pooled["tp"], pooled["fp"], pooled["fn"]] == counts.tolist()
    assert pooled["n_images"] == 8 * len(data)
    # the per-batch loss is a batch mean weighted by its size; the whole set in one batch per op here
    one_batch = train.validate(net, data, "prob", torch.device("cpu"), batch_size=len(data), seg_loss="dice",
                               orientations=True)
    assert one_batch["loss"] == pytest.approx(np.mean(losses_), rel=1e-6)
    plain = train.validate(net, data, "prob", torch.device("cpu"), batch_size=5, seg_loss="dice")
    assert pooled["tp"] > 0 and plain["pooled"]["n_images"] == len(data)
    as_given = train.validate(net, data, "prob", torch.device("cpu"), batch_size=len(data), seg_loss="dice")
    assert plain["pooled"] == as_given["pooled"] and plain["pooled"]["dice"] != pooled["dice"]


def test_runs_select_on_oriented_validation_only_when_asked(tiny, tmp_path, monkeypatch):
    asked = []
    real = train.validate
    monkeypatch.setattr(train, "validate", lambda *a, **k: asked.append(k["orientations"]) or real(*a, **k))
    train.train(_cfg(tiny, augment=True, val_orientations=True, epochs=1), tmp_path, progress=False)
    train.train(_cfg(tiny, epochs=1), tmp_path, progress=False)
    assert asked == [True, False]
    # added later: runs that do not ask keep the folder names they had
    assert "val_orientations" not in _cfg(tiny).identity()
    assert _cfg(tiny, val_orientations=True).identity()["val_orientations"] is True
    with pytest.raises(ConfigError, match="val_orientations"):
        _cfg(tiny, val_orientations="yes")
