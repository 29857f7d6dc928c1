"""The one condensation loop. Every method that learns images (DM, DSA and DM's successors) is a ``Matcher`` plugged
into ``condense``; the loop owns everything else (docs/architecture.md, "The condensation engine").

One iteration:
  ``matcher.network(it)``: the network(s) of the iteration (DM: one ConvNet re-initialised in place);
  then ``matcher.steps`` image steps (DSA: its outer loop; everything else: 1), each of which
    ``matcher.prepare(net, step)`` (DSA: frozen BatchNorm statistics);
    draws one real batch per class (one ``rand`` + ``topk`` on the device) and one Siamese augmentation draw per class
    (its group on a host generator seeded by (seed, step index), its parameters on the device);
    orders this process's classes by augmentation group and cuts them into chunks (the chunk is halved when a pass
    runs out of memory); for each chunk applies each drawn group once to the real (no grad) and synthetic images of
    the classes that drew it, and back-propagates ``matcher.loss(net, real, syn, classes, embed)``;
    one SGD step (momentum 0.5) on the synthetic images; ``matcher.after_step`` (DSA: inner-loop training).
The loss is read back to the host once per ``log_every`` iterations. Every ``checkpoint_every`` iterations, and at
the iteration where Ctrl-C stopped the run, the state is saved (images, optimiser, generator, history, the matcher's
own state), so the same call resumes it bit for bit.

Under torch.distributed (``torchrun``) every rank makes every random draw, takes a contiguous block of the classes
(``shard_blocks``) and gathers the others' images at the end (and whenever ``matcher`` reads all images), so the
set equals the one-process set, and the logged loss is the one-process loss (the sum of the ranks' parts).
Networks whose BatchNorm statistics span the batch (``matcher.whole_batch``) take every class in one pass and one
process: chunking or sharding them would change the result, so it is refused.
"""
from __future__ import annotations

import hashlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from . import augment
from .compile import architecture_key, compiled, forward_flops, give_up, should_compile
from .custom import model_name
from .data import ImageDataset, class_store, resolve_classes
from .device import make_generator, resolve_device
from .distributed import World, all_sum, gather_rows, rank_checkpoint, shard_blocks, world
from .errors import DMError
from .io import atomic_torch_save
from .nets import build_model, check_model, default_model, has_batchnorm, reinit_
from .precision import check_precision, precision_scope
from .synset import SyntheticSet, content_digest, made_set
from .validate import check_choice, check_int, check_number

CHECKPOINT_FORMAT = "dm_core.checkpoint/2"
OLDER_CHECKPOINTS = ("dm_core.checkpoint/1",)  # read through ``_upgrade``
INITS = ("real", "noise")
CPU_IMAGES_PER_PASS = 128


@dataclass(frozen=True)
class LearnConfig:
    """The settings every method that learns images shares (the loop's). Methods subclass it.

    Fields that are None take a default that depends on the dataset (``resolve``): ``iterations`` (the method's,
    ``default_iterations``), ``lr_img`` (``default_lr_img``), ``model`` (the ConvNet of the image size,
    ``nets.default_model``) and ``augment`` (the dataset's strategy). The set's provenance records the values used
    and, under ``defaults_used``, which of them were defaults.
    """

    ipc: int = 10
    seed: int = 0
    iterations: int | None = None
    lr_img: float | None = None
    batch_real: int = 256  # real images per class per iteration
    model: str | nn.Module | Callable | None = None  # a name, one's own network, or None: the image size's ConvNet
    init: str = "real"  # or "noise" (standard normal)
    augment: str | None = None  # a DSA strategy ("color_crop_..."), "none", or None: the dataset's
    class_chunk: int | None = None  # classes per forward pass; None: auto (``auto_class_chunk``)
    precision: str = "fp32"  # or "bf16" (autocast), an explicit option
    checkpoint_every: int = 500
    log_every: int = 50

    def __post_init__(self):
        check_int("ipc", self.ipc)
        if self.iterations is not None:
            check_int("iterations", self.iterations, 1)
        if self.batch_real is not None:
            check_int("batch_real", self.batch_real)
        check_int("checkpoint_every", self.checkpoint_every)
        check_int("log_every", self.log_every)
        if self.class_chunk is not None:
            check_int("class_chunk", self.class_chunk)
        if self.lr_img is not None:
            check_number("lr_img", self.lr_img)
        check_choice("init", self.init, INITS)
        if self.model is not None:
            check_model(self.model)
        if self.augment is not None and self.augment != "none":
            augment.parse_strategy(self.augment)
        check_precision(self.precision)

    def default_lr_img(self, data: ImageDataset) -> float:
        raise NotImplementedError

    def default_iterations(self, data: ImageDataset) -> int:
        raise NotImplementedError

    def resolve(self, data: ImageDataset) -> LearnConfig:
        """This configuration with every None default replaced by the value used for ``data``."""
        return replace(self, **self.defaults_for(data))

    def defaults_for(self, data: ImageDataset) -> dict:
        """{field: value} of the fields left None, with the values ``data`` gives them."""
        return {name: rule() for name, rule in self.default_rules(data).items() if getattr(self, name) is None}

    def default_rules(self, data: ImageDataset) -> dict[str, Callable[[], Any]]:
        """How each field that may be None gets its value for ``data`` (methods add their own)."""
        return {"iterations": lambda: self.default_iterations(data), "lr_img": lambda: self.default_lr_img(data),
                "model": lambda: self.default_network(data), "augment": lambda: augment.default_strategy(data.name)}

    def default_network(self, data: ImageDataset) -> str:
        return default_model(data.image_size)


def config_record(config) -> dict:
    """A configuration (or a dict of its fields) as plain values for provenance and checkpoints: one's own network
    is recorded by name (``custom:Module``)."""
    values = config if isinstance(config, dict) else {f.name: getattr(config, f.name) for f in fields(config)}
    return {k: model_name(v) if k == "model" and v is not None else v for k, v in values.items()}


def auto_class_chunk(device: torch.device, num_classes: int, real_per_class: int, batchnorm: bool = False) -> int:
    """Classes per forward pass when the configuration does not say.

    BatchNorm networks: all classes in one pass, always (their statistics are those of the whole batch,
    docs/method.md section 1). CUDA: all classes (fewest launches; halved when memory runs out). CPU: about 128 real
    images per pass, since larger batches' activations overflow the caches: MNIST, ConvNet width 32, 64 real images
    per class, 10 ipc measured 183 ms/iteration with all 10 classes per pass, 160 with 4, 110 with 2, 122 with 1.
    """
    if batchnorm or device.type == "cuda":
        return num_classes
    return max(1, min(num_classes, CPU_IMAGES_PER_PASS // real_per_class))


def condense_memory_format(device: torch.device, precision: str) -> torch.memory_format:
    """channels_last on the CPU (one DM pass of 2 classes, CIFAR-shaped, measured 1.45x faster eager and 1.3x
    compiled: oneDNN convolves NHWC without reordering) and for bf16 on CUDA; else contiguous."""
    if device.type == "cpu" or precision == "bf16":
        return torch.channels_last
    return torch.contiguous_format


# ---------------------------------------------------------------------------------------------------------------
# Partition and expansion (IDM section 4.1): a stored image is a factor x factor mosaic of smaller images.

def tile_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """(h, w) of one tile of a factor x factor grid over height x width images; the factor must divide both."""
    if height % factor or width % factor:
        raise DMError(f"factor {factor} does not divide the {height}x{width} images: use a factor that does")
    return height // factor, width // factor


def partition_expand(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) -> (N * factor**2, C, H, W): each image cut into a factor x factor grid of tiles (row by row),
    each tile enlarged back to H x W by bilinear interpolation. Image i's tiles are rows i*f^2 .. (i+1)*f^2 - 1."""
    if factor == 1:
        return images
    n, c, height, width = images.shape
    h, w = tile_size(height, width, factor)
    tiles = images.reshape(n, c, factor, h, factor, w).permute(0, 2, 4, 1, 3, 5).reshape(n * factor ** 2, c, h, w)
    return torch.nn.functional.interpolate(tiles, size=(height, width), mode="bilinear", align_corners=False)


def mosaic(tiles: torch.Tensor, factor: int) -> torch.Tensor:
    """The inverse layout: (N * factor**2, C, H, W) full-size images -> (N, C, H, W) mosaics of them shrunk by
    ``factor`` (area averaging), tile t of image i at row t // factor, column t % factor."""
    if factor == 1:
        return tiles
    total, c, height, width = tiles.shape
    h, w = tile_size(height, width, factor)
    small = torch.nn.functional.interpolate(tiles, size=(h, w), mode="area")
    n = total // factor ** 2
    return small.reshape(n, factor, factor, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(n, c, height, width)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints.

class Interrupted(KeyboardInterrupt):
    """A condensation stopped by Ctrl-C at an iteration boundary; ``checkpoint`` (if not None) holds that state."""

    def __init__(self, iteration: int, iterations: int, checkpoint: Path | None):
        super().__init__(f"interrupted at iteration {iteration} of {iterations}")
        self.iteration, self.iterations, self.checkpoint = iteration, iterations, checkpoint


VOLATILE = ("iterations", "checkpoint_every", "log_every", "compile")  # may change between a run and its resume


class Checkpointer:
    """Atomic snapshots of a run; ``load`` returns one only if it belongs to the same run (``identity``).

    Everything that decides the rest of the run is saved, so a resumed run reproduces the uninterrupted one exactly
    on the same device: images, optimiser momentum, the generator's state, the iteration, the loss history, the
    matcher's own state (``extra``: IDM's model queue) and the seconds spent so far.
    """

    def __init__(self, path: str | os.PathLike | None, identity: dict, field_defaults: dict | None = None):
        self.path = Path(path) if path else None
        self.identity = identity
        self.field_defaults = field_defaults or {}  # the configuration class's defaults (for older identities)

    def load(self) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DMError(f"checkpoint {self.path} is unreadable ({type(exc).__name__}): delete it to start "
                          f"over") from None
        if not isinstance(state, dict) or state.get("format") not in (CHECKPOINT_FORMAT, *OLDER_CHECKPOINTS) \
                or not isinstance(state.get("identity"), dict):
            raise DMError(f"{self.path} is not a dm_core checkpoint: delete it or choose another checkpoint path")
        if state["format"] != CHECKPOINT_FORMAT:
            state["identity"] = self._upgrade(state["identity"])
        elif not torch.is_tensor(state.get("images")) or state.get("sha256") != content_digest(state["images"]):
            raise DMError(f"checkpoint {self.path} is damaged (its images do not match their checksum): delete it "
                          f"to start over")
        changed = _differences(state["identity"], self.identity)
        if changed:
            raise DMError(f"checkpoint {self.path} belongs to another run ({'; '.join(changed[:4])}): use the "
                          f"same settings to continue it, or restart to start over")
        return state

    def _upgrade(self, old: dict) -> dict:
        """A version-1 identity (written before defaults were resolved into it) in today's terms: a field it lacks
        had its default, and ``lr_img`` None meant 1 below 100 images per class and 10 from 100 on."""
        config = dict(old.get("config") or {})
        for name, value in (self.identity.get("config") or {}).items():
            if name not in config and value == self.field_defaults.get(name, value):
                config[name] = value
        if config.get("lr_img", 0) is None and "ipc" in config:
            config["lr_img"] = 1.0 if config["ipc"] < 100 else 10.0
        return {**old, "config": config, "initial": old.get("initial")}

    def save(self, iteration: int, images: torch.Tensor, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, history: list, extra: dict, seconds: list[float]) -> None:
        if self.path is None:
            return
        images = images.detach().cpu()
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "identity": self.identity, "iteration": iteration,
                           "images": images, "sha256": content_digest(images), "optimizer": optimizer.state_dict(),
                           "generator": generator.get_state(), "history": history, "extra": extra,
                           "seconds": seconds}, self.path)


def _differences(old: dict, new: dict) -> list[str]:
    """'name old -> new' for every setting that differs (config fields flattened)."""
    def flat(identity: dict) -> dict:
        values = {k: v for k, v in identity.items() if k != "config"}
        values.update(identity.get("config") or {})
        return values

    old, new = flat(old), flat(new)
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _digest(images: torch.Tensor | None) -> str | None:
    if images is None:
        return None
    return hashlib.sha256(images.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def discard_checkpoint(path: str | os.PathLike | None) -> None:
    """Remove this process's checkpoint of a finished run (under torchrun: its own per-rank file)."""
    mine = rank_checkpoint(path, world())
    if mine is not None:
        Path(mine).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# The state of one run.

class Condensation:
    """What one run carries: classes, the class store, the synthetic images and their optimiser, the generator,
    the loss history, the checkpointer. ``start`` is the iteration the loop starts from (0, or a resume's)."""

    def __init__(self, method: str, data: ImageDataset, config: LearnConfig, classes: Sequence[int] | None,
                 device: torch.device, checkpoint: str | os.PathLike | None, resume: bool, factor: int = 1,
                 initial: torch.Tensor | None = None):
        self.method, self.data, self.config, self.device, self.factor = method, data, config, device, factor
        self.classes = resolve_classes(data, classes, config.ipc)
        self.store = class_store(data, self.classes, device)
        self.generator = make_generator(config.seed, device)
        self.class_index = torch.as_tensor(self.classes, device=device)
        self.history: list[list[float]] = []
        self.extra: dict | None = None  # the matcher's saved state, on a resume
        self.seconds: list[float] = []  # seconds of the earlier segments of a resumed run
        self._running: torch.Tensor | None = None
        self._since_log = 0
        self._stop_requested = False
        fields_ = {k: v for k, v in config_record(config).items() if k not in VOLATILE}
        identity = {"method": method, "config": fields_, "classes": self.classes, "dataset": data.name,
                    "initial": _digest(initial)}
        self.checkpointer = Checkpointer(checkpoint, identity, {f.name: f.default for f in fields(config)})
        images = self._initial_images(initial)
        self.images = images.to(memory_format=condense_memory_format(device, config.precision)).requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.images], lr=config.lr_img, momentum=0.5)
        self.start = 0
        if resume:
            if checkpoint is None:
                raise DMError("resume needs a checkpoint path")
            state = self.checkpointer.load()
            if state is not None:
                self._load(state)
        self.started_at = time.perf_counter()

    def _initial_images(self, initial: torch.Tensor | None) -> torch.Tensor:
        """Grouped by class, classes in order. ``initial`` (a warm start, e.g. a continual memory continued) as
        given; else ``real`` (distinct real images of the class; with ``factor`` > 1 mosaics of factor**2 shrunk real
        images, IDM section 4.1) or ``noise`` (standard normal)."""
        k, ipc, f = len(self.classes), self.config.ipc, self.factor
        shape = tuple(self.data.x_train.shape[1:])
        if initial is not None:
            initial = initial.detach().float()
            if f > 1 and len(initial) == k * ipc * f * f:
                initial = mosaic(initial, f)
            if tuple(initial.shape) != (k * ipc, *shape):
                raise DMError(f"a warm start needs {ipc} images of shape {shape} for each of the {k} classes "
                              f"(got {tuple(initial.shape)})")
            return initial.to(self.device).clone()
        if self.config.init == "noise":
            return torch.randn(k * ipc, *shape, generator=self.generator, device=self.device)
        if f > 1:
            partition_expand(torch.zeros(1, *shape), f)  # refuses a factor that does not divide the image size
            return mosaic(self.store.sample(self.classes, ipc * f * f, self.generator), f)
        return self.store.sample(self.classes, ipc, self.generator).clone()

    def _load(self, state: dict) -> None:
        iteration = int(state["iteration"])
        if iteration > self.config.iterations:
            raise DMError(f"checkpoint {self.checkpointer.path} is at iteration {iteration}, beyond iterations "
                          f"{self.config.iterations}: raise iterations to at least {iteration}, or restart")
        with torch.no_grad():
            self.images.copy_(state["images"].to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.history = [list(h) for h in state["history"]]
        self.extra = state.get("extra") or None
        self.seconds = [float(s) for s in state.get("seconds", [])]
        self.start = iteration
        if world().is_main:
            print(f"resuming from {self.checkpointer.path} at iteration {self.start}", file=sys.stderr)

    def elapsed(self) -> list[float]:
        """Seconds of every segment of the run, this one included."""
        return [*self.seconds, round(time.perf_counter() - self.started_at, 3)]

    def sync_images(self, blocks: Callable[[World], range] | None = None) -> torch.Tensor:
        """Under torch.distributed: every rank's class block of images from its owner (a no-op in one process)."""
        w = world()
        if w.sharded:
            ipc = self.config.ipc
            owned = [shard_blocks(len(self.classes), World(r, w.size)) for r in range(w.size)]
            with torch.no_grad():
                self.images.copy_(gather_rows(self.images, [range(b.start * ipc, b.stop * ipc) for b in owned]))
        return self.images

    def save(self, iteration: int, extra: dict) -> None:
        self.checkpointer.save(iteration, self.images, self.optimizer, self.generator, self.history, extra,
                               self.elapsed())

    def end_iteration(self, done: int, loss: torch.Tensor, bar, extra: Callable[[], dict]) -> None:
        """Add this iteration's loss (on the device); every ``log_every`` iterations read the mean once (the only
        host sync), check it is finite and log it; every ``checkpoint_every`` iterations save a checkpoint."""
        config = self.config
        self._running = loss.detach() if self._running is None else self._running + loss.detach()
        self._since_log += 1
        if done % config.log_every == 0 or done == config.iterations:
            mean_loss = float(all_sum(self._running)) / self._since_log  # each rank holds its classes' part
            self._running, self._since_log = None, 0
            if not math.isfinite(mean_loss):
                raise DMError(f"{self.method} loss became {mean_loss} by iteration {done}: lower the image "
                              f"learning rate (lr_img) and start again")
            self.history.append([done, mean_loss])
            bar.set_postfix(loss=f"{mean_loss:.4g}")
        if self._stop_requested or (done < config.iterations and done % config.checkpoint_every == 0):
            self.save(done, extra())  # a stop in the last iteration too: the rerun resumes there and just finishes
        if self._stop_requested:
            raise Interrupted(done, config.iterations, self.checkpointer.path)

    @contextmanager
    def interruptible(self, enabled: bool = True):
        """Within: the first Ctrl-C asks the run to stop at the end of the current iteration, after saving a
        checkpoint (so the run resumes exactly), the last iteration included; a second one stops at once; one that
        comes after the last iteration's check ends the block with KeyboardInterrupt (a Ctrl-C is never lost). Only
        the main thread gets signals; under torch.distributed the ranks would stop at different iterations, so there a
        Ctrl-C stops at once and the periodic per-rank checkpoints hold the run."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            print("\nstopping after this iteration (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
        if self._stop_requested:  # came after the last iteration's check: still a Ctrl-C, never a lost one
            raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------------------------
# The method interface.

def embedding(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a DM-family loss reads off a network (compiled per architecture and batch shape where that pays)."""
    return net.embed(x)


class Matcher:
    """One method's part of an iteration; the base class is DM's frame: a fresh random network every iteration.

    ``loss(net, real, syn, classes, embed)`` gets one chunk: the real batch (augmented, no grad) and the synthetic
    images (augmented, with grad), both grouped by class with the classes in the order of ``classes`` (the dataset's
    class ids, on the device); ``embed(side, x)`` ("real" or "syn") is ``net.embed(x)``, compiled where that pays
    when ``compiles`` is True. ``state()`` is what a resume needs beyond the images; a resumed run hands it back to
    the constructor as ``state``.
    """

    compiles = False  # the loss reads the network only through ``embed``, so the engine may compile that (the
    # configuration then has a ``compile`` field)
    steps = 1  # image steps per iteration

    def __init__(self, run: Condensation, state: dict | None):
        self.run, self.config, self.device = run, run.config, run.device
        self.net = build(run.config.model, run.data, run.device, run.config.precision).train().requires_grad_(False)

    @property
    def whole_batch(self) -> bool:
        """Whether a pass's BatchNorm statistics span its classes (then one pass, one process)."""
        return has_batchnorm(self.net) and self.net.training

    def network(self, iteration: int) -> Any:
        return reinit_(self.net, self.run.generator)

    def prepare(self, net: Any, step: int) -> None:
        """Before a step's real batch is drawn."""

    def loss(self, net: Any, real: torch.Tensor, syn: torch.Tensor, classes: torch.Tensor,
             embed: Callable[[str, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, net: Any, iteration: int, step: int) -> None:
        """After the image step."""

    def state(self) -> dict:
        return {}

    def meta(self) -> dict:
        return {}


def build(model, data: ImageDataset, device: torch.device, precision: str = "fp32") -> nn.Module:
    """A network for ``data`` on ``device``, in the engine's memory format."""
    fmt = condense_memory_format(device, precision)
    return build_model(model, data.channels, data.num_classes, data.image_size).to(device, memory_format=fmt)


# ---------------------------------------------------------------------------------------------------------------
# The loop.

def condense(method: str, matcher_type: type[Matcher], data: ImageDataset, config: LearnConfig,
             classes: Sequence[int] | None = None, device: str | torch.device = "auto",
             checkpoint: str | os.PathLike | None = None, resume: bool = False, progress: bool = True,
             initial: torch.Tensor | None = None) -> SyntheticSet:
    """Learn ``config.ipc`` images for each class of ``classes`` (all by default) with ``matcher_type``'s loss.

    ``checkpoint``: the file of periodic snapshots (under torchrun each rank keeps ``NAME.rankR-of-N.ckpt``);
    ``resume``: continue from it when it belongs to this run. ``initial``: images to start from instead of
    ``config.init`` (ipc per class, grouped by class in the order of ``classes``).
    """
    device = resolve_device(device)
    defaults_used = config.defaults_for(data)
    config = config.resolve(data)
    w = world()
    factor = getattr(config, "factor", 1)
    run = Condensation(method, data, config, classes, device, rank_checkpoint(checkpoint, w), resume, factor,
                       initial)
    matcher = matcher_type(run, run.extra)
    k_all, ipc = len(run.classes), config.ipc
    whole_batch = matcher.whole_batch
    if whole_batch and config.class_chunk is not None and config.class_chunk < k_all:
        raise DMError(f"{config.model} has BatchNorm, whose statistics span every class of a pass, so condensing "
                      f"{config.class_chunk} of {k_all} classes per pass would change the result: drop "
                      f"class_chunk (lower batch_real to save memory)")
    if whole_batch and w.sharded:
        raise DMError(f"{config.model} has BatchNorm, whose statistics span every class of a pass, so it cannot be "
                      f"split over {w.size} processes: run it in one process")
    # Under torch.distributed each rank condenses a contiguous block of classes; every rank still makes every random
    # draw, so a class's draws (and the network) do not depend on where it is condensed.
    mine = shard_blocks(k_all, w)
    n_real = min(config.batch_real, int(run.store.counts[run.classes].min()))
    width = int(run.store.counts[run.classes].max())
    per_class = ipc * factor ** 2  # synthetic images per class as the network sees them
    fmt = condense_memory_format(device, config.precision)
    run.store.images = run.store.images.contiguous(memory_format=fmt)  # indexing keeps the format: no copy per pass
    use_aug = config.augment != "none"
    shape = tuple(data.x_train.shape[1:])

    def plan(params, chunk: int) -> list[list[int]]:
        """This rank's classes in chunks, ordered by augmentation group when there is augmentation (so that one
        ``apply_runs`` call covers each group of a chunk)."""
        order = list(mine)
        if params is not None:
            order = [mine.start + i for i in augment.order_by_group(params.take(slice(mine.start, mine.stop)))]
        return [order[s:s + chunk] for s in range(0, len(order), chunk)]

    def embed_key(side: str, k: int) -> tuple:
        count = n_real if side == "real" else per_class
        return (method, side, architecture_key(matcher.net), (k * count, *shape), device.type, config.precision,
                str(fmt))

    def compiled_embed(net, k: int):
        """``embed(side, x)`` through the compiled graphs of a chunk of ``k`` classes."""
        graphs = {side: compiled(embedding, embed_key(side, k)) for side in ("real", "syn")}
        return lambda side, x: graphs[side](net, x)

    def embed_keys(chunk: int) -> list[tuple]:
        """One compiled graph per pass: real and synthetic passes of a full chunk and of a short last one."""
        return [embed_key(side, k) for k in sorted({chunk, len(mine) % chunk} - {0}) for side in ("real", "syn")]

    def one_pass(net, chunks: list[list[int]], real_index: torch.Tensor, params, compiling: bool) -> torch.Tensor:
        """Forward and backward over the chunks; the random draws were made for all classes beforehand, so how the
        classes are ordered and chunked changes memory use, not the maths."""
        total = None
        for chunk in chunks:
            k = len(chunk)
            if chunk == list(range(chunk[0], chunk[0] + k)):  # consecutive classes: slices, no gather
                rows = slice(chunk[0], chunk[0] + k)
            else:
                rows = torch.tensor(chunk).to(device, non_blocking=True)
            real = run.store.images[real_index.view(k_all, n_real)[rows].flatten()]
            syn = partition_expand(run.images.view(k_all, ipc, *shape)[rows].flatten(0, 1), factor)
            if params is not None:
                p = augment.AugmentParams(params.op[chunk], params.u[rows])
                with torch.no_grad():
                    real = augment.apply_runs(real, p, n_real)
                syn = augment.apply_runs(syn, p, per_class)
            real, syn = real.contiguous(memory_format=fmt), syn.contiguous(memory_format=fmt)
            embed = compiled_embed(net, k) if compiling else (lambda side, x, net=net: embedding(net, x))
            with precision_scope(device, config.precision):
                loss = matcher.loss(net, real, syn, run.class_index[rows], embed)
            loss.backward()  # chunks accumulate their (independent) gradients; one optimiser step follows
            total = loss.detach() if total is None else total + loss.detach()
        return total

    chunk = min(config.class_chunk or auto_class_chunk(device, k_all, n_real, whole_batch), len(mine))
    compiling = False
    if matcher.compiles:  # compile where it pays: FLOPs of the iterations ahead (a synthetic image costs 3 passes)
        flops = forward_flops(matcher.net, shape, device) * len(mine) * (n_real + 3 * per_class) * matcher.steps
        compiling = should_compile(config.compile, device, embed_keys(chunk), flops * (config.iterations - run.start))
    proven = False  # the compiled graphs have run once
    bar = tqdm(range(run.start, config.iterations), initial=run.start, total=config.iterations,
               desc=f"{method.upper()} {data.name} ipc={ipc}", disable=not (progress and w.is_main),
               dynamic_ncols=True)
    with run.interruptible(enabled=not w.sharded):
        for it in bar:
            net = matcher.network(it)
            total = None
            for step in range(matcher.steps):
                matcher.prepare(net, step)
                real_index = run.store.sample_indices(run.class_index, n_real, width, run.generator)
                params = None
                if use_aug:  # groups drawn on the host, so that only the drawn ops are computed, on any device
                    params = augment.sample_params(
                        k_all, run.generator, device, config.augment,
                        host=augment.groups_generator(config.seed, it * matcher.steps + step))
                while True:
                    run.optimizer.zero_grad(set_to_none=True)
                    try:
                        loss = one_pass(net, plan(params, chunk), real_index, params, compiling)
                        proven = proven or compiling
                        break
                    except torch.cuda.OutOfMemoryError:
                        chunk = _halve(chunk, whole_batch, w, device, k_all, n_real)
                        bar.write(f"out of memory: now {chunk} classes per forward pass", file=sys.stderr)
                    except Exception as exc:  # a compile that fails at its first call: "auto" carries on eagerly
                        if not compiling or proven:
                            raise
                        give_up(embed_keys(chunk)[0], exc, getattr(config, "compile", "off"))
                        compiling = False
                run.optimizer.step()
                matcher.after_step(net, it, step)
                total = loss if total is None else total + loss
            run.end_iteration(it + 1, total / matcher.steps, bar, matcher.state)
    bar.close()
    run.sync_images()  # every rank ends with the whole set
    images = partition_expand(run.images.detach(), factor)  # the set holds what the papers train on
    meta = {**config_record(config), "defaults_used": config_record(defaults_used), "device": str(device),
            "loss_history": run.history, "batch_real_used": n_real, "images_per_class": per_class,
            "world_size": w.size, **matcher.meta()}
    return made_set(data, images, run.classes, method, run.elapsed(), **meta)


def _halve(chunk: int, whole_batch: bool, w: World, device: torch.device, k_all: int, n_real: int) -> int:
    """The class chunk after a pass ran out of memory, or the error that says what to lower."""
    if whole_batch:
        raise DMError(f"out of memory on {device} with all {k_all} classes in one pass, which BatchNorm needs: "
                      f"lower batch_real (now {n_real})") from None
    if w.sharded:
        raise DMError(f"out of memory on {device}: lower batch_real (now {n_real}) or start more processes") from None
    if chunk == 1:
        raise DMError(f"out of memory on {device} even with one class per pass: lower batch_real "
                      f"(now {n_real})") from None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return max(1, chunk // 2)


