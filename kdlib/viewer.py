"""Look at any trained models' masks over the test slices.

`mask_viewer(images, truths, predictions)` gives, in JupyterLab, a slider over the slices
and a multi-select of models; the CT is drawn with the ground truth (green) and each
selected model's mask outline in its own colour, with the slice's Dice per model. In batch
runs (`KDLIB_BATCH=1`), or without ipywidgets / an IPython kernel, it returns a static
matplotlib figure of a few slices instead (chosen by `figures.choose_slices`).

`synthetic_example()` gives small generated arrays to try the viewer without any trained
run (used by the browser test and its committed screenshot; everything it makes is SYNTHETIC).
"""
from __future__ import annotations

import html
import os
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import DataError
from .figures import GT_COLOUR, MODEL_COLOURS, _binary, _image01, choose_slices, dice


def interactive_available() -> bool:
    """True inside a live IPython kernel with ipywidgets, outside batch mode."""
    if os.environ.get("KDLIB_BATCH", "") not in ("", "0"):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _prepare(images, truths, predictions, case_ids):
    img, gt = _image01(images), _binary(truths, "truths")
    if img.shape != gt.shape:
        raise DataError(f"images have shape {img.shape}, truths {gt.shape}")
    preds = {str(name): _binary(p, f"predictions[{name!r}]") for name, p in predictions.items()}
    for name, p in preds.items():
        if p.shape != gt.shape:
            raise DataError(f"predictions[{name!r}] has shape {p.shape}, truths {gt.shape}")
    if case_ids is not None and len(case_ids) != len(img):
        raise DataError(f"{len(case_ids)} case ids for {len(img)} slices")
    colours = {name: MODEL_COLOURS[i % len(MODEL_COLOURS)] for i, name in enumerate(preds)}
    return img, gt, preds, colours


def draw_slice(ax, image: np.ndarray, truth: np.ndarray, predictions: Mapping[str, np.ndarray],
               colours: Mapping[str, str], title: str = "", legend: bool = True) -> None:
    """CT slice in grey, ground truth outlined in green, each model outlined in its colour."""
    from matplotlib.lines import Line2D

    ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    handles = [Line2D([], [], color=GT_COLOUR, lw=2, label="ground truth")]
    if truth.any():
        ax.contour(truth.astype(float), levels=[0.5], colors=[GT_COLOUR], linewidths=1.8)
    for name, mask in predictions.items():
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[colours[name]], linewidths=1.2)
        handles.append(Line2D([], [], color=colours[name], lw=2,
                              label=f"{name} (Dice {dice(mask, truth):.2f})"))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if legend:
        ax.legend(handles=handles, loc="upper right", fontsize=6, framealpha=0.6)


def _slice_title(i: int, case_ids) -> str:
    return f"slice {i}" + (f" · case {case_ids[i]}" if case_ids is not None else "")


def static_view(images, truths, predictions: Mapping[str, Any], case_ids: Sequence[str] | None = None,
                n: int = 4, note: str | None = None):
    """A static figure (not registered with pyplot) of `n` slices with every model's outline."""
    from matplotlib.figure import Figure

    img, gt, preds, colours = _prepare(images, truths, predictions, case_ids)
    if gt.any():
        chosen, rule = choose_slices(gt, n=n)
    else:
        chosen = np.unique(np.linspace(0, len(img) - 1, min(n, len(img))).round().astype(int)).tolist()
        rule = f"{len(chosen)} evenly spaced slices (none contains spleen)"
    fig = Figure(figsize=(3.2 * len(chosen), 3.6))
    axes = fig.subplots(1, len(chosen), squeeze=False)[0]
    for ax, i in zip(axes, chosen):
        draw_slice(ax, img[i], gt[i], {k: v[i] for k, v in preds.items()}, colours,
                   title=_slice_title(i, case_ids))
    fig.suptitle((f"{note} - " if note else "") + f"Masks over test slices ({rule})", fontsize=9)
    fig.tight_layout()
    return fig


def mask_viewer(images, truths, predictions: Mapping[str, Any], case_ids: Sequence[str] | None = None,
                n_static: int = 4, note: str | None = None):
    """Interactive viewer (ipywidgets) of the models' masks over test slices; a static
    figure of `n_static` slices when not interactive (see module docstring).

    images: (N, H, W) uint8 or float in [0, 1]; truths and each prediction: (N, H, W)
    boolean / 0-255 / probabilities; case_ids: optional, one per slice (shown in titles);
    note: a line shown above the viewer (e.g. "SYNTHETIC data").
    """
    if not interactive_available():
        return static_view(images, truths, predictions, case_ids, n_static, note)
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    img, gt, preds, colours = _prepare(images, truths, predictions, case_ids)
    area = gt.reshape(len(gt), -1).sum(axis=1)
    start = int(np.argmax(area)) if area.any() else 0
    slider = widgets.IntSlider(value=start, min=0, max=len(img) - 1, step=1, description="slice",
                               continuous_update=False, layout=widgets.Layout(width="60%"))
    models = widgets.SelectMultiple(options=list(preds), value=tuple(preds), description="models",
                                    rows=min(8, max(len(preds), 2)))
    output = widgets.Output()

    def redraw(*_):
        i = int(slider.value)
        with output:
            output.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(5.5, 5.5))
            draw_slice(ax, img[i], gt[i], {k: preds[k][i] for k in models.value}, colours,
                       title=_slice_title(i, case_ids))
            plt.show()
            plt.close(fig)

    slider.observe(redraw, names="value")
    models.observe(redraw, names="value")
    redraw()
    header = [widgets.HTML(f"<b>{html.escape(note)}</b>")] if note else []
    return widgets.VBox([*header, widgets.HBox([slider, models]), output])


def synthetic_example(slices: int = 8, size: int = 96, seed: int = 0):
    """Generated (SYNTHETIC) inputs for `mask_viewer`: a bright ellipse "spleen" on slices
    2..slices-3 inside a grey body, and three "models" that miss it in different ways.

    Returns (images float32 (N, H, W) in [0, 1], truths bool, predictions {name: bool},
    case_ids)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.46) ** 2 < 1
    images, truths = [], []
    for k in range(slices):
        radius = 0.12 * np.sin(np.pi * (k - 1) / max(slices - 3, 1)) if 2 <= k <= slices - 3 else 0
        organ = ((yy - 0.42) / max(radius, 1e-6)) ** 2 + ((xx - 0.68) / max(0.7 * radius, 1e-6)) ** 2 < 1
        image = 0.05 + 0.35 * body + 0.3 * organ + rng.normal(0, 0.03, (size, size))
        images.append(np.clip(image, 0, 1).astype(np.float32))
        truths.append(organ & (radius > 0))
    truths = np.stack(truths)
    shifted = np.roll(truths, (3, -4), axis=(1, 2))
    grown = truths | np.roll(truths, 4, axis=1) | np.roll(truths, -4, axis=2)
    shrunk = truths & np.roll(truths, 5, axis=1) & np.roll(truths, 5, axis=2)
    predictions = {"S1 (SYNTHETIC)": shifted, "KD(T1,S1) (SYNTHETIC)": grown,
                   "S2 (SYNTHETIC)": shrunk}
    case_ids = [f"synthetic_{k // 4}" for k in range(slices)]
    return np.stack(images), truths, predictions, case_ids
