"""Dataset condensation with distribution matching (DM), PROTOCOL.md section 1.

One iteration, for all classes at once:
  re-initialise the embedding network in place (fresh random weights, no training)
  draw a real batch per class and one augmentation per class (its group on the host, its parameters on the device)
  order the classes by augmentation group, so each group drawn is computed once, on the classes that drew it
  embed every real image in ONE forward pass (no grad) and every synthetic image in ONE forward pass
  loss = sum_c || mean real embedding_c - mean synthetic embedding_c ||^2, one SGD step on the synthetic images.
The only Python loop is over class chunks, used when ``class_chunk`` asks to bound memory or when a pass runs out
of memory (the chunk is then halved and the iteration redone). Networks with BatchNorm always take every class in
one pass, so their statistics are those of the whole batch (PROTOCOL.md section 1); chunking them is refused.
The loss is a sum over classes and each class's gradient lands on its own images, so neither the order of the classes
nor their chunking changes the maths. Speed (benchmarks/speed.py): channels_last on the CPU, and the embedding
compiled where that pays (dm_core/compile.py).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import torch

from . import augment
from .compile import architecture_key, check_compile, compiled, forward_flops, give_up, should_compile
from .condense import Condensation
from .data import ImageDataset
from .device import resolve_device
from .distributed import World, gather_rows, rank_checkpoint, shard_blocks, world
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
    compile: str = "auto"  # torch.compile the embedding: "auto" where it pays (dm_core/compile.py), "on", "off"
    checkpoint_every: int = 500
    log_every: int = 50

    def __post_init__(self):
        check_matching_fields(self, "DM")
        check_compile(self.compile)

    @property
    def image_lr(self) -> float:
        return default_image_lr(self.ipc, self.lr_img)


def default_image_lr(ipc: int, lr_img: float | None) -> float:
    """``lr_img`` if given, else PROTOCOL.md's rule: 1 below 100 images per class, 10 from 100 on."""
    return lr_img if lr_img is not None else (1.0 if ipc < 100 else 10.0)


def check_matching_fields(config, method: str) -> None:
    """The checks of the fields DM shares with the distribution-matching methods built on its iteration
    (``dm_core.successors``): sizes, intervals, class chunk, image learning rate, precision."""
    if config.ipc < 1 or config.iterations < 0 or config.batch_real < 1:
        raise DMError(f"{method} needs ipc >= 1, iterations >= 0 and batch_real >= 1 (got {config.ipc}, "
                      f"{config.iterations}, {config.batch_real})")
    if config.checkpoint_every < 1 or config.log_every < 1:
        raise DMError(f"checkpoint_every and log_every must be at least 1 (got {config.checkpoint_every}, "
                      f"{config.log_every})")
    if config.class_chunk is not None and config.class_chunk < 1:
        raise DMError(f"class_chunk must be at least 1, got {config.class_chunk}")
    if config.lr_img is not None and not (config.lr_img > 0 and math.isfinite(config.lr_img)):
        raise DMError(f"the image learning rate must be a positive number, got {config.lr_img}")
    check_precision(config.precision)


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
            real_aug=None, syn_aug=None, real_embed=None, syn_embed=None) -> torch.Tensor:
    """The batched DM loss: images grouped by class, classes in the same order in both batches.

    ``real_aug`` / ``syn_aug`` map a batch to its augmented version (the same draw per class on both sides);
    ``real_embed(net, x)`` / ``syn_embed(net, x)`` compute the embeddings (default ``net.embed(x)``; DM passes
    compiled ones where that pays).
    """
    with torch.no_grad():
        real_mean = class_means((real_embed or embedding)(net, real_aug(real) if real_aug else real), num_classes)
    syn_mean = class_means((syn_embed or embedding)(net, syn_aug(synthetic) if syn_aug else synthetic), num_classes)
    return (real_mean - syn_mean).pow(2).sum()


def embedding(net, x: torch.Tensor) -> torch.Tensor:
    return net.embed(x)


def dm_memory_format(device: torch.device, precision: str) -> torch.memory_format:
    """channels_last on the CPU: one pass of 2 classes (ConvNet, CIFAR-shaped, 64 real images per class) measured
    1.45x faster eager and 1.3x faster compiled with it on this project's CPU (oneDNN convolves NHWC without
    reordering, and average pooling is far cheaper on NHWC); elsewhere the run's format (``precision.memory_format``)."""
    return torch.channels_last if device.type == "cpu" else memory_format(device, precision)


def condense_dm(data: ImageDataset, config: DMConfig = DMConfig(), classes: Sequence[int] | None = None,
                device: str | torch.device = "auto", checkpoint: str | os.PathLike | None = None,
                resume: bool = False, progress: bool = True) -> SyntheticSet:
    """Learn ``config.ipc`` synthetic images for each class of ``classes`` (all classes by default)."""
    device = resolve_device(device)
    w = world()
    run = Condensation("dm", data, config, classes, device, config.image_lr, rank_checkpoint(checkpoint, w), resume)
    k_all = len(run.classes)
    # Under torch.distributed each rank condenses a contiguous block of classes; every rank still makes every random
    # draw of the run, so a class's draws (and the fresh network) do not depend on where it is condensed.
    mine = shard_blocks(k_all, w)
    n_real = min(config.batch_real, int(run.store.counts[run.classes].min()))
    width = int(run.store.counts[run.classes].max())
    fmt = dm_memory_format(device, config.precision)
    run.store.images = run.store.images.contiguous(memory_format=fmt)  # indexing keeps the format: no copy per pass
    net = build_model(config.model, data.channels, data.num_classes, data.image_size)
    net = net.to(device, memory_format=fmt).train().requires_grad_(False)  # frozen: only the images learn
    use_aug = config.augment != "none"
    batchnorm = has_batchnorm(net)
    if batchnorm and config.class_chunk is not None and config.class_chunk < k_all:
        raise DMError(f"{config.model} has BatchNorm, whose statistics span every class of a pass, so condensing "
                      f"{config.class_chunk} of {k_all} classes per pass would change the result: drop "
                      f"--class-chunk (lower --batch-real to save memory)")
    if batchnorm and w.sharded:
        raise DMError(f"{config.model} has BatchNorm, whose statistics span every class of a pass, so it cannot be "
                      f"split over {w.size} processes: run it in one process")

    def plan(params, chunk: int) -> list[list[int]]:
        """This rank's classes in chunks, ordered by augmentation group when there is augmentation (so that one
        ``apply_runs`` call covers each group of a chunk)."""
        order = list(mine)
        if params is not None:
            order = [mine.start + i for i in augment.order_by_group(params.take(slice(mine.start, mine.stop)))]
        return [order[s:s + chunk] for s in range(0, len(order), chunk)]

    def embed_key(side: str, k: int) -> tuple:
        per_class = n_real if side == "real" else config.ipc
        return ("dm", side, architecture_key(net), (k * per_class, *data.x_train.shape[1:]), device.type,
                config.precision, str(fmt))

    def embed_keys(chunk: int) -> list[tuple]:
        """One compiled graph per pass: real and synthetic passes of a full chunk and of a short last one."""
        return [embed_key(side, k) for k in sorted({chunk, len(mine) % chunk} - {0}) for side in ("real", "syn")]

    def iteration(chunks: list[list[int]], real_index: torch.Tensor, params, compiling: bool) -> torch.Tensor:
        """Forward and backward over the chunks; the random draws were made for all classes beforehand, so how the
        classes are ordered and chunked changes memory use, not the maths."""
        total = None
        for classes in chunks:
            k = len(classes)
            if classes == list(range(classes[0], classes[0] + k)):  # consecutive classes: slices, no gather
                rows = slice(classes[0], classes[0] + k)
            else:
                rows = torch.tensor(classes).to(device, non_blocking=True)
            real = run.store.images[real_index.view(k_all, n_real)[rows].flatten()]
            syn = run.images.view(k_all, config.ipc, *run.images.shape[1:])[rows].flatten(0, 1)
            real_aug = syn_aug = None
            if params is not None:
                p = augment.AugmentParams(params.op[classes], params.u[rows])
                real_aug = lambda x, p=p: augment.apply_runs(x, p, n_real).contiguous(memory_format=fmt)  # noqa
                syn_aug = lambda x, p=p: augment.apply_runs(x, p, config.ipc).contiguous(memory_format=fmt)  # noqa
            real_embed = syn_embed = None
            if compiling:
                real_embed, syn_embed = compiled(embedding, embed_key("real", k)), compiled(embedding,
                                                                                            embed_key("syn", k))
            with precision_scope(device, config.precision):
                loss = dm_loss(net, real, syn.contiguous(memory_format=fmt), k, real_aug, syn_aug, real_embed,
                               syn_embed)
            loss.backward()  # chunks accumulate their (independent) gradients; one optimiser step follows
            total = loss.detach() if total is None else total + loss.detach()
        return total

    chunk = min(config.class_chunk or auto_class_chunk(device, k_all, n_real, batchnorm), len(mine))
    # compile where it pays: FLOPs of the iterations ahead (a synthetic image costs a forward and a backward pass)
    flops = forward_flops(net, tuple(data.x_train.shape[1:]), device) * len(mine) * (n_real + 3 * config.ipc)
    compiling = should_compile(config.compile, device, embed_keys(chunk), flops * (config.iterations - run.start))
    proven = False  # the compiled graphs have run once
    bar = run.progress_bar(progress and w.is_main)
    with run.interruptible(enabled=not w.sharded):
        for it in bar:
            reinit_(net, run.generator)
            real_index = run.store.sample_indices(run.class_index, n_real, width, run.generator)
            params = None
            if use_aug:
                params = augment.sample_params(k_all, run.generator, device, config.augment,
                                               host=augment.groups_generator(config.seed, it))
            while True:
                run.optimizer.zero_grad(set_to_none=True)
                try:
                    total = iteration(plan(params, chunk), real_index, params, compiling)
                    proven = proven or compiling
                    break
                except torch.cuda.OutOfMemoryError:
                    # Memory is short: condense fewer classes per forward pass and redo this iteration (not with
                    # BatchNorm, whose whole-batch statistics a smaller pass would change).
                    if batchnorm:
                        raise DMError(f"out of memory on {device} with all {k_all} classes in one pass, which "
                                      f"BatchNorm needs: lower --batch-real (now {n_real})") from None
                    if w.sharded:
                        raise DMError(f"out of memory on {device}: lower --batch-real (now {n_real}) or start more "
                                      f"processes") from None
                    if chunk == 1:
                        raise DMError(f"out of memory on {device} even with one class per pass: lower --batch-real "
                                      f"(now {n_real})") from None
                    chunk = max(1, chunk // 2)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    bar.write(f"out of memory: now {chunk} classes per forward pass", file=sys.stderr)
                except Exception as exc:  # a compile that fails at its first call: "auto" carries on eagerly
                    if not compiling or proven:
                        raise
                    give_up(embed_keys(chunk)[0], exc, config.compile)
                    compiling = False
            run.optimizer.step()
            run.end_iteration(it + 1, total, bar)
    bar.close()
    if w.sharded:  # every rank owns the rows of its classes; all ranks end with the whole set
        owned = [shard_blocks(k_all, World(r, w.size)) for r in range(w.size)]
        with torch.no_grad():
            run.images.copy_(gather_rows(run.images, [range(b.start * config.ipc, b.stop * config.ipc)
                                                      for b in owned]))
    return run.result({"lr_img": config.image_lr, "batch_real_used": n_real, "world_size": w.size})
