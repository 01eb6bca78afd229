"""Per-case audit work and the executors that run it (serial, process pool, Dask).

Workers receive a case's file paths, never its volumes: each worker loads, evaluates and
returns a small record (metrics, lesion rows, per-stage timings). Tasks are generated lazily
from the manifest and at most a few chunks per worker are in flight (back-pressure), so
neither tasks nor futures nor records accumulate in the client: each record goes to a sink
(the audit streams it to disk) the moment it arrives. Every record is keyed by its manifest
row, so a case is counted exactly once however the executor orders the work, and a failure
stays in its own row with its error text.

Faults are split by whose they are. A case's bad data (unreadable file, wrong grid, a case
that exceeds ``case_timeout``) fails that row. A fault of the machine (the cache or the
outputs cannot be written: disk full, read-only, permission denied) raises
:class:`~medseg_xai.audit.stream.InfrastructureError` and aborts the audit, because every
later case would fail the same way and the rows would blame the data.

Inference runs with a fixed torch thread count (:data:`TORCH_THREADS`) whichever executor
runs it, so serial, process-pool and Dask audits give identical numbers.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from medseg_xai._privacy import redact_paths
from medseg_xai.audit import workerstate
from medseg_xai.audit.cache import CaseCache, input_hash
from medseg_xai.audit.stream import InfrastructureError, infrastructure_error
from medseg_xai.cohort import (
    PATH_COLUMNS,
    READ_COLUMNS,
    REFERENCE_THRESHOLD,
    Cohort,
    load_case_from_paths,
    reader_columns,
)

__all__ = ["CASE_SETTING_KEYS", "EXECUTORS", "STAGES", "TORCH_THREADS", "CaseTask", "CaseTimeout",
           "evaluate_task", "iter_tasks", "run_tasks", "tasks_for"]

EXECUTORS = ("serial", "process", "dask")
# Settings that change a case's record (and therefore its cache key).
CASE_SETTING_KEYS = ("labels", "tolerance", "percentile", "empty", "connectivity",
                     "overlap_threshold", "binarize", "convention", "use_subvoxels", "matching",
                     "iou_threshold", "reference", "allow_missing_readers", "lesion_labels",
                     "reference_threshold")
#: Per-case stage timings (seconds) in every record's ``timing``: loading the volumes, model
#: inference (only with an adapter), the metrics, lesion matching, and the cache (input hash,
#: lookup, store); ``total_s`` is the whole case as the worker saw it.
STAGES = ("load_s", "inference_s", "metrics_s", "lesions_s", "cache_s", "total_s")
#: Torch intra-op threads during audit work, on every executor: results do not depend on
#: which executor ran the case, and worker processes do not oversubscribe the cores.
TORCH_THREADS = 1



@dataclass(frozen=True)
class CaseTask:
    """What a worker needs for one case: its row, id, absolute paths and any up-front problem."""

    row: int
    case_id: str
    paths: Mapping[str, str | None]
    problem: str | None = None
    #: Reading options of the row (``spacing``, ``frame_axis``, ``frame``; see
    #: :data:`medseg_xai.cohort.READ_COLUMNS`); None when the manifest has none.
    read: Mapping[str, Any] | None = None


def _abs(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value)
    if not text.strip():
        return None
    # Absolute before the task leaves the client: a Dask worker has another working folder.
    return os.path.abspath(text)


def iter_tasks(cohort: Cohort, allow_missing_readers: bool = False) -> Iterator[CaseTask]:
    """One task per manifest row, generated lazily (nothing per case is held up front).

    Rows with validation problems carry their message; paths are made absolute here, in the
    client, so a relative manifest root behaves the same on every executor. With
    ``allow_missing_readers`` a missing or empty ``label_<reader>`` file is no problem of the
    row: its path is dropped (not hashed) and the case is analysed with the readers present.
    """
    readers = reader_columns(cohort.manifest.columns)
    skip = set(readers) if allow_missing_readers else set()
    problems: dict[str, list[str]] = {}
    absent: dict[str, set[str]] = {}
    for cid, fld, msg in zip(cohort.problems["case_id"], cohort.problems["field"],
                             cohort.problems["message"]):
        if fld in skip:
            absent.setdefault(cid, set()).add(fld)
            continue
        problems.setdefault(cid, []).append(msg)
    manifest = cohort.manifest
    cols = {c: (manifest[c] if c in manifest.columns else None) for c in (*PATH_COLUMNS, *readers)}
    read_cols = {c: manifest[c] for c in READ_COLUMNS if c in manifest.columns}
    for i, cid in enumerate(manifest["case_id"]):
        paths = {c: (None if col is None else _abs(col.iat[i])) for c, col in cols.items()}
        for fld in absent.get(cid, ()):
            paths[fld] = None
        msgs = problems.get(cid)
        read = _read_options({c: col.iat[i] for c, col in read_cols.items()})
        yield CaseTask(i, str(cid), paths, "; ".join(msgs) if msgs else None, read)


def _read_options(cells: Mapping[str, Any]) -> dict[str, Any] | None:
    """A row's non-empty reading options as JSON-friendly values (they are hashed)."""
    out: dict[str, Any] = {}
    for k, v in cells.items():
        if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
            continue
        out[k] = int(v) if k in ("frame", "frame_axis") else str(v)
    return out or None


def tasks_for(cohort: Cohort, allow_missing_readers: bool = False) -> list[CaseTask]:
    """All tasks of a cohort as a list (see :func:`iter_tasks`)."""
    return list(iter_tasks(cohort, allow_missing_readers))


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


def _infer(adapter: Any, image: np.ndarray, feature_layer: str | None = None,
           threshold: float | None = None, tta: Any = None, connectivity: int | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Run the model once: label map, foreground probability, class probabilities, timing.

    With ``feature_layer`` a forward hook pools that layer's output during the same pass
    (``timing["features"]``, ``timing["feature_layer"]``; popped by the caller). With ``tta``
    (uncertainty settings for which :func:`~medseg_xai.explain.uncertainty.joins_plain_pass`
    holds) the image goes through the model in one batch with its augmented copies
    (:func:`~medseg_xai.explain.uncertainty.plain_and_uncertainty`): ``timing["joint"]`` holds
    ``(CaseUncertainty, seconds)`` for the caller, ``inference_s`` is the plain image's share
    of that batch (its seconds / batch size) and the seconds are the rest of the call, so
    ``inference_s + uncertainty_s`` is all the model time of the case.
    """
    import torch

    hook: Any = None
    if feature_layer:
        from medseg_xai.explain.features import FeatureHook

        hook = FeatureHook.for_audit(adapter, image.shape, feature_layer)

    cuda = torch.cuda.is_available() and str(getattr(adapter, "device", "cpu")).startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _peak_reset()
    p, elapsed, joint = _forward(adapter, image, hook, tta, connectivity, cuda)
    from medseg_xai.decide import DecisionRules, labels_from_probabilities

    activation = getattr(adapter, "activation", "softmax")
    # the toolkit's one decision rule: the plan's threshold, else the adapter's, else 0.5 / argmax
    pred = labels_from_probabilities(p, DecisionRules(threshold=threshold),
                                     adapter).astype(np.int16)
    if p.shape[0] == 1:
        fg = p[0]
    elif activation == "sigmoid":
        fg = p.max(axis=0)
    else:
        fg = 1.0 - p[0]
    timing: dict[str, Any] = {"inference_s": elapsed, "peak_memory_mb": _peak_rss_mb()}
    timing["n_channels"] = int(p.shape[0])  # checked against activation and labels
    if cuda:
        timing["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if joint is not None:
        timing["joint"] = joint
    vector = None
    if hook is not None:
        try:
            vector = hook.vector
        except ValueError:  # the layer never ran or gave no feature map: no features
            vector = None
    if vector is not None:
        timing["features"] = [float(v) for v in vector]
        timing["feature_layer"] = hook.layer
    return pred, fg.astype(np.float32), p, timing


def _forward(adapter: Any, image: np.ndarray, hook: Any, tta: Any, connectivity: int | None,
             cuda: bool) -> tuple[np.ndarray, float, tuple[Any, float] | None]:
    """The plain probabilities ``(K, *spatial)``, the plain pass's seconds and, with ``tta``,
    ``(CaseUncertainty, seconds of the rest)`` from the same batched passes."""
    import contextlib

    import torch

    if tta is not None:
        from medseg_xai.explain.uncertainty import plain_and_uncertainty

        r = plain_and_uncertainty(adapter, image, tta, connectivity=connectivity, hook=hook)
        return r.probabilities, r.plain_seconds, (r.uncertainty, r.seconds - r.plain_seconds)
    start = time.perf_counter()
    with hook or contextlib.nullcontext():
        probs = adapter.probabilities(image)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return probs.detach().cpu().numpy()[0], elapsed, None


def _compute_case(
    case_id: str, paths: Mapping[str, str | None], settings: Mapping[str, Any], adapter: Any
) -> dict[str, Any]:
    """Load, (infer,) evaluate and match lesions of one case; raises on any problem.

    The record's ``timing`` holds the seconds of each stage (:data:`STAGES`).
    """
    from medseg_xai.decide import DecisionRules, lesion_table
    from medseg_xai.metrics import evaluate_case, lesion_summary

    clock = time.perf_counter
    t0 = clock()
    case = _load_case(case_id, paths, settings)
    timing: dict[str, float] = {"load_s": clock() - t0}
    labels = settings.get("labels")
    features = feature_layer = joint = None
    if adapter is not None:
        adapter, pred, fg_prob, class_probs, infer_timing = _model_outputs(case_id, case,
                                                                           settings, adapter)
        joint = infer_timing.pop("joint", None)
        features = infer_timing.pop("features", None)
        feature_layer = infer_timing.pop("feature_layer", None)
        timing.update(infer_timing)
    else:
        pred, fg_prob, class_probs = _stored_outputs(case_id, case)
    ref = case.label
    reader_ctx = None
    if case.readers or case.missing_readers or settings.get("reference"):
        from medseg_xai.audit.readers import case_reference  # several readers (audit.readers)

        ref, reader_ctx = case_reference(case, settings)
    if labels is None:
        pred_eval, ref_eval = pred > 0, ref > 0
        probs_eval = fg_prob
    else:
        pred_eval, ref_eval = pred, ref
        probs_eval = class_probs
    t0 = clock()
    metrics = evaluate_case(
        pred_eval, ref_eval, case.spacing, labels,
        tolerance=settings["tolerance"], percentile=settings["percentile"],
        empty=settings["empty"], probabilities=probs_eval,
        convention=settings.get("convention", "monai"),
        use_subvoxels=settings.get("use_subvoxels", False),
    )
    timing["metrics_s"] = clock() - t0
    t0 = clock()
    pred_fg, ref_fg = _lesion_foregrounds(pred, ref, settings)
    table = lesion_table(pred_fg, ref_fg, case.spacing, DecisionRules.from_settings(settings),
                         probabilities=None if fg_prob is None else np.clip(fg_prob, 0.0, 1.0))
    summary = lesion_summary(table, n_cases=1)
    timing["lesions_s"] = clock() - t0
    reader_part = None
    if reader_ctx is not None:  # agreement, model vs readers: counted with the metrics
        from medseg_xai.audit.readers import case_readers

        t0 = clock()
        reader_part = case_readers(pred_fg, ref_fg, reader_ctx, case.spacing, settings, table,
                                   {**metrics, **summary} if labels is None else None)
        timing["metrics_s"] += clock() - t0
    record = _ok_record(case, ref, metrics, summary, table)
    if any(settings.get(k) for k in ("uncertainty", "calibration_bins", "properties")):
        from medseg_xai.audit.failure import case_parts  # issue 27: only when asked

        extra, timing["uncertainty_s"] = case_parts(case, ref, settings, adapter, class_probs,
                                                    probs_eval, record["lesions"],
                                                    uncertainty=joint)
        record.update(extra)
    if adapter is not None and features is not None:
        record["features"] = features
        record["feature_layer"] = feature_layer
    record["timing"] = timing
    record.update(reader_part or {})
    return record


def _load_case(case_id: str, paths: Mapping[str, str | None], settings: Mapping[str, Any]) -> Any:
    """Read one case's volumes with the reading options held in ``settings``."""
    return load_case_from_paths(case_id, paths, labels=settings.get("labels"),
                                binarize=bool(settings.get("binarize")),
                                allow_missing_readers=bool(settings.get("allow_missing_readers")),
                                read=settings.get("read"),
                                reference_threshold=float(settings.get("reference_threshold",
                                                                       REFERENCE_THRESHOLD)))


def _model_outputs(
    case_id: str, case: Any, settings: Mapping[str, Any], adapter: Any
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Run the adapter on a case: bound adapter, label map, probabilities and timing."""
    import torch

    from medseg_xai.audit.model_checks import case_seed, check_output_channels

    torch.manual_seed(case_seed(settings.get("seed", 0), case_id))  # stochastic layers
    bind = getattr(adapter, "with_geometry", None)  # the case's spacing and affine
    adapter = bind(case.spacing, case.affine) if callable(bind) else adapter
    pred, fg_prob, class_probs, infer_timing = _infer(adapter, case.image,
                                                      settings.get("feature_layer"),
                                                      settings.get("threshold"),
                                                      _joint_tta(adapter, case.image, settings),
                                                      settings.get("connectivity"))
    check_output_channels(case_id, infer_timing.pop("n_channels"),
                          getattr(adapter, "activation", "softmax"), settings.get("labels"),
                          bool(settings.get("binarize")))
    return adapter, pred, fg_prob, class_probs, infer_timing


def _joint_tta(adapter: Any, image: np.ndarray, settings: Mapping[str, Any]) -> Any:
    """The uncertainty settings when the audit's own pass can go in one batch with the
    augmented copies (test-time augmentation of the audited model alone, no MC dropout, a
    toolkit adapter), else None (the uncertainty runs after, reusing the pass)."""
    unc = settings.get("uncertainty")
    if not unc:
        return None
    from medseg_xai.audit.members import case_members
    from medseg_xai.explain.uncertainty import joins_plain_pass

    members, _ = case_members(adapter)
    return unc if members is None and joins_plain_pass(adapter, image, unc) else None


def _stored_outputs(
    case_id: str, case: Any
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A case's stored label map, foreground and class probabilities (no model)."""
    if case.prediction is None:
        raise ValueError(
            f"case {case_id!r}: prediction: expected a stored prediction path or an adapter, "
            "got neither"
        )
    pred = case.prediction
    fg_prob = class_probs = None
    if case.probability is not None:
        p = case.probability
        if p.ndim == case.image.ndim - 1:
            fg_prob = p
        elif p.shape[0] == 1:
            fg_prob = p[0]
        else:
            class_probs = p
            fg_prob = 1.0 - p[0]
    return pred, fg_prob, class_probs


def _lesion_foregrounds(
    pred: np.ndarray, ref: np.ndarray, settings: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and reference foregrounds that lesions are matched on."""
    if "lesion_labels" in settings:  # only the lesion classes (medseg_xai.classes)
        from medseg_xai.classes import lesion_foreground

        return (lesion_foreground(pred, settings["lesion_labels"]),
                lesion_foreground(ref, settings["lesion_labels"]))
    from medseg_xai.decide import foreground

    labels = settings.get("labels")
    return foreground(pred, labels), foreground(ref, labels)


def _ok_record(case: Any, ref: np.ndarray, metrics: Mapping[str, Any],
               summary: Mapping[str, Any], table: Any) -> dict[str, Any]:
    """An evaluated case's record: metrics, lesion summary, grid, reading notes, lesions."""
    record: dict[str, Any] = {"status": "ok", "error": ""}
    record.update({k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()})
    record.update(summary)
    record["shape"] = "x".join(str(s) for s in ref.shape)
    record["spacing"] = ",".join(f"{s:g}" for s in case.spacing)
    if case.notes:  # what the readers assumed (default spacing, soft reference, binarize)
        record["read_notes"] = "; ".join(case.notes)
    record["lesions"] = _lesion_records(table)
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


class CaseTimeout(BaseException):  # noqa: N818 - reads as "the case timed out"
    """A case ran past ``case_timeout`` (raised inside the case's own work).

    A ``BaseException`` so that the readers' broad ``except Exception`` (which turn any reader
    error into "could not read") cannot swallow it.
    """


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in this thread after ``seconds``.

    In a process's main thread (serial runs, pool workers) a ``SIGALRM`` timer interrupts the
    work, also a blocking system call. In other threads (Dask workers run tasks in threads) the
    exception is raised asynchronously at the next Python instruction, which cannot interrupt a
    single long C call; paths that could block forever (FIFOs, devices) are refused up front.
    """
    if not seconds:
        yield
        return
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def _alarm(signum: int, frame: Any) -> None:
            raise CaseTimeout

        previous = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, float(seconds))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0.0)
            signal.signal(signal.SIGALRM, previous)
        return
    tid = ctypes.c_ulong(threading.get_ident())
    lock = threading.Lock()
    state = {"done": False, "fired": False}

    def _fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(tid, ctypes.py_object(CaseTimeout))

    timer = threading.Timer(float(seconds), _fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        with lock:
            state["done"] = True
            if state["fired"]:  # not yet delivered: withdraw it so it cannot escape the case
                ctypes.pythonapi.PyThreadState_SetAsyncExc(tid, None)


def _open_cache(cache_dir: str | None) -> CaseCache | None:
    """The per-case cache in ``cache_dir`` (None without one); failing to open it aborts."""
    if not cache_dir:
        return None
    try:
        return CaseCache(cache_dir)
    except OSError as exc:
        raise infrastructure_error(exc, "the cache") from exc


def _cache_hit(hit: Mapping[str, Any], base: Mapping[str, Any], inferred: bool,
               spent: float) -> dict[str, Any]:
    """A cached record returned as is, its stage timings zero and the lookup time as cache."""
    timing = {k: 0.0 for k in STAGES if k != "inference_s" or inferred}
    timing.update(cache_s=spent, total_s=spent)
    return {**hit, **base, "from_cache": True, "timing": timing}


def _cache_write(cache: CaseCache, key: str, record: Mapping[str, Any]) -> None:
    try:
        cache.put(key, record)
    except OSError as exc:  # our own output: the machine, not the case, is at fault
        raise infrastructure_error(exc, "the cache") from exc


def evaluate_task(
    task: CaseTask,
    settings: Mapping[str, Any],
    cache_dir: str | None = None,
    adapter: Any = None,
    cache_extra: str = "",
    case_timeout: float | None = None,
) -> dict[str, Any]:
    """Evaluate one case, isolating any failure of its data into a ``status="failed"`` record.

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
    case_timeout : float, optional
        Seconds the case's loading, inference and evaluation may take; past it the case fails
        with a message saying so.

    Returns
    -------
    dict
        ``row, case_id, status, error, input_hash, from_cache``, ``timing`` (seconds per stage,
        :data:`STAGES`) and, for evaluated cases, metric values, lesion summary and ``lesions``
        (list of dicts). The error text names files by their file name only (never folders).

    Raises
    ------
    InfrastructureError
        When the cache cannot be written (disk full, read-only, permission denied).
    """
    adapter = workerstate.resolve(adapter)  # "worker": the one the initializer installed
    clock = time.perf_counter
    start = clock()
    base = {"row": task.row, "case_id": task.case_id, "from_cache": False, "input_hash": ""}
    if task.problem:
        return {**base, "status": "failed", "error": _error_text(task.problem, task, settings),
                "timing": {"total_s": clock() - start}}
    try:
        if task.read:  # only then: the cache keys of rows without reading options are unchanged
            settings = {**settings, "read": dict(task.read)}
        key = input_hash(task.paths, settings, cache_extra)
        base["input_hash"] = key[:16]
        cache = _open_cache(cache_dir)
        hit = None if cache is None else cache.get(key)
        if hit is not None:
            return _cache_hit(hit, base, adapter is not None, clock() - start)
        hashed = clock() - start
        with _time_limit(case_timeout):
            record = _compute_case(task.case_id, task.paths, settings, adapter)
        t0 = clock()
        if cache is not None:
            _cache_write(cache, key, record)
        record["timing"]["cache_s"] = hashed + clock() - t0
        record["timing"]["total_s"] = clock() - start
        return {**record, **base}
    except InfrastructureError:
        raise
    except CaseTimeout:
        msg = (f"case {task.case_id!r}: timeout: expected the case to finish within "
               f"{case_timeout:g} s (case_timeout), it did not")
        return {**base, "status": "failed", "error": msg, "timing": {"total_s": clock() - start}}
    except Exception as exc:  # noqa: BLE001 - one bad case must not abort the audit
        msg = _missing_file(exc, task) or str(exc)
        if task.case_id not in msg:
            msg = f"case {task.case_id!r}: {type(exc).__name__}: {msg}"
        return {**base, "status": "failed", "error": _error_text(msg, task, settings),
                "timing": {"total_s": clock() - start}}


def _missing_file(exc: BaseException, task: CaseTask) -> str | None:
    """A file that vanished between the manifest check and its read (deleted or moved while
    the audit ran): the case and field named, not a raw ``[Errno 2]``."""
    if not isinstance(exc, FileNotFoundError):
        return None
    name = str(exc.filename or "")
    field = next((k for k, v in task.paths.items() if v and name and str(v) == name), "input")
    return (f"case {task.case_id!r}: {field} file not found: expected a file at {name!r} "
            "(deleted or moved while the audit ran?)")


def _error_text(message: str, task: CaseTask, settings: Mapping[str, Any] | None = None) -> str:
    """A failed case's error as stored in results: paths reduced to their file names, and with
    pseudonymised ids no file name at all (file names often hold the original id).

    Results and reports are shared beyond the machine that ran the audit, and hospital folder
    names often carry patient names or record numbers.
    """
    if settings and settings.get("pseudonymised"):
        from medseg_xai._privacy import strip_file_names

        for path in sorted((str(p) for p in task.paths.values() if p), key=len, reverse=True):
            message = message.replace(path, "<file>")
        return strip_file_names(message)
    return redact_paths(message, task.paths.values())



# --------------------------------------------------------------------------------------------
# executors

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker process end when the audit's process ends, even by ``kill -9``.

    Linux: the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``). Elsewhere a
    daemon thread polls the parent id. Either way no orphaned worker keeps its memory.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - exotic libc
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    if not sys.platform.startswith("linux"):  # pragma: no cover - macOS, BSD
        def _watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=_watch, daemon=True, name="medseg-xai-parent-watch").start()


def _fix_threads(torch_needed: bool = True) -> None:
    """Pin torch's intra-op threads (identical numbers on every executor).

    Without a model nothing runs torch: a worker that has not imported it does not import it
    (it took ~1.5 s per forked worker, a quarter of a 2,000-case audit's time on one worker).
    """
    if not torch_needed and "torch" not in sys.modules:
        return
    try:  # a plain import: it waits for another thread's import of torch to finish
        import torch
    except ImportError:  # pragma: no cover
        return
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)


def _init_worker(adapter: Any, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    workerstate.ADAPTER = adapter
    _fix_threads(adapter is not None)


@contextmanager
def _pinned_threads(torch_needed: bool = True) -> Iterator[None]:
    """Serial runs pin torch's threads in the caller's process and restore them afterwards."""
    if not torch_needed and "torch" not in sys.modules:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batches(tasks: Iterable[CaseTask], size: int) -> Iterator[list[CaseTask]]:
    batch: list[CaseTask] = []
    for task in tasks:
        batch.append(task)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


#: Most tasks per chunk. A chunk amortises the round trip to a worker; several chunks per worker
#: keep the load balanced when cases differ in cost. Dask's round trip goes through the
#: scheduler (a few ms of client and scheduler CPU per future), so its chunks are larger: with
#: chunks of 8 the scheduler's share held 2 workers on 2 cores at 1.64x one worker, with 32 at
#: 1.80x (benchmarks/bench_audit_scale.py throughput, warm workers).
CHUNK_CAP = {"process": 8, "dask": 32}


def _chunk_size(n_tasks: int, slots: int, cap: int = 8) -> int:
    return max(1, min(cap, n_tasks // (4 * max(slots, 1))))


def _chunk(fn: Callable[..., dict], tasks: list[CaseTask], adapter: Any = None) -> list[dict]:
    _fix_threads(adapter is not None)
    if adapter is None:
        return [fn(task) for task in tasks]
    return [fn(task, adapter=adapter) for task in tasks]


def _serial(fn: Callable[..., dict], tasks: Iterable[CaseTask], adapter: Any) -> Iterator[dict]:
    with _pinned_threads(adapter is not None):
        for task in tasks:
            yield fn(task, adapter=adapter)


def _process(
    fn: Callable[..., dict], tasks: Iterable[CaseTask], n_tasks: int, workers: int, adapter: Any,
    mp_context: str | None,
) -> Iterator[dict]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if mp_context is None:
        # fork is cheap and safe for numpy/scipy work; torch inference wants a fresh process.
        mp_context = "spawn" if adapter is not None else ("fork" if os.name == "posix" else "spawn")
    ctx = mp.get_context(mp_context)
    if ctx.get_start_method() == "fork":
        _preload()
    worker_fn = partial(_chunk, fn, adapter="worker" if adapter is not None else None)
    limit = 2 * workers  # chunks in flight: enough to keep every worker busy, no more
    pending: set = set()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(adapter, os.getpid())) as pool:
        try:
            for chunk in _batches(tasks, _chunk_size(n_tasks, workers, CHUNK_CAP["process"])):
                pending.add(pool.submit(worker_fn, chunk))
                while len(pending) >= limit:  # back-pressure: wait before submitting more
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        yield from fut.result()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield from fut.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _preload() -> None:
    """Build what every case needs before a pool forks, so that the workers inherit it.

    MONAI's loader imports torch and MONAI: about 3 s and a few hundred MB in every worker that
    builds its own (with 2 workers, 2,000 small cases ran at 1.65x one worker instead of 1.9x).
    """
    from medseg_xai.io.nifti import _loader

    for is_image in (True, False):
        _loader(is_image)


def dask_slots(client: Any) -> int:
    """Threads of all workers of a Dask client (its real parallelism)."""
    try:
        return int(sum(client.nthreads().values())) or 1
    except Exception:  # noqa: BLE001 - a client without the call: count it as one
        return 1


def _dask(fn: Callable[..., dict], tasks: Iterable[CaseTask], n_tasks: int, client: Any,
          adapter: Any) -> Iterator[dict]:
    from distributed import wait

    slots = dask_slots(client)
    kwargs = {}
    if adapter is not None:
        kwargs["adapter"] = client.scatter(adapter, broadcast=True)
    limit = 2 * slots
    pending: set = set()
    try:
        for chunk in _batches(tasks, _chunk_size(n_tasks, slots, CHUNK_CAP["dask"])):
            pending.add(client.submit(_chunk, fn, chunk, pure=False, **kwargs))
            while len(pending) >= limit:  # back-pressure: no futures pile up in the client
                done, pending = wait(pending, return_when="FIRST_COMPLETED")
                for fut in done:
                    yield from fut.result()
                    fut.release()
        while pending:
            done, pending = wait(pending, return_when="FIRST_COMPLETED")
            for fut in done:
                yield from fut.result()
                fut.release()
    except BaseException:
        if pending:
            client.cancel(list(pending))
        raise


@dataclass
class RunInfo:
    """How the per-case phase ran: the executor and parallelism actually used, counts, and the
    seconds summed over cases per stage."""

    executor: str
    workers: int
    n_cases: int = 0
    n_from_cache: int = 0
    stage_seconds: dict[str, float] | None = None


def _start(
    executor: str | Any, fn: Callable[..., dict[str, Any]], tasks: Iterable[CaseTask],
    n_tasks: int, workers: int | None, adapter: Any, mp_context: str | None,
    case_timeout: float | None,
) -> tuple[RunInfo, Iterator[dict[str, Any]]]:
    """Start the executor's stream of records and the run's :class:`RunInfo`."""
    if executor in ("serial", "process") and case_timeout:
        # killable workers: the limit holds for native code that never returns (isolated.py)
        from medseg_xai.audit.isolated import isolated

        n = 1 if executor == "serial" else int(workers or os.cpu_count() or 1)
        info = RunInfo(executor, n)
        stream = isolated(fn, tasks, n, adapter, case_timeout, mp_context, init=_init_worker,
                          preload=_preload)
    elif executor == "serial":
        info = RunInfo("serial", 1)
        stream = _serial(fn, tasks, adapter)
    elif executor == "process":
        n = int(workers or os.cpu_count() or 1)
        info = RunInfo("process", n)
        stream = _process(fn, tasks, n_tasks, n, adapter, mp_context)
    elif executor == "dask" or hasattr(executor, "submit") and hasattr(executor, "scatter"):
        client = executor
        if executor == "dask":
            from distributed import get_client

            client = get_client()
        info = RunInfo("dask", dask_slots(client))
        stream = _dask(fn, tasks, n_tasks, client, adapter)
    else:
        raise ValueError(
            f"executor: expected one of {EXECUTORS} or a distributed.Client, got {executor!r}"
        )
    return info, stream


def _collect(
    stream: Iterable[dict[str, Any]], info: RunInfo, n_tasks: int,
    sink: Callable[[dict[str, Any]], None] | None, progress: bool,
) -> tuple[dict[int, dict[str, Any]] | None, dict[str, float]]:
    """Count each row's record once, into ``sink`` or a dict by row; summed stage seconds."""
    from tqdm.auto import tqdm

    collected: dict[int, dict[str, Any]] | None = {} if sink is None else None
    seen = bytearray(n_tasks)  # one byte per row: a case is never counted twice
    sums = dict.fromkeys(STAGES, 0.0)
    with tqdm(total=n_tasks, desc="audit", unit="case", disable=not progress) as bar:
        for rec in stream:
            row = rec["row"]
            if seen[row]:
                continue
            seen[row] = 1
            info.n_cases += 1
            info.n_from_cache += bool(rec.get("from_cache"))
            for k, v in (rec.get("timing") or {}).items():
                if k in sums and v == v:
                    sums[k] += float(v)
            if collected is not None:
                collected[row] = rec
            else:
                sink(rec)  # type: ignore[misc]
            bar.update(1)
    if info.n_cases != n_tasks:  # pragma: no cover - every executor yields one record per task
        missing = [i for i in range(n_tasks) if not seen[i]][:10]
        raise RuntimeError(f"audit: no result for rows {missing}")
    return collected, sums


def run_tasks(
    tasks: Iterable[CaseTask],
    settings: Mapping[str, Any],
    *,
    executor: str | Any = "serial",
    workers: int | None = None,
    cache_dir: str | None = None,
    adapter: Any = None,
    cache_extra: str = "",
    progress: bool = True,
    mp_context: str | None = None,
    case_timeout: float | None = None,
    sink: Callable[[dict[str, Any]], None] | None = None,
    n_tasks: int | None = None,
) -> list[dict[str, Any]] | RunInfo:
    """Evaluate every task; records go to ``sink`` as they arrive (or are returned in order).

    Parameters
    ----------
    tasks : iterable of CaseTask
        Consumed lazily (a generator keeps the client's memory flat).
    settings : mapping
        Case-level settings.
    executor : {"serial", "process", "dask"} or distributed.Client
        Where the work runs; ``"dask"`` connects to the default client
        (``distributed.get_client()``), or pass a client.
    workers : int, optional
        Processes for ``"process"`` (default: all cores); must be >= 1.
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
    case_timeout : float, optional
        Per-case time limit in seconds (the case fails past it).
    sink : callable, optional
        Receives each record once, in completion order; then a :class:`RunInfo` is returned.
        Without a sink the records are returned as a list in task order.
    n_tasks : int, optional
        Number of tasks when ``tasks`` is a generator (progress bar, chunk size).

    Raises
    ------
    InfrastructureError
        The cache could not be written (the audit aborts).
    ValueError
        Bad executor or worker count.
    """
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer))
                                or workers < 1):
        raise ValueError(f"workers: expected a positive number of processes, got {workers!r}")
    if n_tasks is None:
        tasks = list(tasks)
        n_tasks = len(tasks)
    fn = partial(evaluate_task, settings=dict(settings), cache_dir=cache_dir,
                 cache_extra=cache_extra, case_timeout=case_timeout)
    info, stream = _start(executor, fn, tasks, n_tasks, workers, adapter, mp_context,
                          case_timeout)
    collected, sums = _collect(stream, info, n_tasks, sink, progress)
    info.stage_seconds = {k: round(v, 6) for k, v in sums.items()
                          if k != "inference_s" or adapter is not None}
    if collected is not None:
        return [collected[i] for i in range(n_tasks)]
    return info
