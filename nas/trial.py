"""One trial: train an architecture from scratch on a proxy (or the whole split), ``repeats`` times, and score it.

``ArchitectureEvaluator`` is the function NNI's ``FunctionalEvaluator`` calls with each sampled model: it trains the
repeats that the trial store does not hold yet, records each one as soon as it finishes, and reports the mean
validation accuracy to NNI with ``nni.report_final_result``.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import nni
import torch
from torch import nn

from dm_core import ConvNetSpec, TrainConfig, build_model, evaluate_accuracy, reinit_, train_model

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
    x_test: torch.Tensor | None = None  # measured only when given (ground truth)
    y_test: torch.Tensor | None = None

    @property
    def steps(self) -> int:
        return self.config.schedule(len(self.x))[1]

    @property
    def budget(self) -> str:
        length = f"it{self.config.iterations}" if self.config.iterations is not None else f"e{self.config.epochs}"
        return f"{length}-b{self.config.batch_size}"


def repeat_seed(seed: int, repeat: int) -> int:
    """Initialisation and training seed of one repeat: the same for every architecture, so repeats pair up."""
    return seed + repeat


def train_architecture(spec: ConvNetSpec, task: TrainTask, repeat: int, seed: int, device: torch.device | str,
                       model: nn.Module | None = None) -> TrialRecord:
    """Initialise (``model`` or a fresh net) from the repeat's seed, train on the task, score on validation/test."""
    trial_seed = repeat_seed(seed, repeat)
    start = time.perf_counter()
    net = model if model is not None else build_model(spec, task.x.shape[1], task.num_classes, task.x.shape[2:])
    reinit_(net.cpu(), torch.Generator().manual_seed(trial_seed))
    train_model(net, task.x, task.y, task.config, seed=trial_seed, device=device)
    val_acc = evaluate_accuracy(net, task.x_val, task.y_val, device=device)
    test_acc = evaluate_accuracy(net, task.x_test, task.y_test, device=device) if task.x_test is not None else None
    return TrialRecord(task.label, spec.name, spec.depth, spec.width, spec.act, spec.norm, spec.pool, repeat,
                       trial_seed, task.budget, len(task.x), task.steps, val_acc, test_acc,
                       time.perf_counter() - start)


class ArchitectureEvaluator:
    """Scores architectures on one task, reusing finished repeats from ``store`` (resume) and recording new ones.

    Called by NNI with a frozen ``ConvNetModelSpace`` (``model.spec``, ``model.net``); ``score`` is the same for a
    plain ConvNetSpec. ``on_repeat`` (e.g. a progress bar's update) is called once per repeat, trained or reused.
    """

    def __init__(self, task: TrainTask, store: TrialStore, repeats: int, seed: int, device: torch.device | str,
                 on_repeat: Callable[[TrialRecord, bool], None] | None = None):
        self.task = task
        self.store = store
        self.repeats = repeats
        self.seed = seed
        self.device = device
        self.on_repeat = on_repeat

    def records(self, spec: ConvNetSpec, model: nn.Module | None = None) -> list[TrialRecord]:
        done = self.store.done(self.task.label, spec.name, self.task.budget)
        records = []
        for repeat in range(self.repeats):
            record, reused = done.get(repeat), True
            if record is None:
                record, reused = train_architecture(spec, self.task, repeat, self.seed, self.device, model), False
                self.store.add(record)
            records.append(record)
            if self.on_repeat is not None:
                self.on_repeat(record, reused)
        return records

    def score(self, spec: ConvNetSpec, model: nn.Module | None = None) -> float:
        return statistics.fmean(r.val_acc for r in self.records(spec, model))

    def __call__(self, model) -> None:
        nni.report_final_result(self.score(model.spec, model.net))
