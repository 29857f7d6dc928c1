"""``python -m nas.groundtruth``: whole-data test accuracy of the architectures the proxies put on top.

Trains each target architecture on the whole training split (100 epochs, batch 250, the dataset's DSA augmentation
by default) and records validation and test accuracy in ``groundtruth.csv`` of the run directory. Targets: the union
of every finished proxy's top 5% (``--top-fraction``), or the whole ``--space`` with ``--all``. Rows are keyed by
architecture, budget and trial seed, so they serve every proxy, and an interrupted run (Ctrl-C: exit 130) resumes.
``--train-iterations`` may shorten training for CPU-sized runs, but never below one epoch of the training split.
"""
from __future__ import annotations

import argparse
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from tqdm.auto import tqdm

from dm_core import ConvNetSpec, DMError, TrainConfig, resolve_device, shell
from dm_core.augment import parse_strategy as check_augment
from dm_core.compile import check_compile
from dm_core.io import check_folder, work_key, work_lock
from dm_core.many import check_workers
from dm_core.precision import PRECISIONS, check_precision
from dm_core.validate import check_seed

from .analysis import TOP_FRACTION, groundtruth_targets, mean_scores
from .data import load_search_data
from .results import TrialStore, read_trials
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
    train_iterations: int | None = None  # if set: exactly this many SGD iterations instead of ``epochs``
    batch_size: int = 250
    augment: str | None = None  # DSA strategy of the trainings; "none": off; None: the dataset's
    repeats: int = 5
    seed: int = 0
    precision: str = "fp32"  # TrainConfig.precision: fp32 (the reference) or bf16
    compile: str = "auto"  # torch.compile each training: auto (where its iterations pay for the compile), on, off
    workers: int | str = "auto"  # trainings at once (dm_core.train_many); results do not depend on it
    device: str = "auto"
    data_root: str | None = None
    progress: bool = True

    def validate(self) -> None:
        """Check every field (no I/O); DMError naming the field."""
        for name in ("epochs", "batch_size", "repeats"):
            if getattr(self, name) < 1:
                raise DMError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.train_iterations is not None and self.train_iterations < 1:
            raise DMError(f"train_iterations must be at least 1, got {self.train_iterations}")
        if not 0 < self.top_fraction <= 1:
            raise DMError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        check_seed(self.seed)
        check_precision(self.precision)
        check_compile(self.compile)
        check_workers(self.workers)
        if self.augment is not None and self.augment != "none":
            check_augment(self.augment)
        if self.all:
            parse_space(self.space)


def target_specs(config: GroundTruthConfig, run: RunDir) -> list[ConvNetSpec]:
    if config.all:
        return parse_space(config.space).specs()
    results = read_trials(run.results)
    if not len(results):
        raise DMError(f"no finished search in {run.path}: run python -m nas.search --out {run.path} first, "
                      f"or train every architecture of a space (all)")
    specs = {r["arch"]: ConvNetSpec(r["depth"], r["width"], r["act"], r["norm"], r["pool"])
             for r in results.to_dict("records")}
    return [specs[arch] for arch in groundtruth_targets(results, config.top_fraction)]


def run_groundtruth(config: GroundTruthConfig) -> dict[str, float]:
    """Train the targets on the whole training split; return their mean test accuracy (a fraction) by
    architecture."""
    return _run(config)[0]


def _run(config: GroundTruthConfig) -> tuple[dict[str, float], TrainTask]:
    config.validate()
    device = resolve_device(config.device)
    run = RunDir(Path(config.out))
    check_folder(run.path)
    settings = {k: v for k, v in asdict(config).items() if k not in ("progress", "device", "workers")}
    with work_lock(run.path / f".lock-{work_key(settings)}", f"this ground truth of {run.path}"):
        return _train(config, device, run)


def _train(config: GroundTruthConfig, device, run: RunDir) -> tuple[dict[str, float], TrainTask]:
    info = run.info()
    if not info:
        raise DMError(f"{run.path} is not a NAS run directory (no run.json): run python -m nas.search first")
    specs = target_specs(config, run)
    run.check_results()
    data = load_search_data(info["dataset"], config.data_root, info["val_fraction"], info["split_seed"])
    train = data.train
    budget = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, iterations=config.train_iterations,
                         precision=config.precision, compile=config.compile, augment=config.augment)
    per_epoch = math.ceil(len(train.y_train) / config.batch_size)
    if config.train_iterations is not None and config.train_iterations < per_epoch:
        raise DMError(f"train_iterations {config.train_iterations} is less than one epoch of the training split "
                      f"({len(train.y_train)} images at batch {config.batch_size} = {per_epoch} iterations): the "
                      f"ground truth sees every training image at least once; use train_iterations {per_epoch} or "
                      f"more, or epochs")
    task = TrainTask(LABEL, train.x_train, train.y_train, budget.resolve(train.name), data.x_val, data.y_val,
                     train.num_classes, train.x_test, train.y_test)
    store = TrialStore(run.groundtruth)
    with tqdm(total=len(specs) * config.repeats, desc="ground truth", unit="trial", disable=not config.progress,
              dynamic_ncols=True) as bar:
        evaluator = ArchitectureEvaluator(task, store, config.repeats, config.seed, device,
                                          on_repeat=lambda record, reused: bar.update(1), workers=config.workers)
        evaluator.run_all(specs)
    rows = store.frame()
    mine = rows[rows["arch"].isin({s.name for s in specs}) & (rows["budget"] == task.budget)]
    return mean_scores(mine, "test_acc"), task


# --- the command -----------------------------------------------------------------------------------------------------

DESCRIPTION = ("Train the architectures that the searches of a run folder put on top (or every architecture of a "
               "space) on the whole training split, and record their validation and test accuracy in "
               "OUT/groundtruth.csv. A rerun of the same command continues where it stopped. Ends with one JSON "
               "line.")


def build_parser() -> argparse.ArgumentParser:
    d = GroundTruthConfig()
    p = shell.parser("python -m nas.groundtruth", DESCRIPTION)
    p.add_argument("--out", default=d.out, help="the run folder of the searches (their --out)")
    p.add_argument("--all", action="store_true", help="train every architecture of --space, not only the top ones")
    p.add_argument("--space", default=d.space, help="with --all: full, small, tiny, micro or 'field=values;...'")
    p.add_argument("--top-fraction", type=float, default=d.top_fraction,
                   help="fraction of each search's ranking to train")
    p.add_argument("--repeats", type=int, default=d.repeats,
                   help="trainings per architecture, from seeds SEED, SEED+1, ...")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--train-iterations", type=int,
                   help="SGD iterations instead of --epochs, for reduced budgets: at least one epoch of the training "
                        "split")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    p.add_argument("--augment", metavar="STRATEGY",
                   help="training augmentation: DSA ops joined by '_' (e.g. color_crop_cutout_scale_rotate) or none "
                        "(default: the dataset's)")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="training precision: fp32 (the reference) or bf16 autocast")
    p.add_argument("--data-root", help="folder of the datasets (default: $DM_DATA_ROOT, else ./data); the dataset "
                                       "is the run folder's")
    shell.add_common(p, seed_help="repeat r of every architecture trains from SEED + r (default: 0)", compile=True,
                     workers=True)
    return p


def groundtruth(args: argparse.Namespace) -> dict:
    config = GroundTruthConfig(**{f.name: getattr(args, f.name) for f in fields(GroundTruthConfig)})
    logging.getLogger("nni").setLevel(logging.WARNING)
    truth, task = _run(config)
    best = max(truth, key=truth.get) if truth else None
    return {"groundtruth": str(Path(args.out) / "groundtruth.csv"), "architectures": len(truth), "best": best,
            "best_test_percent": None if best is None else round(100 * truth[best], 2), "budget": task.budget,
            "augment": task.config.augment, "repeats": config.repeats}


def kept(args: argparse.Namespace, exc: BaseException) -> str:
    return f"finished trials are saved in {Path(args.out) / 'groundtruth.csv'}; rerun the same command to continue"


def main(argv: list[str] | None = None) -> int:
    return shell.run_command(build_parser(), groundtruth, kept, argv, old=("--steps",))


console = shell.console_entry(main)


if __name__ == "__main__":
    console()
