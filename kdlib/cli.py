"""Command line: `python -m kdlib <command>`.

Every command catches `KdlibError` and prints it as one line (no traceback) with exit
status 2. Heavy modules are imported inside each handler so `--help` stays instant.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import KdlibError


def _cmd_phantom(args: argparse.Namespace) -> int:
    from .data.phantom import write_phantom_msd

    out = write_phantom_msd(args.out, cases=args.cases, seed=args.seed, size=args.size,
                            slices=args.slices)
    print(json.dumps({"cases": args.cases, "out": str(out), "synthetic": True}))
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from .data import preprocess

    summary = preprocess(args.input, args.out, fmt=args.format, size=args.size,
                         faithful=args.faithful, label_id=args.label_id,
                         labels_only=args.labels_only, hu_window=args.hu_window,
                         export_png=args.export_png)
    print(json.dumps(summary))
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from .data.download import download_msd

    path = download_msd(args.out, url=args.url, sha256=args.sha256)
    print(json.dumps({"out": str(path)}))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import describe_models

    rows = describe_models(size=args.size)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            taps = ", ".join(f"{k}={tuple(v)}" for k, v in row["taps"].items())
            print(f"{row['name']:<6} {row['params']:>12,d}  {taps}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_notebooks

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    run_notebooks(profile=args.profile, data=args.data, out=args.out, only=only)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    summary = predict(args.model, args.input, args.out, fmt=args.format,
                      label_id=args.label_id)
    print(json.dumps(summary))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .predict import evaluate

    print(json.dumps(evaluate(args.pred, args.truth, fmt=args.format), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kdlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute the notebooks in order with papermill")
    p.add_argument("--profile", default="smoke", help="smoke | real-mini | thesis (notebooks/profiles/NAME.yaml)")
    p.add_argument("--data", default=None, help="override the profile's data source")
    p.add_argument("--out", default=None, help="output folder (default results/<profile>)")
    p.add_argument("--only", default=None, help="comma-separated notebook prefixes, e.g. 01,02")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("phantom", help="write a synthetic MSD-layout spleen CT folder")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--cases", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="in-plane size of each volume")
    p.add_argument("--slices", type=int, default=None, help="slices per volume (default: varies per case)")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("preprocess", help="convert a data source into a slice cache")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--format", default="auto", choices=["auto", "msd", "slices", "dicom", "nifti"])
    p.add_argument("--label-id", type=int, default=None, help="label to keep from a multi-label map")
    p.add_argument("--labels-only", action="store_true", help="inventory the label volumes only")
    p.add_argument("--faithful", action="store_true", help="reproduce the original preprocessing exactly")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--hu-window", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    p.add_argument("--export-png", action="store_true", help="also write PNGs for visual QC")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("download", help="download and unpack MSD Task09_Spleen (resumable)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--url", default=None)
    p.add_argument("--sha256", default=None)
    p.set_defaults(func=_cmd_download)

    p = sub.add_parser("models", help="list the networks, parameter counts and tap shapes")
    p.add_argument("--json", action="store_true")
    p.add_argument("--size", type=int, default=256)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("predict", help="segment new data with a trained run")
    p.add_argument("--model", required=True, type=Path, help="a run folder")
    p.add_argument("--input", required=True, type=Path)
    p.add_argument("--format", default="auto", choices=["auto", "msd", "slices", "dicom", "nifti"])
    p.add_argument("--label-id", type=int, default=None)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="score predicted masks against ground truth")
    p.add_argument("--pred", required=True, type=Path)
    p.add_argument("--truth", required=True, type=Path)
    p.add_argument("--format", default="auto", choices=["auto", "msd", "slices", "dicom", "nifti"])
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KdlibError as exc:
        print(f"kdlib: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdlib: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
