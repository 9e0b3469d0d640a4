"""Segmentation, reconstruction and distillation losses, and the `Distiller` that combines them.

Multi-scale contrastive distillation (thesis section 3.4): student and teacher feature maps
at up to three scales (E encoder, B bottleneck, D decoder) are matched in channels by 1x1
"projector" convs and in size by bilinear resizing, flattened per image and compared with
InfoNCE (instance discrimination inside the batch: positive = same image through the
teacher, negatives = the other images). Optionally a prediction-map distillation (PMD)
term on the logits. Total = w_seg*seg + w_enc*E + w_bn*B + w_dec*D + w_pmd*pmd.

Projection per scale (shapes at 256 input; see original_implementation.md "Feature taps"):

    pair    E                 B                                 D
    T1->S1  teacher 128->32   teacher 1024 ->64, 16x16 -> 64x64  student 16->64
    T1->S2  teacher 128->64   teacher 1024->128, 16x16 -> 64x64  student 32->64
    T2->S1  teacher 256->32   teacher 512 ->64,  16x16 -> 64x64  none (16 vs 16)
    T2->S2  (not used)        teacher 512->128,  16x16 -> 64x64  (not used)

i.e. E and B project the teacher to the student's channels, D projects the student to the
teacher's channels, and equal channels are not projected. A 1x1 conv commutes with bilinear
resizing (the interpolation weights sum to 1), so the teacher map is projected at its own
low resolution and then resized: same result, 16x fewer multiply-adds.

Faithful vs corrected behaviour:
- projector "random" (faithful): a fresh, randomly initialised 1x1 conv at every call, never
  trained (the original created them inside the batch loop). "learned": registered here, so
  the optimiser trains them and checkpoints hold them.
- pmd "faithful": softmax over the ONE logit channel, identically zero (value and gradient);
  "binary": KL between Bernoulli distributions, a working version; "off".
- The per-sample flattening uses the actual batch size (the original used the global batch
  size and broke on a short last batch).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

SCALES = ("E", "B", "D")
TAPS = {"E": "enc", "B": "bottleneck", "D": "dec"}
_HALF = (torch.float16, torch.bfloat16)


def _full(x: torch.Tensor) -> torch.Tensor:
    """Reduced-precision tensors are upcast to float32 for loss arithmetic."""
    return x.float() if x.dtype in _HALF else x


# ----------------------------------------------------------------------------------------
# segmentation and reconstruction

def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over the whole batch flattened (the original's):
    1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth), p = sigmoid(logits)."""
    p = torch.sigmoid(_full(logits)).reshape(-1)
    t = _full(target).to(p.dtype).reshape(-1)
    return 1 - (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


def soft_dice_per_image(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over images of each image's soft Dice loss (same formula as `dice_loss`)."""
    p = torch.sigmoid(_full(logits)).flatten(1)
    t = _full(target).to(p.dtype).flatten(1)
    per = 1 - (2 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return per.mean()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """BCE-with-logits (mean over pixels) + batch-flattened `dice_loss`."""
    z = _full(logits)
    t = _full(target).to(z.dtype)
    return F.binary_cross_entropy_with_logits(z, t) + dice_loss(z, t, smooth)


def recon_mse(recon: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Mean squared error between a reconstruction and its input image."""
    r = _full(recon)
    return F.mse_loss(r, _full(image).to(r.dtype))


# ----------------------------------------------------------------------------------------
# distillation terms

def info_nce(student_vec: torch.Tensor, teacher_vec: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives, one direction, as `info_nce.InfoNCE` (defaults).

    Both inputs (B, D) (maps are flattened per sample). L2-normalised; student rows are the
    queries, teacher rows the keys; logits = cosine similarities (B x B) / temperature;
    cross-entropy with the diagonal as the target, mean over the batch.
    """
    if student_vec.dim() != 2 or student_vec.shape != teacher_vec.shape:
        raise ValueError(f"info_nce needs two (B, D) tensors of one shape, got "
                         f"{tuple(student_vec.shape)} and {tuple(teacher_vec.shape)}")
    q = F.normalize(_full(student_vec), dim=1)
    k = F.normalize(_full(teacher_vec), dim=1).to(q.dtype)
    logits = q @ k.t() / temperature
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device))


def feature_mse(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (projected, resized) feature maps: the MSE ablation."""
    s = _full(student_map)
    return F.mse_loss(s, _full(teacher_map).to(s.dtype))


def pmd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mode: str = "binary",
             T: float = 4.0) -> torch.Tensor:
    """Prediction-map distillation on (B, C, H, W) logits (C = 1 here).

    mode "faithful": F.kl_div(log_softmax(s/T, dim=1), softmax(t/T, dim=1),
        reduction="batchmean") * T^2 as the thesis's equation 3.4 and the original code.
        With one channel, softmax == 1 and log_softmax == 0, so value and gradient are
        exactly zero (kept to reproduce the original's objective).
    mode "binary": KL(teacher || student) between the per-pixel Bernoulli distributions
        p = sigmoid(z/T) and 1 - p, averaged over pixels (and images), times T^2:

            pmd = T^2 * mean_{b,h,w} [ p_t log(p_t/p_s) + (1-p_t) log((1-p_t)/(1-p_s)) ]

        Scale, chosen on purpose: the original's `batchmean` sums over pixels and divides by
        the batch only, i.e. H*W times this value (4096x at 64x64, 65536x at 256x256). Its
        term is identically zero, so no working magnitude exists to copy, and the weights
        (w_pmd 0.1-0.2) were set next to Dice and InfoNCE terms of order 0.1-1. The pixel
        mean keeps PMD on that scale at every resolution (the same w_pmd means the same
        balance at 64x64 and at 256x256, and a one-pixel disagreement weighs the same as in
        Dice's pooled fractions), as pixel-wise distillation losses for segmentation usually
        do; `batchmean` would make PMD's gradient dominate the segmentation loss by 3-5
        orders of magnitude and change with the input size. Multiply by H*W for batchmean.
    """
    s = _full(student_logits)
    t = _full(teacher_logits).to(s.dtype)
    if s.shape != t.shape:
        raise ValueError(f"pmd_loss shapes differ: {tuple(s.shape)} vs {tuple(t.shape)}")
    if mode == "faithful":
        return F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1),
                        reduction="batchmean") * T * T
    if mode == "binary":
        log_ps, log_qs = F.logsigmoid(s / T), F.logsigmoid(-s / T)   # log p_s, log(1-p_s)
        log_pt, log_qt = F.logsigmoid(t / T), F.logsigmoid(-t / T)
        kl = log_pt.exp() * (log_pt - log_ps) + log_qt.exp() * (log_qt - log_qs)
        return kl.mean() * T * T
    raise ValueError(f"pmd_loss mode must be 'faithful' or 'binary', got {mode!r}")


# ----------------------------------------------------------------------------------------
# configuration

_PAIR_DEFAULTS = {
    # (teacher, student): weights and temperature of the original code
    ("T1", "S1"): dict(w_seg=0.4, w_bn=0.2, w_pmd=0.2, w_enc=0.1, w_dec=0.1, temperature=0.4),
    ("T1", "S2"): dict(w_seg=0.4, w_bn=0.2, w_pmd=0.2, w_enc=0.1, w_dec=0.1, temperature=0.1),
    ("T2", "S1"): dict(w_seg=0.5, w_bn=0.2, w_pmd=0.1, w_enc=0.1, w_dec=0.1, temperature=0.4),
    ("T2", "S2"): dict(w_seg=0.5, w_bn=0.3, w_pmd=0.2, w_enc=0.0, w_dec=0.0, temperature=0.4,
                       scales=("B",)),
}
_CHOICES = {"loss": ("infonce", "mse"), "pmd": ("off", "faithful", "binary"),
            "projector": ("learned", "random"), "seg_loss": ("dice", "dice_bce")}
_WEIGHTS = ("w_seg", "w_enc", "w_bn", "w_dec", "w_pmd")


@dataclass(frozen=True)
class KDConfig:
    """What a distilled student optimises. Defaults: the original's T1->S1 setting
    (all three scales, InfoNCE, faithful PMD, random projectors, Dice seg loss).

    scales: subset of ("E", "B", "D"), stored in that order.
    loss: "infonce" | "mse" (the thesis's MSE ablation).
    pmd: "off" | "faithful" (identically zero, as the original) | "binary" (working).
    projector: "learned" (trained with the student) | "random" (fresh every call, original).
    w_*: weights of seg, E, B, D and PMD terms in the total.
    temperature: InfoNCE temperature; pmd_temperature: PMD's T.
    seg_loss: "dice" (original for KD students) | "dice_bce".
    """
    scales: tuple[str, ...] = ("E", "B", "D")
    loss: str = "infonce"
    pmd: str = "faithful"
    projector: str = "random"
    w_seg: float = 0.4
    w_enc: float = 0.1
    w_bn: float = 0.2
    w_dec: float = 0.1
    w_pmd: float = 0.2
    temperature: float = 0.4
    pmd_temperature: float = 4.0
    seg_loss: str = "dice"

    def __post_init__(self):
        scales = self.scales
        if isinstance(scales, str):
            scales = tuple(scales.replace(",", "").replace("+", "").replace(" ", "")) if scales else ()
        try:
            scales = tuple(str(s).upper() for s in scales)
        except TypeError:
            raise ConfigError(f"KDConfig.scales must be a sequence of 'E', 'B', 'D', got {self.scales!r}") from None
        bad = [s for s in scales if s not in SCALES]
        if bad or len(set(scales)) != len(scales):
            raise ConfigError(f"KDConfig.scales {self.scales!r} is invalid",
                              fix="give distinct scales from 'E', 'B', 'D'")
        object.__setattr__(self, "scales", tuple(s for s in SCALES if s in scales))
        for name, options in _CHOICES.items():
            value = getattr(self, name)
            if value not in options:
                raise ConfigError(f"KDConfig.{name} = {value!r} is invalid",
                                  fix=f"use one of {', '.join(options)}")
        for name in _WEIGHTS + ("temperature", "pmd_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"KDConfig.{name} = {value!r} must be a finite number")
            if value < 0 or (value == 0 and name in ("temperature", "pmd_temperature")):
                raise ConfigError(f"KDConfig.{name} = {value!r} must be "
                                  f"{'positive' if 'temperature' in name else 'non-negative'}")
            object.__setattr__(self, name, float(value))

    def to_dict(self) -> dict:
        """JSON-serialisable (scales as a list); `from_dict` inverts it."""
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "KDConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown KDConfig field(s) {', '.join(unknown)}",
                              fix=f"valid fields: {', '.join(sorted(known))}")
        d = dict(d)
        if "scales" in d and not isinstance(d["scales"], str):
            d["scales"] = tuple(d["scales"])
        return cls(**d)


def _pair(teacher: str, student: str) -> tuple[str, str]:
    from .models import canonical_name

    t, s = canonical_name(teacher), canonical_name(student)
    if t == "unet":        # the single-task U-Net has T1's taps: use T1's defaults
        t = "T1"
    if (t, s) not in _PAIR_DEFAULTS:
        raise ConfigError(f"no distillation pair {teacher}->{student}",
                          fix="teacher must be T1, T2 or unet and student S1 or S2")
    return t, s


def _check_pair_scales(t: str, s: str, scales: tuple[str, ...]) -> None:
    if (t, s) == ("T2", "S2") and set(scales) - {"B"}:
        raise ConfigError(f"T2->S2 distils the bottleneck only; scales {list(scales)} requested",
                          fix="use scales=('B',) for T2->S2 (the original defines no E or D taps there)")


def kd_config_for(teacher: str, student: str, **overrides) -> KDConfig:
    """The original's KD settings for a teacher->student pair, with overrides.

    Weights: T1->S1/S2 seg 0.4, B 0.2, PMD 0.2, E 0.1, D 0.1; T2->S1 seg 0.5, B 0.2, PMD 0.1,
    E 0.1, D 0.1; T2->S2 seg 0.5, B 0.3, PMD 0.2 (bottleneck only). InfoNCE temperatures:
    T1->S1 0.4, T1->S2 0.1, T2->S1 0.4, T2->S2 0.4. Seg loss Dice. Faithful PMD and random
    projectors unless overridden (e.g. pmd="binary", projector="learned").
    """
    t, s = _pair(teacher, student)
    base = dict(_PAIR_DEFAULTS[(t, s)])
    known = {f.name for f in fields(KDConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown KDConfig field(s) {', '.join(unknown)}",
                          fix=f"valid fields: {', '.join(sorted(known))}")
    base.update(overrides)
    cfg = KDConfig(**base)
    _check_pair_scales(t, s, cfg.scales)
    return cfg


# ----------------------------------------------------------------------------------------
# the distiller

def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Distiller(nn.Module):
    """Computes a distilled student's loss terms from student and teacher outputs.

    Args:
        cfg: the `KDConfig`.
        teacher_info, student_info: the models' `feature_info` dicts (tap -> (channels,
            stride)); they fix the projectors' shapes.
        teacher_name, student_name: optional, for the T2->S2 scale check and messages.

    forward(student_out, teacher_out, target) -> dict of scalar tensors: "total" and each
    term in use ("seg", "E", "B", "D", "pmd"), the terms unweighted. `teacher_out` may hold
    detached float16/bfloat16 tensors from a cache (cast to the student's dtype and device);
    only the taps in use (and "logits" when PMD is on) are read from it. Any batch size.
    With projector="learned" the 1x1 convs are sub-modules (`self.projectors`): give
    `distiller.parameters()` to the optimiser and keep `state_dict()` in checkpoints.
    With projector="random", pass `generator` (a CPU `torch.Generator` seeded from the run's
    seed, its state checkpointed) so the fresh projectors depend on the run's seed only.
    """

    def __init__(self, cfg: KDConfig, teacher_info: dict, student_info: dict,
                 teacher_name: str | None = None, student_name: str | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(cfg, KDConfig):
            raise ConfigError(f"Distiller needs a KDConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.generator = generator  # CPU generator of the random projectors (None: global RNG)
        self.teacher_name, self.student_name = teacher_name, student_name
        if teacher_name is not None and student_name is not None:
            _check_pair_scales(*_pair(teacher_name, student_name), cfg.scales)
        # per scale: (side projected, in channels, out channels) or None when channels match
        self.plan: dict[str, tuple[str, int, int] | None] = {}
        for scale in cfg.scales:
            tap = TAPS[scale]
            if tap not in teacher_info or tap not in student_info:
                raise ConfigError(f"scale {scale} needs the {tap!r} tap in both models' feature_info")
            ct, cs = int(teacher_info[tap][0]), int(student_info[tap][0])
            if ct == cs:
                self.plan[scale] = None
            elif scale == "D":
                self.plan[scale] = ("student", cs, ct)
            else:
                self.plan[scale] = ("teacher", ct, cs)
        self.projectors = nn.ModuleDict()
        if cfg.projector == "learned":
            for scale, p in self.plan.items():
                if p is not None:
                    self.projectors[scale] = nn.Conv2d(p[1], p[2], 1)

    def extra_repr(self) -> str:
        plan = ", ".join(f"{k}: {'none' if v is None else f'{v[0]} {v[1]}->{v[2]}'}"
                         for k, v in self.plan.items())
        return f"cfg={self.cfg}, plan={{{plan}}}"

    def _projector(self, scale: str, like: torch.Tensor):
        if self.cfg.projector == "learned":
            return self.projectors[scale]
        _, cin, cout = self.plan[scale]
        # faithful: a fresh, never-trained 1x1 conv at every call, drawn as nn.Conv2d's
        # default init does (weight and bias ~ U(-1/sqrt(cin), 1/sqrt(cin))), but from the
        # run's own generator when one is given, so that the draws do not depend on what
        # else consumed the global RNG before (e.g. loading a teacher that was not cached)
        bound = 1.0 / math.sqrt(cin)
        draw = torch.rand(cout * cin + cout, generator=self.generator, dtype=torch.float32)
        draw = (draw * 2 - 1) * bound
        weight = draw[: cout * cin].reshape(cout, cin, 1, 1).to(device=like.device, dtype=like.dtype)
        bias = draw[cout * cin:].to(device=like.device, dtype=like.dtype)
        return lambda x: F.conv2d(x, weight, bias)

    def match(self, scale: str, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project (1x1 conv) and resize (bilinear to the student's size) one scale's maps."""
        plan = self.plan[scale]
        if plan is not None:
            if plan[0] == "teacher":
                t = self._projector(scale, s)(t)       # at the teacher's own resolution
            else:
                s = self._projector(scale, s)(s)
        return s, _resize(t, s.shape[-2:])

    def forward(self, student_out: dict, teacher_out: dict, target: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        logits = student_out["logits"]
        dtype, device = logits.dtype, logits.device
        terms: dict[str, torch.Tensor] = {}
        seg = dice_loss if cfg.seg_loss == "dice" else dice_bce_loss
        terms["seg"] = seg(logits, target.to(device))
        for scale in cfg.scales:
            tap = TAPS[scale]
            if tap not in student_out or tap not in teacher_out:
                raise KeyError(f"scale {scale} needs the {tap!r} output of both student and teacher")
            s = student_out[tap]
            t = teacher_out[tap].detach().to(device=device, dtype=s.dtype)
            s, t = self.match(scale, s, t)
            if cfg.loss == "infonce":
                n = s.shape[0]
                terms[scale] = info_nce(s.reshape(n, -1), t.reshape(n, -1), cfg.temperature)
            else:
                terms[scale] = feature_mse(s, t)
        if cfg.pmd != "off":
            if "logits" not in teacher_out:
                raise KeyError("PMD needs the teacher's 'logits'")
            t_logits = teacher_out["logits"].detach().to(device=device, dtype=dtype)
            terms["pmd"] = pmd_loss(logits, t_logits, cfg.pmd, cfg.pmd_temperature)
        weight = {"seg": cfg.w_seg, "E": cfg.w_enc, "B": cfg.w_bn, "D": cfg.w_dec, "pmd": cfg.w_pmd}
        total = sum(weight[k] * v for k, v in terms.items())
        return {"total": total, **terms}
