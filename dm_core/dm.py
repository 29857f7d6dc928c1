"""Dataset condensation with distribution matching (DM), PROTOCOL.md section 1.

One iteration, for all classes at once:
  re-initialise the embedding network in place (fresh random weights, no training)
  draw one augmentation per class and a real batch per class (device-side, no host work)
  embed every real image in ONE forward pass (no grad) and every synthetic image in ONE forward pass
  loss = sum_c || mean real embedding_c - mean synthetic embedding_c ||^2, one SGD step on the synthetic images.
The only Python loop is over class chunks, used when ``class_chunk`` asks to bound memory or when a pass runs out
of memory (the chunk is then halved and the iteration redone). Networks with BatchNorm always take every class in
one pass, so their statistics are those of the whole batch (PROTOCOL.md section 1); chunking them is refused.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import torch

from . import augment
from .condense import Condensation
from .data import ImageDataset
from .device import resolve_device
from .errors import DMError
from .nets import build_model, has_batchnorm, reinit_
from .precision import check_precision, memory_format, precision_scope
from .synset import SyntheticSet


@dataclass(frozen=True)
class DMConfig:
    ipc: int = 10
    iterations: int = 20_000
    lr_img: float | None = None  # None: 1 below 100 images per class, 10 from 100 on (PROTOCOL.md)
    batch_real: int = 256
    model: str = "convnet"
    init: str = "real"
    seed: int = 0
    augment: str = augment.DEFAULT_STRATEGY  # "none" turns augmentation off
    class_chunk: int | None = None  # classes per forward pass; None = auto (see auto_class_chunk)
    precision: str = "fp32"  # or "bf16" (autocast), an explicit option
    checkpoint_every: int = 500
    log_every: int = 50

    def __post_init__(self):
        if self.ipc < 1 or self.iterations < 0 or self.batch_real < 1:
            raise DMError(f"DM needs ipc >= 1, iterations >= 0 and batch_real >= 1 (got {self.ipc}, "
                          f"{self.iterations}, {self.batch_real})")
        if self.class_chunk is not None and self.class_chunk < 1:
            raise DMError(f"class_chunk must be at least 1, got {self.class_chunk}")
        if self.lr_img is not None and not (self.lr_img > 0 and math.isfinite(self.lr_img)):
            raise DMError(f"the image learning rate must be a positive number, got {self.lr_img}")
        check_precision(self.precision)

    @property
    def image_lr(self) -> float:
        return self.lr_img if self.lr_img is not None else (1.0 if self.ipc < 100 else 10.0)


CPU_IMAGES_PER_PASS = 128


def auto_class_chunk(device: torch.device, num_classes: int, real_per_class: int, batchnorm: bool = False) -> int:
    """Classes per forward pass when the configuration does not say.

    BatchNorm networks: all classes in one pass, always (PROTOCOL.md section 1: the statistics are those of the whole
    batch, so any other chunking would change the result). CUDA: all classes in one pass (fewest launches; halved
    automatically if memory runs out). CPU: about 128 real images per pass, since larger batches' activations
    overflow the caches: MNIST, ConvNet width 32, 64 real images per class, 10 ipc measured 183 ms/iteration with all
    10 classes per pass, 160 with 4, 110 with 2, 122 with 1.
    """
    if batchnorm or device.type == "cuda":
        return num_classes
    return max(1, min(num_classes, CPU_IMAGES_PER_PASS // real_per_class))


def class_means(embedding: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes * n, D) grouped by class -> (num_classes, D) means."""
    return embedding.float().view(num_classes, -1, embedding.shape[-1]).mean(dim=1)


def dm_loss(net, real: torch.Tensor, synthetic: torch.Tensor, num_classes: int,
            real_aug=None, syn_aug=None) -> torch.Tensor:
    """The batched DM loss: images grouped by class, classes in the same order in both batches.

    ``real_aug`` / ``syn_aug`` map a batch to its augmented version (the same draw per class on both sides).
    """
    with torch.no_grad():
        real_mean = class_means(net.embed(real_aug(real) if real_aug else real), num_classes)
    syn_mean = class_means(net.embed(syn_aug(synthetic) if syn_aug else synthetic), num_classes)
    return (real_mean - syn_mean).pow(2).sum()


def condense_dm(data: ImageDataset, config: DMConfig = DMConfig(), classes: Sequence[int] | None = None,
                device: str | torch.device = "auto", checkpoint: str | os.PathLike | None = None,
                resume: bool = False, progress: bool = True) -> SyntheticSet:
    """Learn ``config.ipc`` synthetic images for each class of ``classes`` (all classes by default)."""
    device = resolve_device(device)
    run = Condensation("dm", data, config, classes, device, config.image_lr, checkpoint, resume)
    k_all = len(run.classes)
    n_real = min(config.batch_real, int(run.store.counts[run.classes].min()))
    width = int(run.store.counts[run.classes].max())
    fmt = memory_format(device, config.precision)
    net = build_model(config.model, data.channels, data.num_classes, data.image_size)
    net = net.to(device, memory_format=fmt).train().requires_grad_(False)  # frozen: only the images learn
    use_aug = config.augment != "none"
    batchnorm = has_batchnorm(net)
    if batchnorm and config.class_chunk is not None and config.class_chunk < k_all:
        raise DMError(f"{config.model} has BatchNorm, whose statistics span every class of a pass, so condensing "
                      f"{config.class_chunk} of {k_all} classes per pass would change the result: drop "
                      f"--class-chunk (lower --batch-real to save memory)")

    def plan(chunk: int) -> list[tuple]:
        """Per chunk of classes: its slice, and the chunk-local class of each real and each synthetic sample
        (sample i of a batch grouped by class uses the augmentation draw of its class)."""
        chunks = [slice(s, min(s + chunk, k_all)) for s in range(0, k_all, chunk)]
        return [(c, torch.arange(c.stop - c.start, device=device).repeat_interleave(n_real),
                 torch.arange(c.stop - c.start, device=device).repeat_interleave(config.ipc)) for c in chunks]

    def iteration(chunks: list[tuple], real_index: torch.Tensor, params) -> torch.Tensor:
        """Forward and backward over the chunks; the random draws were made for all classes beforehand, so how the
        classes are chunked changes memory use, not the maths."""
        total = None
        for c, g_real, g_syn in chunks:
            k = c.stop - c.start
            real = run.store.images[real_index[c.start * n_real:c.stop * n_real]]
            syn = run.images[c.start * config.ipc:c.stop * config.ipc]
            real_aug = syn_aug = None
            if params is not None:
                p = params.take(c)
                real_aug = lambda x, p=p, g=g_real: augment.apply(x, p, g)  # noqa: E731
                syn_aug = lambda x, p=p, g=g_syn: augment.apply(x, p, g)  # noqa: E731
            with precision_scope(device, config.precision):
                loss = dm_loss(net, real.contiguous(memory_format=fmt), syn, k, real_aug, syn_aug)
            loss.backward()  # chunks accumulate their (independent) gradients; one optimiser step follows
            total = loss.detach() if total is None else total + loss.detach()
        return total

    chunk = min(config.class_chunk or auto_class_chunk(device, k_all, n_real, batchnorm), k_all)
    chunks = plan(chunk)
    bar = run.progress_bar(progress)
    with run.interruptible():
        for it in bar:
            reinit_(net, run.generator)
            real_index = run.store.sample_indices(run.class_index, n_real, width, run.generator)
            params = augment.sample_params(k_all, run.generator, device, config.augment) if use_aug else None
            while True:
                run.optimizer.zero_grad(set_to_none=True)
                try:
                    total = iteration(chunks, real_index, params)
                    break
                except torch.cuda.OutOfMemoryError:
                    # Memory is short: condense fewer classes per forward pass and redo this iteration (not with
                    # BatchNorm, whose whole-batch statistics a smaller pass would change).
                    if batchnorm:
                        raise DMError(f"out of memory on {device} with all {k_all} classes in one pass, which "
                                      f"BatchNorm needs: lower --batch-real (now {n_real})") from None
                    if chunk == 1:
                        raise DMError(f"out of memory on {device} even with one class per pass: lower --batch-real "
                                      f"(now {n_real})") from None
                    chunk = max(1, chunk // 2)
                    chunks = plan(chunk)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    bar.write(f"out of memory: now {chunk} classes per forward pass", file=sys.stderr)
            run.optimizer.step()
            run.end_iteration(it + 1, total, bar)
    bar.close()
    return run.result({"lr_img": config.image_lr, "batch_real_used": n_real})
