"""``python -m continual.run``: GDumb-style class-incremental learning with a condensed memory (DM Figures 6, 7).

argparse -> one frozen ``ContinualConfig`` (validated once) -> ``run_continual``, on the toolkit's one command shell
(``dm_core.shell``). Bad input ends with one ``error: ...`` line on stderr and exit status 2, before any work starts
and before anything is written. Ctrl-C ends with one ``interrupted: ...`` line and exit status 130 (SIGTERM: 143);
the same command then continues. The last stdout line is one JSON object: the results file, its row count and the
final accuracy (%) per method.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dm_core import shell
from dm_core.precision import PRECISIONS

from .builder import methods, paper_methods
from .config import LOGGERS, ContinualConfig, prepare

OLD_FLAGS = ("--runs",)


def method_option(text: str) -> tuple[str, str, object]:
    """METHOD.KEY=VALUE, VALUE read as a Python literal when it is one (64, 0.5, None), else kept as text."""
    try:
        key, value = shell.option(text)
    except argparse.ArgumentTypeError:
        key, value = "", None
    method, dot, name = key.partition(".")
    if not dot or "." in name:
        raise argparse.ArgumentTypeError(f"expected METHOD.KEY=VALUE (e.g. dm.batch_real=64), got {text!r}")
    return method, name, value


def loggers(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in LOGGERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown logger {', '.join(bad) or '(none)'}: use a comma-separated list "
                                         f"of {', '.join(LOGGERS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = shell.parser("python -m continual.run", "Class-incremental learning, GDumb-style, on a condensed memory (the "
                     "DM paper's Figures 6 and 7): at every step the memory takes the new classes in, and a network is "
                     "trained from scratch on the memory and tested on every class seen so far. A rerun of the same "
                     "command continues where it stopped.")
    p.add_argument("--memory", default="dm", choices=(*methods(), "all"),
                   help=f"how the memory is made (all: the paper's {', '.join(paper_methods())})")
    p.add_argument("--steps", type=shell.positive_int, default=5,
                   help="continual steps (experiences); must divide the class count")
    p.add_argument("--ipc", type=shell.positive_int, default=20, help="memory images per class")
    p.add_argument("--seeds", type=shell.seed, nargs="+", default=[0, 1, 2, 3, 4],
                   help="class orders: np.random.seed(s); np.random.permutation(classes)")
    p.add_argument("--repeats", type=shell.positive_int, default=3,
                   help="trainings from scratch per class order (each from its own initial weights)")
    p.add_argument("--epochs", type=shell.positive_int, default=1000,
                   help="epochs of each training from scratch on the memory")
    p.add_argument("--iterations", type=shell.positive_int,
                   help="iterations of the methods that learn images (default: the method's)")
    p.add_argument("--model", default="convnet", help="the network trained on the memory, and the builders' network")
    p.add_argument("--max-train-per-class", type=shell.positive_int,
                   help="keep a fixed random subset of this many training images per class, for CPU-sized runs "
                        "(default: all)")
    p.add_argument("--option", type=method_option, action="append", metavar="METHOD.KEY=VALUE",
                   help="an option of a memory method, e.g. dm.batch_real=64 or herding.epochs=5; repeatable")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="numeric precision of the training and of the builders")
    p.add_argument("--augment", metavar="STRATEGY",
                   help="augmentation of the training and of the builders that augment: ops joined by '_' (e.g. "
                        "color_crop_cutout_scale_rotate) or none (default: the dataset's)")
    p.add_argument("--logger", type=loggers, default="text", metavar="NAMES",
                   help="Avalanche loggers, comma-separated: text (into log.txt), interactive, csv, tensorboard (under "
                        "OUT/logs)")
    p.add_argument("--out", type=Path, default=Path("runs/continual"), help="run folder (continued if it exists)")
    shell.add_common(p, dataset="any dm_core dataset: cifar100, mnist, digits, npz:PATH, ...", seed_help=None,
                     compile=True,
                     workers="class orders (with their repeats) run at once on a CPU: auto (from 4 cores one worker "
                             "process of one thread per core, else 1) or N; 1 runs them one after another in this "
                             "process. The rows do not depend on it (up to float rounding: one-thread workers round "
                             "as --threads 1 does); a GPU, --logger interactive and torchrun run one at a time")
    p.set_defaults(dataset="cifar100")
    for action in p._actions:  # the training after each step runs in Avalanche's loop, which is not compiled
        if action.dest == "compile":
            action.help = ("torch.compile the builders' networks: auto (only where the work ahead pays for the compile "
                           "time), on, off")
    return p


def config_from_args(args: argparse.Namespace) -> ContinualConfig:
    options: dict[str, dict] = {}
    for method, key, value in args.option or ():
        options.setdefault(method, {})[key] = value
    return ContinualConfig(
        out=args.out, dataset=args.dataset, data_root=args.data_root, steps=args.steps,
        methods=paper_methods() if args.memory == "all" else (args.memory,), ipc=args.ipc, seeds=tuple(args.seeds),
        repeats=args.repeats, epochs=args.epochs, iterations=args.iterations, model=args.model,
        max_train_per_class=args.max_train_per_class, method_options=options, precision=args.precision,
        augment=args.augment, compile=args.compile, loggers=tuple(args.logger), device=args.device,
        threads=args.threads, workers=args.workers, progress=args.progress)


def run(args: argparse.Namespace) -> dict:
    config = config_from_args(args)
    data = prepare(config)
    from .experiment import final_accuracies, run_continual  # Avalanche is imported once the input is good
    from .results import ResultsTable

    path = run_continual(config, data)
    table = ResultsTable(path)
    return {"results": str(path), "rows": len(table.rows), "final_accuracy_percent": final_accuracies(config, table)}


def kept(args: argparse.Namespace, exc: BaseException) -> str:
    return (f"finished steps are saved in {args.out}/results.csv and {args.out}/memory (a memory being condensed "
            f"keeps a checkpoint there); rerun the same command to continue")


def main(argv: list[str] | None = None) -> int:
    return shell.run_command(parser(), run, kept, argv, old=OLD_FLAGS)


console = shell.console_entry(main)


if __name__ == "__main__":
    console()
