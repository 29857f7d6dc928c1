"""Class-incremental benchmark over a dm_core ImageDataset, built with Avalanche's own builder.

The class order of seed ``s`` is docs/method.md section 6's: ``np.random.seed(s); np.random.permutation(num_classes)``,
split evenly into the steps. Labels are kept as they are (no remapping), so a network with a ``num_classes``-way head
is trained on original labels, as in the paper. The experiences carry task labels (all 0) as those of Avalanche's
Split* benchmarks do: a sample is ``(x, y, t)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dm_core import DMError, ImageDataset


def class_order(seed: int, num_classes: int) -> list[int]:
    """The paper's class order for seed ``seed``: numpy's legacy global generator, seeded, then permuted.

    This touches numpy's global RNG on purpose (that is how the reference code draws the order); nothing else here
    relies on it.
    """
    np.random.seed(seed)
    return [int(c) for c in np.random.permutation(num_classes)]


def split_steps(order: Sequence[int], steps: int) -> list[list[int]]:
    """``order`` cut into ``steps`` equal consecutive chunks (the new classes of each step)."""
    if steps < 1 or len(order) % steps:
        raise DMError(f"{steps} steps do not divide {len(order)} classes evenly: use a divisor of {len(order)}")
    size = len(order) // steps
    return [list(order[i * size:(i + 1) * size]) for i in range(steps)]


class TensorImages(Dataset):
    """Images and labels held as two tensors; ``targets`` is what Avalanche reads to split by class. A sample's label
    is an int, or a 0-d tensor with ``tensor_labels`` (as a ``TensorDataset``'s), so that it collates with the
    stream's samples in one batch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, tensor_labels: bool = False):
        self.images, self.labels = images, labels.long()
        self.targets = self.labels.tolist()
        self.tensor_labels = tensor_labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], (self.labels[i] if self.tensor_labels else self.targets[i])


def make_benchmark(data: ImageDataset, order: Sequence[int], steps: int):
    """Avalanche ``class_incremental_benchmark`` with train and test streams in the fixed ``order``.

    The tensors are handed over as plain datasets, so Avalanche wraps them as it wraps any user dataset (task label 0
    on every sample).
    """
    from avalanche.benchmarks.scenarios import class_incremental_benchmark

    split_steps(order, steps)  # same check, dm_core's error type
    streams = {"train": TensorImages(data.x_train, data.y_train), "test": TensorImages(data.x_test, data.y_test)}
    return class_incremental_benchmark(streams, class_order=list(order), num_experiences=steps)


def has_task_labels(dataset) -> bool:
    """Whether an Avalanche dataset's samples end with a task label, ``(x, y, t)``."""
    return hasattr(dataset, "targets_task_labels")


def experience_tensors(dataset, batch_size: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, task labels) of every sample of an Avalanche classification dataset, as CPU tensors.

    The eval view is used so that a user's train-time augmentation does not leak into the memory. Datasets without
    task labels get task label 0.
    """
    if len(dataset) == 0:
        return torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    view = dataset.eval() if hasattr(dataset, "eval") else dataset
    xs, ys, ts = [], [], []
    for batch in DataLoader(view, batch_size=batch_size, shuffle=False, num_workers=0):
        xs.append(torch.as_tensor(batch[0]).float())
        ys.append(torch.as_tensor(batch[1], dtype=torch.long))
        ts.append(torch.as_tensor(batch[2], dtype=torch.long) if len(batch) > 2 else torch.zeros_like(ys[-1]))
    images = torch.cat(xs)
    if images.dim() != 4:
        raise DMError(f"the experience's images have shape {tuple(images.shape[1:])}; a condensed memory needs "
                      f"C x H x W image tensors (add a ToTensor transform to the benchmark)")
    return images, torch.cat(ys), torch.cat(ts)
