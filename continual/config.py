"""The one configuration of a continual run, validated once before any work starts (and before anything is written)."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dm_core import DMError, ImageDataset, SyntheticSet, atomic_write_text, build_model, load_dataset
from dm_core import resolve_device as check_device  # one device rule, dm_core's
from dm_core.augment import DEFAULT_STRATEGY, default_strategy, parse_strategy
from dm_core.compile import check_compile
from dm_core.io import check_folder, file_lock
from dm_core.many import check_workers
from dm_core.precision import PRECISIONS
from dm_core.registry import get_method, list_methods
from dm_core.train import RECIPE

from .builder import check_options
from .results import read_results

CONFIG_FILE = "config.json"
LOGGERS = ("text", "interactive", "csv", "tensorboard")
# Fields that fix what a result means: a run directory accepts new methods, seeds and repeats, but not a change of
# these. ``method_options`` are compared per method (see ``changed_settings``): a new method may bring its own options.
PROTOCOL_FIELDS = ("dataset", "steps", "ipc", "epochs", "iterations", "model", "max_train_per_class", "precision",
                   "augment", "train_recipe")
# Fields that run directories from before they existed lack, with the value those runs used.
FORMER_DEFAULTS = {"precision": "fp32", "augment": DEFAULT_STRATEGY, "train_recipe": 1}
# Fields stored under an earlier name: earlier name -> name now.
RENAMED_FIELDS = {"runs": "repeats"}


@dataclass(frozen=True)
class ContinualConfig:
    """docs/method.md section 6 by default: CIFAR-100, 20 images per class, orders 0-4, 3 repeats, 1000 epochs.

    ``repeats`` trainings from scratch per class order. ``iterations`` (methods that learn images) and
    ``method_options`` ({method: {option: value}}) go to the memory builders; None keeps each method's default.
    ``model`` is the network trained on the memory and, unless an option says otherwise, the network the builders
    use. ``max_train_per_class`` keeps a fixed random subset of each class's training images (None: all), a knob for
    CPU-sized runs. ``precision`` is that of the training and of the builders ("fp32", the reference's, or "bf16");
    ``augment`` the augmentation strategy of the training and of the builders that augment (ops joined by "_", or
    "none"; None: the dataset's, ``dm_core.augment.default_strategy``); ``compile`` ("auto", "on", "off") whether
    they are compiled (it changes the speed, not what a result means). ``loggers`` are Avalanche's loggers of the
    evaluations: "text" into log.txt, "csv" and "tensorboard" under logs/. ``workers`` ("auto" or N) bounds how
    many class orders (with their repeats) run at once on a CPU, each in a worker process of one torch thread; the
    rows do not depend on it.
    """

    out: Path = Path("runs/continual")
    dataset: str = "cifar100"
    data_root: str | None = None
    steps: int = 5
    methods: tuple[str, ...] = ("dm",)
    ipc: int = 20
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    repeats: int = 3
    epochs: int = 1000
    iterations: int | None = None
    model: str = "convnet"
    max_train_per_class: int | None = None
    method_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    precision: str = "fp32"
    augment: str | None = None
    compile: str = "auto"
    loggers: tuple[str, ...] = ("text",)
    device: str = "auto"
    threads: int | None = None
    workers: int | str = "auto"
    progress: bool = True

    @property
    def strategy(self) -> str:
        """The augmentation strategy in force: ``augment``, or the dataset's."""
        return self.augment if self.augment is not None else default_strategy(self.dataset)

    def to_json(self) -> dict:
        values = dataclasses.asdict(self)
        values["out"] = str(self.out)
        values["methods"], values["seeds"] = list(self.methods), list(self.seeds)
        values["loggers"] = list(self.loggers)
        values["method_options"] = {m: dict(o) for m, o in self.method_options.items()}
        values["augment"] = self.strategy
        values["train_recipe"] = RECIPE  # the trainer's version: rows of another recipe are not this run's
        return values

    def builder_options(self, method: str) -> dict:
        """The options ``dm_core.make_set`` gets for ``method``: the run's shared settings where the method has such
        an option, then the method's own options (which win)."""
        info = get_method(method)
        shared = {"model": self.model, "precision": self.precision, "compile": self.compile,
                  "iterations": self.iterations, "augment": self.strategy}
        options = {k: v for k, v in shared.items() if v is not None and info.supports(k)}
        options.update(self.method_options.get(method, {}))
        return options


def _check_fields(config: ContinualConfig) -> None:
    known = list_methods()
    unknown = [m for m in config.methods if m not in known]
    if unknown or not config.methods:
        raise DMError(f"unknown memory method {', '.join(unknown) or '(none)'}: choose from {', '.join(known)}")
    stray = sorted(set(config.method_options) - set(known))
    if stray:
        raise DMError(f"options given for unknown method(s) {', '.join(stray)}: use {', '.join(known)}")
    for name in ("steps", "ipc", "repeats", "epochs", "iterations", "max_train_per_class", "threads"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise DMError(f"{name} must be a whole number of at least 1, got {value!r}")
    if not config.seeds or len(set(config.seeds)) != len(config.seeds) or min(config.seeds) < 0:
        raise DMError(f"seeds must be distinct non-negative integers, got {list(config.seeds)}")
    if config.precision not in PRECISIONS:
        raise DMError(f"unknown precision {config.precision!r}: use {' or '.join(PRECISIONS)}")
    if config.augment is not None and config.augment != "none":
        parse_strategy(config.augment)
    check_compile(config.compile)
    check_workers(config.workers)
    bad = [name for name in config.loggers if name not in LOGGERS]
    if bad or not config.loggers:
        raise DMError(f"unknown logger {', '.join(bad) or '(none)'}: use a comma-separated list of "
                      f"{', '.join(LOGGERS)}")
    if "tensorboard" in config.loggers:
        try:
            import tensorboard  # noqa: F401  (what Avalanche's TensorboardLogger writes with)
        except ImportError:
            raise DMError("the tensorboard logger needs the tensorboard package: pip install tensorboard") from None
    # every method that will run, and every method given options, is checked against its registered configuration
    for method in sorted(set(config.methods) | set(config.method_options)):
        check_options(method, config.ipc, config.builder_options(method))


def _check_out(out: Path) -> None:
    check_folder(out, "run folder")
    for inner in (out / "memory", out / "logs"):  # written later: a read-only one would fail after the first step
        if inner.exists():
            check_folder(inner, "run folder")


def _check_run_dir(config: ContinualConfig) -> None:
    """An existing run directory must hold the same protocol, a readable results file and readable memory files."""
    out = Path(config.out)
    stored_settings(config)
    for memory_file in sorted((out / "memory").glob("*/seed*/step*.pt")):
        SyntheticSet.load(memory_file)


def stored_settings(config: ContinualConfig) -> dict | None:
    """The run directory's stored settings (None when it has none yet), refused with one DMError if ``config``
    changes them (``changed_settings``); reads and so validates its results file."""
    out = Path(config.out)
    ran = set(read_results(out / "results.csv")["method"]) if (out / "results.csv").exists() else set()
    old = read_settings(out)
    if old is not None:
        diffs = changed_settings(old, config, ran)
        if diffs:
            if any(d.startswith("train_recipe ") for d in diffs):
                raise DMError(f"{config.out} holds a run trained with an earlier recipe ({'; '.join(diffs)}; this "
                              f"version trains as the reference does): use another run folder (reports still read "
                              f"this one)")
            raise DMError(f"{config.out} holds a run with other settings ({'; '.join(diffs)}): give its settings to "
                          f"continue it, or use another run folder to start afresh")
    return old


def read_settings(out: Path) -> dict | None:
    """The settings stored in a run directory (None when it has none yet)."""
    path = out / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise DMError(f"{path} is not readable ({exc}): use another run folder") from None
    for before, now in RENAMED_FIELDS.items():  # a folder written by an earlier version
        if before in old and now not in old:
            old[now] = old.pop(before)
    return old


def changed_settings(old: dict, config: ContinualConfig, ran: set[str]) -> list[str]:
    """What ``config`` changes against the run directory's stored settings ``old``, as "field old -> new" texts.

    Protocol fields must be equal. Options are per method: a method this run builds, or gives options to, must keep
    the options it was stored with, or none if it has results but no stored options (it ran with its defaults); a
    method new to the directory brings its own.
    """
    new = config.to_json()
    diffs = [f"{k} {old.get(k, FORMER_DEFAULTS.get(k))!r} -> {new[k]!r}" for k in PROTOCOL_FIELDS
             if old.get(k, FORMER_DEFAULTS.get(k)) != new[k]]
    stored = old.get("method_options") or {}
    for method in sorted(set(config.methods) | set(new["method_options"])):
        before, now = stored.get(method, {}), new["method_options"].get(method, {})
        if (method in stored or method in ran) and before != now:
            diffs.append(f"{method} options {before!r} -> {now!r}")
    return diffs


def merged_settings(old: dict | None, config: ContinualConfig) -> dict:
    """The settings to store: this run's, with the options and methods of the earlier runs of the directory kept."""
    new = config.to_json()
    if old:
        new["method_options"] = {**(old.get("method_options") or {}), **new["method_options"]}
        new["methods"] = sorted(set(old.get("methods") or []) | set(new["methods"]))
    return new


def store_settings(config: ContinualConfig) -> None:
    """Write the run directory's settings, merged with those of the runs before it, under a lock: two processes
    starting into one directory at once (other methods, say) each keep their options in config.json, and a change
    that slipped in between the check and the write is refused."""
    out = Path(config.out)
    with file_lock(out / ".config.lock"):
        old = stored_settings(config)
        atomic_write_text(out / CONFIG_FILE, json.dumps(merged_settings(old, config), indent=2) + "\n")


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
    """Validate everything that can be checked before work starts; return the (capped) dataset. Writes nothing."""
    _check_fields(config)
    _check_out(Path(config.out))
    check_device(config.device)
    _check_run_dir(config)
    data = cap_per_class(load_dataset(config.dataset, config.data_root), config.max_train_per_class)
    if data.num_classes % config.steps:
        raise DMError(f"steps {config.steps} does not divide the {data.num_classes} classes of {data.name}: "
                      f"use a divisor of {data.num_classes}")
    data.check_ipc(config.ipc)
    models = {config.model} | {str(o["model"]) for o in config.method_options.values() if "model" in o}
    for name in sorted(models):  # unknown network names fail here, not after the first memory is built
        build_model(name, data.channels, data.num_classes, data.image_size)
    return data
