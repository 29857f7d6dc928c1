"""``python -m nas.search``: rank the ConvNet space by validation accuracy after training on a proxy (DM section 3.6).

Defaults are the paper's protocol: CIFAR-10, a seeded 10% validation split, the DM 50-images-per-class proxy made by
dm_core from the training split (cached in the run directory), every architecture trained on it with DSA augmentation
(batch 250, 200 epochs), 5 repeats, grid search over all 720 architectures, NNI's in-process sequential engine.

The CLI is a thin shell: argparse -> ``SearchConfig`` (frozen, validated once by ``resolve``) -> ``run_search``.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dm_core import DMError, TrainConfig, resolve_device
from dm_core.compile import COMPILE_MODES, check_compile
from dm_core.precision import PRECISIONS, check_precision
from dm_core.signals import sigterm_as_interrupt, stop_report

from .assessor import CurveStore, TrialAssessor, parse_assessor
from .data import SearchData, load_search_data
from .proxy import Proxy, load_or_make_proxy_set, load_proxy_file, parse_proxy
from .results import TrialStore
from .rundir import RunDir
from .space import ConvNetModelSpace, SearchSpace, parse_space, spec_from_sample
from .strategies import StrategyChoice, parse_strategy
from .trial import ArchitectureEvaluator, TrainTask, repeat_seed

EXECUTIONS = ("sequential", "local", "remote", "kubeflow", "frameworkcontroller")
# NNI training services that need machine or cluster settings (--training-service FILE); kubeflow and
# frameworkcontroller are NNI's two Kubernetes services.
CLUSTER_EXECUTIONS = EXECUTIONS[2:]


@dataclass(frozen=True)
class SearchConfig:
    proxy: str = "dm50"
    dataset: str = "cifar10"
    space: str = "full"
    strategy: str = "grid"
    repeats: int = 5
    epochs: int | None = None  # proxy training epochs; None: 200 (100 for ``whole``)
    batch_size: int = 250
    iterations: int | None = None  # condensation iterations of dm/dsa proxies; None: dm_core's default
    batch_real: int | None = None  # real images per class per DM/DSA step; None: dm_core's default
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
    oneshot_epochs: int | None = None  # supernet training epochs of a one-shot strategy; None: --epochs
    precision: str = "fp32"  # each trial's training and evaluation: fp32 (the reference) or bf16 autocast
    compile: str = "auto"  # torch.compile each trial's training: auto (where its steps pay the compile), on, off
    progress: bool = True

    def resolve(self) -> "SearchPlan":
        """Check every field once (no I/O); raise DMError with a one-line message on bad input."""
        proxy = parse_proxy(self.proxy)
        space = parse_space(self.space)
        strategy = parse_strategy(self.strategy)
        if not strategy.one_shot:
            strategy.build(len(space), self.seed)  # a strategy that cannot start fails here, before any work
        assessor = parse_assessor(self.assessor)
        check_precision(self.precision)
        check_compile(self.compile)
        if self.execution not in EXECUTIONS:
            raise DMError(f"unknown execution {self.execution!r}: choose one of {', '.join(EXECUTIONS)}")
        for name in ("repeats", "batch_size", "concurrency"):
            if getattr(self, name) < 1:
                raise DMError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        report_every = self.report_every
        if report_every is None:
            report_every = 1 if assessor is not None or self.execution != "sequential" else 0
        if report_every < 0:
            raise DMError(f"--report-every must be 0 (no intermediate results) or more, got {report_every}")
        if assessor is not None and report_every == 0:
            raise DMError("--assessor judges intermediate results: give --report-every 1 or more, not 0")
        if self.assessor_start is not None and (assessor is None or self.assessor_start < 0):
            raise DMError("--assessor-start goes with --assessor and must be 0 or more")
        if strategy.one_shot and (self.execution != "sequential" or assessor is not None):
            raise DMError(f"one-shot strategy {strategy.name} trains one supernet in this process: it goes with "
                          f"--execution sequential and no --assessor")
        if self.oneshot_epochs is not None and not strategy.one_shot:
            raise DMError("--oneshot-epochs goes with a one-shot strategy (DARTS, GumbelDARTS, RandomOneShot, ...)")
        for name in ("epochs", "iterations", "batch_real", "max_trials", "oneshot_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DMError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if not 0 < self.val_fraction < 1:
            raise DMError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.execution in CLUSTER_EXECUTIONS and self.training_service is None:
            raise DMError(f"--execution {self.execution} needs --training-service FILE: a JSON object of NNI's "
                          f"{self.execution} training-service fields (see docs/nas.md)")
        if self.training_service is not None:
            if self.execution not in CLUSTER_EXECUTIONS:
                raise DMError(f"--training-service goes with --execution {'/'.join(CLUSTER_EXECUTIONS)}, "
                              f"not {self.execution}")
            training_service_fields(self.training_service)
        load_proxy_file(proxy, self.proxy_file)  # the file must say what the name says (or be custom:NAME)
        max_trials = min(self.max_trials or len(space), len(space))
        return SearchPlan(self, proxy, space, self.epochs or proxy.default_epochs(), max_trials,
                          resolve_device(self.device), RunDir(Path(self.out)), strategy, report_every, assessor)


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
    ranking: list[tuple[str, float]]  # (architecture, mean validation accuracy), best first
    trials: int
    results: Path
    stopped: int = 0  # architectures stopped early by the assessor (not ranked)
    selected_by: str | None = None  # the one-shot strategy that selected the only architecture

    @property
    def best(self) -> tuple[str, float]:
        return self.ranking[0]


def prepare_task(plan: SearchPlan, data: SearchData, progress: bool) -> tuple[TrainTask, dict]:
    """The proxy's training data and budget, and what the proxy costs (images, seconds to make it)."""
    proxy, cfg = plan.proxy, plan.config
    train = data.train
    if proxy.is_set:
        options = {k: v for k, v in (("iterations", cfg.iterations), ("batch_real", cfg.batch_real)) if v is not None}
        made = load_or_make_proxy_set(proxy, train, plan.run.proxies, data.split_seed, cfg.seed, options,
                                      plan.device, progress, Path(cfg.proxy_file) if cfg.proxy_file else None)
        x, y = made.synset.images, made.synset.labels
        config = TrainConfig(epochs=plan.epochs, batch_size=cfg.batch_size, precision=cfg.precision,
                             compile=cfg.compile)
        cost = {"images": len(y), "make_seconds": made.seconds, "file": str(made.path),
                "method": made.synset.meta.get("method"), "ipc": made.synset.meta.get("ipc")}
    else:
        x, y = train.x_train, train.y_train
        iterations = (proxy.early_iterations(train.num_classes, plan.epochs, cfg.batch_size)
                      if proxy.kind == "early" else None)
        config = TrainConfig(epochs=plan.epochs, batch_size=cfg.batch_size, iterations=iterations,
                             precision=cfg.precision, compile=cfg.compile)
        cost = {"images": len(y), "make_seconds": 0.0, "file": None}
    task = TrainTask(proxy.name, x, y, config, data.x_val, data.y_val, train.num_classes, train.x_test, train.y_test)
    return task, {**cost, "budget": task.budget, "steps": task.steps}


def make_evaluator(plan: SearchPlan, task: TrainTask, on_repeat=None) -> ArchitectureEvaluator:
    """The trial function of a search: trains and records repeats, reports intermediate results, runs the assessor."""
    curves = CurveStore(plan.run.path / "curves.csv") if plan.report_every else None
    assessor = (TrialAssessor(plan.assessor, plan.epochs // plan.report_every, plan.config.assessor_start)
                if plan.assessor is not None else None)
    return ArchitectureEvaluator(task, TrialStore(plan.run.results), plan.config.repeats, plan.config.seed,
                                 plan.device, on_repeat=on_repeat, report_every=plan.report_every, curves=curves,
                                 assessor=assessor)


def run_search(config: SearchConfig) -> SearchSummary:
    """Make or load the proxy, let an NNI strategy explore the space, record every repeat; return the ranking."""
    plan = config.resolve()
    data = load_search_data(config.dataset, config.data_root, config.val_fraction, config.split_seed)
    plan.space.check_input(data.train.channels, data.train.num_classes, data.train.image_size)
    claim = plan.run.claim(data.train.name, config.split_seed, config.val_fraction)
    task, cost = prepare_task(plan, data, config.progress)
    plan.run.record_proxy(task.label, cost, claim)
    store = TrialStore(plan.run.results)

    from nni.nas.evaluator import FunctionalEvaluator

    train = data.train
    if plan.strategy.one_shot:
        from .oneshot import run_oneshot

        return run_oneshot(plan, data, task)
    model_space = ConvNetModelSpace(plan.space, train.channels, train.num_classes, train.image_size)
    strategy = plan.strategy.build(len(plan.space), config.seed)
    if config.execution == "sequential":
        from nni.nas.execution import SequentialExecutionEngine
        from nni.nas.space import SimplifiedModelSpace

        bar = tqdm(total=plan.max_trials * config.repeats, desc=f"nas {task.label}", unit="trial",
                   disable=not config.progress, dynamic_ncols=True)
        evaluator = make_evaluator(plan, task, on_repeat=lambda record, reused: bar.update(1))
        engine = SequentialExecutionEngine(max_model_count=plan.max_trials)
        strategy.initialize(SimplifiedModelSpace.from_model(model_space, FunctionalEvaluator(evaluator)), engine)
        try:
            strategy.run()
        finally:
            engine.shutdown()
            bar.close()
        searched = [spec_from_sample(m.sample).name for m in engine.list_models()]
    else:
        from .live import run_training_service

        evaluator = make_evaluator(plan, task)

        def answer(model) -> float | None:  # the score of an architecture that needs no trial, else None
            result = evaluator.recorded(spec_from_sample(model.sample))
            return None if result is None else result.score

        run_training_service(plan, model_space, strategy, answer)
        searched = [spec.name for spec in plan.space.specs()]  # trials ran elsewhere: read what they recorded
    return summarize(plan, store, task.label, task.budget, searched)


def summarize(plan: SearchPlan, store: TrialStore, proxy: str, budget: str, archs: list[str]) -> SearchSummary:
    """This search's ranking: the mean validation accuracy of its own repeats (trial seeds seed .. seed+repeats-1)."""
    wanted = set(archs)
    seeds = {repeat_seed(plan.config.seed, repeat) for repeat in range(plan.config.repeats)}
    by_arch: dict[str, list[float]] = {}
    for r in store.records():
        if (r.proxy, r.budget) == (proxy, budget) and r.arch in wanted and r.seed in seeds:
            by_arch.setdefault(r.arch, []).append(r.val_acc)
    stopped = set()
    if plan.assessor is not None:
        curves = CurveStore(plan.run.path / "curves.csv")
        stopped = {a for a in wanted if curves.stopped(proxy, a, budget, plan.report_every, plan.assessor)}
    by_arch = {a: v for a, v in by_arch.items() if a not in stopped}
    ranking = sorted(((a, statistics.fmean(v)) for a, v in by_arch.items()), key=lambda t: (-t[1], t[0]))
    return SearchSummary(proxy, ranking, len(by_arch), store.path, len(stopped))


# --- CLI -------------------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas.search", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = SearchConfig()
    p.add_argument("--proxy", default=d.proxy,
                   help="random50, dsa50, dm50 (any method+ipc, e.g. dm10, herding50), early[IPC], whole")
    p.add_argument("--dataset", default=d.dataset, help="any dm_core dataset (cifar10, mnist, digits, ...)")
    p.add_argument("--space", default=d.space,
                   help="full, small, tiny, micro, or 'depth=1,2;width=32;act=relu;norm=none;pool=avgpool'")
    p.add_argument("--strategy", default=d.strategy,
                   help="grid, random, evolution, tpe; any NNI strategy class (RegularizedEvolution, TPE, "
                        "PolicyBasedRL, ...; one-shot: DARTS, ENAS, GumbelDARTS, RandomOneShot, Proxyless), "
                        "or module:Class for your own")
    p.add_argument("--repeats", type=int, default=d.repeats, help="trainings per architecture (mean is ranked)")
    p.add_argument("--epochs", type=int, default=None, help="proxy training epochs (default 200; whole: 100)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--iterations", type=int, default=None, help="condensation iterations of a dm/dsa proxy")
    p.add_argument("--batch-real", type=int, default=None, help="real images per class per condensation step")
    p.add_argument("--max-trials", type=int, default=None, help="architectures to try (default: the whole space)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the validation split")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", default=d.out, help="run directory (shared by the searches of one dataset)")
    p.add_argument("--data-root", default=None, help="dataset folder (default $DM_DATA_ROOT, else ./data)")
    p.add_argument("--proxy-file", default=None, help="train on this synthetic-set file instead of a cached one")
    p.add_argument("--execution", default=d.execution, choices=EXECUTIONS,
                   help="sequential: in-process, no server; local / remote / kubeflow / frameworkcontroller: NNI's "
                        "training services (the NNI manager listens on all interfaces: see README.md)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="parallel trials (training services)")
    p.add_argument("--port", type=int, default=d.port, help="NNI manager port (training services)")
    p.add_argument("--training-service", default=None,
                   help="JSON file of NNI training-service fields, for remote / kubeflow / frameworkcontroller")
    p.add_argument("--report-every", type=int, default=None,
                   help="epochs between NNI intermediate results (validation accuracy); 0: none. Default: 1 with "
                        "--assessor or a training service, else 0")
    p.add_argument("--assessor", default=None, help="stop weak trials early: Medianstop or Curvefitting (NNI's)")
    p.add_argument("--assessor-start", type=int, default=None,
                   help="intermediate results before the assessor judges (default: NNI's: Medianstop 0, "
                        "Curvefitting 6)")
    p.add_argument("--oneshot-epochs", type=int, default=None,
                   help="supernet training epochs of a one-shot strategy (default: --epochs)")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="each trial's training and evaluation: fp32 (the reference) or bf16 autocast (the proxy set "
                        "is made in fp32; bf16 trials are recorded under their own budget)")
    p.add_argument("--compile", default=d.compile, choices=COMPILE_MODES,
                   help="torch.compile each trial's training: auto (where its steps pay for the compile), on, off")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            config = SearchConfig(**vars(args))
            logging.getLogger("nni").setLevel(logging.WARNING)
            summary = run_search(config)
    except DMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
        words, status = stop_report(exc)
        print(f"{words}: finished trials are saved in {Path(args.out) / 'results.csv'} (a proxy condensation "
              f"keeps its checkpoint); rerun the same command to continue", file=sys.stderr)
        return status
    if not summary.ranking:
        print(f"{summary.proxy}: no architecture finished; rows in {summary.results}")
        return 0
    arch, acc = summary.best
    if summary.selected_by is not None:
        print(f"{summary.proxy}: {summary.selected_by} selected {arch} (validation {100 * acc:.2f}% trained from "
              f"scratch on the proxy); rows in {summary.results}")
        return 0
    stopped = f" ({summary.stopped} more stopped early by the assessor)" if summary.stopped else ""
    print(f"{summary.proxy}: {summary.trials} architectures ranked{stopped}; best {arch} "
          f"(validation {100 * acc:.2f}%); rows in {summary.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
