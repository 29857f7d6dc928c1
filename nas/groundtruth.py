"""``python -m nas.groundtruth``: whole-data test accuracy of the architectures the proxies put on top.

Trains each target architecture on the whole training split (100 epochs, batch 250, DSA augmentation by default) and
records validation and test accuracy in ``groundtruth.csv`` of the run directory. Targets: the union of every finished
proxy's top 5% (``--top-fraction``), or the whole ``--space`` with ``--all``. Rows are keyed by architecture, budget
and repeat, so they serve every proxy, and an interrupted run (Ctrl-C: exit 130) resumes. ``--steps`` may shorten
training for CPU-sized runs, but never below one epoch of the training split.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from dm_core import ConvNetSpec, DMError, TrainConfig, resolve_device
from dm_core.signals import sigterm_as_interrupt, stop_report

from .analysis import TOP_FRACTION, groundtruth_targets, mean_scores
from .data import load_search_data
from .results import TrialStore, read_records
from .rundir import RunDir
from .space import parse_space
from .trial import ArchitectureEvaluator, TrainTask

LABEL = "groundtruth"


@dataclass(frozen=True)
class GroundTruthConfig:
    out: str = "runs/nas"
    all: bool = False
    space: str = "full"  # with ``all``: the architectures to train
    top_fraction: float = TOP_FRACTION
    epochs: int = 100
    steps: int | None = None  # if set: exactly this many SGD steps instead of ``epochs`` (CPU-sized runs)
    batch_size: int = 250
    repeats: int = 5
    seed: int = 0
    precision: str = "fp32"  # TrainConfig.precision: fp32 (the reference) or bf16
    device: str = "auto"
    data_root: str | None = None
    progress: bool = True

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "repeats"):
            if getattr(self, name) < 1:
                raise DMError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise DMError(f"--steps must be at least 1, got {self.steps}")
        if not 0 < self.top_fraction <= 1:
            raise DMError(f"--top-fraction must be in (0, 1], got {self.top_fraction}")
        if self.all:
            parse_space(self.space)


def target_specs(config: GroundTruthConfig, run: RunDir) -> list[ConvNetSpec]:
    if config.all:
        return parse_space(config.space).specs()
    results = read_records(run.results)
    if not results:
        raise DMError(f"no finished search in {run.path}: run python -m nas.search --out {run.path} first, "
                      f"or pass --all")
    specs = {r.arch: ConvNetSpec(depth=r.depth, width=r.width, act=r.act, norm=r.norm, pool=r.pool) for r in results}
    return [specs[arch] for arch in groundtruth_targets(results, config.top_fraction)]


def run_groundtruth(config: GroundTruthConfig) -> dict[str, float]:
    """Train the targets on the whole training split; return their mean test accuracy by architecture."""
    config.validate()
    device = resolve_device(config.device)
    run = RunDir(Path(config.out))
    info = run.info()
    if not info:
        raise DMError(f"{run.path} is not a NAS run directory (no run.json): run python -m nas.search first")
    specs = target_specs(config, run)
    run.check_results()
    data = load_search_data(info["dataset"], config.data_root, info["val_fraction"], info["split_seed"])
    train = data.train
    budget = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, iterations=config.steps,
                         precision=config.precision)
    per_epoch = math.ceil(len(train.y_train) / config.batch_size)
    if config.steps is not None and config.steps < per_epoch:
        raise DMError(f"--steps {config.steps} is less than one epoch of the training split ({len(train.y_train)} "
                      f"images at batch {config.batch_size} = {per_epoch} steps): the ground truth sees every "
                      f"training image at least once; use --steps {per_epoch} or more, or --epochs")
    task = TrainTask(LABEL, train.x_train, train.y_train, budget, data.x_val, data.y_val, train.num_classes,
                     train.x_test, train.y_test)
    store = TrialStore(run.groundtruth)
    with tqdm(total=len(specs) * config.repeats, desc="ground truth", unit="trial", disable=not config.progress,
              dynamic_ncols=True) as bar:
        evaluator = ArchitectureEvaluator(task, store, config.repeats, config.seed, device,
                                          on_repeat=lambda record, reused: bar.update(1))
        for spec in specs:
            evaluator.records(spec)
    wanted = {s.name for s in specs}
    return mean_scores([r for r in store.records() if r.arch in wanted and r.budget == task.budget], "test_acc")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nas.groundtruth", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = GroundTruthConfig()
    p.add_argument("--out", default=d.out, help="the search's run directory")
    p.add_argument("--all", action="store_true", help="train every architecture of --space, not only the top ones")
    p.add_argument("--space", default=d.space, help="with --all: full, small, tiny, micro or field=values;...")
    p.add_argument("--top-fraction", type=float, default=d.top_fraction)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--steps", type=int, default=None,
                   help="SGD steps instead of --epochs (reduced budgets; at least one epoch of the training split)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--precision", default=d.precision, choices=("fp32", "bf16"),
                   help="training precision (fp32: the reference; bf16: autocast)")
    p.add_argument("--device", default=d.device)
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            logging.getLogger("nni").setLevel(logging.WARNING)
            truth = run_groundtruth(GroundTruthConfig(**vars(args)))
    except DMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
        words, status = stop_report(exc)
        print(f"{words}: finished trials are saved in {Path(args.out) / 'groundtruth.csv'}; rerun the same "
              f"command to continue", file=sys.stderr)
        return status
    best = max(truth, key=truth.get)
    print(json.dumps({"groundtruth": str(Path(args.out) / "groundtruth.csv"), "architectures": len(truth),
                      "best": best, "best_test_percent": round(100 * truth[best], 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
