"""IDM (Zhao et al., CVPR 2023): improved distribution matching (docs/successors.md, "IDM").

Three changes to DM's iteration:
- partition and expansion (section 4.1): with ``factor`` l > 1 every synthetic image is an l x l mosaic whose tiles
  are enlarged to full size before matching, l^2 sub-images per stored image (``engine.partition_expand``);
- a model queue (section 4.2) instead of a fresh random network: ``queue_size`` networks, each trained a little on
  real data whenever it is drawn; every ``push_every`` iterations ``push_count`` fresh networks join at the back and,
  once the queue is full, the oldest leaves (its module is re-initialised and re-used as the newcomer);
- class-aware regularisation (section 4.3): the synthetic images' cross-entropy under the matching network, weighted
  by ``ce_weight`` times that network's training accuracy (in percent, as the authors' code weighs it).
Per iteration: push if due; draw ``match_models`` networks from the queue and match with them (in eval mode); one
step on the images; then draw ``train_models`` networks and train each ``train_steps`` SGD steps on real batches of
``train_batch`` images of all condensed classes (lr ``lr_net``, momentum 0.9, weight decay 5e-4).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset
from ..dm import MatchingConfig
from ..engine import Matcher, build, condense
from ..errors import DMError
from ..nets import reinit_
from ..precision import precision_scope
from ..registry import Method, register_method
from ..synset import SyntheticSet
from ..validate import check_int, check_number
from .common import by_class

# The authors' commands (uitrbn/IDM, command.txt) by (dataset, ipc): ce_weight, model_train_steps, and the interval
# of the networks' accuracy resets. Elsewhere: ce_weight 0.5 below 50 ipc and 0.1 from 50, 10 steps, resets every
# 100 iterations below 50 ipc and every 500 from 50 (the CIFAR-10 commands').
AUTHORS = {("cifar100", 10): (0.1, 50, 100), ("tinyimagenet", 50): (0.8, 50, 1000)}


@dataclass(frozen=True)
class IDMConfig(MatchingConfig):
    """IDM's settings; every default is the authors' (docs/successors.md, "IDM", names the command or script line).
    Fields left None depend on the dataset and ipc (``default_rules``)."""

    lr_img: float | None = 0.2
    batch_real: int | None = None  # None: 5000 at 1 ipc (every image of a CIFAR class), else 256
    factor: int = 2  # every authors' command partitions each stored image into 2 x 2 (section 4.1)
    ce_weight: float | None = None  # None: the authors' by dataset and ipc (AUTHORS), else 0.5 below 50 ipc, 0.1 above
    queue_size: int = 100
    initial_models: int = 3
    push_every: int | None = None  # None: every 5 iterations at 1 image per class, every 30 otherwise
    push_count: int = 1
    match_models: int = 1
    train_models: int = 2
    train_steps: int | None = None  # None: 10, or the authors' by dataset and ipc (AUTHORS)
    train_batch: int = 256
    lr_net: float = 0.01
    accuracy_reset_every: int | None = None  # None: every 100 iterations below 50 ipc, 500 from 50 (AUTHORS)

    def __post_init__(self):
        super().__post_init__()
        for name in ("queue_size", "initial_models", "push_count", "match_models", "train_batch"):
            check_int(name, getattr(self, name), 1)
        check_int("train_models", self.train_models, 0)
        if self.train_steps is not None:
            check_int("train_steps", self.train_steps, 0)
        if self.accuracy_reset_every is not None:
            check_int("accuracy_reset_every", self.accuracy_reset_every, 1)
        check_number("lr_net", self.lr_net)
        if self.push_every is not None:
            check_int("push_every", self.push_every, 1)
        if self.ce_weight is not None:
            check_number("ce_weight", self.ce_weight, zero=True)
        if self.initial_models > self.queue_size or self.match_models > self.queue_size:
            raise DMError(f"initial_models ({self.initial_models}) and match_models ({self.match_models}) cannot "
                          f"exceed queue_size ({self.queue_size})")

    def default_rules(self, data: ImageDataset) -> dict:
        ce, steps, reset = AUTHORS.get((data.name, self.ipc), (0.5 if self.ipc < 50 else 0.1, 10,
                                                                100 if self.ipc < 50 else 500))
        return {**super().default_rules(data), "batch_real": lambda: 5000 if self.ipc == 1 else 256,
                "ce_weight": lambda: ce, "train_steps": lambda: steps, "accuracy_reset_every": lambda: reset,
                "push_every": lambda: 5 if self.ipc == 1 else 30}


class ModelQueue:
    """A first-in first-out queue of networks, each with its own SGD optimiser and running training accuracy.

    ``push`` adds a freshly initialised network at the back; when the queue is full the front (oldest) network is
    taken out, re-initialised in place and re-used as the newcomer, so the queue never allocates past ``capacity``.
    All randomness comes from ``generator``.
    """

    def __init__(self, build: Callable[[], nn.Module], capacity: int, lr: float, generator: torch.Generator):
        self.build, self.capacity, self.lr, self.generator = build, capacity, lr, generator
        self.nets: list[nn.Module] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.correct: list[torch.Tensor] = []  # right answers in training, on the device (no host sync)
        self.seen: list[int] = []
        self.pushed = 0

    def __len__(self) -> int:
        return len(self.nets)

    def _optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(net.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)

    def push(self) -> nn.Module:
        if len(self.nets) == self.capacity:
            net = self.nets.pop(0)  # the oldest leaves; its module is re-used as the newcomer
            for column in (self.optimizers, self.correct, self.seen):
                column.pop(0)
        else:
            net = self.build()
        reinit_(net, self.generator)
        net.requires_grad_(False)
        self.nets.append(net)
        self.optimizers.append(self._optimizer(net))
        self.correct.append(torch.zeros((), dtype=torch.long, device=self.generator.device))
        self.seen.append(0)
        self.pushed += 1
        return net

    def draw(self, count: int) -> list[int]:
        """``count`` distinct queue positions, uniformly at random."""
        order = torch.randperm(len(self.nets), generator=self.generator, device=self.generator.device)
        return order[:count].tolist()

    def reset_accuracy(self) -> None:
        """Forget every network's training accuracy (the authors reset it every 100 or 500 iterations)."""
        self.correct = [torch.zeros_like(c) for c in self.correct]
        self.seen = [0] * len(self.seen)

    def accuracy(self, index: int) -> torch.Tensor:
        """Training accuracy in percent of network ``index`` since it joined (0 before any training)."""
        seen = self.seen[index]
        if not seen:
            return torch.zeros((), device=self.correct[index].device)
        return self.correct[index].float() * (100.0 / seen)

    def train(self, index: int, images: torch.Tensor, labels: torch.Tensor, steps: int, batch: int,
              precision: str = "fp32") -> None:
        """``steps`` SGD steps of network ``index``, each on ``batch`` distinct images of (images, labels) drawn at
        random (without replacement, as the authors' permutation)."""
        net, optimizer = self.nets[index].train().requires_grad_(True), self.optimizers[index]
        batch = min(batch, len(images))
        for _ in range(steps):
            idx = torch.randperm(len(images), generator=self.generator, device=images.device)[:batch]
            with precision_scope(images.device, precision):
                logits = net(images[idx]).float()
            loss = F.cross_entropy(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            self.correct[index] = self.correct[index] + (logits.detach().argmax(1) == labels[idx]).sum()
            self.seen[index] += len(idx)
        net.requires_grad_(False)

    def state_dict(self) -> dict:
        return {"nets": [n.state_dict() for n in self.nets], "optimizers": [o.state_dict() for o in self.optimizers],
                "correct": [c.cpu() for c in self.correct], "seen": list(self.seen), "pushed": self.pushed}

    def load_state_dict(self, state: dict) -> None:
        self.nets, self.optimizers = [], []
        for net_state, optimizer_state in zip(state["nets"], state["optimizers"]):
            net = self.build()
            net.load_state_dict(net_state)
            net.requires_grad_(False)
            optimizer = self._optimizer(net)
            optimizer.load_state_dict(optimizer_state)
            self.nets.append(net)
            self.optimizers.append(optimizer)
        self.correct = [c.to(self.generator.device) for c in state["correct"]]
        self.seen = [int(s) for s in state["seen"]]
        self.pushed = int(state["pushed"])


def idm_loss(net, real: torch.Tensor, syn: torch.Tensor, labels: torch.Tensor, ce_weight) -> torch.Tensor:
    """DM's distance of class-mean embeddings plus ``ce_weight`` times the sum over classes of the mean cross-entropy
    of the class's synthetic images (batches grouped by class, ``labels`` the classes in order, already augmented)."""
    k = len(labels)
    with torch.no_grad():
        real_mean = by_class(net.embed(real), k).mean(1)
    syn_emb = net.embed(syn)
    distance = (real_mean - by_class(syn_emb, k).mean(1)).pow(2).sum()
    ce = F.cross_entropy(net.classifier(syn_emb).float(), labels.repeat_interleave(len(syn) // k), reduction="none")
    return distance + ce_weight * by_class(ce, k).mean(1).sum()


class IDMMatcher(Matcher):
    def __init__(self, run, state: dict | None):
        super().__init__(run, state)
        config = self.config
        self.net.eval()  # matching networks run in eval mode: BatchNorm uses the statistics of their training
        self.queue = ModelQueue(lambda: build(config.model, run.data, run.device, config.precision),
                                config.queue_size, config.lr_net, run.generator)
        if state and "queue" in state:
            self.queue.load_state_dict(state["queue"])
        else:
            for _ in range(config.initial_models):
                self.queue.push()
        self.matching: list[int] = []

    def network(self, iteration: int) -> list[nn.Module]:
        c = self.config
        if iteration and iteration % c.accuracy_reset_every == 0:  # before the push and the matching, as the authors
            self.queue.reset_accuracy()
        if iteration % c.push_every == 0:
            for _ in range(c.push_count):
                self.queue.push()
        self.matching = self.queue.draw(c.match_models)
        return [self.queue.nets[i].eval() for i in self.matching]

    @property
    def whole_batch(self) -> bool:
        return False  # matching networks run in eval mode

    def loss(self, nets, real, syn, classes, embed):
        return sum(idm_loss(net, real, syn, classes, self.config.ce_weight * self.queue.accuracy(index))
                   for index, net in zip(self.matching, nets))

    def after_step(self, net, iteration: int, step: int) -> None:
        c, store = self.config, self.run.store
        for index in self.queue.draw(c.train_models):  # after the image step, as the authors
            self.queue.train(index, store.images, store.labels, c.train_steps, c.train_batch, c.precision)

    def state(self) -> dict:
        return {"queue": self.queue.state_dict()}

    def meta(self) -> dict:
        return {"models_pushed": self.queue.pushed}  # the settings used are in the provenance's config fields


def condense_idm(data: ImageDataset, config: IDMConfig = IDMConfig(), classes: Sequence[int] | None = None,
                 device: str | torch.device = "auto", checkpoint: str | os.PathLike | None = None,
                 resume: bool = False, progress: bool = True, initial: torch.Tensor | None = None) -> SyntheticSet:
    """IDM: ``config.ipc`` images per class of ``classes`` (all by default) with IDM's queue and regularisation."""
    return condense("idm", IDMMatcher, data, config, classes, device, checkpoint, resume, progress, initial)


register_method(Method("idm", IDMConfig, condense_idm, "improved DM: a queue of partly trained networks, "
                       "class-aware regularisation, partition and expansion", learns=True, per_class=False, order=5))
