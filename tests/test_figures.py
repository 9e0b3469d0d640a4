"""Figures and the mask viewer on made-up arrays and fake run folders (Agg backend)."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from kdlib import claims, figures, viewer  # noqa: E402
from kdlib.errors import DataError  # noqa: E402
from kdlib.train import load_history, load_runs  # noqa: E402

try:
    from test_tables import write_run
except ImportError:  # tests collected as a package
    from tests.test_tables import write_run


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _disc_slices(n=6, size=32):
    """uint8 'CT' slices with a bright disc whose radius grows with the index; masks = discs."""
    yy, xx = np.mgrid[:size, :size]
    images = np.full((n, size, size), 40, np.uint8)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        r = 2 + i if i else 0  # slice 0: no spleen
        disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r ** 2
        images[i][disc] = 200
        masks[i] = disc
    return images, masks


def _texts(fig):
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
    if fig._suptitle is not None:
        out.append(fig._suptitle.get_text())
    return out


def test_training_and_teacher_curves(tmp_path):
    runs_dir = tmp_path / "runs"
    a = write_run(runs_dir, "S1 baseline", model="S1", role="baseline", epochs=5)
    t1 = write_run(runs_dir, "T1", model="T1", role="teacher", fraction=1.0, epochs=4)
    unet = write_run(runs_dir, "unet", model="unet", role="teacher", fraction=1.0, epochs=4)
    hist = {"S1 baseline": load_history(a), "KD(T1,S1) B->B+PMD": load_history(a), "other": load_history(a)}
    fig = figures.training_curves(hist, title="Figure 4.2", synthetic=True)
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in visible] == list(hist)
    assert "SYNTHETIC" in fig._suptitle.get_text()
    for ax in visible:  # epochs are counts: integer ticks only
        assert all(float(t).is_integer() for t in ax.get_xticks())
    fig = figures.teacher_curves({"T1": load_history(t1), "unet": load_history(unet)})
    assert all(float(t).is_integer() for t in fig.axes[0].get_xticks())
    assert len(fig.axes) == 4
    assert any("no reconstruction head" in t for t in _texts(fig))
    assert fig.axes[2].get_title() == "T1: reconstruction loss" or "T1" in fig.axes[1].get_title()
    with pytest.raises(DataError):
        figures.training_curves({})


def test_choose_slices_rules():
    _, masks = _disc_slices(8)
    chosen, rule = figures.choose_slices(masks, n=3)
    assert len(chosen) == 3 and 0 not in chosen               # only spleen-positive slices
    area = masks.reshape(8, -1).sum(1)
    assert list(area[chosen]) == sorted(area[chosen])         # small to large cross-sections
    assert "quantiles" in rule and "7 positive" in rule
    assert figures.choose_slices(masks, n=20)[0] == list(range(1, 8))
    pred = masks.copy()
    pred[3] = False                                           # the reference model misses slice 3
    worst, rule = figures.choose_slices(masks, pred, n=1, rule="worst")
    assert worst == [3] and "lowest" in rule
    kd = masks.copy()
    kd[5] = False
    least, rule = figures.least_improved_slices(masks, masks, kd, n=2)
    assert least[0] == 5 and "lowest Dice gain" in rule
    with pytest.raises(DataError):
        figures.choose_slices(np.zeros((3, 8, 8), bool))
    with pytest.raises(DataError):
        figures.choose_slices(masks, n=2, rule="worst")


def test_qualitative_and_reconstruction_panels():
    images, masks = _disc_slices(6)
    shifted = np.roll(masks, 2, axis=2)
    fig = figures.qualitative_panel(images[[2, 4]], masks[[2, 4]], {"Teacher": masks[[2, 4]],
                                                                    "KD student": shifted[[2, 4]]},
                                    titles=["case a · 2", "case a · 4"])
    assert len(fig.axes) == 2 * 4
    assert [fig.axes[i].get_title() for i in range(4)] == ["Input", "Ground truth", "Teacher", "KD student"]
    texts = _texts(fig)
    assert "Dice 1.00" in texts and "case a · 4" in texts
    assert any(t.startswith("Dice 0.") for t in texts)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]  # which colour is which model
    assert legend == ["ground truth", "Teacher", "KD student"]
    with pytest.raises(DataError):
        figures.qualitative_panel(images, masks, {"bad": masks[:2]})
    recon = images.astype(np.float32) / 255 + 0.01
    fig = figures.reconstruction_panel(images, recon, n=3)
    assert len(fig.axes) == 3 * 3 and fig.axes[2].get_title() == "|difference|"
    fig = figures.reconstruction_panel(images, {"T1": recon, "T2": recon[:, None].repeat(3, axis=1)}, n=2)
    assert [fig.axes[i].get_title() for i in range(3)] == ["Input", "T1", "T2"]
    assert any(t.startswith("PSNR 40.0") for t in _texts(fig))


def test_forest_plot_from_paired_comparisons(tmp_path):
    runs_dir = tmp_path / "runs"
    teacher = write_run(runs_dir, "T1", model="T1", role="teacher", fraction=1.0)
    cases = {f"case{i}": 0.70 + 0.01 * i for i in range(5)}
    for seed in (0, 1):
        write_run(runs_dir, "S1 baseline", model="S1", role="baseline", seed=seed, cases=cases)
        for scales, gain in (("B", 0.05), ("E", -0.01)):
            write_run(runs_dir, f"KD {scales}", model="S1", role="kd", seed=seed, teacher_run=teacher,
                      scales=scales, pmd=True, cases={c: v + gain + 0.002 * seed for c, v in cases.items()})
    paired = claims.paired_comparisons(load_runs(runs_dir))
    assert list(paired["label"]) == ["KD(T1,S1) B->B+PMD", "KD(T1,S1) E->E+PMD"]
    fig = figures.forest_plot(paired, synthetic=True)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == list(paired["label"])
    assert "95% CI" in fig._suptitle.get_text() and "these patients" in fig._suptitle.get_text()
    assert "fewer than 3 folds" in fig._suptitle.get_text()  # one fold: no population interval
    assert sum(line.get_linestyle() == "--" for line in ax.lines) == 2  # the these-patients intervals
    assert any(line.get_xdata()[0] == 0 and len(set(line.get_xdata())) == 1 for line in ax.lines)
    small = pd.DataFrame({"label": ["a", "b"], "diff": [0.1, -0.02], "ci_low": [0.05, np.nan],
                          "ci_high": [0.15, np.nan]})
    assert len(figures.forest_plot(small).axes[0].get_yticklabels()) == 2
    with pytest.raises(DataError):
        figures.forest_plot(pd.DataFrame({"label": ["a"]}))


def test_forest_plot_without_intervals_says_so():
    single = pd.DataFrame({"label": ["a", "b"], "diff": [0.1, -0.02], "ci_low": [np.nan] * 2,
                           "ci_high": [np.nan] * 2, "n_pairs": [1, 1]})
    title = figures.forest_plot(single)._suptitle.get_text()
    assert "95% CI" not in title and "no intervals" in title


def test_forest_plot_with_many_rows_is_split_by_pair():
    pairs = ["T1->S1", "T1->S2", "T2->S1", "T2->S2", "T1->S1"]
    rows = pd.DataFrame({"label": [f"config {i}" for i in range(50)], "pair": [pairs[i % 5] for i in range(50)],
                         "diff": np.linspace(-0.1, 0.1, 50), "ci_low": np.linspace(-0.2, 0.0, 50),
                         "ci_high": np.linspace(0.0, 0.2, 50)})
    fig = figures.forest_plot(rows)
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["T1->S1", "T1->S2", "T2->S1", "T2->S2"]
    assert sum(len(ax.get_yticklabels()) for ax in fig.axes) == 50
    assert max(len(ax.get_yticklabels()) for ax in fig.axes) <= 20


def test_save_figure_footer_and_atomic(tmp_path):
    fig = figures.forest_plot(pd.DataFrame({"label": ["x"], "diff": [0.0], "ci_low": [-0.1], "ci_high": [0.1]}))
    prov = {"profile": "smoke", "data": "phantom", "commit": "abc123", "date": "2026-01-01 00:00 UTC"}
    path = figures.save_figure(fig, tmp_path / "figs" / "forest", prov)
    assert path.name == "forest.png" and path.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["forest.png"]
    footer = [t for t in fig.texts if t.get_gid() == "kdlib-footer"]
    assert len(footer) == 1 and "SYNTHETIC" in footer[0].get_text() and "abc123" in footer[0].get_text()
    assert "SYNTHETIC" in Image.open(path).info["Description"]
    figures.save_figure(fig, path, {**prov, "data": "shared:Task09_Spleen"})  # resave: one footer
    footer = [t for t in fig.texts if t.get_gid() == "kdlib-footer"]
    assert len(footer) == 1 and "SYNTHETIC" not in footer[0].get_text()
    assert "profile: smoke" in footer[0].get_text()
    assert "SYNTHETIC" in figures.footer_text({"synthetic": True})


def _trained_like_run(tmp_path, threshold="prob"):
    """A run folder holding an untrained S1's weights (no training: only the file layout)."""
    import torch

    from kdlib import models

    run_dir = tmp_path / f"s1-{threshold}"
    (run_dir / "checkpoints").mkdir(parents=True)
    config = {"name": "S1 baseline", "model": "S1", "role": "baseline", "cache": "cache", "split": "split.json",
              "threshold": threshold, "setting": "faithful" if threshold == "logit" else "corrected"}
    (run_dir / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = models.build("S1")
    torch.save({"model": model.state_dict(), "epoch": 0}, run_dir / "checkpoints" / "best.pt")
    return run_dir, model.eval()


def test_predict_masks_uses_the_runs_threshold(tmp_path):
    import torch

    images, _ = _disc_slices(3, size=32)
    for threshold, cut in (("prob", 0.0), ("logit", 0.5)):
        run_dir, model = _trained_like_run(tmp_path, threshold)
        with torch.no_grad():
            x = torch.from_numpy(images).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
            logits = model(x)["logits"][:, 0].numpy()
        masks = figures.predict_masks(run_dir, images)
        assert masks.dtype == bool and masks.shape == images.shape
        np.testing.assert_array_equal(masks, logits > cut)
    other = figures.predict_masks(run_dir, images, threshold="prob")  # override the run's "logit"
    np.testing.assert_array_equal(other, logits > 0.0)
    with pytest.raises(DataError):
        figures.predict_masks(run_dir, images.astype(np.float32))


def test_viewer_static_and_interactive(monkeypatch):
    images, masks = _disc_slices(6)
    preds = {"S1": np.roll(masks, 1, axis=1), "KD": masks}
    monkeypatch.setenv("KDLIB_BATCH", "1")
    assert not viewer.interactive_available()
    fig = viewer.mask_viewer(images, masks, preds, case_ids=[f"c{i // 3}" for i in range(6)], n_static=3)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 3
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0] == "ground truth" and legend[2] == "KD (Dice 1.00)"
    assert "case c" in fig.axes[0].get_title()
    with pytest.raises(DataError):
        viewer.mask_viewer(images, masks, preds, case_ids=["x"])
    monkeypatch.setattr(viewer, "interactive_available", lambda: True)
    import ipywidgets

    widget = viewer.mask_viewer(images, masks, preds)
    assert isinstance(widget, ipywidgets.VBox)
    slider, models = widget.children[0].children
    assert slider.max == 5 and slider.value == 5 and models.value == ("S1", "KD")
    slider.value = 2  # redraws without error
    models.value = ("KD",)


# ------------------------------------------------------------------ issue 19: legible figures
def _boxes(fig, texts):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in texts if t.get_text() and t.get_visible()]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _no_collisions(fig, ax):
    boxes = _boxes(fig, ax.get_xticklabels())
    assert all(not _overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), \
        [t.get_text() for t in ax.get_xticklabels()]


def test_forest_plot_is_split_by_pair_readable_at_page_height(tmp_path):
    """The published forest plot was 968x4327 px, its title over the first row label and its x
    tick labels running together: one figure per teacher-student pair, its title above the
    rows, at most FOREST_TICKS ticks, none colliding, each under a page's height."""
    pairs = ["T1->S1", "T1->S2", "T2->S1", "T2->S2"]
    rows = pd.DataFrame({"label": [f"KD({p[:2]},{p[-2:]}) config {i}" for i in range(13) for p in pairs],
                         "pair": [p for _ in range(13) for p in pairs],
                         "reference": ["baseline", "KD-off control"] * 26,
                         "diff": np.linspace(-0.1, 0.1, 52), "ci_low": np.linspace(-0.23, 0.0, 52),
                         "ci_high": np.linspace(0.0, 0.23, 52), "n_pairs": [6] * 52, "p": [0.04] * 52})
    figs = figures.forest_plots(rows, synthetic=True)
    assert list(figs) == pairs
    for pair, fig in figs.items():
        (ax,) = fig.axes
        assert len(ax.get_yticklabels()) == 13 and pair in fig._suptitle.get_text()
        assert len([t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]) \
            <= figures.FOREST_TICKS + 1
        _no_collisions(fig, ax)
        title = _boxes(fig, [fig._suptitle])[0]
        labels = _boxes(fig, ax.get_yticklabels())
        assert all(title.y0 >= box.y1 for box in labels), "the title overlaps a row label"
        path = figures.save_figure(fig, tmp_path / f"forest_{pair.replace('->', '_')}.png", {})
        width, height = Image.open(path).size
        assert height <= 1100 and width <= 1100, (pair, width, height)  # 120 dpi: under 9 in
    # one figure of all rows, as before, keeps its title off the first label too
    fig = figures.forest_plot(rows)
    title = _boxes(fig, [fig._suptitle])[0]
    assert all(title.y0 >= box.y1 for box in _boxes(fig, fig.axes[0].get_yticklabels()))


@pytest.mark.parametrize("epochs", [240, 1000])
def test_curve_epoch_ticks_do_not_collide(tmp_path, epochs):
    points = pd.DataFrame({"label": "S1 baseline", "fold": "fold0", "test_patients": "p1",
                           "seed": 0, "epoch": np.arange(1, epochs + 1),
                           "val_dice": np.linspace(0.1, 0.8, epochs), "kept": False, "plateau": None})
    fig = figures.validation_curves(points)
    ax = fig.axes[0]
    assert all(float(t).is_integer() for t in ax.get_xticks())
    _no_collisions(fig, ax)
    history = pd.DataFrame({"epoch": np.arange(1, epochs + 1), "train_total": np.linspace(1, 0.1, epochs),
                            "val_dice": np.linspace(0.1, 0.8, epochs)})
    fig = figures.training_curves({"a": history, "b": history, "c": history, "d": history})
    _no_collisions(fig, fig.axes[0])


def test_figure_stamp_names_exactly_the_code_files_that_differed(tmp_path, monkeypatch):
    """Issue 19: figures were stamped `b818353+uncommitted` because a publishing run rewrites
    README.md and figures/. Only code counts, and code that differs from the commit is named
    file by file in the stamp (and the PNG's metadata), never a bare `+uncommitted`."""
    import subprocess

    from kdlib import pipeline, provenance

    repo = tmp_path / "repo"
    for name in ("kdlib/figures.py", "kdlib/train.py", "notebooks/05.py", "README.md",
                 "figures/real-mini/a.png"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text("v1\n")
    git = lambda *args: subprocess.run(["git", "-C", str(repo), *args], check=True,  # noqa: E731
                                       capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    short = git("rev-parse", "HEAD")[:7]
    monkeypatch.setattr(provenance, "REPO_ROOT", repo)
    (repo / "README.md").write_text("new results\n")  # outputs of the run itself
    (repo / "figures" / "real-mini" / "a.png").write_text("v2\n")
    assert pipeline.provenance("real-mini", "shared:x")["commit"] == short
    (repo / "kdlib" / "figures.py").write_text("v2\n")
    (repo / "notebooks" / "05.py").write_text("v2\n")
    prov = pipeline.provenance("real-mini", "shared:x")
    assert prov["commit"] == f"{short}+uncommitted: kdlib/figures.py, notebooks/05.py"
    fig = figures.forest_plot(pd.DataFrame({"label": ["x"], "diff": [0.0], "ci_low": [-0.1],
                                            "ci_high": [0.1]}))
    path = figures.save_figure(fig, tmp_path / "f.png", prov)
    assert "+uncommitted: kdlib/figures.py, notebooks/05.py" in Image.open(path).info["Description"]
    # a run record that says "not clean" without the list says so, not a bare +uncommitted
    assert provenance.commit_stamp({"commit": "a" * 40, "clean": False}) == \
        "aaaaaaa+uncommitted: changed files not recorded"
