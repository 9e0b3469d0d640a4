"""kdlib.metrics against values worked out by hand (the arithmetic is in the comments)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from kdlib import metrics as M
from kdlib.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
CSV_CANDIDATES = [REPO / "kdlib" / "thesis_tables.csv",
                  Path("/work/shared/reference/thesis_tables.csv")]


def _thesis_rows():
    for p in CSV_CANDIDATES:
        if p.exists():
            with open(p, newline="") as fh:
                return list(csv.DictReader(fh))
    pytest.skip("thesis_tables.csv not available")


# ------------------------------------------------------------------ binarize
@pytest.mark.parametrize(
    "rule, expected",
    [
        # prob: sigmoid(z) > 0.5  <=>  z > 0
        ("prob", [False, False, True, True, True]),
        # logit (faithful): raw z > 0.5, i.e. sigmoid(z) > sigmoid(0.5) = 0.6225
        ("logit", [False, False, False, False, True]),
    ],
)
def test_binarize_rules(rule, expected):
    z = np.array([-1.0, 0.0, 0.3, 0.5, 0.6])
    assert M.binarize(z, rule).tolist() == expected


def test_binarize_logit_rule_is_probability_0_6225():
    # sigmoid(0.5) = 1 / (1 + e^-0.5) = 0.622459...
    assert 1 / (1 + math.exp(-0.5)) == pytest.approx(0.6225, abs=1e-4)


def test_binarize_torch_returns_torch_and_bad_rule():
    torch = pytest.importorskip("torch")
    out = M.binarize(torch.tensor([-2.0, 0.2, 0.7]), "logit")
    assert isinstance(out, torch.Tensor) and out.tolist() == [False, False, True]
    with pytest.raises(ConfigError):
        M.binarize(np.zeros(3), "sigmoid")


# ------------------------------------------------------------------ confusion / scores
def test_confusion_by_hand():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    truth = np.array([[1, 0, 0], [1, 0, 0]])
    # (0,0) tp; (0,1) fp; (1,0) fn; remaining 3 pixels tn
    assert M.confusion(pred, truth) == {"tp": 1, "fp": 1, "fn": 1, "tn": 3}


def test_confusion_soft_truth_binarised_at_half():
    truth = np.array([0.2, 0.5, 0.7, 0.49])  # -> [0, 1, 1, 0] (truth >= 0.5)
    pred = np.array([False, True, False, False])
    # pixel0 tn, pixel1 tp, pixel2 fn, pixel3 tn
    assert M.confusion(pred, truth) == {"tp": 1, "fp": 0, "fn": 1, "tn": 2}


def test_confusion_torch_equals_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    p = rng.random((2, 1, 5, 5)) > 0.5
    t = (rng.random((2, 1, 5, 5)) > 0.5).astype(np.float32)
    assert M.confusion(torch.from_numpy(p), torch.from_numpy(t)) == M.confusion(p, t)


@pytest.mark.parametrize(
    "pred, truth, match",
    [
        (np.array([0.2, 0.9]), np.array([0, 1]), "binary"),        # logits, not a mask
        (np.array([0, 1]), np.array([0, 255]), r"\[0, 1\]"),         # 8-bit truth
        (np.array([0, 1, 1]), np.array([0, 1]), "shapes differ"),
    ],
)
def test_confusion_rejects_bad_input(pred, truth, match):
    with pytest.raises(DataError, match=match):
        M.confusion(pred, truth)


@pytest.mark.parametrize(
    "counts, expected",
    [
        # generic: IoU 3/(3+1+2)=0.5, Dice 6/(6+1+2)=2/3, P 3/4, R 3/5
        (dict(tp=3, fp=1, fn=2, tn=10), dict(iou=0.5, dice=2 / 3, precision=0.75, recall=0.6)),
        # both empty: perfect by convention
        (dict(tp=0, fp=0, fn=0, tn=9), dict(iou=1.0, dice=1.0, precision=1.0, recall=1.0)),
        # empty prediction, truth non-empty: P = 0/0 -> 0.0 (zero_division=0), R = 0/4
        (dict(tp=0, fp=0, fn=4, tn=5), dict(iou=0.0, dice=0.0, precision=0.0, recall=0.0)),
        # empty truth, prediction non-empty: R = 0/0 -> 0.0, P = 0/3
        (dict(tp=0, fp=3, fn=0, tn=6), dict(iou=0.0, dice=0.0, precision=0.0, recall=0.0)),
        # perfect non-empty
        (dict(tp=5, fp=0, fn=0, tn=4), dict(iou=1.0, dice=1.0, precision=1.0, recall=1.0)),
    ],
)
def test_scores_conventions(counts, expected):
    got = M.scores(counts)
    assert set(got) == set(M.SCORE_KEYS)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v)
        assert isinstance(got[k], float)


def test_scores_missing_key():
    with pytest.raises(DataError):
        M.scores({"tp": 1, "fp": 0})


# ------------------------------------------------------------------ aggregations
# Three 2x2 images:
#   img0 pred [[1,1],[0,0]] truth [[1,0],[0,0]] -> tp1 fp1 fn0 tn2
#   img1 pred 0             truth 0             -> tn4 (empty-empty)
#   img2 pred [[0,0],[0,1]] truth [[0,0],[1,1]] -> tp1 fp0 fn1 tn2
PREDS = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 1]]], dtype=bool)
TRUTHS = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [1, 1]]], dtype=np.float32)
CASES = ["a", "b", "a"]


def test_pooled_by_hand():
    r = M.pooled(PREDS, TRUTHS)
    # tp 2, fp 1, fn 1, tn 8: IoU 2/4, Dice 4/6, P 2/3, R 2/3
    assert (r["tp"], r["fp"], r["fn"], r["tn"], r["n_images"]) == (2, 1, 1, 8, 3)
    assert r["iou"] == pytest.approx(0.5)
    assert r["dice"] == pytest.approx(2 / 3)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)


def test_per_image_by_hand():
    r = M.per_image(PREDS, TRUTHS)
    # img0: IoU 1/2 Dice 2/3 P 1/2 R 1; img1: all 1; img2: IoU 1/2 Dice 2/3 P 1 R 1/2
    assert r["iou"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert r["dice"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert r["precision"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert r["recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert (r["n_images"], r["n_foreground"], r["n_empty_both"]) == (3, 2, 1)
    # foreground-only mean: img0 and img2
    fg = r["foreground"]
    assert fg["iou"] == pytest.approx(0.5)
    assert fg["dice"] == pytest.approx(2 / 3)
    assert fg["precision"] == pytest.approx(0.75)
    assert fg["recall"] == pytest.approx(0.75)


def test_per_image_no_foreground_gives_none():
    z = np.zeros((2, 3, 3), dtype=bool)
    r = M.per_image(z, z)
    assert r["iou"] == 1.0 and r["foreground"] is None and r["n_foreground"] == 0


def test_per_volume_by_hand():
    r = M.per_volume(PREDS, TRUTHS, CASES)
    # case a = img0 + img2 stacked: tp2 fp1 fn1 -> IoU 0.5, Dice 2/3; case b empty-empty -> 1
    a, b = r["cases"]["a"], r["cases"]["b"]
    assert (a["tp"], a["fp"], a["fn"], a["tn"], a["n_slices"]) == (2, 1, 1, 4, 2)
    assert a["iou"] == pytest.approx(0.5) and a["dice"] == pytest.approx(2 / 3)
    assert b["dice"] == 1.0 and b["n_slices"] == 1
    assert r["mean"]["iou"] == pytest.approx(0.75)
    assert r["mean"]["dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert r["foreground"]["dice"] == pytest.approx(2 / 3)
    assert (r["n_cases"], r["n_foreground"]) == (2, 1)


def test_per_volume_equals_3d_stack():
    rng = np.random.default_rng(3)
    p = rng.random((6, 8, 8)) > 0.6
    t = rng.random((6, 8, 8)) > 0.5
    ids = ["x", "y", "x", "y", "x", "x"]
    r = M.per_volume(p, t, ids)
    for case in ("x", "y"):
        sel = [i for i, c in enumerate(ids) if c == case]
        vol_p = np.stack([p[i] for i in sel], axis=-1)  # (H, W, S) volume
        vol_t = np.stack([t[i] for i in sel], axis=-1)
        expected = M.scores(M.confusion(vol_p, vol_t))
        assert r["cases"][case]["dice"] == pytest.approx(expected["dice"])


def test_pooled_satisfies_dice_iou_identity():
    rng = np.random.default_rng(0)
    r = M.pooled(rng.random((4, 16, 16)) > 0.5, rng.random((4, 16, 16)) > 0.4)
    assert r["dice"] == pytest.approx(2 * r["iou"] / (1 + r["iou"]), abs=1e-12)


def test_thesis_rows_satisfy_dice_iou_identity():
    """Every thesis row fits Dice = 2 IoU / (1 + IoU) (pooled micro average), to rounding."""
    rows = _thesis_rows()
    assert len(rows) > 50
    for r in rows:
        iou, dice = float(r["iou"]), float(r["dice"])
        assert abs(dice - 2 * iou / (1 + iou)) <= 0.002, (r["table"], r["row"])


def test_report_and_meter_stream_identically():
    rng = np.random.default_rng(5)
    p = rng.random((10, 1, 8, 8)) > 0.55
    t = (rng.random((10, 1, 8, 8)) > 0.5).astype(np.float32)
    t[3] = 0
    p[3] = False  # one empty-empty image
    ids = np.array(["c1"] * 4 + ["c2"] * 3 + ["c3"] * 3)
    full = M.segmentation_report(p, t, ids)
    meter = M.SegmentationMeter()
    for s in (slice(0, 3), slice(3, 7), slice(7, 10)):
        meter.update(p[s], t[s], list(ids[s]))
    assert meter.result() == full
    assert len(meter) == 10
    assert set(full) == {"pooled", "per_image", "per_volume"}
    assert set(full["per_volume"]["cases"]) == {"c1", "c2", "c3"}
    json.dumps(full, allow_nan=False)  # strict JSON


def test_meter_accepts_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(4, 1, 6, 6)).astype(np.float32)
    t = (rng.random((4, 1, 6, 6)) > 0.5).astype(np.float32)
    m = M.SegmentationMeter()
    m.update(M.binarize(torch.from_numpy(logits), "prob"), torch.from_numpy(t), ["a", "a", "b", "b"])
    assert m.result() == M.segmentation_report(logits > 0, t, ["a", "a", "b", "b"])


def test_meter_errors_and_no_cases():
    m = M.SegmentationMeter()
    with pytest.raises(DataError, match="no images"):
        m.result()
    z = np.zeros((2, 4, 4), dtype=bool)
    m.update(z, z)
    assert m.result()["per_volume"] is None
    with pytest.raises(DataError, match="case ids"):
        m.update(z, z, ["a", "b"])
    with pytest.raises(DataError, match="3 case ids"):
        M.SegmentationMeter().update(z, z, ["a", "b", "c"])


# ------------------------------------------------------------------ PSNR / SSIM
def test_psnr_by_hand():
    image = np.zeros((2, 1, 2, 2))
    image[0, 0, 1, 1] = 1.0   # img0: one pixel off by 1 -> MSE 1/4 -> 10 log10(4) = 6.0206
    image[1] = 0.1            # img1: every pixel off by 0.1 -> MSE 0.01 -> 20 dB
    recon = np.zeros_like(image)
    assert M.psnr(recon, image) == pytest.approx((10 * math.log10(4) + 20.0) / 2)
    assert M.psnr(image[0, 0], image[0, 0]) == math.inf
    # data range 255 adds 20 log10(255) dB
    assert M.psnr(recon[0, 0], image[0, 0], data_range=255) == pytest.approx(
        10 * math.log10(4) + 20 * math.log10(255))


def test_psnr_faithful_wraps_around():
    image = np.broadcast_to(np.array([[0.0, 1.0], [0.5, 0.25]]), (1, 3, 2, 2)).copy()
    recon = np.broadcast_to(np.array([[-0.1, 1.1], [0.5, 0.25]]), (1, 3, 2, 2)).copy()
    # uint8 without clipping: trunc(x*255) mod 256:
    #   -25.5 -> -25 -> 231;  280.5 -> 280 -> 24;  127.5 -> 127;  63.75 -> 63
    # errors in 1/255 units: 231-0, 24-255 = -231, 127-127.5 = -0.5, 63-63.75 = -0.75
    mse = (231**2 + 231**2 + 0.5**2 + 0.75**2) / 4 / 255**2
    assert M.psnr_faithful(recon, image) == pytest.approx(10 * math.log10(1 / mse))
    # the plain metric on clipped values would have been perfect
    assert M.psnr(np.clip(recon, 0, 1), image) == math.inf


def test_psnr_faithful_grey_is_channel_mean_rounded():
    recon = np.zeros((1, 3, 1, 1))
    recon[0, :, 0, 0] = [0.5, 0.25, 0.25]  # 127, 63, 63 -> mean 84.33 -> grey 84
    image = np.zeros((1, 3, 1, 1))
    assert M.psnr_faithful(recon, image) == pytest.approx(20 * math.log10(255 / 84))


def test_ssim_constant_images_by_hand():
    pytest.importorskip("skimage")
    a = np.full((3, 8, 8), 0.5)
    b = np.full((3, 8, 8), 0.25)
    # zero variances: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1), C1 = (0.01 * 1)^2
    c1 = 1e-4
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    assert M.ssim(a, b) == pytest.approx(expected, rel=1e-6)
    batch_r = np.stack([a, a])
    batch_i = np.stack([a, b])  # image 0 identical -> 1.0
    assert M.ssim(batch_r, batch_i) == pytest.approx((1.0 + expected) / 2, rel=1e-6)
    assert M.ssim(a[0], a[0]) == pytest.approx(1.0)


def test_image_metrics_shape_mismatch():
    with pytest.raises(DataError):
        M.psnr(np.zeros((1, 3, 4, 4)), np.zeros((1, 3, 4, 5)))


# ------------------------------------------------------------------ HD95
def _point(shape, *idx):
    m = np.zeros(shape, dtype=bool)
    m[idx] = True
    return m


@pytest.mark.parametrize(
    "spacing, expected",
    [((1, 1), 3.0), ((2, 1), 3.0), ((1, 2), 6.0), ((1.0, 1.0, 1.0), 3.0)],
)
def test_hd95_single_points(spacing, expected):
    # truth at (2,2), pred at (2,5): 3 voxels apart along axis 1
    assert M.hd95(_point((7, 7), 2, 5), _point((7, 7), 2, 2), spacing) == pytest.approx(expected)


def test_hd95_3d_anisotropic():
    # 3 slices apart along the slice axis with 2.5 mm slices -> 7.5 mm
    p = _point((3, 3, 6), 1, 1, 4)
    t = _point((3, 3, 6), 1, 1, 1)
    assert M.hd95(p, t, spacing=(1.0, 1.0, 2.5)) == pytest.approx(7.5)


def test_hd95_percentile_with_outlier():
    truth = np.zeros((10, 10), dtype=bool)
    truth[1:4, 1:4] = True  # 3x3 square: 8 surface voxels (centre is interior)
    pred = truth.copy()
    pred[2, 8] = True       # stray voxel 5 away from (2,3)
    # pred->truth distances: eight 0s and one 5; 95th pct (linear) at rank 0.95*8 = 7.6
    #   -> 0 + 0.6 * 5 = 3.0.  truth->pred: all 0.  HD95 = max = 3.0
    assert M.hd95(pred, truth) == pytest.approx(3.0)
    assert M.hd95(truth, truth) == 0.0


@pytest.mark.parametrize(
    "pred_empty, truth_empty, expected",
    [(True, True, 0.0), (True, False, math.inf), (False, True, math.inf)],
)
def test_hd95_empty(pred_empty, truth_empty, expected):
    full = _point((5, 5, 3), 2, 2, 1)
    empty = np.zeros_like(full)
    assert M.hd95(empty if pred_empty else full, empty if truth_empty else full) == expected


def test_hd95_bad_spacing():
    with pytest.raises(DataError):
        M.hd95(_point((3, 3, 3), 1, 1, 1), _point((3, 3, 3), 1, 1, 1), spacing=(1, 1))
