"""Every file the toolkit writes goes through here: atomically, and CSVs formula-safe.

- :func:`atomic_write`: the bytes go to a temporary file in the destination folder, are flushed
  to disk, then renamed over the destination with :func:`os.replace` (atomic on POSIX and
  Windows within one file system). A crash or a full disk leaves the old file or no file, never
  a truncated one that looks valid, and the temporary file is removed on failure.
- :func:`write_csv`: one CSV writer for every table. Cells that a spreadsheet would run as a
  formula (text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return, the OWASP
  "CSV injection" list) get a leading ``'``. Numbers are not text and stay as they are, so a
  negative Dice difference is still a number. JSON and HTML keep the text unchanged (HTML is
  autoescaped; JSON is data).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["FORMULA_PREFIXES", "FolderInUse", "atomic_open", "atomic_write", "file_kind",
           "folder_lock", "neutralise_formula", "write_csv"]

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_UMASK = os.umask(0o022)  # read once at import (os.umask is the only way to read it)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8",
                newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success it replaces ``path`` atomically.

    Parameters
    ----------
    path : str or Path
        Destination; its folder must exist.
    mode : {"w", "wb"}
    encoding, newline
        As for :func:`open` (text mode only).
    """
    dest = Path(path)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else
                       {"encoding": encoding, "newline": newline})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text or bytes) to ``path`` atomically and return the path."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", encoding=encoding,
                     newline="" if isinstance(data, str) else None) as fh:
        fh.write(data)
    return Path(path)


def file_kind(path: str | Path) -> str:
    """What a path is, in words ("a FIFO (named pipe)", "a character device", ...)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "nothing (not found)"
    for test, words in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                        (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                        (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return words
    return "not a regular file"


def neutralise_formula(value: Any) -> Any:
    """A text cell that starts like a spreadsheet formula gets a leading ``'``; others unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def _is_arrow_list(dtype: Any) -> bool:
    import pandas as pd
    import pyarrow as pa

    return isinstance(dtype, pd.ArrowDtype) and pa.types.is_list(dtype.pyarrow_dtype)


def _as_tuple(v: list) -> tuple:
    return tuple(_as_tuple(x) if isinstance(x, list) else x for x in v)


def write_csv(df: Any, path: str | Path, **kwargs: Any) -> Path:
    """Write a DataFrame as CSV, atomically, with formula cells neutralised.

    Text cells and column names are neutralised; numbers, booleans and missing values are not.
    ``kwargs`` go to :meth:`pandas.DataFrame.to_csv` (default ``index=False``, RFC 4180
    ``"\\r\\n"`` line ends).
    """
    import pandas as pd

    safe = df.copy()
    for col in safe.columns:
        if _is_arrow_list(safe[col].dtype):  # coordinates: written as tuples, "(1.5, 2.0, 3.0)"
            safe[col] = [str(_as_tuple(v)) if isinstance(v, list) else None for v in safe[col]]
        elif safe[col].dtype == object or pd.api.types.is_string_dtype(safe[col].dtype):
            safe[col] = safe[col].map(neutralise_formula)
    safe.columns = [neutralise_formula(c) if isinstance(c, str) else c for c in safe.columns]
    kwargs.setdefault("index", False)
    # RFC 4180 line ends: with them the csv module quotes any cell holding a CR or LF; with a
    # bare "\n" terminator it writes a CR unquoted and the row breaks apart when read back
    kwargs.setdefault("lineterminator", "\r\n")
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        safe.to_csv(fh, **kwargs)
    return Path(path)


class FolderInUse(ValueError):
    """Another run holds the folder's lock (a usage error: exit code 2 on the command line)."""


LOCK_NAME = ".medseg-xai.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, what: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` for one run (issue 28).

    Two audits writing one output folder truncated and read back each other's streamed
    records, or one run's outputs silently replaced the other's. The lock is an OS advisory
    lock (``flock``; ``msvcrt.locking`` on Windows) on ``folder/.medseg-xai.lock``: released
    by the kernel when the process ends, even by ``kill -9``, so a stale file never blocks.

    Raises
    ------
    FolderInUse
        Naming the folder and the process id that holds it.
    """
    path = Path(folder) / LOCK_NAME
    fh = open(path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            _lock(fh)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            raise FolderInUse(
                f"{what}: folder {Path(folder).name!r} is in use by another medseg-xai run "
                f"(process {holder}); wait for it to finish or choose another folder") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield path
    finally:
        fh.close()  # releases the lock; the file stays (removing it would race a waiting run)


def _lock(fh: Any) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
