"""``python -m nas.search``: rank the ConvNet space by validation accuracy after training on a proxy (DM section 3.6).

The command is a thin shell (``dm_core.shell``): flags -> ``SearchConfig`` (``nas.plan``, checked once by
``resolve``) -> ``run_search`` -> one JSON line.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, fields
from pathlib import Path

from nni.nas.evaluator import FunctionalEvaluator
from nni.nas.execution import SequentialExecutionEngine
from nni.nas.space import ExecutableModelSpace, SimplifiedModelSpace
from tqdm.auto import tqdm

from dm_core import shell
from dm_core.io import check_folder, work_key, work_lock
from dm_core.precision import PRECISIONS

from .analysis import mean_scores, rank
from .assessor import ASSESSORS, CurveStore
from .live import run_training_service
from .oneshot import run_oneshot
from .plan import EXECUTIONS, SearchConfig, SearchPlan, SearchSummary, make_evaluator, start_task
from .results import TrialStore
from .space import ConvNetModelSpace, spec_from_sample
from .trial import repeat_seed


def run_search(config: SearchConfig) -> SearchSummary:
    """Make or load the proxy, let an NNI strategy explore the space, record every repeat; return the ranking.

    An identical search into the same run folder is refused at once, naming this one; other searches (another proxy,
    seed or space) run beside it and share the folder's tables."""
    plan = config.resolve()
    check_folder(plan.run.path)
    ignored = ("progress", "device", "workers", "port", "concurrency", "execution", "training_service")
    settings = {k: v for k, v in asdict(config).items() if k not in ignored}
    with work_lock(plan.run.path / f".lock-{work_key(settings)}", f"this search of {plan.run.path}"):
        return _search(plan, config)


def _search(plan: SearchPlan, config: SearchConfig) -> SearchSummary:
    data, task = start_task(plan)
    if plan.strategy.one_shot:
        return run_oneshot(plan, data, task)
    train = data.train
    model_space = ConvNetModelSpace(plan.space, train.channels, train.num_classes, train.image_size)
    strategy = plan.strategy.build(len(plan.space), config.seed)
    if config.execution == "sequential":
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
        searched = [spec_from_sample(m.sample, plan.space).name for m in engine.list_models()]
    else:
        evaluator = make_evaluator(plan, task)

        def answer(model: ExecutableModelSpace) -> float | None:  # the score of an architecture needing no trial
            result = evaluator.recorded(spec_from_sample(model.sample, plan.space))
            return None if result is None else result.score

        run_training_service(plan, model_space, strategy, answer)
        searched = [spec.name for spec in plan.space.specs()]  # trials ran elsewhere: read what they recorded
    return summarize(plan, task.label, task.budget, searched, task.config.strategy)


def summarize(plan: SearchPlan, proxy: str, budget: str, archs: list[str], augment: str = "") -> SearchSummary:
    """This search's ranking: the mean validation accuracy of its own repeats (trial seeds seed .. seed+repeats-1),
    without the architectures the assessor stopped."""
    store = TrialStore(plan.run.results)
    frame = store.frame()
    seeds = [repeat_seed(plan.config.seed, repeat) for repeat in range(plan.config.repeats)]
    mine = frame[(frame["proxy"] == proxy) & (frame["budget"] == budget) & frame["arch"].isin(set(archs))
                 & frame["seed"].isin(seeds)]
    stopped = set()
    if plan.assessor is not None:
        curves = CurveStore(plan.run.path / "curves.csv")
        stopped = {a for a in set(archs) if curves.stopped(proxy, a, budget, plan.report_every, plan.assessor)}
    scores = mean_scores(mine[~mine["arch"].isin(stopped)])
    ranking = [(arch, scores[arch]) for arch in rank(scores)]
    return SearchSummary(proxy, ranking, len(ranking), store.path, len(stopped), budget=budget, augment=augment)


# --- the command -----------------------------------------------------------------------------------------------------

DESCRIPTION = ("Rank the ConvNet space by the validation accuracy of networks trained on a proxy (a condensed or "
               "selected set, early stopping, or the whole training split): an NNI strategy proposes "
               "architectures, each is trained --repeats times, every training is recorded in OUT/results.csv, and a "
               "rerun of the same command continues where it stopped. The defaults are the DM paper's protocol. "
               "Trials report validation accuracy and every strategy maximises it. Ends with one JSON line.")


def build_parser() -> argparse.ArgumentParser:
    d = SearchConfig()
    p = shell.parser("python -m nas.search", DESCRIPTION)
    p.add_argument("--proxy", default=d.proxy,
                   help="what each architecture trains on: a set method and images per class (random50, dsa50, "
                        "dm50, herding10, ...), early[IPC], whole, or custom:NAME with --proxy-file")
    p.add_argument("--proxy-file", help="train on this set file (made by python -m dm_core condense) instead of "
                                        "making the proxy set")
    p.add_argument("--space", default=d.space,
                   help="full (720 ConvNets), small, tiny, micro, or a product such as "
                        "'depth=1,2;width=32;act=relu;norm=none;pool=avgpool'")
    p.add_argument("--strategy", default=d.strategy,
                   help="grid, random, evolution, tpe; any NNI strategy class by name (RegularizedEvolution, TPE, "
                        "PolicyBasedRL; one-shot: DARTS, ENAS, GumbelDARTS, RandomOneShot, Proxyless); or "
                        "module:Class for your own. Every strategy maximises the validation accuracy (TPE too)")
    p.add_argument("--max-trials", type=int, help="architectures to try (default: the whole space)")
    p.add_argument("--repeats", type=int, default=d.repeats,
                   help="trainings per architecture, from seeds SEED, SEED+1, ...; their mean is ranked")
    p.add_argument("--epochs", type=int, help="training epochs of every trial (default: 200; whole: 100)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size of every trial")
    p.add_argument("--augment", metavar="STRATEGY",
                   help="training augmentation of every trial: DSA ops joined by '_' (e.g. "
                        "color_crop_cutout_scale_rotate) or none (default: the dataset's)")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="precision of every trial: fp32 (the reference) or bf16 autocast; bf16 trials are recorded "
                        "under their own budget (the proxy set is made in fp32)")
    p.add_argument("--iterations", type=int, help="condensation iterations of a condensed proxy (default: the "
                                                  "method's)")
    p.add_argument("--batch-real", type=int, help="real images per class per condensation iteration (default: the "
                                                  "method's)")
    p.add_argument("--split-seed", type=int, default=d.split_seed, help="seed of the validation split (default: 0)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="fraction of the training images held out for validation")
    p.add_argument("--out", default=d.out, help="run folder, shared by the searches of one dataset and split")
    p.add_argument("--execution", default=d.execution, choices=EXECUTIONS,
                   help="sequential: in this process, no server; local, remote, kubeflow, frameworkcontroller: NNI's "
                        "training services (the NNI manager listens on all interfaces: see docs/nas.md)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="trials at once (training services)")
    p.add_argument("--port", type=int, default=d.port, help="NNI manager port (training services)")
    p.add_argument("--training-service", metavar="FILE",
                   help="JSON file of NNI training-service fields, for remote, kubeflow and frameworkcontroller")
    p.add_argument("--report-every", type=int,
                   help="epochs between intermediate results sent to NNI (validation accuracy); 0: none (default: 1 "
                        "with --assessor or a training service, else 0)")
    p.add_argument("--assessor", help=f"stop weak trials early with an NNI assessor: {' or '.join(ASSESSORS)}")
    p.add_argument("--assessor-start", type=int,
                   help="intermediate results before the assessor judges (default: NNI's: Medianstop 0, "
                        "Curvefitting 6)")
    p.add_argument("--oneshot-epochs", type=int,
                   help="supernet training epochs of a one-shot strategy (default: --epochs)")
    shell.add_common(p, dataset="a dm_core dataset (cifar10, mnist, digits, ...)",
                     seed_help="seed of the proxy set and the strategy; repeat r of every architecture trains from "
                               "SEED + r (default: 0)", compile=True, workers=True)
    p.set_defaults(dataset=d.dataset)
    return p


def search(args: argparse.Namespace) -> dict:
    config = SearchConfig(**{f.name: getattr(args, f.name) for f in fields(SearchConfig)})
    logging.getLogger("nni").setLevel(logging.WARNING)
    summary = run_search(config)
    return {**summary.figures(), "strategy": config.strategy, "repeats": config.repeats}


def kept(args: argparse.Namespace, exc: BaseException) -> str:
    return (f"finished trials are saved in {Path(args.out) / 'results.csv'} (a proxy condensation keeps its "
            f"checkpoint); rerun the same command to continue")


def main(argv: list[str] | None = None) -> int:
    return shell.run_command(build_parser(), search, kept, argv)


console = shell.console_entry(main)


if __name__ == "__main__":
    console()
