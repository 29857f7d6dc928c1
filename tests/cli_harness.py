"""Shared checks for the bad-input tables of every command (issue: every command, no file lost, no traceback).

``run_cli(main, argv, capsys)`` calls a command's ``main(argv)`` in-process and returns (status, stdout, stderr);
``assert_clean_refusal`` asserts exit status 2, exactly one stderr line starting with ``error:``, no traceback, and
that every pre-existing file under the watched folders is byte-identical afterwards (and nothing new was written
there). ``snapshot`` records a folder's files and their bytes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path


def snapshot(*roots: Path) -> dict[Path, bytes]:
    """Every regular file under ``roots`` (recursively) with its bytes; temp files included, so a stray one shows."""
    files: dict[Path, bytes] = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            files[root] = root.read_bytes()
        elif root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    files[path] = path.read_bytes()
    return files


def run_cli(main: Callable[[list[str]], int | None], argv: Iterable[str], capsys) -> tuple[int, str, str]:
    """Call ``main(argv)``; argparse's SystemExit counts as the exit status. Any other exception propagates (a
    traceback is a failure of the test)."""
    capsys.readouterr()
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    out, err = capsys.readouterr()
    return (0 if status is None else int(status)), out, err


def assert_clean_refusal(status: int, err: str, before: dict[Path, bytes], after: dict[Path, bytes],
                         match: str | None = None) -> None:
    """Exit 2, one ``error:`` line (argparse's usage line may precede it), no traceback, files untouched."""
    assert status == 2, f"exit status {status}, stderr: {err!r}"
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, f"expected one error line, got: {err!r}"
    others = [line for line in lines if line not in errors and not line.startswith(("usage:", " "))]
    assert not others, f"stray stderr lines: {others!r}"
    if match is not None:
        assert match.lower() in errors[0].lower(), f"{match!r} not in {errors[0]!r}"
    assert set(after) == set(before), f"files appeared or vanished: {sorted(set(after) ^ set(before))}"
    changed = [p for p in before if before[p] != after[p]]
    assert not changed, f"files changed: {changed}"
