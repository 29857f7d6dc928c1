"""Coreset baselines (docs/method.md section 5): class-balanced random selection and herding.

Both pick real images, so they take no checkpoint; under torch.distributed every process computes the same set.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from .compile import check_compile
from .custom import model_name
from .data import ImageDataset, class_store, resolve_classes
from .device import make_generator, resolve_device
from .nets import check_model, default_model
from .precision import check_precision, precision_scope
from .registry import Method, register_method
from .synset import SyntheticSet, made_set
from .train import TrainConfig, fresh_model, train_model
from .validate import check_int


@dataclass(frozen=True)
class RandomConfig:
    """Random selection has no option: ``ipc`` distinct real images per class, drawn from ``seed``."""

    ipc: int = 10
    seed: int = 0


@dataclass(frozen=True)
class HerdingConfig:
    """Herding's feature network, the toolkit's own recipe (the paper gives none, docs/method.md section 5): a
    ``model`` trained from ``seed`` for ``epochs`` epochs (batch ``batch_size``, the evaluation recipe's optimiser,
    with augmentation) on the images of the classes being selected."""

    ipc: int = 10
    seed: int = 0
    model: str | nn.Module | Callable | None = None  # a name, one's own network, or None: the image size's ConvNet
    epochs: int = 30
    batch_size: int = 256
    precision: str = "fp32"
    compile: str = "auto"

    def __post_init__(self):
        if self.model is not None:
            check_model(self.model)
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        check_precision(self.precision)
        check_compile(self.compile)


HERDING_RECIPE = ("the toolkit's choice (the paper gives none): features of a {model} trained {epochs} epochs "
                  "from the selection's seed on the selected classes' images")


def select_random(data: ImageDataset, config: RandomConfig = RandomConfig(),
                  classes: Sequence[int] | None = None, device: str | torch.device = "auto",
                  progress: bool = False) -> SyntheticSet:
    """``config.ipc`` distinct real images per class of ``classes`` (all by default), drawn from ``config.seed``
    (on the CPU, whatever ``device``: the same images everywhere)."""
    started = time.perf_counter()
    classes = resolve_classes(data, classes, config.ipc)
    store = class_store(data, classes, torch.device("cpu"))
    images = store.sample(classes, config.ipc, make_generator(config.seed, torch.device("cpu")))
    return made_set(data, images, classes, "random", [time.perf_counter() - started], ipc=config.ipc,
                    seed=config.seed, precision="fp32")


def herding_order(features: torch.Tensor, count: int) -> torch.Tensor:
    """Greedy herding: repeatedly add the sample that brings the running mean of the picks closest to the mean.

    ``features`` (n, D) of one class -> indices (count,) of distinct samples, in pick order.
    """
    target = features.mean(dim=0)
    picked_sum = torch.zeros_like(target)
    available = torch.ones(len(features), dtype=torch.bool, device=features.device)
    order = []
    for k in range(1, count + 1):
        candidate_means = (picked_sum.unsqueeze(0) + features) / k  # mean after adding each candidate
        distance = (candidate_means - target).pow(2).sum(dim=1)
        distance = distance.masked_fill(~available, float("inf"))
        best = int(distance.argmin())
        order.append(best)
        available[best] = False
        picked_sum += features[best]
    return torch.as_tensor(order, dtype=torch.long)


def select_herding(data: ImageDataset, config: HerdingConfig = HerdingConfig(),
                   classes: Sequence[int] | None = None, device: str | torch.device = "auto",
                   progress: bool = False) -> SyntheticSet:
    """Herding on the features of a network trained on the given classes' images only (``HerdingConfig``)."""
    started = time.perf_counter()
    device = resolve_device(device)
    if config.model is None:
        config = replace(config, model=default_model(data.image_size))
    classes = resolve_classes(data, classes, config.ipc)
    store = class_store(data, classes, device)
    train = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, precision=config.precision,
                        compile=config.compile).resolve(data.name)
    net = train_model(fresh_model(config.model, data, config.seed, device), store.images, store.labels, train,
                      config.seed, device, progress)
    chosen = []
    with torch.no_grad():
        for c in classes:  # per class: herding is sequential in the picks, and classes differ in size
            images = store.class_images(c)
            with precision_scope(device, config.precision):
                features = torch.cat([net.embed(images[i:i + 1024]).float() for i in range(0, len(images), 1024)])
            chosen.append(images[herding_order(features, config.ipc).to(device)])
    name = model_name(config.model)
    return made_set(data, torch.cat(chosen), classes, "herding", [time.perf_counter() - started], ipc=config.ipc,
                    seed=config.seed, model=name, feature_epochs=config.epochs, batch_size=config.batch_size,
                    precision=config.precision, feature_network=HERDING_RECIPE.format(model=name,
                                                                                      epochs=config.epochs))


register_method(Method("random", RandomConfig, select_random, "class-balanced random real images",
                       learns=False, per_class=True, paper=True, order=0))
register_method(Method("herding", HerdingConfig, select_herding, "real images whose running feature mean herds "
                       "to the class mean (features: the toolkit's recipe)", learns=False, per_class=False,
                       paper=True, order=1))
