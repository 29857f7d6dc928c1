"""``python -m reports`` (console script ``dm-reports``): figures and tables from result files; nothing is trained.

    python -m reports continual RUN [RUN ...] --out DIR     Figures 6 and 7, accuracy matrices, final accuracies
    python -m reports nas RUN --out DIR                     Table 5 and Figure F8

Each report module offers ``add_arguments(parser)`` and ``make(args) -> list of written paths``.
"""
from __future__ import annotations

import argparse

from dm_core import shell

REPORTS = ("continual", "nas")


def _module(name: str):
    if name == "continual":
        from . import continual as module
    else:
        from . import nas as module
    return module


def build_parser() -> argparse.ArgumentParser:
    p = shell.parser("python -m reports", "Figures and tables from the result files of continual.run and nas.search "
                     "(nothing is trained here).")
    sub = p.add_subparsers(dest="report", required=True, metavar="REPORT")
    for name in REPORTS:
        module = _module(name)
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                                            formatter_class=shell.HelpFormatter))
    return p


def make(args: argparse.Namespace) -> dict:
    written = _module(args.report).make(args)
    return {"report": args.report, "out": str(args.out), "files": [str(path) for path in written]}


def main(argv: list[str] | None = None) -> int:
    return shell.run_command(build_parser(), make, lambda args, exc: "the report was not finished: rerun the command",
                             argv, old=("--run",))


console = shell.console_entry(main)
