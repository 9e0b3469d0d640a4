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
# # 04 · Ablations: scales, PMD, MSE against contrastive, data volume
#
# Trains every configuration of the thesis's Tables 4.3-4.11 (rows read from the thesis's own
# tables) and regenerates those tables, the training-curve Figures 4.3-4.8 and the qualitative
# Figures 4.15-4.19. Identical configurations across tables are trained once.
# The T1->S1 grid also runs in the **faithful** setting, so the effect of the original's defects
# (PMD identically zero, random projectors, slice-level split, selection on the test set) is
# measured, not asserted. Every table row says which setting it comes from.
#
# - Defaults: the **smoke** profile (SYNTHETIC data, 2 epochs) — numbers are not comparable to the thesis.
# - Thesis scale on a GPU: `python -m kdlib run --profile thesis --data /path/to/Task09_Spleen`.

# %% tags=["parameters"]
profile: str = "smoke"  # names the output folder results/<profile>
out_dir: str = ""  # "" -> <repo>/results/<profile>
data: str = "phantom"  # only recorded for provenance here
setting: str = "corrected"  # the main reading: corrected | faithful
faithful_grid: bool = True  # also run the T1->S1 grid (Tables 4.3, 4.6, 4.7) in the faithful setting
epochs: int = 2  # the thesis: 120
seeds: list = [42]  # several seeds give confidence intervals
headline_seeds: list = []  # [] -> seeds; else the seeds of the rows of claims 1 and 8 (the headline: baselines, controls, KD(T1,S1/S2) B+PMD)
workers: int = 1  # runs trained at once on the CPU, each in its own process with its share of the threads (2 on 2 cores: about 1.2x)
patience: int = 0  # early stopping: epochs without a validation-Dice gain before stopping (0: off; epochs is the cap)
min_epochs: int = 0  # no early stop before this many epochs (a slow optimiser starts near Dice 0)
select_on: str = "loss"  # what keeps a checkpoint: loss (the original's validation loss) | dice (validation Dice, as early stopping)
smooth: int = 1  # stopping and selection watch the mean of the last `smooth` epochs (1: each epoch; a lucky epoch cannot win with more)
warmup: int = 0  # the first `warmup` epochs set no best: never kept, never the peak that patience waits to beat
keep_last: bool = False  # keep each run's last state (optimiser included) so that a higher cap continues it
grid: str = "all"  # all: every row of Tables 4.3-4.11 | claims: only the rows the claims compare | none (CPU-sized cuts)
grid_folds: list = []  # [] -> every fold prepared by 01; e.g. [0] to run the grid on one fold
precision: str = "auto"  # auto: bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere
device: str = ""  # "" -> cuda if available else cpu
publish_dir: str = ""  # "" -> tables/figures under out_dir; real-mini: figures/real-mini
train_folds: list = []  # [] -> every fold prepared by 01 (within grid_folds); e.g. [2]: the second of two invocations that split the folds
n_examples: int = 4  # slices in each qualitative figure

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
# the rows of Tables 4.3-4.11 that `grid` selects, and the faithful T1->S1 grid (as `--plan` lists them)
configs = pipeline.ablation_configs(out, setting, grid, epochs=epochs, seeds=seeds, headline_seeds=headline_seeds,
                                    precision=precision,
                                    grid_folds=grid_folds, folds=train_folds, faithful_grid=faithful_grid, patience=patience,
                                    min_epochs=min_epochs, select_on=select_on, smooth=smooth, warmup=warmup,
                                    keep_last=keep_last)
print(len(configs), "configurations")

# %%
pipeline.train_all(out, configs, device=device or None, workers=workers)
runs = train.load_runs(out / "runs")
prov = pipeline.provenance(profile, data, started)

# %% [markdown]
# ## Tables 4.3-4.11, the thesis's numbers beside ours (pooled test metrics, mean over folds and seeds)

# %%
for table_id in experiments.ABLATION_TABLES:
    df = tables.table(table_id, runs)
    tables.write_table(df, publish / "tables", f"table{table_id.replace('.', '_')}", synthetic=synthetic)
    display(Markdown((publish / "tables" / f"table{table_id.replace('.', '_')}.md").read_text()))

# %% [markdown]
# ## Figures 4.3-4.8: training curves of each configuration, one figure per teacher-student pair

# %%
fold0_split = prepared[setting]["splits"][0]
stems = tuple(f"fig{number.replace('.', '_')}_curves_{setting}" for number in experiments.CURVE_FIGURES)
for stem, fig in report.curve_figures(runs, setting, fold0_split, synthetic=synthetic, only=stems).items():
    figures.save_figure(fig, publish / "figures" / f"{stem}.png", prov)

# %% [markdown]
# ## Figures 4.15-4.19: qualitative comparisons (fold 0 test slices)
# 4.15/4.16: the slices where distillation helped least (lowest Dice gain of the Table 4.2 KD
# student over its baseline); 4.17-4.19: scales, PMD, MSE against contrastive.

# %%
cache = SliceCache.load(prepared[setting]["cache"])
test_idx = load_split(fold0_split)["test"]
images, truths = cache.images[test_idx], cache.masks[test_idx] > 127


def row_mask(table_id, label):
    found = [r for r in experiments.runs_for_row(experiments.find_row(table_id, label), runs, setting, fold0_split)
             if pipeline.has_checkpoint(r["run_dir"])]  # records reused from another invocation have none
    return train.infer(found[0]["run_dir"], images, device=device or None)["mask"] if found else None


for number, student, kd_label in (("4.15", "S1", "KD(T1,S1)"), ("4.16", "S2", "KD(T1,S2)")):
    base, kd = row_mask("4.2", f"{student}: U-Net-S" if student == "S1" else f"{student}: U-Net"), row_mask("4.2", kd_label)
    if base is None or kd is None:
        continue
    chosen, rule = figures.least_improved_slices(truths, base, kd, n_examples)
    print(f"Figure {number} rule:", rule)
    fig = figures.qualitative_panel(images[chosen], truths[chosen], {f"{student} baseline": base[chosen], kd_label: kd[chosen]})
    figures.save_figure(fig, publish / "figures" / f"fig{number.replace('.', '_')}_limited_{student}_{setting}.png", prov)

for number, (title, members) in experiments.QUALITATIVE_FIGURES.items():
    masks = {f"{label} ({'MSE' if t == '4.10' else 'InfoNCE'})": m for t, label in members
             if (m := row_mask(t, label)) is not None}
    if not masks:
        continue
    chosen, rule = figures.choose_slices(truths, next(iter(masks.values())), n_examples)
    print(f"Figure {number} rule:", rule)
    fig = figures.qualitative_panel(images[chosen], truths[chosen], {k: v[chosen] for k, v in masks.items()})
    figures.save_figure(fig, publish / "figures" / f"fig{number.replace('.', '_')}_{setting}.png", prov)

# %%
print(pipeline.provenance(profile, data, started))
