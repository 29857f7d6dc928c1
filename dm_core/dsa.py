"""Dataset condensation with gradient matching and differentiable Siamese augmentation (DSA), PROTOCOL.md section 5.

Per outer iteration: a fresh random network. Per outer-loop step: (BatchNorm nets) set BN statistics from a real batch
and freeze them; for each class, the cross-entropy gradients of an augmented real batch and of the class's synthetic
images under the SAME augmentation draw are compared layer by layer; one SGD step on the images through the
second-order graph; then ``inner_loop`` epochs of training of the network on the synthetic set (shuffled mini-batches
of ``batch_train``, training-mode DSA augmentation), as the reference code does: with 500 synthetic images one epoch
is 2 SGD steps.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from . import augment
from .condense import Condensation
from .data import ImageDataset
from .device import resolve_device
from .errors import DMError
from .nets import build_model, has_batchnorm, reinit_
from .precision import check_precision, memory_format, precision_scope
from .synset import SyntheticSet

# (outer_loop, inner_loop) by images per class, PROTOCOL.md section 5.
SCHEDULE = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def default_loops(ipc: int) -> tuple[int, int]:
    """The paper's schedule. An unlisted ipc takes that of the next listed ipc above it (5 -> 10's, 15 -> 20's), and
    anything above 50 takes 50's: more outer steps per network is the safe side."""
    above = [listed for listed in sorted(SCHEDULE) if listed >= ipc]
    return SCHEDULE[above[0] if above else max(SCHEDULE)]


@dataclass(frozen=True)
class DSAConfig:
    ipc: int = 10
    iterations: int = 1000
    lr_img: float = 0.1
    lr_net: float = 0.01
    batch_real: int = 256
    batch_train: int = 256  # inner-loop batch on the synthetic set
    bn_batch_per_class: int = 32  # real images per class that set the BatchNorm statistics
    outer_loop: int | None = None  # None: from the schedule
    inner_loop: int | None = None
    model: str = "convnet"
    init: str = "real"
    seed: int = 0
    augment: str = augment.DEFAULT_STRATEGY  # "none" turns augmentation off
    precision: str = "fp32"  # or "bf16" (autocast), an explicit option
    checkpoint_every: int = 50
    log_every: int = 10

    def __post_init__(self):
        if self.ipc < 1 or self.iterations < 0 or self.batch_real < 1:
            raise DMError(f"DSA needs ipc >= 1, iterations >= 0 and batch_real >= 1 (got {self.ipc}, "
                          f"{self.iterations}, {self.batch_real})")
        if not (self.lr_img > 0 and math.isfinite(self.lr_img)) or not (self.lr_net > 0 and math.isfinite(self.lr_net)):
            raise DMError(f"DSA needs positive learning rates, got lr_img {self.lr_img} and lr_net {self.lr_net}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise DMError(f"checkpoint_every and log_every must be at least 1 (got {self.checkpoint_every}, "
                          f"{self.log_every})")
        if self.batch_train < 1 or self.bn_batch_per_class < 1:
            raise DMError(f"batch_train and bn_batch_per_class must be at least 1 (got {self.batch_train}, "
                          f"{self.bn_batch_per_class})")
        check_precision(self.precision)
        for name in ("outer_loop", "inner_loop"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "outer_loop" else 0):
                raise DMError(f"{name} must be positive, got {value}")

    @property
    def loops(self) -> tuple[int, int]:
        outer, inner = default_loops(self.ipc)
        return (self.outer_loop if self.outer_loop is not None else outer,
                self.inner_loop if self.inner_loop is not None else inner)


def matching_distance(grads_syn: Sequence[torch.Tensor], grads_real: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over layers, over output units, of 1 - cos(row of the synthetic gradient, row of the real gradient).

    1-D parameters (biases, norm affine terms) are ignored, as in the paper.
    """
    total = grads_syn[0].new_zeros(())
    for g_syn, g_real in zip(grads_syn, grads_real):
        if g_syn.dim() < 2:
            continue
        a, b = g_syn.flatten(1), g_real.flatten(1)
        cosine = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)
        total = total + (1 - cosine).sum()
    return total


def condense_dsa(data: ImageDataset, config: DSAConfig = DSAConfig(), classes: Sequence[int] | None = None,
                 device: str | torch.device = "auto", checkpoint: str | os.PathLike | None = None,
                 resume: bool = False, progress: bool = True) -> SyntheticSet:
    """Learn ``config.ipc`` images per class of ``classes`` (all by default) by gradient matching."""
    device = resolve_device(device)
    run = Condensation("dsa", data, config, classes, device, config.lr_img, checkpoint, resume)
    outer_loop, inner_loop = config.loops
    k = len(run.classes)
    n_real = min(config.batch_real, int(run.store.counts[run.classes].min()))
    n_bn = min(config.bn_batch_per_class, n_real)
    width = int(run.store.counts[run.classes].max())
    fmt = memory_format(device, config.precision)
    net = build_model(config.model, data.channels, data.num_classes, data.image_size).to(device, memory_format=fmt)
    weights = [p for p in net.parameters()]
    uses_bn = has_batchnorm(net)
    use_aug = config.augment != "none"
    labels_syn = run.class_index.repeat_interleave(config.ipc)
    # row i: class i's augmentation draw for each of its real / synthetic images

    bar = run.progress_bar(progress)
    with run.interruptible():
        for it in bar:
            reinit_(net, run.generator)
            # made per outer iteration from the run's generator, so a resumed run draws what the uninterrupted one did
            augment_batch = augment.DiffAugment(run.generator, config.augment) if use_aug else None
            net_optimizer = torch.optim.SGD(weights, lr=config.lr_net)
            matched = torch.zeros((), device=device)
            for step in range(outer_loop):
                real = run.store.images[run.store.sample_indices(run.class_index, n_real, width, run.generator)]
                if uses_bn:  # statistics of a real batch of all classes, then frozen for the matching
                    with torch.no_grad(), precision_scope(device, config.precision):
                        net.train()(real.view(k, n_real, *real.shape[1:])[:, :n_bn].flatten(0, 1))
                    net.eval()
                else:
                    net.train()
                params = None
                if use_aug:  # groups drawn on the host, so that only the drawn op is computed, on any device
                    params = augment.sample_params(k, run.generator, device, config.augment,
                                                   host=augment.groups_generator(config.seed, it * outer_loop + step))
                loss = torch.zeros((), device=device)
                # Per-class gradients need one backward pass per class. torch.func.vmap(grad(...)) over classes computes
                # the same numbers (checked to 4e-7) but measured 3x slower on the CPU, so the loop stays.
                for i, c in enumerate(run.classes):
                    real_c = real[i * n_real:(i + 1) * n_real]
                    syn_c = run.images[i * config.ipc:(i + 1) * config.ipc]
                    if use_aug:
                        draw = params.take(slice(i, i + 1))  # one draw per class, shared by real and synthetic
                        real_c = augment.apply_runs(real_c, draw, n_real)
                        syn_c = augment.apply_runs(syn_c, draw, config.ipc)
                    target_real = torch.full((n_real,), c, device=device)
                    target_syn = torch.full((config.ipc,), c, device=device)
                    with precision_scope(device, config.precision):
                        loss_real = F.cross_entropy(net(real_c).float(), target_real)
                        grads_real = [g.detach() for g in torch.autograd.grad(loss_real, weights)]
                        loss_syn = F.cross_entropy(net(syn_c).float(), target_syn)
                        grads_syn = torch.autograd.grad(loss_syn, weights, create_graph=True)
                    loss = loss + matching_distance(grads_syn, grads_real)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                run.optimizer.step()
                matched += loss.detach() / outer_loop
                if step == outer_loop - 1:
                    break
                net.train()
                synthetic = run.images.detach()
                for _ in range(inner_loop):  # inner_loop epochs over the (augmented) synthetic set
                    order = torch.randperm(len(synthetic), generator=run.generator, device=device)
                    for idx in order.split(config.batch_train):
                        xb = synthetic[idx]
                        if use_aug:
                            xb = augment_batch(xb)
                        with precision_scope(device, config.precision):
                            inner_loss = F.cross_entropy(net(xb).float(), labels_syn[idx])
                        net_optimizer.zero_grad(set_to_none=True)
                        inner_loss.backward()
                        net_optimizer.step()
            run.end_iteration(it + 1, matched, bar)
    bar.close()
    return run.result({"lr_img": config.lr_img, "outer_loop": outer_loop, "inner_loop": inner_loop,
                       "batch_real_used": n_real})
