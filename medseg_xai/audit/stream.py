"""Per-case records streamed to disk as they arrive, and read back as compact tables.

An audit of 100,000 cases must not hold 100,000 Python dicts: each record is written as one
JSON line (``cases.jsonl``) the moment it arrives and flushed, so the client's memory does not
grow with the number of cases and an interrupted audit leaves its finished part on disk, one
complete line per finished case (a torn last line is skipped on reading). The line holds
exactly the record the per-case cache stores (plus ``row``, ``case_id``, ``from_cache``), so
the resume cache and the streamed table agree; NaN and infinities use the cache's tagged
encoding so the round trip is exact.

Reading back builds the tables chunk by chunk (a few thousand records at a time become
column arrays), so the peak is the size of the final tables, not of the records.
"""

from __future__ import annotations

import errno
import json
import os
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg_xai.audit.cache import _from_json, _to_json

__all__ = ["INFRASTRUCTURE_ERRNOS", "InfrastructureError", "RecordStream", "infrastructure_error"]

#: ``errno`` values that mean the machine, not the case, is at fault (disk full, read-only
#: file system, permission denied, quota exceeded, I/O error). Raised while writing outputs or
#: the cache they abort the audit instead of failing a row.
INFRASTRUCTURE_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", None),
                errno.EIO)
    if e is not None
)


class InfrastructureError(OSError):
    """The audit cannot write its outputs or its cache: abort, every computed case is safe.

    The message says what could not be written and why, without folder names.
    """


def infrastructure_error(exc: OSError, what: str) -> InfrastructureError:
    """Wrap an OSError raised while writing ``what`` (e.g. ``"the cache"``)."""
    reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    err = InfrastructureError(
        exc.errno,
        f"audit aborted: cannot write {what} ({reason}); no case result was recorded as "
        "failed because of it: fix the disk or folder and rerun (with the cache, finished "
        "cases are reused)",
    )
    return err


class RecordStream:
    """An append-only JSON-lines file of per-case records.

    Parameters
    ----------
    path : str or Path
        The file; truncated when opened for writing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self._fh: Any = None
        self.n_written = 0
        # Where each line starts and its record's ``row``: 16 bytes per case, so the tables
        # can be read back in manifest order (:meth:`in_row_order`) whatever order the
        # records arrived in, and no whole-table reordering is needed.
        self.rows = array("q")
        self.offsets = array("q")
        self._end = 0

    def __enter__(self) -> RecordStream:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - kept open
        except OSError as exc:
            raise infrastructure_error(exc, "the streamed case records") from exc
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            finally:
                self._fh = None

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record and flush it to the operating system."""
        line = json.dumps(_to_json(dict(record)), ensure_ascii=False, allow_nan=False) + "\n"
        try:
            self._fh.write(line)
            self._fh.flush()
        except OSError as exc:
            raise infrastructure_error(exc, "the streamed case records") from exc
        self.n_written += 1
        self.rows.append(int(record.get("row", -1)))
        self.offsets.append(self._end)
        self._end += len(line.encode("utf-8"))

    def in_row_order(self) -> np.ndarray | None:
        """Line offsets sorted by ``row`` (stable), or None when the lines already are."""
        rows = np.frombuffer(self.rows, dtype=np.int64) if len(self.rows) else np.zeros(0, int)
        if np.all(rows[1:] >= rows[:-1]):
            return None
        return np.frombuffer(self.offsets, dtype=np.int64)[np.argsort(rows, kind="stable")]


def read_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a stream file in written order; a torn last line is skipped."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                return  # the writer was interrupted mid-line
            try:
                yield _from_json(json.loads(line))
            except json.JSONDecodeError:
                continue


def read_at(path: str | Path, offsets: Sequence[int]) -> Iterator[dict[str, Any]]:
    """Records of a stream file at the given line offsets, in that order."""
    with open(path, "rb") as fh:
        for offset in offsets:
            fh.seek(int(offset))
            yield _from_json(json.loads(fh.readline().decode("utf-8")))


def read_chunks(
    path: str | Path, build: Callable[[list[dict[str, Any]]], Any], chunk: int = 4096,
    offsets: Sequence[int] | None = None,
) -> Iterator[Any]:
    """``build(records)`` for successive chunks of ``chunk`` records of a stream file (in
    written order, or at ``offsets`` in that order, see :meth:`RecordStream.in_row_order`)."""
    buf: list[dict[str, Any]] = []
    for rec in (read_records(path) if offsets is None else read_at(path, offsets)):
        buf.append(rec)
        if len(buf) >= chunk:
            yield build(buf)
            buf = []
    if buf:
        yield build(buf)
