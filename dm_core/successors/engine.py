"""DM's iteration with a per-method loss: what M3D, IDM, DataDAM and decomposed DM share with DM (docs/successors.md).

One iteration, for all classes at once, exactly as ``dm_core.dm`` does it: an embedding network (DM's fresh random
one unless the method says otherwise), one real batch per class from the run's ``ClassStore``, one Siamese
augmentation draw per class shared by that class's real and synthetic images, then the METHOD's loss over the
batch grouped by class, one SGD step (momentum 0.5) on the synthetic images. ``Condensation`` supplies the store,
the initial images, checkpoints, resume, Ctrl-C handling, progress and provenance, so these methods behave like DM
in every way but the loss. Classes are processed in chunks as DM's are (BatchNorm networks in train mode take the
whole batch; chunking them is refused), and an out-of-memory pass halves the chunk.

``factor`` > 1 stores each synthetic image as a ``factor`` x ``factor`` mosaic whose tiles are expanded to full size
before matching (IDM section 4.1, IDC's multi-formation): the finished set holds the expanded images,
``ipc * factor**2`` per class, which is what the papers train on.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import augment
from ..condense import CHECKPOINT_FORMAT, Checkpointer, Condensation
from ..data import ImageDataset
from ..device import resolve_device
from ..dm import auto_class_chunk, check_matching_fields, default_image_lr
from ..errors import DMError
from ..io import atomic_torch_save
from ..nets import build_model, has_batchnorm, reinit_
from ..precision import memory_format, precision_scope
from ..synset import SyntheticSet

ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid)


@dataclass(frozen=True)
class MatchingConfig:
    """The fields every matching method shares with ``DMConfig`` (same names, same defaults, same meaning)."""

    ipc: int = 10
    iterations: int = 20_000
    lr_img: float | None = None  # None: DM's rule, 1 below 100 images per class, 10 from 100 on
    batch_real: int = 256
    model: str = "convnet"
    init: str = "real"
    seed: int = 0
    augment: str = augment.DEFAULT_STRATEGY  # "none" turns augmentation off
    class_chunk: int | None = None  # classes per forward pass; None = auto (DM's rule)
    precision: str = "fp32"  # or "bf16" (autocast), an explicit option
    factor: int = 1  # > 1: each stored image is a factor x factor mosaic, expanded before matching
    checkpoint_every: int = 500
    log_every: int = 50

    def __post_init__(self):
        check_matching_fields(self, type(self).__name__)
        if not isinstance(self.factor, int) or self.factor < 1:
            raise DMError(f"factor must be a positive integer (1: plain images), got {self.factor!r}")
        if self.init not in ("real", "noise"):
            raise DMError(f"unknown init {self.init!r}: use real or noise")
        if self.augment != "none":
            augment.parse_strategy(self.augment)

    @property
    def image_lr(self) -> float:
        return default_image_lr(self.ipc, self.lr_img)


def check_positive(config, *names: str, integer: bool = False, zero: bool = False) -> None:
    """Refuse a field of ``config`` named in ``names`` that is not a positive (with ``zero``: non-negative) finite
    number (with ``integer``: integer)."""
    for field in names:
        value = getattr(config, field)
        ok = isinstance(value, int) if integer else isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or isinstance(value, bool) or value < 0 or (value == 0 and not zero):
            kind = "integer" if integer else "number"
            raise DMError(f"{field} must be a {'non-negative' if zero else 'positive'} {kind}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Partition and expansion (IDM section 4.1).

def tile_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """(h, w) of one tile of a factor x factor grid over height x width images; the factor must divide both."""
    if height % factor or width % factor:
        raise DMError(f"factor {factor} does not divide the {height}x{width} images: use a factor that does")
    return height // factor, width // factor


def partition_expand(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) -> (N * factor**2, C, H, W): each image cut into a factor x factor grid of tiles (row by row),
    each tile enlarged back to H x W by bilinear interpolation. Image i's tiles are rows i*f^2 .. (i+1)*f^2 - 1."""
    if factor == 1:
        return images
    n, c, height, width = images.shape
    h, w = tile_size(height, width, factor)
    tiles = images.reshape(n, c, factor, h, factor, w).permute(0, 2, 4, 1, 3, 5).reshape(n * factor ** 2, c, h, w)
    return F.interpolate(tiles, size=(height, width), mode="bilinear", align_corners=False)


def mosaic(tiles: torch.Tensor, factor: int) -> torch.Tensor:
    """The inverse layout: (N * factor**2, C, H, W) full-size images -> (N, C, H, W) mosaics of them shrunk by
    ``factor`` (area averaging), tile t of image i at row t // factor, column t % factor."""
    if factor == 1:
        return tiles
    total, c, height, width = tiles.shape
    h, w = tile_size(height, width, factor)
    small = F.interpolate(tiles, size=(h, w), mode="area")
    n = total // factor ** 2
    return small.reshape(n, factor, factor, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, height, width)


# ---------------------------------------------------------------------------------------------------------------
# Intermediate feature maps.

def embed_with_taps(net: nn.Module, x: torch.Tensor, tap: tuple[type, ...] = (),
                    reduce: Callable[[torch.Tensor], object] | None = None) -> tuple[torch.Tensor, list]:
    """``net.embed(x)`` and ``reduce(output)`` of every module of a type in ``tap`` inside ``net.features``, in
    forward order. The reduction runs inside the hook, on a copy when gradients flow, so a later in-place op
    (an in-place ReLU straight after a convolution without norm) cannot change what was read."""
    taps: list = []
    if not tap:
        return net.embed(x), taps

    def hook(module, inputs, output):
        taps.append(reduce(output.clone() if torch.is_grad_enabled() else output))

    handles = [m.register_forward_hook(hook) for m in net.features.modules() if isinstance(m, tap)]
    try:
        embedding = net.embed(x)
    finally:
        for handle in handles:
            handle.remove()
    return embedding, taps


def by_class(values: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes * n, ...) grouped by class -> (num_classes, n, ...) in fp32."""
    return values.float().reshape(num_classes, -1, *values.shape[1:])


# ---------------------------------------------------------------------------------------------------------------
# The method interface and the shared loop.

class Matcher:
    """One method's part of an iteration. The base class is DM's: a fresh random network every iteration, the loss
    left to subclasses. ``state()`` is what a resume needs beyond the images (IDM's model queue); a resumed run
    hands it back to the constructor as ``state`` (None on a fresh run)."""

    uses_state = False  # True: the checkpoint carries ``state()``

    def __init__(self, config, run: Condensation, data: ImageDataset, device: torch.device, state: dict | None):
        self.config, self.run, self.device = config, run, device
        fmt = memory_format(device, config.precision)
        self.net = build_model(config.model, data.channels, data.num_classes, data.image_size)
        self.net = self.net.to(device, memory_format=fmt).train().requires_grad_(False)

    def network(self, iteration: int) -> nn.Module:
        return reinit_(self.net, self.run.generator)

    def loss(self, net: nn.Module, real: torch.Tensor, syn: torch.Tensor, labels: torch.Tensor,
             real_aug, syn_aug) -> torch.Tensor:
        """The loss of one chunk: ``real`` and ``syn`` grouped by class, ``labels`` the chunk's classes in order."""
        raise NotImplementedError

    def after_step(self, iteration: int) -> None:
        """Called once per iteration after the image update."""

    def state(self) -> dict:
        return {}

    def meta(self) -> dict:
        return {}


class _StatefulCheckpointer(Checkpointer):
    """``Checkpointer``'s file with one more entry, ``extra``: the matcher's state at the same iteration."""

    def __init__(self, base: Checkpointer, extra: Callable[[], dict]):
        self.path, self.identity, self.extra = base.path, base.identity, extra

    def save(self, iteration, images, optimizer, generator, history) -> None:
        if self.path is None:
            return
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "identity": self.identity, "iteration": iteration,
                           "images": images.detach().cpu(), "optimizer": optimizer.state_dict(),
                           "generator": generator.get_state(), "history": history, "extra": self.extra()},
                          self.path)


def _saved_extra(path: Path) -> dict | None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("extra") if isinstance(state, dict) else None


def condense_matching(method: str, matcher_type: type[Matcher], data: ImageDataset, config,
                      classes: Sequence[int] | None = None, device: str | torch.device = "auto",
                      checkpoint: str | os.PathLike | None = None, resume: bool = False,
                      progress: bool = True) -> SyntheticSet:
    """Learn ``config.ipc`` synthetic images per class of ``classes`` (all by default) with ``matcher_type``'s loss."""
    device = resolve_device(device)
    loaded = bool(resume and checkpoint is not None and Path(checkpoint).is_file())
    run = Condensation(method, data, config, classes, device, config.image_lr, checkpoint, resume)
    factor, ipc = config.factor, config.ipc
    if factor > 1:
        partition_expand(run.images[:1].detach(), factor)  # refuses a factor that does not divide the image size
        if not loaded and config.init == "real":  # each mosaic starts as factor**2 shrunk real images (IDM 4.1)
            with torch.no_grad():
                tiles = run.store.sample(run.classes, ipc * factor ** 2, run.generator)
                run.images.copy_(mosaic(tiles, factor))
    extra = _saved_extra(Path(checkpoint)) if loaded else None
    matcher = matcher_type(config, run, data, device, extra)
    if matcher.uses_state:
        run.checkpointer = _StatefulCheckpointer(run.checkpointer, matcher.state)
    k_all = len(run.classes)
    n_real = min(config.batch_real, int(run.store.counts[run.classes].min()))
    width = int(run.store.counts[run.classes].max())
    per_class = ipc * factor ** 2  # synthetic images per class as the network sees them
    fmt = memory_format(device, config.precision)
    use_aug = config.augment != "none"
    whole_batch = has_batchnorm(matcher.net) and matcher.net.training
    if whole_batch and config.class_chunk is not None and config.class_chunk < k_all:
        raise DMError(f"{config.model} has BatchNorm, whose statistics span every class of a pass, so condensing "
                      f"{config.class_chunk} of {k_all} classes per pass would change the result: drop "
                      f"class_chunk (lower batch_real to save memory)")

    def plan(chunk: int) -> list[slice]:
        return [slice(s, min(s + chunk, k_all)) for s in range(0, k_all, chunk)]

    def iteration(net, chunks, real_index, params) -> torch.Tensor:
        total = None
        for c in chunks:
            real = run.store.images[real_index[c.start * n_real:c.stop * n_real]].contiguous(memory_format=fmt)
            syn = partition_expand(run.images[c.start * ipc:c.stop * ipc], factor)
            real_aug = syn_aug = None
            if params is not None:
                p = params.take(c)  # class i of the chunk: its real images, then its synthetic ones, use draw i
                real_aug = lambda x, p=p: augment.apply_runs(x, p, n_real)  # noqa: E731
                syn_aug = lambda x, p=p: augment.apply_runs(x, p, per_class)  # noqa: E731
            with precision_scope(device, config.precision):
                loss = matcher.loss(net, real, syn, run.class_index[c], real_aug, syn_aug)
            loss.backward()  # chunks accumulate their independent gradients; one optimiser step follows
            total = loss.detach() if total is None else total + loss.detach()
        return total

    chunk = min(config.class_chunk or auto_class_chunk(device, k_all, n_real, whole_batch), k_all)
    chunks = plan(chunk)
    bar = run.progress_bar(progress)
    with run.interruptible():
        for it in bar:
            net = matcher.network(it)
            real_index = run.store.sample_indices(run.class_index, n_real, width, run.generator)
            params = None
            if use_aug:  # groups drawn on the host, so that only the drawn op is computed, on any device
                params = augment.sample_params(k_all, run.generator, device, config.augment,
                                               host=augment.groups_generator(config.seed, it))
            while True:
                run.optimizer.zero_grad(set_to_none=True)
                try:
                    total = iteration(net, chunks, real_index, params)
                    break
                except torch.cuda.OutOfMemoryError:
                    if whole_batch or chunk == 1:
                        raise DMError(f"out of memory on {device} with {chunk} classes per pass: lower batch_real "
                                      f"(now {n_real})") from None
                    chunk = max(1, chunk // 2)
                    chunks = plan(chunk)
                    torch.cuda.empty_cache()
                    bar.write(f"out of memory: now {chunk} classes per forward pass", file=sys.stderr)
            run.optimizer.step()
            matcher.after_step(it)
            run.end_iteration(it + 1, total, bar)
    bar.close()
    meta = {"lr_img": config.image_lr, "batch_real_used": n_real, "images_per_class": per_class, **matcher.meta()}
    if factor > 1:  # the set holds what the papers train on: every mosaic's tiles, expanded
        with torch.no_grad():
            run.images = partition_expand(run.images.detach(), factor)
    return run.result(meta)


__all__ = ["ACTIVATIONS", "MatchingConfig", "Matcher", "by_class", "check_positive", "condense_matching",
           "embed_with_taps", "mosaic", "partition_expand"]
