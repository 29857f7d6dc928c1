"""Figures and tables from result files; never trains anything."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable

from dm_core import DMError


def report_cli(make: Callable[[], Iterable[Path]]) -> int:
    """Run one report: print each file it wrote, or one ``error:`` line and exit status 2."""
    try:
        written = list(make())
    except DMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
