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
# # 05 · Statistics: the thesis's ANOVA, confidence intervals, paired tests and a verdict per claim
#
# Reads every finished run of the profile (nothing is trained here) and
# - reproduces the thesis's one-way ANOVA (S1 baseline against the distilled T1->S1 configurations) on our runs;
# - summarises every configuration over seeds and folds: mean, standard deviation, 95% bootstrap CI;
# - compares each distilled student with its baseline per patient volume (Wilcoxon signed-rank,
#   Holm-corrected, effect sizes) and draws a forest plot of the Dice differences;
# - gives a verdict on each claim of the thesis;
# - offers a viewer to overlay any trained models' masks on a test slice.
#
# - Defaults: the **smoke** profile (SYNTHETIC data) — verdicts from it mean nothing about the thesis.
# - Thesis scale on a GPU: `python -m kdlib run --profile thesis --data /path/to/Task09_Spleen`.

# %% tags=["parameters"]
profile: str = "smoke"  # names the output folder results/<profile>
out_dir: str = ""  # "" -> <repo>/results/<profile>
data: str = "phantom"  # only recorded for provenance here
setting: str = "corrected"  # corrected | faithful: which runs the statistics use
publish_dir: str = ""  # "" -> tables/figures under out_dir; real-mini: figures/real-mini
device: str = ""  # "" -> cuda if available else cpu
update_readme: bool = False  # real-mini: write the headline and claims tables into README.md

# %%
# %matplotlib inline
import time

from IPython.display import Markdown, display

from kdlib import claims, experiments, figures, pipeline, stats, tables, train, viewer
from kdlib.data import SliceCache, load_split

started = time.time()
out = pipeline.out_folder(profile, out_dir)
publish = pipeline.publish_folder(out, publish_dir)
prepared = pipeline.load_prepared(out)
synthetic = prepared[setting]["synthetic"]
all_runs = train.load_runs(out / "runs")
runs = [r for r in all_runs if r["config"]["setting"] == setting]
print(f"{len(runs)} finished runs in the {setting} setting ({len(all_runs)} in all)")
prov = pipeline.provenance(profile, data, started)

# %% [markdown]
# ## The thesis's one-way ANOVA, on our runs
# The thesis reports F = 5.48, p = 0.039 (that fits F(1, 11): two groups, 13 observations).

# %%
anova = claims.anova_table(runs)
tables.write_table(anova, publish / "tables", f"anova_{setting}", synthetic=synthetic)
display(anova)

# %% [markdown]
# ## Every configuration: mean, standard deviation and 95% bootstrap CI of pooled Dice over seeds and folds

# %%
summary = claims.configuration_summary(runs)
tables.write_table(summary, publish / "tables", f"configurations_{setting}", synthetic=synthetic)
display(summary)

# %% [markdown]
# ## Paired per-volume comparisons with the baseline (Wilcoxon signed-rank, Holm-corrected) and forest plot

# %%
paired = claims.paired_comparisons(runs)
tables.write_table(paired, publish / "tables", f"paired_{setting}", synthetic=synthetic)
display(paired)
if len(paired):
    fig = figures.forest_plot(paired)
    figures.save_figure(fig, publish / "figures" / f"forest_dice_{setting}.png", prov)

# %% [markdown]
# ## Claims of the thesis, one verdict each

# %%
claims_df = claims.claims_table(runs)
tables.write_table(claims_df, publish / "tables", f"claims_{setting}", synthetic=synthetic)
display(Markdown((publish / "tables" / f"claims_{setting}.md").read_text()))

# %% [markdown]
# ## Viewer: any trained models' masks over a test slice (fold 0)
# A slider and a model picker in JupyterLab; a static figure in batch runs.

# %%
fold0_split = prepared[setting]["splits"][0]
cache = SliceCache.load(prepared[setting]["cache"])
test_idx = load_split(fold0_split)["test"]
images, truths = cache.images[test_idx], cache.masks[test_idx] > 127
shown = {}
for row in experiments.thesis_rows(["4.1", "4.2"]):
    found = experiments.runs_for_row(row, runs, setting, fold0_split)
    if found:
        shown[row["row"]] = train.infer(found[0]["run_dir"], images, device=device or None)["mask"]
viewer.mask_viewer(images, truths, shown, case_ids=list(cache.case_ids[test_idx]))

# %% [markdown]
# ## Summary: the headline table and the claims, with provenance (`SUMMARY.md`)

# %%
summary_path = pipeline.write_summary(publish, all_runs, claims_df, pipeline.provenance(profile, data, started),
                                      setting, synthetic, readme=update_readme)
display(Markdown(summary_path.read_text()))
