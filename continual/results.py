"""The tidy results table of a run directory: one row per (method, seed, run, step), appended under a file lock.

Columns: ``accuracy_fraction`` is the top-1 accuracy in [0, 1] on the test images of every class seen so far (the
stream); ``experience_accuracy_fraction`` holds the accuracy on each seen test experience, experiences 0..step in
stream order, separated by spaces (a row of the accuracy matrix); ``precision`` is the training's numeric precision.
Files written before these columns existed (``accuracy`` instead of ``accuracy_fraction``) are still read.

Several ``continual.run`` processes may write one run directory at once (different ``--seeds``, say): each row is
one ``write`` to a file opened for appending, under an exclusive ``flock``, and a row already present is not
written again, so no process loses another's rows.
"""
from __future__ import annotations

import csv
import io
import os
from contextlib import contextmanager
from pathlib import Path

from dm_core import DMError, atomic_write_text

try:
    import fcntl
except ImportError:  # not POSIX: no locking (one writer per run directory)
    fcntl = None

COLUMNS = ("dataset", "method", "steps", "ipc", "seed", "run", "step", "classes_seen", "accuracy_fraction",
           "experience_accuracy_fraction", "precision")
OLD_COLUMNS = {"accuracy": "accuracy_fraction"}  # earlier name -> current name
_INTS = ("steps", "ipc", "seed", "run", "step", "classes_seen")
_REQUIRED = ("dataset", "method", *_INTS, "accuracy_fraction")


def unit_key(method: str, steps: int, seed: int, run: int, step: int) -> tuple:
    return (method, int(steps), int(seed), int(run), int(step))


def _fraction(text: str, where: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{where} {text!r} is not a fraction in [0, 1]")
    return value


def parse_rows(text: str, path: Path) -> list[dict]:
    """Typed rows of a results file's text; any malformed content is a DMError naming the file and line."""
    if text and not text.endswith("\n"):
        raise DMError(f"{path} ends in the middle of a line (a cut-short file): remove the last line, then rerun")
    try:
        reader = csv.DictReader(io.StringIO(text))
        names = [OLD_COLUMNS.get(n, n) for n in (reader.fieldnames or ())]
        missing = [c for c in _REQUIRED if c not in names]
        if missing:
            raise DMError(f"{path} is not a continual results file (columns {', '.join(missing)} missing)")
        reader.fieldnames = names
        rows = []
        for row in reader:
            line = reader.line_num
            if None in row or None in row.values():
                raise ValueError(f"line {line} has {len(row) - (None in row)} fields, the header "
                                 f"{len(names)}")
            typed = {**row, **{k: int(row[k]) for k in _INTS}}
            typed["accuracy_fraction"] = _fraction(row["accuracy_fraction"], "accuracy_fraction")
            per_experience = (row.get("experience_accuracy_fraction") or "").split()
            typed["experience_accuracy_fraction"] = [_fraction(v, "experience accuracy") for v in per_experience]
            if per_experience and len(per_experience) != typed["step"] + 1:
                raise ValueError(f"line {line} has {len(per_experience)} experience accuracies for step "
                                 f"{typed['step']}")
            typed["precision"] = row.get("precision") or ""
            rows.append(typed)
        return rows
    except (ValueError, csv.Error) as exc:
        raise DMError(f"{path} is not a readable results file ({exc}): fix or remove the bad line") from None


def read_results(path: str | Path) -> list[dict]:
    """Rows of a results CSV with typed fields (ints, fractions as floats, per-experience accuracies as a list)."""
    path = Path(path)
    if not path.is_file():
        raise DMError(f"no results file at {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DMError(f"{path} is not a readable results file ({exc})") from None
    return parse_rows(text, path)


def format_row(row: dict) -> dict:
    """A row as the strings written to the file."""
    per_experience = row.get("experience_accuracy_fraction") or []
    if not isinstance(per_experience, str):
        per_experience = " ".join(f"{v:.6f}" for v in per_experience)
    return {**{k: row.get(k, "") for k in COLUMNS}, "accuracy_fraction": f"{float(row['accuracy_fraction']):.6f}",
            "experience_accuracy_fraction": per_experience}


def _csv_text(rows: list[dict], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(format_row(r) for r in rows)
    return buffer.getvalue()


class ResultsTable:
    """``results.csv`` of a run: ``done(...)`` says whether an evaluation unit is recorded (by any process);
    ``add`` appends one row."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._done: set = set()
        self.refresh()

    def refresh(self) -> list[dict]:
        """Re-read the file (other processes may have added rows); returns its rows."""
        rows = read_results(self.path) if self.path.is_file() else []
        self._done = {unit_key(r["method"], r["steps"], r["seed"], r["run"], r["step"]) for r in rows}
        return rows

    @property
    def rows(self) -> list[dict]:
        return self.refresh()

    def done(self, method: str, steps: int, seed: int, run: int, step: int) -> bool:
        return unit_key(method, steps, seed, run, step) in self._done

    @contextmanager
    def _locked(self):
        """The file opened for appending, held under an exclusive lock (the file that is at the path once the lock is
        held: a writer that rewrote an old layout replaced it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a", encoding="utf-8", newline="")
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            if not self.path.exists() or os.fstat(handle.fileno()).st_ino != os.stat(self.path).st_ino:
                handle.close()  # closing drops the lock
                continue
            break
        try:
            yield handle
        finally:
            handle.close()

    def add(self, row: dict) -> bool:
        """Append ``row`` unless its unit is already in the file; returns whether it was written."""
        key = unit_key(row["method"], row["steps"], row["seed"], row["run"], row["step"])
        with self._locked() as handle:
            text = self.path.read_text(encoding="utf-8")
            rows = parse_rows(text, self.path) if text else []
            self._done = {unit_key(r["method"], r["steps"], r["seed"], r["run"], r["step"]) for r in rows}
            if key in self._done:
                return False
            if text and text.splitlines()[0].split(",") != list(COLUMNS):
                # an older layout: rewrite it once in the current one (still under the lock), then append
                atomic_write_text(self.path, _csv_text(rows + [row], header=True))
            else:
                handle.write(_csv_text([row], header=not text))
                handle.flush()
                os.fsync(handle.fileno())
            self._done.add(key)
            return True
