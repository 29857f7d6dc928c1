"""SIGTERM, the signal of a cancelled job (``scancel``, ``kill``, torchrun stopping its workers when one failed),
handled like Ctrl-C by every command: one line, what was kept, the exit status 143, and a rerun that continues."""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM. A KeyboardInterrupt, so every Ctrl-C path (checkpoints kept, rows
    already appended) covers it too."""


def _raise(signum, frame):
    raise Terminated


@contextmanager
def sigterm_as_interrupt():
    """Within: SIGTERM raises ``Terminated`` in the main thread (elsewhere signals cannot be set: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_report(exc: KeyboardInterrupt) -> tuple[str, int]:
    """(first words of the one-line message, exit status) of a command stopped by Ctrl-C or by SIGTERM."""
    return ("stopped by SIGTERM", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
