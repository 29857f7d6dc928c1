"""Differentiable Siamese augmentation (DSA), vectorised over samples and over parameter draws.

PROTOCOL.md section 3: each draw picks ONE of the groups color / crop / cutout / flip / scale / rotate uniformly at
random and applies it. A draw is shared by every sample mapped to it (``groups``): in Siamese mode one draw per class,
used by that class's real and synthetic images; in training mode one draw per sample.

All four geometric groups are affine maps, so a whole batch is warped by ONE ``grid_sample`` whose per-sample matrix is
the identity for samples whose draw picked a non-geometric group. Colour and cutout are per-sample elementwise ops whose
parameters are neutral (add 0, scale 1, mask 1) where not picked. Every op is differentiable in the images; no Python
branch depends on the draw, so there is no host sync and a batch of any mix of draws is one call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import DMError

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"

# Parameters of the paper's augmentation (PROTOCOL.md section 3).
BRIGHTNESS = 1.0
CROP_FRACTION = 0.125
CUTOUT_FRACTION = 0.5
SCALE = 1.2
ROTATE_DEGREES = 15.0


@dataclass(frozen=True)
class AugmentParams:
    """One row per draw. ``op`` indexes OPS; ``u`` holds the uniforms every op reads its parameters from."""

    op: torch.Tensor  # (G,) long
    u: torch.Tensor  # (G, 11) float in [0, 1)

    def take(self, groups: torch.Tensor | slice) -> "AugmentParams":
        return AugmentParams(self.op[groups], self.u[groups])


def parse_strategy(strategy: str) -> torch.Tensor:
    names = [s for s in strategy.split("_") if s]
    unknown = [s for s in names if s not in OPS]
    if unknown or not names:
        raise DMError(f"unknown augmentation {strategy!r}: use ops from {', '.join(OPS)} joined by '_'")
    return torch.tensor([OPS.index(s) for s in names], dtype=torch.long)


def sample_params(num_draws: int, generator: torch.Generator, device: torch.device,
                  strategy: str = DEFAULT_STRATEGY) -> AugmentParams:
    """Draw ``num_draws`` independent augmentations (two RNG calls, whatever their number)."""
    allowed = parse_strategy(strategy).to(device)
    pick = torch.randint(len(allowed), (num_draws,), generator=generator, device=device)
    u = torch.rand(num_draws, 11, generator=generator, device=device)
    return AugmentParams(allowed[pick], u)


def apply(x: torch.Tensor, params: AugmentParams, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Augment ``x`` (N, C, H, W); sample i uses draw ``groups[i]`` (draw i when ``groups`` is None)."""
    p = params if groups is None else params.take(groups)
    n, _, height, width = x.shape
    if p.op.shape[0] != n:
        raise ValueError(f"{p.op.shape[0]} augmentation draws for {n} images")
    op, u = p.op, p.u.to(x.dtype)

    def picked(name: str) -> torch.Tensor:
        return (op == OPS.index(name)).to(x.dtype)

    # colour: brightness, then saturation around the per-pixel channel mean, then contrast around the image mean.
    color = picked("color").view(n, 1, 1, 1)
    x = x + color * (u[:, 0].view(n, 1, 1, 1) - 0.5) * BRIGHTNESS
    saturation = 1 + color * (u[:, 1].view(n, 1, 1, 1) * 2 - 1)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * saturation + mean
    contrast = 1 + color * (u[:, 2].view(n, 1, 1, 1) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean

    # geometry: one affine warp per sample (identity where no geometric op was picked).
    x = F.grid_sample(x, F.affine_grid(_affine(op, u, height, width), list(x.shape), align_corners=False),
                      mode="bilinear", padding_mode="zeros", align_corners=False)

    # cutout: zero a square of half the image size centred at a random pixel.
    size_h, size_w = int(height * CUTOUT_FRACTION + 0.5), int(width * CUTOUT_FRACTION + 0.5)
    top = (u[:, 5] * height).floor() - size_h // 2
    left = (u[:, 6] * width).floor() - size_w // 2
    rows = torch.arange(height, device=x.device, dtype=x.dtype)
    cols = torch.arange(width, device=x.device, dtype=x.dtype)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size_h)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size_w)
    hole = (in_rows[:, :, None] & in_cols[:, None, :]).to(x.dtype).unsqueeze(1)
    return x * (1 - picked("cutout").view(n, 1, 1, 1) * hole)


def _affine(op: torch.Tensor, u: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-sample 2x3 matrices in grid_sample's normalised coordinates (one pixel = 2 / size)."""
    n = op.shape[0]
    theta = torch.zeros(n, 2, 3, device=u.device, dtype=torch.float32)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    u = u.float()

    def where(name: str, value: torch.Tensor, default: float) -> torch.Tensor:
        return torch.where(op == OPS.index(name), value, torch.full_like(value, default))

    # crop: integer translation by up to 12.5% of the size; integer shifts keep pixel centres on pixel centres.
    reach_w, reach_h = int(width * CROP_FRACTION + 0.5), int(height * CROP_FRACTION + 0.5)
    shift_x = (u[:, 3] * (2 * reach_w + 1)).floor() - reach_w
    shift_y = (u[:, 4] * (2 * reach_h + 1)).floor() - reach_h
    theta[:, 0, 2] = where("crop", shift_x * 2 / width, 0.0)
    theta[:, 1, 2] = where("crop", shift_y * 2 / height, 0.0)
    # flip: horizontal, with probability 0.5.
    flip = torch.where(u[:, 7] < 0.5, -1.0, 1.0)
    sx = where("flip", flip, 1.0) * where("scale", u[:, 8] * (SCALE - 1 / SCALE) + 1 / SCALE, 1.0)
    sy = where("scale", u[:, 9] * (SCALE - 1 / SCALE) + 1 / SCALE, 1.0)
    # rotate: angle uniform in [-15, 15] degrees.
    angle = where("rotate", (u[:, 10] - 0.5) * 2 * math.radians(ROTATE_DEGREES), 0.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta[:, 0, 0] = sx * cos
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin
    theta[:, 1, 1] = sy * cos
    return theta


class DiffAugment:
    """A seeded augmenter: ``draw(n, device)`` gives n draws to share (Siamese use, through ``apply``'s groups);
    calling it on a batch augments every sample with its own draw (training)."""

    def __init__(self, generator: torch.Generator, strategy: str = DEFAULT_STRATEGY):
        parse_strategy(strategy)
        self.generator = generator
        self.strategy = strategy

    def draw(self, num_draws: int, device: torch.device) -> AugmentParams:
        return sample_params(num_draws, self.generator, device, self.strategy)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply(x, self.draw(x.shape[0], x.device))
