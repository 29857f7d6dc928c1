"""One entry point for every way of making a small set: ``make_set(method, data, ipc, ...)``."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from .compile import check_compile
from .data import ImageDataset
from .dm import DMConfig, condense_dm
from .dsa import DSAConfig, condense_dsa
from .errors import DMError
from .nets import check_model_name
from .precision import check_precision
from .select import select_herding, select_random
from .successors import SUCCESSORS
from .synset import SyntheticSet

METHODS = ("random", "herding", "dm", "dsa", *SUCCESSORS)
# methods that condense by an iterative optimisation (a checkpoint while they run): (configuration, function)
RUNNERS = {"dm": (DMConfig, condense_dm), "dsa": (DSAConfig, condense_dsa), **SUCCESSORS}
CONDENSERS = {name: config for name, (config, _) in RUNNERS.items()}
HERDING_OPTIONS = ("model", "epochs", "batch_size", "precision", "compile")
# methods that torch.compile a network where it pays (an option ``compile``: "auto", "on" or "off")
COMPILED_METHODS = (*(m for m, config in CONDENSERS.items() if "compile" in config.__dataclass_fields__), "herding")


def _config(cls, ipc: int, seed: int, options: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise DMError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}: use {', '.join(sorted(names))}")
    for name in ("ipc", "seed"):
        if name in options:
            raise DMError(f"{name} is not an option here: it is given as --{name} (or the {name}= argument)")
    for f in dataclasses.fields(cls):
        if f.name in options:
            _check_type(cls.__name__, f.name, str(f.type), options[f.name])
    return cls(ipc=ipc, seed=seed, **options)


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_type(owner: str, name: str, annotation: str, value) -> None:
    """Refuse a value whose type the field's annotation (e.g. "int | None", "float") does not allow."""
    allowed = [part.strip() for part in annotation.split("|")]
    if value is None and "None" in allowed:
        return
    kinds = tuple(t for part in allowed for t in _TYPES.get(part, (object,)))
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(p for p in allowed)
        raise DMError(f"{owner} option {name} must be {wanted}, got {value!r}")


def check_options(method: str, ipc: int, seed: int = 0, **options) -> None:
    """Validate a method's options without any data (bad values fail before data is loaded or work starts)."""
    options = {k: v for k, v in options.items() if v is not None}
    if method not in METHODS:
        raise DMError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if "model" in options:
        check_model_name(options["model"])
    if method == "random":
        extra = sorted(set(options) - {"precision"})
        if extra:
            raise DMError(f"random selection takes no options, got {', '.join(extra)}")
        check_precision(options.get("precision", "fp32"))
    elif method == "herding":
        unknown = sorted(set(options) - set(HERDING_OPTIONS))
        if unknown:
            raise DMError(f"unknown option(s) {', '.join(unknown)} for herding: use {', '.join(HERDING_OPTIONS)}")
        check_precision(options.get("precision", "fp32"))
        check_compile(options.get("compile", "auto"))
        for name in ("epochs", "batch_size"):
            if name in options and (not isinstance(options[name], int) or options[name] < 1):
                raise DMError(f"herding {name} must be a positive integer, got {options[name]!r}")
    else:
        try:
            _config(CONDENSERS[method], ipc, seed, options)
        except TypeError as exc:  # a value of the wrong type, e.g. a string where a number goes
            raise DMError(f"bad {method} option: {exc}") from None


def make_set(method: str, data: ImageDataset, ipc: int, classes: Sequence[int] | None = None, seed: int = 0,
             device="auto", progress: bool = True, checkpoint=None, resume: bool = False,
             **options) -> SyntheticSet:
    """Build an ``ipc``-images-per-class set of ``classes`` (all by default) with ``method``.

    ``options`` are fields of the method's configuration (``DMConfig``, ``DSAConfig``, ``M3DConfig``, ``IDMConfig``,
    ``DataDAMConfig``, ``DDMConfig``; for herding ``model``, ``epochs``, ``batch_size``, ``precision``,
    ``compile``); options that are None are dropped, so CLI defaults pass through.
    """
    options = {k: v for k, v in options.items() if v is not None}
    check_options(method, ipc, seed, **options)
    if method == "random":
        options.pop("precision", None)  # nothing is computed; accepted so callers can pass it to every method
        return select_random(data, ipc, classes, seed)
    if method == "herding":
        return select_herding(data, ipc, classes, seed, device, progress=progress, **options)
    config_type, condense = RUNNERS[method]
    return condense(data, _config(config_type, ipc, seed, options), classes, device, checkpoint, resume, progress)
