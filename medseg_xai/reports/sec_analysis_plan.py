"""Statistical analysis plan: metric definitions and every setting of the audit."""

from __future__ import annotations

from typing import Any

from medseg_xai.reports.common import ci_text, metric_definition, metric_label
from medseg_xai.reports.tables import fmt

TITLE = "Statistical analysis plan"


def _bins(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt(float(x)) for x in v) + " mm³ (edges)"
    return f"{v} quantile bins of the reference volume"


def _matching(s: Any) -> str:
    conn = f"connectivity {s.get('connectivity') or 'full'}"
    if s.get("matching") == "hungarian":
        return f"one-to-one (Hungarian), IoU at least {fmt(s.get('iou_threshold'))}, {conn}"
    return f"covered share at least {fmt(s.get('overlap_threshold'))}, {conn}"


def _threshold(s: Any) -> str:
    if not s.get("inference"):
        return "stored predictions (no model run)"
    t = s.get("threshold")
    return f"probability above {fmt(t)}" if t is not None else "0.5 / most probable class"


def _interval_text(s: dict[str, Any], ci: str) -> str:
    """How each mean's interval was computed, from the methods the result records."""
    from medseg_xai.audit.stats import INTERVAL_METHOD_NAMES


    methods = s.get("interval_methods") or {}
    if not methods:  # results from before per-metric methods
        return (f"{ci} by {s.get('ci_method', 'BCa')} bootstrap of the mean, "
                f"{s.get('n_resamples')} resamples, resampling patients when patient ids are "
                "known; Wilson intervals for rates")
    minimum = s.get("interval_min_units") or {}
    # the audit's metric order (a JSON round trip sorts the mapping's keys)
    order = [m for m in s.get("metrics") or [] if m in methods] + sorted(
        m for m in methods if m not in (s.get("metrics") or []))
    parts = []
    for method in dict.fromkeys(methods[m] for m in order):
        names = [metric_label(m) for m in order if methods[m] == method]
        units = max(int(minimum.get(m, 2)) for m in order if methods[m] == method)
        extra = f"; shown from {units} patients (or scans without patient ids)" if units > 2 else ""
        resamples = (f", {s.get('n_resamples')} resamples"
                     if method in ("studentized", "BCa", "percentile") else "")
        parts.append(f"{', '.join(names)}: {INTERVAL_METHOD_NAMES.get(method, method)}"
                     f"{resamples}{extra}")
    return (f"{ci} per metric — " + "; ".join(parts) + ". With patient ids, intervals are "
            "patient-clustered (betting on per-patient means; bootstrap resampling whole "
            "patients). Rates: Clopper-Pearson (exact) intervals.")


def _criteria(s: dict[str, Any]) -> list[dict[str, Any]]:
    from medseg_xai.audit.criteria import load_criteria

    try:
        return load_criteria(s.get("criteria")) if s.get("criteria") else []
    except ValueError:
        return []


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    s = result.settings
    ci = ci_text(result)
    rows = [
        ("Analysis plan (SHA-256)", str(s.get("plan_hash") or "not recorded")),
        ("Strata", ", ".join(s.get("strata") or []) or "none"),
        ("Confidence level", f"{result.confidence * 100:g}%"),
        ("Confidence intervals", _interval_text(s, ci)),
        ("Group-vs-rest test", f"{s.get('test')} (Fisher's exact test for detection and "
         "false-positive rates)"),
        ("Multiple-comparison correction", f"{s.get('correction')} over each table's tests"),
        ("Significance level (alpha)", fmt(s.get("alpha"))),
        ("Minimum n per group", str(s.get("min_n"))),
        ("Seed", str(s.get("seed"))),
        ("Empty-mask policy", str(s.get("empty"))),
        ("Lesion-size strata", _bins(s.get("lesion_size_bins"))),
        ("Detection size bins", _bins(s.get("detection_bins"))),
        ("Lesion matching", _matching(s)),
        ("Reference standard", str(s.get("reference") or "the label column")),
        ("Decision threshold", _threshold(s)),
        ("NSD tolerance", f"{fmt(s.get('tolerance'))} mm"),
    ]
    for note in s.get("statistics_warnings") or []:
        rows.append(("Warning", note))
    return {
        "definitions": [(metric_label(m), metric_definition(m)) for m in s.get("metrics") or []],
        "rows": rows,
        "empty_policy": str(s.get("empty")),
        "fp_criteria": [f"'{c.get('name')}'" for c in _criteria(s)
                        if c.get("kind") == "false_positive"],
        "lesion_size_bins": _bins(s.get("lesion_size_bins")),
        "detection_bins": _bins(s.get("detection_bins")),
        "plan_hash": s.get("plan_hash"),
        "plan_yaml": _plan_yaml(s.get("plan")),
    }


def _plan_yaml(plan: Any) -> str | None:
    """The recorded plan as YAML text (what ``--plan`` reads back), for the reader to check."""
    if not plan:
        return None
    import json

    import yaml

    # as audit.json holds it (string keys, sorted), so a re-rendered report is the same text
    return yaml.safe_dump(json.loads(json.dumps(plan, sort_keys=True)), sort_keys=True)
