"""``CondensedMemory``: a class-balanced Avalanche storage policy whose images are made by a dm_core method.

    memory = CondensedMemory("dm", ipc=20, iterations=1000)          # nothing else needed
    strategy = Naive(..., plugins=[ReplayPlugin(mem_size=memory.max_size, storage_policy=memory)])

It is an ``ExemplarsBuffer``: ``post_adapt(agent_state, experience)`` takes an experience's samples in, ``buffer`` is
the memory as an Avalanche dataset whose samples look like the stream's (``(x, y, t)`` when the stream carries task
labels), so it works under ``ReplayPlugin``, ER-ACE-style strategies (``strategy.storage_policy = memory``) and
``GDumbMemoryPlugin``. The budget is ``ipc`` images per (task label, class).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from avalanche.training.storage_policy import ExemplarsBuffer

from dm_core import DMError, SyntheticSet

from .benchmark import TensorImages, experience_tensors, has_task_labels
from .builder import METHODS, SCOPE, UPDATE_RULE, MemoryBuilder, step_seed
from .device import check_device

__all__ = ["METHODS", "SCOPE", "UPDATE_RULE", "CondensedMemory", "MemoryBuilder", "as_avalanche", "step_seed"]


def as_avalanche(images: torch.Tensor, labels: torch.Tensor, tasks: torch.Tensor | None = None):
    """An Avalanche classification dataset over tensors; with ``tasks`` its samples are ``(x, y, t)``."""
    from avalanche.benchmarks.utils import DataAttribute, TaskLabels
    from avalanche.benchmarks.utils.classification_dataset import (ClassificationDataset,
                                                                   TaskAwareSupervisedClassificationDataset)

    base = TensorImages(images, labels)
    targets = DataAttribute(base.targets, "targets")
    if tasks is None:
        return ClassificationDataset([base], data_attributes=[targets])
    return TaskAwareSupervisedClassificationDataset([base], data_attributes=[targets, TaskLabels(tasks.tolist())])


class CondensedMemory(ExemplarsBuffer):
    """``ipc`` images per class, made by ``method`` (random, herding, dsa, dm) from the experiences it sees.

    ``builder_options`` are the method's dm_core options (``iterations``, ``batch_real``, ``model``, herding
    ``epochs``, ...), checked here. Image shape and normalisation come from the first experience: the builders work
    on ``(x - mean) / std`` per channel (the scale DM's and DSA's learning rates assume), with ``mean`` / ``std``
    measured on that experience unless given, and the buffer holds images in the stream's own space.
    ``num_classes`` (optional) fixes ``max_size`` to ``ipc * num_classes``; without it ``max_size`` grows with the
    classes held. ``cache_dir`` keeps each step's result as a dm_core set file (see ``MemoryBuilder``).

    A class seen again is updated within its budget (``UPDATE_RULE``); an experience is taken in once, however
    often ``post_adapt`` is called with it.
    """

    def __init__(self, method: str = "dm", ipc: int = 20, *, seed: int = 0, device: str = "auto",
                 num_classes: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, name: str = "stream", cache_dir: str | Path | None = None,
                 progress: bool = False, **builder_options):
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise DMError(f"num_classes must be a positive integer, got {num_classes!r}")
        if (mean is None) != (std is None) or (std is not None and min(std) <= 0):
            raise DMError(f"give mean and std together, std positive (got mean {mean}, std {std})")
        self.builder = MemoryBuilder(method, ipc, seed=seed, device=device, options=builder_options, name=name,
                                     num_classes=num_classes, cache_dir=None if cache_dir is None else Path(cache_dir),
                                     progress=progress)
        super().__init__(max_size=ipc * num_classes if num_classes else 0)
        self.num_classes = num_classes
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.memories: dict[tuple[int, int], SyntheticSet] = {}  # (task, class) -> its ipc images, unit scale
        self.task_aware: bool | None = None  # whether the stream's samples carry task labels
        self._taken: set = set()

    @property
    def method(self) -> str:
        return self.builder.method

    @property
    def ipc(self) -> int:
        return self.builder.ipc

    def post_adapt(self, agent_state, exp) -> None:
        """Take the experience's samples in: build its new classes, update its returning ones, keep the others."""
        key = (getattr(getattr(exp, "origin_stream", None), "name", None), exp.current_experience)
        if key in self._taken:
            return
        images, labels, tasks = experience_tensors(exp.dataset)
        if len(labels):
            if self.task_aware is None:
                self.task_aware = has_task_labels(exp.dataset)
            unit = self._to_unit(images)
            for task in sorted(set(tasks.tolist())):
                mine = tasks == task
                classes = sorted(set(labels[mine].tolist()))
                held = {c: self.memories[(task, c)].images for c in classes if (task, c) in self.memories}
                synset = self.builder(unit[mine], labels[mine], step=exp.current_experience, task=task, held=held,
                                      mean=self.mean, std=self.std)
                for c in classes:
                    images_c = synset.select_classes([c])
                    if len(images_c) != self.ipc:
                        raise DMError(f"the {self.method} builder gave {len(images_c)} images for class {c}, "
                                      f"not {self.ipc}")
                    self.memories[(task, c)] = images_c
            if self.num_classes is None:
                self.max_size = self.ipc * len(self.memories)
            self.buffer = as_avalanche(*self.tensors(), self.task_labels() if self.task_aware else None)
        self._taken.add(key)

    def _to_unit(self, images: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            self.mean = tuple(images.mean(dim=(0, 2, 3)).tolist())
            self.std = tuple(images.std(dim=(0, 2, 3)).clamp_min(1e-6).tolist())
        if images.shape[1] != len(self.mean):
            raise DMError(f"the memory holds {len(self.mean)}-channel images, the experience has {images.shape[1]}")
        if self.memories:
            shape = next(iter(self.memories.values())).images.shape[1:]
            if images.shape[1:] != shape:
                raise DMError(f"the memory holds images of shape {tuple(shape)}, the experience "
                              f"{tuple(images.shape[1:])}")
        return (images - self._stat(self.mean)) / self._stat(self.std)

    @staticmethod
    def _stat(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values).view(1, -1, 1, 1)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the whole memory in the stream's space, class by class in order of first arrival."""
        if not self.memories:
            raise DMError("the memory is empty: no experience has been seen yet")
        sets = list(self.memories.values())
        images = torch.cat([s.images for s in sets]) * self._stat(self.std) + self._stat(self.mean)
        return images, torch.cat([s.labels for s in sets])

    def task_labels(self) -> torch.Tensor:
        """The task label of every image of ``tensors()``."""
        return torch.cat([torch.full((len(s),), task, dtype=torch.long) for (task, _), s in self.memories.items()])

    def classes(self) -> list[int]:
        """The classes held (over all task labels), in order of first arrival."""
        return list(dict.fromkeys(c for _, c in self.memories))

    def resize(self, strategy, new_size: int) -> None:
        """The budget is per class (ipc), so only a total that still fits every held class is accepted."""
        if new_size < self.ipc * len(self.memories):
            raise DMError(f"a memory of {new_size} images cannot hold {self.ipc} per class for "
                          f"{len(self.memories)} classes")
        self.max_size = new_size
