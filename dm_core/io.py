"""Atomic file writes: a reader never sees a half-written file, and a failure never clobbers a good one."""
from __future__ import annotations

import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import DMError

try:
    import fcntl
except ImportError:  # not POSIX: no locking (one writer at a time)
    fcntl = None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DMError(f"cannot write {path} ({exc.strerror or type(exc).__name__}): choose another path") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DMError(f"cannot write {path} ({exc.strerror or type(exc).__name__}): choose another "
                          f"path") from None
        raise
    return path


def atomic_write_files(files: dict) -> list[Path]:
    """Write several files all or none: each to a temp file beside it first, then every temp file renamed over its
    path. A failure while writing (a full disk, a folder that refuses) removes the temp files and leaves every path
    as it was."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            temps.append((tmp, path))
            os.chmod(tmp, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    except BaseException as exc:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            where = temps[-1][1] if temps else next(iter(files), "?")
            raise DMError(f"cannot write {where} ({exc.strerror or type(exc).__name__}): nothing was written; free "
                          f"some space or choose another path") from None
        raise
    for tmp, path in temps:
        os.replace(tmp, path)
    return [path for _, path in temps]


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe(folder: Path, failure: str) -> None:
    """Create and remove a temp file in ``folder``; on failure raise ``failure: folder is not writable (why)``."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DMError(f"{failure}: {folder} is not writable ({exc.strerror})") from None


def check_writable(path: str | os.PathLike, what: str = "output") -> Path:
    """Refuse, before any work, a ``path`` that could not be written at the end: a folder, or a place where no file
    can be created. Probes with a temp file that it removes at once; creates no folder."""
    path = Path(path)
    if path.is_dir():
        raise DMError(f"{what} {path} is a folder: give a file name")
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise DMError(f"cannot write {what} {path}: {folder} is not a folder")
    _probe(folder, f"cannot write {what} {path}")
    return path


def check_folder(path: str | os.PathLike, what: str = "run folder") -> Path:
    """Refuse, before any work, a folder (existing or to be made) that cannot be written: a file in its place, or a
    place where no file can be created (read-only, immutable, full). Probes with a temp file it removes at once, in
    the folder or, when it does not exist yet, in its nearest existing parent (which it leaves as it was)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DMError(f"the {what} {path} is a file: give a folder")
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise DMError(f"cannot make the {what} {path}: {existing} is not a folder")
    _probe(existing, f"cannot write the {what} {path}")
    return path


def work_key(settings: dict) -> str:
    """A short digest of the settings that decide a command's work (the name of its ``work_lock``)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


@contextmanager
def file_lock(lock_path: str | os.PathLike):
    """An exclusive ``flock`` on ``lock_path`` (created, with its folder, if needed) for the duration of the block:
    read-modify-write of a file that several processes share (the file itself is then replaced atomically)."""
    lock_path = Path(lock_path)
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a")
    except OSError as exc:
        raise DMError(f"cannot lock {lock_path} ({exc.strerror or type(exc).__name__}): the folder must be "
                      f"writable") from None
    with lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # the lock goes when the file closes, also on an exception


@contextmanager
def work_lock(lock_path: str | os.PathLike, what: str):
    """Hold ``lock_path`` for the whole of one command's work on ``what``: a second process about to do the same
    work is refused at once, with one line naming the first (its pid, start time and command). The lock is an
    ``flock``, so it goes with the process, a crash included; the file is removed when the work ends."""
    import sys
    import time

    lock_path = Path(lock_path)
    while True:
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(lock_path, "a+")
        except OSError as exc:
            raise DMError(f"cannot lock {lock_path} ({exc.strerror or type(exc).__name__}): the folder must be "
                          f"writable") from None
        if fcntl is None:
            break
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise DMError(f"{what} is being made by {holder}: wait for it to finish, or give another --out") from None
        try:  # the holder before us may have removed the file after we opened it: lock the file at the path
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()
    try:
        try:  # who holds it, for the message of a second process (best effort: a full disk must not stop the work)
            handle.seek(0)
            handle.truncate()
            handle.write(f"process {os.getpid()} (started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                         f"{' '.join(sys.argv)[:200]})")
            handle.flush()
        except OSError:
            pass
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only set it, and setting it to read it races
    with any thread creating a file meanwhile). Linux shows it in /proc; elsewhere it is read once, at import."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_IMPORT


def _umask_at_import() -> int:
    mask = os.umask(0o022)  # at import, before the program has threads of its own
    os.umask(mask)
    return mask


_UMASK_AT_IMPORT = _umask_at_import()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    return atomic_write_bytes(path, torch_bytes(obj))
