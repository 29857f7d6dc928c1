"""Checks of the values every command and the Python API share, with the same one-line message in both."""
from __future__ import annotations

import math

from .errors import DMError

SEED_LIMIT = 2 ** 63  # what torch.Generator.manual_seed and numpy's SeedSequence both take


def check_int(name: str, value, least: int = 1) -> int:
    """An integer (not a bool, a float or a string) of at least ``least``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise DMError(f"{name} must be an integer, got {value!r}")
    if value < least:
        raise DMError(f"{name} must be at least {least}, got {value}")
    return value


def check_ipc(ipc) -> int:
    return check_int("ipc", ipc, 1)


def check_seed(seed, name: str = "seed") -> int:
    """One rule for every seed: an integer from 0 to 2**63 - 1."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < SEED_LIMIT:
        raise DMError(f"{name} must be an integer from 0 to 2**63 - 1, got {seed!r}")
    return seed


def check_number(name: str, value, *, positive: bool = True, zero: bool = False) -> float:
    """A finite real number (an int is fine), positive (or, with ``zero``, non-negative)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise DMError(f"{name} must be a finite number, got {value!r}")
    if positive and (value < 0 or (value == 0 and not zero)):
        raise DMError(f"{name} must be {'non-negative' if zero else 'positive'}, got {value!r}")
    return value


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise DMError(f"unknown {name} {value!r}: use {', '.join(map(str, choices))}")
    return value
