"""One entry point for every way of making a small set: ``make_set(method, data, ipc, ...)``."""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .data import ImageDataset
from .errors import DMError
from .registry import get_method
from .synset import SyntheticSet


def check_options(method: str, ipc: int, seed: int = 0, **options):
    """The method's configuration from ``options``, validated without any data (so bad values fail before data is
    loaded or any work starts). Options that are None keep their default."""
    return get_method(method).configure(ipc, seed, **options)


def make_set(method: str, data: ImageDataset, ipc: int, classes: Sequence[int] | None = None, seed: int = 0,
             device: str | torch.device = "auto", progress: bool = True,
             checkpoint: str | os.PathLike | None = None, resume: bool = False, initial: torch.Tensor | None = None,
             **options) -> SyntheticSet:
    """Make an ``ipc``-images-per-class set of ``classes`` (all by default) with ``method``.

    ``options`` are fields of the method's configuration (``list_methods()`` names the methods,
    ``get_method(name).options`` their options); options that are None keep their default. Methods that learn images
    also take ``checkpoint`` (a file of periodic snapshots), ``resume`` (continue from it) and ``initial`` (images to
    start from, ipc per class grouped by class in the order of ``classes``).
    """
    info = get_method(method)
    config = info.configure(ipc, seed, **options)
    if info.learns:
        return info.run(data, config, classes, device, checkpoint=checkpoint, resume=resume, progress=progress,
                        initial=initial)
    if checkpoint is not None or resume or initial is not None:
        raise DMError(f"{method} selects real images: it takes no checkpoint, resume or initial images")
    return info.run(data, config, classes, device, progress=progress)
