"""Tidy trial records: one CSV row per (proxy, architecture, budget, repeat), written as each repeat finishes.

Every append rewrites the file atomically (temp file + rename) under an exclusive ``flock`` on a side lock file, so a
reader never sees half a row and several trial processes of NNI's local training service can share one file. A row,
once written, is the record that lets an interrupted search resume without redoing the trial.
"""
from __future__ import annotations

import csv
import fcntl
import io
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from dm_core import DMError, atomic_write_text


@dataclass(frozen=True)
class TrialRecord:
    proxy: str  # proxy name (dm50, early, whole...), or "groundtruth"
    arch: str  # ConvNetSpec.name
    depth: int
    width: int
    act: str
    norm: str
    pool: str
    repeat: int
    seed: int
    budget: str  # training budget, e.g. "e200-b250" or "it400-b250"; part of the resume key
    train_images: int
    steps: int  # SGD steps actually run
    val_acc: float
    test_acc: float | None  # measured for ground-truth trials only
    seconds: float  # wall time of training + evaluation

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.proxy, self.arch, self.budget, self.repeat)


COLUMNS = tuple(f.name for f in fields(TrialRecord))
_INT = {"depth", "width", "repeat", "seed", "train_images", "steps"}
_FLOAT = {"val_acc", "seconds"}


def _parse(row: dict[str, str]) -> TrialRecord:
    values: dict = {}
    for name in COLUMNS:
        raw = row[name]
        if name in _INT:
            values[name] = int(raw)
        elif name in _FLOAT:
            values[name] = float(raw)
        elif name == "test_acc":
            values[name] = float(raw) if raw not in ("", None) else None
        else:
            values[name] = raw
    return TrialRecord(**values)


def read_records(path: str | os.PathLike) -> list[TrialRecord]:
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DMError(f"{path} is not a NAS trial file (missing columns {', '.join(sorted(missing))})")
        return [_parse(row) for row in reader]


def _render(records: list[TrialRecord]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        row = asdict(record)
        row["test_acc"] = "" if record.test_acc is None else record.test_acc
        writer.writerow(row)
    return buffer.getvalue()


class TrialStore:
    """The CSV of finished trials at ``path``; ``done(...)`` answers resume questions, ``add`` records one repeat."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def records(self) -> list[TrialRecord]:
        return read_records(self.path)

    def done(self, proxy: str, arch: str, budget: str) -> dict[int, TrialRecord]:
        """Finished repeats of one architecture under one proxy and budget, by repeat index."""
        return {r.repeat: r for r in self.records() if (r.proxy, r.arch, r.budget) == (proxy, arch, budget)}

    def add(self, record: TrialRecord) -> None:
        with self._locked():
            records = [r for r in self.records() if r.key != record.key]
            atomic_write_text(self.path, _render([*records, record]))
