"""Dataset condensation with distribution matching (DM), docs/method.md section 1: the loss and its matcher.

Each iteration re-initialises one network in place (fresh random weights, no training) and, per class, compares the
mean embedding of an augmented real batch with the mean embedding of the class's synthetic images under the same
augmentation draw: loss = sum_c || mean real embedding_c - mean synthetic embedding_c ||^2. The engine
(``dm_core.engine``) batches the classes into as few passes as memory allows, so the real images of a chunk go
through the network in one no-grad pass and its synthetic images in a second.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .compile import check_compile
from .data import ImageDataset
from .engine import LearnConfig, Matcher, condense, embedding
from .nets import reinit_
from .registry import Method, register_method
from .synset import SyntheticSet
from .validate import check_int

LR_IMG_FOR_LARGE_SETS = {"cifar100": 1.0}  # the reference keeps 1 on CIFAR-100 at 100 and 125 images per class


@dataclass(frozen=True)
class MatchingConfig(LearnConfig):
    """The settings of DM and of the successors built on its iteration: the engine's (``LearnConfig``) and
    ``factor``.

    ``iterations`` None: 20,000, or 10,000 for 64x64 images (TinyImageNet). ``lr_img`` None: 1 below 100 images
    per class; from 100 on 10 (CIFAR-10's), except CIFAR-100, which keeps 1 (docs/method.md section 1).
    ``factor`` > 1 stores each image as a factor x factor mosaic of smaller ones, expanded before matching (IDM's
    partition and expansion); the set then holds ipc * factor**2 images per class.
    """

    factor: int = 1

    def __post_init__(self):
        super().__post_init__()
        check_int("factor", self.factor)

    def default_iterations(self, data: ImageDataset) -> int:
        return 10_000 if min(data.image_size) >= 64 else 20_000

    def default_lr_img(self, data: ImageDataset) -> float:
        if self.ipc < 100:
            return 1.0
        return LR_IMG_FOR_LARGE_SETS.get(data.name, 10.0)


@dataclass(frozen=True)
class DMConfig(MatchingConfig):
    """DM's settings: ``MatchingConfig``'s and ``compile``, since DM's loss reads the network only through its
    embedding, which the engine can compile."""

    compile: str = "auto"  # torch.compile the embedding where it pays (dm_core/compile.py), "on", "off"

    def __post_init__(self):
        super().__post_init__()
        check_compile(self.compile)


def class_means(embedding: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes * n, D) grouped by class -> (num_classes, D) means."""
    return embedding.float().view(num_classes, -1, embedding.shape[-1]).mean(dim=1)


def dm_loss(net, real: torch.Tensor, synthetic: torch.Tensor, num_classes: int,
            real_aug=None, syn_aug=None, real_embed=None, syn_embed=None) -> torch.Tensor:
    """The batched DM loss: images grouped by class, classes in the same order in both batches.

    ``real_aug`` / ``syn_aug`` map a batch to its augmented version (the same draw per class on both sides);
    ``real_embed(net, x)`` / ``syn_embed(net, x)`` compute the embeddings (default ``net.embed(x)``).
    """
    with torch.no_grad():
        real_mean = class_means((real_embed or embedding)(net, real_aug(real) if real_aug else real), num_classes)
    syn_mean = class_means((syn_embed or embedding)(net, syn_aug(synthetic) if syn_aug else synthetic), num_classes)
    return (real_mean - syn_mean).pow(2).sum()


class DMMatcher(Matcher):
    compiles = True

    def network(self, iteration: int):
        return reinit_(self.net, self.run.generator)

    def loss(self, net, real, syn, classes, embed):
        return dm_loss(net, real, syn, len(classes), real_embed=lambda n, x: embed("real", x),
                       syn_embed=lambda n, x: embed("syn", x))


def condense_dm(data: ImageDataset, config: DMConfig = DMConfig(), classes: Sequence[int] | None = None,
                device: str | torch.device = "auto", checkpoint: str | os.PathLike | None = None,
                resume: bool = False, progress: bool = True, initial: torch.Tensor | None = None) -> SyntheticSet:
    """Learn ``config.ipc`` synthetic images for each class of ``classes`` (all classes by default)."""
    return condense("dm", DMMatcher, data, config, classes, device, checkpoint, resume, progress, initial)


register_method(Method("dm", DMConfig, condense_dm, "distribution matching: class-mean embeddings of fresh random "
                       "networks", learns=True, per_class=True, paper=True, order=2))
