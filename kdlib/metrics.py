"""Segmentation and reconstruction metrics.

Inputs may be numpy arrays, torch tensors (any device) or nested lists; every function
returns plain Python ``float`` / ``int`` / ``dict`` values (``binarize`` returns the input's
array type). Torch is never imported here: tensors are recognised by duck typing.

Conventions (each one is pinned by a test in ``tests/test_metrics.py``):

* **Prediction** masks must be binary (``bool`` or values in {0, 1}); turn logits into
  masks with :func:`binarize` first.
* **Ground truth** may be soft (faithful mode keeps bilinearly resized masks in [0, 1]);
  it is binarised as ``truth >= 0.5``. Values outside [0, 1] (e.g. 8-bit masks in
  {0, 255}) are rejected with a :class:`~kdlib.errors.DataError`.
* **0/0** (see :func:`scores`): when prediction and truth are both empty every score is
  1.0 (a perfect answer to an empty question). Any other zero denominator gives 0.0
  (scikit-learn's ``zero_division=0``): predicting nothing on an image that has spleen
  gives precision 0.0 as well as recall 0.0, and predicting spleen on an empty image gives
  recall 0.0 as well as precision 0.0. No score is ever NaN.
* **Aggregations**:

  - ``pooled``: TP/FP/FN summed over every pixel of the whole test set, then scored once
    (micro average). This is what the thesis reports; it implies
    Dice = 2 IoU / (1 + IoU) exactly.
  - ``per_image``: scores of each 2D slice, averaged over slices. Slices whose truth and
    prediction are both empty count as 1.0 (convention above), which inflates the mean on
    sets with many empty slices, so the mean over slices *with foreground in the truth*
    is reported too (``"foreground"``).
  - ``per_volume``: all slices of a case are stacked into one 3D mask (equivalently, their
    confusion counts are summed) and scored; the mean over cases is the MSD-challenge
    style number. Cases without foreground follow the same convention (both empty = 1.0)
    and ``"foreground"`` again restricts the mean to cases with foreground.

  Means that have nothing to average over are ``None`` (so reports stay strict JSON).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kdlib.errors import ConfigError, DataError

__all__ = [
    "SCORE_KEYS",
    "SegmentationMeter",
    "binarize",
    "confusion",
    "hd95",
    "per_image",
    "per_volume",
    "pooled",
    "psnr",
    "psnr_faithful",
    "scores",
    "segmentation_report",
    "ssim",
]

SCORE_KEYS = ("iou", "dice", "precision", "recall")
_COUNT_KEYS = ("tp", "fp", "fn", "tn")
BINARIZE_RULES = ("logit", "prob")


# --------------------------------------------------------------------------- helpers
def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def _to_numpy(x: Any) -> np.ndarray:
    """numpy view of an array, a torch tensor (any device/dtype) or a nested list."""
    if isinstance(x, np.ndarray):
        return x
    if _is_torch(x):
        t = x.detach()
        if t.is_floating_point():
            t = t.float()  # bf16/fp16 have no numpy equivalent
        return t.cpu().numpy()
    return np.asarray(x)


def _as_batch(x: Any, name: str) -> np.ndarray:
    """A stack of masks (N, ...) from an array or a sequence of equally shaped arrays."""
    if isinstance(x, np.ndarray) or _is_torch(x):
        return _to_numpy(x)
    if isinstance(x, (list, tuple)):
        if len(x) == 0:
            raise DataError(f"{name} is empty", fix="pass at least one mask")
        if isinstance(x[0], np.ndarray) or _is_torch(x[0]):
            return np.stack([_to_numpy(v) for v in x])
    return np.asarray(x)


def _binary_pred(pred: np.ndarray) -> np.ndarray:
    if pred.dtype == bool:
        return pred
    if pred.size and not np.all((pred == 0) | (pred == 1)):
        raise DataError(
            f"prediction mask must be binary (bool or 0/1), got values in "
            f"[{float(np.min(pred)):.4g}, {float(np.max(pred)):.4g}]",
            fix="turn logits into a mask with kdlib.metrics.binarize(logits, rule) first",
        )
    return pred.astype(bool)


def _binary_truth(truth: np.ndarray) -> np.ndarray:
    if truth.dtype == bool:
        return truth
    if truth.size:
        lo, hi = float(np.min(truth)), float(np.max(truth))
        if lo < 0 or hi > 1 or math.isnan(lo) or math.isnan(hi):
            raise DataError(
                f"ground-truth mask must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]",
                fix="divide 8-bit masks (0/255) by 255",
            )
    return truth >= 0.5


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str = "prediction and truth") -> None:
    if a.shape != b.shape:
        raise DataError(f"{what} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}",
                        fix="pass masks of identical shape")


def _counts_per_image(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(N, 4) int64 array of tp, fp, fn, tn for each image along the first axis."""
    p = _binary_pred(pred).reshape(pred.shape[0], -1)
    t = _binary_truth(truth).reshape(truth.shape[0], -1)
    tp = np.count_nonzero(p & t, axis=1)
    fp = np.count_nonzero(p & ~t, axis=1)
    fn = np.count_nonzero(~p & t, axis=1)
    tn = p.shape[1] - tp - fp - fn
    return np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)


def _counts_dict(row: Sequence[int]) -> dict[str, int]:
    return {k: int(v) for k, v in zip(_COUNT_KEYS, row)}


def _mean_scores(rows: list[dict[str, float]]) -> dict[str, float] | None:
    if not rows:
        return None
    return {k: float(np.mean([r[k] for r in rows])) for k in SCORE_KEYS}


# --------------------------------------------------------------------------- basics
def binarize(logits: Any, rule: str = "prob"):
    """Turn segmentation logits into a boolean mask (same array type as the input).

    ``rule="prob"``: ``sigmoid(logit) > 0.5``, computed as ``logit > 0`` (exact, no overflow).
    ``rule="logit"``: the original implementation's rule, ``raw logit > 0.5`` without a
    sigmoid, i.e. probability > sigmoid(0.5) = 0.6225 (faithful mode).
    """
    if rule not in BINARIZE_RULES:
        raise ConfigError(f"unknown binarisation rule {rule!r}",
                          fix=f"use one of {', '.join(BINARIZE_RULES)}")
    threshold = 0.5 if rule == "logit" else 0.0
    if _is_torch(logits):
        return logits > threshold
    return np.asarray(logits) > threshold


def confusion(pred: Any, truth: Any) -> dict[str, int]:
    """Pixel counts ``{tp, fp, fn, tn}`` over masks of any (equal) shape.

    ``pred`` must be binary; ``truth`` may be soft and is binarised as ``truth >= 0.5``.
    """
    p, t = _to_numpy(pred), _to_numpy(truth)
    _check_same_shape(p, t)
    return _counts_dict(_counts_per_image(p.reshape(1, -1), t.reshape(1, -1))[0])


def scores(counts: Mapping[str, int]) -> dict[str, float]:
    """IoU, Dice, precision and recall from ``{tp, fp, fn[, tn]}``.

    IoU = TP/(TP+FP+FN), Dice = 2TP/(2TP+FP+FN), precision = TP/(TP+FP),
    recall = TP/(TP+FN). Zero denominators: if prediction and truth are both empty
    (TP = FP = FN = 0) all four are 1.0; otherwise a zero denominator gives 0.0.
    """
    try:
        tp, fp, fn = (int(counts[k]) for k in ("tp", "fp", "fn"))
    except KeyError as err:
        raise DataError(f"confusion counts lack {err.args[0]!r}",
                        fix="pass the dict returned by kdlib.metrics.confusion") from None
    if min(tp, fp, fn) < 0:
        raise DataError(f"confusion counts must be >= 0, got tp={tp} fp={fp} fn={fn}")
    if tp + fp + fn == 0:
        return {k: 1.0 for k in SCORE_KEYS}

    def ratio(num: int, den: int) -> float:
        return num / den if den else 0.0

    return {
        "iou": ratio(tp, tp + fp + fn),
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


# --------------------------------------------------------------------------- aggregation
class SegmentationMeter:
    """Streaming segmentation evaluation that keeps only confusion counts.

    ``update(pred_batch, truth_batch, case_ids_batch=None)`` takes binary predictions and
    (possibly soft) truths of shape (B, ...) (torch or numpy) plus one case id per image;
    ``result()`` returns the same dict as :func:`segmentation_report`. Memory is 4 integers
    per image and per case. If no case ids are given at all, ``"per_volume"`` is ``None``.
    """

    def __init__(self) -> None:
        self._image_counts: list[np.ndarray] = []
        self._case_counts: dict[str, np.ndarray] = {}
        self._case_slices: dict[str, int] = {}
        self._with_cases: bool | None = None

    def __len__(self) -> int:
        return int(sum(len(c) for c in self._image_counts))

    def reset(self) -> None:
        self.__init__()

    def update(self, pred_batch: Any, truth_batch: Any, case_ids_batch: Any = None) -> None:
        p = _as_batch(pred_batch, "prediction batch")
        t = _as_batch(truth_batch, "truth batch")
        _check_same_shape(p, t)
        if p.ndim < 2:
            raise DataError(f"expected a batch of masks (B, ...), got shape {tuple(p.shape)}",
                            fix="add a leading batch axis")
        if p.shape[0] == 0:
            return
        counts = _counts_per_image(p, t)
        with_cases = case_ids_batch is not None
        if self._with_cases is not None and with_cases != self._with_cases:
            raise DataError("case ids were given for some batches but not for others",
                            fix="pass case_ids_batch for every batch or for none")
        self._with_cases = with_cases
        if with_cases:
            ids = _to_numpy(case_ids_batch) if _is_torch(case_ids_batch) else case_ids_batch
            if isinstance(ids, (str, bytes)):
                ids = [ids]
            ids = [str(c) for c in np.asarray(ids, dtype=object).reshape(-1)]
            if len(ids) != len(counts):
                raise DataError(f"{len(ids)} case ids for a batch of {len(counts)} masks",
                                fix="pass one case id per image")
            for cid, row in zip(ids, counts):
                if cid in self._case_counts:
                    self._case_counts[cid] += row
                    self._case_slices[cid] += 1
                else:
                    self._case_counts[cid] = row.copy()
                    self._case_slices[cid] = 1
        self._image_counts.append(counts)

    # -- results
    def _all_image_counts(self) -> np.ndarray:
        if not self._image_counts:
            raise DataError("no images were evaluated", fix="call update() with at least one batch")
        return np.concatenate(self._image_counts, axis=0)

    def pooled(self) -> dict:
        counts = self._all_image_counts()
        total = _counts_dict(counts.sum(axis=0))
        return {**scores(total), **total, "n_images": int(len(counts))}

    def per_image(self) -> dict:
        counts = self._all_image_counts()
        rows = [scores(_counts_dict(r)) for r in counts]
        has_fg = (counts[:, 0] + counts[:, 2]) > 0
        empty_both = (counts[:, 0] + counts[:, 1] + counts[:, 2]) == 0
        fg_rows = [r for r, f in zip(rows, has_fg) if f]
        return {
            **_mean_scores(rows),
            "n_images": int(len(rows)),
            "n_foreground": int(has_fg.sum()),
            "n_empty_both": int(empty_both.sum()),
            "foreground": _mean_scores(fg_rows),
        }

    def per_volume(self) -> dict | None:
        self._all_image_counts()
        if not self._with_cases:
            return None
        cases = {}
        for cid in sorted(self._case_counts):
            c = _counts_dict(self._case_counts[cid])
            cases[cid] = {**scores(c), **c, "n_slices": int(self._case_slices[cid])}
        fg = [v for v in cases.values() if v["tp"] + v["fn"] > 0]
        return {
            "mean": _mean_scores(list(cases.values())),
            "foreground": _mean_scores(fg),
            "n_cases": len(cases),
            "n_foreground": len(fg),
            "cases": cases,
        }

    def result(self) -> dict:
        return {"pooled": self.pooled(), "per_image": self.per_image(),
                "per_volume": self.per_volume()}


def _meter(preds: Any, truths: Any, case_ids: Any = None) -> SegmentationMeter:
    m = SegmentationMeter()
    m.update(preds, truths, case_ids)
    return m


def pooled(preds: Any, truths: Any) -> dict:
    """Micro average: TP/FP/FN/TN summed over all images of (N, ...), scored once.

    Returns ``{iou, dice, precision, recall, tp, fp, fn, tn, n_images}``.
    """
    return _meter(preds, truths).pooled()


def per_image(preds: Any, truths: Any) -> dict:
    """Mean of per-image scores over the N images of (N, ...).

    Empty-truth/empty-prediction images score 1.0 and are included in the main mean;
    ``"foreground"`` is the mean over images whose truth is non-empty (``None`` if none).
    Returns ``{iou, dice, precision, recall, n_images, n_foreground, n_empty_both,
    foreground}``.
    """
    return _meter(preds, truths).per_image()


def per_volume(preds: Any, truths: Any, case_ids: Any) -> dict:
    """3D scores per case: the slices of each case are stacked (counts summed) and scored.

    Returns ``{mean, foreground, n_cases, n_foreground, cases: {case: {iou, dice, precision,
    recall, tp, fp, fn, tn, n_slices}}}``; ``mean`` averages over all cases (MSD style).
    """
    if case_ids is None:
        raise DataError("per_volume needs one case id per image", fix="pass case_ids")
    return _meter(preds, truths, case_ids).per_volume()


def segmentation_report(preds: Any, truths: Any, case_ids: Any = None) -> dict:
    """``{"pooled", "per_image", "per_volume"}`` in one pass (JSON-serialisable).

    ``per_volume`` is ``None`` when ``case_ids`` is not given.
    """
    return _meter(preds, truths, case_ids).result()


# --------------------------------------------------------------------------- images
def _image_list(x: Any, name: str) -> list[np.ndarray]:
    """Split (B, C, H, W) into B images; (H, W) and (C, H, W) are one image."""
    a = _to_numpy(x).astype(np.float64, copy=False)
    if a.ndim == 4:
        return list(a)
    if a.ndim in (2, 3):
        return [a]
    raise DataError(f"{name} must be (B, C, H, W), (C, H, W) or (H, W); got {tuple(a.shape)}")


def _paired_images(recon: Any, image: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    r, i = _image_list(recon, "recon"), _image_list(image, "image")
    if len(r) != len(i) or any(a.shape != b.shape for a, b in zip(r, i)):
        raise DataError(f"recon and image shapes differ: {_to_numpy(recon).shape} vs "
                        f"{_to_numpy(image).shape}")
    return r, i


def _psnr_one(r: np.ndarray, i: np.ndarray, data_range: float) -> float:
    mse = float(np.mean((r - i) ** 2))
    if mse == 0:
        return math.inf
    return float(10.0 * np.log10(data_range**2 / mse))


def psnr(recon: Any, image: Any, data_range: float = 1.0) -> float:
    """PSNR per image (MSE over all channels and pixels), averaged over the batch.

    ``10 log10(data_range^2 / MSE)``; an exact reconstruction gives ``inf`` (and so does the
    mean of a batch that contains one). No clipping is applied.
    """
    r, i = _paired_images(recon, image)
    return float(np.mean([_psnr_one(a, b, data_range) for a, b in zip(r, i)]))


def psnr_faithful(recon: Any, image: Any) -> float:
    """PSNR as the original code measured it (reproduces its wrap-around quirk).

    The reconstruction (no output activation, so values may leave [0, 1]) was written as an
    8-bit image *without clipping*: ``recon * 255`` is truncated towards zero and wraps
    modulo 256 (-0.1 -> -25 -> 231, 1.1 -> 280 -> 24). We model the cast explicitly as
    ``trunc(x * 255) mod 256`` because numpy's own float -> uint8 cast of out-of-range values
    is platform dependent. The file was re-read as grey: here the mean over the channels,
    rounded to an integer (an 8-bit grey image; PIL's 'L' uses luma weights, identical for
    3 equal channels). The reference image (3 identical channels in [0, 1]) is taken as the
    channel mean. Both are scaled to [0, 1] and PSNR uses data range 1, per image, averaged.
    """
    r, i = _paired_images(recon, image)
    values = []
    for a, b in zip(r, i):
        wrapped = np.mod(np.trunc(a * 255.0), 256.0)
        if wrapped.ndim == 3:
            wrapped = wrapped.mean(axis=0)
            b = b.mean(axis=0)
        grey = np.floor(wrapped + 0.5) / 255.0
        values.append(_psnr_one(grey, b, 1.0))
    return float(np.mean(values))


def ssim(recon: Any, image: Any, data_range: float = 1.0) -> float:
    """Mean SSIM per image (skimage ``structural_similarity``, default 7x7 window),
    averaged over the batch; channels of (C, H, W) images are averaged by skimage."""
    from skimage.metrics import structural_similarity

    r, i = _paired_images(recon, image)
    values = []
    for a, b in zip(r, i):
        if min(a.shape[-2:]) < 7:
            raise DataError(f"SSIM needs images of at least 7x7 pixels, got {a.shape}")
        kw = {"channel_axis": 0} if a.ndim == 3 else {}
        values.append(float(structural_similarity(a, b, data_range=data_range, **kw)))
    return float(np.mean(values))


# --------------------------------------------------------------------------- distances
def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def hd95(pred_volume: Any, truth_volume: Any, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance between mask surfaces (MONAI style).

    Surfaces are the foreground voxels removed by one binary erosion (face connectivity;
    voxels on the array border count as surface). For each surface voxel of one mask the
    Euclidean distance (in ``spacing`` units, via ``scipy.ndimage.distance_transform_edt``)
    to the nearest surface voxel of the other is taken; the result is the larger of the two
    directed 95th percentiles (numpy's linear interpolation).

    Masks may be 2D or 3D (for volumes the layout is (H, W, S), spacing per axis; for a 2D
    mask only the first two spacing entries are used). ``pred`` must be binary, ``truth`` is
    binarised at 0.5. Empty masks: both empty -> 0.0 (perfect agreement, like Dice = 1);
    exactly one empty -> ``inf`` (the distance is unbounded; use a finite cap or report the
    count of such cases when averaging).
    """
    from scipy import ndimage

    p = _binary_pred(_to_numpy(pred_volume))
    t = _binary_truth(_to_numpy(truth_volume))
    _check_same_shape(p, t)
    if p.ndim not in (2, 3):
        raise DataError(f"hd95 expects a 2D or 3D mask, got shape {tuple(p.shape)}")
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.size == 1:
        sp = np.repeat(sp, p.ndim)
    if sp.ndim != 1 or sp.size < p.ndim:
        raise DataError(f"spacing {spacing!r} needs one entry per mask axis ({p.ndim})")
    sp = tuple(float(s) for s in sp[: p.ndim])
    if any(s <= 0 for s in sp):
        raise DataError(f"spacing must be positive, got {sp}")
    has_p, has_t = bool(p.any()), bool(t.any())
    if not has_p and not has_t:
        return 0.0
    if not has_p or not has_t:
        return math.inf
    sp_, st_ = _surface(p), _surface(t)
    dist_to_t = ndimage.distance_transform_edt(~st_, sampling=sp)
    dist_to_p = ndimage.distance_transform_edt(~sp_, sampling=sp)
    d_pt = np.percentile(dist_to_t[sp_], 95)
    d_tp = np.percentile(dist_to_p[st_], 95)
    return float(max(d_pt, d_tp))
