"""QC helpers for notebook 01: tables and figures, no plt.show."""
from __future__ import annotations

import io

import numpy as np
import pytest

from kdlib.data import SliceCache
from kdlib.data import qc
from kdlib.errors import DataError


@pytest.fixture(scope="module")
def cache(phantom_cache):
    return SliceCache.load(phantom_cache)


def _render(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=40)
    return buf.getvalue()


def test_case_table(cache):
    table = qc.case_table(cache)
    assert list(table["case_id"]) == cache.cases
    assert table["slices"].sum() == len(cache)
    assert table["spleen_slices"].sum() == int(cache.positive.sum())
    row = table.iloc[0]
    idx = cache.indices_of([row["case_id"]])
    areas = (cache.masks[idx] >= 128).sum(axis=(1, 2))
    assert row["mean_spleen_area_px"] == pytest.approx(areas[areas > 0].mean())
    assert row["mean_spleen_area_pct"] == pytest.approx(100 * areas[areas > 0].mean() / 64 ** 2)


def test_figures_are_titled_synthetic(cache):
    import matplotlib.pyplot as plt

    for fig in (qc.plot_area_distribution(cache), qc.plot_examples(cache, n=6, seed=1)):
        assert fig._suptitle.get_text().startswith("SYNTHETIC")
        assert _render(fig)[:4] == b"\x89PNG"
        plt.close(fig)
    before = plt.get_fignums()
    qc.volume_viewer(cache, cache.cases[0], interactive=False)
    assert plt.get_fignums() == before  # the static viewer is not kept by pyplot


def test_example_rule(cache):
    picks = qc.example_indices(cache, n=8, seed=0)
    assert len(picks) == 8 and picks == sorted(picks)
    assert all(cache.positive[picks])
    assert qc.example_indices(cache, n=8, seed=0) == picks
    import matplotlib.pyplot as plt

    fig = qc.plot_examples(cache, n=8)
    assert fig.axes[0].get_title()  # labelled with case and slice
    plt.close(fig)


def test_volume_viewer(cache, monkeypatch):
    case = cache.cases[0]
    monkeypatch.setenv("KDLIB_BATCH", "1")
    fig = qc.volume_viewer(cache, case)
    assert "SYNTHETIC" in fig._suptitle.get_text() and len(fig.axes) == 6
    _render(fig)
    monkeypatch.setenv("KDLIB_BATCH", "0")
    widget = qc.volume_viewer(cache, case)
    slider = widget.children[0]
    n = int((cache.case_ids == case).sum())
    assert slider.min == 0 and slider.max == n - 1
    slider.value = 1  # redraws without error
    with pytest.raises(DataError, match="no case"):
        qc.volume_viewer(cache, "nope", interactive=False)


def test_faithful_soft_masks_count(tmp_path):
    """Soft (faithful) masks count as spleen where >= 128."""
    from conftest import write_msd
    from kdlib.data import preprocess

    msd = write_msd(tmp_path / "msd", shape=(16, 16, 5))
    preprocess(msd, tmp_path / "c", size=40, faithful=True)
    table = qc.case_table(tmp_path / "c")
    assert (table["spleen_slices"] == 2).all()
    assert np.isfinite(table["mean_spleen_area_px"]).all()
