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
# # 02 · Teachers: SpleenSeg-U-Net, T1 (multi-task U-Net) and T2 (multi-task TransUNet)
#
# Trains the three teachers as the original did (Dice+BCE, plus 0.2 x reconstruction MSE for
# the multi-task teachers; AdamW 1e-4, betas (0.9, 0.95), weight decay 0.05, batch 8) and keeps
# the checkpoint with the best validation loss (with `select_on: dice`, the best validation Dice,
# the quantity early stopping watches). Regenerates Figure 4.1 (curves), Figures 4.9
# and 4.10 (reconstructions and segmentations) and Table 4.1.
#
# - Defaults: the **smoke** profile (SYNTHETIC data, 64x64, 2 epochs) — numbers are not comparable to the thesis.
# - Thesis scale on a GPU: `python -m kdlib run --profile thesis --data /path/to/Task09_Spleen` (200 epochs, 256x256).
# - `epochs` is a cap. With `patience` > 0 a teacher stops once its validation Dice has not
#   risen by more than `min_delta` for `patience` epochs (never before `min_epochs`); Table 4.1 and the curves say how many
#   epochs each teacher ran. Validation Dice is in each run's `history.csv`, every epoch.
# - With `smooth` > 1 both rules watch the mean of the last `smooth` epochs, and `warmup`
#   epochs set no best: a noisy early peak then neither stops a teacher nor is kept (real-mini).
# - Finished runs are skipped, an interrupted run resumes from its last epoch. A finished run
#   keeps only its best weights (fp16 for teachers: half the disk, same test metrics); with
#   `keep_last` it also keeps its last state, so that a later, higher cap continues it.

# %% tags=["parameters"]
profile: str = "smoke"  # names the output folder results/<profile>
out_dir: str = ""  # "" -> <repo>/results/<profile>
data: str = "phantom"  # only recorded for provenance here (01 prepared the data)
setting: str = "corrected"  # corrected | faithful: the reading shown in tables and figures
teachers: list = ["T1", "T2"]  # teachers trained in `setting`; add "unet" for Table 4.1's single-task U-Net (thesis profile)
faithful_teachers: list = ["T1"]  # also trained in the faithful setting (04's faithful T1->S1 grid); [] to skip
epochs: int = 2  # the cap on epochs (the thesis: 200)
patience: int = 0  # early stopping on validation Dice: epochs without improvement (0: off)
min_delta: float = 0.0  # a validation-Dice gain must exceed this to count as an improvement
min_epochs: int = 0  # no early stop before this many epochs
select_on: str = "loss"  # what keeps a checkpoint: loss (the original's validation loss) | dice (validation Dice, as early stopping)
smooth: int = 1  # stopping and selection watch the mean of the last `smooth` epochs (1: each epoch; a lucky epoch cannot win with more)
warmup: int = 0  # the first `warmup` epochs set no best: never kept, never the peak that patience waits to beat
keep_last: bool = False  # keep the last state of each run (optimiser included) to continue it later
batch_size: int = 8
precision: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16 (AMX / AVX512-BF16), fp32 elsewhere
device: str = ""  # "" -> cuda if available else cpu
publish_dir: str = ""  # "" -> tables/figures under out_dir; real-mini: figures/real-mini
train_folds: list = []  # [] -> every fold prepared by 01; e.g. [2]: the second of two invocations that split the folds
n_examples: int = 4  # slices in the qualitative figures

# %%
# %matplotlib inline
import time

from IPython.display import Markdown, display

from kdlib import experiments, figures, pipeline, report, tables, train
from kdlib.data import SliceCache, load_split

started = time.time()
out = pipeline.out_folder(profile, out_dir)
publish = pipeline.publish_folder(out, publish_dir)
prepared = pipeline.load_prepared(out)
synthetic = prepared[setting]["synthetic"]
plan = pipeline.teacher_plan(prepared, setting, teachers, faithful_teachers)
print("training plan:", plan, "| folds:", len(prepared[setting]["splits"]))

# %%
registry = pipeline.train_teachers(out, plan, epochs=epochs, batch_size=batch_size, folds=train_folds,
                                   precision=precision, device=device or None, patience=patience,
                                   min_delta=min_delta, min_epochs=min_epochs, keep_last=keep_last,
                                   select_on=select_on, smooth=smooth, warmup=warmup)
runs = [r for r in train.load_runs(out / "runs") if r["config"]["role"] == "teacher"]
prov = pipeline.provenance(profile, data, started)

# %% [markdown]
# ## How each teacher trained: epochs run, why it stopped, best against last epoch
# Test Dice of the kept checkpoint (best validation loss, or Dice with `select_on: dice`) beside that of the last epoch's model,
# so that a selection effect or a late collapse stays visible.

# %%
import pandas as pd

rows = []
for run_setting, by_fold in registry.items():
    for fold, by_model in sorted(by_fold.items()):
        for model, run_dir in by_model.items():
            m = train.read_metrics(run_dir)
            if m is None:
                continue
            rows.append({"setting": run_setting, "fold": int(fold), "teacher": model,
                         "epochs run": m["epochs_run"], "stopped at": m["stopped"],
                         "best epoch": m["best_epoch"], "test Dice (best)": round(m["pooled"]["dice"], 3),
                         "test Dice (last epoch)": round(m["last_epoch"]["pooled"]["dice"], 3)})
display(pd.DataFrame(rows))

# %% [markdown]
# ## Figure 4.1: training and validation curves (segmentation and reconstruction), fold 0

# %%
fold0 = registry.get(setting, {}).get("0", {})  # empty when this invocation trains other folds (`train_folds`)
stem = f"fig4_1_teacher_curves_{setting}"  # drawn as `kdlib report` draws it, from the run records
for stem, fig in report.curve_figures(train.load_runs(out / "runs"), setting, prepared[setting]["splits"][0],
                                      synthetic=synthetic, only=(stem,)).items():
    figures.save_figure(fig, publish / "figures" / f"{stem}.png", prov)

# %% [markdown]
# ## Figures 4.9 and 4.10: reconstructions and segmentations on test slices (fold 0)
# Shown slices: chosen by the rule printed below, from the fold-0 test patients only.

# %%
cache = SliceCache.load(prepared[setting]["cache"])
test_idx = load_split(prepared[setting]["splits"][0])["test"]
images, truths = cache.images[test_idx], cache.masks[test_idx] > 127
if all(m in fold0 and pipeline.has_checkpoint(fold0[m]) for m in teachers):
    outputs = {model: train.infer(fold0[model], images, device=device or None) for model in teachers}
    chosen, rule = figures.choose_slices(truths, outputs[teachers[0]]["mask"], n_examples)
    print("slice rule:", rule)
    multi_task = [m for m in teachers if "recon" in outputs[m]]
    if multi_task:
        fig = figures.reconstruction_panel(images[chosen], {m: outputs[m]["recon"][chosen] for m in multi_task}, n_examples)
        figures.save_figure(fig, publish / "figures" / f"fig4_9_reconstructions_{setting}.png", prov)
    fig = figures.qualitative_panel(images[chosen], truths[chosen], {m: outputs[m]["mask"][chosen] for m in teachers})
    figures.save_figure(fig, publish / "figures" / f"fig4_10_teacher_segmentations_{setting}.png", prov)
else:
    print("Figures 4.9 and 4.10 need fold 0's teacher checkpoints: drawn by the invocation that trained fold 0")

# %% [markdown]
# ## Table 4.1: teachers, the thesis's numbers beside ours
# Pooled metrics over the test slices (as the thesis computed them), mean over folds/seeds.

# %%
table41 = tables.table("4.1", runs)
tables.write_table(table41, publish / "tables", "table4_1", synthetic=synthetic)
display(Markdown((publish / "tables" / "table4_1.md").read_text()))

# %%
print(pipeline.provenance(profile, data, started))
