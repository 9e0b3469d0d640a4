"""Training engine: teachers, baseline students and distilled students, one code path.

Read it top-down:
1. `RunConfig` is the full description of one training run; its hash names the run folder
   `<runs_dir>/<slug>-<hash>/`, so the same configuration always lands in the same place.
2. `train(cfg, runs_dir)` skips a finished run (`metrics.json` exists), resumes an
   interrupted one from `checkpoints/last.pt`, and otherwise trains from scratch. Every
   file is written atomically; `metrics.json` is written last and marks completion.
3. Distilled students never pay the frozen teacher's forward pass per step: the teacher's
   taps on the (unaugmented, fixed) student training set are computed once per process
   (`teacher_outputs`) and reused by every epoch and every configuration.

On the CPU a run is deterministic for a seed, and a resumed run ends with the same
metrics as an uninterrupted one: batch order comes from a per-epoch generator, and the
global RNG state (used by the faithful random projectors) is checkpointed.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import losses, metrics, models
from .data import SliceCache, load_split
from .errors import ConfigError, KdlibError
from .io import atomic_path, atomic_write_json, atomic_write_text, config_hash, read_json, sha256_file
from .progress import bar

TAP_OF_SCALE = {"E": "enc", "B": "bottleneck", "D": "dec"}


@dataclass
class RunConfig:
    """Everything that determines the outcome of one training run."""

    name: str                      # human label, e.g. "T1" or "KD(T1,S1) B+PMD"
    model: str                     # S1 | S2 | unet | T1 | T2
    role: str                      # teacher | baseline | kd
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
    epochs: int = 200
    seed: int = 42
    teacher_run: str | None = None  # run folder of the frozen teacher (kd only)
    kd: dict[str, Any] | None = None  # losses.KDConfig.to_dict() (kd only)
    threshold: str = "prob"        # prob (sigmoid > 0.5) | logit (faithful: logit > 0.5)
    selection: str = "val"         # val | test (faithful: the original selected on the test set)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"        # fp32 | bf16 (autocast)
    setting: str = "corrected"     # corrected | faithful: which reading of the thesis

    def __post_init__(self) -> None:
        checks = {
            "role": ("teacher", "baseline", "kd"), "loss": ("dice", "dice_bce"),
            "optimizer": ("adamw", "rmsprop"), "threshold": ("prob", "logit"),
            "selection": ("val", "test"), "precision": ("fp32", "bf16"),
            "setting": ("corrected", "faithful"), "train_subset": ("train", "student_train"),
        }
        for key, allowed in checks.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not one of {allowed}", self.name)
        if self.role == "kd" and (self.teacher_run is None or self.kd is None):
            raise ConfigError("a kd run needs teacher_run and kd", self.name)
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("batch_size and epochs must be >= 1", self.name)
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def identity(self) -> dict[str, Any]:
        """What the run folder's hash covers: the config plus the content of its inputs."""
        ident = self.to_dict()
        ident["cache"] = read_json(Path(self.cache) / "manifest.json").get("fingerprint") or \
            sha256_file(Path(self.cache) / "manifest.json")
        ident["split"] = sha256_file(self.split)
        if self.teacher_run:
            ident["teacher_run"] = Path(self.teacher_run).name
        return ident

    def run_dir(self, runs_dir: str | Path) -> Path:
        slug = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")[:40]
        return Path(runs_dir) / f"{slug}-s{self.seed}-{config_hash(self.identity())}"


# ---------------------------------------------------------------------------------------
# Configurations as the original trained them


def teacher_config(model: str, cache: str | Path, split: str | Path, **overrides) -> RunConfig:
    """Teachers: Dice+BCE (+0.2 recon MSE for T1/T2), AdamW 1e-4, betas (0.9, 0.95), wd 0.05, batch 8."""
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
    teacher = read_json(Path(teacher_run) / "config.json")["model"]
    base = dict(name=name or f"KD({teacher},{student})", model=student, role="kd", cache=str(cache),
                split=str(split), train_subset="student_train", teacher_run=str(teacher_run),
                kd=kd.to_dict(), optimizer="rmsprop", lr=1e-2, weight_decay=0.0, batch_size=20,
                epochs=120, loss="dice")
    base.update(overrides)
    return RunConfig(**base)


# ---------------------------------------------------------------------------------------
# Devices, seeds, precision


def pick_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------
# Data as tensors (no per-epoch decoding: the cache is already uint8 arrays in memory)


class SliceTensors:
    """The cache's slices for a list of indices, as uint8 tensors, batched on demand."""

    def __init__(self, cache: SliceCache, indices: list[int], device: torch.device):
        order = np.asarray(indices, dtype=np.int64)
        self.indices = order
        self.images = torch.from_numpy(np.ascontiguousarray(cache.images[order])).to(device)
        self.masks = torch.from_numpy(np.ascontiguousarray(cache.masks[order])).to(device)
        self.case_ids = [str(c) for c in np.asarray(cache.case_ids)[order]]

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[rows].float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
        mask = self.masks[rows].float().div_(255.0).unsqueeze(1)
        return image.contiguous(), mask

    def batches(self, batch_size: int, generator: torch.Generator | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            image, mask = self.batch(rows.to(self.images.device))
            yield rows, image, mask


# ---------------------------------------------------------------------------------------
# The frozen teacher: loaded once, its outputs on the student training set computed once

_TEACHER_OUTPUTS: dict[tuple, dict[str, torch.Tensor]] = {}
ALL_TEACHER_TAPS = ("enc", "bottleneck", "dec", "logits")


def load_model(run_dir: str | Path, device: torch.device, which: str = "best") -> torch.nn.Module:
    """Rebuild a trained network from its run folder (config.json + checkpoints/<which>.pt)."""
    run_dir = Path(run_dir)
    cfg = RunConfig.from_dict(read_json(run_dir / "config.json"))
    ckpt_path = run_dir / "checkpoints" / f"{which}.pt"
    if not ckpt_path.exists():
        raise KdlibError("no checkpoint", ckpt_path, "train the run first (it may be unfinished)")
    model = models.build(cfg.model, **cfg.model_kwargs)
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def teacher_outputs(teacher_run: str | Path, data: SliceTensors, taps: tuple[str, ...],
                    device: torch.device, batch_size: int = 16, dtype: torch.dtype | None = None
                    ) -> dict[str, torch.Tensor]:
    """The teacher's `taps` for every slice of `data`, computed once per process and reused.

    Stored on `device` in `dtype` (float32 on the CPU, bfloat16 on CUDA by default) so a KD
    step only indexes rows; a 1x1 projector is applied later at the teacher's own resolution.
    """
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    # every distillation tap is kept, whatever this configuration needs, so that all the
    # configurations of a grid (E, B, D, PMD in any combination) share one teacher pass
    taps = tuple(sorted(set(taps) | set(ALL_TEACHER_TAPS)))
    key = (str(Path(teacher_run).resolve()), tuple(data.indices.tolist()), taps,
           str(device), str(dtype), data.images.shape[-1])
    if key in _TEACHER_OUTPUTS:
        return _TEACHER_OUTPUTS[key]
    teacher = load_model(teacher_run, device)
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    stored: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
    with torch.inference_mode():
        for start in bar(range(0, len(data), batch_size), desc="teacher outputs (once)", leave=False):
            image, _ = data.batch(slice(start, start + batch_size))
            with autocast(device, "bf16" if device.type == "cuda" else "fp32"):
                out = teacher(image)
            for tap in taps:
                stored[tap].append(out[tap].to(dtype))
    result = {tap: torch.cat(chunks) for tap, chunks in stored.items()}
    del teacher
    _TEACHER_OUTPUTS.clear()  # keep one teacher's outputs at a time: memory stays bounded
    _TEACHER_OUTPUTS[key] = result
    return result


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


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, data: SliceTensors, threshold: str,
                   device: torch.device, batch_size: int = 32, precision: str = "fp32",
                   with_recon: bool = False, seg_loss: str = "dice_bce") -> dict[str, Any]:
    """Loss and segmentation metrics (pooled, per image, per volume) of `model` on `data`."""
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


def _save_checkpoint(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "metrics.json").exists()


def train(cfg: RunConfig, runs_dir: str | Path, device: str | None = None,
          stop_after_epoch: int | None = None, progress: bool = True) -> Path:
    """Train `cfg` (or skip it if finished, or resume it) and return its run folder.

    `stop_after_epoch` simulates an interruption (used by the resume test).
    """
    run_dir = cfg.run_dir(runs_dir)
    if is_finished(run_dir):
        return run_dir
    dev = pick_device(device)
    config_path = run_dir / "config.json"
    if config_path.exists():
        if read_json(config_path) != json.loads(json.dumps(cfg.to_dict())):
            raise KdlibError("run folder holds a different configuration", run_dir,
                             "delete the folder or change the runs directory")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(config_path, cfg.to_dict())
    torch.use_deterministic_algorithms(dev.type == "cpu", warn_only=True)
    seed_everything(cfg.seed)

    cache = SliceCache.load(cfg.cache)
    split = load_split(cfg.split)
    select_key = "test" if cfg.selection == "test" else "val"
    train_data = SliceTensors(cache, split[cfg.train_subset], dev)
    select_data = SliceTensors(cache, split[select_key], dev)
    if len(train_data) == 0 or len(select_data) == 0:
        raise KdlibError(f"empty {cfg.train_subset} or {select_key} set", cfg.split,
                         "use more data or another split")

    model = models.build(cfg.model, **cfg.model_kwargs).to(dev)
    if dev.type == "cuda" and cfg.precision == "bf16":
        model = model.to(memory_format=torch.channels_last)  # the fast path for bf16 convs on GPUs
    distiller, cached_teacher = None, None
    if cfg.role == "kd":
        kd = losses.KDConfig.from_dict(cfg.kd)
        if not is_finished(cfg.teacher_run):
            raise KdlibError("the teacher run is not finished", cfg.teacher_run, "train the teacher first")
        teacher_info = {tap: tuple(v) for tap, v in
                        read_json(Path(cfg.teacher_run) / "metrics.json")["feature_info"].items()}
        distiller = losses.Distiller(kd, teacher_info, model.feature_info).to(dev)
        taps = _kd_taps(kd)
        cached_teacher = {tap: t for tap, t in teacher_outputs(cfg.teacher_run, train_data, taps, dev).items()
                          if tap in taps}
    params = list(model.parameters()) + (list(distiller.parameters()) if distiller else [])
    optimizer = _make_optimizer(cfg, params)

    history: list[dict[str, Any]] = []
    start_epoch, best = 0, math.inf
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    if last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        if distiller is not None:
            distiller.load_state_dict(state["distiller"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]

    epochs = bar(range(start_epoch, cfg.epochs), desc=cfg.name, total=cfg.epochs,
                 initial=start_epoch, disable=not progress)
    for epoch in epochs:
        started = time.time()
        model.train()
        sums: dict[str, float] = {}
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        for rows, image, mask in train_data.batches(cfg.batch_size, generator):
            with autocast(dev, cfg.precision):
                out = model(image)
                if distiller is not None:
                    teacher_out = {tap: t[rows.to(t.device)] for tap, t in cached_teacher.items()}
                    terms = distiller(out, teacher_out, mask)
                else:
                    terms = _plain_objective(cfg, out, image, mask)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            optimizer.step()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach()) * image.shape[0]
        row: dict[str, Any] = {"epoch": epoch + 1}
        row.update({f"train_{k}": v / len(train_data) for k, v in sums.items()})
        val = evaluate_model(model, select_data, cfg.threshold, dev, precision=cfg.precision,
                             with_recon=cfg.role == "teacher",
                             seg_loss="dice" if cfg.role == "kd" else cfg.loss)
        # selection criterion as the original: teachers seg+recon loss, students seg loss
        criterion = val["loss"] + val.get("recon_loss", 0.0)
        row.update({"val_loss": val["loss"], "val_dice": val["pooled"]["dice"],
                    "val_iou": val["pooled"]["iou"], "val_criterion": criterion,
                    "seconds": time.time() - started})
        if "psnr" in val:
            row.update(val_recon_loss=val["recon_loss"], val_psnr=val["psnr"])
        history.append(row)
        improved = criterion < best
        if improved:
            best = criterion
            _save_checkpoint(best_path, model=model.state_dict(), epoch=epoch,
                             distiller=distiller.state_dict() if distiller else None)
        _save_checkpoint(last_path, model=model.state_dict(), epoch=epoch, best=best,
                         optimizer=optimizer.state_dict(), torch_rng=torch.get_rng_state(),
                         distiller=distiller.state_dict() if distiller else None, history=history)
        _write_history(run_dir / "history.csv", history)
        if hasattr(epochs, "set_postfix"):
            epochs.set_postfix(loss=f"{row.get('train_total', 0):.3f}", val_dice=f"{row['val_dice']:.3f}")
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < cfg.epochs:
            raise KeyboardInterrupt(f"stopped after epoch {epoch + 1} (simulated interruption)")
    if hasattr(epochs, "close"):
        epochs.close()

    best_model = load_model(run_dir, dev)
    test = evaluate_model(best_model, SliceTensors(cache, split["test"], dev), cfg.threshold, dev,
                          precision=cfg.precision, with_recon=cfg.role == "teacher")
    test["best_epoch"] = int(torch.load(best_path, map_location="cpu", weights_only=False)["epoch"]) + 1
    test["params"] = models.count_parameters(best_model)
    test["feature_info"] = {tap: list(v) for tap, v in best_model.feature_info.items()}
    test["train_seconds"] = float(sum(r["seconds"] for r in history))
    test["synthetic"] = bool(cache.manifest.get("synthetic", False))
    atomic_write_json(run_dir / "metrics.json", test)
    return run_dir


def train_seeds(cfg: RunConfig, seeds: list[int], runs_dir: str | Path, **kwargs) -> list[Path]:
    """Several seeds of one configuration (each its own run folder)."""
    return [train(dataclasses.replace(cfg, seed=s), runs_dir, **kwargs) for s in seeds]


def load_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Config and test metrics of every finished run below `runs_dir`."""
    rows = []
    for metrics_path in sorted(Path(runs_dir).glob("*/metrics.json")):
        run_dir = metrics_path.parent
        rows.append({"run_dir": str(run_dir), "config": read_json(run_dir / "config.json"),
                     "metrics": read_json(metrics_path)})
    return rows


def load_history(run_dir: str | Path):
    import pandas as pd

    return pd.read_csv(Path(run_dir) / "history.csv")


@torch.no_grad()
def infer(run_dir: str | Path, images_uint8: np.ndarray, device: str | None = None,
          batch_size: int = 32, model: torch.nn.Module | None = None) -> dict[str, np.ndarray]:
    """Run a trained network on uint8 slices (N, S, S): binary `mask` (the run's own
    threshold rule), `prob`, and `recon` (N, S, S, grey) for multi-task teachers.
    Pass `model` (from `load_model`) to skip reloading it for every call."""
    dev = pick_device(device)
    cfg = RunConfig.from_dict(read_json(Path(run_dir) / "config.json"))
    model = model if model is not None else load_model(run_dir, dev)
    outputs: dict[str, list[np.ndarray]] = {"mask": [], "prob": [], "recon": []}
    images = torch.from_numpy(np.ascontiguousarray(images_uint8))
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(dev).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
        out = model(x.contiguous())
        logits = out["logits"].float()
        outputs["mask"].append(np.asarray(metrics.binarize(logits, cfg.threshold).cpu())[:, 0])
        outputs["prob"].append(torch.sigmoid(logits).cpu().numpy()[:, 0])
        if "recon" in out:
            outputs["recon"].append(out["recon"].float().mean(1).cpu().numpy())
    return {k: np.concatenate(v) for k, v in outputs.items() if v}
