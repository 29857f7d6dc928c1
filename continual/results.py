"""The tidy results table of a run directory: one row per (method, seed, run, step), rewritten atomically."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from dm_core import DMError, atomic_write_text

COLUMNS = ("dataset", "method", "steps", "ipc", "seed", "run", "step", "classes_seen", "accuracy")
_INTS = ("steps", "ipc", "seed", "run", "step", "classes_seen")


def unit_key(method: str, steps: int, seed: int, run: int, step: int) -> tuple:
    return (method, int(steps), int(seed), int(run), int(step))


def read_results(path: str | Path) -> list[dict]:
    """Rows of a results CSV with typed fields (ints, accuracy as a float in [0, 1])."""
    path = Path(path)
    if not path.is_file():
        raise DMError(f"no results file at {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise DMError(f"{path} is not a continual results file: columns {', '.join(sorted(missing))} missing")
        rows = []
        for row in reader:
            rows.append({**row, **{k: int(row[k]) for k in _INTS}, "accuracy": float(row["accuracy"])})
    return rows


class ResultsTable:
    """``results.csv`` of a run: ``done(...)`` says whether an evaluation unit is finished; ``add`` records one.

    Each ``add`` rewrites the whole (small) file through a temp file and a rename, so a reader or a restarted run
    never sees half a row.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.rows = read_results(self.path) if self.path.is_file() else []
        self._done = {unit_key(r["method"], r["steps"], r["seed"], r["run"], r["step"]) for r in self.rows}

    def done(self, method: str, steps: int, seed: int, run: int, step: int) -> bool:
        return unit_key(method, steps, seed, run, step) in self._done

    def add(self, row: dict) -> None:
        key = unit_key(row["method"], row["steps"], row["seed"], row["run"], row["step"])
        if key in self._done:
            raise DMError(f"result {key} is already recorded in {self.path}")
        self.rows.append({k: row[k] for k in COLUMNS})
        self._done.add(key)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())
