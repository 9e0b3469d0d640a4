"""Training-time augmentation for students meant for other scanners (the release students).

An option of the corrected setting only (`RunConfig.augment`): the faithful setting and every
claim's run train on the slices as given, as the thesis did. One policy, applied per image on
the device the batch lives on, from a generator of its own (so a seed gives the same draws
whatever else the run draws, and a run without augmentation draws nothing):

- **orientation**: one of the 8 rotations by 90 degrees x flips, uniformly. 2D slices carry no
  orientation, so a model that has seen all 8 need not be told which one a user's PNG is in;
- **scale and small rotation**: zoom by 0.85-1.15 and turn by up to 15 degrees (bilinear for
  the image, the mask resampled the same way and thresholded at 0.5; outside the slice is 0,
  i.e. the bottom of the HU window, as air);
- **intensity and contrast**: contrast x0.8-1.2 about the image's mean, brightness +-0.1 (of
  the 0..1 range), clipped to 0..1: another scanner's noise and calibration, roughly.

A distilled run augments with the part of the policy its cached teacher can follow
(`kd_augment_batch`): the teacher's outputs are computed once, for each of the 8 orientations
of every training slice (`train.teacher_outputs(..., orientations=True)`: 8 times the memory of
the plain cache), so the student's orientation draw picks the teacher outputs of that same
orientation; the intensity jitter is the student's alone (the teacher saw the clean slice, as
a teacher whose outputs are the target should); zoom and small rotations are left out, since
no finite cache can follow them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE = (0.85, 1.15)
MAX_DEGREES = 15.0
CONTRAST = (0.8, 1.2)
BRIGHTNESS = 0.1


def dihedral(x: torch.Tensor, op: int) -> torch.Tensor:
    """One of the 8 orientations of (..., H, W): op // 2 quarter turns counter-clockwise, then
    a left-right flip when op is odd (op 0 is the identity)."""
    if not 0 <= op < 8:
        raise ValueError(f"op must be 0..7, got {op}")
    out = torch.rot90(x, op // 2, dims=(-2, -1))
    return torch.flip(out, dims=(-1,)) if op % 2 else out


def undo_dihedral(x: torch.Tensor, op: int) -> torch.Tensor:
    """The inverse of `dihedral(x, op)`."""
    if not 0 <= op < 8:
        raise ValueError(f"op must be 0..7, got {op}")
    out = torch.flip(x, dims=(-1,)) if op % 2 else x
    return torch.rot90(out, -(op // 2), dims=(-2, -1))


def dihedral_mean(predict, x: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation over the 8 orientations: the mean of `predict` (a map from
    (N, C, H, W) to (N, K, H, W)) on each orientation of square `x`, each turned back. The 8
    views of a turned image are the same 8 views in another order, so the result is
    orientation-equivariant up to the rounding of the sum's order: the orientation a 2D slice
    comes in stops mattering, at 8 forward passes."""
    total = None
    for op in range(8):
        out = undo_dihedral(predict(dihedral(x, op).contiguous()), op)
        total = out if total is None else total + out
    return total / 8.0


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * (high - low) + low).to(device)


def _oriented(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator):
    """The grey channel and the mask of a batch, each image in an orientation drawn uniformly
    from the 8; also the ops drawn and the image's memory format and channel count."""
    n, channels, height, width = image.shape
    if height != width:
        raise ValueError("augmentation needs square slices (quarter turns keep the shape)")
    memory_format = torch.channels_last if image.is_contiguous(memory_format=torch.channels_last) \
        and not image.is_contiguous() else torch.contiguous_format
    grey, mask = image[:, :1].float(), mask.float()
    ops = torch.randint(0, 8, (n,), generator=generator).tolist()
    grey = torch.stack([dihedral(g, op) for g, op in zip(grey, ops)])
    mask = torch.stack([dihedral(m, op) for m, op in zip(mask, ops)])
    return grey, mask, ops, memory_format, channels


def _jittered(grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Contrast about each image's mean and brightness, clipped to 0..1."""
    n = grey.shape[0]
    contrast = _uniform(n, *CONTRAST, generator, grey.device).view(n, 1, 1, 1)
    brightness = _uniform(n, -BRIGHTNESS, BRIGHTNESS, generator, grey.device).view(n, 1, 1, 1)
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    return ((grey - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)


def kd_augment_batch(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A distilled run's augmentation: each image and mask in one of the 8 orientations and
    the intensity jitter, no zoom or rotation by small angles. Returns (image, mask, ops): `ops`
    (B,) says which orientation each image took, to pick the teacher's outputs for it."""
    grey, mask, ops, memory_format, channels = _oriented(image, mask, generator)
    grey = _jittered(grey, generator)
    out = grey.to(image.dtype).expand(-1, channels, -1, -1).contiguous(memory_format=memory_format)
    return out, mask, torch.tensor(ops, dtype=torch.long)


def augment_batch(image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(image (B, C, H, W) in 0..1 with C equal channels, mask (B, 1, H, W) in {0, 1}) ->
    both augmented alike; the image keeps its memory format. Draws come from `generator`
    (a CPU generator), so the result does not depend on the device."""
    grey, mask, ops, memory_format, channels = _oriented(image, mask, generator)
    n = grey.shape[0]

    scale = _uniform(n, *SCALE, generator, image.device)
    angle = _uniform(n, -MAX_DEGREES, MAX_DEGREES, generator, image.device) * (math.pi / 180.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(grey.shape), align_corners=False)
    grey = F.grid_sample(grey, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = (F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False) > 0.5).float()

    grey = _jittered(grey, generator)
    out = grey.to(image.dtype).expand(-1, channels, -1, -1).contiguous(memory_format=memory_format)
    return out, mask
