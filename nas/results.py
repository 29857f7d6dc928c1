"""Trial records: one row per training of one architecture (``results.csv`` of nas.search, ``groundtruth.csv`` of
nas.groundtruth), written as each repeat finishes.

Both files are ``dm_core.records`` tables of the ``TRIALS`` schema: appends are atomic and locked, so several
processes (two searches into one run folder, the trial processes of NNI's local training service) share a file and
a reader never sees half a row; a row, once written, lets an interrupted search resume without training it again.
Reading refuses, in one line naming the place, a damaged file and two rows of the same training (the same proxy,
architecture, budget and trial seed), which a report would otherwise average in as another repeat.

Accuracies are fractions in [0, 1] in the files and in this API, and the column names say so (``val_acc_fraction``,
``test_acc_fraction``); whatever a person reads shows them in percent.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from dm_core.augment import DEFAULT_STRATEGY
from dm_core.records import Column, Schema, Table, rename_columns

# The layout nas wrote before the augment column and the train_iterations name; its trainings all used the six-group
# DSA strategy (the only one it knew).
TRIALS_V1 = ("proxy", "arch", "depth", "width", "act", "norm", "pool", "repeat", "seed", "budget", "precision",
             "train_images", "steps", "val_acc_fraction", "test_acc_fraction", "seconds")

TRIALS = Schema(
    name="nas-trials",
    version=2,
    columns=(Column("proxy"), Column("arch"), Column("depth", "int"), Column("width", "int"), Column("act"),
             Column("norm"), Column("pool"), Column("repeat", "int"), Column("seed", "int"), Column("budget"),
             Column("precision"), Column("augment"), Column("train_images", "int"),
             Column("train_iterations", "int"), Column("val_acc_fraction", "fraction"),
             Column("test_acc_fraction", "fraction", optional=True), Column("seconds", "float")),
    key=("proxy", "arch", "budget", "seed"),
    # ``repeat`` is the index within the search that trained the row: a search with another --seed reuses the same
    # training as another repeat; ``seconds`` is a timing.
    volatile=("repeat", "seconds"),
    upgrades={TRIALS_V1: rename_columns({"steps": "train_iterations"}, augment=DEFAULT_STRATEGY)},
    help="a file of an older nas with val_acc/test_acc columns lacks the proxy-trained test accuracy that Table 5 "
         "correlates: move it aside and rerun the search into a new run folder",
)


@dataclass(frozen=True)
class TrialRecord:
    """One training, as a row of ``TRIALS`` (fields named as the columns, except the accuracies, fractions)."""

    proxy: str  # proxy name (dm50, early, whole, custom:NAME...), or "groundtruth"
    arch: str  # ConvNetSpec.name
    depth: int
    width: int
    act: str
    norm: str
    pool: str
    repeat: int
    seed: int
    budget: str  # training budget, e.g. "e200-b250" or "it400-b250" (+ "-bf16", "-aug-STRATEGY"); part of the key
    train_images: int
    train_iterations: int  # SGD iterations actually run
    val_acc: float  # fraction in [0, 1]; column val_acc_fraction
    test_acc: float | None  # fraction in [0, 1] (column test_acc_fraction); None only in hand-made records
    seconds: float  # wall time of training + validation (the search's cost; the test pass is not counted)
    precision: str = "fp32"  # TrainConfig.precision of the training
    augment: str = DEFAULT_STRATEGY  # the DSA strategy of the training ("none": no augmentation)

    @property
    def key(self) -> tuple[str, str, str, int]:
        """What makes two rows the same training: proxy, architecture, budget and the trial's seed."""
        return (self.proxy, self.arch, self.budget, self.seed)

    def row(self) -> dict:
        return {COLUMN_OF.get(name, name): value for name, value in asdict(self).items()}


COLUMN_OF = {"val_acc": "val_acc_fraction", "test_acc": "test_acc_fraction"}  # field -> column, where they differ
assert {COLUMN_OF.get(f.name, f.name) for f in fields(TrialRecord)} == set(TRIALS.names)


def record_of(row: dict) -> TrialRecord:
    """A TrialRecord from a typed row (a missing test accuracy reads as NaN in a frame: None here)."""
    values = {f.name: row[COLUMN_OF.get(f.name, f.name)] for f in fields(TrialRecord)}
    if isinstance(values["test_acc"], float) and math.isnan(values["test_acc"]):
        values["test_acc"] = None
    return TrialRecord(**values)


def trials_frame(records: Iterable[TrialRecord]):
    """The records as a typed frame of the ``TRIALS`` columns (what ``TrialStore.frame`` returns)."""
    return pd.DataFrame([r.row() for r in records], columns=list(TRIALS.names))


def read_trials(path: str | os.PathLike):
    """The typed rows of a trials file (none when there is no file); DMError naming the file and line otherwise."""
    return Table(path, TRIALS).read()


def read_records(path: str | os.PathLike) -> list[TrialRecord]:
    return [record_of(row) for row in read_trials(path).to_dict("records")]


class TrialStore:
    """The trials file at ``path``: ``done(...)`` answers resume questions, ``add`` records one repeat."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.table = Table(self.path, TRIALS)

    def frame(self):
        return self.table.read()

    def records(self) -> list[TrialRecord]:
        return read_records(self.path)

    def done(self, proxy: str, arch: str, budget: str) -> dict[int, TrialRecord]:
        """Finished trainings of one architecture under one proxy and budget, by trial seed."""
        frame = self.frame()
        mine = frame[(frame["proxy"] == proxy) & (frame["arch"] == arch) & (frame["budget"] == budget)]
        return {int(row["seed"]): record_of(row) for row in mine.to_dict("records")}

    def add(self, record: TrialRecord) -> None:
        """Record one repeat (read, check, rewrite under the lock: no concurrent row is lost)."""
        self.table.append(record.row())
