"""Ctrl-C while a command is still loading its libraries (importing torch takes seconds) ends it as every Ctrl-C
does: one ``interrupted: ...`` line and exit status 130, not an import traceback.

Only for the toolkit's own commands (``python -m dm_core|continual.run|nas.search|nas.groundtruth|reports...``),
never for a program or notebook that imports dm_core; and only where Ctrl-C has Python's usual handler (a job
started with SIGINT ignored keeps ignoring it). Importing this module arms it (``dm_core/__init__.py`` does, before
torch); ``dm_core.shell.run_command`` disarms it as the command starts, where the shell's own handling takes over.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

# The modules run as commands (each ends in dm_core.shell.run_command, which disarms): only these are armed.
COMMANDS = ("dm_core", "continual.run", "nas.search", "nas.groundtruth", "reports", "reports.continual", "reports.nas")


def _command_module() -> str | None:
    """The module of ``python -m MODULE``, from the interpreter's own arguments, or None."""
    argv = list(getattr(sys, "orig_argv", ()))
    if "-m" not in argv[:-1]:
        return None
    return argv[argv.index("-m") + 1]


def _stop(signum, frame) -> None:
    os.write(2, b"interrupted: while loading its libraries, before any work: nothing was written\n")
    os._exit(130)  # not an exception: an import in progress must not turn it into a traceback


def arm() -> None:
    module = _command_module()
    if (module not in COMMANDS
            or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        return
    signal.signal(signal.SIGINT, _stop)


def disarm() -> None:
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is _stop:
        signal.signal(signal.SIGINT, signal.default_int_handler)


arm()
