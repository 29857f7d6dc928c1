"""Exploration strategies by name: ``--strategy`` of ``python -m nas.search``.

Three kinds of names are accepted:

- the four short names with this project's settings: ``grid`` (NNI ``GridSearch`` in enumeration order), ``random``,
  ``evolution`` (``RegularizedEvolution`` with a population sized to the space) and ``tpe``;
- any NNI strategy class by its name, in any case: multi-trial (``GridSearch``, ``Random``, ``RegularizedEvolution``,
  ``TPE``, ``PolicyBasedRL``) with NNI's default settings, or one-shot (``DARTS``, ``ENAS``, ``GumbelDARTS``,
  ``RandomOneShot``, ``Proxyless``), which trains a supernet instead of trials (``nas.oneshot``);
- ``module:Class`` for a user's own multi-trial strategy: a ``nni.nas.strategy.Strategy`` subclass, or a function that
  returns a strategy, called without arguments.

Strategies whose constructor takes ``seed`` get ``--seed``.

Which way: a trial reports its validation accuracy, higher is better, so every search MAXIMISES (``OPTIMIZE_MODE``).
NNI's ``TPE()`` minimises unless told otherwise; ``tpe`` and ``TPE`` are both built with ``optimize_mode="maximize"``
here, and a user's strategy whose tuner minimises is refused (it would look for the worst architecture).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from nni.nas import strategy
from nni.nas.oneshot.pytorch.strategy import OneShotStrategy
from nni.nas.strategy import Strategy

from dm_core import DMError

SHORT_NAMES = ("grid", "random", "evolution", "tpe")
MULTI_TRIAL = ("GridSearch", "Random", "RegularizedEvolution", "TPE", "PolicyBasedRL")
ONE_SHOT = ("DARTS", "ENAS", "GumbelDARTS", "RandomOneShot", "Proxyless")
NEEDS_TIANSHOU = ("PolicyBasedRL", "ENAS")  # NNI's reinforcement-learning controllers
OPTIMIZE_MODE = "maximize"  # trials report validation accuracy


@dataclass(frozen=True)
class StrategyChoice:
    """A parsed ``--strategy``: its canonical ``name`` and whether it is one-shot."""

    name: str  # a short name, an NNI class name, or "module:Class"
    one_shot: bool = False

    def build(self, space_size: int, seed: int):
        """A fresh strategy instance (multi-trial or one-shot) seeded where the class allows it."""
        if self.name in SHORT_NAMES:
            return _short(self.name, space_size, seed)
        if self.name == "TPE":  # NNI's TPE() minimises; trials report accuracy (see the module docstring)
            return _short("tpe", space_size, seed)
        factory = _nni_class(self.name) if ":" not in self.name else _user_factory(self.name)
        kwargs = {"seed": seed} if "seed" in _parameters(factory) else {}
        try:
            strategy = factory(**kwargs)
        except ImportError as exc:  # a user's strategy may need a package that is missing
            raise DMError(f"strategy {self.name} cannot start: {exc}") from None
        if not isinstance(strategy, Strategy):
            raise DMError(f"strategy {self.name} gave a {type(strategy).__name__}, not an NNI Strategy")
        mode = getattr(getattr(getattr(strategy, "tuner", None), "optimize_mode", None), "value", OPTIMIZE_MODE)
        if mode != OPTIMIZE_MODE:  # an HPO tuner strategy (TPE, Anneal, ...) built to minimise
            raise DMError(f"strategy {self.name} minimises, but trials report validation accuracy (higher is "
                          f"better): build its tuner with optimize_mode='maximize'")
        return strategy


def available() -> str:
    return ", ".join((*SHORT_NAMES, *MULTI_TRIAL, *ONE_SHOT)) + ", or module:Class"


def parse_strategy(text: str) -> StrategyChoice:
    """Check a ``--strategy`` value (a user's module is imported here, so a typo fails before any work)."""
    text = text.strip()
    if text in SHORT_NAMES:
        return StrategyChoice(text)
    if ":" in text:
        _user_factory(text)
        return StrategyChoice(text)
    by_lower = {name.lower(): name for name in (*MULTI_TRIAL, *ONE_SHOT)}
    name = by_lower.get(text.lower())
    if name is None:
        raise DMError(f"unknown strategy {text!r}: choose one of {available()}")
    if name in NEEDS_TIANSHOU and importlib.util.find_spec("tianshou") is None:
        raise DMError(f"strategy {name} cannot start: NNI's {name} needs tianshou (pip install tianshou)")
    return StrategyChoice(name, one_shot=name in ONE_SHOT)


def _short(name: str, space_size: int, seed: int):
    if name == "grid":
        return strategy.GridSearch(shuffle=False)
    if name == "random":
        return strategy.Random(seed=seed)
    if name == "evolution":
        population = max(2, min(100, space_size // 4))
        return strategy.RegularizedEvolution(population_size=population, sample_size=max(1, population // 4),
                                             seed=seed)
    return strategy.TPE(optimize_mode="maximize", seed=seed)


def _nni_class(name: str) -> Callable:
    return getattr(strategy, name)


def _user_factory(text: str) -> Callable:
    module_name, _, attribute = text.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DMError(f"strategy {text}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(module, attribute, None)
    if factory is None or not callable(factory):
        raise DMError(f"strategy {text}: {module_name} has no class or function {attribute!r}")
    if inspect.isclass(factory) and not issubclass(factory, Strategy):
        raise DMError(f"strategy {text}: {attribute} is not a subclass of nni.nas.strategy.Strategy")
    if inspect.isclass(factory) and issubclass(factory, OneShotStrategy):
        raise DMError(f"strategy {text}: a user's one-shot strategy is not supported; use DARTS, ENAS, "
                      f"GumbelDARTS, RandomOneShot or Proxyless")
    return factory


def _parameters(factory: Callable) -> set[str]:
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()
