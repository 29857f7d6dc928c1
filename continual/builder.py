"""One step's memory for one task label: ``MemoryBuilder`` turns a step's images into ``ipc`` images per class.

Which methods there are, and what each is given at a step, come from ``dm_core.registry``: a method that makes each
class from its own images only (``Method.per_class``) is given its classes one by one (batched in one call); the
others train a network on the new classes of the step together. Classes that come back (a class split over two
experiences, domain-incremental streams) are updated within the same per-class budget:

- methods that select real images (random, herding): ``ipc`` images selected afresh from the class's memory plus
  its new images (herding's feature network is trained on the step's new images plus the memory of its returning
  classes);
- methods that learn images (DM, DSA and DM's successors): the class's memory images are optimised further,
  starting from themselves (``make_set(..., initial=...)``), for the same number of iterations, with real batches
  drawn from the class's new images (and from its memory too when fewer than ``ipc`` new images came).

With ``cache_dir`` every step's result is a dm_core synthetic-set file (``stepTT.pt``, ``stepTT_taskK.pt`` for task
labels above 0), loaded instead of rebuilt, and the learning methods keep a checkpoint beside it while they run, so
an interrupted step resumes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import torch

from dm_core import DMError, ImageDataset, SyntheticSet, make_set
from dm_core.engine import discard_checkpoint
from dm_core.registry import get_method, list_methods

from .device import check_device


def methods() -> tuple[str, ...]:
    """Every registered method, in the registry's order (``continual.run --memory``)."""
    return tuple(list_methods())


def paper_methods() -> tuple[str, ...]:
    """The DM paper's memories (Figures 6 and 7): ``continual.run --memory all``."""
    return tuple(list_methods(paper=True))


def scope(method: str) -> str:
    """What a method is given at a step (PROTOCOL.md section 6). Per-class methods treat each class on its own (DM's
    loss is a sum of independent per-class terms on a BN-free ConvNet, so condensing the new classes in one call is
    the per-class objective, just batched); the others train a network on the step's data together."""
    return "per class" if get_method(method).per_class else "new classes of the step"


def update_rule(method: str) -> str:
    """How a method updates a class that comes back."""
    if get_method(method).learns:
        return "continue optimising the class's memory images on its new images"
    return f"reselect by {method} from the class's memory plus its new images"


# Views of the registry at import time, for readers of the docs and older callers; the functions above are the source.
METHODS = methods()
PAPER_METHODS = paper_methods()
SCOPE = {m: scope(m) for m in METHODS}
UPDATE_RULE = {m: update_rule(m) for m in METHODS}


def step_seed(seed: int, step: int) -> int:
    """The seed of one step of a seeded sequence (memory building or training): distinct for steps < 1000."""
    return seed * 1000 + step


def check_options(method: str, ipc: int, options: Mapping) -> dict:
    """``options`` checked once, through the method's registered configuration (names, types and values), before
    any work. Returns them without the ``None`` values (which mean "the method's default")."""
    if method not in list_methods():
        raise DMError(f"unknown memory method {method!r}: choose one of {', '.join(list_methods())}")
    options = {str(k): v for k, v in dict(options).items() if v is not None}
    fixed = sorted(set(options) & {"ipc", "seed"})
    if fixed:
        raise DMError(f"{method} option(s) {', '.join(fixed)} cannot be set: the memory's ipc and seed decide them")
    try:
        get_method(method).configure(ipc, 0, **options)
    except DMError as exc:  # a value check of the configuration may not say whose option it is
        message = str(exc)
        raise DMError(message if method in message.replace(",", " ").split() else f"{method}: {message}") from None
    return options


@dataclass(frozen=True, eq=False)
class MemoryBuilder:
    """Builds the memory of one step's classes (of one task label) with ``dm_core.make_set``.

    ``options`` go to the method's config (e.g. ``iterations``, ``batch_real``, ``model``, herding ``epochs``);
    they are checked when the builder is made. ``name`` and ``num_classes`` are recorded in the sets' provenance
    (``num_classes`` also sizes the builders' classifier heads; None: the largest label seen plus one).
    """

    method: str
    ipc: int
    seed: int = 0
    device: str = "auto"
    options: Mapping = field(default_factory=dict)
    name: str = "stream"
    num_classes: int | None = None
    cache_dir: Path | None = None
    progress: bool = False

    def __post_init__(self):
        object.__setattr__(self, "options", check_options(self.method, self.ipc, self.options))
        # every method, selecting or learning, gets the device checked here, not after an experience was trained
        object.__setattr__(self, "device", str(check_device(self.device)))

    @property
    def learns(self) -> bool:
        return get_method(self.method).learns

    def path(self, step: int, task: int = 0, suffix: str = ".pt") -> Path | None:
        if self.cache_dir is None:
            return None
        return Path(self.cache_dir) / (f"step{step:02d}" + (f"_task{task}" if task else "") + suffix)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int, task: int = 0,
                 held: Mapping[int, torch.Tensor] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> SyntheticSet:
        """``ipc`` images for every class in ``labels``: built from ``images`` for new classes, updated from
        ``held[c]`` (the class's current memory images) for returning ones. Images are unit-scale (normalised)."""
        held = dict(held or {})
        classes = sorted(set(labels.tolist()))
        path = self.path(step, task)
        if path is not None and path.is_file():
            cached = SyntheticSet.load(path)
            if cached.classes() != classes or len(cached) != self.ipc * len(classes):
                raise DMError(f"{path} holds classes {cached.classes()} ({len(cached)} images), not the "
                              f"{self.ipc} per class of {classes} this run needs: use another cache folder")
            return cached
        data = self._dataset(images, labels, mean, std)
        seed = step_seed(self.seed, step)
        returning = [c for c in classes if c in held]
        new = [c for c in classes if c not in held]
        if not self.learns:  # selection: afresh from the memory plus the new images
            pool = self._dataset(torch.cat([images, *(held[c] for c in returning)]),
                                 torch.cat([labels, *(torch.full((len(held[c]),), c) for c in returning)]), mean, std)
            synset = self._make(pool, classes, seed, None)
        else:
            parts = []
            if new:
                parts.append(self._make(data, new, seed, self.path(step, task, ".ckpt")))
            if returning:
                parts.append(self._continue(data, held, returning, seed, self.path(step, task, ".returning.ckpt")))
            synset = SyntheticSet.concat(parts)
        synset.meta.update(step=step, task=task, step_classes=classes, returning_classes=returning,
                           order_seed=self.seed, scope=scope(self.method), update_rule=update_rule(self.method))
        if path is not None:
            synset.save(path)
            for suffix in (".ckpt", ".returning.ckpt"):
                discard_checkpoint(self.path(step, task, suffix))  # the saved set supersedes them
        return synset

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> ImageDataset:
        num_classes = max(self.num_classes or 0, int(labels.max()) + 1)
        channels = images.shape[1]
        return ImageDataset(self.name, images, labels.long(), images[:0], labels[:0].long(), num_classes,
                            tuple(mean or (0.0,) * channels), tuple(std or (1.0,) * channels),
                            tuple(str(c) for c in range(num_classes)))

    def _make(self, data: ImageDataset, classes: list[int], seed: int, checkpoint: Path | None,
              initial: torch.Tensor | None = None) -> SyntheticSet:
        state = {}
        if self.learns:  # only learning methods keep checkpoints or start from given images
            state = {"checkpoint": checkpoint, "resume": checkpoint is not None, "initial": initial}
        return make_set(self.method, data, self.ipc, classes=classes, seed=seed, device=self.device,
                        progress=self.progress, **state, **self.options)

    def _continue(self, data: ImageDataset, held: Mapping[int, torch.Tensor], classes: list[int], seed: int,
                  checkpoint: Path | None) -> SyntheticSet:
        """A learning method started from the memory's images (``initial``); an interrupted continuation resumes
        from its checkpoint (the engine only resumes a checkpoint made from the same initial images)."""
        keep = torch.isin(data.y_train, torch.as_tensor(classes))
        x, y = data.x_train[keep], data.y_train[keep]
        counts = torch.bincount(y, minlength=data.num_classes)
        few = [c for c in classes if counts[c] < self.ipc]  # too few new images to draw a real batch from
        if few:
            x = torch.cat([x, *(held[c] for c in few)])
            y = torch.cat([y, *(torch.full((len(held[c]),), c) for c in few)])
        start = torch.cat([held[c] for c in classes])
        return self._make(replace(data, x_train=x, y_train=y), classes, seed, checkpoint, initial=start)
