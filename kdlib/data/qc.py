"""Quality-control tables and figures for a slice cache (notebook 01).

Pure functions: they return pandas DataFrames or matplotlib Figures and never call
`plt.show()`. `plot_area_distribution` and `plot_examples` make their figures with pyplot,
so Jupyter's inline backend shows them when the cell ends (end the call with `;` to avoid a
second copy from the return value; close them with `plt.close(fig)` in scripts).
`volume_viewer`'s static figure is a plain `matplotlib.figure.Figure` (not kept by pyplot),
shown once when it is a cell's last value. Figures of generated data carry "SYNTHETIC" in
their title.
A mask pixel counts as spleen when its value is >= 128 (soft faithful masks included).
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from ..progress import batch_mode
from .cache import SliceCache, _load_cache

SPLEEN_LEVEL = 128


def _title(cache: SliceCache, text: str) -> str:
    return f"SYNTHETIC - {text}" if cache.synthetic else text


def _case_order(cache: SliceCache, case_id: str) -> np.ndarray:
    idx = cache.indices_of([case_id])
    if idx.size == 0:
        shown = ", ".join(cache.cases[:10]) + (", ..." if len(cache.cases) > 10 else "")
        raise DataError(f"no case {case_id!r} in this cache", cache.path,
                        f"use one of: {shown}")
    return idx[np.argsort(cache.slice_index[idx], kind="stable")]


def case_table(cache) -> "pd.DataFrame":  # noqa: F821
    """One row per case: slices, spleen slices, mean spleen area (pixels, % of the slice)."""
    import pandas as pd

    cache = _load_cache(cache)
    area = (cache.masks >= SPLEEN_LEVEL).sum(axis=(1, 2)).astype(np.int64)
    pixels = cache.size * cache.size
    rows = []
    for case in cache.cases:
        idx = cache.indices_of([case])
        pos = area[idx][area[idx] > 0]
        rows.append({
            "case_id": case,
            "source": str(cache.sources[idx[0]]),
            "slices": int(idx.size),
            "spleen_slices": int(pos.size),
            "spleen_slices_pct": round(100.0 * pos.size / idx.size, 1),
            "mean_spleen_area_px": float(pos.mean()) if pos.size else float("nan"),
            "mean_spleen_area_pct": float(100.0 * pos.mean() / pixels) if pos.size
            else float("nan"),
        })
    return pd.DataFrame(rows)


def plot_area_distribution(cache, bins: int = 30):
    """Histogram of spleen area (% of the slice) over spleen slices, and spleen slices per
    case."""
    import matplotlib.pyplot as plt

    cache = _load_cache(cache)
    area = (cache.masks >= SPLEEN_LEVEL).sum(axis=(1, 2)) * (100.0 / (cache.size ** 2))
    table = case_table(cache)
    fig = plt.figure(figsize=(11, 3.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1, 1.4])
    pos = area[area > 0]
    if pos.size:
        ax1.hist(pos, bins=bins, color="tab:red", alpha=0.8)
    else:
        ax1.text(0.5, 0.5, "no spleen slices", ha="center", va="center",
                 transform=ax1.transAxes)
    ax1.set_xlabel("spleen area (% of slice)")
    ax1.set_ylabel("slices")
    ax1.set_title(f"{pos.size} spleen slices of {len(cache)}")
    x = np.arange(len(table))
    ax2.bar(x, table["slices"], color="lightgray", label="all slices")
    ax2.bar(x, table["spleen_slices"], color="tab:red", label="with spleen")
    ax2.set_xticks(x, table["case_id"], rotation=90 if len(table) > 8 else 0, fontsize=8)
    ax2.set_ylabel("slices")
    ax2.legend(fontsize=8)
    ax2.set_title("slices per case")
    fig.suptitle(_title(cache, "spleen area distribution"))
    return fig


def example_indices(cache, n: int = 8, seed: int = 0) -> list[int]:
    """The slices `plot_examples` shows: `n` evenly spaced over the spleen slices in cache
    order (all slices if there are fewer than `n` spleen slices), starting at an offset
    drawn with `seed` inside the first spacing step."""
    cache = _load_cache(cache)
    pool = np.flatnonzero(cache.positive)
    if pool.size < n:
        pool = np.arange(len(cache))
    n = min(n, pool.size)
    if n == 0:
        return []
    step = pool.size / n
    offset = np.random.default_rng(seed).uniform(0, step)
    picks = np.minimum((offset + step * np.arange(n)).astype(int), pool.size - 1)
    return [int(i) for i in pool[picks]]


def _draw(ax, cache: SliceCache, k: int, label: bool = True) -> None:
    ax.imshow(cache.images[k], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    mask = cache.masks[k]
    if mask.max() >= SPLEEN_LEVEL:
        ax.contour(mask, levels=[SPLEEN_LEVEL - 0.5], colors="tab:red", linewidths=1.0)
    if label:
        ax.set_title(f"{cache.case_ids[k]} #{int(cache.slice_index[k])}", fontsize=8)
    ax.set_axis_off()


def plot_examples(cache, n: int = 8, seed: int = 0, ncols: int = 4):
    """Grid of `n` slices (rule: `example_indices`) with the spleen mask outlined in red."""
    import matplotlib.pyplot as plt

    cache = _load_cache(cache)
    picks = example_indices(cache, n, seed)
    ncols = max(1, min(ncols, len(picks) or 1))
    nrows = max(1, -(-len(picks) // ncols))
    fig = plt.figure(figsize=(2.6 * ncols, 2.75 * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, k in zip(axes, picks):
        _draw(ax, cache, k)
    fig.suptitle(_title(cache, "example slices (spleen outlined in red)"))
    return fig


def _static_case_figure(cache: SliceCache, case_id: str, order: np.ndarray, count: int = 6):
    from matplotlib.figure import Figure

    count = min(count, order.size)
    picks = order[np.linspace(0, order.size - 1, count).round().astype(int)]
    fig = Figure(figsize=(2.6 * count, 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, count)).ravel()
    for ax, k in zip(axes, picks):
        _draw(ax, cache, int(k))
    fig.suptitle(_title(cache, f"{case_id}: {count} of {order.size} slices, evenly spaced"))
    return fig


def volume_viewer(cache, case_id: str, interactive: bool | None = None):
    """Browse the slices of one case.

    Interactive (default outside batch mode): an ipywidgets widget with an IntSlider over the
    case's slices. In batch mode (KDLIB_BATCH=1) or with `interactive=False`: a static Figure
    of 6 evenly spaced slices.
    """
    cache = _load_cache(cache)
    order = _case_order(cache, case_id)
    if interactive is None:
        interactive = not batch_mode()
    if not interactive:
        return _static_case_figure(cache, case_id, order)

    import ipywidgets as widgets
    from matplotlib.figure import Figure

    out = widgets.Output()

    def show(position: int) -> None:
        k = int(order[position])
        fig = Figure(figsize=(4.5, 4.8), layout="constrained")
        _draw(fig.subplots(), cache, k)
        fig.suptitle(_title(cache, f"{case_id} slice {int(cache.slice_index[k])} "
                                   f"({position + 1}/{order.size})"))
        out.clear_output(wait=True)
        with out:
            from IPython.display import display

            display(fig)

    slider = widgets.IntSlider(value=int(order.size // 2), min=0, max=int(order.size - 1),
                               step=1, description="slice", continuous_update=False)
    slider.observe(lambda change: show(change["new"]), names="value")
    show(slider.value)
    return widgets.VBox([slider, out])
