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

A class with no more than ``ipc`` images in all (an online stream, a small experience) keeps its images as they are,
as Avalanche's class-balanced buffers do, and is condensed once it has more.

With ``cache_dir`` every step's result is a dm_core synthetic-set file (``stepTT-KEY.pt``, ``stepTT_taskK-KEY.pt``
for task labels above 0), loaded instead of rebuilt, and the learning methods keep a checkpoint beside it while they
run (``stepTT-KEY.ckpt``), so an interrupted step resumes. KEY digests everything that changes the set (method,
options, budget, seeds, normalisation and the images it is made from), so one folder can serve several memories.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from dm_core import DMError, ImageDataset, SyntheticSet, make_set
from dm_core import resolve_device as check_device  # one device rule, dm_core's
from dm_core.engine import discard_checkpoint
from dm_core.registry import get_method, list_methods


def methods() -> tuple[str, ...]:
    """Every registered method, in the registry's order (``continual.run --memory``)."""
    return tuple(list_methods())


def paper_methods() -> tuple[str, ...]:
    """The DM paper's memories (Figures 6 and 7): ``continual.run --memory all``."""
    return tuple(list_methods(paper=True))


def scope(method: str) -> str:
    """What a method is given at a step (docs/method.md section 6). Per-class methods treat each class on its own (DM's
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
    get_method(method).configure(ipc, 0, **options)
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
        options = check_options(self.method, self.ipc, self.options)  # the method and its options, before all else
        if get_method(self.method).supports("factor"):
            # a memory counts the images a network trains on: partitioned sets (M3D's and IDM's factor 2) would hold
            # factor**2 of them per stored image, so memories use factor 1 unless told otherwise, and refuse more
            options.setdefault("factor", 1)
            if options["factor"] != 1:
                raise DMError(f"{self.method} with factor {options['factor']} would hold {options['factor'] ** 2} "
                              f"images per stored image, beyond the memory's ipc: use factor 1")
        object.__setattr__(self, "options", check_options(self.method, self.ipc, options))
        # every method, selecting or learning, gets the device checked here, not after an experience was trained
        object.__setattr__(self, "device", str(check_device(self.device)))

    @property
    def learns(self) -> bool:
        return get_method(self.method).learns

    def key(self, ipc: int, step: int, task: int, images: torch.Tensor, labels: torch.Tensor,
            held: Mapping[int, torch.Tensor], mean, std) -> str:
        """A digest of everything that makes a step's set what it is: the method and its options, the budget, the
        seeds, the normalisation and the images it is made from (new and held). Cache files and checkpoints carry
        it in their names, so a memory of another method, other options or other data never reads them."""
        recipe = json.dumps({"method": self.method, "options": {k: repr(v) for k, v in sorted(self.options.items())},
                             "ipc": ipc, "seed": step_seed(self.seed, step), "task": task, "name": self.name,
                             "num_classes": self.num_classes, "mean": mean and list(mean), "std": std and list(std)},
                            sort_keys=True)
        digest = hashlib.sha256(recipe.encode())
        for tensor in (images, labels, *(t for _, t in sorted(held.items()))):
            digest.update(tensor_bytes(tensor))
        digest.update(repr(sorted(held)).encode())
        return digest.hexdigest()[:16]

    def path(self, step: int, task: int = 0, suffix: str = ".pt", key: str = "") -> Path | None:
        if self.cache_dir is None:
            return None
        name = f"step{step:02d}" + (f"_task{task}" if task else "") + (f"-{key}" if key else "")
        return Path(self.cache_dir) / (name + suffix)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, step: int, task: int = 0,
                 held: Mapping[int, torch.Tensor] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, ipc: int | None = None) -> SyntheticSet:
        """At most ``ipc`` (default: the builder's) images for every class in ``labels``: built from ``images`` for
        new classes, updated from ``held[c]`` (the class's current memory images) for returning ones. A class with
        no more than ``ipc`` images in all (new plus held) keeps them as they are, as a class-balanced buffer does;
        it is condensed once it has more. Images are unit-scale (normalised)."""
        ipc = self.ipc if ipc is None else ipc
        held = dict(held or {})
        classes = sorted(set(labels.tolist()))
        key = self.key(ipc, step, task, images, labels, held, mean, std) if self.cache_dir is not None else ""
        path = self.path(step, task, key=key)
        if path is not None and path.is_file():
            return SyntheticSet.load(path)
        seed = step_seed(self.seed, step)
        available = {c: int((labels == c).sum()) + len(held.get(c, ())) for c in classes}
        few = [c for c in classes if available[c] <= ipc]  # kept as they are: nothing to condense yet
        full = [c for c in classes if c not in few and c in held and len(held[c]) == ipc]
        grown = [c for c in classes if c not in few and c not in full]  # new, or held below ipc and now above
        parts = []
        if not self.learns and (full or grown):  # selection: afresh from the memory plus the new images
            chosen = full + grown
            pool = self._pool(images, labels, held, chosen, [c for c in chosen if c in held])
            parts.append(self._make(self._dataset(*pool, mean, std), sorted(chosen), seed, None, ipc))
        elif full or grown:
            if grown:
                pool = self._pool(images, labels, held, grown, [c for c in grown if c in held])
                parts.append(self._make(self._dataset(*pool, mean, std), grown, seed,
                                        self.path(step, task, ".ckpt", key), ipc))
            if full:
                parts.append(self._continue(self._dataset(images, labels, mean, std), held, full, seed,
                                            self.path(step, task, ".returning.ckpt", key), ipc))
        if few:
            parts.append(self._kept(images, labels, held, few))
        synset = SyntheticSet.concat(parts)
        returning = [c for c in classes if c in held]
        synset.meta.update(step=step, task=task, step_classes=classes, returning_classes=returning, kept_classes=few,
                           order_seed=self.seed, scope=scope(self.method), update_rule=update_rule(self.method))
        if path is not None:
            synset.save(path)
            for suffix in (".ckpt", ".returning.ckpt"):
                discard_checkpoint(self.path(step, task, suffix, key))  # the saved set supersedes them
        return synset

    @staticmethod
    def _pool(images, labels, held, classes, returning) -> tuple[torch.Tensor, torch.Tensor]:
        """The new images of ``classes`` plus the held images of ``returning``."""
        keep = torch.isin(labels, torch.as_tensor(classes, dtype=labels.dtype))
        return (torch.cat([images[keep], *(held[c] for c in returning)]),
                torch.cat([labels[keep].long(), *(torch.full((len(held[c]),), c) for c in returning)]))

    def _kept(self, images, labels, held, classes) -> SyntheticSet:
        """Every image of ``classes`` (held, then new), unchanged."""
        x, y = self._pool(images, labels, held, classes, [c for c in classes if c in held])
        order = torch.argsort(y, stable=True)
        return SyntheticSet(x[order], y[order], {"method": self.method, "kept": True})

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor, mean, std) -> ImageDataset:
        num_classes = max(self.num_classes or 0, int(labels.max()) + 1)
        channels = images.shape[1]
        return ImageDataset(self.name, images, labels.long(), images[:0], labels[:0].long(), num_classes,
                            tuple(mean or (0.0,) * channels), tuple(std or (1.0,) * channels),
                            tuple(str(c) for c in range(num_classes)))

    def _make(self, data: ImageDataset, classes: list[int], seed: int, checkpoint: Path | None, ipc: int,
              initial: torch.Tensor | None = None) -> SyntheticSet:
        state = {}
        if self.learns:  # only learning methods keep checkpoints or start from given images
            state = {"checkpoint": checkpoint, "resume": checkpoint is not None, "initial": initial}
        return make_set(self.method, data, ipc, classes=classes, seed=seed, device=self.device,
                        progress=self.progress, **state, **self.options)

    def _continue(self, data: ImageDataset, held: Mapping[int, torch.Tensor], classes: list[int], seed: int,
                  checkpoint: Path | None, ipc: int) -> SyntheticSet:
        """A learning method started from the memory's images (``initial``); an interrupted continuation resumes
        from its checkpoint (the engine only resumes a checkpoint made from the same initial images)."""
        keep = torch.isin(data.y_train, torch.as_tensor(classes))
        x, y = data.x_train[keep], data.y_train[keep]
        counts = torch.bincount(y, minlength=data.num_classes)
        few = [c for c in classes if counts[c] < ipc]  # too few new images to draw a real batch from
        if few:
            x = torch.cat([x, *(held[c] for c in few)])
            y = torch.cat([y, *(torch.full((len(held[c]),), c) for c in few)])
        start = torch.cat([held[c] for c in classes])
        return self._make(replace(data, x_train=x, y_train=y), classes, seed, checkpoint, ipc, initial=start)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The bytes of a tensor's values (with its shape and dtype), for digests."""
    tensor = tensor.detach().cpu().contiguous()
    return repr((tuple(tensor.shape), str(tensor.dtype))).encode() + tensor.view(-1).view(torch.uint8).numpy().tobytes()
