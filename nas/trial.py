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
import time
from collections.abc import Callable
from dataclasses import dataclass

import nni
import torch
from torch import nn

from dm_core import ConvNetSpec, TrainConfig, build_model, evaluate_accuracy, reinit_, train_model
from dm_core.augment import DEFAULT_STRATEGY
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
        per_epoch, total, _ = self.config.schedule(len(self.x))
        return -(-total // per_epoch)

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


# Evaluation batch: on a CPU 128 images per forward pass measured 1.5-2x faster than 1024 (cache-sized activations);
# the accuracy does not depend on it (eval mode).
EVAL_BATCH = 128


def repeat_seed(seed: int, repeat: int) -> int:
    """Initialisation and training seed of one repeat: the same for every architecture, so repeats pair up."""
    return seed + repeat


def train_architecture(spec: ConvNetSpec, task: TrainTask, repeat: int, seed: int, device: torch.device | str,
                       model: nn.Module | None = None,
                       on_epoch: Callable[[int, nn.Module], None] | None = None) -> TrialRecord:
    """Initialise (``model`` or a fresh net) from the repeat's seed, train on the task, score on validation/test.

    ``on_epoch(epoch, net)`` is passed to ``train_model`` (it does not change the training: same seed, same result).
    """
    trial_seed = repeat_seed(seed, repeat)
    start = time.perf_counter()
    net = model if model is not None else build_model(spec, task.x.shape[1], task.num_classes, task.x.shape[2:])
    reinit_(net.cpu(), torch.Generator().manual_seed(trial_seed))
    train_model(net, task.x, task.y, task.config, seed=trial_seed, device=device, on_epoch=on_epoch)
    precision = task.config.precision
    val_acc = evaluate_accuracy(net, task.x_val, task.y_val, device=device, batch_size=EVAL_BATCH,
                                precision=precision)
    seconds = time.perf_counter() - start  # the search's cost: the test pass below is for the analysis only
    test_acc = (evaluate_accuracy(net, task.x_test, task.y_test, device=device, batch_size=EVAL_BATCH,
                                  precision=precision) if task.x_test is not None else None)
    return TrialRecord(task.label, spec.name, spec.depth, spec.width, spec.act, spec.norm, spec.pool, repeat,
                       trial_seed, task.budget, len(task.x), task.train_iterations, val_acc, test_acc, seconds,
                       precision, task.config.strategy)


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
    """

    def __init__(self, task: TrainTask, store: TrialStore, repeats: int, seed: int, device: torch.device | str,
                 on_repeat: Callable[[TrialRecord, bool], None] | None = None, report_every: int = 0,
                 curves: CurveStore | None = None, assessor: TrialAssessor | None = None):
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
        records = []
        for repeat in range(self.repeats):
            record, reused = done.get(repeat_seed(self.seed, repeat)), True
            if record is None:
                curve: list[float] = []
                judge = self.assessor if repeat == 0 else None
                if judge is not None:
                    judge.learn(self.curves.finished_first_repeats(label, budget, every))
                try:
                    record = train_architecture(spec, self.task, repeat, self.seed, self.device, model,
                                                on_epoch=self._monitor(spec, curve, judge) if every else None)
                except _Stop:
                    stopped = Curve(label, spec.name, budget, repeat, every, STOPPED, judge.name, tuple(curve))
                    self.curves.add(stopped)
                    return TrialResult([], stopped)
                reused = False
                self.store.add(record)
                if every:
                    self.curves.add(Curve(label, spec.name, budget, repeat, every, FINISHED, "", tuple(curve)))
            records.append(record)
            if self.on_repeat is not None:
                self.on_repeat(record, reused)
        return TrialResult(records)

    def _monitor(self, spec: ConvNetSpec, curve: list[float], judge: TrialAssessor | None):
        task = self.task

        passes = task.passes

        def on_epoch(epoch: int, net: nn.Module) -> None:
            if epoch % self.report_every and epoch != passes:  # every few passes, and the last: the final score
                return
            curve.append(evaluate_accuracy(net, task.x_val, task.y_val, device=self.device,
                                           precision=task.config.precision))
            nni.report_intermediate_result(curve[-1])
            if judge is not None and judge.should_stop(spec.name, curve):
                raise _Stop

        return on_epoch

    def records(self, spec: ConvNetSpec, model: nn.Module | None = None) -> list[TrialRecord]:
        return self.run(spec, model).records

    def score(self, spec: ConvNetSpec, model: nn.Module | None = None) -> float:
        return self.run(spec, model).score

    def __call__(self, model) -> None:
        nni.report_final_result(self.score(model.spec, model.net))
