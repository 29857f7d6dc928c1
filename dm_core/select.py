"""Coreset baselines (PROTOCOL.md section 5): class-balanced random selection and herding."""
from __future__ import annotations

import time
from typing import Sequence

import torch

from .condense import class_store, finish_set, resolve_classes
from .data import ImageDataset
from .device import make_generator, resolve_device
from .precision import precision_scope
from .synset import SyntheticSet
from .train import TrainConfig, fresh_model, train_model


def select_random(data: ImageDataset, ipc: int, classes: Sequence[int] | None = None, seed: int = 0) -> SyntheticSet:
    """``ipc`` distinct real images per class, drawn from ``seed``."""
    started = time.perf_counter()
    classes = resolve_classes(data, classes, ipc)
    store = class_store(data, classes, torch.device("cpu"))
    images = store.sample(classes, ipc, make_generator(seed, torch.device("cpu")))
    return finish_set(data, images, classes, "random", started, ipc=ipc, seed=seed, precision="fp32")


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


def select_herding(data: ImageDataset, ipc: int, classes: Sequence[int] | None = None, seed: int = 0,
                   device: str | torch.device = "auto", model: str = "convnet", epochs: int = 30,
                   batch_size: int = 256, progress: bool = False, precision: str = "fp32",
                   compile: str = "auto") -> SyntheticSet:
    """Herding on the features of a ConvNet trained (from ``seed``) on the given classes' images only."""
    started = time.perf_counter()
    device = resolve_device(device)
    classes = resolve_classes(data, classes, ipc)
    store = class_store(data, classes, device)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, precision=precision, compile=compile)
    net = train_model(fresh_model(model, data, seed, device), store.images, store.labels, config, seed, device,
                      progress)
    chosen = []
    with torch.no_grad():
        for c in classes:  # per class: herding is sequential in the picks, and classes differ in size
            images = store.class_images(c)
            with precision_scope(device, precision):
                features = torch.cat([net.embed(images[i:i + 1024]).float() for i in range(0, len(images), 1024)])
            chosen.append(images[herding_order(features, ipc).to(device)])
    return finish_set(data, torch.cat(chosen), classes, "herding", started, ipc=ipc, seed=seed, model=model,
                      feature_epochs=epochs, precision=precision)
