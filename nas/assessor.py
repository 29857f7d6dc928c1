"""Learning curves and early stopping: ``--report-every`` and ``--assessor`` of ``python -m nas.search``.

A trial that reports intermediate results measures the validation accuracy every ``every`` epochs of each repeat,
sends it to NNI (``nni.report_intermediate_result``) and records the repeat's curve in ``curves.csv`` of the run
directory. With ``--assessor NAME`` one of NNI's assessor algorithms (``Medianstop``, ``Curvefitting``) judges the
curve of the trial's first repeat after each point, against the curves of the finished trials of the same proxy and
budget; a trial it rejects stops at once, reports its last point as its final result (what NNI's dispatcher tells a
tuner about an early-stopped trial) and is recorded as ``stopped`` so that a rerun neither trains nor ranks it.

Why the assessor runs in the trial: NNI 3.0's ``NasExperiment`` has no assessor slot (its manager's dispatcher is the
strategy) and its execution engines cannot kill a model, so NNI's own assessor algorithms are driven here, where the
curve is. That works the same in-process (``sequential``) and in trial processes (``local``, ``remote``, ...), where
the finished curves come from ``curves.csv`` on the shared run directory.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dm_core import DMError
from dm_core.records import Column, Schema, Table

ASSESSORS = ("Medianstop", "Curvefitting")
FINISHED, STOPPED = "finished", "stopped"
NOT_STOPPED = "none"  # ``stopped_by`` of a curve that ran to the end


def _stopped_by(frame):
    """Version 1 wrote the assessor column empty for a finished curve; version 2 names it ``stopped_by`` and writes
    "none" (an empty cell cannot be part of a row's key)."""
    frame = frame.rename(columns={"assessor": "stopped_by"})
    frame["stopped_by"] = frame["stopped_by"].where(frame["stopped_by"] != "", NOT_STOPPED)
    return frame


CURVES = Schema(
    name="nas-curves",
    version=2,
    columns=(Column("proxy"), Column("arch"), Column("budget"), Column("repeat", "int"), Column("every", "int"),
             Column("status"), Column("stopped_by"),
             Column("val_acc_fraction_curve", "fractions", optional=True)),  # empty: --report-every > epochs
    key=("proxy", "arch", "budget", "repeat", "every", "stopped_by"),
    upgrades={("proxy", "arch", "budget", "repeat", "every", "status", "assessor", "val_acc_fraction_curve"):
              _stopped_by},
)


def parse_assessor(name: str | None) -> str | None:
    """The canonical name of an NNI assessor (any case), None for none; DMError listing the choices otherwise."""
    if name is None:
        return None
    for known in ASSESSORS:
        if name.strip().lower() == known.lower():
            return known
    raise DMError(f"unknown assessor {name!r}: choose one of {', '.join(ASSESSORS)}")


@dataclass(frozen=True)
class Curve:
    """Validation accuracy (fractions) of one repeat after every ``every`` epochs; ``stopped`` if cut short."""

    proxy: str
    arch: str
    budget: str
    repeat: int
    every: int
    status: str  # "finished" or "stopped"
    assessor: str  # the assessor that stopped it ("" when finished)
    val_acc: tuple[float, ...]

    @property
    def key(self) -> tuple:
        return (self.proxy, self.arch, self.budget, self.repeat, self.every, self.assessor)

    def row(self) -> dict:
        return {"proxy": self.proxy, "arch": self.arch, "budget": self.budget, "repeat": self.repeat,
                "every": self.every, "status": self.status, "stopped_by": self.assessor or NOT_STOPPED,
                "val_acc_fraction_curve": self.val_acc or None}


def _curve(row: dict) -> Curve:
    points = row["val_acc_fraction_curve"]
    points = () if points is None or (isinstance(points, float) and math.isnan(points)) else tuple(points)
    stopped_by = "" if row["stopped_by"] == NOT_STOPPED else row["stopped_by"]
    return Curve(row["proxy"], row["arch"], row["budget"], int(row["repeat"]), int(row["every"]), row["status"],
                 stopped_by, points)


class CurveStore:
    """``curves.csv`` of a run directory (the ``CURVES`` table): one row per recorded curve."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.table = Table(self.path, CURVES)

    def curves(self) -> list[Curve]:
        return [_curve(row) for row in self.table.read().to_dict("records")]

    def add(self, curve: Curve) -> None:
        self.table.append(curve.row())

    def stopped(self, proxy: str, arch: str, budget: str, every: int, assessor: str) -> Curve | None:
        for c in self.curves():
            if (c.proxy, c.arch, c.budget, c.every, c.status, c.assessor) == (proxy, arch, budget, every, STOPPED,
                                                                              assessor):
                return c
        return None

    def finished_first_repeats(self, proxy: str, budget: str, every: int) -> list[Curve]:
        return [c for c in self.curves() if (c.proxy, c.budget, c.every, c.repeat, c.status) ==
                (proxy, budget, every, 0, FINISHED)]


class TrialAssessor:
    """One NNI assessor algorithm, fed with the finished curves it has not seen yet before each judgement."""

    def __init__(self, name: str, points: int, start_step: int | None = None):
        # NNI is imported here, not above: reports read curves.csv through this module, without NNI
        from nni.algorithms.hpo.curvefitting_assessor import CurvefittingAssessor
        from nni.algorithms.hpo.medianstop_assessor import MedianstopAssessor
        from nni.assessor import AssessResult

        self.name = name
        if name == "Medianstop":
            self.algorithm = MedianstopAssessor("maximize", start_step=start_step if start_step is not None else 0)
        else:  # Curvefitting predicts the value at the last point from the curve so far
            self.algorithm = CurvefittingAssessor(epoch_num=points,
                                                  start_step=start_step if start_step is not None else 6)
        self._seen: set[str] = set()
        self._bad = AssessResult.Bad

    def learn(self, finished: list[Curve]) -> None:
        """Tell the algorithm about finished trials, as NNI's dispatcher does (their points, then their end)."""
        for curve in finished:
            if curve.arch not in self._seen:
                self._seen.add(curve.arch)
                self._judge(curve.arch, list(curve.val_acc))
                self.algorithm.trial_end(curve.arch, True)

    def should_stop(self, arch: str, curve: list[float]) -> bool:
        return self._judge(arch, curve) == self._bad

    def _judge(self, arch: str, curve: list[float]):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # Curvefitting's curve models overflow on some curves; it copes
            return self.algorithm.assess_trial(arch, curve)
