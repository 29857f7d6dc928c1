"""``python -m continual.run``: GDumb-style class-incremental learning with a condensed memory (DM Figures 6, 7).

argparse -> one frozen ``ContinualConfig`` (validated once) -> ``run_continual``. Bad input ends with one
``error: ...`` line on stderr and exit status 2, before any work starts and before anything is written. Ctrl-C ends
with one ``interrupted: ...`` line and exit status 130; the same command then continues. The last stdout line is one
JSON object: the results file, its row count and the final accuracy (%) per method.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from dm_core import DMError
from dm_core.compile import COMPILE_MODES
from dm_core.signals import sigterm_as_interrupt, stop_report

from .builder import PAPER_METHODS
from .config import LOGGERS, METHODS, PRECISIONS, ContinualConfig, prepare


def _option(text: str) -> tuple[str, str, object]:
    """METHOD.KEY=VALUE, VALUE read as a Python literal when it is one (64, 0.5, None), else kept as text."""
    head, sep, raw = text.partition("=")
    method, dot, key = head.partition(".")
    if not sep or not dot or not key:
        raise argparse.ArgumentTypeError(f"expected METHOD.KEY=VALUE (e.g. dm.batch_real=64), got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return method, key, value


def _loggers(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in LOGGERS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown logger {', '.join(bad) or '(none)'}: use a comma-separated list "
                                         f"of {', '.join(LOGGERS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m continual.run", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--memory", default="dm", choices=METHODS + ("all",),
                   help="memory builder (all: the paper's random, herding, dsa and dm)")
    p.add_argument("--steps", type=int, default=5, help="number of steps; must divide the class count")
    p.add_argument("--dataset", default="cifar100", help="any dm_core dataset name (mnist, digits, npz:PATH, ...)")
    p.add_argument("--data-root", default=None, help="data folder (default: $DM_DATA_ROOT, else ./data)")
    p.add_argument("--ipc", type=int, default=20, help="memory images per class")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="class-order seeds")
    p.add_argument("--runs", type=int, default=3, help="training runs per class order")
    p.add_argument("--epochs", type=int, default=1000, help="epochs of each training from scratch on the memory")
    p.add_argument("--iterations", type=int, default=None, help="DM / DSA iterations (default: the method's)")
    p.add_argument("--model", default="convnet", help="dm_core network name for training and for the builders")
    p.add_argument("--max-train-per-class", type=int, default=None,
                   help="keep a fixed random subset of this many training images per class (CPU-sized runs)")
    p.add_argument("--option", type=_option, action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a memory-builder option, e.g. dm.batch_real=64 or herding.epochs=5 (repeatable)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="numeric precision of the training and of the memory builders")
    p.add_argument("--compile", default="auto", choices=COMPILE_MODES,
                   help="torch.compile the training and the DM / herding networks: auto (where the work pays for "
                        "the compile time), on, off")
    p.add_argument("--logger", type=_loggers, default=("text",), metavar="NAMES",
                   help="Avalanche loggers of the evaluations, comma-separated: text (into log.txt), csv, tensorboard "
                        "(under OUT/logs)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path("runs/continual"), help="run directory (resumed if present)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> ContinualConfig:
    options: dict[str, dict] = {}
    for method, key, value in args.option:
        options.setdefault(method, {})[key] = value
    return ContinualConfig(
        out=args.out, dataset=args.dataset, data_root=args.data_root, steps=args.steps,
        methods=PAPER_METHODS if args.memory == "all" else (args.memory,), ipc=args.ipc, seeds=tuple(args.seeds),
        runs=args.runs, epochs=args.epochs, iterations=args.iterations, model=args.model,
        max_train_per_class=args.max_train_per_class, method_options=options, precision=args.precision,
        compile=args.compile,
        loggers=tuple(args.logger), device=args.device, threads=args.threads, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    config = None
    try:
        with sigterm_as_interrupt():
            config = config_from_args(args)
            if config.threads:
                import torch

                torch.set_num_threads(config.threads)
            data = prepare(config)
            from .experiment import final_accuracies, run_continual  # Avalanche is imported once the input is good
            from .results import ResultsTable

            path = run_continual(config, data)
            table = ResultsTable(path)
            summary = {"results": str(path), "rows": len(table.rows),
                       "final_accuracy_percent": final_accuracies(config, table)}
    except DMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM
        words, status = stop_report(exc)
        where = (f"{config.out}/results.csv and {config.out}/memory (a memory being condensed keeps a checkpoint "
                 f"there)" if config else "nothing yet")
        print(f"{words}: finished steps are saved in {where}; rerun the same command to continue", file=sys.stderr)
        return status
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
