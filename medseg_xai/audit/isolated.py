"""Cases in killable worker processes: ``case_timeout`` that holds for code that never returns.

The in-process limit (``runner._time_limit``: ``SIGALRM``) interrupts Python code and blocking
system calls, but not a C or C++ call that never gives control back (a TorchScript loop, a
library stuck in a native lock, signals blocked by a model's code): the audit hung despite
``--case-timeout 5``, and a case whose 30-second native call ran past a 5-second limit was
recorded as a timeout only when the call returned.

Here each worker is a process of its own, fed one case at a time through a pipe. The parent
waits for each answer at most ``case_timeout`` + :data:`KILL_MARGIN_S`; past that it kills the
worker (``SIGKILL``), records the case as a timeout and starts a fresh worker. The in-worker
alarm stays the first line (a clean timeout record from inside, without a restart); the kill is
the backstop. A worker that dies while running a case (a crash in native code) fails that case's
row naming the exit code; a worker's infrastructure error (the cache's disk is full) is raised
in the parent as before.

Used by :func:`medseg_xai.audit.runner.run_tasks` whenever ``case_timeout`` is set with the
serial or process executor (Dask runs tasks in worker threads, which cannot be killed alone).
Cost: one round trip per case instead of per chunk, and, with a model, one process start
(imports) per worker and per killed case.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["KILL_MARGIN_S", "isolated"]

#: Seconds past ``case_timeout`` before a worker that has not answered is killed.
KILL_MARGIN_S = 1.0


def _worker(conn: Any, fn: Callable[..., dict], adapter: Any, parent_pid: int,
            init: Callable[[Any, int], None] | None = None) -> None:
    """Worker loop: answer ``("ok", record)`` or ``("raise", exception)`` per task."""
    if init is not None:  # the runner's worker initializer (passed in: no import cycle)
        init(adapter, parent_pid)
    conn.send(("ready", None))
    while True:
        task = conn.recv()
        if task is None:
            return
        try:
            rec = fn(task, adapter="worker" if adapter is not None else None)
        except BaseException as exc:  # noqa: BLE001 - the parent decides (infrastructure)
            conn.send(("raise", exc))
            return
        conn.send(("ok", rec))


@dataclass
class _Slot:
    process: Any
    conn: Any
    ready: bool = False
    task: Any = None
    started: float = 0.0


def _failed(task: Any, error: str, elapsed: float) -> dict[str, Any]:
    return {"row": task.row, "case_id": task.case_id, "from_cache": False, "input_hash": "",
            "status": "failed", "error": error, "timing": {"total_s": elapsed}}


def _timeout_record(task: Any, limit: float, elapsed: float) -> dict[str, Any]:
    return _failed(task, f"case {task.case_id!r}: timeout: expected the case to finish within "
                         f"{limit:g} s (case_timeout), it did not (its worker process was "
                         f"stopped after {elapsed:.1f} s)", elapsed)


class _Pool:
    """Worker processes, started, fed, killed and replaced."""

    def __init__(self, ctx: Any, fn: Callable[..., dict], adapter: Any, n: int,
                 init: Callable[[Any, int], None] | None = None) -> None:
        self.ctx, self.fn, self.adapter, self.init = ctx, fn, adapter, init
        self.slots = [self._start() for _ in range(n)]

    def _start(self) -> _Slot:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child, self.fn, self.adapter, os.getpid(),
                                                       self.init),
                                daemon=True, name="medseg-xai-case")
        proc.start()
        child.close()
        return _Slot(proc, parent)

    def replace(self, slot: _Slot) -> None:
        slot.process.kill()
        slot.process.join(5)
        slot.conn.close()
        self.slots[self.slots.index(slot)] = self._start()

    def close(self) -> None:
        for slot in self.slots:
            try:
                if slot.task is None and slot.ready:
                    slot.conn.send(None)
            except OSError:
                pass
        for slot in self.slots:
            slot.process.join(2 if slot.task is None else 0)
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join(5)
            slot.conn.close()


def isolated(fn: Callable[..., dict], tasks: Iterable[Any], workers: int, adapter: Any,
             case_timeout: float, mp_context: str | None, *,
             init: Callable[[Any, int], None] | None = None,
             preload: Callable[[], None] | None = None) -> Iterator[dict[str, Any]]:
    """Run ``fn(task, adapter=...)`` for every task in killable workers; yield the records
    (completion order). See the module docstring. ``init(adapter, parent_pid)`` runs once in
    each worker and ``preload()`` before forking (the runner's, passed in)."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    if mp_context is None:  # as the pool: fork for numpy work, a fresh process for torch
        mp_context = "spawn" if adapter is not None else ("fork" if os.name == "posix" else "spawn")
    ctx = mp.get_context(mp_context)
    if ctx.get_start_method() == "fork" and preload is not None:
        preload()
    pool = _Pool(ctx, fn, adapter, max(1, workers), init)
    todo = iter(tasks)
    exhausted = False
    limit = float(case_timeout) + KILL_MARGIN_S
    try:
        while True:
            for slot in pool.slots:  # feed every ready, idle worker
                if slot.ready and slot.task is None and not exhausted:
                    task = next(todo, None)
                    if task is None:
                        exhausted = True
                        break
                    slot.task, slot.started = task, time.monotonic()
                    slot.conn.send(task)
            busy = [s for s in pool.slots if s.task is not None]
            if exhausted and not busy:
                return
            now = time.monotonic()
            waits = [s.started + limit - now for s in busy]
            ready = wait([s.conn for s in pool.slots], timeout=max(0.0, min(waits, default=5.0)))
            yield from _collect(pool, ready, case_timeout)
            now = time.monotonic()
            for slot in [s for s in pool.slots if s.task is not None]:
                if now - slot.started >= limit:
                    task, elapsed = slot.task, now - slot.started
                    pool.replace(slot)
                    yield _timeout_record(task, case_timeout, elapsed)
    finally:
        pool.close()


def _collect(pool: _Pool, ready: list[Any], case_timeout: float) -> Iterator[dict[str, Any]]:
    for slot in [s for s in pool.slots if s.conn in ready]:
        try:
            kind, payload = slot.conn.recv()
        except (EOFError, OSError):  # the worker died: a crash in the case's native code
            task = slot.task
            slot.process.join(5)
            code = slot.process.exitcode
            elapsed = time.monotonic() - slot.started
            pool.replace(slot)
            if task is None:
                raise RuntimeError(f"audit: a case worker process ended while idle (exit code "
                                   f"{code})") from None
            yield _failed(task, f"case {task.case_id!r}: the worker process running this case "
                                f"ended (exit code {code}); expected the case to finish",
                          elapsed)
            continue
        if kind == "ready":
            slot.ready = True
        elif kind == "raise":
            raise payload
        else:
            slot.task = None
            yield payload
