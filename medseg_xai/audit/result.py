"""AuditResult: the tables of an audit, its settings and provenance, and its JSON form.

JSON layout (``schema = "medseg-xai/audit"``, ``schema_version``)::

    {"schema", "schema_version", "verdict", "settings", "provenance", "report",
     "tables": {name: {"columns": [...], "dtypes": [...], "data": [[...], ...]}},
     "explanations": [...], "run": {...}, "timings": {...}}

``verdict`` is the overall verdict (:func:`medseg_xai.status.overall_verdict` of the
``verdicts`` table). ``report`` is the report configuration (intended use, model identity,
reference standard, approvers...: everything the report shows that the audit did not measure).
``explanations`` are the failure-gallery entries of :func:`medseg_xai.audit.explanations.
explain_failures` (case, lesion, why it was picked, the miss analysis and compact slices), so
``medseg-xai report audit.json`` re-renders the same report without the images or the model.

Keys are sorted, floats are written with Python's shortest round-trip repr, NaN becomes
``null`` and infinities the strings ``"inf"``/``"-inf"``. The same inputs and seed give the same
bytes except for ``run`` (timestamp, wall time, executor, cache hits) and ``timings`` (per-case
inference time and memory), which describe one execution rather than the cohort.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

# the document's name and version live with its validation (schema.py), re-exported here
from medseg_xai.audit.schema import SCHEMA, SCHEMA_VERSION

__all__ = ["FAILURE_TABLES", "READER_TABLES", "SCHEMA", "SCHEMA_VERSION", "TABLES", "TIMING_COLUMNS", "VOLATILE_KEYS", "AuditResult"]

TABLES = ("cases", "subgroups", "lesions", "criteria", "lesion_detection", "false_positives",
          "volume_agreement", "verdicts", "group_counts")
#: Tables added after schema 1.0: read as empty from older documents.
_OPTIONAL_TABLES = ("group_counts",)
#: Multi-reader tables (``medseg_xai.audit.readers``): empty without reader columns, read as
#: empty from documents written before them.
READER_TABLES = ("readers", "reader_lesions", "reader_subgroups", "reader_noninferiority",
                 "reader_detection")
#: Tables only an audit with an adapter fills (issue 17): feature shift per subgroup and the
#: model's per-layer weight statistics; empty otherwise, read as empty from older documents.
MODEL_TABLES = ("feature_shift", "model_layers")
#: Failure detection, calibration and hidden strata (issue 27, ``audit(failure=...)``):
#: empty otherwise, read as empty from documents that lack them.
FAILURE_TABLES = ("calibration", "reliability", "failure_detection", "risk_coverage",
                  "selective", "hidden_strata", "lesion_hidden_strata")
TIMING_COLUMNS = ("load_s", "inference_s", "metrics_s", "lesions_s", "cache_s", "total_s",
                  "peak_memory_mb", "peak_gpu_memory_mb", "uncertainty_s")
VOLATILE_KEYS = ("run", "timings")


#: How the document is encoded (``to_json`` and ``write_json`` give the same bytes).
_JSON_FORMAT: dict[str, Any] = {"sort_keys": True, "indent": 1, "ensure_ascii": False,
                                "allow_nan": False}


def _cell(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_cell(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _cell(v) for k, v in value.items()}
    if isinstance(value, (bool, int, str)):
        return value
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


#: The lesions table's coordinate columns, stored as Arrow lists (a cell reads as a list):
#: as Python tuples they took about 0.9 KB per case at 100,000 cases.
COORDINATE_TYPES: dict[str, pa.DataType] = {
    "centroid_voxel": pa.list_(pa.float64()),
    "centroid_mm": pa.list_(pa.float64()),
    "bbox": pa.list_(pa.list_(pa.int32())),  # voxel indices
}


def coordinate_columns(lesions: pd.DataFrame) -> pd.DataFrame:
    """``lesions`` with its coordinate columns (:data:`COORDINATE_TYPES`) as Arrow lists."""
    for col, typ in COORDINATE_TYPES.items():
        if col in lesions.columns and not isinstance(lesions[col].dtype, pd.ArrowDtype):
            values = [list(v) if isinstance(v, (list, tuple, np.ndarray)) else None
                      for v in lesions[col]]
            lesions[col] = pd.Series(pd.arrays.ArrowExtensionArray(pa.array(values, type=typ)),
                                     index=lesions.index)
    return lesions


def _dtype_name(series: pd.Series) -> str:
    kind = series.dtype.kind
    if kind == "b":
        return "bool"
    if kind in "iu":
        return "int"
    if kind == "f":
        return "float"
    return "object"


class _LazyRows(list):
    """A table's JSON rows, made one at a time while the encoder writes them.

    A ``list`` subclass because :mod:`json`'s encoder only accepts lists; with ``indent`` it
    uses its pure-Python path, which iterates the list, so the rows of a 100,000-case table
    never exist as Python objects all at once (they took 1.5 GB for ``audit.json``).
    """

    def __init__(self, df: pd.DataFrame) -> None:
        super().__init__()
        self._df = df

    def __len__(self) -> int:
        return len(self._df)

    def __bool__(self) -> bool:
        return len(self._df) > 0

    def __iter__(self) -> Any:
        return ([_cell(v) for v in row] for row in self._df.itertuples(index=False, name=None))


def table_to_json(df: pd.DataFrame, lazy: bool = False) -> dict[str, Any]:
    """A DataFrame as ``{"columns", "dtypes", "data"}`` with JSON-safe cells (``lazy``: the
    rows are made while an encoder iterates them, see :meth:`AuditResult.write_json`)."""
    return {
        "columns": [str(c) for c in df.columns],
        "dtypes": [_dtype_name(df[c]) for c in df.columns],
        "data": (_LazyRows(df) if lazy else
                 [[_cell(v) for v in row] for row in df.itertuples(index=False, name=None)]),
    }


def table_from_json(obj: dict[str, Any]) -> pd.DataFrame:
    """Inverse of :func:`table_to_json` (dtypes restored, ``"inf"`` strings to floats)."""
    cols = obj["columns"]
    if not obj["data"]:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(obj["data"], columns=cols)
    for col, dtype in zip(cols, obj["dtypes"]):
        if dtype == "float":
            df[col] = pd.to_numeric(df[col].replace({"inf": math.inf, "-inf": -math.inf}),
                                    errors="coerce").astype(float)
        elif dtype == "int":
            df[col] = df[col].astype("int64")
        elif dtype == "bool":
            df[col] = df[col].astype(bool)
        else:
            df[col] = df[col].astype(object)
            df[col] = [tuple(v) if isinstance(v, list) else v for v in df[col]]
    return df


def _plain(obj: Any) -> Any:
    """Settings/provenance values to JSON (tuples -> lists, NaN -> None)."""
    return _cell(obj) if not isinstance(obj, dict) else {str(k): _plain(v) for k, v in obj.items()}


def _redacted(report: dict[str, Any]) -> dict[str, Any]:
    """The report configuration with folders dropped from the command line (they can name
    patients); file names stay."""
    if not report.get("command_line"):
        return report
    from medseg_xai._privacy import redact_paths

    return {**report, "command_line": redact_paths(str(report["command_line"]))}


@dataclass
class AuditResult:
    """Everything an audit produced.

    Attributes
    ----------
    cases : pandas.DataFrame
        One row per manifest row (failed rows kept): ``case_id, status ("ok"|"failed"), error,
        input_hash``, metadata, metric columns of ``evaluate_case``, lesion summary columns,
        derived strata (``lesion_size, lesion_count, empty_reference``) and, with inference,
        ``inference_s, peak_memory_mb``. ``patient_id`` is always a pseudonym.
    subgroups : pandas.DataFrame
        ``stratum, group, metric, n, n_clusters, estimate, median, ci_low, ci_high, gap,
        gap_ci_low, gap_ci_high, gap_best, gap_best_ci_low, gap_best_ci_high, best_group,
        p_value, p_kruskal, p_adjusted, flag``.
    lesions : pandas.DataFrame
        Every case's lesion rows plus ``case_id`` (see ``metrics.lesions``).
    criteria : pandas.DataFrame
        ``criterion, kind, stratum, group, metric, statistic, n, value, op, threshold, status``.
    lesion_detection : pandas.DataFrame
        Detection rate with Clopper-Pearson CI by size bin and subgroup.
    false_positives : pandas.DataFrame
        False positives on empty-reference scans, per subgroup.
    volume_agreement : pandas.DataFrame
        Bland-Altman bias and limits of predicted vs reference volume, per subgroup.
    verdicts : pandas.DataFrame
        One verdict per criterion (``criterion, status, n_rows, n_pass, n_fail, n_insufficient,
        n_not_evaluated, reason``).
    group_counts : pandas.DataFrame
        Manifest rows per group: ``n_rows, n_evaluated, n_failed, n_with_reference_lesions,
        n_without_reference_lesions``.
    report : dict
        Report configuration carried with the result (see :mod:`medseg_xai.reports`).
    explanations : list of dict
        Failure-gallery entries (:func:`medseg_xai.audit.explanations.explain_failures`).
    readers, reader_lesions, reader_subgroups, reader_noninferiority, reader_detection
        Several readers per case (``label_<reader>`` columns; empty otherwise), see
        :mod:`medseg_xai.audit.readers`: per case every comparison (reader pairs, model vs each
        reader and the consensus, STAPLE sensitivity / specificity); the readers' union lesions
        with the readers that marked them; per subgroup estimates with CIs, the non-inferiority
        of model-vs-reader against reader-vs-reader agreement, and detection of lesions all /
        a majority of / any reader marked.
    settings, provenance, run : dict
        Settings of the audit; provenance (versions, hashes, seed, empty-mask policy, edge-case
        counts, row counts); ``run`` describes the execution (timestamp, wall time, executor).
    """

    cases: pd.DataFrame
    subgroups: pd.DataFrame
    lesions: pd.DataFrame
    criteria: pd.DataFrame
    lesion_detection: pd.DataFrame
    false_positives: pd.DataFrame
    volume_agreement: pd.DataFrame
    verdicts: pd.DataFrame
    group_counts: pd.DataFrame = field(default_factory=pd.DataFrame)
    settings: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    explanations: list[dict[str, Any]] = field(default_factory=list)
    readers: pd.DataFrame = field(default_factory=pd.DataFrame)
    reader_lesions: pd.DataFrame = field(default_factory=pd.DataFrame)
    reader_subgroups: pd.DataFrame = field(default_factory=pd.DataFrame)
    reader_noninferiority: pd.DataFrame = field(default_factory=pd.DataFrame)
    reader_detection: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: ``audit.features.FEATURE_SHIFT_COLUMNS`` / ``explain.weights.WEIGHT_COLUMNS``
    feature_shift: pd.DataFrame = field(default_factory=pd.DataFrame)
    model_layers: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: ``audit.failure`` / ``audit.hidden_strata`` tables (:data:`FAILURE_TABLES`)
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)
    reliability: pd.DataFrame = field(default_factory=pd.DataFrame)
    failure_detection: pd.DataFrame = field(default_factory=pd.DataFrame)
    risk_coverage: pd.DataFrame = field(default_factory=pd.DataFrame)
    selective: pd.DataFrame = field(default_factory=pd.DataFrame)
    hidden_strata: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: lesion-level hidden strata (``audit.lesion_strata``; the lesions' ``hidden_stratum``)
    lesion_hidden_strata: pd.DataFrame = field(default_factory=pd.DataFrame)

    # -- counts and views --------------------------------------------------------------------

    @property
    def n_rows(self) -> int:
        """Manifest rows (= n_evaluated + n_failed)."""
        return len(self.cases)

    @property
    def n_evaluated(self) -> int:
        return int((self.cases["status"] == "ok").sum())

    @property
    def n_failed(self) -> int:
        return int((self.cases["status"] == "failed").sum())

    @property
    def failed(self) -> pd.DataFrame:
        """``case_id, error`` of the failed rows."""
        return self.cases.loc[self.cases["status"] == "failed", ["case_id", "error"]]

    @property
    def audit_id(self) -> str:
        """Short content id of the audit (12 hex): SHA-256 of the manifest, input files, model,
        analysis plan and seed hashes in ``provenance``; the same audit re-rendered (or read
        back from its JSON) keeps it, another cohort, model or plan changes it. Printed in the
        report's footer so a printed page can be traced to its audit.json."""
        import hashlib
        import json

        p = self.provenance or {}
        keys = ("manifest_hash", "inputs_hash", "model_fingerprint", "plan_hash", "seed")
        text = json.dumps([str(p.get(k)) for k in keys])
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]

    @property
    def strata(self) -> list[str]:
        """Names of the strata of this audit (without ``"overall"``)."""
        return list(self.settings.get("strata", []))

    @property
    def verdict(self) -> str:
        """Overall verdict: FAIL if any criterion fails, INSUFFICIENT DATA if any lacks data or
        could not be evaluated, PASS if all pass, ``"NO CRITERIA"`` without criteria."""
        from medseg_xai.status import overall_verdict

        if self.verdicts is None or self.verdicts.empty:
            return overall_verdict([])
        return overall_verdict(list(self.verdicts["status"]))

    @property
    def confidence(self) -> float:
        """Confidence level of every interval of this audit (``settings["confidence"]``)."""
        return float(self.settings.get("confidence", 0.95))

    @property
    def criteria_definitions(self) -> pd.DataFrame:
        """The pre-specified criteria as defined (metric, statistic, op, threshold, strata,
        size range, minimum n), one row each, apart from their results in :attr:`criteria`."""
        from medseg_xai.audit.criteria import criterion_definitions

        return criterion_definitions(self.settings.get("criteria") or [],
                                     min_n=int(self.settings.get("min_n", 10)))

    def with_report(self, config: dict[str, Any] | None) -> AuditResult:
        """A copy whose report configuration is ``config`` merged over the current one."""
        import dataclasses

        return dataclasses.replace(self, report={**self.report, **dict(config or {})})

    def metric(self, metric: str, stratum: str = "overall") -> pd.DataFrame:
        """Subgroup rows of one metric and stratum."""
        sub = self.subgroups
        return sub[(sub["metric"] == metric) & (sub["stratum"] == stratum)].reset_index(drop=True)

    def summary(self) -> str:
        """A few plain lines: counts, overall Dice, verdict."""
        lines = [f"audit: {self.n_rows} rows, {self.n_evaluated} evaluated, {self.n_failed} failed"]
        overall = self.metric("dice")
        if len(overall):
            r = overall.iloc[0]
            # the report's one interval format: "estimate (NN% CI low to high)"
            lines.append(f"Dice {r['estimate']:.3f} ({self.confidence:.0%} CI "
                         f"{r['ci_low']:.3f} to {r['ci_high']:.3f})")
        worse = self.subgroups[self.subgroups["flag"] == "worse"]
        for _, r in worse.iterrows():
            lines.append(f"worse: {r['stratum']}={r['group']} {r['metric']} gap {r['gap']:+.3f}")
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"AuditResult(n_rows={self.n_rows}, n_evaluated={self.n_evaluated}, "
                f"n_failed={self.n_failed}, strata={self.strata}, verdict={self.verdict!r})")

    # -- JSON --------------------------------------------------------------------------------

    def to_dict(self, lazy: bool = False) -> dict[str, Any]:
        """The JSON document as a dict (see module docstring); ``lazy``: tables' rows are made
        while an encoder iterates them (:meth:`write_json`)."""
        timing_cols = [c for c in TIMING_COLUMNS if c in self.cases.columns]
        tables = {name: table_to_json(getattr(self, name), lazy)
                  for name in (*TABLES, *READER_TABLES, *MODEL_TABLES, *FAILURE_TABLES)}
        tables["cases"] = table_to_json(self.cases.drop(columns=timing_cols), lazy)
        timings = (table_to_json(self.cases[["case_id", *timing_cols]], lazy) if timing_cols
                   else None)
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict,
            "settings": _plain(self.settings),
            "provenance": _plain(self.provenance),
            "report": _plain(_redacted(self.report)),
            "tables": tables,
            "explanations": [_plain(e) for e in self.explanations],
            "run": _plain(self.run),
            "timings": timings,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """Write (when ``path`` is given) and return the schema-versioned JSON text.

        The whole text is built in memory; for large audits use :meth:`write_json`, which
        writes the same bytes without it.
        """
        text = json.dumps(self.to_dict(), **_JSON_FORMAT)
        if path is not None:
            from medseg_xai._io import atomic_write  # never a truncated audit.json

            atomic_write(path, text + "\n")
        return text

    def write_json(self, path: str | Path) -> Path:
        """Write the JSON document to ``path``, streamed: the same bytes as :meth:`to_json`
        writes, without the whole text or the tables' rows in memory at once (a
        100,000-case ``audit.json`` peaked 1.5 GB above the result that way).

        Written atomically: a crash or a full disk never leaves a truncated file.
        """
        from medseg_xai._io import atomic_open

        encoder = json.JSONEncoder(**_JSON_FORMAT)
        with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
            buf: list[str] = []
            for chunk in encoder.iterencode(self.to_dict(lazy=True)):
                buf.append(chunk)
                if len(buf) >= 8192:
                    fh.write("".join(buf))
                    buf.clear()
            fh.write("".join(buf) + "\n")
        return Path(path)

    @classmethod
    def from_json(cls, source: str | Path) -> AuditResult:
        """Read a result written by :meth:`to_json` (a path or the JSON text itself).

        Raises
        ------
        ValueError
            If the document is not an audit result or has an unknown major schema version.
        """
        from medseg_xai.audit.schema import check_audit_document, load_audit_json

        text = str(source)
        if not text.lstrip().startswith(("{", "[")):
            p = Path(source)
            if not p.is_file():
                raise ValueError(f"from_json: expected an audit JSON file, got {text!r} (not found)")
            data = load_audit_json(p)  # size, depth and layout checked: errors name the path
        else:
            try:
                data = json.loads(text)
            except RecursionError:
                raise ValueError("from_json: refused: nesting deeper than the parser allows"
                                 ) from None
            check_audit_document(data, "from_json")
        if data.get("schema") != SCHEMA:
            raise ValueError(f"from_json: expected schema {SCHEMA!r}, got {data.get('schema')!r}")
        major = str(data.get("schema_version", "")).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"from_json: expected schema version {SCHEMA_VERSION.split('.')[0]}.x, "
                             f"got {data.get('schema_version')!r}")
        tables = {name: table_from_json(data["tables"][name]) for name in TABLES
                  if name in data["tables"] or name not in _OPTIONAL_TABLES}
        tables["lesions"] = coordinate_columns(tables["lesions"])
        tables.update({name: table_from_json(data["tables"][name]) for name in READER_TABLES
                       if name in data["tables"]})
        tables.update({name: table_from_json(data["tables"][name]) for name in MODEL_TABLES
                       if name in data["tables"]})
        tables.update({name: table_from_json(data["tables"][name]) for name in FAILURE_TABLES
                       if name in data["tables"]})
        if data.get("timings"):
            timings = table_from_json(data["timings"])
            cases = tables["cases"]
            for col in timings.columns[1:]:
                cases[col] = timings[col].to_numpy()
        return cls(**tables, settings=data.get("settings", {}), provenance=data.get("provenance", {}),
                   run=data.get("run", {}), report=data.get("report") or {},
                   explanations=list(data.get("explanations") or []))

    # -- HTML --------------------------------------------------------------------------------

    def to_html(self, path: str | Path, **kwargs: Any) -> Path:
        """Write the self-contained HTML report (``medseg_xai.reports.write_html``; a view,
        imported only here so the core never loads it otherwise)."""
        from medseg_xai.reports import write_html

        return write_html(self, path, **kwargs)
