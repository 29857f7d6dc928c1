"""One entry point for every way of making a small set: ``make_set(method, data, ipc, ...)``."""
from __future__ import annotations

import dataclasses
from typing import Sequence

from .data import ImageDataset
from .dm import DMConfig, condense_dm
from .dsa import DSAConfig, condense_dsa
from .errors import DMError
from .nets import check_model_name
from .precision import check_precision
from .select import select_herding, select_random
from .synset import SyntheticSet

METHODS = ("random", "herding", "dm", "dsa")
HERDING_OPTIONS = ("model", "epochs", "batch_size", "precision")


def _config(cls, ipc: int, seed: int, options: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise DMError(f"unknown option(s) {', '.join(unknown)} for {cls.__name__}: use {', '.join(sorted(names))}")
    return cls(ipc=ipc, seed=seed, **options)


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
        for name in ("epochs", "batch_size"):
            if name in options and (not isinstance(options[name], int) or options[name] < 1):
                raise DMError(f"herding {name} must be a positive integer, got {options[name]!r}")
    else:
        try:
            _config(DMConfig if method == "dm" else DSAConfig, ipc, seed, options)
        except TypeError as exc:  # a value of the wrong type, e.g. a string where a number goes
            raise DMError(f"bad {method} option: {exc}") from None


def make_set(method: str, data: ImageDataset, ipc: int, classes: Sequence[int] | None = None, seed: int = 0,
             device="auto", progress: bool = True, checkpoint=None, resume: bool = False,
             **options) -> SyntheticSet:
    """Build an ``ipc``-images-per-class set of ``classes`` (all by default) with ``method``.

    ``options`` are fields of the method's configuration (``DMConfig``, ``DSAConfig``; for herding ``model``,
    ``epochs``, ``batch_size``); options that are None are dropped, so CLI defaults pass through.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if method == "random":
        precision = options.pop("precision", "fp32")  # nothing is computed; accepted so callers can pass it to all
        if options:
            raise DMError(f"random selection takes no options, got {', '.join(options)}")
        check_precision(precision)
        return select_random(data, ipc, classes, seed)
    if method == "herding":
        unknown = sorted(set(options) - set(HERDING_OPTIONS))
        if unknown:
            raise DMError(f"unknown option(s) {', '.join(unknown)} for herding: use {', '.join(HERDING_OPTIONS)}")
        return select_herding(data, ipc, classes, seed, device, progress=progress, **options)
    if method == "dm":
        return condense_dm(data, _config(DMConfig, ipc, seed, options), classes, device, checkpoint, resume, progress)
    if method == "dsa":
        return condense_dsa(data, _config(DSAConfig, ipc, seed, options), classes, device, checkpoint, resume,
                            progress)
    raise DMError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
