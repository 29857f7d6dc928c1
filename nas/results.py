"""Tidy trial records: one CSV row per (proxy, architecture, budget, repeat), written as each repeat finishes.

Every append rewrites the file atomically (temp file + rename) under an exclusive ``flock`` on a side lock file, so a
reader never sees half a row and several processes (two searches into one run directory, or the trial processes of
NNI's local training service) can share one file. A row, once written, is the record that lets an interrupted search
resume without redoing the trial.

Accuracies are fractions in [0, 1] in the file, and their column names say so (``val_acc_fraction``,
``test_acc_fraction``); reports show them in percent. A file that cannot be read back (damaged, truncated, or written
by an older version with ``val_acc``/``test_acc`` columns and no ``precision``) is refused with one DMError line.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

from dm_core import DMError, atomic_write_text
from dm_core.io import file_lock

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrialRecord:
    proxy: str  # proxy name (dm50, early, whole, custom:NAME...), or "groundtruth"
    arch: str  # ConvNetSpec.name
    depth: int
    width: int
    act: str
    norm: str
    pool: str
    repeat: int
    seed: int
    budget: str  # training budget, e.g. "e200-b250" or "it400-b250" (bf16: "e200-b250-bf16"); part of the resume key
    train_images: int
    steps: int  # SGD steps actually run
    val_acc: float  # fraction in [0, 1]; column val_acc_fraction
    test_acc: float | None  # fraction in [0, 1] (column test_acc_fraction); None only in hand-made records
    seconds: float  # wall time of training + validation (the search's cost; the test pass is not counted)
    precision: str = "fp32"  # TrainConfig.precision of the training

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What makes two rows the same training: proxy, architecture, budget and the trial's seed (``repeat`` is the
        index within the search that wrote it; searches with other ``--seed`` values share the trials they share)."""
        return (self.proxy, self.arch, self.budget, self.seed)


# CSV column -> TrialRecord field, in file order.
COLUMNS = {"proxy": "proxy", "arch": "arch", "depth": "depth", "width": "width", "act": "act", "norm": "norm",
           "pool": "pool", "repeat": "repeat", "seed": "seed", "budget": "budget", "precision": "precision",
           "train_images": "train_images", "steps": "steps", "val_acc_fraction": "val_acc",
           "test_acc_fraction": "test_acc", "seconds": "seconds"}
assert set(COLUMNS.values()) == {f.name for f in fields(TrialRecord)}
_INT = {"depth", "width", "repeat", "seed", "train_images", "steps"}
LEGACY_COLUMNS = {"val_acc", "test_acc"}  # written before accuracy columns were named by unit and precision recorded


class _BadRow(ValueError):
    pass


def _fraction(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also refuses NaN
        raise _BadRow(f"{name} = {raw!r} is not a fraction in [0, 1]")
    return value


def _parse(row: dict) -> TrialRecord:
    if None in row:
        raise _BadRow("more fields than the header")
    values: dict = {}
    for column, name in COLUMNS.items():
        raw = row.get(column)
        if raw is None:
            raise _BadRow(f"the row ends before column {column}")
        if name in _INT:
            if not raw.lstrip("-").isdigit():
                raise _BadRow(f"{column} = {raw!r} is not an integer")
            values[name] = int(raw)
        elif name == "val_acc":
            values[name] = _fraction(column, raw)
        elif name == "test_acc":
            values[name] = _fraction(column, raw) if raw != "" else None
        elif name == "seconds":
            try:
                values[name] = float(raw)
            except ValueError:
                values[name] = math.nan
            if not (math.isfinite(values[name]) and values[name] >= 0):
                raise _BadRow(f"seconds = {raw!r} is not a duration")
        elif name == "precision":
            if raw not in PRECISIONS:
                raise _BadRow(f"precision = {raw!r} is not one of {', '.join(PRECISIONS)}")
            values[name] = raw
        else:
            if raw == "":
                raise _BadRow(f"{column} is empty")
            values[name] = raw
    return TrialRecord(**values)


def read_records(path: str | os.PathLike) -> list[TrialRecord]:
    """The records of a trial CSV ([] when there is no file); DMError naming the file and line if it is damaged."""
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise DMError(f"{path} is not a file: move it aside")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = set(reader.fieldnames or ())
            if not header:
                raise DMError(f"{path} is empty, not a NAS trial file: restore it or move it aside")
            if LEGACY_COLUMNS <= header and "val_acc_fraction" not in header:
                raise DMError(f"{path} was written by an older nas (columns val_acc/test_acc, no precision, no "
                              f"proxy-trained test accuracy): move it aside and rerun the search into a new --out")
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise DMError(f"{path} is not a NAS trial file (missing columns {', '.join(missing)})")
            records = []
            for row in reader:
                try:
                    records.append(_parse(row))
                except (ValueError, TypeError) as exc:
                    raise DMError(f"{path}, line {reader.line_num}: {exc}; the file is damaged: restore it or move "
                                  f"it aside") from None
            return records
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DMError(f"{path} is not a readable CSV ({type(exc).__name__}: {str(exc)[:80]}): restore it or move it "
                      f"aside") from None


def render_records(records: list[TrialRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in records:
        writer.writerow(["" if getattr(r, name) is None else getattr(r, name) for name in COLUMNS.values()])
    return buffer.getvalue()


class TrialStore:
    """The CSV of finished trials at ``path``; ``done(...)`` answers resume questions, ``add`` records one repeat."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def records(self) -> list[TrialRecord]:
        return read_records(self.path)

    def done(self, proxy: str, arch: str, budget: str) -> dict[int, TrialRecord]:
        """Finished trainings of one architecture under one proxy and budget, by trial seed."""
        return {r.seed: r for r in self.records() if (r.proxy, r.arch, r.budget) == (proxy, arch, budget)}

    def add(self, record: TrialRecord) -> None:
        """Record one repeat: read, replace its key, write back, all under the lock (no concurrent row is lost)."""
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            records = [r for r in self.records() if r.key != record.key]
            atomic_write_text(self.path, render_records([*records, record]))
