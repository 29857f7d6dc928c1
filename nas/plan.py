"""What a search is: its settings (``SearchConfig``), checked once into a ``SearchPlan``, the task every architecture
trains on (``prepare_task``), the trial function (``make_evaluator``) and what a search returns (``SearchSummary``).

Every other module of a search (``nas.search``, ``nas.live``, ``nas.oneshot``, ``nas.evaluation``) imports these from
here, so none of them imports another.

Defaults are the paper's protocol: CIFAR-10, a seeded 10% validation split, the DM 50-images-per-class proxy made by
dm_core from the training split (cached in the run directory), every architecture trained on it with the dataset's
DSA augmentation (batch 250, 200 epochs), 5 repeats, grid search over all 720 architectures, NNI's in-process
sequential engine.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dm_core import DMError, TrainConfig, get_method, list_methods, resolve_device
from dm_core.augment import parse_strategy as check_augment
from dm_core.compile import check_compile
from dm_core.many import check_workers
from dm_core.precision import check_precision
from dm_core.validate import check_seed

from .assessor import CurveStore, TrialAssessor, parse_assessor
from .data import SearchData, load_search_data
from .proxy import Proxy, load_or_make_proxy_set, load_proxy_file, parse_proxy
from .results import TrialRecord, TrialStore
from .rundir import RunDir
from .space import SearchSpace, parse_space
from .strategies import OPTIMIZE_MODE, StrategyChoice, parse_strategy
from .trial import ArchitectureEvaluator, TrainTask

EXECUTIONS = ("sequential", "local", "remote", "kubeflow", "frameworkcontroller")
# NNI training services that need machine or cluster settings (a training-service file); kubeflow and
# frameworkcontroller are NNI's two Kubernetes services.
CLUSTER_EXECUTIONS = EXECUTIONS[2:]


@dataclass(frozen=True)
class SearchConfig:
    """The settings of one search, as plain values (a trial process of a training service rebuilds its task from
    them). Field names are the command's flags (``batch_size``: ``--batch-size``)."""

    proxy: str = "dm50"
    dataset: str = "cifar10"
    space: str = "full"
    strategy: str = "grid"
    repeats: int = 5
    epochs: int | None = None  # training epochs of every trial; None: 200 (100 for ``whole``)
    batch_size: int = 250
    augment: str | None = None  # DSA strategy of every trial's training; "none": off; None: the dataset's
    iterations: int | None = None  # condensation iterations of a condensed proxy; None: the method's default
    batch_real: int | None = None  # real images per class per condensation iteration; None: the method's default
    max_trials: int | None = None  # None: the size of the space
    seed: int = 0  # seeds the proxy set, the strategy, and (seed + repeat) each trial
    split_seed: int = 0
    val_fraction: float = 0.1
    device: str = "auto"
    out: str = "runs/nas"
    data_root: str | None = None
    proxy_file: str | None = None  # train on this synthetic-set file instead of making / caching one
    execution: str = "sequential"
    concurrency: int = 1  # trials at once, ``local`` execution only
    port: int = 8080  # NNI manager port, training-service executions only
    training_service: str | None = None  # JSON file of NNI training-service fields (remote / kubernetes executions)
    report_every: int | None = None  # epochs between intermediate results; None: 1 where NNI reads them, else 0
    assessor: str | None = None  # NNI assessor (Medianstop, Curvefitting) judging each trial's first repeat
    assessor_start: int | None = None  # intermediate results before the assessor judges; None: NNI's default
    oneshot_epochs: int | None = None  # supernet training epochs of a one-shot strategy; None: epochs
    precision: str = "fp32"  # each trial's training and evaluation: fp32 (the reference) or bf16 autocast
    compile: str = "auto"  # torch.compile each trial's training: auto (where its steps pay the compile), on, off
    workers: int | str = "auto"  # a trial's repeats trained at once (dm_core.train_many); results do not depend on it
    progress: bool = True

    def resolve(self) -> SearchPlan:
        """Check every field once (no I/O but the files named); raise DMError with a one-line message on bad input.
        Messages name the fields (``batch_size``), which the command shows as its flags."""
        proxy = parse_proxy(self.proxy)
        space = parse_space(self.space)
        check_seed(self.seed)
        check_seed(self.split_seed, "split_seed")
        strategy = parse_strategy(self.strategy)
        if not strategy.one_shot:
            strategy.build(len(space), self.seed)  # a strategy that cannot start fails here, before any work
        assessor = parse_assessor(self.assessor)
        check_precision(self.precision)
        check_compile(self.compile)
        check_workers(self.workers)
        if self.augment is not None and self.augment != "none":
            check_augment(self.augment)
        if self.execution not in EXECUTIONS:
            raise DMError(f"unknown execution {self.execution!r}: choose one of {', '.join(EXECUTIONS)}")
        for name in ("repeats", "batch_size", "concurrency"):
            if getattr(self, name) < 1:
                raise DMError(f"{name} must be at least 1, got {getattr(self, name)}")
        report_every = self.report_every
        if report_every is None:
            report_every = 1 if assessor is not None or self.execution != "sequential" else 0
        if report_every < 0:
            raise DMError(f"report_every must be 0 (no intermediate results) or more, got {report_every}")
        if assessor is not None and report_every == 0:
            raise DMError("the assessor judges intermediate results: give report_every 1 or more, not 0")
        if self.assessor_start is not None and (assessor is None or self.assessor_start < 0):
            raise DMError("assessor_start goes with an assessor and must be 0 or more")
        if strategy.one_shot and (self.execution != "sequential" or assessor is not None):
            raise DMError(f"one-shot strategy {strategy.name} trains one supernet in this process: it goes with "
                          f"execution sequential and no assessor")
        if self.oneshot_epochs is not None and not strategy.one_shot:
            raise DMError("oneshot_epochs goes with a one-shot strategy (DARTS, GumbelDARTS, RandomOneShot, ...)")
        for name in ("epochs", "iterations", "batch_real", "max_trials", "oneshot_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DMError(f"{name} must be at least 1, got {value}")
        if proxy.kind in list_methods():  # the condensation's own checks, before any data is loaded
            method = get_method(proxy.kind)
            method.configure(proxy.ipc, self.seed, **{k: v for k, v in self.condensation_options().items()
                                                      if method.supports(k)})
        if not 0 < self.val_fraction < 1:
            raise DMError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.execution in CLUSTER_EXECUTIONS and self.training_service is None:
            raise DMError(f"execution {self.execution} needs training_service: a JSON file of NNI's "
                          f"{self.execution} training-service fields (see docs/nas.md)")
        if self.training_service is not None:
            if self.execution not in CLUSTER_EXECUTIONS:
                raise DMError(f"training_service goes with execution {'/'.join(CLUSTER_EXECUTIONS)}, "
                              f"not {self.execution}")
            training_service_fields(self.training_service)
        load_proxy_file(proxy, self.proxy_file)  # the file must say what the name says (or be custom:NAME)
        max_trials = min(self.max_trials or len(space), len(space))
        return SearchPlan(self, proxy, space, self.epochs or proxy.default_epochs(), max_trials,
                          resolve_device(self.device), RunDir(Path(self.out)), strategy, report_every, assessor)

    def condensation_options(self) -> dict:
        return {k: v for k, v in (("iterations", self.iterations), ("batch_real", self.batch_real)) if v is not None}


def training_service_fields(path: str) -> dict:
    """The JSON object in ``path`` (e.g. ``{"machine_list": [{"host": ..., "user": ..., "ssh_key_file": ...}]}``)."""
    try:
        fields = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DMError(f"cannot read the training-service file {path} ({type(exc).__name__}): give a JSON object "
                      f"of NNI training-service fields") from None
    if not isinstance(fields, dict):
        raise DMError(f"{path} must hold a JSON object of NNI training-service fields")
    return fields


@dataclass(frozen=True)
class SearchPlan:
    config: SearchConfig
    proxy: Proxy
    space: SearchSpace
    epochs: int
    max_trials: int
    device: torch.device
    run: RunDir
    strategy: StrategyChoice
    report_every: int  # epochs between intermediate results (0: none)
    assessor: str | None


@dataclass(frozen=True)
class SearchSummary:
    proxy: str
    ranking: list[tuple[str, float]]  # (architecture, mean validation accuracy as a fraction), best first
    trials: int
    results: Path
    stopped: int = 0  # architectures stopped early by the assessor (not ranked)
    selected_by: str | None = None  # the one-shot strategy that selected the only architecture
    budget: str = ""
    augment: str = ""
    optimize_mode: str = OPTIMIZE_MODE  # how the strategy used the trials' scores (validation accuracy)

    @property
    def best(self) -> tuple[str, float]:
        return self.ranking[0]

    def figures(self) -> dict:
        """The search as the command's JSON line (accuracy in percent)."""
        best, accuracy = self.ranking[0] if self.ranking else (None, None)
        return {"proxy": self.proxy, "architectures_ranked": self.trials, "stopped_early": self.stopped,
                "best": best, "best_val_percent": None if accuracy is None else round(100 * accuracy, 2),
                "selected_by": self.selected_by, "optimize_mode": self.optimize_mode, "budget": self.budget,
                "augment": self.augment, "results": str(self.results)}


def start_task(plan: SearchPlan, record: bool = True, check_space: bool = True) -> tuple[SearchData, TrainTask]:
    """The data and the task of a search: load the dataset and split it, check that every architecture of the space
    runs on it (``check_space``), and with ``record`` (the process that leads the search) check the run folder, then
    make or load the proxy and write its entry in run.json; without (a trial process), only load the proxy."""
    cfg = plan.config
    data = load_search_data(cfg.dataset, cfg.data_root, cfg.val_fraction, cfg.split_seed)
    train = data.train
    if check_space:
        plan.space.check_input(train.channels, train.num_classes, train.image_size)
    claim = plan.run.claim(train.name, cfg.split_seed, cfg.val_fraction) if record else None
    task, cost = prepare_task(plan, data, cfg.progress and record)
    if record:
        plan.run.record_proxy(task.label, cost, claim)
    return data, task


def prepare_task(plan: SearchPlan, data: SearchData, progress: bool) -> tuple[TrainTask, dict]:
    """The proxy's training data and budget, and what the proxy costs (images, seconds to make it)."""
    proxy, cfg = plan.proxy, plan.config
    train = data.train
    recipe = dict(batch_size=cfg.batch_size, precision=cfg.precision, compile=cfg.compile, augment=cfg.augment)
    if proxy.is_set:
        made = load_or_make_proxy_set(proxy, train, plan.run.proxies, data.split_seed, cfg.seed,
                                      cfg.condensation_options(), plan.device, progress,
                                      Path(cfg.proxy_file) if cfg.proxy_file else None, data.x_val)
        x, y = made.synset.images, made.synset.labels
        config = TrainConfig(epochs=plan.epochs, **recipe)
        cost = {"images": len(y), "make_seconds": made.seconds, "file": str(made.path),
                "method": made.synset.meta.get("method"), "ipc": made.synset.meta.get("ipc")}
    else:
        x, y = train.x_train, train.y_train
        iterations = (proxy.early_iterations(train.num_classes, plan.epochs, cfg.batch_size)
                      if proxy.kind == "early" else None)
        config = TrainConfig(epochs=plan.epochs, iterations=iterations, **recipe)
        cost = {"images": len(y), "make_seconds": 0.0, "file": None}
    config = config.resolve(train.name)
    task = TrainTask(proxy.name, x, y, config, data.x_val, data.y_val, train.num_classes, train.x_test, train.y_test)
    return task, {**cost, "budget": task.budget, "train_iterations": task.train_iterations,
                  "augment": config.augment}


def make_evaluator(plan: SearchPlan, task: TrainTask,
                   on_repeat: Callable[[TrialRecord, bool], None] | None = None) -> ArchitectureEvaluator:
    """The trial function of a search: trains and records repeats, reports intermediate results, runs the assessor."""
    curves = CurveStore(plan.run.path / "curves.csv") if plan.report_every else None
    assessor = (TrialAssessor(plan.assessor, task.points(plan.report_every), plan.config.assessor_start)
                if plan.assessor is not None else None)
    return ArchitectureEvaluator(task, TrialStore(plan.run.results), plan.config.repeats, plan.config.seed,
                                 plan.device, on_repeat=on_repeat, report_every=plan.report_every, curves=curves,
                                 assessor=assessor, workers=plan.config.workers)
