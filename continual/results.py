"""The tidy results table of a run directory: one row per (method, seed, repeat, step), on ``dm_core.records``.

Columns (``SCHEMA``, version 3): ``accuracy_fraction`` is the top-1 accuracy in [0, 1] on the test images of every
class seen so far (the stream); ``experience_accuracy_fraction`` holds the accuracy on each seen test experience,
experiences 0..step in stream order, separated by spaces (a row of the accuracy matrix); ``repeat`` numbers the
trainings from scratch of one class order; ``precision`` is the training's numeric precision and ``augment`` its
augmentation strategy. A unit of work is (dataset, method, steps, ipc, seed, repeat, step).

Files written by earlier versions are read in this layout (and rewritten in it by the next append): version 2 (today's
``run`` instead of ``repeat``, no ``augment``) and version 1 (``accuracy`` instead of ``accuracy_fraction``, with or
without the per-experience and precision columns). Those runs trained with the six-group augmentation strategy in
fp32, which is what their missing columns are filled with.

Several ``continual.run`` processes may write one run directory at once (different ``--seeds``, say): each append is
an atomic rewrite under the table's lock (``dm_core.records.Table``), and a unit already recorded is not recorded
again, so no process loses another's rows.
"""
from __future__ import annotations

import itertools
from pathlib import Path

from dm_core import DMError
from dm_core.augment import DEFAULT_STRATEGY
from dm_core.records import Column, Schema, Table, read_tables

KEY = ("dataset", "method", "steps", "ipc", "seed", "repeat", "step")
_COLUMNS = (Column("dataset"), Column("method"), Column("steps", "int"), Column("ipc", "int"), Column("seed", "int"),
            Column("repeat", "int"), Column("step", "int"), Column("classes_seen", "int"),
            Column("accuracy_fraction", "fraction"), Column("experience_accuracy_fraction", "fractions", optional=True),
            Column("precision"), Column("augment"))


def _upgrade(accuracy: str):
    """Rows of an earlier layout in this one: ``run`` is ``repeat``, the accuracy column is ``accuracy_fraction``,
    and what those runs did not record is what they used (fp32, the six-group strategy, no per-experience
    accuracies when the column is missing)."""
    def upgrade(frame):
        frame = frame.rename(columns={"run": "repeat", accuracy: "accuracy_fraction"})
        for name, value in (("experience_accuracy_fraction", ""), ("precision", "fp32"), ("augment", DEFAULT_STRATEGY)):
            if name not in frame.columns:
                frame[name] = value
        frame["precision"] = frame["precision"].replace("", "fp32")
        return frame
    return upgrade


def _older_headers() -> dict:
    """Every header an earlier version wrote: ``accuracy`` (version 1) or ``accuracy_fraction`` (version 2), each
    with or without the per-experience and precision columns."""
    upgrades = {}
    base = ("dataset", "method", "steps", "ipc", "seed", "run", "step", "classes_seen")
    for accuracy, experience, precision in itertools.product(("accuracy", "accuracy_fraction"), (True, False),
                                                             (True, False)):
        header = (*base, accuracy, *(("experience_accuracy_fraction",) if experience else ()),
                  *(("precision",) if precision else ()))
        upgrades[header] = _upgrade(accuracy)
    return upgrades


SCHEMA = Schema("continual-results", 3, _COLUMNS, key=KEY, upgrades=_older_headers(),
                help="give a results.csv written by continual.run")
COLUMNS = SCHEMA.names


def check_rows(frame, where) -> None:
    """What one row can say wrong that its types do not show: a step outside its steps, or a per-experience list
    that is not one accuracy per seen experience. ``where(i)`` names row ``i``'s place (file and line)."""
    for i, row in enumerate(frame[["steps", "step", "experience_accuracy_fraction"]].itertuples(index=False)):
        if row.steps < 1 or not 0 <= row.step < row.steps:
            raise DMError(f"{where(i)}: step {row.step} of {row.steps} steps; the file is damaged: fix or remove "
                          f"that line")
        if row.experience_accuracy_fraction and len(row.experience_accuracy_fraction) != row.step + 1:
            raise DMError(f"{where(i)}: {len(row.experience_accuracy_fraction)} experience accuracies at step "
                          f"{row.step}; the file is damaged: fix or remove that line")


def read_results(path: str | Path):
    """The typed rows of one results file (a pandas DataFrame in ``COLUMNS``), checked; a DMError if there is no
    file or it cannot be trusted."""
    path = Path(path)
    if not path.is_file():
        raise DMError(f"no results file at {path}")
    frame = Table(path, SCHEMA).read()
    check_rows(frame, lambda i: f"{path}, line {i + 2}")
    return frame


def read_many(paths):
    """The rows of several results files as one DataFrame with a ``source`` column ("FILE, line N"); a unit
    recorded twice, in one file or in two, is refused naming both places."""
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.is_file():
            raise DMError(f"no results file at {path}")
    frame = read_tables(paths, SCHEMA)
    check_rows(frame, lambda i: frame["source"].iloc[i])
    return frame


def unit_key(method: str, steps: int, seed: int, repeat: int, step: int) -> tuple:
    return (method, int(steps), int(seed), int(repeat), int(step))


class ResultsTable:
    """``results.csv`` of a run: ``done(...)`` says whether an evaluation unit is recorded (by any process);
    ``add`` records one row."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.table = Table(self.path, SCHEMA)
        self._done: set = set()
        self.refresh()

    def read(self):
        """Every row (a DataFrame), re-read: other processes may have added rows."""
        frame = self.table.read()
        check_rows(frame, lambda i: f"{self.path}, line {i + 2}")
        return frame

    def refresh(self):
        frame = self.read()
        self._done = {unit_key(*r) for r in frame[["method", "steps", "seed", "repeat", "step"]].itertuples(
            index=False, name=None)}
        return frame

    @property
    def rows(self):
        return self.refresh()

    def done(self, method: str, steps: int, seed: int, repeat: int, step: int) -> bool:
        return unit_key(method, steps, seed, repeat, step) in self._done

    def add(self, row: dict) -> bool:
        """Record ``row`` unless its unit is recorded already; returns whether it was written. A unit another process
        recorded meanwhile with other values (a GPU's nondeterminism) keeps the first recording, as when that
        process had been first to check."""
        key = unit_key(row["method"], row["steps"], row["seed"], row["repeat"], row["step"])
        self.refresh()
        if key in self._done:
            return False
        try:
            written = self.table.append(row) == 1
        except DMError:
            self.refresh()
            if key not in self._done:
                raise
            return False
        self._done.add(key)
        return written
