"""``audit()``: evaluate every case of a cohort and build the subgroup tables."""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai._memory import release_memory, system_arrow_pool
from medseg_xai._patients import repeated_patient_warning
from medseg_xai._privacy import redact_paths
from medseg_xai.audit import analysis
from medseg_xai.audit import readers as _readers
from medseg_xai.audit import stats as stats_mod
from medseg_xai.audit.criteria import evaluate_criteria, load_criteria, verdicts
from medseg_xai.audit.plan import OPTION_FIELDS, AuditPlan, legacy_to_plan
from medseg_xai.audit.result import TIMING_COLUMNS, AuditResult, coordinate_columns
from medseg_xai.audit.runner import CASE_SETTING_KEYS, STAGES, iter_tasks, run_tasks
from medseg_xai.audit.sample_size import add_sample_size
from medseg_xai.audit.strata import bin_continuous_strata, check_scalar_columns, parse_strata
from medseg_xai.audit.stream import RecordStream, infrastructure_error, read_chunks, read_records
from medseg_xai.cohort import Cohort
from medseg_xai.metrics.evaluate import METRIC_KEYS

__all__ = ["DEFAULT_METRICS", "audit", "build_result"]

#: Metrics summarised per subgroup when ``metrics=None`` (those present in the cases table).
DEFAULT_METRICS = ("dice", "jaccard", "precision", "recall", "hd95", "assd", "nsd",
                   "abs_volume_diff_mm3", "lesion_sensitivity", "fp_per_case")
_LESION_DROP = ("lesions", "timing", "row", "from_cache", "readers", "reader_lesions")
_READ_CHUNK = 512  # records turned into column arrays at a time when the tables are built


def _version(pkg: str) -> str:
    from medseg_xai.versions import library_versions  # the one place versions are read

    return library_versions((pkg,))[pkg]


def _versions() -> dict[str, str]:
    from medseg_xai.versions import library_versions

    return library_versions()


#: Keywords of ``audit()`` that are not part of the analysis plan (how it runs, not what it finds).
RUN_OPTIONS = ("dask_scheduler", "mp_context", "allow_missing_readers", "uncertainty", "failure",
               "uncertainty_members")


@system_arrow_pool()
def audit(
    cohort: Cohort,
    plan: AuditPlan | Mapping[str, Any] | str | Path | None = None,
    *,
    adapter: Any = None,
    executor: str | Any | None = None,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    stream: str | Path | None = None,
    case_timeout: float | None = None,
    report: Mapping[str, Any] | None = None,
    **options: Any,
) -> AuditResult:
    """Audit a segmentation model on a cohort, per case and per subgroup, by an analysis plan.

    Parameters
    ----------
    cohort : Cohort
        The cases (stored predictions in a ``prediction`` column, or an ``adapter``).
    plan : AuditPlan, mapping or YAML path, optional
        The pre-specified analysis plan (:class:`~medseg_xai.audit.plan.AuditPlan`: strata,
        metrics, decision rules, statistics, criteria); default ``AuditPlan()``. It is recorded
        with its hash in ``result.settings["plan"]`` / ``["plan_hash"]`` and so in ``audit.json``.
    adapter : SegmentationAdapter, optional
        Run inference (at the plan's ``decision.threshold``, else the adapter's own).
    executor, workers : optional
        ``"serial"``, ``"process"``, ``"dask"`` or a distributed.Client, and processes
        (default: serial for one worker or a model, else a pool of all cores).
    cache_dir, stream : str or Path, optional
        Per-case cache (resume) and the JSON-lines file each case's record is streamed to.
    progress, case_timeout : optional
        Show a progress bar; seconds one case may take (past it the case fails, saying so).
    report : mapping, optional
        Report configuration stored in the result (``intended_use``, ``model_name``...).
    **options
        ``dask_scheduler``, ``mp_context``, ``allow_missing_readers``, ``uncertainty``,
        ``uncertainty_members`` (:mod:`medseg_xai.audit.members`) and ``failure``.
        The old plan keywords (``strata=``, ``criteria=``, ``confidence=``...,
        :data:`medseg_xai.audit.plan.OPTION_FIELDS`) work for one release with a
        ``FutureWarning``, mapped into the plan.

    Returns
    -------
    AuditResult

    Raises
    ------
    ValueError
        Before any case runs: an invalid plan (``plan.statistics.confidence: ...``), an
        unknown stratum column or reader, ``workers < 1``...; InfrastructureError when the
        cache or the streamed records cannot be written.
    """
    if not isinstance(cohort, Cohort):
        raise ValueError(f"cohort: expected a medseg_xai.Cohort, got {type(cohort).__name__}")
    run_opts = {k: options.pop(k) for k in RUN_OPTIONS if k in options}
    plan = resolve_plan(plan, options)
    _check_execution(workers=workers, case_timeout=case_timeout)
    cohort, checked, extra_settings = _check_all(cohort, plan, adapter, run_opts)
    determinism = _determinism(adapter, cohort, int(plan.statistics.seed), case_timeout,
                               run_opts.get("mp_context"))
    cases, lesions, reader_cases, info, elapsed = _run(
        cohort, checked["task_settings"], checked["run_adapter"], run_opts,
        {"executor": executor, "workers": workers, "cache_dir": cache_dir, "progress": progress,
         "stream": stream, "case_timeout": case_timeout})
    cases, features, layer, calibration = _pop_arrays(cases)
    warning = repeated_patient_warning(list(getattr(cohort, "repeated_patient_columns", [])))
    settings = {**_settings(plan, checked, adapter, layer), **extra_settings,
                **({"statistics_warnings": [warning]} if warning else {})}
    provenance = _provenance(plan, cohort, cases, getattr(adapter, "fingerprint", None), report)
    provenance.update({**({} if determinism is None else {"model_determinism": determinism}),
                       **_member_provenance(settings)})
    run = _run_record(info, elapsed, cache_dir, case_timeout, cases, cohort.pseudonymised)
    result = build_result(cases, lesions, settings, provenance, run, report=report,
                          readers=reader_cases, features=features, calibration=calibration)
    if adapter is not None:
        from medseg_xai.explain.weights import weights

        result.model_layers = weights(adapter)
    return result


def _check_all(cohort: Cohort, plan: AuditPlan, adapter: Any, run_opts: Mapping[str, Any]
               ) -> tuple[Cohort, dict[str, Any], dict[str, Any]]:
    """Every check that can fail before a case runs; the case settings to run with."""
    extra = _failure_settings(run_opts.get("uncertainty"), run_opts.get("failure"), adapter,
                              run_opts.get("uncertainty_members"))
    cohort, checked = _prepare(cohort, plan, adapter, bool(run_opts.get("allow_missing_readers")))
    checked["task_settings"].update(extra.pop("task"))  # only when asked: cache keys unchanged
    # the cases run with a copy of the adapter that carries the ensemble members, if any
    checked["run_adapter"] = _attach_members(adapter, extra.pop("members"))
    return cohort, checked, extra


def _determinism(adapter: Any, cohort: Cohort, seed: int, case_timeout: float | None,
                 mp_context: str | None) -> Any:
    """Two passes on one case: a stochastic model is reported (None without a model)."""
    if adapter is None:
        return None
    from medseg_xai.audit.model_checks import probe_model
    from medseg_xai.audit.runner import _init_worker, _preload

    return probe_model(adapter, cohort, seed, case_timeout=case_timeout, mp_context=mp_context,
                       worker_init=_init_worker, preload=_preload)


def _pop_arrays(cases: pd.DataFrame) -> tuple:
    """The per-case feature vectors and calibration bins, taken out of the cases table."""
    from medseg_xai.audit.failure import pop_calibration

    cases, features, layer = _pop_features(cases)
    cases, calibration = pop_calibration(cases)
    return cases, features, layer, calibration


def _run(cohort: Cohort, task_settings: Mapping[str, Any], adapter: Any,
         run_opts: Mapping[str, Any], how: Mapping[str, Any]) -> tuple:
    """Evaluate every case (streamed to a JSON-lines file) and build the per-case and
    per-lesion tables: ``(cases, lesions, reader_cases, run_info, elapsed_s)``."""
    workers = how["workers"]
    executor, client = _executor(how["executor"], run_opts.get("dask_scheduler"), workers,
                                 adapter, len(cohort))
    fingerprint = getattr(adapter, "fingerprint", None) if adapter is not None else None
    cache_extra = f"{_version('medseg-xai')}|{fingerprint or ''}"
    # Absolute before work leaves the client: Dask workers run in other folders.
    cache_dir = how["cache_dir"]
    cache_path = None if cache_dir is None else os.path.abspath(os.fspath(cache_dir))
    if cache_path is not None:
        probe_writable(cache_path, "the cache")
    started = time.perf_counter()
    with _stream_file(how["stream"]) as stream_path:
        try:
            with RecordStream(stream_path) as sink:
                info = run_tasks(
                    iter_tasks(cohort, bool(run_opts.get("allow_missing_readers"))),
                    task_settings, executor=executor, workers=workers,
                    cache_dir=cache_path, adapter=adapter, cache_extra=cache_extra,
                    progress=how["progress"], mp_context=run_opts.get("mp_context"),
                    case_timeout=how["case_timeout"], sink=sink.write, n_tasks=len(cohort),
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
    return cases, lesions, reader_cases, info, elapsed


def _run_record(info: Any, elapsed: float, cache_dir: Any, case_timeout: float | None,
                cases: pd.DataFrame, pseudonymised: bool) -> dict[str, Any]:
    """``result.run``: the facts of this execution (not part of the stable provenance)."""
    return {
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
        "executor": info.executor,
        "workers": info.workers,
        "n_from_cache": info.n_from_cache,
        "cache_dir": None if cache_dir is None else (
            "<folder>" if pseudonymised else redact_paths(str(Path(cache_dir).absolute()))),
        "case_timeout_s": None if case_timeout is None else float(case_timeout),
        # seconds summed over cases per stage (load, inference, metrics, lesions, cache)
        "stage_seconds": info.stage_seconds,
        "efficiency": efficiency_summary(cases, elapsed),
    }


def _outside_level() -> int:
    """``stacklevel`` of the first frame outside this package (and its decorators), so a
    warning names the user's line whether ``audit`` was reached as ``mx.audit`` or directly."""
    import sys

    level, frame = 2, sys._getframe(2)  # level 2 = audit(), the caller of resolve_plan
    while frame is not None and (frame.f_globals.get("__name__", "").startswith("medseg_xai")
                                 or frame.f_code.co_filename.endswith("contextlib.py")):
        frame, level = frame.f_back, level + 1
    return level


def resolve_plan(plan: Any, options: dict[str, Any]) -> AuditPlan:
    """The plan an audit runs: ``plan`` with the old keywords mapped into it (FutureWarning).

    An old positional ``strata`` (a column name or a list of them in the plan's place) is read
    as ``strata=`` with the same warning.
    """
    if isinstance(plan, (list, tuple)) or (isinstance(plan, str) and not plan.endswith(
            (".yaml", ".yml", ".json"))):
        options = {"strata": plan, **options}
        plan = None
    if options:
        mapped = ", ".join(f"{k} -> plan.{'.'.join(OPTION_FIELDS[k])}" if k in OPTION_FIELDS
                           else k for k in options)
        warnings.warn(
            f"audit(): the plan keywords are deprecated and will be removed in the next "
            f"release; pass plan=AuditPlan(...) instead ({mapped})", FutureWarning, stacklevel=_outside_level())
    return legacy_to_plan(plan, options)


def _prepare(cohort: Cohort, plan: AuditPlan, adapter: Any, allow_missing: bool
             ) -> tuple[Cohort, dict[str, Any]]:
    """Check the plan against the cohort before any case runs; the case settings to run."""
    from medseg_xai.audit.features import parse_reference, reference_mask

    dec, met, st = plan.decision, plan.metrics, plan.strata
    strata_list = parse_strata(list(st.strata) or None)
    crit = [dict(c) for c in plan.criteria]
    metric_list = _metric_list(met.metrics, crit, dec.label_setting)
    from medseg_xai.classes import (
        effective_classes,
        file_class_names,
        lesion_values,
        parse_classes,
        per_class_metrics,
    )

    classes = effective_classes(dec)  # declared kinds, else one class: lesion, several: structure
    metric_labels = dec.label_setting
    if classes and all(c["name"] == str(c["value"]) for c in classes):
        # unnamed values: the names a Slicer .seg.nrrd / DICOM-SEG gives its segments
        found = file_class_names(cohort)
        if found:
            classes = [{**c, "name": found.get(c["value"], c["name"])} for c in classes]
            metric_labels = {c["value"]: c["name"] for c in classes}
    metric_list = per_class_metrics(metric_list, classes, _PER_CLASS_KEYS)
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
    feature_ref = parse_reference(list(st.feature_reference) if st.feature_reference else None)
    if feature_ref is not None and (adapter is None or st.feature_layer is None):
        raise ValueError("feature_reference: expected an adapter and a feature_layer (features "
                         "come from the model's inference pass)")
    reference_mask(cohort.manifest, feature_ref)  # unknown column or value: fail before any case
    kept += list(feature_ref or {})  # the reference columns reach the result
    cohort = cohort.with_metadata([*kept, *st.keep_columns])
    _readers.check_reference(dec.reference, cohort.readers, "label" in cohort.manifest.columns)
    if adapter is None and "prediction" not in cohort.manifest.columns:
        raise ValueError("audit: expected a 'prediction' column in the manifest or an adapter, "
                         "got neither")
    case_settings = {
        "labels": metric_labels, "tolerance": float(met.tolerance),
        "percentile": met.percentile, "empty": met.empty, "connectivity": dec.connectivity,
        "overlap_threshold": float(dec.overlap_threshold), "binarize": bool(dec.binarize),
        "convention": met.convention, "use_subvoxels": bool(met.use_subvoxels),
        "matching": dec.matching, "iou_threshold": float(dec.iou_threshold),
        "reference": dec.reference, "allow_missing_readers": allow_missing,
        "lesion_labels": lesion_values(parse_classes(classes) if classes else None),
        "reference_threshold": float(dec.reference_threshold),
    }
    assert set(case_settings) == set(CASE_SETTING_KEYS)
    task_settings = dict(case_settings)
    threshold = dec.threshold if dec.threshold is not None else getattr(adapter, "threshold", None)
    if adapter is not None and threshold is not None:
        task_settings["threshold"] = float(threshold)  # part of the cache key
    if adapter is not None and st.feature_layer is not None:  # only then: cache keys unchanged
        task_settings["feature_layer"] = str(st.feature_layer)
    if adapter is not None:  # torch seeded per case from the seed (stochastic models)
        task_settings["seed"] = int(plan.statistics.seed)
    if cohort.pseudonymised:  # error texts then name no file (file names can hold the ids)
        task_settings["pseudonymised"] = True
    return cohort, {"strata": strata_list, "criteria": crit, "metrics": metric_list,
                    "feature_reference": feature_ref, "case_settings": case_settings,
                    "classes": classes,
                    "task_settings": task_settings}


def _executor(executor: Any, dask_scheduler: str | None, workers: int | None, adapter: Any,
              n_cases: int) -> tuple[Any, Any]:
    """The executor to run (and the Dask client to close afterwards, if one was opened)."""
    if executor is None:
        if dask_scheduler is not None:
            executor = "dask"
        elif workers == 1 or (adapter is not None and workers is None) or n_cases < 2:
            executor = "serial"
        else:
            executor = "process"
    client = None
    if dask_scheduler is not None:
        from distributed import Client

        client = Client(dask_scheduler)
        executor = client
    return executor, client


def _settings(plan: AuditPlan, checked: Mapping[str, Any], adapter: Any,
              layer: str | None) -> dict[str, Any]:
    """``result.settings``: the plan (and its hash) and every setting the views read."""
    st, stats = plan.strata, plan.statistics
    bins = st.lesion_size_bins
    settings = {
        "strata": [s.name for s in checked["strata"]], "seed": int(stats.seed),
        "metrics": checked["metrics"], **checked["case_settings"],
        "lesion_size_bins": (int(bins) if isinstance(bins, (int, np.integer))
                             else [float(x) for x in bins]),
        "detection_bins": [float(x) for x in st.detection_bins], "min_n": int(stats.min_n),
        "n_resamples": int(stats.n_resamples), "confidence": float(stats.confidence),
        "ci_method": stats.interval_method, "test": stats.test,
        "n_permutations": int(stats.n_permutations), "correction": stats.correction,
        "alpha": float(stats.alpha), "criteria": checked["criteria"],
        "inference": adapter is not None,
        # the decision rule of the audit's own inference (None: 0.5 / argmax, decide.py)
        "threshold": checked["task_settings"].get("threshold"),
        # the classes audited with their kinds (declared, else the defaults of classes.py)
        "classes": checked.get("classes") or [dict(c) for c in plan.decision.classes],
        "plan": plan.to_dict(), "plan_hash": plan.hash,
    }
    if "feature_layer" in checked["task_settings"]:
        settings.update({"feature_layer": layer or str(st.feature_layer),
                         "feature_reference": checked["feature_reference"],
                         "feature_method": "ledoit-wolf mahalanobis, permutation tests"})
    return settings


def _provenance(plan: AuditPlan, cohort: Cohort, cases: pd.DataFrame, fingerprint: Any,
                report: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        "versions": _versions(),
        "seed": int(plan.statistics.seed),
        "empty_policy": plan.metrics.empty,
        "plan_hash": plan.hash,
        "manifest_hash": cohort.fingerprint(),
        # pseudonymised: no file name in any output (names can hold the original ids)
        "manifest_source": (Path(cohort.source).name if cohort.source and not cohort.pseudonymised
                            else None),
        "inputs_hash": hashlib.sha256(
            "|".join(cases["input_hash"].astype(str)).encode("ascii")).hexdigest()[:16],
        "model_fingerprint": fingerprint or (dict(report or {}).get("model_fingerprint")),
        "pseudonymised": cohort.pseudonymised,
    }


def _attach_members(adapter: Any, members: list[Any] | None) -> Any:
    """The adapter the cases run with: a copy carrying the ensemble members, if any."""
    from medseg_xai.audit.members import attach

    return attach(adapter, members)


def _member_provenance(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``provenance["uncertainty_members"]``: the member fingerprints (ensembles only)."""
    source = settings.get("uncertainty_source") or {}
    if source.get("kind", "augmentations") == "augmentations":
        return {}
    return {"uncertainty_members": [m["fingerprint"] for m in source["models"]]}


def _failure_settings(uncertainty: Any, failure: Any, adapter: Any,
                      members: Any = None) -> dict[str, Any]:
    """``settings`` entries of ``uncertainty=`` / ``uncertainty_members=`` / ``failure=``, what
    the per-case work needs of them (key ``"task"``) and the member adapters (key
    ``"members"``, None without)."""
    from medseg_xai.audit.failure import FailureSettings
    from medseg_xai.audit.members import check_dropout, resolve_members, uncertainty_source

    unc = None
    if uncertainty is False and members is not None:
        raise ValueError("uncertainty_members: expected uncertainty= to be on (True, a mapping "
                         "or None), got uncertainty=False")
    if uncertainty is None and members is not None:
        uncertainty = {"flips": ()}  # the members alone, no test-time variants
    if uncertainty is not None and uncertainty is not False:  # loads the explain package
        from medseg_xai.explain.uncertainty import UncertaintySettings

        unc = UncertaintySettings.from_value(uncertainty)
    if unc is not None and adapter is None:
        raise ValueError("uncertainty: expected an adapter (the members are forward passes of "
                         "the model), got stored predictions only")
    member_list, kind = resolve_members(members if unc is not None else None, adapter)
    fail = FailureSettings.from_value(failure)
    if fail is None and unc is not None:
        fail = FailureSettings()
    out: dict[str, Any] = {"task": {}, "members": member_list}
    if unc is not None:
        out["uncertainty"] = out["task"]["uncertainty"] = unc.to_dict()
        source = uncertainty_source(kind, member_list, adapter, unc)
        check_dropout(member_list or [adapter], unc)
        out["uncertainty_source"] = source
        if member_list is not None:  # in the cache key only when given
            out["task"]["uncertainty_members"] = [m["fingerprint"] for m in source["models"]]
    if fail is not None:
        out["failure"] = fail.to_dict()
        if fail.calibration_bins:
            out["task"]["calibration_bins"] = int(fail.calibration_bins)
        if fail.hidden_strata:
            out["task"]["properties"] = True
            out["task"]["lesion_properties"] = True  # lesion-level hidden strata
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


#: Metrics that a multi-class audit reports per class (``dice_liver``) besides their mean.
_PER_CLASS_KEYS = (*METRIC_KEYS, "soft_dice", "brier")
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


def _bin_strata(cases: pd.DataFrame, strata_list: list[Any], orders: dict[str, Any],
                settings: dict[str, Any]) -> tuple[pd.DataFrame, list[Any]]:
    """Bin continuous strata, warning (and noting in ``settings``) what was binned."""
    cases, strata_list, binned = bin_continuous_strata(cases, strata_list, orders)
    if binned:
        for note in binned:
            warnings.warn(note, stacklevel=3)  # build_result's caller, as before the split
        settings["statistics_warnings"] = [
            *[w for w in settings.get("statistics_warnings") or [] if w not in binned], *binned]
    return cases, strata_list


def _insert_class_column(subgroups: pd.DataFrame, settings: Mapping[str, Any]) -> None:
    """Add the ``class`` column to a multi-class audit's subgroup table (in place)."""
    if settings.get("classes") and len(settings["classes"]) > 1 and len(subgroups):
        from medseg_xai.classes import class_of_metric

        # which class a row describes; the unlabelled mean names the classes it covers
        subgroups.insert(subgroups.columns.get_loc("metric") + 1, "class", [
            class_of_metric(m, settings["classes"], _PER_CLASS_KEYS) for m in subgroups["metric"]])


def _with_feature_shift(
    cases: pd.DataFrame, features: np.ndarray | None, strata_list: list[Any],
    orders: dict[str, Any], settings: Mapping[str, Any], stat: Mapping[str, Any],
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The feature-shift table (None without features) and the cases with its columns."""
    feature_table = None
    if features is not None and features.shape[1] > 0:
        from medseg_xai.audit.features import feature_shift

        groups = [(s.name, *analysis.stratum_groups(cases, s, orders)) for s in strata_list]
        feature_table, per_case = feature_shift(
            features, cases, groups, reference=settings.get("feature_reference"),
            seed=int(stat["seed"]), n_permutations=int(stat["n_resamples"]),
            correction=stat["correction"], alpha=float(stat["alpha"]), min_n=int(stat["min_n"]))
        timing = [c for c in TIMING_COLUMNS if c in cases.columns]
        stale = [c for c in (*timing, *per_case.columns) if c in cases.columns]
        cases = cases.drop(columns=stale).join(per_case).join(cases[timing])
    return cases, feature_table


def _with_failure(
    cases: pd.DataFrame, strata_list: list[Any], orders: dict[str, Any],
    settings: Mapping[str, Any], stat: Mapping[str, Any], features: np.ndarray | None,
    calibration: tuple[np.ndarray, list[str]] | None, provenance: Mapping[str, Any],
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], Mapping[str, Any]]:
    """Failure-detection tables when asked, the cases with their columns, the provenance."""
    failure_tables: dict[str, pd.DataFrame] = {}
    if settings.get("failure"):  # issue 27: failure detection, calibration, hidden strata
        from medseg_xai.audit.failure import audit_tables

        groups = [(s.name, *analysis.stratum_groups(cases, s, orders)) for s in strata_list]
        failure_tables, per_case, searched = audit_tables(
            cases, groups, settings, features=features, calibration=calibration,
            categorical=[c for s in strata_list for c in s.columns], stat=stat)
        if searched:
            provenance = {**provenance, "hidden_strata": searched}
        timing = [c for c in TIMING_COLUMNS if c in cases.columns]
        cases = cases.drop(columns=[*timing, *[c for c in per_case if c in cases]]
                           ).join(per_case).join(cases[timing])
    return cases, failure_tables, provenance


def _with_lesion_strata(
    cases: pd.DataFrame, lesions: pd.DataFrame, strata_list: list[Any], orders: dict[str, Any],
    settings: Mapping[str, Any], stat: Mapping[str, Any], tables: dict[str, pd.DataFrame],
    provenance: Mapping[str, Any],
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame], Mapping[str, Any]]:
    """Lesion-level hidden strata when the failure settings search hidden strata: the table,
    the lesions with their ``hidden_stratum`` and ``provenance["lesion_hidden_strata"]``."""
    fail = settings.get("failure") or {}
    if not fail or not fail.get("hidden_strata", True) or not fail.get("lesion_strata", True):
        return lesions, tables, provenance
    from medseg_xai.audit.lesion_strata import lesion_hidden_strata

    groups = [(s.name, *analysis.stratum_groups(cases, s, orders)) for s in strata_list]
    table, membership, info = lesion_hidden_strata(
        lesions, cases, groups, settings, stat,
        categorical=[c for s in strata_list for c in s.columns])
    lesions = lesions.assign(hidden_stratum=membership.to_numpy())
    if info:
        provenance = {**provenance, "lesion_hidden_strata": info}
    return lesions, {**tables, "lesion_hidden_strata": table}, provenance


def _group_index(cases: pd.DataFrame, strata_list: list[Any],
                 orders: dict[str, Any]) -> dict[tuple[str, str], pd.Index]:
    """Index of the evaluated cases of each (stratum, group)."""
    group_index = {}
    for stratum in [analysis.OVERALL, *strata_list]:
        labels, order = analysis.stratum_groups(cases, stratum, orders)
        ok_labels = labels[cases["status"] == "ok"]
        for g in order:
            group_index[(stratum.name, str(g))] = ok_labels.index[ok_labels == g]
    return group_index


def _record_interval_settings(settings: dict[str, Any], metric_names: list[str],
                              stat: Mapping[str, Any]) -> None:
    """Note the metrics, and each one's interval method and minimum units, in ``settings``."""
    settings["metrics"] = list(metric_names)
    # the interval method each metric's means got, and from how many independent units an
    # interval is shown (stats.MIN_INTERVAL_UNITS): reports print both
    settings["ci_method"] = stat["ci_method"]
    settings["interval_methods"] = {
        m: stats_mod.interval_method(m, stat["ci_method"]) for m in metric_names}
    settings["interval_min_units"] = {
        m: int(stats_mod.MIN_INTERVAL_UNITS[meth])
        for m, meth in settings["interval_methods"].items()}


def _reader_tables(readers: Mapping[str, pd.DataFrame] | None, cases: pd.DataFrame,
                   strata_list: list[Any], orders: dict[str, Any], stat: Mapping[str, Any],
                   crit: list[Any]) -> dict[str, Any]:
    """The per-case reader tables given and the agreement tables made from them."""
    reader = dict(readers or {})
    reader.update(_readers.reader_tables(
        cases, reader.get("readers"), reader.get("reader_lesions"),
        analysis._groups_iter(cases, strata_list, orders), stat, crit))
    return reader


def _case_provenance(cases: pd.DataFrame, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Provenance with edge-case, reading-note and row counts of the cases."""
    provenance = dict(provenance)
    ok = cases["status"] == "ok"
    edge = cases.loc[ok, "edge_case"].value_counts() if "edge_case" in cases else pd.Series(dtype=int)
    provenance["edge_cases"] = {k: int(edge.get(k, 0))
                                for k in ("none", "both_empty", "pred_empty", "ref_empty")}
    if "read_notes" in cases:  # what the readers assumed (default spacing, soft reference...)
        notes = [n for v in cases.loc[ok, "read_notes"].dropna() for n in str(v).split("; ") if n]
        provenance["read_notes"] = {n: notes.count(n) for n in dict.fromkeys(notes)}
    provenance["n_rows"] = len(cases)
    provenance["n_evaluated"] = int(ok.sum())
    provenance["n_failed"] = int((cases["status"] == "failed").sum())
    return provenance


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
    cases, strata_list = _bin_strata(cases, strata_list, orders, settings)
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
    _insert_class_column(subgroups, settings)
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
    cases, feature_table = _with_feature_shift(cases, features, strata_list, orders, settings,
                                               stat)
    cases, failure_tables, provenance = _with_failure(
        cases, strata_list, orders, settings, stat, features, calibration, provenance)
    lesions, failure_tables, provenance = _with_lesion_strata(
        cases, lesions, strata_list, orders, settings, stat, failure_tables, provenance)
    group_index = _group_index(cases, strata_list, orders)
    crit = load_criteria(settings.get("criteria")) if settings.get("criteria") else []
    reader = _reader_tables(readers, cases, strata_list, orders, stat, crit)
    criteria_table = evaluate_criteria(
        crit, subgroups=subgroups, cases=cases, lesions=lesions, false_positives=fps,
        group_index=group_index, audit_strata=[s.name for s in strata_list], min_n=min_n,
        confidence=confidence, noninferiority=reader["reader_noninferiority"])
    criteria_table = add_sample_size(criteria_table, crit, subgroups, cases, group_index,
                                     confidence=confidence, ci_method=stat["ci_method"])
    _record_interval_settings(settings, metric_names, stat)
    provenance = _case_provenance(cases, provenance)
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
