"""One trial: train an architecture from scratch on a proxy (or the whole split), ``repeats`` times, and score it.

``ArchitectureEvaluator`` is the function NNI's ``FunctionalEvaluator`` calls with each sampled model in the
command's own searches (``nas.evaluator`` wraps the same for a user's NasExperiment): it trains the repeats that the
trial store does not hold yet, records each one as soon as it finishes, and reports the mean
validation accuracy to NNI with ``nni.report_final_result``. With ``report_every`` it also reports the validation
accuracy every few epochs (``nni.report_intermediate_result``) and records the curves; with an assessor, a trial whose
first repeat it rejects stops early (``nas.assessor``).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import nni
import torch
from torch import nn

from dm_core import ConvNetSpec, TrainConfig
from dm_core.augment import DEFAULT_STRATEGY
from dm_core.many import JobResult, TrainJob, run_job, train_many
from dm_core.train import RECIPE

from .assessor import FINISHED, STOPPED, Curve, CurveStore, TrialAssessor
from .results import TrialRecord, TrialStore


@dataclass(frozen=True)
class TrainTask:
    """What every architecture of a search (or of the ground truth) trains on, and what scores it."""

    label: str  # proxy name, or "groundtruth"
    x: torch.Tensor
    y: torch.Tensor
    config: TrainConfig
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    x_test: torch.Tensor | None = None  # test accuracy is measured when given (every search and the ground truth)
    y_test: torch.Tensor | None = None

    @property
    def train_iterations(self) -> int:
        """SGD iterations of one training."""
        return self.config.schedule(len(self.x))[1]

    @property
    def passes(self) -> int:
        """Passes over the training images of one training (the reference's epochs 0..E: E + 1)."""
        return self.config.passes(len(self.x))

    def points(self, every: int) -> int:
        """Intermediate results of one training when one is reported every ``every`` passes and at the last."""
        return -(-self.passes // every)

    @property
    def budget(self) -> str:
        """The training recipe, part of a row's key: rows of another recipe never stand in for this one's. It ends in
        the trainer's recipe version (``-r2``: the reference's schedule; rows of the earlier recipe have no tag);
        fp32 and the six-group DSA strategy add nothing."""
        length = f"it{self.config.iterations}" if self.config.iterations is not None else f"e{self.config.epochs}"
        precision = "" if self.config.precision == "fp32" else f"-{self.config.precision}"
        strategy = self.config.strategy
        augment = "" if strategy == DEFAULT_STRATEGY else f"-aug-{strategy}"
        return f"{length}-b{self.config.batch_size}{precision}{augment}-r{RECIPE}"


def repeat_seed(seed: int, repeat: int) -> int:
    """Initialisation and training seed of one repeat: the same for every architecture, so repeats pair up."""
    return seed + repeat


def trial_job(spec: ConvNetSpec, task: TrainTask, repeat: int, seed: int, model: nn.Module | None = None,
              curve_every: int = 0) -> TrainJob:
    """One repeat as a ``dm_core.many`` job: ``model`` (or a fresh net of ``spec``) drawn from the repeat's seed,
    trained on the task, then scored on validation and, when the task has one, test data (at the device's
    evaluation batch); run wherever ``train_many`` puts it."""
    tests = ((task.x_val, task.y_val),) + (((task.x_test, task.y_test),) if task.x_test is not None else ())
    return TrainJob(spec if model is None else model, task.x, task.y, task.config, repeat_seed(seed, repeat), tests,
                    num_classes=task.num_classes, curve_every=curve_every)


def job_record(spec: ConvNetSpec, task: TrainTask, repeat: int, seed: int, result: JobResult) -> TrialRecord:
    """The trial store's row of a finished job (its seconds count its training and both passes)."""
    test_acc = result.accuracies[1] if len(result.accuracies) > 1 else None
    return TrialRecord(task.label, spec.name, spec.depth, spec.width, spec.act, spec.norm, spec.pool, repeat,
                       repeat_seed(seed, repeat), task.budget, len(task.x), task.train_iterations, result.accuracies[0],
                       test_acc, result.seconds, task.config.precision, task.config.strategy)


def train_architecture(spec: ConvNetSpec, task: TrainTask, repeat: int, seed: int, device: torch.device | str,
                       model: nn.Module | None = None, every: int = 0,
                       on_point: Callable[[int, float], None] | None = None) -> TrialRecord:
    """One repeat in this process (``trial_job`` run by ``run_job``). ``every`` > 0: its validation accuracy after
    every that many passes and the last goes to ``on_point(epoch, accuracy)``, which does not change the training
    (same seed, same result) but may raise to stop it."""
    return job_record(spec, task, repeat, seed, run_job(trial_job(spec, task, repeat, seed, model, every), device,
                                                        on_point=on_point))


class _Stop(Exception):
    """Raised from the epoch callback when the assessor rejects the curve so far."""


@dataclass(frozen=True)
class TrialResult:
    """The repeats of one architecture, or the curve of its first repeat if the assessor stopped it."""

    records: list[TrialRecord]
    stopped: Curve | None = None

    @property
    def score(self) -> float:
        """Mean validation accuracy; for a stopped trial its last point (NNI tells a tuner the same)."""
        if self.stopped is not None:
            return self.stopped.val_acc[-1] if self.stopped.val_acc else 0.0
        return statistics.fmean(r.val_acc for r in self.records)


class ArchitectureEvaluator:
    """Scores architectures on one task, reusing finished repeats from ``store`` (resume) and recording new ones.

    Called by NNI with a frozen ``ConvNetModelSpace`` (``model.spec``, ``model.net``); ``score`` is the same for a
    plain ConvNetSpec. ``on_repeat`` (e.g. a progress bar's update) is called once per repeat, trained or reused.
    ``report_every`` > 0: every that many epochs the validation accuracy goes to NNI as an intermediate result and
    into ``curves``; ``assessor`` then judges the first repeat's curve after each point.

    Repeats that need no watching train together through ``dm_core.train_many`` (``workers``: auto, or at most N at
    once; 1 one after another): every repeat when there is no assessor, the repeats after the first when there is
    (the first is watched epoch by epoch, in this process). A repeat's record depends on its seed, not on
    ``workers`` (up to float rounding: one-thread workers round as one thread does). ``run_all`` trains the missing
    repeats of many architectures together (the ground truth).
    """

    def __init__(self, task: TrainTask, store: TrialStore, repeats: int, seed: int, device: torch.device | str,
                 on_repeat: Callable[[TrialRecord, bool], None] | None = None, report_every: int = 0,
                 curves: CurveStore | None = None, assessor: TrialAssessor | None = None,
                 workers: int | str = "auto"):
        if (report_every > 0 or assessor is not None) and curves is None:
            raise ValueError("intermediate results need a CurveStore")
        if assessor is not None and report_every < 1:
            raise ValueError("an assessor needs intermediate results (report_every >= 1)")
        self.task = task
        self.store = store
        self.repeats = repeats
        self.seed = seed
        self.device = device
        self.on_repeat = on_repeat
        self.report_every = report_every
        self.curves = curves
        self.assessor = assessor
        self.workers = workers

    def recorded(self, spec: ConvNetSpec) -> TrialResult | None:
        """The result of an architecture that needs no training (every repeat recorded, or stopped by this
        assessor in an earlier run), else None."""
        label, budget = self.task.label, self.task.budget
        if self.assessor is not None:
            stopped = self.curves.stopped(label, spec.name, budget, self.report_every, self.assessor.name)
            if stopped is not None:
                return TrialResult([], stopped)
        done = self.store.done(label, spec.name, budget)
        seeds = [repeat_seed(self.seed, repeat) for repeat in range(self.repeats)]
        if all(seed in done for seed in seeds):
            return TrialResult([done[seed] for seed in seeds])
        return None

    def run(self, spec: ConvNetSpec, model: nn.Module | None = None) -> TrialResult:
        label, budget, every = self.task.label, self.task.budget, self.report_every
        if self.assessor is not None:
            stopped = self.curves.stopped(label, spec.name, budget, every, self.assessor.name)
            if stopped is not None:  # stopped by this assessor in an earlier run: not trained again
                return TrialResult([], stopped)
        done = self.store.done(label, spec.name, budget)
        records: dict[int, TrialRecord] = {}
        missing = [r for r in range(self.repeats) if repeat_seed(self.seed, r) not in done]
        if self.assessor is not None and 0 in missing:  # the first repeat is watched: it may stop the trial
            judge = self.assessor
            judge.learn(self.curves.finished_first_repeats(label, budget, every))
            curve: list[float] = []
            try:
                records[0] = train_architecture(spec, self.task, 0, self.seed, self.device, model, every,
                                                on_point=self._monitor(spec, curve, judge))
            except _Stop:
                stopped = Curve(label, spec.name, budget, 0, every, STOPPED, judge.name, tuple(curve))
                self.curves.add(stopped)
                return TrialResult([], stopped)
            self.store.add(records[0])
            self.curves.add(Curve(label, spec.name, budget, 0, every, FINISHED, "", tuple(curve)))
            missing.remove(0)
        trained = self._train([(spec, r, model) for r in missing])
        for repeat in sorted(trained):  # NNI hears each repeat's curve, in repeat order, once it has finished
            for point in trained[repeat][1]:
                nni.report_intermediate_result(point)
        records.update({repeat: record for repeat, (record, _) in trained.items()})
        result = []
        for repeat in range(self.repeats):
            record = records.get(repeat) or done[repeat_seed(self.seed, repeat)]
            result.append(record)
            if self.on_repeat is not None:
                self.on_repeat(record, repeat not in records)
        return TrialResult(result)

    def run_all(self, specs: list[ConvNetSpec]) -> None:
        """Train and record every missing repeat of ``specs`` (no assessor, no curves: the ground truth), as many at
        once as ``workers`` allows; ``on_repeat`` hears of each reused repeat, then of each trained one as it
        finishes."""
        if self.assessor is not None or self.report_every:
            raise ValueError("run_all trains without an assessor or intermediate results")
        todo = []
        for spec in specs:
            done = self.store.done(self.task.label, spec.name, self.task.budget)
            for repeat in range(self.repeats):
                record = done.get(repeat_seed(self.seed, repeat))
                if record is None:
                    todo.append((spec, repeat, None))
                elif self.on_repeat is not None:
                    self.on_repeat(record, True)
        self._train(todo, on_record=None if self.on_repeat is None else lambda r: self.on_repeat(r, False))

    def _train(self, todo: list[tuple[ConvNetSpec, int, nn.Module | None]],
               on_record: Callable[[TrialRecord], None] | None = None) -> dict[int, tuple[TrialRecord, list[float]]]:
        """Train (spec, repeat, model) items through ``train_many``, recording each (and its curve, with
        intermediate results) as soon as it finishes; {repeat: (record, curve)} of the items."""
        every = self.report_every
        jobs = [trial_job(spec, self.task, repeat, self.seed, model, every) for spec, repeat, model in todo]
        trained: dict[int, tuple[TrialRecord, list[float]]] = {}

        def finished(index: int, result: JobResult) -> None:
            spec, repeat, _ = todo[index]
            record = job_record(spec, self.task, repeat, self.seed, result)
            self.store.add(record)
            curve = []
            if every:  # after every few passes and the last (the final validation accuracy)
                curve = [accuracy for _, accuracy in result.curve]
                self.curves.add(Curve(self.task.label, spec.name, self.task.budget, repeat, every, FINISHED, "",
                                      tuple(curve)))
            trained[repeat] = (record, curve)
            if on_record is not None:
                on_record(record)

        if jobs:
            train_many(jobs, self.device, self.workers, on_result=finished)
        return trained

    @staticmethod
    def _monitor(spec: ConvNetSpec, curve: list[float], judge: TrialAssessor):
        """The watched repeat's ``on_point``: NNI hears each point, and the assessor judges the curve so far."""
        def on_point(epoch: int, accuracy: float) -> None:
            curve.append(accuracy)
            nni.report_intermediate_result(accuracy)
            if judge.should_stop(spec.name, curve):
                raise _Stop

        return on_point

    def records(self, spec: ConvNetSpec, model: nn.Module | None = None) -> list[TrialRecord]:
        return self.run(spec, model).records

    def score(self, spec: ConvNetSpec, model: nn.Module | None = None) -> float:
        return self.run(spec, model).score

    def __call__(self, model) -> None:
        nni.report_final_result(self.score(model.spec, model.net))
