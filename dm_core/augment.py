"""Differentiable Siamese augmentation (DSA), vectorised over samples and over parameter draws.

docs/method.md section 3: each draw picks ONE of the groups color / crop / cutout / flip / scale / rotate uniformly at
random and applies it. Two ways of drawing, as in the reference code:

- Siamese mode (condensation): one draw (group and parameters) per class, shared by that class's real and synthetic
  images. When the groups were drawn on the host (``sample_params(..., host=generator)``, or any draw on the CPU),
  only the groups drawn are computed, each on the samples that drew it: ``apply_runs`` for samples grouped by draw
  (DM sorts its classes by group so that one call covers every class of a group), ``apply`` for any grouping. Draws
  that live on a GPU take the branchless path instead: the four geometric groups folded into ONE per-sample affine
  ``grid_sample`` (identity where a non-geometric group was picked), colour and cutout as per-sample elementwise ops
  with neutral parameters where not picked, so no Python branch depends on a draw and nothing waits for the device.
- Training mode (evaluation, DSA's inner loop; ``DiffAugment``): ONE group per call, i.e. per mini-batch, with that
  group's parameters drawn independently per sample. The group is drawn from a host generator, so only the op that
  was drawn is computed (``apply_op``), still without a host sync.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DMError

OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DIGITS_STRATEGY = "color_crop_cutout_scale_rotate"  # no flip: a flipped digit is another symbol
DIGIT_DATASETS = ("mnist", "svhn", "digits")


def default_strategy(dataset: str) -> str:
    """The strategy of a dataset (docs/method.md section 3): digits are never flipped; everything else takes the
    six groups."""
    return DIGITS_STRATEGY if dataset in DIGIT_DATASETS else DEFAULT_STRATEGY

# Parameters of the paper's augmentation (docs/method.md section 3).
BRIGHTNESS = 1.0
CROP_FRACTION = 0.125
CUTOUT_FRACTION = 0.5
SCALE = 1.2
ROTATE_DEGREES = 15.0


@dataclass(frozen=True)
class AugmentParams:
    """One row per draw. ``op`` indexes OPS; ``u`` holds the uniforms every op reads its parameters from.

    ``op`` may live on the CPU while ``u`` lives on the GPU (groups drawn on the host): the groups are then known
    without a device sync, and only the drawn ones are computed.
    """

    op: torch.Tensor  # (G,) long
    u: torch.Tensor  # (G, 11) float in [0, 1)

    def take(self, groups: torch.Tensor | slice) -> AugmentParams:
        return AugmentParams(self.op[groups], self.u[groups])


def parse_strategy(strategy: str) -> torch.Tensor:
    names = [s for s in strategy.split("_") if s]
    unknown = [s for s in names if s not in OPS]
    if unknown or not names:
        raise DMError(f"unknown augmentation {strategy!r}: use ops from {', '.join(OPS)} joined by '_'")
    return torch.tensor([OPS.index(s) for s in names], dtype=torch.long)


def sample_params(num_draws: int, generator: torch.Generator, device: torch.device,
                  strategy: str = DEFAULT_STRATEGY, host: torch.Generator | None = None) -> AugmentParams:
    """Draw ``num_draws`` independent augmentations (two RNG calls, whatever their number).

    With ``host`` (a CPU generator) the groups are drawn there and stay on the CPU, the parameters on ``device``.
    """
    allowed = parse_strategy(strategy)
    if host is None:
        allowed = allowed.to(device)
    pick = torch.randint(len(allowed), (num_draws,), generator=host if host is not None else generator,
                         device=allowed.device)
    u = torch.rand(num_draws, 11, generator=generator, device=device)
    return AugmentParams(allowed[pick], u)


def groups_generator(seed: int, iteration: int) -> torch.Generator:
    """The CPU generator of one iteration's augmentation groups: a function of (seed, iteration) only, so a resumed
    run draws the groups the uninterrupted one did, and knowing them never waits on a device."""
    state = np.random.SeedSequence([int(seed), int(iteration)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def apply(x: torch.Tensor, params: AugmentParams, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Augment ``x`` (N, C, H, W); sample i uses draw ``groups[i]`` (draw i when ``groups`` is None).

    Draws whose groups are on the CPU compute only the groups drawn (``groups`` must then be on the CPU too); draws
    on a GPU take the branchless path (every group's work for every sample, no sync).
    """
    p = params if groups is None else params.take(groups)
    n = x.shape[0]
    if p.op.shape[0] != n:
        raise ValueError(f"{p.op.shape[0]} augmentation draws for {n} images")
    if p.op.device.type == "cpu":
        return _apply_drawn(x, p)
    return _apply_mixed(x, p)


def apply_runs(x: torch.Tensor, params: AugmentParams, run: int) -> torch.Tensor:
    """Augment ``x`` whose samples come in runs of ``run``: samples [g * run, (g + 1) * run) use draw g.

    Needs the groups on the host (``params.op`` on the CPU). Only the drawn groups are computed, one call for each
    stretch of consecutive draws of the same group, on slices of ``x`` (no index tensors, so no host-to-device copy).
    """
    ops = params.op.tolist()
    if len(ops) * run != x.shape[0]:
        raise ValueError(f"{len(ops)} augmentation draws of {run} images each for {x.shape[0]} images")
    pieces, start = [], 0
    for end in range(1, len(ops) + 1):
        if end == len(ops) or ops[end] != ops[start]:
            u = params.u[start:end].repeat_interleave(run, dim=0)
            pieces.append(apply_op(x[start * run:end * run], OPS[ops[start]], u))
            start = end
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def order_by_group(params: AugmentParams) -> list[int]:
    """Draw indices sorted (stably) by group, so that draws of one group are adjacent: ``apply_runs`` then makes
    one call per group."""
    ops = params.op.tolist()
    return sorted(range(len(ops)), key=ops.__getitem__)


def _apply_drawn(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Each drawn group on the samples that drew it (groups known on the host)."""
    ops = p.op.tolist()
    present = sorted(set(ops))
    if len(present) == 1:
        return apply_op(x, OPS[present[0]], p.u)
    pieces, where = [], []
    for code in present:
        index = torch.tensor([i for i, o in enumerate(ops) if o == code], device=x.device)
        pieces.append(apply_op(x[index], OPS[code], p.u[index.to(p.u.device)]))
        where.append(index)
    return torch.cat(pieces)[torch.argsort(torch.cat(where))]


def _apply_mixed(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Every group's work for every sample, neutral where another group was drawn: no branch on a draw."""
    n, _, height, width = x.shape
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
    return x * (1 - picked("cutout").view(n, 1, 1, 1) * _cutout_hole(u, height, width, x.dtype))


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


def apply_op(x: torch.Tensor, op: str, u: torch.Tensor) -> torch.Tensor:
    """Apply the one group ``op`` to every sample of ``x``, sample i with its own uniforms ``u[i]``.

    Gives the same result as ``apply`` with every draw picking ``op``, computing only that op.
    """
    n, _, height, width = x.shape
    u = u.to(x.dtype)
    if op == "color":
        x = x + (u[:, 0].view(n, 1, 1, 1) - 0.5) * BRIGHTNESS
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (u[:, 1].view(n, 1, 1, 1) * 2) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (u[:, 2].view(n, 1, 1, 1) + 0.5) + mean
    if op == "cutout":
        return x * (1 - _cutout_hole(u, height, width, x.dtype))
    if op == "flip":
        return torch.where(u[:, 7].view(n, 1, 1, 1) < 0.5, x.flip(3), x)
    if op in ("crop", "scale", "rotate"):
        codes = torch.full((n,), OPS.index(op), dtype=torch.long, device=x.device)
        grid = F.affine_grid(_affine(codes, u, height, width).to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    raise DMError(f"unknown augmentation op {op!r}: use one of {', '.join(OPS)}")


def _cutout_hole(u: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """(N, 1, H, W) masks, 1 inside a square of half the image size centred at a random pixel of each sample."""
    size_h, size_w = int(height * CUTOUT_FRACTION + 0.5), int(width * CUTOUT_FRACTION + 0.5)
    # the centre ranges over 0..size inclusive for an even hole (0..size - 1 for an odd one), as in the reference
    top = (u[:, 5] * (height + 1 - size_h % 2)).floor() - size_h // 2
    left = (u[:, 6] * (width + 1 - size_w % 2)).floor() - size_w // 2
    rows = torch.arange(height, device=u.device, dtype=u.dtype)
    cols = torch.arange(width, device=u.device, dtype=u.dtype)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size_h)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size_w)
    return (in_rows[:, :, None] & in_cols[:, None, :]).to(dtype).unsqueeze(1)


GROUP_MODES = ("batch", "sample")


class DiffAugment:
    """A seeded training-time augmenter: calling it on a mini-batch augments it.

    ``groups="batch"`` (the reference's distribution, the default): one group per call, drawn from a host generator
    seeded once from ``generator``, and per-sample parameters drawn from ``generator`` on the batch's device; only
    that group's op is computed. ``groups="sample"``: every sample draws its own group (a different distribution,
    kept as an option). ``draw(n, device)`` gives n mixed draws to share through ``apply``'s groups.
    """

    def __init__(self, generator: torch.Generator, strategy: str = DEFAULT_STRATEGY, groups: str = "batch"):
        self.check_groups(groups)
        self.allowed = [OPS[i] for i in parse_strategy(strategy).tolist()]
        self.generator = generator
        self.strategy = strategy
        self.groups = groups
        seed = torch.randint(2**62, (1,), generator=generator, device=generator.device)
        self.host = torch.Generator().manual_seed(int(seed))  # one read at construction, none per batch

    @staticmethod
    def check_groups(groups: str) -> str:
        if groups not in GROUP_MODES:
            raise DMError(f"unknown augmentation grouping {groups!r}: use {' or '.join(GROUP_MODES)}")
        return groups

    def draw(self, num_draws: int, device: torch.device) -> AugmentParams:
        return sample_params(num_draws, self.generator, device, self.strategy)

    def draw_batch(self, num_samples: int, device: torch.device) -> tuple[str, torch.Tensor]:
        """One mini-batch's draw under ``groups="batch"``: (the group, per-sample uniforms (num_samples, 11))."""
        op = self.allowed[int(torch.randint(len(self.allowed), (1,), generator=self.host))]
        return op, torch.rand(num_samples, 11, generator=self.generator, device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.groups == "sample":
            return apply(x, self.draw(x.shape[0], x.device))
        return apply_op(x, *self.draw_batch(x.shape[0], x.device))
