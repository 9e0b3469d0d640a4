"""The thesis's figures, remade from our runs: every function returns a matplotlib Figure.

- `training_curves`    Figures 4.2-4.8: one panel per configuration (train loss, val Dice).
- `teacher_curves`     Figure 4.1: per teacher, segmentation and reconstruction loss.
- `qualitative_panel`  Figures 4.9-4.14, 4.17-4.19: slices x (Input, GT, each model),
                       with `choose_slices` picking slices by a stated rule.
- `reconstruction_panel` Figures 4.9/4.10: input vs the teacher's reconstruction.
- `forest_plot`        Dice difference to the baseline with its CI, per configuration.
- `per_patient_plot`   one dot per test patient and seed, per configuration.
- `validation_curves`  validation Dice per epoch of every fold and seed, per configuration.
- `predict_masks`      binary masks of a trained run on uint8 slices (for the panels).

`save_figure(fig, path, provenance)` writes the PNG atomically with a footer naming the
profile, data, commit and date; a figure made from synthetic data says "SYNTHETIC" in
its footer (and, when the caller passes `synthetic=True`, in its title).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import DataError
from .io import atomic_path

SYNTHETIC_LABEL = "SYNTHETIC DATA"
# distinct, colour-blind-friendly outline colours (Okabe-Ito); GT is always white/green
MODEL_COLOURS = ("#E69F00", "#56B4E9", "#CC79A7", "#D55E00", "#0072B2", "#F0E442", "#009E73")
GT_COLOUR = "#00FF66"


def _plt():
    """pyplot, with whatever backend the caller chose (inline in notebooks, Agg in tests)."""
    import matplotlib.pyplot as plt

    return plt


def _title(text: str, synthetic: bool) -> str:
    return f"{text}  [{SYNTHETIC_LABEL}]" if synthetic else text


# ---------------------------------------------------------------------------------------
# Array shapes: images (N, H, W) uint8/float, or (N, 3, H, W) / (N, 1, H, W); masks likewise


def as_slices(array, name: str = "array") -> np.ndarray:
    """(N, H, W) float array from (N, H, W), (N, C, H, W) (first channel) or (H, W)."""
    arr = np.asarray(array.detach().cpu().numpy() if hasattr(array, "detach") else array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise DataError(f"{name} must have shape (N, H, W) or (N, C, H, W), got {arr.shape}")
    return arr


def _image01(array) -> np.ndarray:
    """Grey slices in [0, 1]: uint8 (0-255) is scaled, floats are taken as already in [0, 1]."""
    arr = as_slices(array, "images")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return arr.astype(np.float32)


def _binary(array, name: str = "masks") -> np.ndarray:
    """Boolean masks: bool as is; uint8 0/255 (or 0/1); floats (probabilities) > 0.5."""
    arr = as_slices(array, name)
    if arr.dtype == bool:
        return arr
    if arr.dtype == np.uint8:
        return arr > (127 if arr.size and arr.max() > 1 else 0)
    return arr.astype(np.float32) > 0.5


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    inter = float(np.logical_and(pred, truth).sum())
    total = float(pred.sum() + truth.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


# ---------------------------------------------------------------------------------------
# Training curves


def _column(df, *names):
    for name in names:
        if name in df.columns and df[name].notna().any():
            return df[name]
    return None


EPOCH_TICKS = 6  # at most this many epoch ticks per panel: 240+ epochs stay legible


def _integer_epochs(ax) -> None:
    """Epochs are counts: no 2.5 on the axis; and few enough ticks that three-digit epochs
    do not run together in a small panel (`150180210240`)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=EPOCH_TICKS))


def _grid(n: int, ncols: int | None = None):
    ncols = ncols or min(4, max(n, 1))
    nrows = max(1, math.ceil(n / ncols))
    return nrows, ncols


def training_curves(histories: Mapping[str, Any], title: str = "", synthetic: bool = False,
                    ncols: int | None = None):
    """Small multiples, one panel per configuration: training loss (left axis) and
    validation Dice (right axis, 0-1) against epoch. `histories`: label -> history.csv frame."""
    plt = _plt()
    if not histories:
        raise DataError("no training histories to plot", fix="train the runs first")
    nrows, ncols = _grid(len(histories), ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows + 0.6),
                             squeeze=False, sharex=False)
    handles = None
    for ax, (label, df) in zip(axes.flat, histories.items()):
        epoch = df["epoch"]
        loss = _column(df, "train_total", "train_seg")
        lines = []
        if loss is not None:
            lines += ax.plot(epoch, loss, color="#0072B2", lw=1.2, label="train loss")
        val_loss = _column(df, "val_loss")
        if val_loss is not None:
            lines += ax.plot(epoch, val_loss, color="#0072B2", lw=1.0, ls="--", label="val seg loss")
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
        ax.set_ylabel("loss")
        ax.set_title(str(label), fontsize=9)
        twin = ax.twinx()
        val_dice = _column(df, "val_dice")
        if val_dice is not None:
            lines += twin.plot(epoch, val_dice, color="#D55E00", lw=1.2, label="val Dice")
            best = int(np.nanargmax(val_dice.to_numpy()))
            twin.plot(epoch.iloc[best], val_dice.iloc[best], "o", color="#D55E00", ms=3)
        twin.set_ylim(0, 1)
        twin.set_ylabel("Dice")
        if handles is None or len(lines) > len(handles):
            handles = lines
    for ax in list(axes.flat)[len(histories):]:
        ax.set_visible(False)
    fig.suptitle(_title(title or "Training curves", synthetic), fontsize=11)
    top = 1 - 0.55 / fig.get_figheight()
    if handles:
        fig.legend(handles, [h.get_label() for h in handles], loc="upper center",
                   bbox_to_anchor=(0.5, top + 0.01), ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top - 0.2 / fig.get_figheight()))
    return fig


def teacher_curves(histories: Mapping[str, Any], synthetic: bool = False):
    """Figure 4.1: per teacher (a row), segmentation loss (train / val) and reconstruction
    loss (train / val) against epoch. A teacher without a reconstruction head says so."""
    plt = _plt()
    if not histories:
        raise DataError("no teacher histories to plot", fix="train the teachers first")
    fig, axes = plt.subplots(len(histories), 2, figsize=(8, 2.6 * len(histories) + 0.5), squeeze=False)
    for (label, df), (ax_seg, ax_rec) in zip(histories.items(), axes):
        epoch = df["epoch"]
        for ax, train_col, val_col, what in ((ax_seg, ("train_seg", "train_total"), ("val_loss",), "segmentation"),
                                             (ax_rec, ("train_recon",), ("val_recon_loss",), "reconstruction")):
            train, val = _column(df, *train_col), _column(df, *val_col)
            if train is None and val is None:
                ax.text(0.5, 0.5, f"no {what} head", ha="center", va="center", transform=ax.transAxes,
                        color="0.4")
                ax.set_xticks([])
                ax.set_yticks([])
            if train is not None:
                ax.plot(epoch, train, lw=1.2, color="#0072B2", label="train")
            if val is not None:
                ax.plot(epoch, val, lw=1.2, color="#D55E00", label="validation")
            if train is not None or val is not None:
                ax.set_xlabel("epoch")
                _integer_epochs(ax)
                ax.set_ylabel("loss")
                ax.legend(fontsize=8, frameon=False)
            ax.set_title(f"{label}: {what} loss", fontsize=9)
    fig.suptitle(_title("Teachers: segmentation and reconstruction loss", synthetic), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


# ---------------------------------------------------------------------------------------
# Qualitative panels


def choose_slices(truths, predictions_ref=None, n: int = 4, rule: str = "quantiles"
                  ) -> tuple[list[int], str]:
    """Pick `n` slices to show and say how: returns (indices, description of the rule).

    Rules (only spleen-positive slices are candidates):
    - "quantiles": evenly spaced quantiles (10%..90%) of ground-truth spleen area, so small,
      medium and large cross-sections all appear; no model output is used.
    - "worst" / "best": lowest / highest Dice of `predictions_ref` (ties by index).
    """
    truth = _binary(truths, "truths")
    area = truth.reshape(len(truth), -1).sum(axis=1)
    positive = np.flatnonzero(area > 0)
    if len(positive) == 0:
        raise DataError("no spleen-positive slice to show", fix="use slices that contain spleen")
    n = min(n, len(positive))
    if rule == "quantiles":
        order = positive[np.argsort(area[positive], kind="stable")]
        qs = np.linspace(0.1, 0.9, n) if n > 1 else np.array([0.5])
        picks = [int(order[int(round(q * (len(order) - 1)))]) for q in qs]
        picks = list(dict.fromkeys(picks))  # unique, in area order
        for idx in order:  # few positives: fill duplicates with neighbours
            if len(picks) >= n:
                break
            if int(idx) not in picks:
                picks.append(int(idx))
        picks.sort(key=lambda i: area[i])
        desc = (f"{n} spleen-positive test slices at evenly spaced quantiles (10%-90%) of "
                f"ground-truth spleen area ({len(positive)} positive slices)")
        return picks, desc
    if rule in ("worst", "best"):
        if predictions_ref is None:
            raise DataError(f"rule {rule!r} needs predictions_ref (a reference model's masks)")
        pred = _binary(predictions_ref, "predictions_ref")
        scores = np.array([dice(pred[i], truth[i]) for i in positive])
        order = np.argsort(scores if rule == "worst" else -scores, kind="stable")
        picks = [int(positive[i]) for i in order[:n]]
        desc = (f"the {n} spleen-positive test slices with the {'lowest' if rule == 'worst' else 'highest'} "
                f"Dice of the reference model ({len(positive)} positive slices)")
        return picks, desc
    raise DataError(f"unknown slice rule {rule!r}", fix="use 'quantiles', 'worst' or 'best'")


def least_improved_slices(truths, baseline, distilled, n: int = 4) -> tuple[list[int], str]:
    """The `n` spleen-positive slices where distillation helped least: lowest Dice gain
    (distilled minus baseline), most negative first. Returns (indices, rule description)."""
    truth = _binary(truths, "truths")
    base, kd = _binary(baseline, "baseline"), _binary(distilled, "distilled")
    positive = np.flatnonzero(truth.reshape(len(truth), -1).any(axis=1))
    if len(positive) == 0:
        raise DataError("no spleen-positive slice to show", fix="use slices that contain spleen")
    gain = np.array([dice(kd[i], truth[i]) - dice(base[i], truth[i]) for i in positive])
    order = np.argsort(gain, kind="stable")[:min(n, len(positive))]
    picks = [int(positive[i]) for i in order]
    desc = (f"the {len(picks)} spleen-positive test slices with the lowest Dice gain of the distilled "
            f"student over its baseline (gains {', '.join(f'{gain[i]:+.2f}' for i in order)}; "
            f"{len(positive)} positive slices)")
    return picks, desc


def _outline(ax, mask: np.ndarray, colour: str, lw: float = 1.2, ls: str = "-") -> None:
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=lw, linestyles=ls)


def qualitative_panel(images, truths, predictions: Mapping[str, Any], titles: Sequence[str] | None = None,
                      indices: Sequence[int] | None = None, synthetic: bool = False, title: str = ""):
    """Rows = slices, columns = Input / GT / each model (e.g. Teacher, Student, KD student).

    Model columns show the CT with the model's mask filled translucent and outlined in its
    colour, the ground truth as a dashed green outline, and the slice's Dice in the corner.
    `titles`: one label per shown row (e.g. case id and slice number); `indices`: which
    slices to show (default all).
    """
    plt = _plt()
    img, gt = _image01(images), _binary(truths, "truths")
    preds = {name: _binary(p, f"predictions[{name!r}]") for name, p in predictions.items()}
    for name, p in preds.items():
        if p.shape != gt.shape:
            raise DataError(f"predictions[{name!r}] has shape {p.shape}, truths {gt.shape}")
    if img.shape != gt.shape:
        raise DataError(f"images have shape {img.shape}, truths {gt.shape}")
    rows = list(range(len(img))) if indices is None else [int(i) for i in indices]
    if titles is not None and len(titles) != len(rows):
        raise DataError(f"{len(titles)} titles for {len(rows)} slices")
    ncols = 2 + len(preds)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.2 * ncols, 2.2 * len(rows) + 0.5), squeeze=False)
    headers = ["Input", "Ground truth", *preds]
    for r, idx in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.imshow(img[idx], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(headers[c], fontsize=9)
        axes[r, 0].set_ylabel(titles[r] if titles is not None else f"slice {idx}", fontsize=8)
        _outline(axes[r, 1], gt[idx], GT_COLOUR, lw=1.4)
        axes[r, 1].imshow(np.ma.masked_where(~gt[idx], gt[idx]), cmap=_solid(GT_COLOUR), alpha=0.35,
                          vmin=0, vmax=1, interpolation="nearest")
        for c, (name, pred) in enumerate(preds.items(), start=2):
            colour = MODEL_COLOURS[(c - 2) % len(MODEL_COLOURS)]
            ax = axes[r, c]
            ax.imshow(np.ma.masked_where(~pred[idx], pred[idx]), cmap=_solid(colour), alpha=0.35,
                      vmin=0, vmax=1, interpolation="nearest")
            _outline(ax, pred[idx], colour, lw=1.2)
            _outline(ax, gt[idx], GT_COLOUR, lw=0.9, ls="--")
            ax.text(0.03, 0.04, f"Dice {dice(pred[idx], gt[idx]):.2f}", transform=ax.transAxes,
                    fontsize=7, color="white", bbox=dict(facecolor="black", alpha=0.5, pad=1, lw=0))
    fig.suptitle(_title(title or "Predictions (dashed green: ground truth)", synthetic), fontsize=10)
    from matplotlib.patches import Patch

    legend = [Patch(facecolor=GT_COLOUR, edgecolor=GT_COLOUR, alpha=0.6, label="ground truth")]
    legend += [Patch(facecolor=MODEL_COLOURS[i % len(MODEL_COLOURS)], edgecolor=MODEL_COLOURS[i % len(MODEL_COLOURS)],
                     alpha=0.6, label=str(name)) for i, name in enumerate(preds)]
    bottom = 0.45 / fig.get_figheight()
    fig.legend(handles=legend, loc="lower center", ncol=min(len(legend), 4), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
    return fig


def _solid(colour: str):
    from matplotlib.colors import ListedColormap

    return ListedColormap([colour])


def reconstruction_panel(images, recons, n: int = 4, indices: Sequence[int] | None = None,
                         titles: Sequence[str] | None = None, synthetic: bool = False, title: str = ""):
    """Figures 4.9/4.10: rows = slices, columns = Input and each reconstruction, with the
    per-slice PSNR in the corner. `recons`: one array (N, H, W) / (N, 3, H, W), or a dict
    model -> array for several teachers side by side. With a single reconstruction an
    |input - reconstruction| column is added. Shows `n` slices evenly spaced through the
    set unless `indices` is given."""
    plt = _plt()
    img = _image01(images)
    recon_sets = {name: _image01(r) for name, r in recons.items()} if isinstance(recons, Mapping) \
        else {"Reconstruction": _image01(recons)}
    if not recon_sets:
        raise DataError("no reconstructions to show", fix="pass the multi-task teachers' outputs")
    for name, rec in recon_sets.items():
        if rec.shape != img.shape:
            raise DataError(f"images have shape {img.shape}, reconstruction {name!r} {rec.shape}")
    if indices is None:
        n = min(n, len(img))
        indices = np.unique(np.linspace(0, len(img) - 1, n).round().astype(int)).tolist()
    with_diff = len(recon_sets) == 1
    headers = ["Input", *recon_sets] + (["|difference|"] if with_diff else [])
    ncols = len(headers)
    fig, axes = plt.subplots(len(indices), ncols, figsize=(2.4 * ncols, 2.3 * len(indices) + 0.4),
                             squeeze=False)
    for r, idx in enumerate(indices):
        panels = [(img[idx], "gray", 1.0, None)]
        for rec in recon_sets.values():
            mse = float(np.mean((img[idx] - rec[idx]) ** 2))
            psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
            panels.append((np.clip(rec[idx], 0, 1), "gray", 1.0, f"PSNR {psnr:.1f} dB"))
        if with_diff:
            err = np.abs(img[idx] - np.clip(next(iter(recon_sets.values()))[idx], 0, 1))
            panels.append((err, "magma", max(float(err.max()), 1e-6), None))
        for c, (data, cmap, vmax, note) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(data, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if note:
                ax.text(0.03, 0.04, note, transform=ax.transAxes, fontsize=7, color="white",
                        bbox=dict(facecolor="black", alpha=0.5, pad=1, lw=0))
        axes[r, 0].set_ylabel(titles[r] if titles is not None else f"slice {idx}", fontsize=8)
    for c, header in enumerate(headers):
        axes[0, c].set_title(header, fontsize=9)
    fig.suptitle(_title(title or "Reconstruction", synthetic), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    return fig


# ---------------------------------------------------------------------------------------
# Effects


FOREST_ROWS_PER_PANEL = 20
FOREST_TICKS = 5  # x ticks of a forest panel (MaxNLocator): differences like -0.05 stay apart


def _forest_defaults(data) -> str:
    has_ci = any(not (_isnan(lo) or _isnan(hi)) for lo, hi in zip(data["ci_low"], data["ci_high"]))
    has_these = "these_low" in data.columns and any(
        not (_isnan(lo) or _isnan(hi)) for lo, hi in zip(data["these_low"], data["these_high"]))
    if has_these:
        return ("Effect of distillation, 95% CI: solid = new patients (population), dashed = these patients "
                "against seed noise" + ("" if has_ci else " (no population interval: fewer than 3 folds)"))
    if has_ci:
        return "Effect of distillation (95% CI)"
    return "Effect of distillation (no intervals: one unit per comparison, n=1)"


def _forest_data(df):
    missing = {"label", "diff", "ci_low", "ci_high"} - set(df.columns)
    if missing:
        raise DataError(f"forest_plot needs columns {sorted(missing)}")
    data = df.reset_index(drop=True)
    if "reference" in data.columns and data["reference"].nunique() > 1:
        data = data.assign(label=[f"{lab}  vs {ref}" for lab, ref in zip(data["label"], data["reference"])])
    return data


def _forest_layout(fig, title: str) -> None:
    """The title in a band of its own above the panels (never over the first row's label)."""
    import textwrap

    lines = textwrap.wrap(title, 95) or [""]
    band = 0.17 * len(lines) + 0.12  # inches
    fig.suptitle("\n".join(lines), fontsize=10, y=1 - 0.08 / fig.get_figheight(), va="top")
    fig.tight_layout(rect=(0, 0, 1, 1 - band / fig.get_figheight()))


def forest_plots(df, title: str = "", synthetic: bool = False,
                 xlabel: str = "Dice difference to reference") -> dict[str, Any]:
    """The forest plot split by teacher-student pair: {pair: figure}, one figure per value of
    `pair` (teacher->student; {"": figure} without that column), each readable at page height
    (0.36 in per row), its title in a band above the rows and at most FOREST_TICKS x ticks.
    Columns as `forest_plot`'s."""
    plt = _plt()
    data = _forest_data(df)
    parts = ([(str(pair), part.reset_index(drop=True)) for pair, part in data.groupby("pair", sort=True)]
             if "pair" in data.columns else [("", data)])
    out = {}
    for pair, part in parts:
        text = title or _forest_defaults(part)
        text = f"{pair}: {text}" if pair else text
        fig, ax = plt.subplots(figsize=(8, 0.36 * len(part) + 1.0 + 0.17 * (len(text) // 95 + 1)))
        _forest_panel(ax, part)
        ax.set_xlabel(xlabel)
        _forest_layout(fig, _title(text, synthetic))
        out[pair] = fig
    return out


def forest_plot(df, title: str = "", synthetic: bool = False, xlabel: str = "Dice difference to reference"):
    """Difference to the reference (baseline or control) with its 95% CI, one line per comparison.

    `df` columns: `label`, `diff`, `ci_low`, `ci_high` (optional `n` or `n_pairs`, `p`,
    `reference`, `pair`, and `these_low`/`these_high`: the these-patients interval, drawn
    dashed below the population one); rows without a CI are drawn as points only, and a plot
    where no row has an interval says so in its title. More than `FOREST_ROWS_PER_PANEL` rows with a
    `pair` column (teacher->student) are split into one panel per pair. A vertical line
    marks 0 (no difference).
    """
    plt = _plt()
    data = _forest_data(df)
    if "pair" in data.columns and len(data) > FOREST_ROWS_PER_PANEL:
        panels = [(str(pair), part.reset_index(drop=True)) for pair, part in data.groupby("pair", sort=True)]
    else:
        panels = [("", data)]
    heights = [0.36 * len(part) + 0.7 for _, part in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights) + 0.8), squeeze=False,
                             gridspec_kw={"height_ratios": heights}, sharex=True)
    for ax, (name, part) in zip(axes[:, 0], panels):
        _forest_panel(ax, part)
        if name:
            ax.set_title(name, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel(xlabel)
    _forest_layout(fig, _title(title or _forest_defaults(data), synthetic))
    return fig


def per_patient_plot(points, title: str = "", synthetic: bool = False, xlabel: str = "test Dice per patient"):
    """One row per configuration, one dot per (test patient, seed) and a bar at the mean of
    the patients' seed-means: the spread a table's single number hides. `points`: the
    DataFrame of `claims.per_patient_points` (label, patient, seed, value). Patients keep one
    colour across rows, so a patient that is hard for every model stands out."""
    plt = _plt()
    if len(points) == 0:
        raise DataError("no per-patient results to plot", fix="train some runs first")
    labels = list(dict.fromkeys(points["label"]))
    patients = sorted(set(points["patient"]))
    cmap = plt.get_cmap("tab10" if len(patients) <= 10 else "tab20")
    colour = {p: cmap(i % cmap.N) for i, p in enumerate(patients)}
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(labels) + 1.4))
    jitter = np.linspace(-0.25, 0.25, max(2, len(patients)))
    for row, lab in enumerate(labels):
        sub = points[points["label"] == lab]
        for j, patient in enumerate(patients):
            vals = sub.loc[sub["patient"] == patient, "value"].to_numpy(dtype=float)
            ax.scatter(vals, np.full(vals.shape, row + jitter[j % len(jitter)]), s=14,
                       color=colour[patient], alpha=0.85, linewidths=0,
                       label=patient if row == 0 else None)
        means = sub.groupby("patient")["value"].mean()
        ax.plot([means.mean()] * 2, [row - 0.35, row + 0.35], color="k", lw=2)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(title="test patient (dots: seeds)", fontsize=7, title_fontsize=7,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(_title(title or "Per-patient test Dice (bar: mean over patients of their seed-means)",
                        synthetic), fontsize=9)
    fig.tight_layout()
    return fig


def headline_contrasts(points, intervals, synthetic: bool = False) -> dict[str, Any]:
    """One figure per headline comparison (claims 1 and 8): each seed's paired difference as a
    dot per fold, and beside the folds the comparison's two intervals (`population`: new
    patients; `these-patients`: these patients against training noise), each at its Holm level,
    with the kept-checkpoint verdict and the last epoch's. `points`: `claims.headline_points`;
    `intervals`: the claims table (`claims.claims_table`), whose rows with the same
    `comparison` and `role` give the intervals. Returns {"claim<id>_<n>": figure}, n counting
    the claim's comparisons in order (a file name that says which claim it shows)."""
    plt = _plt()
    out: dict[str, Any] = {}
    if len(points) == 0:
        return out
    counts: dict[str, int] = {}
    for (claim_id, comparison, role), part in points.groupby(["claim_id", "comparison", "role"], sort=False):
        counts[claim_id] = counts.get(claim_id, 0) + 1
        rows = intervals[(intervals["comparison"] == comparison) & (intervals["role"] == role)] \
            if len(intervals) else intervals
        folds = sorted(part["fold"].unique())
        fig, ax = plt.subplots(figsize=(8.0, 4.0))
        for fold in folds:
            dots = part[part["fold"] == fold]["effect"].to_numpy()
            jitter = np.linspace(-0.12, 0.12, len(dots)) if len(dots) > 1 else np.zeros(1)
            ax.plot(fold + jitter, dots, "o", ms=4, color="#0072B2", alpha=0.75)
            ax.plot([fold - 0.22, fold + 0.22], [dots.mean()] * 2, color="#0072B2", lw=1.5)
        labels = [f"fold {f}\n({int((part['fold'] == f).sum())} seeds)" for f in folds]
        positions = [len(folds) + 0.4, len(folds) + 2.0]
        for x, (framing, colour) in zip(positions, (("population", "#D55E00"), ("these-patients", "#009E73"))):
            row = rows[rows["framing"] == framing] if len(rows) else rows
            level = f" {float(row['ci_level'].iloc[0]):.1%} CI" if len(row) and "ci_level" in row else ""
            labels.append(f"{framing}{level}\n{row['verdict'].iloc[0] if len(row) else 'no row'}"
                          + (f"\nlast epoch: {row['verdict_last_epoch'].iloc[0]}" if len(row) else ""))
            if len(row):
                r = row.iloc[0]
                low, high, effect = float(r["ci_low"]), float(r["ci_high"]), float(r["effect"])
                if not (math.isnan(low) or math.isnan(high)):
                    ax.plot([x, x], [low, high], color=colour, lw=2.2)
                    ax.plot([x - 0.08, x + 0.08], [low, low], color=colour, lw=1.2)
                    ax.plot([x - 0.08, x + 0.08], [high, high], color=colour, lw=1.2)
                if not math.isnan(effect):
                    ax.plot([x], [effect], "s", color=colour, ms=6)
        ax.axhline(0, color="black", lw=0.8)
        thesis = float(part["thesis_effect"].iloc[0])
        if not math.isnan(thesis):
            ax.axhline(thesis, color="0.4", lw=1.0, ls="--", label=f"thesis's effect {thesis:+.3f}")
            ax.legend(loc="upper left", fontsize=7, frameon=False)
        ax.set_xticks(list(range(len(folds))) + positions)
        ax.set_xticklabels(labels, fontsize=6.5)
        ax.set_xlim(-0.6, positions[-1] + 0.9)
        ax.set_ylabel("paired difference in Dice")
        sd = float(part["seed_sd"].iloc[0])
        title = (f"Claim {claim_id} ({role}): {comparison}\n"
                 f"dots: one seed's difference (mean over the fold's test patients), bar: the fold's mean; "
                 f"within-fold seed SD {sd:.3f}\npopulation: new patients; these-patients: these patients against "
                 f"training noise; squares: the estimate; each interval at the level its label gives (Holm-adjusted with a verdict)")
        ax.set_title(_title(title, synthetic), fontsize=8, loc="left")
        fig.tight_layout()
        out[f"claim{claim_id}_{counts[claim_id]}"] = fig
    return out


def validation_curves(points, title: str = "", synthetic: bool = False, ncols: int | None = None):
    """Small multiples, one panel per configuration: validation Dice against epoch, one line
    per (fold, seed), coloured by fold (its test patients in the legend), dashed for later
    seeds. A dot marks the kept checkpoint's epoch; an x ends a run that hit its epoch cap
    still improving. `points`: the DataFrame of `claims.curve_points`."""
    plt = _plt()
    if len(points) == 0:
        raise DataError("no validation curves to plot", fix="train some runs first (history.csv beside each record)")
    labels = list(dict.fromkeys(points["label"]))
    folds = list(dict.fromkeys(points.sort_values("fold", kind="stable")["fold"]))
    named = {f: points.loc[points["fold"] == f, "test_patients"].iloc[0] for f in folds}
    colour = {f: MODEL_COLOURS[i % len(MODEL_COLOURS)] for i, f in enumerate(folds)}
    seeds = sorted(set(points["seed"]))
    style = {s: ("-", "--", ":", "-.")[i % 4] for i, s in enumerate(seeds)}
    nrows, ncols = _grid(len(labels), ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.4 * nrows + 0.9), squeeze=False)
    for ax, lab in zip(axes.flat, labels):
        sub = points[points["label"] == lab]
        for (fold, seed), run in sub.groupby(["fold", "seed"], sort=True):
            ax.plot(run["epoch"], run["val_dice"], color=colour[fold], ls=style[seed], lw=1.0)
            kept = run[run["kept"]]
            ax.plot(kept["epoch"], kept["val_dice"], "o", color=colour[fold], ms=3.5)
            if run["plateau"].iloc[0] in (False,):  # False, not None (no stopping rule)
                ax.plot(run["epoch"].iloc[-1], run["val_dice"].iloc[-1], "x", color="k", ms=6, mew=1.5)
        ax.set_title(str(lab), fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation Dice")
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(labels):]:
        ax.set_visible(False)
    fold_name = {f: f"fold {f.rsplit('fold', 1)[-1]}" if "fold" in f else f for f in folds}
    handles = [plt.Line2D([], [], color=colour[f], lw=1.5, label=f"{fold_name[f]}: test {named[f]}") for f in folds]
    handles += [plt.Line2D([], [], color="0.3", ls=style[s], label=f"seed {s}") for s in seeds]
    handles += [plt.Line2D([], [], color="0.3", marker="o", ls="", label="kept checkpoint"),
                plt.Line2D([], [], color="k", marker="x", ls="", label="cap hit, still improving")]
    height = fig.get_figheight()
    fig.suptitle(_title(title or "Validation Dice per epoch, every fold and seed", synthetic), fontsize=11,
                 y=1 - 0.1 / height)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.35 / height),
               ncol=min(4, len(handles)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.85 / height))
    return fig


def _forest_panel(ax, data) -> None:
    y = np.arange(len(data))[::-1]
    n_col = "n" if "n" in data.columns else "n_pairs" if "n_pairs" in data.columns else None
    for yi, row in zip(y, data.itertuples(index=False)):
        diff, low, high = float(row.diff), float(row.ci_low), float(row.ci_high)
        has_ci = not (math.isnan(low) or math.isnan(high))
        colour = "0.5" if not has_ci else ("#009E73" if low > 0 else "#D55E00" if high < 0 else "#0072B2")
        if has_ci:
            ax.plot([low, high], [yi, yi], color=colour, lw=1.6)
        these = (float(getattr(row, "these_low", math.nan)), float(getattr(row, "these_high", math.nan)))
        if not any(math.isnan(v) for v in these):  # these patients against seed noise: thin, just below
            ax.plot(these, [yi - 0.2] * 2, color=colour if has_ci else "0.35", lw=0.8, ls="--")
        ax.plot([diff], [yi], "o", color=colour, ms=5)
        note = []
        if n_col and not _isnan(getattr(row, n_col)):
            note.append(f"n={int(getattr(row, n_col))}")
        if "p" in data.columns and not _isnan(getattr(row, "p")):
            note.append(f"p={float(getattr(row, 'p')):.3g}")
        if note:
            ax.annotate("  ".join(note), (1.0, yi), xycoords=("axes fraction", "data"), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=7, color="0.3")
    ax.axvline(0, color="black", lw=0.8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=FOREST_TICKS))
    ax.set_yticks(y)
    ax.set_yticklabels([str(v) for v in data["label"]], fontsize=8)
    ax.set_ylim(-0.7, len(data) - 0.3)


def _isnan(value) -> bool:
    try:
        return value is None or math.isnan(float(value))
    except (TypeError, ValueError):
        return True


# ---------------------------------------------------------------------------------------
# Predictions of a trained run


def predict_masks(run_dir: str | Path, images_uint8, device: str = "cpu", threshold: str | None = None,
                  batch_size: int = 32) -> np.ndarray:
    """Binary masks (N, H, W) bool of the trained run in `run_dir` on uint8 slices (N, H, W).

    The threshold rule is the run's own (`config.json` "threshold"): "prob" = sigmoid > 0.5,
    "logit" = logit > 0.5 (the original code's rule); pass `threshold` to override it.
    Inference is `train.infer`'s.
    """
    from .io import read_json
    from .train import infer

    run_dir = Path(run_dir)
    own = read_json(run_dir / "config.json").get("threshold", "prob")
    rule = threshold or own
    if rule not in ("prob", "logit"):
        raise DataError(f"unknown threshold rule {rule!r}", fix="use 'prob' or 'logit'")
    slices = as_slices(images_uint8, "images_uint8")
    if slices.dtype != np.uint8:
        raise DataError(f"images_uint8 must be uint8 slices, got {slices.dtype}",
                        fix="pass the slice cache's images (uint8, 0-255)")
    out = infer(run_dir, np.ascontiguousarray(slices), device=device, batch_size=batch_size)
    if rule == own:
        return np.asarray(out["mask"], dtype=bool)
    # sigmoid(logit) > 0.5 <=> logit > 0;  logit > 0.5 <=> sigmoid(logit) > sigmoid(0.5)
    cut = 0.5 if rule == "prob" else 1.0 / (1.0 + math.exp(-0.5))
    return np.asarray(out["prob"]) > cut


# ---------------------------------------------------------------------------------------
# Saving


def is_synthetic(provenance: Mapping[str, Any]) -> bool:
    """Synthetic if provenance says so, or if its data is the generated phantom."""
    return bool(provenance.get("synthetic")) or str(provenance.get("data", "")).startswith("phantom")


def footer_text(provenance: Mapping[str, Any]) -> str:
    """One line: profile | data | commit | date (led by SYNTHETIC DATA for generated data)."""
    parts = [f"{key}: {provenance[key]}" for key in ("profile", "data", "commit", "date")
             if provenance.get(key) not in (None, "")]
    if not provenance.get("date"):
        parts.append("date: " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if is_synthetic(provenance):
        parts.insert(0, SYNTHETIC_LABEL + " (not comparable to the thesis)")
    return "  |  ".join(parts)


def save_figure(fig, path: str | Path, provenance: Mapping[str, Any] | None = None, dpi: int = 120) -> Path:
    """Write `fig` as a PNG atomically, with a provenance footer (and PNG metadata).

    `provenance`: profile, data, commit, date (see `pipeline.provenance`) and `synthetic`;
    a figure from synthetic data (`synthetic` true, or data "phantom...") carries a visible
    red "SYNTHETIC DATA" label in the footer.
    """
    provenance = dict(provenance or {})
    text = footer_text(provenance)
    synthetic = is_synthetic(provenance)
    for old in [t for t in fig.texts if t.get_gid() == "kdlib-footer"]:  # saved before: one footer
        old.remove()
    fig.text(0.005, -0.005, text, fontsize=6, ha="left", va="top", gid="kdlib-footer",
             color="#B00000" if synthetic else "0.35", fontweight="bold" if synthetic else "normal")
    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_suffix(".png")
    metadata = {"Description": text, "Software": "kdlib"}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata=metadata, bbox_inches="tight", pad_inches=0.12)
    return path
