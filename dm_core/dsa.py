"""Dataset condensation with gradient matching and differentiable Siamese augmentation (DSA), docs/method.md
section 5: DM's baseline, as a matcher of the one engine.

Per iteration: a fresh random network. Per outer-loop step (one image step of the engine): with BatchNorm, the
statistics are set from a separate draw of ``bn_batch_per_class`` real images of every class in one pass and then
frozen; for each class, the cross-entropy gradients of an augmented real batch and of the class's synthetic images
under the SAME augmentation draw are compared layer by layer; one SGD step on the images through the second-order
graph; then ``inner_loop`` epochs of training of the network on the whole synthetic set (shuffled mini-batches of
``batch_train``, training-mode augmentation), as the reference code does: with 500 synthetic images one epoch is 2
SGD steps.

Compiling (``compile``, as DM's): the inner loop's training steps go through ``dm_core.compile`` where the work ahead
pays for the compile (one graph per batch size, shared with ``train_model``'s cost model). The matching step stays
eager: it differentiates the gradients themselves (``create_graph=True``), and torch.compile's autograd has no double
backward (torch 2.14 on this project's CPU: "torch.compile with aot_autograd does not currently support double
backward", after 46 s of compiling).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import augment
from .compile import architecture_key, check_compile, compiled, forward_flops, give_up, should_compile
from .data import ImageDataset
from .engine import LearnConfig, Matcher, condense
from .nets import has_batchnorm, reinit_
from .precision import precision_scope
from .registry import Method, register_method
from .synset import SyntheticSet
from .train import forward_loss
from .validate import check_int, check_number

# (outer_loop, inner_loop) by images per class (docs/method.md section 5).
SCHEDULE = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
# (dataset, ipc) whose schedule differs: CIFAR-100 at 50 images per class (DM appendix A.1).
EXCEPTIONS = {("cifar100", 50): (10, 10)}


def default_loops(ipc: int, dataset: str | None = None) -> tuple[int, int]:
    """The paper's schedule. An unlisted ipc takes that of the next listed ipc above it (5 -> 10's, 15 -> 20's), and
    anything above 50 takes 50's: more outer steps per network is the safe side."""
    if (dataset, ipc) in EXCEPTIONS:
        return EXCEPTIONS[(dataset, ipc)]
    above = [listed for listed in sorted(SCHEDULE) if listed >= ipc]
    return SCHEDULE[above[0] if above else max(SCHEDULE)]


@dataclass(frozen=True)
class DSAConfig(LearnConfig):
    """DSA's settings: the engine's with DSA's defaults, and its network training. ``outer_loop`` / ``inner_loop``
    None take the schedule of the ipc (``default_loops``)."""

    iterations: int | None = 1000
    lr_img: float | None = 0.1
    checkpoint_every: int = 50
    log_every: int = 10
    lr_net: float = 0.01
    batch_train: int = 256  # inner-loop batch on the synthetic set
    bn_batch_per_class: int = 16  # real images per class that set the BatchNorm statistics
    outer_loop: int | None = None
    inner_loop: int | None = None
    compile: str = "auto"  # torch.compile the inner loop's training steps where it pays, "on", "off"

    def __post_init__(self):
        super().__post_init__()
        check_compile(self.compile)
        check_number("lr_net", self.lr_net)
        check_int("batch_train", self.batch_train)
        check_int("bn_batch_per_class", self.bn_batch_per_class)
        if self.outer_loop is not None:
            check_int("outer_loop", self.outer_loop, 1)
        if self.inner_loop is not None:
            check_int("inner_loop", self.inner_loop, 0)

    def default_lr_img(self, data: ImageDataset) -> float:
        return 0.1

    def default_iterations(self, data: ImageDataset) -> int:
        return 1000

    def loops(self, dataset: str | None = None) -> tuple[int, int]:
        outer, inner = default_loops(self.ipc, dataset)
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


class DSAMatcher(Matcher):
    def __init__(self, run, state):
        super().__init__(run, state)
        config = self.config
        self.net.requires_grad_(True)
        self.weights = list(self.net.parameters())
        self.steps, self.inner_loop = config.loops(run.data.name)
        self.batchnorm = has_batchnorm(self.net)
        self.labels = run.class_index.repeat_interleave(config.ipc)
        self.inner_keys = self._inner_keys()
        self.compiling = self._compile_pays()
        self.proven = set()  # batch sizes whose compiled step has run once

    def _inner_keys(self) -> dict[int, tuple]:
        """One compiled training step per batch size the inner loop meets (full batches and a short last one)."""
        images = self.run.images
        n, bt = len(images), self.config.batch_train
        fmt = str(images.dtype), self.device.type, self.config.precision, "dsa-inner"
        return {b: ("train", architecture_key(self.net), (b, *images.shape[1:]), *fmt)
                for b in sorted({min(bt, n), n % bt} - {0})}

    def _compile_pays(self) -> bool:
        """Whether the inner loops of the iterations ahead pay for their graphs (a training step: 3 forward passes)."""
        if self.inner_loop == 0 or self.steps == 1 or self.config.compile == "off":
            return False
        images = self.run.images
        flops = (3 * forward_flops(self.net, tuple(images.shape[1:]), self.device) * len(images) * self.inner_loop
                 * (self.steps - 1) * (self.config.iterations - self.run.start))
        return should_compile(self.config.compile, self.device, list(self.inner_keys.values()), flops)

    @property
    def whole_batch(self) -> bool:
        return False  # BatchNorm statistics are set once per step and frozen, so classes can be matched apart

    def network(self, iteration: int):
        reinit_(self.net, self.run.generator)
        # made per iteration from the run's generator, so a resumed run draws what the uninterrupted one did
        self.augmenter = (augment.DiffAugment(self.run.generator, self.config.augment)
                          if self.config.augment != "none" else None)
        self.optimizer = torch.optim.SGD(self.weights, lr=self.config.lr_net)
        return self.net

    def prepare(self, net, step: int) -> None:
        """BatchNorm: statistics of ``bn_batch_per_class`` real images of every class in one pass, then frozen."""
        if not self.batchnorm:
            net.train()
            return
        store, run = self.run.store, self.run
        n = min(self.config.bn_batch_per_class, int(store.counts[run.classes].min()))
        index = store.sample_indices(run.class_index, n, int(store.counts[run.classes].max()), run.generator)
        with torch.no_grad(), precision_scope(self.device, self.config.precision):
            net.train()(store.images[index])
        net.eval()

    def loss(self, net, real, syn, classes, embed):
        """Per class: the gradient of the real batch's loss against that of the synthetic images (one backward
        pass each; torch.func.vmap over classes computes the same numbers but measured 3x slower on the CPU)."""
        k = len(classes)
        n, m = len(real) // k, len(syn) // k
        total = syn.new_zeros(())
        for i in range(k):
            real_c, syn_c = real[i * n:(i + 1) * n], syn[i * m:(i + 1) * m]
            loss_real = F.cross_entropy(net(real_c).float(), classes[i].expand(n))
            grads_real = [g.detach() for g in torch.autograd.grad(loss_real, self.weights)]
            loss_syn = F.cross_entropy(net(syn_c).float(), classes[i].expand(m))
            grads_syn = torch.autograd.grad(loss_syn, self.weights, create_graph=True)
            total = total + matching_distance(grads_syn, grads_real)
        return total

    def after_step(self, net, iteration: int, step: int) -> None:
        """``inner_loop`` epochs over the whole (augmented) synthetic set, except after the last step."""
        if step == self.steps - 1:
            return
        net.train()
        synthetic = self.run.sync_images().detach()
        for _ in range(self.inner_loop):
            order = torch.randperm(len(synthetic), generator=self.run.generator, device=self.device)
            for idx in order.split(self.config.batch_train):
                xb = synthetic[idx]
                if self.augmenter is not None:
                    xb = self.augmenter(xb)
                self.optimizer.zero_grad(set_to_none=True)
                self._inner_step(net, xb, self.labels[idx])
                self.optimizer.step()

    def _inner_step(self, net, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """Forward and backward of one inner-loop batch, compiled where that pays; a compile that fails at its
        first call carries on eagerly under "auto" (as ``train_model``)."""
        key = self.inner_keys[len(xb)] if self.compiling else None
        try:
            with precision_scope(self.device, self.config.precision):
                loss = (compiled(forward_loss, key) if self.compiling else forward_loss)(net, xb, yb)
            loss.backward()
        except Exception as exc:
            if not self.compiling or len(xb) in self.proven:
                raise
            give_up(key, exc, self.config.compile)
            self.compiling = False
            self.optimizer.zero_grad(set_to_none=True)
            with precision_scope(self.device, self.config.precision):
                loss = forward_loss(net, xb, yb)
            loss.backward()
        self.proven.add(len(xb))

    def meta(self) -> dict:
        return {"outer_loop": self.steps, "inner_loop": self.inner_loop}


def condense_dsa(data: ImageDataset, config: DSAConfig = DSAConfig(), classes: Sequence[int] | None = None,
                 device: str | torch.device = "auto", checkpoint: str | os.PathLike | None = None,
                 resume: bool = False, progress: bool = True, initial: torch.Tensor | None = None) -> SyntheticSet:
    """Learn ``config.ipc`` images per class of ``classes`` (all by default) by gradient matching."""
    return condense("dsa", DSAMatcher, data, config, classes, device, checkpoint, resume, progress, initial)


register_method(Method("dsa", DSAConfig, condense_dsa, "gradient matching with Siamese augmentation (bi-level)",
                       learns=True, per_class=False, paper=True, order=3))
