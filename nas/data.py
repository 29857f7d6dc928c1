"""The search's data: a seeded validation split carved out of the training set (docs/method.md section 7)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dm_core import ImageDataset, load_dataset
from dm_core.data import holdout


@dataclass(frozen=True)
class SearchData:
    """``train``: the dataset with only the training part left (test set kept; it records the split, so every set
    made from it does too); ``x_val``/``y_val``: the held-out validation images."""

    train: ImageDataset
    x_val: torch.Tensor
    y_val: torch.Tensor
    split_seed: int
    val_fraction: float


def split_validation(data: ImageDataset, val_fraction: float = 0.1, seed: int = 0) -> SearchData:
    """Hold out ``round(val_fraction * N)`` training images drawn uniformly at random with ``seed``
    (``dm_core.data.holdout``, which ``python -m dm_core condense --val-fraction --split-seed`` uses too)."""
    train, x_val, y_val = holdout(data, val_fraction, seed)
    return SearchData(train, x_val, y_val, seed, val_fraction)


def load_search_data(dataset: str, data_root: str | None, val_fraction: float, split_seed: int,
                     download: bool = True) -> SearchData:
    return split_validation(load_dataset(dataset, root=data_root, download=download), val_fraction, split_seed)
