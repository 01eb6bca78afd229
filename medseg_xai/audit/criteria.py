"""Pre-specified acceptance criteria -> PASS / FAIL / INSUFFICIENT DATA.

Criteria are a list of small mappings (a Python list, a dict ``{"criteria": [...]}``, or the
same in a YAML/JSON file). Each criterion has:

``name``
    Free text shown in the report (default: generated from the other fields).
``kind``
    ``"metric"`` (default): a statistic of one metric, checked in every group of the listed
    strata. ``"gap"``: the largest absolute gap of a metric within each listed stratum.
    ``"detection"``: lesion detection rate, optionally for a lesion-size range, per group.
    ``"false_positive"``: share of empty-reference scans with any predicted voxel, per group.
``metric``
    Metric column for ``metric`` / ``gap`` criteria (``"dice"``, ``"hd95"``...).
``statistic``
    ``metric``: ``estimate`` (mean, default), ``median``, ``ci_low``, ``ci_high``.
    ``gap``: ``gap`` (to the overall value, default) or ``gap_best`` (to the best group).
    ``detection`` / ``false_positive``: ``rate`` (default), ``ci_low``, ``ci_high``.
``op`` and ``threshold``
    Comparison ``>=``, ``>``, ``<=``, ``<`` against a number.
``strata``
    List of strata names (``["device"]``), ``"all"`` (every stratum of the audit) or
    ``"overall"`` (default; the whole cohort). The overall cohort is always checked when listed.
``min_volume_mm3`` / ``max_volume_mm3``
    Lesion-size range of a ``detection`` criterion (reference lesion volume, mm^3).
``min_n``
    Groups (or lesion counts) below it give INSUFFICIENT DATA (default: the audit's ``min_n``).
``margin`` (kind ``"noninferiority"``)
    Several readers per case: the model is within inter-reader variability when the lower CI
    bound of (model-vs-reader minus reader-vs-reader ``metric``, paired by case) is at least
    ``-margin`` (default 0.05; ``metric`` ``dice`` or ``nsd``; ``op``/``threshold`` follow).
    See :mod:`medseg_xai.audit.readers`.

Example (YAML)::

    criteria:
      - name: Dice lower CI >= 0.70 in every device group
        metric: dice
        statistic: ci_low
        op: ">="
        threshold: 0.70
        strata: [device]
      - name: largest Dice gap <= 0.05
        kind: gap
        metric: dice
        op: "<="
        threshold: 0.05
        strata: all
      - name: detection >= 0.9 for lesions >= 100 mm3
        kind: detection
        min_volume_mm3: 100
        op: ">="
        threshold: 0.9

The result has one row per criterion and group: ``criterion, kind, stratum, group, metric,
statistic, n, value, op, threshold, status, reason``; :func:`verdicts` folds it to one verdict
per criterion (FAIL if any group fails, else INSUFFICIENT DATA if any group lacks data or could
not be evaluated, else PASS).

Scans without any reference lesion are their own category: ``metric`` and ``gap`` criteria are
not judged on a group made only of such scans (its row is NOT EVALUATED, with the reason), and a
``gap`` leaves such groups out of the comparison; ``false_positive`` criteria are the ones that
judge them. A criterion that cannot be checked at all (a gap criterion on an audit without
strata) gives one NOT EVALUATED row with the reason, never silence.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.audit.stats import rate_interval
from medseg_xai.status import FAIL, INSUFFICIENT, NOT_EVALUATED, PASS

__all__ = [
    "CRITERIA_COLUMNS",
    "DEFAULT_CRITERIA",
    "FAIL",
    "INSUFFICIENT",
    "NOT_EVALUATED",
    "PASS",
    "VERDICT_COLUMNS",
    "criterion_definitions",
    "evaluate_criteria",
    "load_criteria",
    "verdicts",
]

CRITERIA_COLUMNS = ["criterion", "kind", "stratum", "group", "metric", "statistic", "n", "value",
                    "op", "threshold", "status", "reason"]
VERDICT_COLUMNS = ["criterion", "status", "n_rows", "n_pass", "n_fail", "n_insufficient",
                   "n_not_evaluated", "reason"]
#: Metrics that still mean something on a scan without reference lesions.
_EMPTY_REFERENCE_METRICS = ("fp_per_case", "n_false_positive", "n_pred_lesions", "specificity",
                            "volume_pred_mm3")
_EMPTY_REASON = "no reference lesion in this group: {metric} is not judged on such scans{who}"


def _empty_reason(metric: str, criteria: Sequence[Mapping[str, Any]]) -> str:
    """Says which false-positive criterion judges empty-reference scans, or that none does
    (the sentence promises only what the plan holds)."""
    names = [str(c.get("name")) for c in criteria if c.get("kind") == "false_positive"]
    who = (f" (the false-positive criterion {names[0]!r} judges them)" if names else
           " (no false-positive criterion in these criteria judges them)")
    return _EMPTY_REASON.format(metric=metric, who=who)
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_STATISTICS = {
    "metric": ("estimate", "median", "ci_low", "ci_high"),
    "gap": ("gap", "gap_best"),
    "detection": ("rate", "ci_low", "ci_high"),
    "false_positive": ("rate", "ci_low", "ci_high"),
    "noninferiority": ("ci_low",),
}
_KEYS = {"name", "kind", "metric", "statistic", "op", "threshold", "strata", "min_volume_mm3",
         "max_volume_mm3", "min_n", "margin", "assumed_mean"}

#: Sensible defaults: Dice lower CI >= 0.70 in every group, largest Dice gap <= 0.05 within every
#: stratum, detection >= 0.90 for reference lesions of at least 100 mm^3, and at most 20% of the
#: scans without reference lesions with a false positive (the overlap and distance criteria do
#: not judge those scans: without this one nothing would).
DEFAULT_CRITERIA: list[dict[str, Any]] = [
    {"name": "Dice lower CI bound >= 0.70 in every subgroup", "kind": "metric", "metric": "dice",
     "statistic": "ci_low", "op": ">=", "threshold": 0.70, "strata": "all"},
    {"name": "Largest Dice gap to the overall mean <= 0.05", "kind": "gap", "metric": "dice",
     "statistic": "gap", "op": "<=", "threshold": 0.05, "strata": "all"},
    {"name": "Detection rate >= 0.90 for lesions >= 100 mm3", "kind": "detection",
     "statistic": "rate", "op": ">=", "threshold": 0.90, "min_volume_mm3": 100.0,
     "strata": "overall"},
    {"name": "False positives on <= 20% of scans without reference lesions",
     "kind": "false_positive", "statistic": "rate", "op": "<=", "threshold": 0.20,
     "strata": "overall"},
]


def load_criteria(source: str | Path | Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
                  ) -> list[dict[str, Any]]:
    """Read and validate criteria from a YAML/JSON file, a dict or a list.

    Parameters
    ----------
    source : str, Path, mapping or sequence, optional
        File path (``.yaml``/``.yml``/``.json``), ``{"criteria": [...]}``, a list of criteria,
        ``"default"`` for :data:`DEFAULT_CRITERIA`, or None (no criteria).

    Returns
    -------
    list of dict
        Normalised criteria (every key filled).

    Raises
    ------
    ValueError
        Naming the criterion and the field that is wrong.
    """
    if source is None:
        return []
    if isinstance(source, str) and source == "default":
        source = DEFAULT_CRITERIA
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.is_file():
            raise ValueError(f"criteria: expected a YAML or JSON file, got {str(p)!r} (not found)")
        from medseg_xai._yaml import load_yaml_file

        if p.suffix.lower() == ".json":
            try:
                source = json.loads(p.read_text(encoding="utf-8"))
            except RecursionError:
                raise ValueError(f"criteria {p.name!r}: refused: nesting deeper than the parser "
                                 "allows") from None
            except json.JSONDecodeError as exc:
                raise ValueError(f"criteria {p.name!r}: expected valid JSON, could not parse it "
                                 f"({exc.msg} at line {exc.lineno})") from None
        else:  # size, alias and depth limits, repeated keys refused (medseg_xai._yaml)
            source = load_yaml_file(p, "criteria")
    if isinstance(source, Mapping):
        if "criteria" not in source:
            raise ValueError(f"criteria: expected a list or a mapping with key 'criteria', got "
                             f"keys {sorted(source)}")
        source = source["criteria"]
    if not isinstance(source, Sequence) or isinstance(source, (str, bytes)):
        raise ValueError(f"criteria: expected a list of criteria, got {type(source).__name__}")
    return [_normalise(i, c) for i, c in enumerate(source)]


def _normalise(i: int, crit: Any) -> dict[str, Any]:
    where = f"criteria[{i}]"
    if not isinstance(crit, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(crit).__name__}")
    unknown = set(crit) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(_KEYS)}")
    kind = crit.get("kind", "metric")
    if kind not in _STATISTICS:
        raise ValueError(f"{where}: kind: expected one of {sorted(_STATISTICS)}, got {kind!r}")
    statistic = crit.get("statistic", _STATISTICS[kind][0])
    if statistic not in _STATISTICS[kind]:
        raise ValueError(f"{where}: statistic: expected one of {_STATISTICS[kind]} for kind "
                         f"{kind!r}, got {statistic!r}")
    metric = crit.get("metric")
    if kind == "noninferiority":  # threshold = -margin (audit.readers)
        crit = _noninferiority(where, crit)
        metric = crit["metric"]
    if kind in ("metric", "gap") and not isinstance(metric, str):
        raise ValueError(f"{where}: metric: expected a metric name for kind {kind!r}, got {metric!r}")
    op = crit.get("op")
    if op not in _OPS:
        raise ValueError(f"{where}: op: expected one of {sorted(_OPS)}, got {op!r}")
    threshold = crit.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold):
        raise ValueError(f"{where}: threshold: expected a finite number, got {threshold!r}")
    strata = crit.get("strata", "overall")
    if isinstance(strata, str):
        strata = strata if strata in ("all", "overall") else [strata]
    elif isinstance(strata, Sequence) and all(isinstance(s, str) for s in strata):
        strata = list(strata)
    else:
        raise ValueError(f"{where}: strata: expected 'all', 'overall' or a list of names, got {strata!r}")
    min_n = crit.get("min_n")
    if min_n is not None and (not isinstance(min_n, int) or min_n < 1):
        raise ValueError(f"{where}: min_n: expected a positive int, got {min_n!r}")
    out = {
        "kind": kind, "metric": metric if kind in ("metric", "gap", "noninferiority") else None,
        "statistic": statistic, "op": op, "threshold": float(threshold), "strata": strata,
        "min_volume_mm3": crit.get("min_volume_mm3"), "max_volume_mm3": crit.get("max_volume_mm3"),
        "min_n": min_n,
    }
    if kind == "noninferiority":
        out["margin"] = float(crit["margin"])
    assumed = crit.get("assumed_mean")
    if assumed is not None:  # the true mean a sample size is stated for (audit.sample_size)
        if isinstance(assumed, bool) or not isinstance(assumed, (int, float)) \
                or not np.isfinite(assumed):
            raise ValueError(f"{where}: assumed_mean: expected a finite number, got {assumed!r}")
        out["assumed_mean"] = float(assumed)
    out["name"] = str(crit.get("name") or _auto_name(out))
    return out


def _noninferiority(where: str, crit: Mapping[str, Any]) -> dict[str, Any]:
    from medseg_xai.audit.readers import DEFAULT_MARGIN, NONINFERIORITY_METRICS

    out = dict(crit)
    out.setdefault("metric", "dice")
    if out["metric"] not in NONINFERIORITY_METRICS:
        raise ValueError(f"{where}: metric: expected one of {NONINFERIORITY_METRICS} for kind "
                         f"'noninferiority', got {out['metric']!r}")
    margin = out.get("margin", DEFAULT_MARGIN)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise ValueError(f"{where}: margin: expected a number >= 0, got {margin!r}")
    out["margin"] = float(margin)
    out.setdefault("op", ">=")
    out.setdefault("threshold", -float(margin))
    if out["op"] != ">=" or float(out["threshold"]) != -float(margin):
        raise ValueError(f"{where}: kind 'noninferiority' is lower CI bound >= -margin; expected "
                         f"op '>=' and threshold {-float(margin):g} (or neither), got "
                         f"{out['op']!r} {out['threshold']!r}")
    return out


def _auto_name(c: Mapping[str, Any]) -> str:
    what = c["metric"] or c["kind"]
    scope = c["strata"] if isinstance(c["strata"], str) else " / ".join(c["strata"])
    return f"{what} {c['statistic']} {c['op']} {c['threshold']:g} ({scope})"


def _strata_names(spec: Any, audit_strata: Sequence[str]) -> list[str]:
    if spec == "overall":
        return ["overall"]
    if spec == "all":
        return ["overall", *audit_strata]
    return list(spec)


def _status(value: float, op: str, threshold: float, enough: bool) -> str:
    if not enough or not np.isfinite(value):
        return INSUFFICIENT
    return PASS if _OPS[op](value, threshold) else FAIL


def _judged_on_empty(metric: str | None) -> bool:
    m = metric or ""
    return any(m == e or m.startswith(e + "_") for e in _EMPTY_REFERENCE_METRICS)


#: True for metrics that mean something on a scan without reference lesions (false positives,
#: predicted volume, specificity); overlap and distance metrics do not.
judged_on_empty = _judged_on_empty


@dataclass(frozen=True)
class _Tables:
    """An audit's tables and group lookups, as the criteria read them."""

    subgroups: pd.DataFrame
    cases: pd.DataFrame
    lesions: pd.DataFrame
    false_positives: pd.DataFrame
    group_index: Mapping[tuple[str, str], pd.Index]
    groups_by_stratum: dict[str, list[str]]
    only_empty: dict[tuple[str, str], bool]
    evaluated: bool
    confidence: float
    criteria: Sequence[Mapping[str, Any]]


def _stratum_rows(t: _Tables, crit: Mapping[str, Any], base: dict[str, Any], stratum: str,
                  need: int) -> list[dict[str, Any]]:
    """One criterion's rows in one stratum (one per group, or one saying why none)."""
    if crit["kind"] == "gap" and stratum == "overall":
        return [{**base, "stratum": stratum, "group": "", "n": 0,
                 "value": float("nan"), "status": NOT_EVALUATED,
                 "reason": "the overall cohort has no gap to itself"}]
    if stratum not in t.groups_by_stratum:
        return [{**base, "stratum": stratum, "group": "", "n": 0,
                 "value": float("nan"), "status": NOT_EVALUATED,
                 "reason": f"stratum {stratum!r} was not audited"}]
    if crit["kind"] in ("metric", "gap"):
        sub = t.subgroups[(t.subgroups["stratum"] == stratum)
                          & (t.subgroups["metric"] == crit["metric"])]
        if sub.empty and not t.evaluated:  # no metric columns at all: every case failed
            return [{**base, "stratum": stratum, "group": "", "n": 0,
                     "value": float("nan"), "status": INSUFFICIENT,
                     "reason": "no case was evaluated"}]
        if sub.empty:
            raise ValueError(f"criteria {crit['name']!r}: metric {crit['metric']!r} is not "
                             f"among the audit's metrics")
        if not _judged_on_empty(crit["metric"]):
            empty = sub["group"].astype(str).map(
                lambda g, s=stratum: t.only_empty.get((s, g), False))
        else:
            empty = pd.Series(False, index=sub.index)
        if crit["kind"] == "metric":
            return _metric_rows(t, crit, base, stratum, sub, empty, need)
        return _gap_rows(crit, base, stratum, sub, empty, need)
    if crit["kind"] == "detection":
        return _detection_rows(t, crit, base, stratum, need)
    return _false_positive_rows(t, crit, base, stratum, need)


def _metric_rows(t: _Tables, crit: Mapping[str, Any], base: dict[str, Any], stratum: str,
                 sub: pd.DataFrame, empty: pd.Series, need: int) -> list[dict[str, Any]]:
    """A metric criterion's row per group (groups without reference lesions not judged)."""
    rows: list[dict[str, Any]] = []
    for (_, r), is_empty in zip(sub.iterrows(), empty):
        value = float(r[crit["statistic"]])
        if is_empty:
            rows.append({**base, "stratum": stratum, "group": r["group"],
                         "n": int(r["n"]), "value": value, "status": NOT_EVALUATED,
                         "reason": _empty_reason(crit["metric"], t.criteria)})
            continue
        rows.append({**base, "stratum": stratum, "group": r["group"], "n": int(r["n"]),
                     "value": value,
                     "status": _status(value, crit["op"], crit["threshold"], r["n"] >= need)})
    return rows


def _gap_rows(crit: Mapping[str, Any], base: dict[str, Any], stratum: str, sub: pd.DataFrame,
              empty: pd.Series, need: int) -> list[dict[str, Any]]:
    """A gap criterion's one row: the largest absolute gap among large enough groups."""
    left_out = sorted(str(g) for g in sub.loc[empty.to_numpy(), "group"])
    enough = sub[(sub["n"] >= need) & ~empty.to_numpy()]
    reason = (f"leaves out group(s) without reference lesions: {', '.join(left_out)}"
              if left_out else "")
    col = crit["statistic"]
    if len(enough) < 2 or not np.isfinite(enough[col].astype(float)).any():
        return [{**base, "stratum": stratum, "group": "", "n": int(enough["n"].sum()),
                 "value": float("nan"), "status": INSUFFICIENT,
                 "reason": reason or f"fewer than two groups with n >= {need}"}]
    absgap = enough[col].astype(float).abs()
    worst = enough.loc[absgap.idxmax()]
    value = float(absgap.max())
    return [{**base, "stratum": stratum, "group": str(worst["group"]),
             "n": int(enough["n"].sum()), "value": value, "reason": reason,
             "status": _status(value, crit["op"], crit["threshold"], True)}]


def _detection_rows(t: _Tables, crit: Mapping[str, Any], base: dict[str, Any], stratum: str,
                    need: int) -> list[dict[str, Any]]:
    """A detection criterion's row per group: detected reference lesions in the size range."""
    lesions = t.lesions
    ref = lesions[lesions["source"] == "reference"] if len(lesions) else lesions
    if len(ref):
        vol = ref["volume_mm3"].astype(float)
        keep = pd.Series(True, index=ref.index)
        if crit["min_volume_mm3"] is not None:
            keep &= vol >= float(crit["min_volume_mm3"])
        if crit["max_volume_mm3"] is not None:
            keep &= vol < float(crit["max_volume_mm3"])
        ref = ref[keep]
    rows: list[dict[str, Any]] = []
    for group in t.groups_by_stratum[stratum]:
        ids = set(t.cases.loc[t.group_index[(stratum, group)], "case_id"])
        sel = ref[ref["case_id"].isin(ids)] if len(ref) else ref
        n = len(sel)
        k = int((sel["status"] == "detected").sum()) if n else 0
        lo, hi = rate_interval(k, n, t.confidence)
        value = {"rate": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi}[crit["statistic"]]
        rows.append({**base, "stratum": stratum, "group": group, "n": n, "value": value,
                     "reason": "" if n else "no reference lesion in the size range",
                     "status": _status(value, crit["op"], crit["threshold"], n >= need)})
    return rows


def _false_positive_rows(t: _Tables, crit: Mapping[str, Any], base: dict[str, Any],
                         stratum: str, need: int) -> list[dict[str, Any]]:
    """A false-positive criterion's row per group, from the false-positive table."""
    sub = t.false_positives[t.false_positives["stratum"] == stratum]
    col = {"rate": "fp_scan_rate", "ci_low": "ci_low", "ci_high": "ci_high"}[crit["statistic"]]
    rows: list[dict[str, Any]] = []
    for _, r in sub.iterrows():
        value = float(r[col])
        rows.append({**base, "stratum": stratum, "group": r["group"], "n": int(r["n_scans"]),
                     "value": value,
                     "reason": "" if r["n_scans"] else "no scan without reference lesions",
                     "status": _status(value, crit["op"], crit["threshold"], r["n_scans"] >= need)})
    return rows


def evaluate_criteria(
    criteria: Sequence[Mapping[str, Any]],
    *,
    subgroups: pd.DataFrame,
    cases: pd.DataFrame,
    lesions: pd.DataFrame,
    false_positives: pd.DataFrame,
    group_index: Mapping[tuple[str, str], pd.Index],
    audit_strata: Sequence[str],
    min_n: int,
    confidence: float = 0.95,
    noninferiority: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Check normalised criteria against an audit's tables.

    Parameters
    ----------
    criteria : sequence of mapping
        From :func:`load_criteria`.
    subgroups, cases, lesions, false_positives : pandas.DataFrame
        The audit's tables.
    group_index : mapping
        ``(stratum, group) -> index of evaluated cases`` for every group (overall included).
    audit_strata : sequence of str
        The audit's strata names (what ``"all"`` expands to).
    min_n : int
        Default minimum group size.
    confidence : float
        Level of the Clopper-Pearson intervals of detection criteria.
    noninferiority : pandas.DataFrame, optional
        ``AuditResult.reader_noninferiority`` (kind ``"noninferiority"``).
    """
    rows: list[dict[str, Any]] = []
    evaluated = "status" in cases.columns and bool((cases["status"] == "ok").any())
    groups_by_stratum: dict[str, list[str]] = {}
    for s, g in group_index:
        groups_by_stratum.setdefault(s, []).append(g)
    ref_vol = (pd.to_numeric(cases["volume_ref_mm3"], errors="coerce")
               if "volume_ref_mm3" in cases.columns else pd.Series(np.nan, index=cases.index))
    only_empty = {key: bool(len(idx)) and bool((ref_vol.loc[idx] == 0).all())
                  for key, idx in group_index.items()}
    tables = _Tables(subgroups, cases, lesions, false_positives, group_index, groups_by_stratum,
                     only_empty, evaluated, confidence, criteria)
    for crit in criteria:
        need = int(crit.get("min_n") or min_n)
        base = {"criterion": crit["name"], "kind": crit["kind"], "metric": crit["metric"] or "",
                "statistic": crit["statistic"], "op": crit["op"], "threshold": crit["threshold"],
                "reason": ""}
        if crit["kind"] == "noninferiority":
            from medseg_xai.audit.readers import noninferiority_rows

            rows.extend({**base, **r} for r in noninferiority_rows(
                crit, noninferiority, _strata_names(crit["strata"], audit_strata), min_n))
            continue
        names = _strata_names(crit["strata"], audit_strata)
        if crit["kind"] == "gap" and crit["strata"] == "all":
            names = [s for s in names if s != "overall"]  # the whole cohort has no gap to itself
            if not names:
                rows.append({**base, "stratum": "", "group": "", "n": 0, "value": float("nan"),
                             "status": NOT_EVALUATED,
                             "reason": "no strata were audited: a gap needs groups to compare"})
                continue
        for stratum in names:
            rows.extend(_stratum_rows(tables, crit, base, stratum, need))
    return pd.DataFrame(rows, columns=CRITERIA_COLUMNS)


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """One verdict per criterion: FAIL if any row fails, else INSUFFICIENT DATA if any row lacks
    data or could not be evaluated, else PASS.

    Columns :data:`VERDICT_COLUMNS`; ``reason`` joins the distinct reasons of rows that were
    not evaluated (empty when all were).
    """
    from medseg_xai.status import overall_verdict

    out = []
    for name, sub in table.groupby("criterion", sort=False):
        counts = sub["status"].value_counts()
        n_fail, n_ins, n_pass, n_ne = (int(counts.get(s, 0))
                                       for s in (FAIL, INSUFFICIENT, PASS, NOT_EVALUATED))
        reasons = sub.loc[sub["status"] == NOT_EVALUATED, "reason"] if "reason" in sub else []
        out.append({"criterion": name, "status": overall_verdict(list(sub["status"])),
                    "n_rows": len(sub), "n_pass": n_pass, "n_fail": n_fail,
                    "n_insufficient": n_ins, "n_not_evaluated": n_ne,
                    "reason": "; ".join(dict.fromkeys(str(r) for r in reasons if r))})
    return pd.DataFrame(out, columns=VERDICT_COLUMNS)


def criterion_definitions(criteria: Sequence[Mapping[str, Any]], *, min_n: int) -> pd.DataFrame:
    """The pre-specified definitions as a table (one row per criterion), apart from results.

    Columns ``criterion, kind, metric, statistic, op, threshold, strata, size_range, min_n``.
    """
    rows = []
    for c in criteria:
        strata = c["strata"] if isinstance(c["strata"], str) else ", ".join(c["strata"])
        lo, hi = c.get("min_volume_mm3"), c.get("max_volume_mm3")
        size = ("" if lo is None and hi is None else
                f"[{0 if lo is None else lo:g}, {'inf' if hi is None else format(hi, 'g')}) mm3")
        rows.append({"criterion": c["name"], "kind": c["kind"], "metric": c["metric"] or "",
                     "statistic": c["statistic"], "op": c["op"], "threshold": float(c["threshold"]),
                     "strata": strata, "size_range": size,
                     "min_n": int(c.get("min_n") or min_n)})
    return pd.DataFrame(rows, columns=["criterion", "kind", "metric", "statistic", "op",
                                       "threshold", "strata", "size_range", "min_n"])
