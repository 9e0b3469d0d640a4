"""The widgets render and respond in a real JupyterLab page: headless Chromium (the system's
package) driven by Selenium with the system's chromedriver.

A generated notebook builds the mask viewer (notebook 05) from `viewer.synthetic_example()`
and the volume slider (notebook 01, `qc.volume_viewer`) from a small in-memory cache, so no
results folder is needed. The test picks a slice and two models in the browser, checks that
the kernel received both choices and that the figure was redrawn, and screenshots the viewer.
`KDLIB_UPDATE_SCREENSHOT=1` copies that screenshot to figures/screenshots/ (committed).

Skips with a message when chromium, chromedriver or selenium is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from conftest import REPO
from test_jupyterlab import running_lab

SCREENSHOT = REPO / "figures" / "screenshots" / "mask_viewer_synthetic.png"
CHOSEN_SLICE = 5  # the viewer opens on the largest spleen (slice 3)
CHOSEN_MODELS = ["S1 (SYNTHETIC)", "S2 (SYNTHETIC)"]

SETUP = """\
%matplotlib inline
import json
import numpy as np
from kdlib import viewer
from kdlib.data import qc
from kdlib.data.cache import SliceCache

images, truths, predictions, case_ids = viewer.synthetic_example()

def record(_=None):  # every choice made in the browser lands in state.json
    box = mask.children[1]
    with open("state.json", "w") as handle:
        json.dump({"slice": box.children[0].value, "models": list(box.children[1].value),
                   "volume_slice": volume.children[0].value}, handle)
"""
MASK_VIEWER = """\
mask = viewer.mask_viewer(images, truths, predictions, case_ids=case_ids,
                          note="SYNTHETIC data (kdlib.viewer.synthetic_example), not a trained model")
mask
"""
VOLUME_VIEWER = """\
cache = SliceCache(".", (images * 255).astype(np.uint8), truths.astype(np.uint8) * 255,
                   np.array(case_ids), np.arange(len(images)), np.array(["synthetic"] * len(images)),
                   {"synthetic": True})
volume = qc.volume_viewer(cache, case_ids[0], interactive=True)
for w in (mask.children[1].children[0], mask.children[1].children[1], volume.children[0]):
    w.observe(record, names="value")
record()
volume
"""


def _browser_tools():
    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                     if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        selenium = None
    if not (chromium and driver and selenium):
        pytest.skip("browser test needs chromium, chromedriver and selenium (Debian: apt-get "
                    "install chromium chromium-driver; pip install -r requirements.txt); "
                    f"found chromium={chromium}, chromedriver={driver}, selenium={bool(selenium)}")
    return chromium, driver


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = _browser_tools()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage", "--window-size=1400,1800",
                 f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chrome-')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(what: str, check, timeout: float = 60.0, driver=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - the page is still building
            value = None
        if value:
            return value
        time.sleep(0.25)
    logs = ""
    if driver is not None:
        logs = "\n".join(str(e) for e in driver.get_log("browser")[-20:])
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def _write_notebook(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (SETUP, MASK_VIEWER, VOLUME_VIEWER)]
    path = folder / "viewer_check.ipynb"
    nbformat.write(nb, path)
    return path


def _state(folder: Path) -> dict:
    path = folder / "state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _figure_src(viewer_box) -> str:
    from selenium.webdriver.common.by import By

    images = viewer_box.find_elements(By.CSS_SELECTOR, ".widget-output img")
    return images[0].get_attribute("src") if len(images) == 1 else ""


def test_mask_viewer_and_volume_slider_in_jupyterlab(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    root = tmp_path / "root"
    root.mkdir()
    _write_notebook(root)
    with running_lab(root, tmp_path, "--LabApp.expose_app_in_browser=True") as lab:
        browser.get(f"{lab.url}/lab/tree/viewer_check.ipynb?token={lab.token}")
        _wait("the notebook's kernel to be idle", lambda: browser.execute_script(
            "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            "return !!(w && w.sessionContext && w.sessionContext.session &&"
            " w.sessionContext.session.kernel && w.sessionContext.session.kernel.status === 'idle');"),
            timeout=90, driver=browser)
        browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
        _wait("both widgets to render", lambda: len(browser.find_elements(
            By.CSS_SELECTOR, ".jp-OutputArea .widget-slider")) == 2, timeout=90, driver=browser)
        _wait("the kernel to record the initial state", lambda: _state(root), driver=browser)

        boxes = browser.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output > .widget-vbox")
        mask_box = next(b for b in boxes if b.find_elements(By.TAG_NAME, "select"))
        volume_box = next(b for b in boxes if not b.find_elements(By.TAG_NAME, "select"))
        assert "SYNTHETIC data" in mask_box.text
        for box in (mask_box, volume_box):  # each shows one rendered figure
            _wait("a figure in each widget", lambda box=box: _figure_src(box), driver=browser)

        # choose a slice by typing into the slider's readout, as a user can
        assert _state(root)["slice"] != CHOSEN_SLICE
        first = _figure_src(mask_box)
        readout = mask_box.find_element(By.CSS_SELECTOR, ".widget-readout")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", readout)
        readout.click()
        readout.send_keys(Keys.CONTROL, "a")
        readout.send_keys(str(CHOSEN_SLICE), Keys.ENTER)
        _wait("the slice to reach the kernel",
              lambda: _state(root).get("slice") == CHOSEN_SLICE, driver=browser)
        _wait("the figure to redraw", lambda: _figure_src(mask_box) not in ("", first))

        # choose two of the three models
        before = _figure_src(mask_box)
        select = Select(mask_box.find_element(By.TAG_NAME, "select"))
        assert [o.text for o in select.options] == list(_state(root)["models"])  # all at start
        select.deselect_all()
        for name in CHOSEN_MODELS:
            select.select_by_visible_text(name)
        _wait("the two models to reach the kernel",
              lambda: _state(root).get("models") == CHOSEN_MODELS, driver=browser)
        _wait("the figure to redraw", lambda: _figure_src(mask_box) not in ("", before))

        # the volume slider of notebook 01 responds as well
        vol_before = _figure_src(volume_box)
        assert _state(root)["volume_slice"] != 1
        vol_readout = volume_box.find_element(By.CSS_SELECTOR, ".widget-readout")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", vol_readout)
        vol_readout.click()
        vol_readout.send_keys(Keys.CONTROL, "a")
        vol_readout.send_keys("1", Keys.ENTER)
        _wait("the volume slice to reach the kernel",
              lambda: _state(root).get("volume_slice") == 1, driver=browser)
        _wait("the volume figure to redraw", lambda: _figure_src(volume_box) not in ("", vol_before))

        browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", mask_box)
        time.sleep(0.5)  # let the last figure paint before the screenshot
        shot = tmp_path / "mask_viewer.png"
        assert mask_box.screenshot(str(shot))
    from PIL import Image
    import numpy as np

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 300 and pixels.std() > 20  # not blank
    if os.environ.get("KDLIB_UPDATE_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)


def test_synthetic_example_feeds_the_viewer_without_a_browser():
    """Runs everywhere (no browser): the generated inputs fit `mask_viewer`, and the static
    fallback carries the SYNTHETIC note in its title."""
    from kdlib import viewer

    images, truths, predictions, case_ids = viewer.synthetic_example(slices=6, size=32)
    assert images.shape == truths.shape == (6, 32, 32) and len(case_ids) == 6
    assert truths.any(axis=(1, 2)).tolist() == [False, False, True, True, False, False]
    assert len(predictions) == 3 and all(p.shape == truths.shape for p in predictions.values())
    fig = viewer.static_view(images, truths, predictions, case_ids, note="SYNTHETIC data")
    assert fig._suptitle.get_text().startswith("SYNTHETIC data - ")
