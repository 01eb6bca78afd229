"""Per-case audit work and the executors that run it (serial, process pool, Dask).

Workers receive a case's file paths, never its volumes: each worker loads, evaluates and
returns a small record (metrics, lesion rows), so memory stays flat whatever the cohort size.
Every record is keyed by its manifest row, so a case is counted exactly once however the
executor orders the work, and a failure stays in its own row with its error text.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from medseg_xai._privacy import redact_paths
from medseg_xai.audit.cache import CaseCache, input_hash
from medseg_xai.cohort import Cohort, load_case_from_paths

__all__ = ["CASE_SETTING_KEYS", "EXECUTORS", "CaseTask", "evaluate_task", "run_tasks", "tasks_for"]

EXECUTORS = ("serial", "process", "dask")
# Settings that change a case's record (and therefore its cache key).
CASE_SETTING_KEYS = ("labels", "tolerance", "percentile", "empty", "connectivity",
                     "overlap_threshold")

_WORKER_ADAPTER: Any = None  # set once per worker process by the pool initializer


@dataclass(frozen=True)
class CaseTask:
    """What a worker needs for one case: its row, id, paths and any up-front problem."""

    row: int
    case_id: str
    paths: Mapping[str, str | None]
    problem: str | None = None


def tasks_for(cohort: Cohort) -> list[CaseTask]:
    """One task per manifest row; rows with validation problems carry their message."""
    problems: dict[str, list[str]] = {}
    for cid, msg in zip(cohort.problems["case_id"], cohort.problems["message"]):
        problems.setdefault(cid, []).append(msg)
    tasks = []
    for i, cid in enumerate(cohort.case_ids):
        msgs = problems.get(cid)
        tasks.append(CaseTask(i, cid, cohort.paths(cid), "; ".join(msgs) if msgs else None))
    return tasks


# --------------------------------------------------------------------------------------------
# per-case work


def _peak_reset() -> None:
    """Reset the process's peak-RSS counter where the OS allows it (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


def _infer(adapter: Any, image: np.ndarray, feature_layer: str | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Run the model once: label map, foreground probability, class probabilities, timing.

    With ``feature_layer`` a forward hook pools that layer's output during the same pass
    (``timing["features"]``, ``timing["feature_layer"]``; popped by the caller).
    """
    import contextlib

    import torch

    hook: Any = None
    if feature_layer:
        from medseg_xai.explain.features import FeatureHook

        hook = FeatureHook.for_audit(adapter, image.shape, feature_layer)

    cuda = torch.cuda.is_available() and str(getattr(adapter, "device", "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _peak_reset()
    start = time.perf_counter()
    with hook or contextlib.nullcontext():
        probs = adapter.probabilities(image)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    p = probs.detach().cpu().numpy()[0]
    if p.shape[0] == 1:
        pred = (p[0] > 0.5).astype(np.int16)
        fg = p[0]
    elif getattr(adapter, "activation", "softmax") == "sigmoid":
        best, idx = p.max(axis=0), p.argmax(axis=0)
        pred = np.where(best > 0.5, idx + 1, 0).astype(np.int16)
        fg = best
    else:
        pred = p.argmax(axis=0).astype(np.int16)
        fg = 1.0 - p[0]
    timing = {"inference_s": elapsed, "peak_memory_mb": _peak_rss_mb()}
    if cuda:
        timing["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if hook is not None and hook.error is None and hook._count:
        timing["features"] = [float(v) for v in hook.vector]
        timing["feature_layer"] = hook.layer
    return pred, fg.astype(np.float32), p, timing


def _foreground(mask: np.ndarray, labels: Any) -> np.ndarray:
    if labels is None:
        return mask > 0
    values = list(labels.keys()) if isinstance(labels, Mapping) else list(labels)
    return np.isin(mask, values)


def _compute_case(
    case_id: str, paths: Mapping[str, str | None], settings: Mapping[str, Any], adapter: Any
) -> dict[str, Any]:
    """Load, (infer,) evaluate and match lesions of one case; raises on any problem."""
    from medseg_xai.metrics import evaluate_case, lesion_summary, lesions

    case = load_case_from_paths(case_id, paths)
    labels = settings.get("labels")
    timing: dict[str, float] = {}
    class_probs = None
    if adapter is not None:
        pred, fg_prob, class_probs, timing = _infer(adapter, case.image,
                                                    settings.get("feature_layer"))
    else:
        if case.prediction is None:
            raise ValueError(
                f"case {case_id!r}: prediction: expected a stored prediction path or an adapter, "
                "got neither"
            )
        pred = case.prediction
        fg_prob = None
        if case.probability is not None:
            p = case.probability
            if p.ndim == case.label.ndim:
                fg_prob = p
            elif p.shape[0] == 1:
                fg_prob = p[0]
            else:
                class_probs = p
                fg_prob = 1.0 - p[0]
    ref = case.label
    if labels is None:
        pred_eval, ref_eval = pred > 0, ref > 0
        probs_eval = fg_prob
    else:
        pred_eval, ref_eval = pred, ref
        probs_eval = class_probs
    metrics = evaluate_case(
        pred_eval, ref_eval, case.spacing, labels,
        tolerance=settings["tolerance"], percentile=settings["percentile"],
        empty=settings["empty"], probabilities=probs_eval,
    )
    pred_fg, ref_fg = _foreground(pred, labels), _foreground(ref, labels)
    table = lesions(
        pred_fg, ref_fg, case.spacing,
        probabilities=None if fg_prob is None else np.clip(fg_prob, 0.0, 1.0),
        connectivity=settings["connectivity"], overlap_threshold=settings["overlap_threshold"],
    )
    summary = lesion_summary(table, n_cases=1)
    record: dict[str, Any] = {"status": "ok", "error": ""}
    record.update({k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()})
    record.update(summary)
    record["shape"] = "x".join(str(s) for s in ref.shape)
    record["spacing"] = ",".join(f"{s:g}" for s in case.spacing)
    record["lesions"] = _lesion_records(table)
    if "features" in timing:
        record["features"] = timing.pop("features")
        record["feature_layer"] = timing.pop("feature_layer")
    record["timing"] = timing
    return record


def _lesion_records(table: Any) -> list[dict[str, Any]]:
    rows = []
    for rec in table.to_dict(orient="records"):
        clean = {}
        for k, v in rec.items():
            if isinstance(v, tuple):
                v = [list(x) if isinstance(x, tuple) else x for x in v]
            elif hasattr(v, "item"):
                v = v.item()
            clean[str(k)] = v
        rows.append(clean)
    return rows


def evaluate_task(
    task: CaseTask,
    settings: Mapping[str, Any],
    cache_dir: str | None = None,
    adapter: Any = None,
    cache_extra: str = "",
) -> dict[str, Any]:
    """Evaluate one case, isolating any failure into a ``status="failed"`` record.

    Parameters
    ----------
    task : CaseTask
    settings : mapping
        Case-level settings (:data:`CASE_SETTING_KEYS`).
    cache_dir : str, optional
        Per-case cache folder; a hit returns the stored record without recomputing.
    adapter : SegmentationAdapter, optional
        Run inference instead of reading stored predictions (``"worker"`` means the adapter
        installed in this worker process by the pool initializer).
    cache_extra : str
        Model fingerprint and package version, part of the cache key.

    Returns
    -------
    dict
        ``row, case_id, status, error, input_hash, from_cache`` and, for evaluated cases,
        metric values, lesion summary, ``lesions`` (list of dicts) and ``timing``. The error
        text names files by their file name only (never their folders).
    """
    if isinstance(adapter, str) and adapter == "worker":
        adapter = _WORKER_ADAPTER
    base = {"row": task.row, "case_id": task.case_id, "from_cache": False, "input_hash": ""}
    if task.problem:
        return {**base, "status": "failed", "error": _error_text(task.problem, task)}
    try:
        key = input_hash(task.paths, settings, cache_extra)
        base["input_hash"] = key[:16]
        cache = CaseCache(cache_dir) if cache_dir else None
        if cache is not None:
            hit = cache.get(key)
            if hit is not None:
                return {**hit, **base, "from_cache": True}
        record = _compute_case(task.case_id, task.paths, settings, adapter)
        if cache is not None:
            cache.put(key, record)
        return {**record, **base}
    except Exception as exc:  # noqa: BLE001 - one bad case must not abort the audit
        msg = str(exc)
        if task.case_id not in msg:
            msg = f"case {task.case_id!r}: {type(exc).__name__}: {msg}"
        return {**base, "status": "failed", "error": _error_text(msg, task)}


def _error_text(message: str, task: CaseTask) -> str:
    """A failed case's error as stored in results: paths reduced to their file names.

    Results and reports are shared beyond the machine that ran the audit, and hospital folder
    names often carry patient names or record numbers.
    """
    return redact_paths(message, task.paths.values())


# --------------------------------------------------------------------------------------------
# executors


def _set_worker_adapter(adapter: Any) -> None:
    global _WORKER_ADAPTER
    _WORKER_ADAPTER = adapter
    try:  # one process per core: keep torch from oversubscribing the cores
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def _serial(fn: Callable[[CaseTask], dict], tasks: Iterable[CaseTask]) -> Iterator[dict]:
    for task in tasks:
        yield fn(task)


def _torch_single_thread(stream: Iterator[dict]) -> Iterator[dict]:
    """Run stored-prediction work with one torch thread, restoring the setting afterwards.

    Loading and evaluation only touch torch for small tensor operations, where intra-op
    threads cost more in synchronisation than they win (measured 2x slower on a busy 2-core
    machine); model inference (an adapter) keeps the caller's setting.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield from stream
    finally:
        torch.set_num_threads(before)


def _process(
    fn: Callable[..., dict], tasks: list[CaseTask], workers: int, adapter: Any,
    mp_context: str | None,
) -> Iterator[dict]:
    import multiprocessing as mp

    if mp_context is None:
        # fork is cheap and safe for numpy/scipy work; torch inference wants a fresh process.
        mp_context = "spawn" if adapter is not None else ("fork" if os.name == "posix" else "spawn")
    ctx = mp.get_context(mp_context)
    # Small chunks amortise the inter-process round trip; several chunks per worker keep the
    # load balanced when cases differ in cost.
    size = max(1, min(8, len(tasks) // (8 * workers)))
    chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                             initializer=_set_worker_adapter, initargs=(adapter,)) as pool:
        worker_fn = partial(_chunk, partial(fn, adapter="worker") if adapter is not None else fn)
        # Bounded submission: a few chunks in flight per worker, results streamed back.
        pending: set = set()
        limit = max(4 * workers, 8)
        try:
            for chunk in chunks:
                pending.add(pool.submit(worker_fn, chunk))
                if len(pending) >= limit:
                    done = next(as_completed(pending))
                    pending.remove(done)
                    yield from done.result()
            for fut in as_completed(pending):
                yield from fut.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _chunk(fn: Callable[[CaseTask], dict], tasks: list[CaseTask]) -> list[dict]:
    return [fn(task) for task in tasks]


def _dask(fn: Callable[..., dict], tasks: list[CaseTask], client: Any, adapter: Any) -> Iterator[dict]:
    from distributed import as_completed as dask_completed

    kwargs = {}
    if adapter is not None:
        kwargs["adapter"] = client.scatter(adapter, broadcast=True)
    futures = client.map(fn, tasks, pure=False, **kwargs)
    try:
        for fut in dask_completed(futures):
            yield fut.result()
    except BaseException:
        client.cancel(futures)
        raise


def run_tasks(
    tasks: list[CaseTask],
    settings: Mapping[str, Any],
    *,
    executor: str | Any = "serial",
    workers: int | None = None,
    cache_dir: str | None = None,
    adapter: Any = None,
    cache_extra: str = "",
    progress: bool = True,
    mp_context: str | None = None,
) -> list[dict[str, Any]]:
    """Evaluate every task and return the records in manifest-row order.

    Parameters
    ----------
    tasks : list of CaseTask
    settings : mapping
        Case-level settings.
    executor : {"serial", "process", "dask"} or distributed.Client
        Where the work runs; ``"dask"`` connects to the default client
        (``distributed.get_client()``), or pass a client.
    workers : int, optional
        Processes for ``"process"`` (default: all cores).
    cache_dir : str, optional
        Per-case cache folder (resume).
    adapter : SegmentationAdapter, optional
        Model for inference.
    cache_extra : str
        Part of every cache key (model fingerprint, package version).
    progress : bool
        Show a tqdm progress bar (notebook-aware).
    mp_context : str, optional
        Multiprocessing start method for ``"process"``.
    """
    from tqdm.auto import tqdm

    fn = partial(evaluate_task, settings=dict(settings), cache_dir=cache_dir,
                 cache_extra=cache_extra)
    if executor == "serial":
        stream = _serial(partial(fn, adapter=adapter), tasks)
        if adapter is None:
            stream = _torch_single_thread(stream)
    elif executor == "process":
        n = int(workers or os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f"workers: expected a positive number of processes, got {workers!r}")
        stream = _process(fn, tasks, n, adapter, mp_context)
    elif executor == "dask" or hasattr(executor, "map") and hasattr(executor, "scatter"):
        client = executor
        if executor == "dask":
            from distributed import get_client

            client = get_client()
        stream = _dask(fn, tasks, client, adapter)
    else:
        raise ValueError(
            f"executor: expected one of {EXECUTORS} or a distributed.Client, got {executor!r}"
        )
    records: dict[int, dict[str, Any]] = {}
    with tqdm(total=len(tasks), desc="audit", unit="case", disable=not progress) as bar:
        for rec in stream:
            if rec["row"] in records:  # defensive: a case is never counted twice
                continue
            records[rec["row"]] = rec
            bar.update(1)
    missing = [t.case_id for t in tasks if t.row not in records]
    if missing:  # pragma: no cover - every executor yields one record per task
        raise RuntimeError(f"audit: no result for cases {missing[:10]}")
    return [records[t.row] for t in tasks]
