"""The method registry: every way of making a small set is registered once, with its configuration dataclass.

The CLI's ``--method`` choices, the checks of ``--option KEY=VALUE``, ``continual.run --memory``, the names of NAS
proxies and the docs' method table all come from here (``list_methods``, ``get_method``), so adding a method is one
``register_method`` call (docs/architecture.md, "Adding a method").

A configuration is a frozen dataclass whose first fields are ``ipc`` and ``seed``; every other field is an option
of the method. ``Method.configure`` builds it from keyword options, refusing unknown names and values of the wrong
type with one ``DMError`` line; the dataclass's ``__post_init__`` checks the values.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import DMError
from .validate import check_ipc, check_seed


@dataclass(frozen=True)
class Method:
    """One registered method.

    ``run(data, config, classes=None, device="auto", progress=True, **state)`` makes the set; methods that learn
    images (``learns``) also take ``checkpoint``, ``resume`` and ``initial`` there. ``per_class``: each class is made
    from its own images only (a continual step can build its classes without the others); otherwise the method
    trains a network on every class it is given. ``paper``: one of the four methods the DM paper compares.
    """

    name: str
    config: type
    run: Callable[..., Any]
    summary: str
    learns: bool
    per_class: bool
    paper: bool = False
    order: int = 100  # place in ``list_methods()`` (the built-in methods: 0-7); ties keep registration order

    @property
    def options(self) -> tuple[str, ...]:
        """The configuration's fields a caller may set (all but ``ipc`` and ``seed``)."""
        return tuple(f.name for f in dataclasses.fields(self.config) if f.name not in ("ipc", "seed"))

    def supports(self, option: str) -> bool:
        return option in self.options

    def defaults(self) -> dict:
        return {f.name: f.default for f in dataclasses.fields(self.config) if f.name not in ("ipc", "seed")}

    def configure(self, ipc: int, seed: int = 0, **options) -> Any:
        """The method's configuration; options that are None keep their default."""
        check_ipc(ipc)
        check_seed(seed)
        options = {k: v for k, v in options.items() if v is not None}
        for name in ("ipc", "seed"):
            if name in options:
                raise DMError(f"{name} is not an option of {self.name}: give it as the {name} argument")
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise DMError(f"unknown option(s) {', '.join(unknown)} for {self.name}: use "
                          f"{', '.join(sorted(self.options)) or 'none'}")
        hints = typing.get_type_hints(self.config)
        for name, value in options.items():
            check_type(f"{self.name} option {name}", hints[name], value)
        try:
            return self.config(ipc=ipc, seed=seed, **options)
        except DMError as exc:  # a value check of the configuration: say whose option it is
            message = str(exc)
            raise DMError(message if message.startswith(f"{self.name} ") else f"{self.name}: {message}") from None


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method (its name must be new and a lower-case word, so that ``NAME`` + ipc names a NAS proxy)."""
    if not method.name.isidentifier() or method.name != method.name.lower() or method.name[-1].isdigit():
        raise ValueError(f"method name {method.name!r}: use a lower-case identifier not ending in a digit")
    if method.name in _METHODS:
        raise ValueError(f"method {method.name!r} is registered already")
    fields = [f.name for f in dataclasses.fields(method.config)]
    if fields[:2] != ["ipc", "seed"]:
        raise ValueError(f"{method.config.__name__} must start with the fields ipc and seed, not {fields[:2]}")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise DMError(f"unknown method {name!r}: choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def list_methods(*, learns: bool | None = None, paper: bool | None = None) -> list[str]:
    """Registered method names in registration order, optionally only those that learn images / the paper's."""
    ordered = sorted(_METHODS.values(), key=lambda m: m.order)  # stable: registration order among equals
    return [m.name for m in ordered
            if (learns is None or m.learns == learns) and (paper is None or m.paper == paper)]


def methods_supporting(option: str) -> list[str]:
    return [m.name for m in _METHODS.values() if m.supports(option)]


# ---------------------------------------------------------------------------------------------------------------
# Values checked against a field's type hint: "int | None", "float", "str", "bool".

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "True or False", type(None): "None"}


def check_type(what: str, hint: Any, value: Any) -> None:
    """Refuse ``value`` unless the type hint allows it (a float field takes an int; a bool is never a number)."""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return
        if kind is bool and isinstance(value, bool):
            return
        if kind in (int, float) and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind is float and isinstance(value, float):
            return
        if kind is str and isinstance(value, str):
            return
        if kind not in _NAMES:  # a type this check does not know (e.g. a model object): the dataclass decides
            return
    wanted = " or ".join(_NAMES[k] for k in allowed if k in _NAMES)
    raise DMError(f"{what} must be {wanted}, got {value!r}")


def options_table(names: Mapping[str, Method] | None = None) -> str:
    """A Markdown table of every method: name, what it does, its options with defaults (for the docs)."""
    rows = ["| method | what it does | options (default) |", "|---|---|---|"]
    for method in (names or _METHODS).values():
        options = ", ".join(f"`{k}` ({v!r})" for k, v in method.defaults().items())
        rows.append(f"| `{method.name}` | {method.summary} | {options} |")
    return "\n".join(rows) + "\n"
