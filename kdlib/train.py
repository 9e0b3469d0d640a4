"""Training engine: teachers, baseline students, KD-off controls and distilled students, one code path.

Read it top-down:
1. `RunConfig` is the full description of one training run; its hash names the run folder
   `<runs_dir>/<slug>-<hash>/`, so the same configuration always lands in the same place.
   `epochs` is a cap, not part of the hash: the same run can be continued to a higher cap.
2. `train(cfg, runs_dir)` skips a finished run (a complete `metrics.json`, for this cap or
   stopped early), resumes an interrupted one from `checkpoints/last.pt`, continues one that
   reached a lower cap, and otherwise trains from scratch. One process at a time per run
   folder (`kdlib.locks.folder_lock`); leftover temporary files of a killed save are removed
   at the next start. Every file is written atomically; `metrics.json` is written last and
   marks completion; a finished run's files are never rewritten. `last.pt` (weights,
   optimiser state, RNG states, history, the kept checkpoint's weights) is written every
   `checkpoint_seconds` (60 s by default: about every 3 T1 epochs at real-mini's size,
   every ~150 S1 epochs) and at the last epoch, not every epoch; a run killed in between
   repeats the epochs since that write and ends as an uninterrupted run would.
3. Early stopping (`patience` > 0, never before `min_epochs`) watches validation Dice; the
   kept checkpoint is the one with the best validation criterion: `select_on="loss"` (the
   original's validation loss, the default) or `"dice"` (validation Dice, the quantity the
   stopping rule watches, so both rules agree). `metrics.json` holds the test metrics of
   that best checkpoint and, under `last_epoch`, of the last epoch's model. Both rules can
   watch a trailing mean over `smooth` epochs (one lucky epoch of a noisy validation curve
   then cannot win) and ignore the first `warmup` epochs (a teacher's early peak then neither
   is kept nor starts the patience count); the defaults (1 and 0) are the original rules.
4. On finishing, only `best.pt` (the network's weights, no optimiser state; fp16 when
   `weights_dtype` says so, the teachers' default) stays; `last.pt` (the resumable state) is
   kept only with `keep_last=True`, which continuing to a higher cap later needs.
5. Distilled students never pay the frozen teacher's forward pass per step: the teacher's
   taps on the (unaugmented, fixed) student training set are computed once per process
   (`teacher_outputs`) and reused by every epoch and every configuration that needs them;
   a pass keeps all four taps where they fit `spare_taps_budget`, else only those asked for.
6. An epoch does no host work it does not need (issue 17): networks and batches are in
   channels_last where that trains faster (`memory_format`), batches are indexed on the
   device, loss terms and validation counts are summed on the device and read back once
   per epoch, and validation computes no SSIM (a test metric only).

Randomness: on the CPU a run is deterministic for its seed, whatever ran before it in the
process, and a resumed run ends with the same metrics as an uninterrupted one. Network init
follows a reseed of the global RNG; batch order comes from a per-epoch CPU generator
(`torch.randperm`, the same order on every device and as before issue 17); the
faithful random projectors draw from the run's own generator; the global RNG state (dropout)
and the projector generator's state are checkpointed; loading a teacher runs in a forked RNG.
Every checkpoint holds tensors and plain types only and is read with `weights_only=True`.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import math
import os
import random
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import losses, metrics, models
from .augment import augment_batch, dihedral, dihedral_mean, kd_augment_batch
from .data import SliceCache, load_split, split_fingerprint
from .data.splits import check_split
from .errors import ConfigError, KdlibError, KdlibWarning
from .io import (atomic_path, atomic_write_json, atomic_write_text, config_hash, read_json,
                 remove_stale_tmp, sha256_file)
from .locks import folder_lock
from .progress import bar
from .provenance import code_state, run_provenance

TAP_OF_SCALE = {"E": "enc", "B": "bottleneck", "D": "dec"}
ROLES = ("teacher", "baseline", "control", "kd")
# config fields a run folder may be asked for with other values: the cap and the disk policy
# (how often last.pt is written changes no result: a resumed run ends as a straight one)
NOT_IDENTITY = ("epochs", "keep_last", "checkpoint_seconds")
# fields added after runs were published, with the value older runs had: at that value they
# stay out of the hash (old run folders keep their names) and fill older config.json files
ADDED_LATER = {"min_epochs": 0, "select_on": "loss", "smooth": 1, "warmup": 0, "augment": False,
               "val_orientations": False}
# what picks the kept checkpoint on the selection set: the original's loss (teachers seg +
# recon, students seg loss), or Dice, the quantity early stopping watches and tables report
SELECT_ON = ("loss", "dice")
# "auto": bf16 autocast on CUDA and on CPUs with native bf16, fp32 elsewhere, decided where the
# run trains (`resolve_precision`), never where its configuration is made
PRECISIONS = ("auto", "fp32", "bf16")
# metrics.json is a finished run's only if it holds all of these
_clock = time.monotonic  # the checkpoint cadence's clock (tests replace it)
REQUIRED_METRICS = ("pooled", "per_image", "per_volume", "loss", "best_epoch", "epochs_run",
                    "stopped", "last_epoch", "params", "feature_info")


@dataclass
class RunConfig:
    """Everything that determines the outcome of one training run."""

    name: str                      # human label, e.g. "T1" or "KD(T1,S1) B+PMD"
    model: str                     # S1 | S2 | unet | T1 | T2
    role: str                      # teacher | baseline | control | kd
    cache: str                     # slice cache folder
    split: str                     # split JSON
    train_subset: str = "train"    # split key to train on: train | student_train
    loss: str = "dice_bce"         # teacher/baseline loss: dice | dice_bce (teachers add recon)
    recon_weight: float = 0.2
    optimizer: str = "adamw"       # adamw | rmsprop
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    eps: float = 1e-8
    batch_size: int = 8
    epochs: int = 200              # a cap: not part of the run's identity (see identity())
    seed: int = 42
    patience: int = 0              # early stopping on validation Dice: epochs without an
    min_delta: float = 0.0         # improvement > min_delta before stopping; 0 = off
    min_epochs: int = 0            # no early stop before this many epochs: a slow optimiser's
                                   # validation Dice sits near 0 for its first epochs
    smooth: int = 1                # early stopping and selection watch the mean of the last
                                   # `smooth` epochs' validation numbers; 1 = each epoch's own
    warmup: int = 0                # epochs whose validation numbers set no best: never kept,
                                   # never the peak that patience waits to beat
    teacher_run: str | None = None  # run folder of the frozen teacher (kd only)
    kd: dict[str, Any] | None = None  # losses.KDConfig.to_dict() (kd only)
    threshold: str = "prob"        # prob (sigmoid > 0.5) | logit (faithful: logit > 0.5)
    selection: str = "val"         # val | test (faithful: the original selected on the test set)
    select_on: str = "loss"        # loss | dice: which of the selection set's numbers keeps a checkpoint
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    precision: str = "auto"        # auto | fp32 | bf16 (autocast); auto is kept (and hashed) as
                                   # "auto" and resolved on the device the run trains on
    setting: str = "corrected"     # corrected | faithful: which reading of the thesis
    weights_dtype: str = "fp16"    # fp16 | fp32: how best.pt stores the weights (test metrics come from them)
    keep_last: bool = False        # keep last.pt (resumable state) after finishing, to continue later
    checkpoint_seconds: float = 60.0  # write last.pt at the first epoch end this long after the
                                   # last write, and always at the last epoch; 0 = every epoch
    augment: bool = False          # kdlib.augment's policy on every training batch (corrected
                                   # setting; distilled runs: orientations + intensity only)
    val_orientations: bool = False  # stopping and selection count every selection slice in each
                                   # of the 8 orientations (a model meant for any orientation is
                                   # otherwise kept for the orientation the slices come in)

    def __post_init__(self) -> None:
        checks = {
            "role": ROLES, "loss": ("dice", "dice_bce"),
            "optimizer": ("adamw", "rmsprop"), "threshold": ("prob", "logit"),
            "selection": ("val", "test"), "select_on": SELECT_ON, "precision": PRECISIONS,
            "setting": ("corrected", "faithful"), "train_subset": ("train", "student_train"),
            "weights_dtype": ("fp32", "fp16"), "keep_last": (True, False),
            "augment": (True, False), "val_orientations": (True, False),
        }
        for key, allowed in checks.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not one of {allowed}", self.name)
        if self.role == "kd" and (self.teacher_run is None or self.kd is None):
            raise ConfigError("a kd run needs teacher_run and kd", self.name)
        if self.role != "kd" and (self.teacher_run is not None or self.kd is not None):
            raise ConfigError(f"a {self.role} run has no teacher_run or kd", self.name)
        if self.augment and self.setting == "faithful":
            raise ConfigError("augment is an option of the corrected setting (the original "
                              "trained on the slices as given)", self.name, "drop augment")
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("batch_size and epochs must be >= 1", self.name)
        try:  # one spelling per value: 0 and 0.0 must hash alike
            self.patience, self.min_delta = int(self.patience), float(self.min_delta)
            self.min_epochs, self.smooth, self.warmup = int(self.min_epochs), int(self.smooth), int(self.warmup)
        except (TypeError, ValueError):
            raise ConfigError("patience, min_epochs, smooth and warmup must be integers and "
                              "min_delta a number", self.name) from None
        if self.patience < 0 or self.min_epochs < 0 or self.warmup < 0 or not self.min_delta >= 0:
            raise ConfigError("patience, min_epochs, warmup and min_delta must be >= 0", self.name)
        if self.smooth < 1:
            raise ConfigError("smooth must be >= 1 (1: no smoothing)", self.name)
        try:
            self.checkpoint_seconds = float(self.checkpoint_seconds)
        except (TypeError, ValueError):
            raise ConfigError("checkpoint_seconds must be a number", self.name) from None
        if not self.checkpoint_seconds >= 0:
            raise ConfigError("checkpoint_seconds must be >= 0 (0: every epoch)", self.name)
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | Path | None = None) -> "RunConfig":
        """A config from its dict (a run's config.json); `where` names the file in errors."""
        fix = "restore the run's config.json or delete the run folder and train it again"
        if not isinstance(data, dict):
            raise ConfigError(f"a run configuration must be a JSON object, got "
                              f"{type(data).__name__}", where, fix)
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ConfigError(f"run configuration lacks {', '.join(missing)}", where, fix)
        names = {f.name for f in fields}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except ConfigError as exc:
            raise ConfigError(str(exc), where, fix) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid run configuration ({str(exc).splitlines()[0][:100]})",
                              where, fix) from None

    def identity(self) -> dict[str, Any]:
        """What the run folder's hash covers: the config plus the content of its inputs,
        less what does not change the outcome up to the cap (`epochs`, `keep_last`)."""
        ident = {k: v for k, v in self.to_dict().items() if k not in NOT_IDENTITY}
        for name, old_value in ADDED_LATER.items():
            if ident[name] == old_value:
                del ident[name]
        ident["cache"] = read_json(Path(self.cache) / "manifest.json").get("fingerprint") or \
            sha256_file(Path(self.cache) / "manifest.json")
        # the split's content, not the file's bytes: those hold the absolute cache path,
        # which would give the same run another identity in another folder or machine
        ident["split"] = split_fingerprint(self.split)
        if self.teacher_run:
            ident["teacher_run"] = Path(self.teacher_run).name
        return ident

    def run_dir(self, runs_dir: str | Path) -> Path:
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")[:40]
        return Path(runs_dir) / f"{slug}-s{self.seed}-{config_hash(self.identity())}"


# ---------------------------------------------------------------------------------------
# Configurations as the original trained them


def teacher_config(model: str, cache: str | Path, split: str | Path, **overrides) -> RunConfig:
    """Teachers: Dice+BCE (+0.2 recon MSE for T1/T2), AdamW 1e-4, betas (0.9, 0.95), wd 0.05, batch 8.

    Like every run, best.pt keeps fp16 weights (31-173 M parameters: half the disk; the test
    metrics are computed from the stored weights, and tests/test_checkpoints.py shows them
    unchanged against fp32)."""
    base = dict(name=model, model=model, role="teacher", cache=str(cache), split=str(split),
                loss="dice_bce", optimizer="adamw", lr=1e-4, batch_size=8, epochs=200)
    base.update(overrides)
    return RunConfig(**base)


def baseline_config(student: str, cache: str | Path, split: str | Path, **overrides) -> RunConfig:
    """Baseline students: AdamW 1.5e-4, batch 16, 120 epochs; S1 on Dice, S2 on Dice+BCE."""
    base = dict(name=f"{student} baseline", model=student, role="baseline", cache=str(cache),
                split=str(split), train_subset="student_train",
                loss="dice" if student == "S1" else "dice_bce", optimizer="adamw", lr=1.5e-4,
                batch_size=16, epochs=120)
    base.update(overrides)
    return RunConfig(**base)


def kd_run_config(teacher_run: str | Path, student: str, kd: "losses.KDConfig", cache: str | Path,
                  split: str | Path, name: str | None = None, **overrides) -> RunConfig:
    """Distilled students: RMSprop 1e-2, batch 20, 120 epochs, teacher frozen."""
    if name is None:  # the default label names the teacher's network, read from its run
        name = f"KD({read_json(Path(teacher_run) / 'config.json')['model']},{student})"
    base = dict(name=name, model=student, role="kd", cache=str(cache),
                split=str(split), train_subset="student_train", teacher_run=str(teacher_run),
                kd=kd.to_dict(), optimizer="rmsprop", lr=1e-2, weight_decay=0.0, batch_size=20,
                epochs=120, loss="dice")
    base.update(overrides)
    return RunConfig(**base)


def control_config(student: str, cache: str | Path, split: str | Path, **overrides) -> RunConfig:
    """KD-off control: the distilled students' recipe (RMSprop 1e-2, batch 20, Dice loss, the
    student training subset, same epochs and selection) with no teacher, i.e. every
    distillation weight at zero. It separates the effect of distillation from the optimiser's.
    (A distilled student's total is w_seg * Dice + ...; RMSprop divides each step by the
    gradient's running RMS, so the constant w_seg does not change the steps, up to eps.)"""
    base = dict(name=f"{student} KD-off control", model=student, role="control", cache=str(cache),
                split=str(split), train_subset="student_train", loss="dice", optimizer="rmsprop",
                lr=1e-2, weight_decay=0.0, batch_size=20, epochs=120)
    base.update(overrides)
    return RunConfig(**base)


# ---------------------------------------------------------------------------------------
# Devices, seeds, precision


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AMX-BF16 or AVX512-BF16, Linux cpuinfo flags).

    Measured on such a CPU (issue 9): bf16 autocast trains T1 2.2x and S2 2x faster than fp32.
    Without these instructions bf16 is emulated and slower, so "auto" means fp32 there."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


@functools.lru_cache(maxsize=1)
def warn_emulated_bf16() -> bool:
    """Warn once per process when bf16 is asked for on a CPU that has to emulate it.

    Measured on an Intel Xeon without AMX or AVX512-BF16 (Ice Lake, 2026-12-03), bf16
    autocast trained 2-4x slower than fp32 (S1 113 against 232 images/s, S2 22-31 against 90,
    T1 2.5 against 5.1); on an AMD EPYC (AVX2, no AVX-512; 2026-12-05) 17-33x slower (S1 12.5
    against 200.5 images/s, T1 0.1 against 3.8; benchmarks/RESULTS.md section 12). A profile that
    pins bf16 for a native-bf16 machine (real-mini) then takes 2-30x its budget. Returns True when
    it warned."""
    if cpu_has_native_bf16():
        return False
    warnings.warn("precision bf16 on a CPU without native bf16 (no amx_bf16/avx512_bf16 in "
                  "/proc/cpuinfo): autocast is emulated, 2-30x slower than fp32 (measured on Intel Ice Lake and AMD EPYC); for a budgeted run "
                  "use a CPU with native bf16 or a GPU, or set precision: fp32 (other run identities)",
                  KdlibWarning, stacklevel=3)
    return True


def resolve_precision(precision: str, device: str | torch.device | None = None) -> str:
    """"auto" -> "bf16" on CUDA or on a CPU with native bf16, else "fp32"; others unchanged."""
    if precision != "auto":
        return precision
    kind = torch.device(device).type if device else ("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if kind == "cuda" or cpu_has_native_bf16() else "fp32"


def set_determinism(device: torch.device) -> None:
    """Deterministic kernels on the CPU (same seed, same metrics); free choice on CUDA, where
    cuDNN also benchmarks its convolution algorithms (`cudnn.benchmark`: every batch of a run
    has one of two shapes, so the search pays once).

    Deterministic mode also fills every new tensor with NaN to expose reads of uninitialised
    memory. kdlib never reads such memory, the fill does not change any result, and it cost
    7% of a step idle and 14-18% under load (issue 9), so it is switched off; see
    benchmarks/bench_determinism.py for what the rest of deterministic mode costs."""
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.benchmark = device.type == "cuda"


# (network, precision) pairs that train faster in channels_last than in NCHW on the CPU:
# training step at 64x64, 2-core Xeon with AMX, torch 2.13 (benchmarks/RESULTS.md, section
# 7, `bench_overhead.py --steps-only`): S1 1.3x fp32 / 1.5-1.7x bf16, S2 1.2-1.5x / 1.4-1.6x,
# unet 1.1x and T1 1.0-1.2x in bf16 only (fp32: 0.8-0.95x); T2's transformer half gains
# nothing (0.85-0.95x fp32, 0.96-0.98x bf16), so it stays NCHW
CHANNELS_LAST_CPU = frozenset({("S1", "fp32"), ("S1", "bf16"), ("S2", "fp32"), ("S2", "bf16"),
                               ("T1", "bf16"), ("unet", "bf16")})


def memory_format(model: str, device: str | torch.device, precision: str) -> torch.memory_format:
    """The layout a network trains and validates in: channels_last where it is faster (on
    CUDA with bf16, the tensor cores' layout; on the CPU per `CHANNELS_LAST_CPU`), else NCHW.

    Only the speed depends on it: a training step matches NCHW's within rounding (fp32:
    relative 1e-4 on loss and gradients; bf16: 2e-2, bf16's own resolution; tests/test_train.py),
    and a fixed seed still gives the same metrics on the CPU in either layout."""
    kind = torch.device(device).type
    name = models.canonical_name(model)
    fast = precision == "bf16" if kind == "cuda" else (name, precision) in CHANNELS_LAST_CPU
    return torch.channels_last if fast else torch.contiguous_format


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def stream_seed(seed: int, stream: str) -> int:
    """A seed for one named stochastic part of a run, derived from the run's seed only."""
    return int(config_hash({"seed": int(seed), "stream": stream}, length=15), 16)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------
# Data as tensors (no per-epoch decoding: the cache is already uint8 arrays in memory)


class SliceTensors:
    """The cache's slices for a list of indices, as uint8 tensors on `device`, batched on
    demand; images come in `memory_format` (the network's, see `memory_format()`)."""

    def __init__(self, cache: SliceCache, indices: list[int], device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format):
        order = np.asarray(indices, dtype=np.int64)
        self.indices = order
        self.images = torch.from_numpy(np.ascontiguousarray(cache.images[order])).to(device)
        self.masks = torch.from_numpy(np.ascontiguousarray(cache.masks[order])).to(device)
        self.case_ids = [str(c) for c in np.asarray(cache.case_ids)[order]]
        self.memory_format = memory_format

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, rows: torch.Tensor | slice, memory_format: torch.memory_format | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[rows].float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
        mask = self.masks[rows].float().div_(255.0).unsqueeze(1)
        return image.contiguous(memory_format=memory_format or self.memory_format), mask

    def batches(self, batch_size: int, generator: torch.Generator | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(rows, image, mask) per batch, `rows` on the data's device. The order is
        `torch.randperm(n, generator=generator)` drawn on the CPU (the same order on every
        device, and the one kdlib has always used, so older runs resume in their own order)
        and moved to the device once per epoch: no host work or transfer per batch."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        order = order.to(self.images.device)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            image, mask = self.batch(rows)
            yield rows, image, mask


# ---------------------------------------------------------------------------------------
# The frozen teacher: loaded once, its outputs on the student training set computed once

# the teacher-outputs cache: {"key": (teacher run, slice indices, device, dtype, size),
# "model": the loaded teacher network, "taps": {tap: tensor}} for one teacher at a time
_TEACHER_OUTPUTS: dict[str, Any] = {}
ALL_TEACHER_TAPS = ("enc", "bottleneck", "dec", "logits")


MAX_CHECKPOINT_BYTES = 8 << 30  # what one checkpoint may unpack to (the largest last.pt: ~0.5 GB)


def _check_checkpoint_size(path: Path) -> None:
    """torch.save writes a zip of stored (uncompressed) members; their sizes are read from
    the zip's central directory without inflating anything. A checkpoint declaring more than
    its own size (a deflated member that would inflate hugely) or MAX_CHECKPOINT_BYTES is
    refused before torch reads it."""
    import zipfile

    fix = "delete the run folder and train it again"
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise KdlibError(f"cannot load checkpoint (not a torch zip checkpoint: "
                         f"{str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})",
                         path, fix) from None
    on_disk = path.stat().st_size
    if declared > MAX_CHECKPOINT_BYTES or declared > 2 * on_disk + (1 << 20):
        raise KdlibError(f"checkpoint declares {declared:,} bytes in a {on_disk:,}-byte file "
                         "(kdlib's checkpoints are stored uncompressed)", path, fix)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a kdlib checkpoint safely (`weights_only=True`: tensors and plain types, never
    code). A missing, truncated, foreign or malicious file is a one-line KdlibError."""
    path = Path(path)
    if not path.is_file():
        raise KdlibError("no checkpoint", path, "train the run first (it may be unfinished)")
    _check_checkpoint_size(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle payload, foreign format: all unreadable
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise KdlibError(f"cannot load checkpoint ({reason})", path,
                         "delete the run folder and train it again") from None
    if not isinstance(state, dict) or "model" not in state:
        raise KdlibError("not a kdlib checkpoint (no 'model' weights)", path,
                         "delete the run folder and train it again")
    return state


STORED_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what best.pt may hold


def check_weights(weights: Any, model: torch.nn.Module, path: Path, finite: bool = True) -> None:
    """Weights loaded from a file must be tensors of the kinds the network holds: floating
    (fp16, bf16 or fp32) where it has floating tensors, integer where it has integer ones
    (BatchNorm's counters), and finite (NaN weights predict empty or garbage masks)."""
    fix = "delete the run folder and train it again"
    if not isinstance(weights, dict):
        raise KdlibError("not a kdlib checkpoint ('model' is not a table of weights)", path, fix)
    expected = model.state_dict()
    for key, value in weights.items():
        if not isinstance(value, torch.Tensor):
            raise KdlibError(f"weight {key!r} is not a tensor", path, fix)
        want = expected.get(key)
        if want is None:
            continue  # load_state_dict names unexpected keys
        if want.is_floating_point():
            if value.dtype not in STORED_FLOAT_DTYPES:
                raise KdlibError(f"weight {key!r} has dtype {value.dtype}, not a float16/"
                                 "bfloat16/float32 weight", path, fix)
            if finite and not bool(torch.isfinite(value).all()):
                raise KdlibError(f"weight {key!r} has NaN or infinite values", path, fix)
        elif value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise KdlibError(f"weight {key!r} has dtype {value.dtype}, expected {want.dtype}",
                             path, fix)


def load_model(run_dir: str | Path, device: torch.device, which: str = "best",
               finite: bool = True) -> torch.nn.Module:
    """Rebuild a trained network from its run folder (config.json + checkpoints/<which>.pt).
    Its weights are checked first (`check_weights`; `finite=False` lets a diverged run's own
    NaN weights through, for its test metrics)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise KdlibError("not a run folder (no config.json)", run_dir,
                         "point at a folder under results/<profile>/runs/")
    cfg = RunConfig.from_dict(read_json(run_dir / "config.json"), run_dir / "config.json")
    ckpt_path = run_dir / "checkpoints" / f"{which}.pt"
    state = load_checkpoint(ckpt_path)
    model = models.build(cfg.model, **cfg.model_kwargs)
    check_weights(state["model"], model, ckpt_path, finite=finite)
    try:
        model.load_state_dict(state["model"])  # fp16-stored weights are upcast on copy
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise KdlibError(f"checkpoint does not fit a {cfg.model} network "
                         f"({str(exc).splitlines()[0][:100]})", ckpt_path,
                         "delete the run folder and train it again") from None
    return model.to(device).eval()


def teacher_outputs(teacher_run: str | Path, data: SliceTensors, taps: tuple[str, ...],
                    device: torch.device, batch_size: int = 16, dtype: torch.dtype | None = None,
                    orientations: bool = False) -> dict[str, torch.Tensor]:
    """The teacher's `taps` for every slice of `data`, computed once per process and reused.

    `orientations`: for each of the 8 orientations of every slice (`augment.dihedral`), as
    (8, slices, ...) tensors, so an augmented distilled run finds the teacher's outputs for the
    orientation its student sees (8 times the memory; refused, with the fix, when that would
    exceed half of this machine's memory).

    Stored on `device` in `dtype` (float32 on the CPU, bfloat16 on CUDA by default) so a KD
    step only indexes rows; a 1x1 projector is applied later at the teacher's own resolution.

    Memory (issue 20): for one teacher and data set at a time. A pass that has to run keeps
    every tap when all of them fit in `spare_taps_budget` (1/8 of the device's memory; T1's four
    taps at 64x64 are 1.3 MB a slice in fp32), so that the next configuration, which distils from
    other scales, finds its taps held instead of paying another pass (the first 16 KD runs of the
    smoke grid: 1 pass instead of 4, 1.5x faster; benchmarks/bench_teacher_passes.py). Each
    worker process holds its own cache. Where they do not fit (T1's `enc` alone is 8 MB a slice
    in bf16 at 256x256, where the logits are 128 kB), only the taps asked for are kept: taps
    held that this call does not need are freed before anything is computed. Either way
    the taps are written into tensors allocated once at their final size, batch by batch (no
    list of chunks and concatenation, which peaked at twice the outputs). The teacher network
    stays loaded while the same teacher and data are asked for, so another set of taps costs
    one inference pass, not a reload; `pipeline.training_order` puts the runs that need the
    same taps next to each other.
    """
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    wanted = tuple(sorted(set(taps)))
    unknown = set(wanted) - set(ALL_TEACHER_TAPS)
    if unknown:
        raise ConfigError(f"unknown teacher taps {sorted(unknown)}", str(teacher_run),
                          f"use {ALL_TEACHER_TAPS}")
    key = (str(Path(teacher_run).resolve()), tuple(data.indices.tolist()), str(device), str(dtype),
           data.images.shape[-1], orientations)
    if _TEACHER_OUTPUTS.get("key") != key:  # another teacher or data set: free the old first
        _TEACHER_OUTPUTS.clear()
        _TEACHER_OUTPUTS.update(key=key, model=None, taps={})
    held: dict[str, torch.Tensor] = _TEACHER_OUTPUTS["taps"]
    missing = [tap for tap in wanted if tap not in held]
    if missing:
        for tap in [tap for tap in held if tap not in wanted]:  # room first; kept again below if all fit
            del held[tap]
        teacher = _TEACHER_OUTPUTS.get("model")
        if teacher is None:
            with torch.random.fork_rng(devices=[]):  # building the network must not move the run's RNG
                teacher = load_model(teacher_run, device)
            if device.type == "cuda":
                teacher = teacher.to(memory_format=torch.channels_last)
            _TEACHER_OUTPUTS["model"] = teacher
        n = len(data)
        ops = range(8) if orientations else (0,)
        filled: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for op in ops:
                for start in bar(range(0, n, batch_size), desc="teacher outputs (once)", leave=False):
                    image, _ = data.batch(slice(start, start + batch_size), torch.contiguous_format)
                    if orientations:
                        image = dihedral(image, op).contiguous()
                    with autocast(device, "bf16" if device.type == "cuda" else "fp32"):
                        out = teacher(image)
                    if not filled:  # first batch: keep every tap where all of them fit
                        every = [tap for tap in ALL_TEACHER_TAPS if tap in out and tap not in held]
                        per_slice = sum(out[tap][0].numel() for tap in ALL_TEACHER_TAPS if tap in out)
                        element = torch.empty((), dtype=dtype).element_size()
                        if per_slice * element * n * len(ops) <= spare_taps_budget(device):
                            missing = every
                    for tap in missing:
                        value = out[tap]
                        if tap not in filled:  # allocated once, at its final size
                            shape = (len(ops), n, *value.shape[1:]) if orientations else (n, *value.shape[1:])
                            _check_cache_size(shape, dtype, teacher_run)
                            filled[tap] = torch.empty(shape, dtype=dtype, device=device)
                        target = filled[tap][op] if orientations else filled[tap]
                        target[start:start + value.shape[0]].copy_(value)
                    del out
        held.update(filled)
    return {tap: held[tap] for tap in wanted}


def _physical_memory() -> int | None:
    """This machine's physical memory in bytes; None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _check_cache_size(shape: tuple[int, ...], dtype: torch.dtype, teacher_run) -> None:
    """Refuse a teacher-outputs tensor larger than half of this machine's memory, before it
    is allocated (the 8-orientation cache of a large teacher at 256x256 can be)."""
    need = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    total = _physical_memory()
    if total is None:
        return
    if need > total // 2:
        raise KdlibError(f"the teacher's outputs would take {need / 2**30:.1f} GiB of this machine's "
                         f"{total / 2**30:.1f} GiB", str(teacher_run),
                         "distil without augment (one orientation), from fewer scales, or at a smaller size")


def spare_taps_budget(device: torch.device) -> int:
    """Bytes the teacher-outputs cache may hold so as to keep every tap of a pass rather than
    only those asked for: 1/8 of the device's memory (CUDA: the GPU's; CPU: physical memory;
    0 where it cannot be read, which keeps only the taps asked for)."""
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_properties(device).total_memory // 8
        except RuntimeError:
            return 0
    return (_physical_memory() or 0) // 8


def teacher_outputs_bytes() -> int:
    """Bytes held by the teacher-outputs cache (its taps; not the teacher network)."""
    return sum(t.numel() * t.element_size() for t in _TEACHER_OUTPUTS.get("taps", {}).values())


# ---------------------------------------------------------------------------------------
# One training run


def _make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                 weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.99, eps=cfg.eps,
                               weight_decay=cfg.weight_decay)


def _seg_loss(name: str, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return losses.dice_loss(logits, mask) if name == "dice" else losses.dice_bce_loss(logits, mask)


def _plain_objective(cfg: RunConfig, out: dict[str, torch.Tensor], image: torch.Tensor,
                     mask: torch.Tensor) -> dict[str, torch.Tensor]:
    terms = {"seg": _seg_loss(cfg.loss, out["logits"], mask)}
    total = terms["seg"]
    if cfg.role == "teacher" and "recon" in out:
        terms["recon"] = losses.recon_mse(out["recon"], image)
        total = total + cfg.recon_weight * terms["recon"]
    terms["total"] = total
    return terms


def _kd_taps(kd: "losses.KDConfig") -> tuple[str, ...]:
    taps = [TAP_OF_SCALE[s] for s in kd.scales]
    if kd.pmd != "off":
        taps.append("logits")
    return tuple(taps)


def kd_taps_of(cfg: RunConfig) -> tuple[str, ...]:
    """The teacher taps a run distils from, sorted (() for a run without a teacher)."""
    return tuple(sorted(_kd_taps(losses.KDConfig.from_dict(cfg.kd)))) if cfg.kd else ()


def _train_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: SliceTensors,
                 batch_size: int, generator: torch.Generator, objective, device: torch.device,
                 precision: str, augment: torch.Generator | None = None,
                 oriented_teacher: bool = False) -> dict[str, float]:
    """One pass over `data` in the generator's order; `objective(rows, out, image, mask)`
    gives the loss terms ("total" is minimised). Returns each term's mean over the images.
    `augment`: a generator for `kdlib.augment.augment_batch` on every batch (None: as given);
    with `oriented_teacher` (a distilled run), `kdlib.augment.kd_augment_batch` instead, whose
    orientations reach `objective` as `ops` to pick the teacher's outputs.

    Nothing is read back per step: the terms are summed on the device (in float64, so the
    means are those of the former per-step `float()` reads, bit for bit) and read once."""
    model.train()
    sums: dict[str, torch.Tensor] = {}
    for rows, image, mask in data.batches(batch_size, generator):
        ops = None
        if augment is not None and oriented_teacher:
            image, mask, ops = kd_augment_batch(image, mask, augment)
        elif augment is not None:
            image, mask = augment_batch(image, mask, augment)
        with autocast(device, precision):
            terms = objective(rows, model(image), image, mask) if ops is None else \
                objective(rows, model(image), image, mask, ops)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        for key, value in terms.items():
            term = value.detach().double() * image.shape[0]
            sums[key] = sums[key] + term if key in sums else term
    if not sums:
        return {}
    return dict(zip(sums, (torch.stack(list(sums.values())) / len(data)).tolist()))


@torch.inference_mode()
def validate(model: torch.nn.Module, data: SliceTensors, threshold: str, device: torch.device,
             batch_size: int = 32, precision: str = "fp32", with_recon: bool = False,
             seg_loss: str = "dice_bce", orientations: bool = False) -> dict[str, Any]:
    """The selection set's numbers of one epoch: `loss`, `pooled` (Dice, IoU, precision,
    recall and TP/FP/FN over every pixel, as `evaluate_model` pools them) and, for multi-task
    teachers, `recon_loss` and `psnr` (mean over images).

    `orientations`: every slice in each of the 8 orientations (`augment.dihedral`, image and
    mask turned alike), pooled as 8 times the images; `n_images` counts them all.

    Everything is accumulated on the device and read back once; no SSIM and no per-image or
    per-volume blocks, which only the test metrics (`evaluate_model`) report."""
    model.eval()
    zero = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum, recon_sum, psnr_sum = zero, zero, zero
    counts = torch.zeros(3, dtype=torch.int64, device=device)
    has_recon = False
    views = [(op, start) for op in (range(8) if orientations else (0,)) for start in range(0, len(data), batch_size)]
    for op, start in views:
        image, mask = data.batch(slice(start, start + batch_size))
        if op:
            image = dihedral(image, op).contiguous(memory_format=data.memory_format)
            mask = dihedral(mask, op).contiguous()
        with autocast(device, precision):
            out = model(image)
        logits = out["logits"].float()
        loss_sum = loss_sum + _seg_loss(seg_loss, logits, mask).double() * image.shape[0]
        pred, truth = metrics.binarize(logits, threshold), mask > 0.5
        counts += torch.stack([(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()])
        if with_recon and "recon" in out:
            has_recon = True
            recon = out["recon"].float()
            recon_sum = recon_sum + losses.recon_mse(recon, image).double() * image.shape[0]
            mse = (recon.double() - image.double()).square().flatten(1).mean(1)
            psnr_sum = psnr_sum + (10.0 * torch.log10(1.0 / mse)).sum()  # mse 0: inf, as metrics.psnr
    values = torch.cat([torch.stack([loss_sum, recon_sum, psnr_sum]), counts.double()]).tolist()
    n_images = len(data) * (8 if orientations else 1)
    n = max(n_images, 1)
    tp, fp, fn = (int(v) for v in values[3:])
    result: dict[str, Any] = {"loss": values[0] / n,
                              "pooled": {**metrics.scores({"tp": tp, "fp": fp, "fn": fn}),
                                         "tp": tp, "fp": fp, "fn": fn, "n_images": n_images}}
    if has_recon:
        result.update(recon_loss=values[1] / n, psnr=values[2] / n)
    return result


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, data: SliceTensors, threshold: str,
                   device: torch.device, batch_size: int = 32, precision: str = "fp32",
                   with_recon: bool = False, seg_loss: str = "dice_bce") -> dict[str, Any]:
    """Loss and segmentation metrics (pooled, per image, per volume) of `model` on `data`,
    and PSNR and SSIM of the reconstruction with `with_recon`: the test metrics."""
    model.eval()
    meter = metrics.SegmentationMeter()
    loss_sum, recon_sum, psnr_vals, ssim_vals = 0.0, 0.0, [], []
    for start in range(0, len(data), batch_size):
        rows = slice(start, start + batch_size)
        image, mask = data.batch(rows)
        with autocast(device, precision):
            out = model(image)
        logits = out["logits"].float()
        loss_sum += float(_seg_loss(seg_loss, logits, mask)) * image.shape[0]
        pred = metrics.binarize(logits, threshold)
        meter.update(pred.cpu().numpy()[:, 0], mask.cpu().numpy()[:, 0] > 0.5,
                     data.case_ids[start:start + batch_size])
        if with_recon and "recon" in out:
            recon = out["recon"].float()
            recon_sum += float(losses.recon_mse(recon, image)) * image.shape[0]
            psnr_vals.append(metrics.psnr(recon.cpu(), image.cpu()) * image.shape[0])
            ssim_vals.append(metrics.ssim(recon.cpu().clamp(0, 1), image.cpu()) * image.shape[0])
    n = max(len(data), 1)
    result = meter.result()
    result["loss"] = loss_sum / n
    if with_recon and psnr_vals:
        result["recon_loss"] = recon_sum / n
        result["psnr"] = sum(psnr_vals) / n
        result["ssim"] = sum(ssim_vals) / n
    return result


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically; a full disk (torch raises OSError or a RuntimeError
    from its zip writer) is one line, and no half-written file is left behind."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except (OSError, RuntimeError) as exc:
        reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or
                                                    [type(exc).__name__])[0][:120]
        raise KdlibError(f"cannot write the checkpoint ({reason})", path,
                         "free disk space (or check the folder's permissions) and run the same "
                         "command again: training resumes") from None


def _stored_weights(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """A state dict as best.pt stores it: fp32, or fp16 for floating tensors that fit
    (values beyond fp16's range stay fp32, so nothing becomes inf)."""
    out = {}
    for key, value in state.items():
        value = value.detach().cpu()
        if dtype == "fp16" and value.is_floating_point():
            half = value.half()
            if bool(torch.isfinite(half).all()) or not bool(torch.isfinite(value).all()):
                value = half
        out[key] = value.clone()
    return out


def read_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's `metrics.json` if it is complete and valid, else None (missing, not JSON,
    `{}`, or any required key missing)."""
    path = Path(run_dir) / "metrics.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or any(k not in data for k in REQUIRED_METRICS):
        return None
    for block in (data["pooled"], data["last_epoch"]):
        if not isinstance(block, dict) or not isinstance(block.get("pooled", block).get("dice"), (int, float)):
            return None
    if data["stopped"] not in ("early", "cap") or not isinstance(data["epochs_run"], int):
        return None
    return data


def is_finished(run_dir: str | Path, epochs: int | None = None) -> bool:
    """Finished: a complete `metrics.json`; with `epochs` (a cap), also trained up to that cap
    or stopped early (more epochs would not change it)."""
    done = read_metrics(run_dir)
    if done is None:
        return False
    return epochs is None or done["stopped"] == "early" or done["epochs_run"] >= epochs


def epochs_without_improvement(val_dice: list[float], min_delta: float = 0.0) -> int:
    """Epochs since validation Dice last rose by more than `min_delta` above its best."""
    best, since = -math.inf, 0
    for value in val_dice:
        if value > best + min_delta:
            best, since = value, 0
        else:
            since += 1
    return since


def trailing_mean(values: list[float], window: int) -> list[float]:
    """Each value averaged with the `window - 1` before it (fewer at the start); window 1
    returns the values themselves."""
    return [sum(values[max(0, i + 1 - window):i + 1]) / len(values[max(0, i + 1 - window):i + 1])
            for i in range(len(values))]


def first_counted_epoch(cfg: RunConfig) -> int:
    """The first epoch (1-based) whose validation numbers may set a best, for stopping and for
    the kept checkpoint: after the `warmup` epochs, and once `smooth` epochs fill the window."""
    return max(cfg.warmup + 1, cfg.smooth)


def should_stop(cfg: RunConfig, history: list[dict[str, Any]]) -> bool:
    """The early-stopping rule: `patience` epochs in a row without a gain above `min_delta` of
    validation Dice (its mean over the last `smooth` epochs; the best counted from
    `first_counted_epoch` on), off when patience is 0, never before `min_epochs` epochs."""
    if cfg.patience <= 0 or not history or len(history) < cfg.min_epochs:
        return False
    dice = trailing_mean([float(r["val_dice"]) for r in history], cfg.smooth)[first_counted_epoch(cfg) - 1:]
    return len(dice) > 0 and epochs_without_improvement(dice, cfg.min_delta) >= cfg.patience


def selection_step(cfg: RunConfig, history: list[dict[str, Any]], best: float,
                   best_epoch: int) -> tuple[bool, bool, float]:
    """The rules after the last epoch of `history`: whether to stop, whether to keep that
    epoch's weights, and the best criterion so far. The criterion is the epoch's
    `val_criterion` (its trailing mean over `smooth` epochs when smooth > 1), lower is better;
    epochs before `first_counted_epoch` set no best, except that the last epoch is kept when
    the run ends before any epoch counts (cap <= warmup)."""
    epoch = len(history)
    stop = should_stop(cfg, history)
    selected = trailing_mean([float(r["val_criterion"]) for r in history[-cfg.smooth:]], cfg.smooth)[-1]
    counted = epoch >= first_counted_epoch(cfg)
    keep = (counted and selected < best) or (best_epoch == 0 and (stop or epoch >= cfg.epochs))
    return stop, keep, (selected if keep and counted else best)


def replay_selection(cfg: RunConfig, history: list[dict[str, Any]]) -> tuple[int, int]:
    """(epochs run, kept epoch) that `train` would reach with `cfg`'s stopping and selection
    rules on a recorded validation history (rows with `val_dice` and `val_criterion`), e.g. a
    run trained to its cap without early stopping: how `benchmarks/bench_selection.py`
    compares rules on the same trajectories. A history shorter than the rules need ends at
    its last row, as a run at its cap does."""
    best, best_epoch = math.inf, 0
    rows = history[:cfg.epochs]
    capped = dataclasses.replace(cfg, epochs=len(rows))  # the recorded history ends as a cap does
    for epoch in range(1, len(rows) + 1):
        stop, keep, best = selection_step(capped, rows[:epoch], best, best_epoch)
        if keep:
            best_epoch = epoch
        if stop:
            return epoch, best_epoch
    return len(rows), best_epoch


def _same_configuration(stored: dict[str, Any], cfg: RunConfig) -> bool:
    mine = json.loads(json.dumps(cfg.to_dict()))
    stored = {**ADDED_LATER, **stored}
    drop = set(NOT_IDENTITY) | {"provenance"}
    return {k: v for k, v in stored.items() if k not in drop} == \
        {k: v for k, v in mine.items() if k not in drop}


def train(cfg: RunConfig, runs_dir: str | Path, device: str | None = None,
          stop_after_epoch: int | None = None, progress: bool = True,
          on_epoch: Callable[[int, torch.nn.Module], None] | None = None) -> Path:
    """Train `cfg` (or skip it if finished, or resume / continue it) and return its run folder.

    `stop_after_epoch` simulates an interruption (used by the resume test). `on_epoch(epoch,
    model)` is called after each epoch's validation (1-based epoch, the network in eval mode),
    e.g. by a benchmark that scores every epoch on further sets; it must not train the network.
    """
    run_dir = cfg.run_dir(runs_dir)
    if is_finished(run_dir, cfg.epochs):
        return run_dir
    dev = pick_device(device)
    with folder_lock(run_dir):
        if is_finished(run_dir, cfg.epochs):  # another process finished it meanwhile
            return run_dir
        remove_stale_tmp(run_dir)  # a killed save's leftovers; we hold the lock, nobody writes
        _train_locked(cfg, run_dir, dev, stop_after_epoch, progress, on_epoch)
    return run_dir


def _start_record(cfg: RunConfig, run_dir: Path, resumed_from: int | None,
                  dev: torch.device | None = None) -> None:
    """Write config.json: the configuration plus its provenance (code commit and whether the
    tree was clean, data and split checksums, the device and the precision "auto" became
    there); a resume or continuation appends its own code state and device, so a run
    assembled across commits or machines says so."""
    config_path = run_dir / "config.json"
    stored = read_json(config_path) if config_path.exists() else None
    if stored is not None and not _same_configuration(stored, cfg):
        raise KdlibError("run folder holds a different configuration", run_dir,
                         "delete the folder or change the runs directory")
    record = stored.get("provenance") if stored else None
    if record is None:
        fingerprint = read_json(Path(cfg.cache) / "manifest.json").get("fingerprint") or \
            sha256_file(Path(cfg.cache) / "manifest.json")
        record = run_provenance(fingerprint, sha256_file(cfg.split))
        if dev is not None:
            record = dict(record, device=dev.type, precision=resolve_precision(cfg.precision, dev))
    if resumed_from is not None:
        entry = dict(code_state(), after_epoch=resumed_from + 1,
                     **({"device": dev.type, "precision": resolve_precision(cfg.precision, dev)}
                        if dev is not None else {}),
                     date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
        record = dict(record, resumed=list(record.get("resumed", [])) + [entry])
    atomic_write_json(config_path, {**cfg.to_dict(), "provenance": record})


def _train_locked(cfg: RunConfig, run_dir: Path, dev: torch.device, stop_after_epoch: int | None,
                  progress: bool, on_epoch=None) -> None:
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    state = load_checkpoint(last_path) if last_path.exists() else None
    earlier = read_metrics(run_dir)
    if earlier is not None and state is None:
        raise KdlibError(f"finished at {earlier['epochs_run']} epochs without its last state "
                         f"(last.pt), so it cannot be continued to {cfg.epochs}", run_dir,
                         "delete the folder to train from scratch, or set keep_last=True for "
                         "runs you may continue")
    _start_record(cfg, run_dir, None if state is None else int(state["epoch"]), dev)
    set_determinism(dev)

    cache = SliceCache.load(cfg.cache)
    split = load_split(cfg.split)
    check_split(split, cache, cfg.setting, cfg.split)
    select_key = "test" if cfg.selection == "test" else "val"
    precision = resolve_precision(cfg.precision, dev)  # "auto" is decided here, on the device
    if precision == "bf16" and dev.type == "cpu":
        warn_emulated_bf16()
    layout = memory_format(cfg.model, dev, precision)
    train_data = SliceTensors(cache, split[cfg.train_subset], dev, layout)
    select_data = SliceTensors(cache, split[select_key], dev, layout)
    if len(train_data) == 0 or len(select_data) == 0:
        raise KdlibError(f"empty {cfg.train_subset} or {select_key} set", cfg.split,
                         "use more data or another split")

    seed_everything(cfg.seed)  # the network's init depends on the run's seed only
    model = models.build(cfg.model, **cfg.model_kwargs).to(dev).to(memory_format=layout)
    projector_rng = torch.Generator().manual_seed(stream_seed(cfg.seed, "projectors"))
    distiller, cached_teacher = None, None
    if cfg.role == "kd":
        kd = losses.KDConfig.from_dict(cfg.kd)
        teacher_metrics = read_metrics(cfg.teacher_run)
        if teacher_metrics is None:
            raise KdlibError("the teacher run is not finished", cfg.teacher_run, "train the teacher first")
        teacher_info = {tap: tuple(v) for tap, v in teacher_metrics["feature_info"].items()}
        distiller = losses.Distiller(kd, teacher_info, model.feature_info, generator=projector_rng).to(dev)
        taps = _kd_taps(kd)
        # an augmented student sees one of 8 orientations: the teacher's outputs for each
        cached_teacher = teacher_outputs(cfg.teacher_run, train_data, taps, dev, orientations=cfg.augment)
    params = list(model.parameters()) + (list(distiller.parameters()) if distiller else [])
    optimizer = _make_optimizer(cfg, params)
    # the training loop's global draws (dropout) start from the seed, whatever ran above
    torch.manual_seed(stream_seed(cfg.seed, "train"))

    def objective(rows, out, image, mask, ops=None):
        if distiller is not None:
            rows = rows.to(next(iter(cached_teacher.values())).device)
            if ops is None:
                return distiller(out, {tap: t[rows] for tap, t in cached_teacher.items()}, mask)
            ops = ops.to(rows.device)  # each image's orientation picks its teacher outputs
            return distiller(out, {tap: t[ops, rows] for tap, t in cached_teacher.items()}, mask)
        return _plain_objective(cfg, out, image, mask)

    history: list[dict[str, Any]] = []
    start_epoch, best, best_epoch, best_weights = 0, math.inf, 0, None
    if state is not None:
        check_weights(state["model"], model, last_path, finite=False)  # a diverged run resumes as it was
        model.load_state_dict(state["model"])
        if distiller is not None:
            distiller.load_state_dict(state["distiller"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        projector_rng.set_state(state["projector_rng"])
        start_epoch, best, history = int(state["epoch"]) + 1, float(state["best"]), list(state["history"])
        best_epoch = int(state["best_epoch"])
        best_weights = state.get("best_model")  # absent in last.pt files written before issue 17
        if best_weights is not None:
            # best.pt may hold a later epoch's weights, written after this state and before the
            # run was killed: put back the kept checkpoint that belongs to this state
            _save_checkpoint(best_path, {"model": best_weights, "epoch": best_epoch - 1})

    def save_last(epoch: int) -> None:
        _save_checkpoint(last_path, {
            "model": model.state_dict(), "epoch": epoch, "best": best, "best_epoch": best_epoch,
            "best_model": best_weights,
            "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            "projector_rng": projector_rng.get_state(),
            "distiller": distiller.state_dict() if distiller else None, "history": history})

    epochs = bar(range(start_epoch, cfg.epochs), desc=cfg.name, total=cfg.epochs,
                 initial=start_epoch, disable=not progress)
    last_saved = _clock()
    for epoch in epochs:
        if should_stop(cfg, history):  # a resumed run that had already stopped
            break
        started = time.time()
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        # augmentation draws from its own stream, per epoch (a resumed run draws the same)
        augment = torch.Generator().manual_seed(stream_seed(cfg.seed, "augment") + epoch) \
            if cfg.augment else None
        means = _train_epoch(model, optimizer, train_data, cfg.batch_size, generator, objective,
                             dev, precision, augment, oriented_teacher=distiller is not None)
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({f"train_{k}": v for k, v in means.items()})
        val = validate(model, select_data, cfg.threshold, dev, precision=precision,
                       with_recon=cfg.role == "teacher",
                       seg_loss="dice" if cfg.role == "kd" else cfg.loss,
                       orientations=cfg.val_orientations)
        # lower is better: the original's loss (teachers seg + recon, students seg loss), or
        # 1 - Dice, which agrees with the early-stopping rule (a distilled student's soft
        # Dice loss can keep falling while its thresholded Dice falls from its peak)
        criterion = val["loss"] + val.get("recon_loss", 0.0) if cfg.select_on == "loss" else \
            1.0 - float(val["pooled"]["dice"])
        row.update({"val_loss": val["loss"], "val_dice": val["pooled"]["dice"],
                    "val_iou": val["pooled"]["iou"], "val_criterion": criterion,
                    "seconds": time.time() - started})
        if "psnr" in val:
            row.update(val_recon_loss=val["recon_loss"], val_psnr=val["psnr"])
        if cfg.smooth > 1:  # what stopping and selection watch (absent at the default, as before)
            row.update({f"{key}_smoothed": trailing_mean([float(r[key]) for r in history] + [row[key]],
                                                         cfg.smooth)[-1]
                        for key in ("val_dice", "val_criterion")})
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
        stop, keep, best = selection_step(cfg, history, best, best_epoch)
        if keep:
            best_epoch = epoch + 1
            # inference and distillation need the network only (no projectors, no optimiser)
            best_weights = _stored_weights(model.state_dict(), cfg.weights_dtype)
            _save_checkpoint(best_path, {"model": best_weights, "epoch": epoch})
        interrupt = stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and \
            epoch + 1 < cfg.epochs and not stop
        # the resumable state: at the cadence, and always at the last epoch (cap or stop)
        now = _clock()
        if stop or interrupt or epoch + 1 >= cfg.epochs or now - last_saved >= cfg.checkpoint_seconds:
            save_last(epoch)
            last_saved = now
        _write_history(run_dir / "history.csv", history)
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix(loss=f"{row.get('train_total', 0):.3f}", val_dice=f"{row['val_dice']:.3f}")
        if interrupt:
            raise KeyboardInterrupt(f"stopped after epoch {epoch + 1} (simulated interruption)")
        if stop:
            break
    if hasattr(epochs, "close"):
        epochs.close()
    stopped = "early" if should_stop(cfg, history) else "cap"
    _finish(cfg, run_dir, dev, cache, split, model, history, best_epoch, stopped, layout)


def _finish(cfg: RunConfig, run_dir: Path, dev: torch.device, cache: SliceCache, split: dict,
            last_model: torch.nn.Module, history: list[dict[str, Any]], best_epoch: int,
            stopped: str, layout: torch.memory_format = torch.contiguous_format) -> None:
    """Test metrics of the kept checkpoint (as stored on disk) and of the last epoch's model,
    then metrics.json (marks completion), then drop last.pt unless it is to be kept."""
    # in NCHW, as `infer` and `kdlib predict` run a stored network, whatever layout trained it
    test_data = SliceTensors(cache, split["test"], dev)
    best_model = load_model(run_dir, dev, finite=False)  # a diverged run still gets its record
    last_model = last_model.to(memory_format=torch.contiguous_format)
    precision = resolve_precision(cfg.precision, dev)
    result = evaluate_model(best_model, test_data, cfg.threshold, dev, precision=precision,
                            with_recon=cfg.role == "teacher")
    last = evaluate_model(last_model, test_data, cfg.threshold, dev, precision=precision,
                          with_recon=cfg.role == "teacher")
    n_params = models.count_parameters(best_model)
    result.update(
        last_epoch=last, best_epoch=best_epoch, epochs_run=len(history), stopped=stopped,
        early_stopping={"monitor": "val_dice", "patience": cfg.patience, "min_delta": cfg.min_delta,
                        "min_epochs": cfg.min_epochs,
                        **{k: getattr(cfg, k) for k in ("smooth", "warmup") if getattr(cfg, k) != ADDED_LATER[k]}},
        params=n_params,
        feature_info={tap: list(v) for tap, v in best_model.feature_info.items()},
        train_seconds=float(sum(r["seconds"] for r in history)),
        train_memory_format="channels_last" if layout == torch.channels_last else "nchw",
        precision=precision, device=dev.type, train_threads=torch.get_num_threads(),
        synthetic=bool(cache.manifest.get("synthetic", False)))
    atomic_write_json(run_dir / "metrics.json", result)
    if not cfg.keep_last:
        (run_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)
    print(finished_line(cfg, result, history), flush=True)


def finished_line(cfg: RunConfig, metrics: dict[str, Any], history: list[dict[str, Any]] | None = None) -> str:
    """The line a finished run prints (its metrics.json, read back where a worker trained it):
    epochs, why it stopped, the kept epoch, test Dice of the kept checkpoint and of the last
    epoch; with `history`, the validation Dice of every epoch."""
    def dice(block: dict[str, Any] | None) -> float:
        return float(((block or {}).get("pooled") or {}).get("dice", float("nan")))

    line = (f"{cfg.name} (seed {cfg.seed}): {metrics.get('epochs_run')} epochs, stopped at the "
            f"{'patience' if metrics.get('stopped') == 'early' else 'cap'}, best epoch {metrics.get('best_epoch')}, "
            f"test Dice {dice(metrics):.3f} (last epoch {dice(metrics.get('last_epoch')):.3f})")
    if history is not None:
        line += "; val Dice by epoch: " + " ".join(f"{r['val_dice']:.2f}" for r in history)
    return line


def train_seeds(cfg: RunConfig, seeds: list[int], runs_dir: str | Path, **kwargs) -> list[Path]:
    """Several seeds of one configuration (each its own run folder)."""
    return [train(dataclasses.replace(cfg, seed=s), runs_dir, **kwargs) for s in seeds]


def load_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Config and test metrics of every finished run below `runs_dir`."""
    rows = []
    for metrics_path in sorted(Path(runs_dir).glob("*/metrics.json")):
        run_dir = metrics_path.parent
        try:
            result = json.loads(metrics_path.read_text())
        except (OSError, ValueError):
            continue
        # a `{}` or an interrupted write is no result; older records may lack the newer keys
        if not isinstance(result, dict) or not isinstance(result.get("pooled"), dict):
            continue
        config = read_json(run_dir / "config.json")
        RunConfig.from_dict(config, run_dir / "config.json")  # a list, missing keys: one line
        rows.append({"run_dir": str(run_dir), "config": config, "metrics": result})
    return _drop_duplicate_runs(rows)


def record_identity(config: dict[str, Any]) -> str:
    """A run record's identity from its config.json alone: the configuration less what is not
    part of a run's identity, plus the data and split checksums its provenance recorded (what
    `RunConfig.identity` hashes, without needing the cache). Copies of one run folder share it."""
    ident = {k: v for k, v in config.items() if k not in NOT_IDENTITY and k != "provenance"}
    for name, old_value in ADDED_LATER.items():
        if ident.get(name, old_value) == old_value:
            ident.pop(name, None)
    for key in ("cache", "split", "teacher_run"):
        if ident.get(key):
            ident[key] = Path(str(ident[key])).name
    prov = config.get("provenance") if isinstance(config.get("provenance"), dict) else {}
    ident["data_checksum"], ident["split_checksum"] = prov.get("data_checksum"), prov.get("split_checksum")
    return config_hash(ident)


def _drop_duplicate_runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run identity: a copied run folder is counted once (the folder named as
    kdlib names runs, `<slug>-s<seed>-<hash>`, is kept), with a warning naming the copy."""
    named = re.compile(r"-s-?\d+-[0-9a-f]{12}$")
    order = sorted(range(len(rows)), key=lambda i: (not named.search(Path(rows[i]["run_dir"]).name),
                                                    Path(rows[i]["run_dir"]).name))
    kept: dict[str, int] = {}
    for i in order:
        key = record_identity(rows[i]["config"])
        if key in kept:
            warnings.warn(f"{rows[i]['run_dir']} is a copy of run {Path(rows[kept[key]]['run_dir']).name} "
                          "(same configuration, data and split): counted once", KdlibWarning, stacklevel=3)
            continue
        kept[key] = i
    return [rows[i] for i in sorted(kept.values())]


def load_history(run_dir: str | Path):
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "history.csv")


@torch.no_grad()
def infer(run_dir: str | Path, images_uint8: np.ndarray, device: str | None = None,
          batch_size: int = 32, model: torch.nn.Module | None = None,
          tta: bool = False) -> dict[str, np.ndarray]:
    """Run a trained network on uint8 slices (N, S, S): binary `mask` (the run's own
    threshold rule), `prob`, and `recon` (N, S, S, grey) for multi-task teachers.
    Pass `model` (from `load_model`) to skip reloading it for every call. `tta`: the logits
    are the mean over the 8 orientations (`augment.dihedral_mean`; square slices; no recon)."""
    dev = pick_device(device)
    cfg = RunConfig.from_dict(read_json(Path(run_dir) / "config.json"), Path(run_dir) / "config.json")
    model = model if model is not None else load_model(run_dir, dev)
    outputs: dict[str, list[np.ndarray]] = {"mask": [], "prob": [], "recon": []}
    images = torch.from_numpy(np.ascontiguousarray(images_uint8))
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(dev).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
        if tta:
            out = {"logits": dihedral_mean(lambda v: model(v)["logits"].float(), x)}
        else:
            out = model(x.contiguous())
        logits = out["logits"].float()
        outputs["mask"].append(np.asarray(metrics.binarize(logits, cfg.threshold).cpu())[:, 0])
        outputs["prob"].append(torch.sigmoid(logits).cpu().numpy()[:, 0])
        if "recon" in out:
            outputs["recon"].append(out["recon"].float().mean(1).cpu().numpy())
    return {k: np.concatenate(v) for k, v in outputs.items() if v}
