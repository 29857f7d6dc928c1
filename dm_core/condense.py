"""What DM and DSA condensation share: class selection, the image store, initial images, checkpoints, the result."""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .data import ClassStore, ImageDataset
from .device import make_generator
from .distributed import all_sum, world
from .errors import DMError
from .io import atomic_torch_save
from .precision import memory_format
from .synset import SyntheticSet, package_version

CHECKPOINT_FORMAT = "dm_core.checkpoint/1"


class Interrupted(KeyboardInterrupt):
    """A condensation stopped by Ctrl-C at an iteration boundary; ``checkpoint`` (if not None) holds that state."""

    def __init__(self, iteration: int, iterations: int, checkpoint: Path | None):
        super().__init__(f"interrupted at iteration {iteration} of {iterations}")
        self.iteration, self.iterations, self.checkpoint = iteration, iterations, checkpoint


def resolve_classes(data: ImageDataset, classes: Sequence[int] | None, ipc: int) -> list[int]:
    classes = list(range(data.num_classes)) if classes is None else [int(c) for c in classes]
    if not classes:
        raise DMError("no classes to condense: give at least one class")
    if len(set(classes)) != len(classes):
        raise DMError(f"classes repeat in {classes}")
    data.check_ipc(ipc, classes)
    return classes


def class_store(data: ImageDataset, classes: list[int], device: torch.device) -> ClassStore:
    """Only the requested classes' images go to the device (a continual step condenses its new classes only)."""
    keep = torch.isin(data.y_train, torch.as_tensor(classes))
    return ClassStore(data.x_train[keep], data.y_train[keep], data.num_classes, device)


def initial_images(store: ClassStore, classes: list[int], ipc: int, init: str, generator: torch.Generator,
                   shape: tuple[int, ...]) -> torch.Tensor:
    """'real': ipc distinct real images per class; 'noise': standard normal. Grouped by class, classes in order."""
    if init == "real":
        return store.sample(classes, ipc, generator).clone()
    if init == "noise":
        return torch.randn(len(classes) * ipc, *shape, generator=generator, device=store.device)
    raise DMError(f"unknown init {init!r}: use real or noise")


def finish_set(data: ImageDataset, images: torch.Tensor, classes: list[int], method: str, started: float,
               **meta) -> SyntheticSet:
    """A set of ``images`` grouped by class (``classes`` in order, equally many each) with its provenance."""
    labels = torch.as_tensor(classes).repeat_interleave(len(images) // len(classes))
    meta = {"dataset": data.name, "method": method, **meta, "classes": classes, "mean": list(data.mean),
            "std": list(data.std), "image_size": list(data.image_size), "num_classes": data.num_classes,
            "seconds": round(time.perf_counter() - started, 3), "version": package_version()}
    return SyntheticSet(images.detach().float().contiguous().cpu(), labels, meta)


class Checkpointer:
    """Periodic, atomic snapshots of a condensation run; ``resume`` picks one up if it matches the configuration.

    Everything that decides the rest of the run is saved (images, optimiser momentum, the generator's state,
    the iteration), so a resumed run reproduces the uninterrupted one exactly on the same device.
    """

    def __init__(self, path: str | os.PathLike | None, method: str, config, classes: list[int], dataset: str):
        self.path = Path(path) if path else None
        self.identity = {"method": method, "config": _identity(config), "classes": classes, "dataset": dataset}

    def load(self) -> dict | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DMError(f"checkpoint {self.path} is unreadable ({type(exc).__name__}): delete it to start over")
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise DMError(f"{self.path} is not a dm_core checkpoint: delete it or choose another --checkpoint")
        if not isinstance(state.get("identity"), dict):
            raise DMError(f"{self.path} is not a dm_core checkpoint: delete it or choose another --checkpoint")
        changed = _differences(state["identity"], self.identity)
        if changed:
            raise DMError(f"checkpoint {self.path} belongs to another run ({'; '.join(changed[:4])}): use the "
                          f"same settings to continue it, or --restart to start over")
        return state

    def save(self, iteration: int, images: torch.Tensor, optimizer: torch.optim.Optimizer,
             generator: torch.Generator, history: list) -> None:
        if self.path is None:
            return
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "identity": self.identity, "iteration": iteration,
                           "images": images.detach().cpu(), "optimizer": optimizer.state_dict(),
                           "generator": generator.get_state(), "history": history}, self.path)


def _differences(old: dict, new: dict) -> list[str]:
    """'name old -> new' for every setting that differs (config fields flattened)."""
    def flat(identity: dict) -> dict:
        values = {k: v for k, v in identity.items() if k != "config"}
        values.update(identity.get("config") or {})
        return values

    old, new = flat(old), flat(new)
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def _identity(config) -> dict:
    """The configuration fields that must match for a resume; the iteration budget may grow."""
    fields = asdict(config)
    for volatile in ("iterations", "checkpoint_every", "log_every", "compile"):
        fields.pop(volatile, None)
    return fields


class Condensation:
    """The state one condensation run carries: store, classes, synthetic images, optimiser, generator, history."""

    def __init__(self, method: str, data: ImageDataset, config, classes: Sequence[int] | None, device: torch.device,
                 lr_img: float, checkpoint: str | os.PathLike | None, resume: bool):
        self.method, self.data, self.config, self.device = method, data, config, device
        self.classes = resolve_classes(data, classes, config.ipc)
        self.store = class_store(data, self.classes, device)
        self.generator = make_generator(config.seed, device)
        self.class_index = torch.as_tensor(self.classes, device=device)
        self.history: list[list[float]] = []
        self._running: torch.Tensor | None = None
        self._since_log = 0
        self._stop_requested = False
        images = initial_images(self.store, self.classes, config.ipc, config.init, self.generator,
                                data.x_train.shape[1:])
        self.images = images.to(memory_format=memory_format(device, config.precision)).requires_grad_(True)
        self.optimizer = torch.optim.SGD([self.images], lr=lr_img, momentum=0.5)
        self.checkpointer = Checkpointer(checkpoint, method, config, self.classes, data.name)
        self.start = 0
        if resume:
            if checkpoint is None:
                raise DMError("--resume needs a checkpoint path (--checkpoint FILE)")
            state = self.checkpointer.load()
            if state is not None and int(state["iteration"]) > config.iterations:
                raise DMError(f"checkpoint {checkpoint} is at iteration {int(state['iteration'])}, beyond "
                              f"--iterations {config.iterations}: raise --iterations to at least "
                              f"{int(state['iteration'])}, or --restart to start over")
            if state is not None:
                with torch.no_grad():
                    self.images.copy_(state["images"].to(device))
                self.optimizer.load_state_dict(state["optimizer"])
                self.generator.set_state(state["generator"])
                self.history = [list(h) for h in state["history"]]
                self.start = int(state["iteration"])
                if world().is_main:
                    print(f"resuming from {self.checkpointer.path} at iteration {self.start}", file=sys.stderr)
        self.started_at = time.perf_counter()

    def progress_bar(self, progress: bool):
        return tqdm(range(self.start, self.config.iterations), initial=self.start, total=self.config.iterations,
                    desc=f"{self.method.upper()} {self.data.name} ipc={self.config.ipc}", disable=not progress,
                    dynamic_ncols=True)

    def end_iteration(self, done: int, loss: torch.Tensor, bar) -> None:
        """Add this iteration's loss (on the device); every ``log_every`` iterations read the mean once (the only
        host sync), check it is finite and log it; every ``checkpoint_every`` iterations save a checkpoint."""
        self._running = loss.detach() if self._running is None else self._running + loss.detach()
        self._since_log += 1
        if done % self.config.log_every == 0 or done == self.config.iterations:
            mean_loss = float(all_sum(self._running)) / self._since_log  # summed over ranks when sharded
            self._running, self._since_log = None, 0
            if not math.isfinite(mean_loss):
                raise DMError(f"{self.method} loss became {mean_loss} by iteration {done}: lower the image "
                              f"learning rate (--lr-img) and start again")
            self.history.append([done, mean_loss])
            bar.set_postfix(loss=f"{mean_loss:.4g}")
        if done % self.config.checkpoint_every == 0 and done < self.config.iterations:
            self.checkpointer.save(done, self.images, self.optimizer, self.generator, self.history)
        if self._stop_requested and done < self.config.iterations:
            self.checkpointer.save(done, self.images, self.optimizer, self.generator, self.history)
            raise Interrupted(done, self.config.iterations, self.checkpointer.path)

    @contextmanager
    def interruptible(self, enabled: bool = True):
        """Within: the first Ctrl-C asks the run to stop at the end of the current iteration, after saving a
        checkpoint (so the run resumes exactly); a second one stops at once. Only the main thread gets signals; under
        torch.distributed the ranks would stop at different iterations, so there a Ctrl-C stops at once and the
        periodic per-rank checkpoints hold the run."""
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

    def result(self, extra_meta: dict) -> SyntheticSet:
        return finish_set(self.data, self.images, self.classes, self.method, self.started_at,
                          **{**asdict(self.config), "device": str(self.device), "loss_history": self.history,
                             **extra_meta})
