"""The one command shell of every command (``python -m dm_core``, ``continual.run``, ``nas.search``,
``nas.groundtruth``, ``reports``): shared flags with one meaning each, one way to end.

A command is a parser plus a function from the parsed arguments to a dict of figures. ``run_command``:
- refuses a removed or renamed flag with one ``error:`` line naming its new spelling;
- applies ``--threads`` once the arguments parsed;
- prints the figures as one JSON line, the last line of stdout, and exits 0;
- ``exit_process`` then ends a command's process without Python's teardown of every module (about 1 s here);
- turns bad input (``DMError``) into one ``error: ...`` line on stderr and exit status 2, Ctrl-C into one
  ``interrupted: ...`` line and 130, SIGTERM (a cancelled job) into one ``stopped by SIGTERM: ...`` line and 143, the
  second half of each line saying what was kept and how to continue.
Under torchrun only rank 0 speaks; the other ranks exit with the same status.
"""
from __future__ import annotations

import argparse
import ast
import atexit
import errno
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

from . import startup
from .errors import DMError
from .signals import Terminated, sigterm_as_interrupt
from .validate import SEED_LIMIT

BAD_INPUT, INTERRUPTED, TERMINATED = 2, 130, 143
RANK_ERROR_GRACE_S = 3.0  # see run_command's end
WRITE_FAULTS = {  # errno -> what to do
    errno.ENOSPC: "free some space, then rerun the same command (finished work is kept)",
    errno.EDQUOT: "free some of your quota, then rerun the same command (finished work is kept)",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.EACCES: "make it writable or choose another --out",
    errno.EPERM: "make it writable or choose another --out",
}

# Flags of earlier versions: old spelling -> what to write now. Each command passes those it once had.
RENAMED = {
    "--quiet": "--no-progress",  # python -m dm_core
    "--models": "--repeats",  # python -m dm_core evaluate
    "--resume": "nothing: a rerun of the same command continues from its checkpoint (--restart starts over)",
    "--herding-epochs": "--option epochs=N",
    "--runs": "--repeats",  # continual.run
    "--run": "the run folder as the first argument",  # reports nas
    "--steps": "--train-iterations",  # nas.groundtruth
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default once, and only when there is one worth showing (not None, not a switch's False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if switch or "%(default)" in text or "default" in text.lower() or action.default in (None, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"a seed is an integer from 0 to 2**63 - 1, got {text}")
    return value


def worker_count(text: str) -> int | str:
    """``auto`` or a whole number from 1 (``--workers``)."""
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number from 1, got {text!r}") from None


def option(text: str) -> tuple[str, object]:
    """KEY=VALUE (or METHOD.KEY=VALUE), VALUE read as a Python literal when it is one (64, 0.5, None, 'x'), else
    kept as text."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not all(part.isidentifier() for part in key.split(".")):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. batch_real=64), got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


def add_common(p: argparse.ArgumentParser, *, dataset: str | None = None, device: bool = True,
               seed_help: str | None = "seed of every random draw", threads: bool = True, compile: bool = False,
               progress: bool = True, workers: bool | str = False) -> None:
    """The flags every command that computes shares, with one meaning each.

    ``dataset``: the --dataset help (None: the command takes no --dataset); ``seed_help`` None: no --seed;
    ``workers``: the command trains several networks from scratch (``dm_core.many.train_many``); a text: its own
    help for the flag.
    """
    if dataset is not None:
        p.add_argument("--dataset", help=dataset)
        p.add_argument("--data-root", help="folder of the datasets (default: $DM_DATA_ROOT, else ./data)")
    if device:
        p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda or cuda:N")
    if seed_help is not None:
        p.add_argument("--seed", type=seed, default=0, help=seed_help)
    if compile:
        from .compile import COMPILE_MODES

        p.add_argument("--compile", choices=COMPILE_MODES, default="auto",
                       help="torch.compile the networks: auto (only where the work ahead pays for the compile "
                            "time), on, off")
    if workers:
        p.add_argument("--workers", type=worker_count, default="auto", metavar="N",
                       help=workers if isinstance(workers, str) else
                       "networks trained at once: auto (what the machine has: from 4 CPU cores a worker process "
                       "of one thread per core, on fewer one after another with all threads; stacked networks on "
                       "a GPU) or N; 1 trains them one after another in this process. Each network's result "
                       "depends on its seed, not on this (up to float rounding: one-thread workers round as "
                       "--threads 1 does, stacked networks as batched kernels do)")
    if threads:
        p.add_argument("--threads", type=positive_int, help="CPU threads of torch (default: torch's choice)")
    if progress:
        p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def renamed(argv: list[str], old: tuple[str, ...]) -> str | None:
    """The error for the first flag of ``argv`` among ``old``, the flags this command once had."""
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag in old:
            new = RENAMED[flag]
            return f"{flag} was renamed: use {new}" if new.startswith("--") else f"{flag} was removed: use {new}"
    return None


def as_flags(message: str, p: argparse.ArgumentParser) -> str:
    """A library message speaks of arguments (``batch_real``); on the command line the same things are flags
    (``--batch-real``). Names with an underscore are unambiguous, so those the command has as flags are turned into
    them; plain words (``iterations``) stay as written."""
    flags = {}
    parsers = [p]
    while parsers:
        current = parsers.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
            long = [o for o in action.option_strings if o.startswith("--")]
            if long and "_" in action.dest and long[0][2:].replace("-", "_") == action.dest:
                flags[action.dest] = long[0]
    for dest, flag in flags.items():
        message = re.sub(rf"(?<![\w-]){dest}(?![\w=])", flag, message)
    return message


def interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (or SIGTERM) behind ``exc``: itself, or one it was raised from or while handling. A Ctrl-C can
    surface as another exception: Python wraps one raised in a class's ``__set_name__`` into a RuntimeError (seen when
    it came while Avalanche imported matplotlib), and cleanup code may fail while the interrupt unwinds."""
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        pending += [current.__cause__, current.__context__]
    return None


def run_command(p: argparse.ArgumentParser, body: Callable[[argparse.Namespace], dict | None],
                kept: Callable[[argparse.Namespace, BaseException], str], argv: list[str] | None = None,
                old: tuple[str, ...] = ()) -> int:
    """Parse ``argv``, run ``body``, and end as the module docstring says. ``kept(args, exc)`` says what a stopped run
    kept and how to continue it; ``old`` names the flags of ``RENAMED`` this command once had."""
    from .distributed import leave_group, world

    startup.disarm()  # from here on Ctrl-C is the command's (below)
    argv = list(sys.argv[1:] if argv is None else argv)
    problem = renamed(argv, old)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return BAD_INPUT
    args = p.parse_args(argv)
    status, figures, message = 0, None, None
    with sigterm_as_interrupt():
        try:
            if getattr(args, "threads", None):
                import torch

                torch.set_num_threads(args.threads)
            figures = body(args)
        except DMError as exc:
            status, message = BAD_INPUT, f"error: {as_flags(str(exc), p)}"
        except (KeyboardInterrupt, Exception) as exc:
            stop = interrupt_behind(exc)
            if stop is not None:  # Ctrl-C or SIGTERM (``Terminated``), maybe wrapped in another exception
                words = "stopped by SIGTERM" if isinstance(stop, Terminated) else "interrupted"
                status = TERMINATED if isinstance(stop, Terminated) else INTERRUPTED
                fresh = "\n" if getattr(args, "progress", False) else ""  # a progress bar leaves the cursor on its line
                message = f"{fresh}{words}: {kept(args, stop)}"
            elif isinstance(exc, OSError) and exc.errno in WRITE_FAULTS:
                # a write the command could not check beforehand (the disk filled up meanwhile, a folder became
                # read-only): one line, and every finished unit of work is kept
                where = f" {exc.filename}" if exc.filename else ""
                status, message = BAD_INPUT, f"error: cannot write{where} ({exc.strerror}): {WRITE_FAULTS[exc.errno]}"
            elif not world().sharded:
                raise  # in one process a bug shows its traceback
            else:
                # under torchrun a failing rank says so in one line (torchrun adds its own report); its peers then
                # meet a failed collective and rank 0 says that in one line too
                w = world()
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                print(f"error: process {w.rank} of {w.size} failed ({type(exc).__name__}: {first}): "
                      f"{kept(args, exc)}", file=sys.stderr, flush=True)
                status = 1
        try:  # still under the SIGTERM handler: a SIGTERM that follows an error cannot end the process unheard
            if message is not None and world().is_main:
                print(message, file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            pass
    w = world()
    try:
        if status != 0 and w.sharded and not w.is_main:
            # torchrun stops every rank once one exits with an error: a failing rank that does not speak waits a
            # moment, so that rank 0 (the one that does) has said its line by then
            time.sleep(RANK_ERROR_GRACE_S)
        leave_group(graceful=status == 0)
        if status == 0 and figures is not None:
            print(json.dumps(figures), flush=True)
    except KeyboardInterrupt:  # a Ctrl-C after the work (e.g. while torchrun's ranks wait for each other)
        if status != 0:
            return status
        print("interrupted: after the work was done and written; only its closing JSON line was not printed",
              file=sys.stderr, flush=True)
        return INTERRUPTED
    return status


def console_entry(main: Callable[[], int]) -> Callable[[], NoReturn]:
    """A command module's ``console()``: the entry of its console script (pyproject's ``[project.scripts]``) and of
    ``python -m``: ``main()``, then ``exit_process``."""
    def console() -> NoReturn:
        exit_process(main())
    return console


def exit_process(status: int) -> NoReturn:
    """End a command's process (``python -m ...`` and the console scripts; never a program that calls a ``main``):
    Python's own exit up to its last stage. Non-daemon threads are joined, atexit callbacks run (temporary folders,
    worker processes, inductor's compile workers, NNI's manager), stdout and stderr are flushed; then ``os._exit``
    skips the interpreter's teardown of every module and of torch's C++ state: about 1 s per command on this
    project's CPU (importing torch._dynamo and torchvision then exiting: 3.57 s, 2.48 s this way). A Ctrl-C meanwhile
    ends the process at once with ``status``: the work is done and reported (during Python's teardown it killed the
    process with no word, status -2, or printed a traceback from an atexit callback)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda signum, frame: os._exit(status))
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said
            pass
    os._exit(status)
