"""Tidy result tables: one schema per table, typed rows, atomic appends under one lock (pandas).

Every results file the toolkit writes (continual's ``results.csv``, NAS's ``results.csv``, ``groundtruth.csv``,
``curves.csv`` and ``oneshot.csv``) is a ``Table``: a plain CSV whose header is its ``Schema``'s columns, so
``pandas.read_csv`` (or a spreadsheet) opens it as it is. ``Table.read`` returns a typed ``DataFrame`` and refuses
with one ``DMError`` line anything it cannot trust: a missing column, a value of the wrong type, a cut-short line,
and two rows of the same unit of work (the schema's ``key``), naming the lines. Files written by earlier versions
are recognised by their header (``Schema.upgrades``) and read in the current layout; the next append rewrites them.

``Table.append`` reads, checks and rewrites the file atomically (temp file + rename) under an exclusive lock on
``FILE.lock`` (``dm_core.io.file_lock``), so processes sharing a run folder lose no row and a reader never sees half
a file. A row whose unit is already recorded with the same values is skipped (two processes that did the same
work); with other values it is refused.

pandas is imported on first use: dm_core itself needs only torch; the continual, nas and reports extras bring pandas.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DMError
from .io import atomic_write_text, file_lock

KINDS = ("str", "int", "float", "fraction", "fractions")


@dataclass(frozen=True)
class Column:
    """``kind``: str, int, float (finite, >= 0 unless ``signed``), fraction (in [0, 1]), fractions (a list of
    fractions, written space-separated). ``optional`` columns may be empty (None when read)."""

    name: str
    kind: str = "str"
    optional: bool = False
    signed: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"column kind {self.kind!r}: use one of {KINDS}")


@dataclass(frozen=True)
class Schema:
    """A table's layout. ``key``: the columns that identify a unit of work (two rows with the same key are the same
    unit); ``volatile``: columns that may differ between two recordings of one unit (timings). ``upgrades`` maps
    the header of an older layout (its columns, as a tuple) to a function that turns its rows (a DataFrame of
    strings) into this layout's."""

    name: str
    version: int
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    volatile: tuple[str, ...] = ()
    upgrades: dict[tuple[str, ...], Callable] = field(default_factory=dict)
    help: str = ""  # what to do with a file this schema cannot read

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def tag(self) -> str:
        return f"{self.name}/{self.version}"


def _pandas():
    try:
        import pandas
    except ImportError:  # dm_core alone does not need it
        raise DMError("results tables need pandas: pip install pandas (or the toolkit's continual / nas extras)") \
            from None
    return pandas


def _parse(column: Column, raw: str):
    """One cell, from its text; ValueError names what is wrong."""
    if raw == "":
        if column.optional:
            return None
        raise ValueError(f"{column.name} is empty")
    if column.kind == "str":
        return raw
    if column.kind == "int":
        text = raw.strip()
        if not text.lstrip("-").isdigit() or (text.startswith("-") and not column.signed):
            raise ValueError(f"{column.name} = {raw!r} is not {'an' if column.signed else 'a non-negative'} integer")
        return int(text)
    if column.kind == "fractions":
        return tuple(_number(column.name, v, 0.0, 1.0) for v in raw.replace(";", " ").split())
    if column.kind == "fraction":
        return _number(column.name, raw, 0.0, 1.0)
    return _number(column.name, raw, None if column.signed else 0.0, None)


def _number(name: str, raw: str, low: float | None, high: float | None) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} = {raw!r} is not a number") from None
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = "a fraction in [0, 1]" if high == 1.0 else "a finite number" + (" >= 0" if low == 0.0 else "")
        raise ValueError(f"{name} = {raw!r} is not {bounds}")
    return value


def _text(column: Column, value) -> str:
    """One cell, as written."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if not column.optional:
            raise DMError(f"a row lacks {column.name}")
        return ""
    if column.kind == "fractions":
        return " ".join(repr(float(v)) for v in value)
    if column.kind in ("float", "fraction"):
        return repr(float(value))
    if column.kind == "int":
        return str(int(value))
    return str(value)


class Table:
    """The file at ``path`` in ``schema``'s layout (it need not exist yet)."""

    def __init__(self, path: str | os.PathLike, schema: Schema):
        self.path = Path(path)
        self.schema = schema

    @property
    def lock(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def empty(self):
        pd = _pandas()
        return pd.DataFrame({c.name: pd.Series(dtype=object) for c in self.schema.columns})

    def read(self):
        """The typed rows ([] rows when there is no file yet), or one DMError saying what is wrong and where."""
        if not self.path.exists():
            return self.empty()
        if not self.path.is_file():
            raise DMError(f"{self.path} is not a file: move it aside")
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DMError(f"{self.path} is not a readable {self.schema.name} table ({type(exc).__name__}): restore "
                          f"it or move it aside") from None
        return self.parse(text)

    def parse(self, text: str):
        pd, schema, where = _pandas(), self.schema, self.path
        if not text:  # 0 bytes: what an earlier version left when its write failed (a full disk); it holds no row
            return self.empty()
        if not text.strip():
            raise DMError(f"{where} holds only blank lines, not a {schema.name} table: delete it (it holds no result) "
                          f"and rerun")
        if not text.endswith("\n"):
            raise DMError(f"{where} ends in the middle of a line (a cut-short file): remove its last line, then rerun")
        try:
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False)
        except Exception as exc:  # pandas' ParserError, EmptyDataError, ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            raise DMError(f"{where} is not a readable CSV ({first}): restore it or move it aside") from None
        header = tuple(frame.columns)
        if header != schema.names:
            upgrade = schema.upgrades.get(header)
            if upgrade is None:
                missing = [c for c in schema.names if c not in header]
                extra = [c for c in header if c not in schema.names]
                detail = "; ".join(part for part in (f"missing {', '.join(missing)}" if missing else "",
                                                     f"unknown {', '.join(extra)}" if extra else "") if part)
                raise DMError(f"{where} is not a {schema.tag} table ({detail or 'columns in another order'})"
                              f"{': ' + schema.help if schema.help else ''}")
            frame = upgrade(frame)[list(schema.names)]
        typed = pd.DataFrame({c.name: self._column(c, frame[c.name]) for c in schema.columns},
                             columns=list(schema.names))
        self._check_keys(typed)
        return typed

    def _column(self, column: Column, raw):
        """One column's typed values, converted all at once; the first bad cell is refused naming its line."""
        pd = _pandas()
        empty = raw == ""
        if column.kind in ("int", "float", "fraction"):
            values = pd.to_numeric(raw.where(~empty), errors="coerce")
            bad = values.isna() & ~empty
            finite = values.where(~values.isna(), 0.0)
            if column.kind == "int":
                bad |= ~empty & ((finite != finite.round()) | ~raw.str.strip().str.lstrip("-").str.isdigit())
            else:
                bad |= ~empty & ~finite.abs().lt(float("inf"))
            if not column.signed:
                bad |= finite < 0
            if column.kind == "fraction":
                bad |= finite > 1
        else:
            values, bad = raw, pd.Series(False, index=raw.index)
        if not column.optional:
            bad |= empty
        if column.kind == "fractions" or bad.any():  # lists, or a bad cell to name: cell by cell
            cells = []
            for line, cell in zip(range(2, len(raw) + 2), raw):
                try:
                    cells.append(_parse(column, cell))
                except ValueError as exc:
                    raise DMError(f"{self.path}, line {line}: {exc}; the file is damaged: fix that line or move "
                                  f"the file aside") from None
            return pd.Series(cells, index=raw.index, dtype=object)
        if column.kind == "str":
            return values.astype(object).where(~empty, None)
        if column.kind == "int" and not empty.any():
            return values.astype("int64")
        return values.astype("float64")  # an empty optional number is NaN, as pandas reads it

    def _check_keys(self, frame) -> None:
        duplicated = frame[frame.duplicated(list(self.schema.key), keep=False)]
        if len(duplicated):
            first = duplicated.iloc[0]
            same = duplicated[(duplicated[list(self.schema.key)] == first[list(self.schema.key)]).all(axis=1)]
            lines = " and ".join(str(i + 2) for i in same.index[:2])
            unit = ", ".join(f"{k} {first[k]}" for k in self.schema.key)
            raise DMError(f"{self.path}: lines {lines} record the same unit ({unit}); keep one of them, then rerun")

    def append(self, rows: dict | Iterable[dict]) -> int:
        """Record ``rows`` (dicts by column name); returns how many were new. Under the lock: read, check, rewrite."""
        pd = _pandas()
        rows = [rows] if isinstance(rows, dict) else list(rows)
        schema = self.schema
        new = []
        for row in rows:
            missing = [c.name for c in schema.columns if c.name not in row and not c.optional]
            if missing:
                raise ValueError(f"a {schema.name} row lacks {', '.join(missing)}")
            # through text and back: the row is checked as a reader will check it
            new.append({c.name: _parse(c, _text(c, row.get(c.name))) for c in schema.columns})
        with file_lock(self.lock):
            frame = self.read()
            known = {tuple(r[k] for k in schema.key): (i, r) for i, r in enumerate(plain_records(frame))}
            fresh = []
            for row in new:
                key = tuple(row[k] for k in schema.key)
                if key in known:
                    line, old = known[key]
                    differ = [c for c in schema.names if c not in schema.volatile and old[c] != row[c]]
                    if differ:
                        raise DMError(f"{self.path}, line {line + 2} already records this unit with other values "
                                      f"({', '.join(f'{c} {old[c]!r} -> {row[c]!r}' for c in differ[:3])}): move "
                                      f"the file aside to record it afresh")
                    continue
                known[key] = (len(known), row)
                fresh.append(row)
            if fresh or (len(frame) and self._outdated()):
                frame = pd.concat([frame, pd.DataFrame(fresh, columns=list(schema.names))], ignore_index=True) \
                    if len(frame) else pd.DataFrame(fresh, columns=list(schema.names))
                atomic_write_text(self.path, self.render(frame))
        return len(fresh)

    def _outdated(self) -> bool:
        with open(self.path, encoding="utf-8") as f:
            return tuple(f.readline().strip().split(",")) != self.schema.names

    def render(self, frame) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.schema.names)
        for record in frame.to_dict("records"):
            writer.writerow([_text(c, record[c.name]) for c in self.schema.columns])
        return buffer.getvalue()

    def keys(self) -> set[tuple]:
        frame = self.read()
        return set(map(tuple, frame[list(self.schema.key)].itertuples(index=False, name=None)))


def plain_records(frame) -> list[dict]:
    """A frame's rows as dicts of plain Python values, an empty cell as None (pandas shows it as NaN)."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v.item() if hasattr(v, "item") else v)
             for k, v in row.items()} for row in frame.to_dict("records")]


def rename_columns(mapping: dict[str, str], **fill: str) -> Callable:
    """An upgrade that renames old columns and fills new ones with a constant (as text)."""
    def upgrade(frame):
        frame = frame.rename(columns=mapping)
        for name, value in fill.items():
            if name not in frame.columns:
                frame[name] = value
        return frame
    return upgrade


def read_tables(paths: Iterable[str | os.PathLike], schema: Schema):
    """Several files of one schema as one frame with a ``source`` column (file and line); a unit recorded in two
    of them is refused, naming both places, since one of them would silently win."""
    pd = _pandas()
    frames = []
    for path in paths:
        frame = Table(path, schema).read()
        frame["source"] = [f"{path}, line {i + 2}" for i in range(len(frame))]
        frames.append(frame)
    if not frames:
        return Table("", schema).empty()
    frame = pd.concat(frames, ignore_index=True)
    duplicated = frame[frame.duplicated(list(schema.key), keep=False)]
    if len(duplicated):
        first = duplicated.iloc[0]
        same = duplicated[(duplicated[list(schema.key)] == first[list(schema.key)]).all(axis=1)]
        raise DMError(f"{same['source'].iloc[0]} and {same['source'].iloc[1]} record the same unit: give each "
                      f"results file once, or remove one of the two rows")
    return frame
