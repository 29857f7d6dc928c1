"""``CondensedMemory``: a class-balanced Avalanche storage policy whose images are made by a dm_core method.

    memory = CondensedMemory("dm", ipc=20, iterations=1000)          # nothing else needed
    strategy = Naive(..., plugins=[ReplayPlugin(mem_size=memory.max_size, storage_policy=memory)])

It is an ``ExemplarsBuffer`` that offers what Avalanche's ``ClassBalancedBuffer`` offers: ``post_adapt(agent_state,
experience)`` takes an experience's samples in; ``buffer`` is the memory as an Avalanche dataset whose samples are
``(x, y, t)`` (a task label always, 0 when the stream has none, as Avalanche's own subsets do; labels as 0-d tensors
when the stream's are), an empty dataset while nothing was taken in; ``buffer_groups`` (one group per class, each
with its ``buffer``) and ``buffer_datasets``; ``resize(strategy, new_size)``, which shrinks; ``max_size``, never below
what the memory holds. So it works under ``ReplayPlugin``, ER-ACE, ER-AML, ``MIRPlugin``, supervised contrastive
replay (``storage_policy = memory``) and ``GDumbMemoryPlugin``.

The budget is said the DM way, ``ipc`` images per (task label, class), or Avalanche's way, ``max_size`` images in
all, divided over the classes seen so far (``adaptive_size=True``) or over ``total_num_classes``.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from avalanche.training.storage_policy import ExemplarsBuffer

from dm_core import DMError, SyntheticSet

from .benchmark import TensorImages, experience_tensors
from .builder import METHODS, SCOPE, UPDATE_RULE, MemoryBuilder, step_seed, tensor_bytes

__all__ = ["METHODS", "SCOPE", "UPDATE_RULE", "CondensedMemory", "MemoryBuilder", "as_avalanche", "step_seed"]


def as_avalanche(images: torch.Tensor, labels: torch.Tensor, tasks: torch.Tensor | None = None,
                 tensor_labels: bool = False):
    """An Avalanche classification dataset over tensors whose samples are ``(x, y, t)`` (``tasks`` None: task label
    0 for every sample); ``tensor_labels``: ``y`` is a 0-d tensor, else an int."""
    from avalanche.benchmarks.utils import DataAttribute, TaskLabels
    from avalanche.benchmarks.utils.classification_dataset import TaskAwareSupervisedClassificationDataset

    base = TensorImages(images, labels, tensor_labels=tensor_labels)
    tasks = torch.zeros(len(labels), dtype=torch.long) if tasks is None else tasks
    return TaskAwareSupervisedClassificationDataset(
        [base], data_attributes=[DataAttribute(base.targets, "targets"), TaskLabels(tasks.tolist())])


class MemoryGroup:
    """One class of the memory, as Avalanche's balanced buffers show a group: ``buffer`` (its samples) and
    ``resize`` (keeps its first ``new_size`` images)."""

    def __init__(self, memory: CondensedMemory, label: int):
        self.memory, self.label = memory, label

    @property
    def buffer(self):
        return self.memory.class_buffer(self.label)

    def resize(self, strategy, new_size: int) -> None:
        self.memory.shrink_class(self.label, new_size)


class CondensedMemory(ExemplarsBuffer):
    """Images made by ``method`` (any of ``dm_core.list_methods()``) from the experiences the memory sees.

    Budget: ``ipc`` images per (task label, class) (the DM way; 20 when neither ``ipc`` nor ``max_size`` is given),
    or ``max_size`` images in all (Avalanche's way): with ``adaptive_size`` divided equally over the classes seen so
    far (the classes held shrink as new ones come), else over ``total_num_classes``. ``total_num_classes`` (alias
    ``num_classes``) with ``ipc`` fixes ``max_size`` to ``ipc * total_num_classes`` from the start; without it
    ``max_size`` grows with the classes held. A class with fewer images than its share keeps them all as they are
    and is condensed once it has more.

    ``builder_options`` are the method's dm_core options (``iterations``, ``batch_real``, ``model``, herding
    ``epochs``, ...), checked here, as is ``device``. Image shape and normalisation come from the first experience:
    the builders work on ``(x - mean) / std`` per channel (the scale DM's and DSA's learning rates assume), with
    ``mean`` / ``std`` measured on that experience unless given, and the buffer holds images in the stream's own
    space. ``cache_dir`` keeps each step's result as a dm_core set file named by a digest of everything it is made
    of (see ``MemoryBuilder``).

    A class seen again is updated within its budget (``UPDATE_RULE``); an experience is taken in once, however often
    ``post_adapt`` is called with it (experiences are recognised by their samples, so two benchmarks' "train" 0 are
    two experiences).
    """

    def __init__(self, method: str = "dm", ipc: int | None = None, *, max_size: int | None = None,
                 adaptive_size: bool = True, total_num_classes: int | None = None, seed: int = 0,
                 device: str = "auto", num_classes: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, name: str = "stream", cache_dir: str | Path | None = None,
                 progress: bool = False, **builder_options):
        if num_classes is not None and total_num_classes is not None and num_classes != total_num_classes:
            raise DMError(f"num_classes {num_classes} and total_num_classes {total_num_classes} say two things: give "
                          f"one of them")
        total = total_num_classes if total_num_classes is not None else num_classes
        if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 1):
            raise DMError(f"total_num_classes must be a positive integer, got {total!r}")
        if ipc is not None and max_size is not None:
            raise DMError("give ipc (images per class) or max_size (images in all), not both")
        if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1):
            raise DMError(f"max_size must be a positive integer, got {max_size!r}")
        if max_size is not None and not adaptive_size and total is None:
            raise DMError("adaptive_size=False divides max_size over total_num_classes: give total_num_classes")
        if (mean is None) != (std is None) or (std is not None and min(std) <= 0):
            raise DMError(f"give mean and std together, std positive (got mean {mean}, std {std})")
        if max_size is None and ipc is None:
            ipc = 20
        self.builder = MemoryBuilder(method, 1 if ipc is None else ipc, seed=seed, device=device,
                                     options=builder_options, name=name, num_classes=total,
                                     cache_dir=None if cache_dir is None else Path(cache_dir),
                                     progress=progress)
        self.per_class = ipc  # the DM way: a fixed number per (task, class); None: a share of the budget
        self.budget = max_size  # Avalanche's way: images in all; None: ipc per class
        self.adaptive_size = adaptive_size
        self.total_num_classes = total
        self.num_classes = total
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.memories: dict[tuple[int, int], SyntheticSet] = {}  # (task, class) -> its images, unit scale
        self.tensor_labels = False  # whether the stream's labels are tensors (the buffer's then are too)
        self._taken: set[str] = set()
        self._steps = 0  # experiences taken in: the step of the next one
        super().__init__(max_size=self.max_size)

    # --- the budget -------------------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.builder.method

    @property
    def ipc(self) -> int:
        """Images per (task, class) a class gets now (its share of ``max_size`` in Avalanche's way)."""
        return self.share(len(self.memories))

    def share(self, groups: int) -> int:
        if self.budget is None:
            return self.per_class
        divide = groups if self.adaptive_size else self.total_num_classes
        per = max(1, self.budget // max(1, divide))
        return min(per, self.per_class) if self.per_class else per

    @property
    def max_size(self) -> int:
        """The budget in images, never below what the memory holds (class ids that restart in every task give more
        (task, class) groups than classes)."""
        held = sum(len(s) for s in self.memories.values())
        if self.budget is not None:
            return max(self.budget, held)
        return max(self.per_class * max(self.total_num_classes or 0, len(self.memories)), held)

    @max_size.setter
    def max_size(self, value: int) -> None:
        if value != self.max_size:  # ExemplarsBuffer's constructor sets what it already is
            self.resize(None, value)

    def resize(self, strategy, new_size: int) -> None:
        """Avalanche's resize: ``new_size`` images in all from now on, divided over the classes held; every class
        above its share keeps its first images (a smaller budget shrinks the memory, as a balanced buffer does)."""
        if not isinstance(new_size, int) or new_size < 1:
            raise DMError(f"a memory needs a positive size, got {new_size!r}")
        self.budget = new_size
        share = self.share(len(self.memories))
        for key in list(self.memories):
            self._shrink(key, share)

    # --- taking experiences in --------------------------------------------------------------------------------
    def post_adapt(self, agent_state, exp) -> None:
        """Take the experience's samples in: build its new classes, update its returning ones, keep the others."""
        images, labels, tasks = experience_tensors(exp.dataset)
        fingerprint = hashlib.sha256(b"".join(tensor_bytes(t) for t in (images, labels, tasks))).hexdigest()
        if fingerprint in self._taken or not len(labels):
            return
        self.tensor_labels = self.tensor_labels or isinstance(exp.dataset[0][1], torch.Tensor)
        unit = self._to_unit(images)
        step = self._steps
        arriving = {(int(t), int(c)) for t, c in zip(tasks.tolist(), labels.tolist())}
        share = self.share(len(set(self.memories) | arriving))
        for task in sorted(set(tasks.tolist())):
            mine = tasks == task
            classes = sorted(set(labels[mine].tolist()))
            held = {c: self.memories[(task, c)].images for c in classes if (task, c) in self.memories}
            synset = self.builder(unit[mine], labels[mine], step=step, task=task, held=held, mean=self.mean,
                                  std=self.std, ipc=share)
            for c in classes:
                images_c = synset.select_classes([c])
                if not 0 < len(images_c) <= share:
                    raise DMError(f"the {self.method} builder gave {len(images_c)} images for class {c}, not at "
                                  f"most {share}")
                self.memories[(task, c)] = images_c
        if self.budget is not None:  # Avalanche's way: the classes held make room for the new ones
            for key in list(self.memories):
                self._shrink(key, share)
        self._taken.add(fingerprint)
        self._steps += 1

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

    def _shrink(self, key: tuple[int, int], size: int) -> None:
        held = self.memories[key]
        if len(held) > size:
            self.memories[key] = SyntheticSet(held.images[:size], held.labels[:size], dict(held.meta))

    @staticmethod
    def _stat(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values).view(1, -1, 1, 1)

    # --- what the memory holds --------------------------------------------------------------------------------
    @property
    def buffer(self):
        """Every image held, as an Avalanche dataset of ``(x, y, t)`` samples (empty before the first experience)."""
        if not self.memories:
            from avalanche.benchmarks.utils.utils import concat_datasets

            return concat_datasets([])
        return as_avalanche(*self.tensors(), self.task_labels(), tensor_labels=self.tensor_labels)

    @buffer.setter
    def buffer(self, value) -> None:
        if len(value):  # ExemplarsBuffer's constructor sets an empty one; the memory itself is the only writer
            raise DMError("a CondensedMemory's buffer is made from its memories: it cannot be set")

    @property
    def buffer_groups(self) -> dict[int, MemoryGroup]:
        """One group per class (all task labels of it together, as Avalanche's ``ClassBalancedBuffer``)."""
        return {c: MemoryGroup(self, c) for c in self.classes()}

    @property
    def buffer_datasets(self) -> list:
        return [group.buffer for group in self.buffer_groups.values()]

    def class_buffer(self, label: int):
        keys = [k for k in self.memories if k[1] == label]
        images = torch.cat([self.memories[k].images for k in keys]) * self._stat(self.std) + self._stat(self.mean)
        labels = torch.cat([self.memories[k].labels for k in keys])
        tasks = torch.cat([torch.full((len(self.memories[k]),), k[0], dtype=torch.long) for k in keys])
        return as_avalanche(images, labels, tasks, tensor_labels=self.tensor_labels)

    def shrink_class(self, label: int, size: int) -> None:
        for key in [k for k in self.memories if k[1] == label]:
            self._shrink(key, size)

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

    # --- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything the memory has taken in (for ``continual.checkpoint``)."""
        return {"memories": {k: (s.images, s.labels, s.meta) for k, s in self.memories.items()},
                "mean": self.mean, "std": self.std, "budget": self.budget, "tensor_labels": self.tensor_labels,
                "taken": sorted(self._taken), "steps": self._steps}

    def load_state_dict(self, state: dict) -> None:
        self.memories = {tuple(k): SyntheticSet(x, y, dict(meta)) for k, (x, y, meta) in state["memories"].items()}
        self.mean, self.std, self.budget = state["mean"], state["std"], state["budget"]
        self.tensor_labels, self._taken, self._steps = state["tensor_labels"], set(state["taken"]), state["steps"]
