# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Preprocessing: CT volumes to a slice cache and a patient split
#
# Converts a data source into the compact slice cache every later notebook reads, draws the
# split, and shows the quality checks a reader wants before training anything.
#
# - Defaults run the **smoke** profile: generated (SYNTHETIC) MSD-shaped data at 64x64.
# - Whole pipeline: `python -m kdlib run --profile smoke` (or `real-mini`, the real CT in
#   `../shared/data`); the thesis scale on a GPU: `python -m kdlib run --profile thesis --data /path/to/Task09_Spleen`.
# - Two settings are prepared: **corrected** (abdominal HU window, binary masks, split by
#   patient with validation patients) and **faithful** (exactly the original code: HU clipped
#   to 0..255, bilinear soft masks, random 80/20 split by slice, test set used as validation).

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | real-mini | thesis: names the output folder results/<profile>
out_dir: str = ""  # "" -> <repo>/results/<profile>
data: str = "phantom"  # "phantom", a data folder, or several joined by commas; prefix shared: for ../shared/data
phantom_cases: int = 6  # generated cases, used when data is "phantom"
phantom_size: int = 64  # in-plane size of the generated volumes
phantom_seed: int = 0
size: int = 64  # slice size in the cache (the thesis: 256)
hu_window: list = [-160, 240]  # corrected setting: HU window (W400/L40); mixing with 8-bit thesis slices needs [0, 255]
settings: list = ["corrected", "faithful"]  # which readings of the thesis to prepare
split_seed: int = 42
folds: int = 0  # 0: one patient split; k of 2 or more: k-fold cross-validation over patients
fold_cases: list = []  # name each fold's patients instead: [{"test": [...], "val": [...]}, ...] (replaces folds)
test_fraction: float = 0.2
val_fraction: float = 0.2  # of the training patients, for model selection
student_fraction: float = 0.5  # students train on this share of the teacher's training data
student_by: str = "patient"  # patient: whole training patients | slice: that share of every training patient
val_share: float = 0.0  # corrected setting: this share of every training patient's slices joins validation
export_png: bool = False  # also write QC PNGs into the cache folder

# %%
# %matplotlib inline
import time

import pandas as pd
from IPython.display import display

from kdlib import pipeline
from kdlib.data import SliceCache, load_split, qc

started = time.time()
out = pipeline.out_folder(profile, out_dir)
inputs = pipeline.data_inputs(data, out, phantom_cases, phantom_size, phantom_seed)
print("inputs:", *inputs, sep="\n  ")

# %% [markdown]
# ## Conversion and split
# An up-to-date cache is reused, never rebuilt; a different configuration needs another folder.

# %%
prepared = pipeline.prepare(out, inputs, size=size, hu_window=hu_window, settings=settings,
                            split_seed=split_seed, folds=folds, test_fraction=test_fraction,
                            val_fraction=val_fraction, student_fraction=student_fraction,
                            export_png=export_png, fold_cases=fold_cases or None, student_by=student_by,
                            val_share=val_share)
summary = pd.DataFrame({s: prepared[s]["summary"] for s in settings}).T
display(summary)

# %%
split_rows = []
for setting in settings:
    for path in prepared[setting]["splits"]:
        split = load_split(path)
        split_rows.append({"setting": setting, "fold": split.get("fold"), "mode": split["mode"],
                           **{k: len(split[k]) for k in ("train", "val", "test", "student_train")},
                           "test cases": ", ".join(split.get("test_cases") or [])})
display(pd.DataFrame(split_rows))

# %% [markdown]
# ## Quality checks (first prepared setting)

# %%
cache = SliceCache.load(prepared[settings[0]]["cache"])
display(qc.case_table(cache))

# %%
qc.plot_area_distribution(cache);

# %%
qc.plot_examples(cache, n=8, seed=0);

# %% [markdown]
# Scroll through one volume (a slider in JupyterLab; a static strip in batch runs).

# %%
qc.volume_viewer(cache, cache.cases[0])

# %%
print(pipeline.provenance(profile, data, started))
