"""``audit()``: evaluate every case of a cohort and build the subgroup tables."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata as _md
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai._memory import release_memory, system_arrow_pool
from medseg_xai._privacy import redact_paths
from medseg_xai.audit import analysis
from medseg_xai.audit.criteria import evaluate_criteria, load_criteria, verdicts
from medseg_xai.audit.result import TIMING_COLUMNS, AuditResult, coordinate_columns
from medseg_xai.audit.runner import CASE_SETTING_KEYS, STAGES, iter_tasks, run_tasks
from medseg_xai.audit.strata import check_scalar_columns, parse_strata
from medseg_xai.audit.stream import RecordStream, infrastructure_error, read_chunks, read_records
from medseg_xai.cohort import Cohort

__all__ = ["DEFAULT_METRICS", "audit", "build_result"]

#: Metrics summarised per subgroup when ``metrics=None`` (those present in the cases table).
DEFAULT_METRICS = ("dice", "jaccard", "precision", "recall", "hd95", "assd", "nsd",
                   "abs_volume_diff_mm3", "lesion_sensitivity", "fp_per_case")
_LESION_DROP = ("lesions", "timing", "row", "from_cache", "readers", "reader_lesions")
_READ_CHUNK = 512  # records turned into column arrays at a time when the tables are built


def _version(pkg: str) -> str:
    try:
        return _md.version(pkg)
    except _md.PackageNotFoundError:
        return "not installed"


def _versions() -> dict[str, str]:
    from medseg_xai.versions import library_versions

    return library_versions()


@system_arrow_pool()
def audit(
    cohort: Cohort,
    strata: Sequence[str | Sequence[str]] | str | None = None,
    adapter: Any = None,
    seed: int = 0,
    criteria: Any = None,
    executor: str | Any | None = None,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
    *,
    metrics: Sequence[str] | None = None,
    labels: Sequence[int] | Mapping[int, str] | None = None,
    tolerance: float = 1.0,
    percentile: float = 95,
    empty: str = "worst",
    connectivity: int | None = None,
    overlap_threshold: float = 0.1,
    convention: str = "monai",
    use_subvoxels: bool = False,
    matching: str = "overlap",
    iou_threshold: float = 0.5,
    lesion_size_bins: int | Sequence[float] = 3,
    detection_bins: Sequence[float] = (0, 100, 1000, 10000),
    min_n: int = 10,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    ci_method: str = "BCa",
    test: str = "mannwhitney",
    correction: str = "holm",
    alpha: float = 0.05,
    dask_scheduler: str | None = None,
    progress: bool = True,
    mp_context: str | None = None,
    binarize: bool = False,
    keep_columns: Sequence[str] | None = None,
    case_timeout: float | None = None,
    stream: str | Path | None = None,
    report: Mapping[str, Any] | None = None,
    reference: str | None = None,
    allow_missing_readers: bool = False,
    feature_layer: str | None = "auto",
    feature_reference: Mapping[str, Sequence[Any]] | Sequence[str] | None = None,
    uncertainty: Any = None,
    failure: Any = None,
) -> AuditResult:
    """Audit a segmentation model on a cohort, per case and per subgroup.

    Parameters
    ----------
    cohort : Cohort
        The cases (stored predictions in a ``prediction`` column, or an ``adapter``).
    strata : str or sequence, optional
        Metadata columns (``"device"``), derived strata (``"lesion_size"``, ``"lesion_count"``,
        ``"empty_reference"``) and intersections (``"device x site"``).
    adapter : SegmentationAdapter, optional
        Run inference instead of reading stored predictions; records per-case inference time
        and peak memory.
    seed : int
        Seeds every bootstrap and permutation; same inputs and seed -> same JSON.
    criteria : str, Path, dict, list or "default", optional
        Acceptance criteria (see :mod:`medseg_xai.audit.criteria`).
    executor : {"serial", "process", "dask"} or distributed.Client, optional
        Default: ``"serial"`` when ``workers == 1`` or an adapter runs without ``workers``,
        ``"dask"`` with ``dask_scheduler``, else a process pool.
    workers : int, optional
        Processes of the pool (default: all cores).
    cache_dir : str or Path, optional
        Per-case cache; rerunning an interrupted audit recomputes only missing cases.
    metrics : sequence of str, optional
        Metrics summarised per subgroup (default :data:`DEFAULT_METRICS`).
    labels, tolerance, percentile, empty
        Passed to ``metrics.evaluate_case`` (``empty`` is the empty-mask policy).
    connectivity, overlap_threshold
        Passed to ``metrics.lesions``.
    convention, use_subvoxels
        Surface-metric convention (``"monai"``, ``"medpy"``, ``"deepmind"``,
        ``"metricsreloaded"``, ``"panoptica"``) and MONAI's sub-voxel NSD, passed to
        ``metrics.evaluate_case``; recorded in ``settings``.
    matching, iou_threshold
        Lesion matching mode (``"overlap"``: covered fraction; ``"hungarian"``: one-to-one
        IoU >= ``iou_threshold``), passed to ``metrics.lesions``; recorded in ``settings``.
    lesion_size_bins : int or sequence of float
        Quantile count or edges (mm^3) of the ``lesion_size`` stratum.
    detection_bins : sequence of float
        Lesion-volume edges (mm^3) of the detection table.
    min_n : int
        Groups below it are "insufficient data".
    n_resamples, confidence, ci_method, test, correction, alpha
        Statistics settings (see :func:`medseg_xai.audit.analysis.subgroup_table`).
    dask_scheduler : str, optional
        Address of a Dask scheduler (``"tcp://host:8786"``).
    progress : bool
        Show a progress bar.
    mp_context : str, optional
        Start method of the process pool.
    binarize : bool
        Count every label / prediction value ``> 0`` as foreground. Without it, label maps
        must hold only the declared ``labels`` (binary ``{0, 1}`` when None); a case with other
        values fails with the values found.
    keep_columns : sequence of str, optional
        Metadata columns to keep in the result besides the strata; the others never reach the
        result (direct-identifier columns are dropped by the cohort in any case).
    case_timeout : float, optional
        Seconds one case may take (loading, inference, evaluation); a case past it fails with
        a message saying so, the audit goes on.
    stream : str or Path, optional
        JSON-lines file that receives each case's record the moment it is evaluated (default:
        a temporary file, removed afterwards). An interrupted audit leaves its finished cases
        there; the tables are built from it, so the client never holds per-case objects.
    report : mapping, optional
        Report configuration stored in the result (and its JSON): ``intended_use``,
        ``model_name``, ``model_version``, ``model_fingerprint`` (recorded as the model's
        fingerprint when no adapter runs), ``reference_standard``... (see
        :mod:`medseg_xai.reports`).
    reference : {"staple", "majority"} or str, optional
        Reference standard when the manifest has reader columns ``label_<reader>``: a consensus
        rule or one reader's name (default: the ``label`` column). See
        :mod:`medseg_xai.audit.readers` for the reader tables this adds.
    allow_missing_readers : bool
        Analyse a case with the readers present when a reader file is missing (default: the
        row fails, naming the reader).

    feature_layer : str or None
        With an adapter: the layer whose pooled output is each case's feature vector, taken
        by a hook in the same inference pass (``"auto"``: the deepest encoder output; None:
        no features). Gives ``result.feature_shift``, ``result.model_layers`` and the case
        columns ``ood_score, feature_pc1, feature_pc2`` (see :mod:`medseg_xai.audit.features`).
    feature_reference : mapping or sequence of "COLUMN=V1,V2", optional
        Reference cases of the feature shift, e.g. ``{"device": ["A", "B"]}`` (the devices the
        model was trained on); default: the whole cohort, each group against the rest.
    uncertainty : UncertaintySettings, mapping or True, optional
        With an adapter: per-case uncertainty from test-time augmentation / MC dropout
        (:mod:`medseg_xai.explain.uncertainty`; the audit's own pass is the plain member):
        case columns ``unc_entropy, unc_disagreement, unc_volume_cv``, lesion columns
        ``unc_entropy, unc_max_vote``. Turns ``failure`` on with its defaults.
    failure : FailureSettings, mapping, failure string or True, optional
        Failure detection (risk-coverage, AURC per score and subgroup), calibration per
        subgroup (from the probabilities the audit reads or computes) and hidden strata
        (:mod:`medseg_xai.audit.failure`, :mod:`medseg_xai.audit.hidden_strata`).

    Returns
    -------
    AuditResult

    Raises
    ------
    ValueError
        Bad arguments (unknown stratum column, executor, criteria, ``workers < 1``...), named
        in the message.
    InfrastructureError
        The cache or the streamed records cannot be written (disk full, read-only, permission
        denied): the audit aborts instead of failing the rows.
    """
    if not isinstance(cohort, Cohort):
        raise ValueError(f"cohort: expected a medseg_xai.Cohort, got {type(cohort).__name__}")
    if int(min_n) < 1:
        raise ValueError(f"min_n: expected a positive int, got {min_n!r}")
    _check_execution(workers=workers, case_timeout=case_timeout)
    _check_settings(empty=empty, ci_method=ci_method, test=test, correction=correction,
                    n_resamples=n_resamples, confidence=confidence, alpha=alpha)
    from medseg_xai.metrics.conventions import check_convention
    from medseg_xai.metrics.lesions import check_matching

    check_convention(convention)
    check_matching(matching)
    extra_settings = _failure_settings(uncertainty, failure, adapter)  # bad settings: fail now
    if use_subvoxels and convention != "monai":
        raise ValueError(f"use_subvoxels: expected convention='monai', got {convention!r}")
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold: expected an IoU in (0, 1], got {iou_threshold!r}")
    strata_list = parse_strata(strata)
    crit = load_criteria(criteria)
    metric_list = _metric_list(metrics, crit, labels)
    names = {s.name for s in strata_list} | {"overall"}
    for c in crit:
        if isinstance(c["strata"], list) and not set(c["strata"]) <= names:
            raise ValueError(
                f"criteria {c['name']!r}: strata {sorted(set(c['strata']) - names)} are not "
                f"audited; expected some of {sorted(names)} (add them to strata=)"
            )
    known = set(cohort.manifest.columns) | set(analysis.DERIVED_STRATA)
    for s in strata_list:
        unknown = [c for c in s.columns if c not in known]
        if unknown:
            raise ValueError(
                f"strata: column(s) {unknown} of {s.name!r} not in the cohort; expected one of "
                f"{sorted(cohort.metadata_columns) + list(analysis.DERIVED_STRATA)}"
            )
    # privacy: only metadata used as strata or declared to keep reaches the result
    kept = [c for s in strata_list for c in s.columns if c in cohort.metadata_columns]
    check_scalar_columns(cohort.manifest, kept, "strata")  # a list cell is not a group
    from medseg_xai.audit.features import parse_reference, reference_mask

    feature_ref = parse_reference(feature_reference)
    if feature_ref is not None and (adapter is None or feature_layer is None):
        raise ValueError("feature_reference: expected an adapter and a feature_layer (features "
                         "come from the model's inference pass)")
    reference_mask(cohort.manifest, feature_ref)  # unknown column or value: fail before any case
    kept += list(feature_ref or {})  # the reference columns reach the result
    cohort = cohort.with_metadata([*kept, *(keep_columns or ())])
    from medseg_xai.audit import readers as _readers

    _readers.check_reference(reference, cohort.readers, "label" in cohort.manifest.columns)
    if adapter is None and "prediction" not in cohort.manifest.columns:
        raise ValueError("audit: expected a 'prediction' column in the manifest or an adapter, "
                         "got neither")
    case_settings = {
        "labels": (dict(labels) if isinstance(labels, Mapping) else
                   (list(labels) if labels is not None else None)),
        "tolerance": float(tolerance), "percentile": percentile, "empty": empty,
        "connectivity": connectivity, "overlap_threshold": float(overlap_threshold),
        "binarize": bool(binarize),
        "convention": convention, "use_subvoxels": bool(use_subvoxels), "matching": matching,
        "iou_threshold": float(iou_threshold),
        "reference": reference, "allow_missing_readers": bool(allow_missing_readers),
    }
    assert set(case_settings) == set(CASE_SETTING_KEYS)
    task_settings = dict(case_settings)
    task_settings.update(extra_settings.pop("task"))  # only when asked: cache keys unchanged
    if adapter is not None and getattr(adapter, "threshold", None) is not None:
        task_settings["threshold"] = float(adapter.threshold)  # part of the cache key
    if adapter is not None and feature_layer is not None:  # only then: cache keys unchanged
        task_settings["feature_layer"] = str(feature_layer)
    if adapter is not None:  # torch seeded per case from the seed (stochastic models)
        task_settings["seed"] = int(seed)
    if cohort.pseudonymised:  # error texts then name no file (file names can hold the ids)
        task_settings["pseudonymised"] = True
    if executor is None:
        if dask_scheduler is not None:
            executor = "dask"
        elif workers == 1 or (adapter is not None and workers is None) or len(cohort) < 2:
            executor = "serial"
        else:
            executor = "process"
    client = None
    if dask_scheduler is not None:
        from distributed import Client

        client = Client(dask_scheduler)
        executor = client
    fingerprint = getattr(adapter, "fingerprint", None) if adapter is not None else None
    cache_extra = f"{_version('medseg-xai')}|{fingerprint or ''}"
    # Absolute before work leaves the client: Dask workers run in other folders.
    cache_path = None if cache_dir is None else os.path.abspath(os.fspath(cache_dir))
    if cache_path is not None:
        probe_writable(cache_path, "the cache")
    determinism = None
    if adapter is not None:  # two passes on one case: a stochastic model is reported
        from medseg_xai.audit.model_checks import probe_model

        determinism = probe_model(adapter, cohort, int(seed))
    started = time.perf_counter()
    with _stream_file(stream) as stream_path:
        try:
            with RecordStream(stream_path) as sink:
                info = run_tasks(
                    iter_tasks(cohort, bool(allow_missing_readers)), task_settings, executor=executor, workers=workers,
                    cache_dir=cache_path, adapter=adapter, cache_extra=cache_extra,
                    progress=progress, mp_context=mp_context, case_timeout=case_timeout,
                    sink=sink.write, n_tasks=len(cohort),
                )
        finally:
            if client is not None:
                client.close()
        elapsed = time.perf_counter() - started
        release_memory()  # the per-case phase's freed heap, before the tables are built
        cases, lesions = _tables(cohort, stream_path, sink.in_row_order())
        release_memory()
        reader_cases = (_readers.records_tables(read_records(stream_path)) if cohort.readers
                        else None)
    cases, features, layer = _pop_features(cases)
    from medseg_xai.audit.failure import pop_calibration

    cases, calibration = pop_calibration(cases)
    settings = {
        "strata": [s.name for s in strata_list], "seed": int(seed),
        "metrics": metric_list, **case_settings,
        "lesion_size_bins": (int(lesion_size_bins) if isinstance(lesion_size_bins, (int, np.integer))
                             else [float(x) for x in lesion_size_bins]),
        "detection_bins": [float(x) for x in detection_bins], "min_n": int(min_n),
        "n_resamples": int(n_resamples), "confidence": float(confidence), "ci_method": ci_method,
        "test": test, "correction": correction, "alpha": float(alpha), "criteria": crit,
        "inference": adapter is not None, **extra_settings,
        # the decision rule of the audit's own inference (None: 0.5 / argmax, decide.py)
        "threshold": task_settings.get("threshold"),
    }
    if "feature_layer" in task_settings:
        settings.update({"feature_layer": layer or str(feature_layer),
                         "feature_reference": feature_ref,
                         "feature_method": "ledoit-wolf mahalanobis, permutation tests"})
    provenance = {
        "versions": _versions(),
        "seed": int(seed),
        "empty_policy": empty,
        "manifest_hash": cohort.fingerprint(),
        "manifest_source": Path(cohort.source).name if cohort.source else None,
        "inputs_hash": hashlib.sha256(
            "|".join(cases["input_hash"].astype(str)).encode("ascii")).hexdigest()[:16],
        "model_fingerprint": fingerprint or (dict(report or {}).get("model_fingerprint")),
        "pseudonymised": cohort.pseudonymised,
    }
    if determinism is not None:
        provenance["model_determinism"] = determinism
    run = {
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
        "executor": info.executor,
        "workers": info.workers,
        "n_from_cache": info.n_from_cache,
        "cache_dir": None if cache_dir is None else redact_paths(str(Path(cache_dir).absolute())),
        "case_timeout_s": None if case_timeout is None else float(case_timeout),
        # seconds summed over cases per stage (load, inference, metrics, lesions, cache)
        "stage_seconds": info.stage_seconds,
        "efficiency": efficiency_summary(cases, elapsed),
    }
    result = build_result(cases, lesions, settings, provenance, run, report=report,
                          readers=reader_cases, features=features, calibration=calibration)
    if adapter is not None:
        from medseg_xai.explain.weights import weights

        result.model_layers = weights(adapter)
    return result


def _failure_settings(uncertainty: Any, failure: Any, adapter: Any) -> dict[str, Any]:
    """``settings`` entries of ``uncertainty=`` / ``failure=`` and (key ``"task"``) what the
    per-case work needs of them."""
    from medseg_xai.audit.failure import FailureSettings

    unc = None
    if uncertainty is not None and uncertainty is not False:  # loads the explain package
        from medseg_xai.explain.uncertainty import UncertaintySettings

        unc = UncertaintySettings.from_value(uncertainty)
    if unc is not None and adapter is None:
        raise ValueError("uncertainty: expected an adapter (the members are forward passes of "
                         "the model), got stored predictions only")
    fail = FailureSettings.from_value(failure)
    if fail is None and unc is not None:
        fail = FailureSettings()
    out: dict[str, Any] = {"task": {}}
    if unc is not None:
        out["uncertainty"] = out["task"]["uncertainty"] = unc.to_dict()
    if fail is not None:
        out["failure"] = fail.to_dict()
        if fail.calibration_bins:
            out["task"]["calibration_bins"] = int(fail.calibration_bins)
        if fail.hidden_strata:
            out["task"]["properties"] = True
    return out


def _pop_features(cases: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray | None, str | None]:
    """The records' pooled feature vectors as an ``(n, F)`` matrix (NaN rows where a case has
    none), taken out of the cases table, and the feature layer's name."""
    if "features" not in cases.columns:
        return cases.drop(columns=["feature_layer"], errors="ignore"), None, None
    vecs = list(cases["features"])
    width = max((len(v) for v in vecs if isinstance(v, list)), default=0)
    out = np.full((len(vecs), width), np.nan)
    for i, v in enumerate(vecs):
        if isinstance(v, list) and len(v) == width:
            out[i] = v
    names = cases["feature_layer"].dropna() if "feature_layer" in cases else []
    layer = str(names.iloc[0]) if len(names) else None
    return cases.drop(columns=["features", "feature_layer"], errors="ignore"), out, layer


def efficiency_summary(cases: pd.DataFrame, elapsed_s: float) -> dict[str, Any]:
    """Where the time went: per stage the seconds summed over cases, their share, and the
    per-case mean, median, 95th percentile and maximum; cases per second of the per-case phase;
    the slowest cases; the largest peak memory. What the report's efficiency section shows."""
    n = len(cases)
    stages: dict[str, dict[str, float]] = {}
    work = [s for s in STAGES if s != "total_s" and s in cases.columns]
    busy = float(sum(np.nansum(cases[s].to_numpy(dtype=float)) for s in work)) or 1.0
    for stage in [*work, *(["total_s"] if "total_s" in cases.columns else [])]:
        v = cases[stage].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if not v.size:
            continue
        stages[stage[:-2]] = {
            "total_s": float(v.sum()), "share": float(v.sum() / busy) if stage != "total_s" else 1.0,
            "mean_s": float(v.mean()), "median_s": float(np.median(v)),
            "p95_s": float(np.percentile(v, 95)), "max_s": float(v.max()),
        }
    out: dict[str, Any] = {
        "n_cases": n, "elapsed_s": float(elapsed_s),
        "cases_per_s": float(n / elapsed_s) if elapsed_s > 0 else None, "stages": stages,
    }
    if "total_s" in cases.columns and n:
        slow = cases.nlargest(5, "total_s")
        out["slowest"] = [{"case_id": str(c), "total_s": float(t), "status": str(st)}
                          for c, t, st in zip(slow["case_id"], slow["total_s"], slow["status"])]
    for col in ("peak_memory_mb", "peak_gpu_memory_mb"):
        if col in cases.columns and cases[col].notna().any():
            out[f"max_{col}"] = float(cases[col].max())
    return out


def _check_execution(*, workers: Any, case_timeout: Any) -> None:
    if workers is not None and (isinstance(workers, bool)
                                or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise ValueError(f"workers: expected a positive number of processes, got {workers!r}")
    if case_timeout is not None:
        ok = isinstance(case_timeout, (int, float, np.integer, np.floating)) and not isinstance(
            case_timeout, bool)
        if not ok or not 0 < float(case_timeout) < float("inf"):
            raise ValueError(f"case_timeout: expected a positive number of seconds, got "
                             f"{case_timeout!r}")


@contextlib.contextmanager
def _stream_file(stream: str | Path | None) -> Iterator[str]:
    """The stream file to use: the given one (kept) or a temporary one (removed)."""
    if stream is not None:
        yield os.path.abspath(os.fspath(stream))
        return
    with tempfile.TemporaryDirectory(prefix="medseg-xai-audit-") as tmp:
        yield os.path.join(tmp, "cases.jsonl")


def probe_writable(folder: str, what: str) -> None:
    """Create ``folder`` and write-and-remove a probe file in it; an OSError aborts the audit
    before any case runs (a read-only or full disk would otherwise fail every case)."""
    probe = os.path.join(folder, f".probe-{os.getpid()}.tmp")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as fh:
            fh.write("ok")
        os.remove(probe)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(probe)
        raise infrastructure_error(exc, what) from exc


def _check_settings(**given: Any) -> None:
    """Reject bad settings before any case runs: a typo in ``empty`` would otherwise fail every
    case one by one, and one in ``test`` would surface only after all of them were evaluated."""
    from medseg_xai.audit.stats import CI_METHODS
    from medseg_xai.metrics import EMPTY_POLICIES

    choices = {"empty": EMPTY_POLICIES, "ci_method": CI_METHODS,
               "test": ("mannwhitney", "permutation"), "correction": ("holm", "bh")}
    for name, allowed in choices.items():
        if given[name] not in allowed:
            raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {given[name]!r}")
    if not isinstance(given["n_resamples"], (int, np.integer)) or given["n_resamples"] < 1:
        raise ValueError(f"n_resamples: expected a positive int, got {given['n_resamples']!r}")
    for name in ("confidence", "alpha"):
        if not 0.0 < float(given[name]) < 1.0:
            raise ValueError(f"{name}: expected a number strictly between 0 and 1, "
                             f"got {given[name]!r}")


_LESION_KEYS = ("n_ref_lesions", "n_pred_lesions", "n_detected", "n_missed", "n_false_positive",
                "lesion_sensitivity", "fp_per_case", "lesion_f1")


def _metric_list(metrics: Sequence[str] | None, crit: list[dict[str, Any]],
                 labels: Any) -> list[str]:
    """Metrics to summarise: the requested ones plus any a criterion needs; typos fail early."""
    from medseg_xai.metrics import METRIC_KEYS

    out = list(DEFAULT_METRICS if metrics is None else metrics)
    for c in crit:
        if c["metric"] and c["metric"] not in out:
            out.append(c["metric"])
    if labels is None:  # binary: every column name is known before any case runs
        known = set(METRIC_KEYS) | set(_LESION_KEYS) | {"soft_dice", "brier"}
        unknown = [m for m in out if m not in known]
        if unknown:
            raise ValueError(f"metrics: unknown metric(s) {unknown}; expected some of "
                             f"{sorted(known)}")
    return out


def _patient_labels(manifest: pd.DataFrame, pseudonymised: bool) -> list[str | None]:
    """Patient column of the cases table: grouping kept, identity not.

    A hash with a salt written in this source would be reversible by hashing candidate record
    numbers, so unsalted ids become ``p-0001, p-0002, ...`` in order of first appearance
    (deterministic for a given manifest, meaningless outside it). Ids the cohort already
    pseudonymised with the user's secret salt are kept.
    """
    labels: dict[str, str] = {}
    out: list[str | None] = []
    for pid in manifest["patient_id"]:
        if pd.isna(pid):
            out.append(None)
        elif pseudonymised:
            out.append(str(pid))
        else:
            out.append(labels.setdefault(str(pid), f"p-{len(labels) + 1:04d}"))
    return out


def _frames(records: list[dict[str, Any]],
            seen: dict[str, dict[str, tuple[int, int]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Case rows and lesion rows of a chunk of records (no metadata yet), keyed by ``row``.

    ``seen`` collects, per table and column, the first (row, position) where the column
    appears, so the final column order is the one a single table built in manifest order had.
    """
    rows, lesion_rows = [], []
    for rec in records:
        r = rec["row"]
        row: dict[str, Any] = {"row": r, "case_id": rec["case_id"], "status": rec["status"],
                               "error": rec.get("error", ""), "input_hash": rec.get("input_hash", "")}
        for k, v in rec.items():
            if k in _LESION_DROP or k in row:
                continue
            row[k] = v
        for k, v in (rec.get("timing") or {}).items():
            row[k] = v
        for pos, k in enumerate(row):
            if (r, pos) < seen["cases"].get(k, (1 << 62, 0)):
                seen["cases"][k] = (r, pos)
        rows.append(row)
        for les in rec.get("lesions") or []:
            lesion = {"row": r, "case_id": rec["case_id"], **les}
            for pos, k in enumerate(lesion):
                if (r, pos) < seen["lesions"].get(k, (1 << 62, 0)):
                    seen["lesions"][k] = (r, pos)
            lesion_rows.append(lesion)
    return pd.DataFrame(rows), coordinate_columns(pd.DataFrame(lesion_rows))


def _reorder(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """``df[columns]`` without copying the data (``df[list]`` copies every column)."""
    return pd.DataFrame({c: df[c] for c in columns}, copy=False)


def _contiguous(column: pd.Series) -> pd.Series:
    """An Arrow-backed column (strings, coordinates) as one buffer instead of one per chunk.

    A concat of Arrow columns keeps every chunk's buffers, allocated between the chunk's
    temporary objects; one contiguous copy lets the heap around them be given back.
    """
    chunked = getattr(column.array, "_pa_array", None)
    if chunked is None or getattr(chunked, "num_chunks", 1) <= 1:
        return column
    import pyarrow as pa

    whole = pa.chunked_array([chunked.combine_chunks()], type=chunked.type)
    if isinstance(column.dtype, pd.StringDtype):  # keeps its NA flavour (NaN or pd.NA)
        array = type(column.array)(whole, dtype=column.dtype)
    else:
        array = type(column.array)(whole)
    return pd.Series(array, index=column.index, name=column.name, copy=False)


#: Chunks whose column parts are merged into one segment per column (8,192 records).
_MERGE_EVERY = 16


def _concat_parts(parts: list[pd.Series | int]) -> pd.Series:
    """Column parts concatenated; an int stands for that many rows where the column was absent
    (NA: None in an Arrow column, else NaN)."""
    dtype = next((p.dtype for p in parts if isinstance(p, pd.Series)), None)
    arrow = isinstance(dtype, pd.ArrowDtype)
    series = [p if isinstance(p, pd.Series) else
              (pd.Series([None] * p, dtype=dtype) if arrow else pd.Series(np.nan, index=range(p)))
              for p in parts]
    return (pd.concat(series, ignore_index=True) if len(series) > 1
            else series[0].reset_index(drop=True))


class _ColumnParts:
    """One table's chunks kept column by column, concatenated one column at a time.

    ``pd.concat`` of the chunk frames holds every chunk and the whole new table at once. Here
    each chunk frame is split into its columns as it is read and freed; every
    :data:`_MERGE_EVERY` chunks each column's recent parts are merged into one segment, so the
    small per-chunk arrays are freed together (heap the next chunks reuse) instead of each
    pinning its neighbours until the end: with a part per column per chunk, 100,000 cases
    held the parts and the finished tables at once (+110 MB). At the end each column's
    segments are concatenated and released before the next column.
    """

    def __init__(self) -> None:
        self.parts: dict[str, list[pd.Series | int]] = {}
        self.lengths: list[int] = []  # rows per segment (a chunk, or merged chunks)
        self.n_chunks = 0
        self._recent = 0  # segments added since the last merge

    def add(self, frame: pd.DataFrame) -> None:
        if not len(frame.columns):
            return
        k = len(self.lengths)
        for col in frame.columns:
            # a column absent from earlier chunks: their length stands in (NA there)
            self.parts.setdefault(col, list(self.lengths))
            self.parts[col].append(frame[col].copy())  # its own array: the chunk's block is freed
        for parts in self.parts.values():
            if len(parts) == k:
                parts.append(len(frame))
        self.lengths.append(len(frame))
        self.n_chunks += 1
        self._recent += 1
        if self._recent >= _MERGE_EVERY:
            self._merge(self._recent)
            self._recent = 0

    def _merge(self, k: int) -> None:
        """The last ``k`` segments of every column as one."""
        for parts in self.parts.values():
            tail = parts[-k:]
            parts[-k:] = [sum(tail) if all(isinstance(p, int) for p in tail)  # type: ignore[arg-type]
                          else _concat_parts(tail)]
        self.lengths[-k:] = [sum(self.lengths[-k:])]

    def table(self, order: dict[str, tuple[int, int]]) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame()
        # Records arrive in completion order; the tables are in manifest order (stable per
        # case). The order comes from the "row" column first and each column is put in it
        # on its own: sorting the assembled table held a second copy of all of it (15 MB at
        # 30,000 cases). A serial run is already in order: no reordering then.
        rows = self._column("row")
        perm = (None if rows.is_monotonic_increasing
                else np.argsort(rows.to_numpy(), kind="stable"))
        data: dict[str, pd.Series] = {}
        for col in sorted([*self.parts, "row"], key=lambda c: order.get(c, (1 << 62, 0))):
            column = rows if col == "row" else self._column(col)
            if perm is not None:
                column = column.take(perm).reset_index(drop=True)
            data[col] = _contiguous(column)
            copied = data[col] is not column
            del column
            if copied:
                release_memory()  # the chunks' heap now, before the next column is copied
        del rows
        df = pd.DataFrame(data, copy=False)
        del data
        obj = [c for c in df.columns if df[c].dtype == object]
        if obj and self.n_chunks > 1:  # a chunk where a column was all-None left it object
            df[obj] = df[obj].infer_objects()
        return df

    def _column(self, col: str) -> pd.Series:
        """One column's segments concatenated (and released)."""
        return _concat_parts(self.parts.pop(col))


def _tables(cohort: Cohort, stream_path: str | Path, offsets: np.ndarray | None = None,
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cases and lesions tables from the streamed per-case records, metadata joined in.

    The records are read back a chunk at a time into column arrays (at ``offsets``, the lines
    in manifest order, when they arrived in another order); the metadata and patient columns
    are joined from the manifest by row, column-wise.
    """
    meta_cols = cohort.metadata_columns
    manifest = cohort.manifest
    seen: dict[str, dict[str, tuple[int, int]]] = {"cases": {}, "lesions": {}}
    case_parts, lesion_parts = _ColumnParts(), _ColumnParts()
    for cf, lf in read_chunks(stream_path, lambda recs: _frames(recs, seen), _READ_CHUNK,
                              offsets):
        case_parts.add(cf)
        lesion_parts.add(lf)
        del cf, lf
    cases = case_parts.table(seen["cases"])
    rows = cases["row"].to_numpy()
    if "patient_id" in manifest.columns:
        patients = np.asarray(_patient_labels(manifest, cohort.pseudonymised), dtype=object)
        cases.insert(cases.columns.get_loc("case_id") + 1, "patient_id", patients[rows])
    position = cases.columns.get_loc("input_hash") + 1
    for i, col in enumerate(meta_cols):
        cases.insert(position + i, col, manifest[col].to_numpy()[rows])
    cases = cases.drop(columns="row")
    if "edge_case" in cases:  # object column, one shared str per value (not one per row:
        # 100,000 small strs scattered over the heap kept 20 MB of it from being given back)
        codes, values = pd.factorize(cases["edge_case"])
        table = np.array([*values.astype(object), np.nan], dtype=object)
        cases["edge_case"] = pd.Series(table[codes], index=cases.index, dtype=object)
    # keep timing columns last
    timing = [c for c in TIMING_COLUMNS if c in cases.columns]
    cases = _reorder(cases, [c for c in cases.columns if c not in timing] + timing)
    lesions = lesion_parts.table(seen["lesions"])
    if lesions.empty:
        from medseg_xai.metrics import LESION_COLUMNS

        lesions = pd.DataFrame(columns=["case_id", *LESION_COLUMNS])
    else:
        # a lesion's record row is its case's manifest row: metadata joined like the cases',
        # column by column (no lookup by case id, no copy of lesions)
        lesion_rows = lesions["row"].to_numpy()
        lesions = lesions.drop(columns="row")
        for col in meta_cols:
            lesions[col] = manifest[col].to_numpy()[lesion_rows]
    return cases, coordinate_columns(lesions)


def build_result(
    cases: pd.DataFrame,
    lesions: pd.DataFrame,
    settings: Mapping[str, Any],
    provenance: Mapping[str, Any],
    run: Mapping[str, Any] | None = None,
    *,
    report: Mapping[str, Any] | None = None,
    readers: Mapping[str, pd.DataFrame] | None = None,
    features: np.ndarray | None = None,
    calibration: tuple[np.ndarray, list[str]] | None = None,
) -> AuditResult:
    """Subgroup, lesion, agreement and criteria tables from per-case and per-lesion tables.

    Used by :func:`audit` and to re-analyse stored cases (e.g. other strata or criteria) without
    re-evaluating them. ``readers`` holds the per-case ``readers`` and ``reader_lesions`` tables
    of a multi-reader audit (:mod:`medseg_xai.audit.readers`). ``features`` (``(n_cases,
    F)``, NaN rows for failed cases) adds the feature-shift table and the ``ood_score,
    feature_pc1, feature_pc2`` case columns (:mod:`medseg_xai.audit.features`).
    """
    settings = dict(settings)
    stat = {**analysis.STATS_DEFAULTS,
            **{k: v for k, v in settings.items() if k in analysis.STATS_DEFAULTS}}
    strata_list = parse_strata(settings.get("strata"))
    cases, orders = analysis.prepare_cases(cases, stat["lesion_size_bins"])
    release_memory()
    metric_names = [m for m in (settings.get("metrics") or DEFAULT_METRICS) if m in cases.columns]
    min_n = int(stat["min_n"])
    confidence = float(stat["confidence"])
    subgroups = analysis.subgroup_table(
        cases, strata_list, metric_names, orders=orders, seed=int(stat["seed"]),
        min_n=min_n, n_resamples=int(stat["n_resamples"]), confidence=confidence,
        ci_method=stat["ci_method"], test=stat["test"], correction=stat["correction"],
        alpha=float(stat["alpha"]),
    )
    # Each table's working arrays are freed when it is done; giving that heap back before the
    # next one keeps the peak at one table's work above the data (at 100,000 cases RSS
    # otherwise climbed by each table's leftovers: +45 MB by the detection table).
    release_memory()
    tests = {"alpha": float(stat["alpha"]), "correction": stat["correction"]}
    detection = analysis.detection_table(
        cases, lesions, strata_list, bins=stat["detection_bins"],
        orders=orders, confidence=confidence, min_n=min_n, **tests)
    release_memory()
    fps = analysis.false_positive_table(cases, strata_list, orders=orders,
                                        confidence=confidence, min_n=min_n, **tests)
    agreement = analysis.volume_agreement_table(cases, strata_list, orders=orders,
                                                confidence=confidence, min_n=min_n, **tests)
    feature_table = None
    if features is not None and features.shape[1] > 0:
        from medseg_xai.audit.features import feature_shift

        groups = [(s.name, *analysis.stratum_groups(cases, s, orders)) for s in strata_list]
        feature_table, per_case = feature_shift(
            features, cases, groups, reference=settings.get("feature_reference"),
            seed=int(stat["seed"]), n_permutations=int(stat["n_resamples"]),
            correction=stat["correction"], alpha=float(stat["alpha"]), min_n=min_n)
        timing = [c for c in TIMING_COLUMNS if c in cases.columns]
        stale = [c for c in (*timing, *per_case.columns) if c in cases.columns]
        cases = cases.drop(columns=stale).join(per_case).join(cases[timing])
    failure_tables: dict[str, pd.DataFrame] = {}
    if settings.get("failure"):  # issue 27: failure detection, calibration, hidden strata
        from medseg_xai.audit.failure import audit_tables

        groups = [(s.name, *analysis.stratum_groups(cases, s, orders)) for s in strata_list]
        failure_tables, per_case = audit_tables(
            cases, groups, settings, features=features, calibration=calibration,
            categorical=[c for s in strata_list for c in s.columns], stat=stat)
        timing = [c for c in TIMING_COLUMNS if c in cases.columns]
        cases = cases.drop(columns=[*timing, *[c for c in per_case if c in cases]]
                           ).join(per_case).join(cases[timing])
    group_index = {}
    for stratum in [analysis.OVERALL, *strata_list]:
        labels, order = analysis.stratum_groups(cases, stratum, orders)
        ok_labels = labels[cases["status"] == "ok"]
        for g in order:
            group_index[(stratum.name, str(g))] = ok_labels.index[ok_labels == g]
    crit = load_criteria(settings.get("criteria")) if settings.get("criteria") else []
    from medseg_xai.audit import readers as _readers

    reader = dict(readers or {})
    reader.update(_readers.reader_tables(
        cases, reader.get("readers"), reader.get("reader_lesions"),
        analysis._groups_iter(cases, strata_list, orders), stat, crit))
    criteria_table = evaluate_criteria(
        crit, subgroups=subgroups, cases=cases, lesions=lesions, false_positives=fps,
        group_index=group_index, audit_strata=[s.name for s in strata_list], min_n=min_n,
        confidence=confidence, noninferiority=reader["reader_noninferiority"])
    settings["metrics"] = list(metric_names)
    provenance = dict(provenance)
    ok = cases["status"] == "ok"
    edge = cases.loc[ok, "edge_case"].value_counts() if "edge_case" in cases else pd.Series(dtype=int)
    provenance["edge_cases"] = {k: int(edge.get(k, 0))
                                for k in ("none", "both_empty", "pred_empty", "ref_empty")}
    provenance["n_rows"] = len(cases)
    provenance["n_evaluated"] = int(ok.sum())
    provenance["n_failed"] = int((cases["status"] == "failed").sum())
    return AuditResult(
        cases=cases, subgroups=subgroups, lesions=lesions, criteria=criteria_table,
        lesion_detection=detection, false_positives=fps, volume_agreement=agreement,
        verdicts=verdicts(criteria_table),
        group_counts=analysis.group_counts_table(cases, strata_list, orders),
        settings=settings, provenance=provenance, run=dict(run or {}), report=dict(report or {}),
        **{k: v for k, v in reader.items() if k in _readers.READER_TABLES},
        **({} if feature_table is None else {"feature_shift": feature_table}),
        **failure_tables,
    )
