"""The search's data: a seeded validation split carved out of the training set (PROTOCOL.md section 7)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dm_core import DMError, ImageDataset, load_dataset


@dataclass(frozen=True)
class SearchData:
    """``train``: the dataset with only the training split left (test set kept); ``x_val``/``y_val``: held out."""

    train: ImageDataset
    x_val: torch.Tensor
    y_val: torch.Tensor
    split_seed: int
    val_fraction: float


def split_validation(data: ImageDataset, val_fraction: float = 0.1, seed: int = 0) -> SearchData:
    """Hold out ``round(val_fraction * N)`` training images drawn uniformly at random with ``seed``."""
    n = len(data.y_train)
    n_val = round(val_fraction * n)
    if not 0 < n_val < n:
        raise DMError(f"a validation fraction of {val_fraction} leaves no validation or no training image "
                      f"of the {n} training images of {data.name}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val].sort().values, order[n_val:].sort().values
    return SearchData(data.subset(train), data.x_train[val], data.y_train[val], seed, val_fraction)


def load_search_data(dataset: str, data_root: str | None, val_fraction: float, split_seed: int,
                     download: bool = True) -> SearchData:
    return split_validation(load_dataset(dataset, root=data_root, download=download), val_fraction, split_seed)
