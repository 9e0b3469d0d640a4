"""Benchmark: one epoch of slices from the slice cache vs decoding PNG files every epoch.

Both sides go through a torch DataLoader (batch 16, no workers, no shuffling) and yield the
same tensors: image (3, S, S) float32 in [0, 1], mask (1, S, S), index.
- cache: `kdlib.data.SliceDataset` over the in-memory uint8 arrays of `SliceCache`;
- png:   a Dataset that opens and decodes `png/images/*.png` and `png/masks/*.png` (written
         by `preprocess(..., export_png=True)`, so the pixels are identical) for every item,
         which is what a pipeline reading slice files per epoch does.
Data: a generated phantom (default 8 cases at 256x256, a few hundred slices). One warm-up
epoch each, then `--repeats` alternating epochs; the median epoch times are compared.
torch runs on one thread: on a small shared machine extra threads make the timings erratic.

Usage: python benchmarks/bench_cache.py [--cases 8] [--size 256] [--repeats 5] [--no-record]
Records its section of benchmarks/RESULTS.md via `_results.update_section("bench_cache", ...)`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KDLIB_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from kdlib.data import SliceCache, SliceDataset, preprocess, write_phantom_msd  # noqa: E402


class PngSlices(Dataset):
    """Decode image and mask PNGs on every access (the per-epoch decoding baseline).

    rgb=False: 8-bit grey image PNGs (kdlib's QC export); rgb=True: 8-bit RGB image PNGs,
    the format the thesis's own pipeline stored and re-read every epoch."""

    def __init__(self, folder: Path, rgb: bool = False):
        self.rgb = rgb
        self.images = sorted((folder / "images").iterdir())
        self.masks = sorted((folder / "masks").iterdir())
        assert [p.name for p in self.images] == [p.name for p in self.masks]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.images[i]) as im:
            if self.rgb:
                pixels = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
                image = pixels.to(torch.float32).div_(255.0)
            else:
                grey = torch.from_numpy(np.array(im.convert("L"))).to(torch.float32).div_(255.0)
                image = grey.unsqueeze(0).repeat(3, 1, 1)
        with Image.open(self.masks[i]) as im:
            mask = torch.from_numpy(np.array(im.convert("L"))).to(torch.float32).div_(255.0)
        return image, mask.unsqueeze(0), i


def write_rgb_copy(png: Path, dest: Path) -> None:
    """RGB copies of the grey image PNGs (masks stay grey), as the thesis stored slices."""
    from PIL import Image

    (dest / "images").mkdir(parents=True)
    (dest / "masks").mkdir()
    for path in sorted((png / "images").iterdir()):
        grey = np.array(Image.open(path))
        Image.fromarray(np.stack([grey] * 3, axis=-1)).save(dest / "images" / path.name)
        (dest / "masks" / path.name).write_bytes((png / "masks" / path.name).read_bytes())


def epoch_seconds(loader) -> float:
    start = time.perf_counter()
    count = 0
    for images, masks, _ in loader:
        count += images.shape[0]
    elapsed = time.perf_counter() - start
    assert count == len(loader.dataset)
    return elapsed


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        tmp = Path(tmp)
        write_phantom_msd(tmp / "phantom", cases=args.cases, seed=0, size=args.size)
        start = time.perf_counter()
        summary = preprocess(tmp / "phantom", tmp / "cache", size=args.size, export_png=True)
        build = time.perf_counter() - start
        cache = SliceCache.load(tmp / "cache")
        write_rgb_copy(tmp / "cache" / "png", tmp / "png_rgb")
        loaders = {
            "cache": DataLoader(SliceDataset(cache), batch_size=args.batch),
            "png": DataLoader(PngSlices(tmp / "cache" / "png"), batch_size=args.batch),
            "png_rgb": DataLoader(PngSlices(tmp / "png_rgb", rgb=True), batch_size=args.batch),
        }
        # same tensors on every side
        first = {name: next(iter(loader)) for name, loader in loaders.items()}
        for name in ("png", "png_rgb"):
            assert torch.equal(first["cache"][0], first[name][0])
            assert torch.equal(first["cache"][1], first[name][1])
        times = {name: [] for name in loaders}
        for name, loader in loaders.items():
            epoch_seconds(loader)  # warm-up (page cache, allocator)
        for _ in range(args.repeats):
            for name, loader in loaders.items():
                times[name].append(epoch_seconds(loader))
        png_bytes = sum(p.stat().st_size for p in (tmp / "cache" / "png").rglob("*.png"))
        rgb_bytes = sum(p.stat().st_size for p in (tmp / "png_rgb").rglob("*.png"))

    n = summary["slices"]
    med = {name: statistics.median(v) for name, v in times.items()}
    ratio = med["png"] / med["cache"]
    ratio_rgb = med["png_rgb"] / med["cache"]
    result = {"slices": n, "size": args.size, "cache_s": med["cache"], "png_s": med["png"],
              "png_rgb_s": med["png_rgb"], "ratio": ratio, "ratio_rgb": ratio_rgb,
              "build_s": build}
    print(f"{n} slices at {args.size}x{args.size}, batch {args.batch}, {args.repeats} epochs each")
    for name in loaders:
        print(f"  {name:7s}: median epoch {med[name]:.3f} s ({n / med[name]:,.0f} slices/s); "
              f"all: {', '.join(f'{t:.3f}' for t in times[name])}")
    print(f"  ratio: cache is {ratio:.1f}x faster than decoding grey PNG files each epoch, "
          f"{ratio_rgb:.1f}x faster than decoding RGB image PNGs (the thesis's format)")

    if not args.no_record:
        from _results import machine_line, update_section

        markdown = "\n".join([
            "## bench_cache: slice cache vs PNG decoding per epoch",
            "",
            f"`python benchmarks/bench_cache.py` ({machine_line()}).",
            f"Generated phantom, {args.cases} cases, {n} slices at {args.size}x{args.size}; "
            f"DataLoader batch {args.batch}, no workers; median of {args.repeats} epochs "
            "after one warm-up epoch.",
            "",
            "| pipeline | epoch (s) | slices/s |",
            "|---|---:|---:|",
            f"| SliceDataset (in-memory uint8 cache) | {med['cache']:.3f} | "
            f"{n / med['cache']:,.0f} |",
            f"| decode grey PNG image + mask per item ({png_bytes / 2**20:.1f} MiB) | "
            f"{med['png']:.3f} | {n / med['png']:,.0f} |",
            f"| decode RGB PNG image + grey mask per item, as the thesis stored them "
            f"({rgb_bytes / 2**20:.1f} MiB) | {med['png_rgb']:.3f} | {n / med['png_rgb']:,.0f} |",
            "",
            f"**Ratio: the cache is {ratio:.1f}x faster than grey PNGs, {ratio_rgb:.1f}x faster "
            f"than the thesis's RGB PNGs.** The cache side is bounded by writing the float32 "
            f"batch itself (3 channels x {args.size}x{args.size} x 4 bytes per slice). "
            f"Building the cache once (with the PNG export) took {build:.1f} s.",
        ])
        update_section("bench_cache", markdown)
        print("recorded in benchmarks/RESULTS.md")
    return result


if __name__ == "__main__":
    main()
