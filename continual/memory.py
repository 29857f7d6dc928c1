"""The memory: a class-balanced Avalanche storage policy whose new classes are filled by a dm_core memory builder.

``MemoryBuilder`` turns one step's new classes into ``ipc`` images per class (random, herding, DSA or DM, through
``dm_core.make_set``); ``CondensedMemory`` is the ``ExemplarsBuffer`` that calls it once per new class and never
touches the memories of classes it already holds.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import torch
from avalanche.training.storage_policy import ExemplarsBuffer

from dm_core import DMError, ImageDataset, SyntheticSet, make_set

from .benchmark import as_avalanche, dataset_tensors

METHODS = ("random", "herding", "dsa", "dm")

# What each method is given at a step (PROTOCOL.md section 6). Every method receives the new classes' training
# images only; "per class" methods treat each class on its own (DM's loss is a sum of independent per-class terms
# on a BN-free ConvNet, so condensing the new classes in one call is the per-class objective, just batched), while
# "new classes" methods train a network on the new classes' data together (herding's feature net, DSA's nets).
SCOPE = {"random": "per class", "dm": "per class",
         "herding": "new classes of the step", "dsa": "new classes of the step"}


def step_seed(seed: int, step: int) -> int:
    """The seed of one step of a seeded sequence (memory building or training): distinct for steps < 1000."""
    return seed * 1000 + step


@dataclass(frozen=True, eq=False)
class MemoryBuilder:
    """Builds the memory of one step's new classes with ``dm_core.make_set``.

    ``template`` gives the dataset's metadata (name, class count, mean/std); its training tensors are replaced by
    the step's data. ``options`` go to the method's config (e.g. ``iterations``, ``batch_real``, ``model``,
    herding ``epochs``). With ``cache_dir`` each step's memory is saved as ``step{t:02d}.pt`` (a dm_core
    synthetic-set file) and loaded instead of rebuilt when present: a finished step is never redone.
    """

    method: str
    ipc: int
    template: ImageDataset
    seed: int = 0
    device: str = "auto"
    options: Mapping = field(default_factory=dict)
    cache_dir: Path | None = None
    progress: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise DMError(f"unknown memory method {self.method!r}: choose one of {', '.join(METHODS)}")

    def path(self, step: int) -> Path | None:
        return None if self.cache_dir is None else Path(self.cache_dir) / f"step{step:02d}.pt"

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], step: int) -> SyntheticSet:
        """``ipc`` images for each of ``classes``, built from (images, labels) restricted to those classes."""
        classes = [int(c) for c in classes]
        path = self.path(step)
        if path is not None and path.is_file():
            cached = SyntheticSet.load(path)
            if cached.classes() != sorted(classes) or len(cached) != self.ipc * len(classes):
                raise DMError(f"{path} holds classes {cached.classes()} ({len(cached)} images), not the "
                              f"{self.ipc} per class of {sorted(classes)} this run needs: use another --out")
            return cached
        keep = torch.isin(labels, torch.as_tensor(classes, dtype=torch.long))
        data = replace(self.template, x_train=images[keep], y_train=labels[keep])
        synset = make_set(self.method, data, self.ipc, classes=classes, seed=step_seed(self.seed, step),
                          device=self.device, progress=self.progress, **dict(self.options))
        synset.meta.update(step=step, step_classes=classes, order_seed=self.seed, scope=SCOPE[self.method])
        if path is not None:
            synset.save(path)
        return synset


class CondensedMemory(ExemplarsBuffer):
    """Class-balanced memory of ``builder.ipc`` images per class, an Avalanche storage policy.

    ``post_adapt(agent_state, exp)`` sees the experience that just arrived: it builds the memory of the
    experience's classes that are not yet in memory (from ``exp.dataset`` only) and leaves every older class's
    images as they are. ``buffer`` is the whole memory as an Avalanche dataset (what a strategy trains on);
    ``tensors()`` is the same as two tensors (what dm_core's trainer takes).
    """

    def __init__(self, builder: MemoryBuilder):
        super().__init__(max_size=builder.ipc * builder.template.num_classes)
        self.builder = builder
        self.memories: dict[int, SyntheticSet] = {}  # class -> its ipc images, in arrival order

    @property
    def ipc(self) -> int:
        return self.builder.ipc

    def post_adapt(self, agent_state, exp) -> None:
        new = [c for c in sorted(int(c) for c in exp.classes_in_this_experience) if c not in self.memories]
        if not new:
            return
        images, labels = dataset_tensors(exp.dataset)
        synset = self.builder(images, labels, new, step=exp.current_experience)
        for c in new:
            memory = synset.select_classes([c])
            if len(memory) != self.ipc:
                raise DMError(f"the {self.builder.method} builder gave {len(memory)} images for class {c}, "
                              f"not {self.ipc}")
            self.memories[c] = memory
        self.buffer = as_avalanche(*self.tensors())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the whole memory, class by class in arrival order."""
        if not self.memories:
            raise DMError("the memory is empty: no experience has been seen yet")
        sets = list(self.memories.values())
        return torch.cat([s.images for s in sets]), torch.cat([s.labels for s in sets])

    def resize(self, strategy, new_size: int) -> None:
        """The budget is per class (ipc), so only a total that still fits every held class is accepted."""
        if new_size < self.ipc * len(self.memories):
            raise DMError(f"a memory of {new_size} images cannot hold {self.ipc} per class for "
                          f"{len(self.memories)} classes")
        self.max_size = new_size
