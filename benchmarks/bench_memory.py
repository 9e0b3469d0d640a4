"""Benchmark: peak memory of `preprocess` and `predict` on one large CT volume.

A generated 512 x 512 x S volume (int16 HU, gzipped NIfTI, default S = 300) with its label
map is written once; then `python -m kdlib preprocess` (size 256) and `python -m kdlib predict`
(with a tiny S1 run trained here on a phantom, cache size 64) run under `/usr/bin/time -v`,
whose "Maximum resident set size" is the peak. Every process runs with OMP_NUM_THREADS=1.

`--repo PATH` measures another checkout of kdlib (e.g. the code before a change, exported
with `git archive HEAD | tar -x -C /tmp/before`), so before/after numbers come from the same
volume on the same machine.

Usage: python benchmarks/bench_memory.py [--slices 300] [--repo PATH] [--work DIR] [--record]
With `--record` it writes its section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env(repo: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1", KDLIB_PROGRESS="0")


def write_volume(folder: Path, slices: int, size: int = 512) -> Path:
    """A CT-like int16 volume (body ellipse, a brighter spleen blob on the middle third)."""
    import nibabel as nib
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "ct_seg.nii.gz").exists():
        return folder
    u = (np.arange(size) + 0.5) / size
    i, j = np.meshgrid(u, u, indexing="ij")
    body = ((i - 0.5) / 0.42) ** 2 + ((j - 0.5) / 0.34) ** 2 <= 1
    spleen = ((i - 0.3) / 0.08) ** 2 + ((j - 0.45) / 0.1) ** 2 <= 1
    rng = np.random.default_rng(0)
    image = np.empty((size, size, slices), np.int16)
    label = np.zeros((size, size, slices), np.uint8)
    for k in range(slices):
        plane = np.where(body, 40, -1000).astype(np.int16)
        if slices // 3 <= k < 2 * slices // 3:
            plane[spleen] = 55
            label[:, :, k] = spleen
        image[:, :, k] = plane + rng.integers(-20, 21, size=(size, size), dtype=np.int16)
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(folder / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(folder / "ct_seg.nii.gz"))
    return folder


def train_tiny_run(work: Path, repo: Path) -> Path:
    """A one-epoch S1 run on a small phantom (cache size 64): enough to exercise predict."""
    script = f"""
import json, sys
from pathlib import Path
from kdlib import train
from kdlib.data import SliceCache, make_split, preprocess, save_split, write_phantom_msd
w = Path({str(work)!r})
data = write_phantom_msd(w / "phantom", cases=3, seed=0, size=64, slices=12)
preprocess(data, w / "cache", size=64)
save_split(make_split(SliceCache.load(w / "cache"), mode="patient", seed=0), w / "split.json")
cfg = train.baseline_config("S1", w / "cache", w / "split.json", epochs=1, batch_size=8)
print(train.train(cfg, w / "runs", progress=False))
"""
    done = subprocess.run([sys.executable, "-c", script], env=_env(repo), capture_output=True,
                          text=True, check=True, cwd=repo)
    return Path(done.stdout.strip().splitlines()[-1])


def peak(cmd: list[str], repo: Path) -> dict:
    # cwd=repo: `python -m` puts the working folder first on sys.path, before PYTHONPATH
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], env=_env(repo), capture_output=True,
                          text=True, cwd=repo)
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", done.stderr).group(1)
    return {"peak_mb": round(kb / 1024), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repo", type=Path, default=REPO, help="kdlib checkout to measure")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (kept)")
    parser.add_argument("--record", action="store_true", help="write benchmarks/RESULTS.md")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="kdlib_bench_memory_"))
    volume = write_volume(work / "volume", args.slices)
    run = train_tiny_run(work / "train", args.repo)
    tag = next(tempfile._get_candidate_names())
    py = [sys.executable, "-m", "kdlib"]
    result = {
        "volume": f"512x512x{args.slices} int16 NIfTI (gz)", "repo": str(args.repo),
        "preprocess": peak([*py, "preprocess", "--input", str(volume), "--size", "256",
                            "--out", str(work / f"cache_{tag}")], args.repo),
        "predict": peak([*py, "predict", "--model", str(run), "--input",
                         str(volume / "ct.nii.gz"), "--out", str(work / f"pred_{tag}")], args.repo),
    }
    print(json.dumps(result, indent=2))
    if args.record:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from _results import machine_line, update_section

        update_section("bench_memory", "\n".join([
            "## Peak memory of preprocess and predict (`bench_memory.py`)",
            f"Machine: {machine_line()}. Volume: {result['volume']}; OMP_NUM_THREADS=1; "
            "peak = maximum resident set size from `/usr/bin/time -v`.",
            "", "| command | peak RSS (MB) | wall |", "|---|---|---|",
            *(f"| {k} | {result[k]['peak_mb']} | {result[k]['wall']} |" for k in ("preprocess", "predict")),
        ]))


if __name__ == "__main__":
    main()
