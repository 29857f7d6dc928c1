"""One step's memory for one task label: ``MemoryBuilder`` turns a step's images into ``ipc`` images per class.

New classes get ``dm_core.make_set(method, ...)`` on their images. Classes that come back (a class split over two
experiences, domain-incremental streams) are updated within the same per-class budget:

- random: ``ipc`` images drawn afresh from the class's memory plus its new images;
- herding: herding afresh over the class's memory plus its new images (the feature network is trained on the
  step's new images plus the memory of its returning classes);
- DM and DSA: the class's memory images are optimised further, starting from themselves, for the same number of
  iterations, with real batches drawn from the class's new images (and from its memory too when fewer than ``ipc``
  new images came).

DM and DSA start a continuation from a dm_core checkpoint at iteration 0 that holds the memory images, so the
condensation code is dm_core's own. With ``cache_dir`` every step's result is a dm_core synthetic-set file
(``stepTT.pt``, ``stepTT_taskK.pt`` for task labels above 0), loaded instead of rebuilt, and DM / DSA keep a
checkpoint beside it while they run, so an interrupted step resumes.
"""
from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from dm_core import DMError, ImageDataset, SyntheticSet, make_generator, make_set, resolve_device
from dm_core.condense import Checkpointer
from dm_core.methods import CONDENSERS
from dm_core.methods import check_options as dm_core_check_options
from dm_core.successors import SUCCESSORS

PAPER_METHODS = ("random", "herding", "dsa", "dm")  # the DM paper's memories (Figures 6 and 7): --memory all
METHODS = (*PAPER_METHODS, *SUCCESSORS)  # and DM's successors, by name

# What each method is given at a step (PROTOCOL.md section 6). "per class" methods treat each class on its own (DM's
# loss is a sum of independent per-class terms on a BN-free ConvNet, so condensing the new classes in one call is the
# per-class objective, just batched); "new classes" methods train a network on the step's data together.
SCOPE = {"random": "per class", "dm": "per class", "m3d": "per class", "datadam": "per class", "ddm": "per class",
         "herding": "new classes of the step", "dsa": "new classes of the step",
         "idm": "new classes of the step"}  # IDM's model queue trains on the step's images of all its new classes
UPDATE_RULE = {
    "random": "reselect at random from the class's memory plus its new images",
    "herding": "reselect by herding from the class's memory plus its new images",
    "dm": "continue optimising the class's memory images on its new images",
    "dsa": "continue optimising the class's memory images on its new images",
    **{m: "continue optimising the class's memory images on its new images" for m in SUCCESSORS},
}
CONFIGS = dict(CONDENSERS)  # dm, dsa and DM's successors


def step_seed(seed: int, step: int) -> int:
    """The seed of one step of a seeded sequence (memory building or training): distinct for steps < 1000."""
    return seed * 1000 + step


def check_options(method: str, ipc: int, options: Mapping) -> dict:
    """``options`` checked against dm_core's configuration of ``method`` (names and values), before any work.

    Returns them without the ``None`` values (which mean "the method's default").
    """
    if method not in METHODS:
        raise DMError(f"unknown memory method {method!r}: choose one of {', '.join(METHODS)}")
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise DMError(f"ipc must be a positive integer, got {ipc!r}")
    options = {str(k): v for k, v in dict(options).items() if v is not None}
    fixed = sorted(set(options) & {"ipc", "seed"})
    if fixed:
        raise DMError(f"{method} option(s) {', '.join(fixed)} cannot be set: the memory's ipc and seed decide them")
    if "model" in options and not isinstance(options["model"], str):
        raise DMError(f"{method}.model must be a network name, got {options['model']!r}")
    dm_core_check_options(method, ipc, **options)
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
                              f"{self.ipc} per class of {classes} this run needs: use another --out")
            return cached
        data = self._dataset(images, labels, mean, std)
        seed = step_seed(self.seed, step)
        returning = [c for c in classes if c in held]
        new = [c for c in classes if c not in held]
        if self.method in ("random", "herding"):
            pool = self._dataset(torch.cat([images, *(held[c] for c in returning)]),
                                 torch.cat([labels, *(torch.full((len(held[c]),), c) for c in returning)]), mean, std)
            synset = self._make(pool, classes, seed, self.path(step, task, ".ckpt"))
        else:
            parts = []
            if new:
                parts.append(self._make(data, new, seed, self.path(step, task, ".ckpt")))
            if returning:
                parts.append(self._continue(data, held, returning, seed, self.path(step, task, ".returning.ckpt")))
            synset = SyntheticSet.concat(parts)
        synset.meta.update(step=step, task=task, step_classes=classes, returning_classes=returning,
                           order_seed=self.seed, scope=SCOPE[self.method], update_rule=UPDATE_RULE[self.method])
        if path is not None:
            synset.save(path)
            for suffix in (".ckpt", ".returning.ckpt"):
                self.path(step, task, suffix).unlink(missing_ok=True)
        return synset

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> ImageDataset:
        num_classes = max(self.num_classes or 0, int(labels.max()) + 1)
        channels = images.shape[1]
        return ImageDataset(self.name, images, labels.long(), images[:0], labels[:0].long(), num_classes,
                            tuple(mean or (0.0,) * channels), tuple(std or (1.0,) * channels),
                            tuple(str(c) for c in range(num_classes)))

    def _make(self, data: ImageDataset, classes: list[int], seed: int, checkpoint: Path | None) -> SyntheticSet:
        resumable = {}
        if self.method in CONFIGS and checkpoint is not None:
            resumable = {"checkpoint": checkpoint, "resume": True}
        return make_set(self.method, data, self.ipc, classes=classes, seed=seed, device=self.device,
                        progress=self.progress, **resumable, **self.options)

    def _continue(self, data: ImageDataset, held: Mapping[int, torch.Tensor], classes: list[int], seed: int,
                  checkpoint: Path | None) -> SyntheticSet:
        """DM / DSA from the memory's images: a checkpoint at iteration 0 holding them, then dm_core resumes it."""
        keep = torch.isin(data.y_train, torch.as_tensor(classes))
        x, y = data.x_train[keep], data.y_train[keep]
        counts = torch.bincount(y, minlength=data.num_classes)
        few = [c for c in classes if counts[c] < self.ipc]  # too few new images to draw a real batch from
        if few:
            x = torch.cat([x, *(held[c] for c in few)])
            y = torch.cat([y, *(torch.full((len(held[c]),), c) for c in few)])
        data = dataclasses.replace(data, x_train=x, y_train=y)
        with tempfile.TemporaryDirectory(prefix="dm-memory-") as scratch:
            path = checkpoint or Path(scratch) / "continue.ckpt"
            if not path.is_file():  # else an interrupted continuation picks up where it stopped
                config = CONFIGS[self.method](ipc=self.ipc, seed=seed, **self.options)
                start = torch.cat([held[c] for c in classes]).clone()
                lr = config.image_lr if hasattr(config, "image_lr") else config.lr_img  # DM and its successors
                optimizer = torch.optim.SGD([start], lr=lr, momentum=0.5)  # as dm_core's Condensation makes it
                generator = make_generator(seed, resolve_device(self.device))
                Checkpointer(path, self.method, config, classes, data.name).save(0, start, optimizer, generator, [])
            return make_set(self.method, data, self.ipc, classes=classes, seed=seed, device=self.device,
                            progress=self.progress, checkpoint=path, resume=True, **self.options)
