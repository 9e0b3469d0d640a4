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
# # 05 · Statistics: the thesis's ANOVA, confidence intervals, paired comparisons and a verdict per claim
#
# Reads every finished run of the profile (nothing is trained here) and
# - reproduces the thesis's one-way ANOVA (S1 baseline against the distilled T1->S1 configurations),
#   on the thesis's numbers and on ours (our configurations compared on the same folds and seeds);
# - summarises every configuration: pooled Dice of the best checkpoint and of the last epoch,
#   and the mean per-patient Dice with its 95% CI;
# - compares each distilled student with its baseline and with its KD-off control, and draws a forest plot;
# - gives a verdict on each claim of the thesis, in two framings, citing the sentence it tests, and the
#   seeds and patients each claim would need;
# - offers a viewer to overlay any trained models' masks on a test slice.
#
# **Two questions, never mixed** (`kdlib.stats`; the unit is always the test patient, whose value is
# the mean over its fold's seeds; seeds of one fold, or slices of one patient, are never counted as
# independent patients):
# - **population**: would the difference hold for *new patients* from the same source? Folds (which
#   patients trained the models), patients and seeds are all random: a t interval over the fold
#   means. With fewer than 3 folds it cannot be estimated, and the row says so.
# - **these-patients**: on *these* test patients, held fixed, is the difference larger than
#   seed-to-seed training noise? Seeds are the random unit. The answer is about these patients only.
#
# The thesis's own evidence, one run per configuration on one fixed split, is the these-patients
# question with a single seed: it had no estimate of its own noise.
#
# **Verdicts**, per framing, with Holm's correction over every claim row of that framing (`p_holm`,
# family-wise alpha 0.05; each interval is drawn at its row's Holm level, `ci_level`):
# - **supported**: `p_holm` < 0.05 and the interval lies entirely on the side the thesis claims;
# - **contradicted**: `p_holm` < 0.05 and the interval lies entirely on the other side;
# - **inconclusive**: otherwise; `mde` gives the smallest effect this design could have detected;
# - **not testable here**: runs are missing, run-to-run variation is unmeasured, too few folds or
#   seeds, or a run (or its teacher) had not settled on the criterion that kept its checkpoint;
# - **not run in this profile**: the profile did not train those runs on purpose.
#
# Each claim is tested as its sentence reads (role `claim`; `claim_verdict` combines those rows);
# rows marked `extension (ours)`, such as the KD-off controls, are our questions and stay out of
# it. "No better than" claims test their margin (`criterion`), p-value included.
# `consistent_with_thesis` says whether the thesis's own effect lies inside our interval, and
# `verdict_last_epoch` repeats each test on every run's last epoch. The power table gives, per
# claim row, the seeds (and patients) that 80% power at the thesis's own effect would need.
#
# The tables, `SUMMARY.md` and the record-only figures (validation curves, Dice per patient, forest
# plots) are written by `kdlib.report.regenerate`
# from the run records alone, the same function as `python -m kdlib report --profile NAME`: the
# notebook and the command agree byte for byte. A published profile (`publish_dir` set) also
# publishes the small run records (config.json, history.csv, metrics.json; never checkpoints)
# under `<publish_dir>/runs/`.
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

from IPython.display import Image, Markdown, display

from kdlib import experiments, pipeline, report, train, viewer
from kdlib.data import SliceCache, load_split

started = time.time()
out = pipeline.out_folder(profile, out_dir)
publish = pipeline.publish_folder(out, publish_dir)
prepared = pipeline.load_prepared(out)
synthetic = prepared[setting]["synthetic"]
records = pipeline.publish_runs(out, publish) if publish_dir else out / "runs"
if publish_dir:  # the students anyone can use: weights + preprocessing, ready for `kdlib predict`
    pipeline.publish_models(out, publish)
all_runs = train.load_runs(records)
runs = [r for r in all_runs if r["config"]["setting"] == setting]
print(f"{len(runs)} finished runs in the {setting} setting ({len(all_runs)} in all), records in {records}")
written = report.regenerate(all_runs, publish, profile, data, pipeline.data_facts(out), summary_setting=setting,
                            readme=update_readme)
print(pipeline.provenance(profile, data, started))

# %% [markdown]
# ## The thesis's one-way ANOVA
# The thesis reports F = 5.48, p = 0.039 (that fits F(1, 11): two groups, 13 observations). The
# tabulated baseline IoU 0.557 gives F = 4.40, p = 0.060; the text's "0.55" gives 5.69; 0.551 is the
# value found by solving for F = 5.48, not one the thesis states.

# %%
display(Markdown(written[f"anova_{setting}"].read_text()))

# %% [markdown]
# ## Every configuration: best checkpoint and last epoch, and the mean per-patient Dice with its 95% CI

# %%
display(Markdown(written[f"configurations_{setting}"].read_text()))

# %% [markdown]
# ## Per-patient Dice: one dot per test patient and seed, per configuration
# The spread behind each mean: a patient that is hard for every model, or a seed that failed.

# %%
if f"per_patient_dice_{setting}" in written:  # drawn by report.regenerate, from the records
    display(Image(filename=str(written[f"per_patient_dice_{setting}"])))

# %% [markdown]
# ## Validation Dice per epoch: every fold and seed of the teachers and the Table 4.2 students
# How each model trained, from its `history.csv`: a dot marks the kept checkpoint's epoch, an x a
# run that hit its epoch cap still improving (comparisons resting on it are "not testable here").
# The table below sets the kept checkpoint's validation Dice against each run's best epoch: a gap
# means the selection rule (`select_on`) kept a checkpoint that the stopping rule would not have.

# %%
curves = written.get(f"validation_dice_{setting}")
if curves:
    display(Image(filename=str(curves)))
display(Markdown(written[f"selection_{setting}"].read_text()))

# %% [markdown]
# ## Distilled students against their baseline and their KD-off control, and the forest plot

# %%
display(Markdown(written[f"paired_{setting}"].read_text()))
for name in sorted(k for k in written if k.startswith(f"forest_dice_{setting}")):  # one per pair
    display(Image(filename=str(written[name])))

# %% [markdown]
# ## Claims of the thesis, one verdict per comparison and framing

# %%
display(Markdown(written[f"claims_{setting}"].read_text()))

# %% [markdown]
# ## Power: how many seeds (and patients) each claim row would need
# For 80% power at the thesis's own effect, from the variance components our runs estimate (fold,
# patient, seed and residual SDs), at the family-wise level. "> 10,000" means seeds alone cannot
# get there: for new patients, only more patients (folds) can.

# %%
display(Markdown(written[f"power_{setting}"].read_text()))

# %% [markdown]
# ## Viewer: any trained models' masks over a test slice (fold 0)
# A slider and a model picker in JupyterLab; a static figure in batch runs.

# %%
fold0_split = prepared[setting]["splits"][0]
cache = SliceCache.load(prepared[setting]["cache"])
test_idx = load_split(fold0_split)["test"]
images, truths = cache.images[test_idx], cache.masks[test_idx] > 127
shown = {}
local_runs = [r for r in train.load_runs(out / "runs") if r["config"]["setting"] == setting]
for row in experiments.grid_rows(["4.1", "4.2"]):
    found = [r for r in experiments.runs_for_row(row, local_runs, setting, fold0_split)
             if pipeline.has_checkpoint(r["run_dir"])]  # records reused from another invocation have none
    if found:
        shown[row["row"]] = train.infer(found[0]["run_dir"], images, device=device or None)["mask"]
viewer.mask_viewer(images, truths, shown, case_ids=list(cache.case_ids[test_idx]))

# %% [markdown]
# ## Summary: the headline table and the claims, with provenance (`SUMMARY.md`)

# %%
if "SUMMARY" in written:
    display(Markdown(written["SUMMARY"].read_text()))
