"""The one configuration of a continual run, validated once before any work starts."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from dm_core import DMError, ImageDataset, build_model, load_dataset, resolve_device

METHODS = ("random", "herding", "dsa", "dm")
CONFIG_FILE = "config.json"
# Fields that fix what a result means: a run directory accepts new methods, seeds and runs, but not a change of these.
PROTOCOL_FIELDS = ("dataset", "steps", "ipc", "epochs", "iterations", "model", "max_train_per_class",
                   "method_options")


@dataclass(frozen=True)
class ContinualConfig:
    """PROTOCOL.md section 6 by default: CIFAR-100, 20 images per class, orders 0-4, 3 runs, 1000 epochs.

    ``iterations`` (DM and DSA) and ``method_options`` ({method: {option: value}}) go to the memory builders; None
    keeps each method's default. ``model`` is the network trained on the memory and, unless an option says
    otherwise, the network the builders use. ``max_train_per_class`` keeps a fixed random subset of each class's
    training images (None: all), a knob for CPU-sized runs.
    """

    out: Path = Path("runs/continual")
    dataset: str = "cifar100"
    data_root: str | None = None
    steps: int = 5
    methods: tuple[str, ...] = ("dm",)
    ipc: int = 20
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    runs: int = 3
    epochs: int = 1000
    iterations: int | None = None
    model: str = "convnet"
    max_train_per_class: int | None = None
    method_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    device: str = "auto"
    threads: int | None = None
    progress: bool = True

    def to_json(self) -> dict:
        values = dataclasses.asdict(self)
        values["out"] = str(self.out)
        values["methods"], values["seeds"] = list(self.methods), list(self.seeds)
        values["method_options"] = {m: dict(o) for m, o in self.method_options.items()}
        return values

    def builder_options(self, method: str) -> dict:
        """The options ``dm_core.make_set`` gets for ``method``."""
        options: dict = {}
        if method in ("dm", "dsa", "herding"):
            options["model"] = self.model
        if method in ("dm", "dsa") and self.iterations is not None:
            options["iterations"] = self.iterations
        options.update(self.method_options.get(method, {}))
        return options


def _check_fields(config: ContinualConfig) -> None:
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise DMError(f"unknown memory method {', '.join(unknown) or '(none)'}: choose from {', '.join(METHODS)}, all")
    stray = sorted(set(config.method_options) - set(METHODS))
    if stray:
        raise DMError(f"options given for unknown method(s) {', '.join(stray)}: use {', '.join(METHODS)}")
    if "random" in config.method_options and config.method_options["random"]:
        raise DMError("random selection takes no options")
    for name, value, least in (("steps", config.steps, 1), ("ipc", config.ipc, 1), ("runs", config.runs, 1),
                               ("epochs", config.epochs, 1), ("iterations", config.iterations, 1),
                               ("max-train-per-class", config.max_train_per_class, 1), ("threads", config.threads, 1)):
        if value is not None and value < least:
            raise DMError(f"--{name} must be at least {least}, got {value}")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds) or min(config.seeds) < 0:
        raise DMError(f"--seeds must be distinct non-negative integers, got {list(config.seeds)}")


def _check_run_dir(config: ContinualConfig) -> None:
    path = Path(config.out) / CONFIG_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DMError(f"{path} is not readable ({exc}): use another --out") from None
    new = config.to_json()
    changed = [k for k in PROTOCOL_FIELDS if old.get(k) != new[k]]
    if changed:
        diffs = "; ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in changed)
        raise DMError(f"{config.out} holds a run with other settings ({diffs}): use another --out to start afresh")


def cap_per_class(data: ImageDataset, per_class: int | None, seed: int = 0) -> ImageDataset:
    """At most ``per_class`` training images of each class, a fixed random subset drawn from ``seed``."""
    if per_class is None:
        return data
    generator = torch.Generator().manual_seed(seed)
    keys = torch.rand(len(data.y_train), generator=generator)
    keep = []
    for c in range(data.num_classes):
        members = torch.nonzero(data.y_train == c).flatten()
        keep.append(members[torch.argsort(keys[members])[:per_class]])
    return data.subset(torch.sort(torch.cat(keep)).values)


def prepare(config: ContinualConfig) -> ImageDataset:
    """Validate everything that can be checked before work starts; return the (capped) dataset."""
    _check_fields(config)
    resolve_device(config.device)
    data = cap_per_class(load_dataset(config.dataset, config.data_root), config.max_train_per_class)
    if data.num_classes % config.steps:
        raise DMError(f"--steps {config.steps} does not divide the {data.num_classes} classes of {data.name}: "
                      f"use a divisor of {data.num_classes}")
    data.check_ipc(config.ipc)
    build_model(config.model, data.channels, data.num_classes, data.image_size)  # unknown names fail here
    _check_run_dir(config)
    return data
