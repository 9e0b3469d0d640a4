"""Every table, claim, ANOVA and summary of a profile, regenerated from run records alone.

`python -m kdlib report --profile real-mini` reads the small records a published profile
commits (`figures/<profile>/runs/<run>/{config.json, history.csv, metrics.json}` and
`DATA.json`; no checkpoint, no slice cache) and rewrites `tables/*.{csv,md}` and
`SUMMARY.md` beside them, plus the figures that need records only: `figures/validation_dice_
<setting>.png` (every fold's validation curves, from the `history.csv` records),
`per_patient_dice_<setting>.png`, the training curves of fold 0 (`fig4_1` ... `fig4_8`, which
notebooks 02-04 draw with the same `curve_figures`) and one `forest_dice_<setting>_<pair>.png`
per teacher-student pair. The output depends on the records only
(no date, no wall time: a figure's footer names the newest record's date), so rerunning it
changes no byte. Notebook 05 calls `regenerate` too, so the notebook and
the command never diverge.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import claims, experiments, figures, records, tables
from .errors import DataError
from .io import read_json
from .paths import publish_path, results_dir
from .pipeline import DATA_FACTS, write_summary

SUMMARY_SETTING = "corrected"


def tables_not_run(runs: list[dict[str, Any]]) -> list[str]:
    """Ablation tables the profile did not train (claims resting only on them are "not run in
    this profile", not "not testable"). A table counts as run only if it has a run of its own:
    one that is not also a Table 4.2 configuration, since Table 4.2's distilled students
    reappear as rows of Tables 4.4-4.9 and a headline-only profile would otherwise seem to
    have run those tables in part."""
    described = records.describe_runs(runs)
    headline = experiments.thesis_rows(["4.2"])
    own = [desc for _, desc in described if not any(experiments.row_matches(h, desc) for h in headline)]
    return [t for t in experiments.ABLATION_TABLES
            if not any(experiments.row_matches(row, desc) for row in experiments.thesis_rows([t]) for desc in own)]


def record_provenance(profile: str, data: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Provenance from the records themselves: the code commits the runs were trained at."""
    from .provenance import commit_stamp

    def stamp(record: dict[str, Any]) -> str:
        state = dict(record.get("provenance") or {})
        if state.get("clean", True) is not False:  # clean, or not recorded: the commit alone
            return str(state.get("commit", "unknown"))[:7]
        return commit_stamp(state)  # the files that differed, where the record lists them

    commits = sorted({stamp(r["config"]) for r in runs})
    return {"profile": profile, "data": data, "runs": len(runs), "trained at commit(s)": " ".join(commits)}


def regenerate(runs: list[dict[str, Any]], publish: Path, profile: str, data: str = "",
               facts: dict[str, Any] | None = None, summary_setting: str = SUMMARY_SETTING,
               readme: bool = False, draw: bool = True) -> dict[str, Path]:
    """Write the thesis tables, and per setting the ANOVA, configuration summary, paired
    comparisons, claims (both framings), power table and the record-only figures, plus
    SUMMARY.md (for `summary_setting`) under `publish`. `draw=False`: tables and summary only
    (the figures take most of the time)."""
    runs = sorted(runs, key=lambda r: Path(r["run_dir"]).name)
    folder = Path(publish) / "tables"
    synthetic = tables.is_synthetic(runs)
    written: dict[str, Path] = {}
    cached = [dict(run, _desc=desc) for run, desc in records.describe_runs(runs)]
    for table_id in tables.TABLE_IDS:
        name = f"table{table_id.replace('.', '_')}"
        written[name] = tables.write_table(tables.table(table_id, cached), folder, name, synthetic)[1]
    not_run = tables_not_run(cached)
    settings = sorted({r["config"]["setting"] for r in cached}, key=experiments.SETTINGS.index)
    claims_of = {}
    for setting in settings:
        mine = [r for r in cached if r["config"]["setting"] == setting]
        claims_of[setting] = claims.claims_table(mine, not_run_tables=not_run)
        for name, df in ((f"anova_{setting}", claims.anova_table(mine)),
                         (f"configurations_{setting}", claims.configuration_summary(mine)),
                         (f"paired_{setting}", claims.paired_comparisons(mine)),
                         (f"claims_{setting}", claims_of[setting]),
                         (f"power_{setting}", claims.power_table(mine))):
            written[name] = tables.write_table(df, folder, name, synthetic)[1]
        points = claims.curve_points(mine)
        written[f"selection_{setting}"] = tables.write_table(claims.selection_table(points), folder,
                                                             f"selection_{setting}", synthetic)[1]
        if draw:
            written.update(record_figures(mine, Path(publish), setting, profile, data, synthetic,
                                          claims_df=claims_of[setting]))
    if summary_setting in claims_of:
        written["SUMMARY"] = write_summary(Path(publish), cached, claims_of[summary_setting],
                                           record_provenance(profile, data, runs), summary_setting, synthetic,
                                           readme=readme, facts=facts)
    return written


def _records_footer(profile: str, data: str, runs, synthetic: bool) -> dict[str, Any]:
    """A figure footer from the records themselves: the commits they were trained at and the
    newest record's date (no wall clock, so a rerun writes the same bytes)."""
    prov = record_provenance(profile, data, runs)
    dates = [str((r["config"].get("provenance") or {}).get("date", "")) for r in runs]
    return {"profile": profile, "data": data, "commit": prov["trained at commit(s)"],
            "date": max(dates) or "unknown", "synthetic": synthetic}


def _save(fig, path: Path, footer: dict[str, Any]) -> Path:
    import matplotlib.pyplot as plt

    try:
        return figures.save_figure(fig, path, footer)
    finally:
        plt.close(fig)


def fold0_split(runs) -> str | None:
    """The split file of fold 0 among the records (the curve figures show fold 0)."""
    splits = sorted({str(r["config"]["split"]) for r in runs})
    named = [x for x in splits if Path(x).stem.endswith("fold0")]
    return (named or splits or [None])[0]


def curve_figures(runs, setting: str, split: str | None = None, synthetic: bool = False,
                  only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The training-curve figures of fold 0 (first seed), from the runs' `history.csv`:
    {file stem: figure} for Figure 4.1 (teachers), 4.2 (Table 4.2's students and the KD-off
    controls) and 4.3-4.8 (one per teacher-student pair of the ablations). Notebooks 02-04
    draw their own ones with it, and `report` all of them from the published records."""
    from .train import load_history

    split = split or fold0_split(runs)
    # a record without its history.csv has no curve to draw (as in the validation curves)
    mine = [r for r in runs if r["config"]["setting"] == setting and r["config"]["split"] == split
            and (Path(r["run_dir"]) / "history.csv").is_file()]
    out: dict[str, Any] = {}

    def wanted(stem: str) -> bool:
        return only is None or stem in only

    teachers = {r["config"]["model"]: r for r in mine if r["config"]["role"] == "teacher"}
    stem = f"fig4_1_teacher_curves_{setting}"
    if teachers and wanted(stem):
        out[stem] = figures.teacher_curves({m: load_history(r["run_dir"]) for m, r in sorted(teachers.items())},
                                           synthetic=synthetic)
    students = [r for r in mine if r["config"]["role"] == "control"] + \
        [r for row in experiments.thesis_rows(["4.2"]) for r in experiments.runs_for_row(row, mine, setting, split)]
    stem = f"fig4_2_student_curves_{setting}"
    if students and wanted(stem):
        first = min(r["config"]["seed"] for r in students)
        chosen = {r["config"]["name"]: r for r in sorted(students, key=lambda r: Path(r["run_dir"]).name)
                  if r["config"]["seed"] == first}
        out[stem] = figures.training_curves({name: load_history(r["run_dir"]) for name, r in chosen.items()},
                                            title=f"Students ({setting})", synthetic=synthetic)
    for number, (title, table_ids) in experiments.CURVE_FIGURES.items():
        stem = f"fig{number.replace('.', '_')}_curves_{setting}"
        if not wanted(stem):
            continue
        histories = {}
        for row in experiments.thesis_rows(table_ids):
            found = experiments.runs_for_row(row, mine, setting, split)
            if found:
                first = min(found, key=lambda r: (r["config"]["seed"], Path(r["run_dir"]).name))
                histories[row["row"]] = load_history(first["run_dir"])
        if histories:
            out[stem] = figures.training_curves(histories, title=f"Figure {number}: {title} ({setting})",
                                                synthetic=synthetic)
    return out


def record_figures(runs, publish: Path, setting: str, profile: str, data: str, synthetic: bool,
                   claims_df=None) -> dict[str, Path]:
    """The figures that need the records only (no checkpoint): validation curves, Dice per
    test patient, the training curves of fold 0 (Figures 4.1-4.8), one forest plot per
    teacher-student pair, and one figure per headline comparison (claims 1 and 8: each seed's
    paired difference per fold beside both framings' intervals; `claims_df` is the claims
    table of these runs, computed when not given)."""
    footer = _records_footer(profile, data, runs, synthetic)
    folder = Path(publish) / "figures"
    written: dict[str, Path] = {}
    points = claims.curve_points(runs)
    if len(points):
        written[f"validation_dice_{setting}"] = _save(figures.validation_curves(
            points, synthetic=synthetic,
            title=f"Validation Dice per epoch, every fold and seed ({setting})"),
            folder / f"validation_dice_{setting}.png", footer)
    patients = claims.per_patient_points(runs)
    if len(patients):
        written[f"per_patient_dice_{setting}"] = _save(figures.per_patient_plot(patients, synthetic=synthetic),
                                                       folder / f"per_patient_dice_{setting}.png", footer)
    for stem, fig in curve_figures(runs, setting, synthetic=synthetic).items():
        written[stem] = _save(fig, folder / f"{stem}.png", footer)
    paired = claims.paired_comparisons(runs)
    if len(paired):  # one forest plot per teacher-student pair, readable at page height
        for pair, fig in figures.forest_plots(paired, synthetic=synthetic).items():
            name = f"forest_dice_{setting}_{pair.replace('->', '_')}" if pair else f"forest_dice_{setting}"
            written[name] = _save(fig, folder / f"{name}.png", footer)
    points = claims.headline_points(runs, setting)
    if len(points):
        table = claims_df if claims_df is not None else claims.claims_table(runs)
        table = table[table["setting"] == setting] if len(table) else table
        for key, fig in figures.headline_contrasts(points, table, synthetic=synthetic).items():
            name = f"headline_{setting}_{key}"
            written[name] = _save(fig, folder / f"{name}.png", footer)
    return written


def _profile_paths(profile: str, runs_dir: str | Path | None, publish_dir: str | Path | None
                   ) -> tuple[Path, Path, dict[str, Any]]:
    from .runner import load_profile

    common = (load_profile(profile) or {}).get("common") or {}
    published = publish_path(common.get("publish_dir"))
    publish = Path(publish_dir) if publish_dir else (published or results_dir(profile))
    # the records are the profile's, wherever the tables go: `--out DIR` alone reads the
    # profile's published records (<publish_dir>/runs), never DIR/runs
    if runs_dir:
        runs = Path(runs_dir)
    elif published is not None and (published / "runs").is_dir():
        runs = published / "runs"
    else:
        runs = results_dir(profile) / "runs"
    return runs, publish, common


def report(profile: str, runs_dir: str | Path | None = None, publish_dir: str | Path | None = None,
           readme: bool = False, draw: bool = True) -> dict[str, Path]:
    """Regenerate a profile's tables, claims, ANOVA and SUMMARY.md from its run records.

    `runs_dir`: the records (default the profile's published records,
    `<profile publish_dir>/runs`, whatever `publish_dir` says; else `results/<profile>/runs`);
    `publish_dir`: where tables/ and SUMMARY.md go (default the profile's `publish_dir`,
    else `results/<profile>`); `readme`: also rewrite the README's results section from the
    regenerated summary. Returns {name: path written}.
    """
    from .train import load_runs

    runs_path, publish, common = _profile_paths(profile, runs_dir, publish_dir)
    runs = load_runs(runs_path) if runs_path.is_dir() else []
    if not runs:
        raise DataError("no run records (config.json + metrics.json) found", runs_path,
                        fix=f"run `python -m kdlib run --profile {profile}` first, or pass --runs DIR")
    facts_path = runs_path / DATA_FACTS
    facts = read_json(facts_path) if facts_path.exists() else None
    setting = common.get("setting", SUMMARY_SETTING)
    return regenerate(runs, publish, profile, str(common.get("data", "")), facts, summary_setting=setting,
                      readme=readme, draw=draw)
