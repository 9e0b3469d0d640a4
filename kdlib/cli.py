"""Command line: `python -m kdlib <command>`.

Every command catches `KdlibError` (and OSError: permissions, disk) and prints it as one
line (no traceback) with exit status 2; kdlib's warnings are one `kdlib: warning:` line each.
Heavy modules are imported inside each handler so `--help` stays instant.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from .errors import ConfigError, KdlibError, KdlibWarning

SIZE_RANGE = (16, 2048)  # --size bounds: 2048 x 2048 slices are already 4 MiB each
FORMATS = ["auto", "msd", "slices", "dicom", "nifti"]
FORMAT_HELP = ("input layout: auto (detect it), msd (MSD task folder: dataset.json, imagesTr/, "
               "labelsTr/), slices (2D PNG/JPEG/GIF: images/ + masks/, or image_*/mask_* files), "
               "dicom (3D-IRCADb: <patient>/PATIENT_DICOM/ + MASKS_DICOM/spleen/), nifti (a folder "
               "of NIfTI images and label maps named *_seg/_label/_mask)")
ORIENT_HELP = ("turn every slice before the model sees it: none, rot90, rot180, rot270 "
               "(counter-clockwise), flipud (upside down), fliplr (left-right); for 2D slices, "
               "which carry no orientation (NIfTI and DICOM are oriented from their headers "
               "first)")


# kdlib.data.download.UNPACK_LIMIT / UNPACK_RATIO (written out: --help imports no data code)
UNPACK_HELP = ("Unpacking is capped at 32 GiB per data set and at 100x the archive's size "
               "(declared sizes are checked before anything is extracted)")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default, except for required options (which have none) and
    help texts that already say their default in words."""

    def _get_help_string(self, action):
        if action.required or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _check_size(size: int) -> int:
    low, high = SIZE_RANGE
    if not low <= size <= high:
        raise ConfigError(f"--size {size} is outside {low}..{high}", None,
                          "use e.g. --size 256 (the thesis's size)")
    return size


def _input_list(values: list[str]) -> list[Path]:
    """`--input A --input B` and `--input A,B` (or both): every input, in order."""
    return [Path(part) for value in values for part in value.split(",") if part.strip()]


def _cmd_phantom(args: argparse.Namespace) -> int:
    from .data.phantom import write_phantom_msd

    _check_size(args.size)
    out = write_phantom_msd(args.out, cases=args.cases, seed=args.seed, size=args.size,
                            slices=args.slices)
    print(json.dumps({"cases": args.cases, "out": str(out), "synthetic": True}))
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from .data import preprocess

    inputs = _input_list(args.input)
    summary = preprocess(inputs[0] if len(inputs) == 1 else inputs, args.out, fmt=args.format,
                         size=_check_size(args.size), faithful=args.faithful,
                         label_id=args.label_id, labels_only=args.labels_only,
                         hu_window=args.hu_window, export_png=args.export_png,
                         orient=args.orient)
    print(json.dumps(summary))
    return 0


DATASETS = ["msd", "ircadb", "thesis-slices"]  # kdlib.data.download.DATASETS


def _cmd_download(args: argparse.Namespace) -> int:
    if args.list:
        from .data.download import dataset_lines

        print("\n".join(dataset_lines()))
        return 0
    if args.dataset is None:
        raise ConfigError(f"--dataset is required: one of {', '.join(DATASETS)}", None,
                          "see sizes and licences with `python -m kdlib download --list`")
    if args.out is None:
        raise ConfigError("--out is required", None, "give the folder to download into")
    from .data.download import download_dataset

    path = download_dataset(args.dataset, args.out, url=args.url, sha256=args.sha256)
    print(json.dumps({"out": str(path)}))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import describe_models

    rows = describe_models(size=_check_size(args.size))
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"tap shapes (channels, height, width) for one {args.size}x{args.size} input "
              "slice (--size)")
        for row in rows:
            taps = ", ".join(f"{k}={tuple(v)}" for k, v in row["taps"].items())
            print(f"{row['name']:<6} {row['params']:>12,d}  {taps}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_notebooks

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    try:
        folds = [int(f) for f in args.folds.split(",") if f.strip()] if args.folds else None
    except ValueError:
        raise ConfigError(f"--folds {args.folds!r} is not a comma-separated list of fold numbers", None,
                          "e.g. --folds 0,1") from None
    if args.json and not args.plan:
        raise ConfigError("--json goes with --plan", None, "add --plan")
    if (args.executor is None) != (args.stage is None):
        raise ConfigError("--executor and --stage go together", None,
                          "e.g. --executor slurm --stage 02 (teachers), then --stage 03, then 04")
    if args.executor:
        from . import executor

        summary = executor.submit_stage(args.profile, args.stage, args.executor, data=args.data, out=args.out,
                                        wait=not args.no_wait, device=args.device,
                                        executor_options=executor.main_options(args))
        print(json.dumps({k: v for k, v in summary.items() if k != "results"}))
        return 0
    if args.plan:
        from . import plan

        runs = plan.plan_runs(args.profile, data=args.data, out=args.out, only=only, folds=folds)
        if args.json:
            for run in runs:
                print(json.dumps(run))
        else:
            print(plan.format_plan(runs, plan.load_measurements(args.measurements), args.profile))
        return 0
    run_notebooks(profile=args.profile, data=args.data, out=args.out, only=only, folds=folds, reuse=args.reuse)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    summary = predict(args.model, args.input, args.out, fmt=args.format, orient=args.orient,
                      tta=args.tta)
    print(json.dumps(summary))  # one JSON line: the summary, its `rows` those of spleen.csv
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    print(json.dumps(export_onnx(args.model, args.onnx, check=args.check)))
    return 0


def _cmd_release(args: argparse.Namespace) -> int:
    from .release import ReleaseConfig, build_release

    cfg = ReleaseConfig(models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
                        epochs=args.epochs, latency=not args.no_latency,
                        **{k: v for k, v in (("data", args.data), ("out", args.out),
                                             ("publish", args.publish), ("precision", args.precision)) if v})
    summary = build_release(cfg, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps({m: {"cv_dice_augmented": s["augmented"]["cv_dice_mean"],
                          "cv_dice_as_given": s["as_given"]["cv_dice_mean"],
                          "orientation_spread": s["augmented"]["orientation_spread"]}
                      for m, s in summary["models"].items()}))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .predict import evaluate

    print(json.dumps(evaluate(args.pred, args.truth, fmt=args.format,
                              case_pattern=args.case_pattern,
                              allow_missing=args.allow_missing, label_id=args.label_id),
                     indent=2))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import report

    written = report(args.profile, runs_dir=args.runs, publish_dir=args.out, readme=args.update_readme,
                     draw=not args.no_figures)
    print(json.dumps({name: str(path) for name, path in written.items()}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kdlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute the notebooks in order with papermill")
    p.add_argument("--profile", default="smoke", help="smoke | real-mini | thesis (notebooks/profiles/NAME.yaml)")
    p.add_argument("--data", default=None, help="override the profile's data source")
    p.add_argument("--out", default=None, help="output folder (None: results/<profile>)")
    p.add_argument("--only", default=None, help="comma-separated notebook prefixes, e.g. 01,02")
    p.add_argument("--plan", action="store_true",
                   help="print every run the invocation would make (role, model, configuration, fold, "
                        "seed, epoch cap, run folder) and totals per notebook; train nothing")
    p.add_argument("--json", action="store_true", help="with --plan: one JSON object per run")
    p.add_argument("--folds", default=None,
                   help="comma-separated folds to train, e.g. 0,1 (default: every fold): one of two invocations "
                        "at one commit that split a profile too long for one sitting")
    p.add_argument("--reuse", default=None, type=Path,
                   help="a runs folder of finished records from the other invocation of the split (e.g. its "
                        "published figures/<profile>/runs): copied in after 01, counted in every table")
    p.add_argument("--measurements", default=None, type=Path,
                   help="with --plan: measured rates for the projected cost (a gpu_check.json; "
                        "default: benchmarks/gpu_check.json where it exists)")
    g = p.add_argument_group("cluster", "train one notebook's runs as a job array with submitit "
                             "(notebook 01 first; then --stage 02, 03, 04; then run the notebooks for the tables)")
    g.add_argument("--executor", default=None, choices=["slurm", "local"],
                   help="slurm: one SLURM job-array task per run; local: processes on this machine")
    g.add_argument("--stage", default=None, choices=["02", "03", "04"],
                   help="02: the teachers; 03: Table 4.2's students; 04: the ablation grid (each after the one before)")
    g.add_argument("--partition", default=None, help="SLURM partition (None: the cluster's default)")
    g.add_argument("--gpus", type=int, default=1, help="GPUs per task")
    g.add_argument("--time", type=int, default=240, help="time limit per task, minutes")
    g.add_argument("--cpus", type=int, default=8, help="CPU cores per task")
    g.add_argument("--mem", type=int, default=None, help="memory per task, GB (None: the cluster's default)")
    g.add_argument("--parallel", type=int, default=None, help="at most this many tasks at once (None: no limit)")
    g.add_argument("--device", default=None, help="device inside each task (None: cuda if available)")
    g.add_argument("--no-wait", action="store_true",
                   help="submit and return (a later invocation skips what is finished or running)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("phantom", help="write a synthetic MSD-layout spleen CT folder")
    p.add_argument("--out", required=True, type=Path, help="new folder for the MSD-layout data")
    p.add_argument("--cases", type=int, default=6, help="number of generated cases")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--size", type=int, default=128,
                   help=f"in-plane size of each volume ({SIZE_RANGE[0]}..{SIZE_RANGE[1]})")
    p.add_argument("--slices", type=int, default=None,
                   help="slices per volume (None: MSD-like, varying per case)")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("preprocess", help="convert a data source into a slice cache")
    p.add_argument("--input", required=True, action="append", metavar="PATH",
                   help="data folder; repeat it or separate paths with commas to merge several "
                        "sources into one cache")
    p.add_argument("--format", default="auto", choices=FORMATS, help=FORMAT_HELP)
    p.add_argument("--label-id", type=int, default=None,
                   help="the spleen's id in multi-label maps (e.g. 1 for MSD, TotalSegmentator); "
                        "an id that no label map holds is an error")
    p.add_argument("--labels-only", action="store_true",
                   help="inventory the label volumes only (no images needed)")
    p.add_argument("--faithful", action="store_true",
                   help="reproduce the original preprocessing exactly (HU clipped to 0..255, "
                        "soft masks)")
    p.add_argument("--size", type=int, default=256,
                   help=f"slice size of the cache ({SIZE_RANGE[0]}..{SIZE_RANGE[1]})")
    p.add_argument("--hu-window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="HU window mapped to 0..255 (None: abdominal -160 240)")
    p.add_argument("--orient", default="none", choices=["none", "rot90", "rot180", "rot270",
                                                        "flipud", "fliplr"], help=ORIENT_HELP)
    p.add_argument("--export-png", action="store_true", help="also write PNGs for visual QC")
    p.add_argument("--out", required=True, type=Path,
                   help="cache folder: new, empty, or an identical finished cache (reused)")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("download", help="download and unpack a public data set (resumable, checksum-verified)",
                       description="Download and unpack a public data set (resumable, checksum-"
                                   "verified; http(s) addresses only). " + UNPACK_HELP + ".")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="required: msd: MSD Task09_Spleen (about 1.5 GB) -> OUT/Task09_Spleen; "
                        "ircadb: 3D-IRCADb-01 patients 1 and 7 -> OUT/ircadb (CC BY-NC-ND 4.0); "
                        "thesis-slices: the thesis author's GIFs -> OUT/thesis_slices "
                        "(default: none)")
    p.add_argument("--list", action="store_true",
                   help="print each data set's size, licence and address; download nothing")
    p.add_argument("--out", default=None, type=Path,
                   help="folder to download and unpack into (required to download; default: "
                        "none)")
    p.add_argument("--url", default=None, help="another address for the archive (None: the "
                                               "data set's public source)")
    p.add_argument("--sha256", default=None, help="expected checksum of the archive, 64 hex "
                                                  "digits (None: the known one, where there is one)")
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("models", help="list the networks, parameter counts and tap shapes")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--size", type=int, default=256,
                   help="input slice size at which tap shapes are given (a multiple of 16)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("predict", help="segment new data with a trained run")
    p.add_argument("--model", required=True, type=Path,
                   help="a finished run folder (results/<profile>/runs/<name>)")
    p.add_argument("--input", required=True, type=Path,
                   help="a NIfTI file, or a folder of NIfTI images, DICOM series or 2D slices "
                        "(label maps in it are not segmented)")
    p.add_argument("--format", default="auto", choices=FORMATS, help=FORMAT_HELP)
    p.add_argument("--orient", default="none", choices=["none", "rot90", "rot180", "rot270",
                                                        "flipud", "fliplr"],
                   help=ORIENT_HELP + "; masks are turned back to the input's orientation")
    p.add_argument("--tta", action="store_true",
                   help="average the model over the 8 orientations (90-degree turns x flips) of "
                        "every slice: the mask no longer depends on the orientation a 2D slice "
                        "comes in, at 8 forward passes (the release students are trained for it)")
    p.add_argument("--out", required=True, type=Path,
                   help="folder for the masks <case>_spleen.nii.gz / <slice>_spleen.png and "
                        "spleen.csv (one row per input: slices, slices with spleen, spleen "
                        "volume in mL or pixels); created; existing files are never replaced")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="write a trained run as an ONNX model, checked against torch")
    p.add_argument("--model", required=True, type=Path,
                   help="a finished run folder (results/<profile>/runs/<name>, or a published "
                        "model under figures/)")
    p.add_argument("--onnx", required=True, type=Path,
                   help="the .onnx file to write (with <name>.onnx.json beside it: input, "
                        "threshold and preprocessing); an existing file is never replaced")
    p.add_argument("--check", default=None, type=Path,
                   help="a slice cache (`kdlib preprocess --size <the model's>`) whose slices "
                        "torch and onnxruntime must segment alike (None: the run's own test "
                        "slices where its cache is here, else generated phantom slices)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("release", help="train, measure and publish the release students (all six "
                                       "real patients, augmented; model cards, ONNX)")
    p.add_argument("--data", default=None,
                   help="the real-mini data (default: shared:ircadb,shared:thesis_slices)")
    p.add_argument("--out", default=None, help="work folder: cache, splits, runs (default: "
                                               "results/release); rerun to resume")
    p.add_argument("--publish", default=None,
                   help="where the release goes (default: figures/release); never overwritten")
    p.add_argument("--models", default="S1,S2", help="students to release")
    p.add_argument("--epochs", type=int, default=300, help="epoch cap of every run")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--precision", default=None, choices=("fp32", "bf16", "auto"),
                   help="training precision of every run (default: fp32)")
    p.set_defaults(func=_cmd_release)

    p = sub.add_parser("evaluate", help="score predicted masks against ground truth")
    p.add_argument("--pred", required=True, type=Path,
                   help="predicted masks: the --out folder of predict, or one mask file "
                        "(binary 0/1 or 0/255)")
    p.add_argument("--truth", required=True, type=Path,
                   help="ground truth: the data folder the images came from, or one file (a "
                        "NIfTI label map or a 2D mask; paired with the only prediction when "
                        "--pred holds one, else by name)")
    p.add_argument("--label-id", type=int, default=None,
                   help="the spleen's id in multi-label truth maps (e.g. 1 for MSD, "
                        "TotalSegmentator); None: truth maps must be binary")
    p.add_argument("--format", default="auto", choices=FORMATS,
                   help=FORMAT_HELP + "; of --truth")
    p.add_argument("--case-pattern", default=None, metavar="REGEX",
                   help="regular expression giving a 2D mask's case id (its group named 'case', "
                        "else its first group), searched in the name without extension and "
                        "mask_/image_ prefix, e.g. '_(?P<case>[^_]+)$' for <slice>_<organ>_<case>"
                        ".png. None: <case>_<slice> -> <case> when <case> is words starting "
                        "with a letter with at most one number, at its end (spleen_3, "
                        "patient7), spleen_<c>_<first>_<c>_<last>_fNN -> spleen_<c>; any other "
                        "name (12_spleen_3) is its own case, with one warning")
    p.add_argument("--allow-missing", action="store_true",
                   help="score only the cases (NIfTI) or slices (2D) that have a prediction; "
                        "without it, a ground-truth case or mask with no prediction is an error "
                        "(the output's `missing` lists them)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", help="regenerate a profile's tables, claims and summary from its run records")
    p.add_argument("--profile", required=True, help="notebooks/profiles/NAME.yaml, e.g. real-mini")
    p.add_argument("--runs", default=None, type=Path,
                   help="run records folder (default: the profile's published records, <publish_dir "
                        "of the profile yaml>/runs, also with --out; else results/<profile>/runs)")
    p.add_argument("--out", default=None, type=Path,
                   help="where tables/ and SUMMARY.md go (default: the profile's publish_dir)")
    p.add_argument("--update-readme", action="store_true",
                   help="also replace the README's results section with the regenerated summary")
    p.add_argument("--no-figures", action="store_true",
                   help="tables, claims and SUMMARY.md only (the figures take most of the time)")
    p.set_defaults(func=_cmd_report)

    for command in sub.choices.values():  # every option's default shown in --help
        command.formatter_class = _HelpFormatter
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, KdlibWarning):
        print(f"kdlib: warning: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return args.func(args)
    except KdlibError as exc:
        text = " ".join(str(exc).split("\n"))  # one line, whatever a library put in the message
        print(f"kdlib: error: {text}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no: permissions, a full disk, a busy folder
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"kdlib: error: {where}{exc.strerror or exc} -- check the path, its permissions "
              "and the free disk space", file=sys.stderr)
        return 2
    except MemoryError:  # an input larger than this machine can hold (checks refuse hostile ones)
        print("kdlib: error: out of memory -- free memory, or give smaller inputs (split or "
              "downsample them)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdlib: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
