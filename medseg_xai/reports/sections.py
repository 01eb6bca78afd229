"""The ten report sections, each built from an audit result as plain data for the template.

Each ``section_*`` function reads the :class:`~medseg_xai.audit.AuditResult` defensively (any
table may be empty: no lesions, every case failed, no criteria) and returns a dict the Jinja
template renders; none of them writes HTML itself, so escaping stays in one place.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import math
import platform
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai._privacy import redact_paths
from medseg_xai.explain.quality import localisation
from medseg_xai.reports import figures
from medseg_xai.reports.tables import Cell, Table, cell, fmt, identifying, table_from_frame

OVERALL = {"overall", "all", "(overall)", "(all)"}
DEFAULT_METRICS = ("dice", "hd95", "nsd", "assd", "jaccard", "recall", "precision")
SECTION_TITLES = {
    "identification": "1. Identification",
    "provenance": "2. Data provenance",
    "sap": "3. Statistical analysis plan",
    "overall": "4. Overall results",
    "subgroups": "5. Subgroup results",
    "lesions": "6. Lesion-level results",
    "failures": "7. Failure analysis",
    "comparison": "8. Model comparison",
    "limitations": "9. Limitations and residual risks",
    "reproducibility": "10. Reproducibility appendix",
}
METRIC_DEFINITIONS = {
    "dice": "Dice similarity coefficient 2|P∩R| / (|P|+|R|).",
    "jaccard": "Jaccard index |P∩R| / |P∪R|.",
    "precision": "Positive predictive value per voxel |P∩R| / |P|.",
    "recall": "Voxel sensitivity |P∩R| / |R|.",
    "specificity": "Voxel specificity on background.",
    "hd": "Hausdorff distance (mm) between edge voxels (mask minus its face-connected erosion).",
    "hd95": "95th-percentile Hausdorff distance (mm): the larger of the two directed 95th "
    "percentiles of edge-voxel distances between voxel centres (MONAI convention).",
    "assd": "Average symmetric surface distance (mm) between edge voxels.",
    "nsd": "Normalised surface Dice: share of edge voxels within the tolerance (mm) of the other "
    "surface.",
    "abs_volume_diff_mm3": "Absolute volume difference |V_pred − V_ref| in mm³.",
    "lesion_sensitivity": "Share of reference lesions detected (overlap above the threshold).",
}


# --------------------------------------------------------------------------- reading the result
def frame(result: Any, name: str) -> pd.DataFrame:
    """A table attribute of the result, or an empty DataFrame when it is missing."""
    df = getattr(result, name, None)
    if isinstance(df, pd.DataFrame):
        return df
    if df is None:
        return pd.DataFrame()
    try:
        return pd.DataFrame(df)
    except (TypeError, ValueError):
        return pd.DataFrame()


def mapping(result: Any, name: str) -> dict[str, Any]:
    m = getattr(result, name, None)
    return dict(m) if isinstance(m, Mapping) else {}


def ok_cases(cases: pd.DataFrame) -> pd.DataFrame:
    if "status" not in cases.columns:
        return cases
    return cases[cases["status"].astype(str) == "ok"]


def failed_cases(cases: pd.DataFrame) -> pd.DataFrame:
    if "status" not in cases.columns:
        return cases.iloc[0:0]
    failed = cases[cases["status"].astype(str) != "ok"]
    if "error" in failed.columns:
        # Results from older runs (or built by hand) may still hold full paths, whose folders
        # can name patients: the report shows file names only.
        failed = failed.assign(
            error=[v if _na(v) else redact_paths(str(v)) for v in failed["error"]]
        )
    return failed


def is_overall(stratum: Any) -> bool:
    return isinstance(stratum, str) and stratum.strip().lower() in OVERALL or _na(stratum)


def _na(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def strata_of(subgroups: pd.DataFrame, settings: Mapping[str, Any]) -> list[str]:
    """Strata in the audit's order: the subgroups table, else the settings."""
    if "stratum" in subgroups.columns:
        names = [s for s in dict.fromkeys(subgroups["stratum"]) if not is_overall(s)]
        return [str(s) for s in names]
    return [str(s) for s in settings.get("strata", []) or []]


def metrics_of(subgroups: pd.DataFrame, cases: pd.DataFrame, settings: Mapping[str, Any]) -> list:
    """The metrics to show, primary ones first."""
    wanted = settings.get("report_metrics") or settings.get("metrics") or DEFAULT_METRICS
    if isinstance(wanted, str):
        wanted = [wanted]
    have = set(subgroups["metric"]) if "metric" in subgroups.columns else set(cases.columns)
    chosen = [m for m in wanted if m in have]
    if not chosen and "metric" in subgroups.columns:
        chosen = list(dict.fromkeys(subgroups["metric"]))[:4]
    return chosen


def primary_metric(metrics: Sequence[str], settings: Mapping[str, Any]) -> str | None:
    p = settings.get("primary_metric")
    if p:
        return str(p)
    return metrics[0] if metrics else None


def direction(metric: str) -> int:
    try:
        from medseg_xai.audit.stats import metric_direction
    except ImportError:  # pragma: no cover - the audit package ships with the report
        return 1
    return metric_direction(metric)


def criteria_lookup(criteria: pd.DataFrame) -> dict[tuple[str, str, str], str]:
    """``(stratum, group, metric) -> status``; overall criteria keyed with stratum ``overall``."""
    out: dict[tuple[str, str, str], str] = {}
    if criteria.empty or "status" not in criteria.columns:
        return out
    for rec in criteria.to_dict("records"):
        s = "overall" if is_overall(rec.get("stratum")) else str(rec.get("stratum"))
        g = "all" if _na(rec.get("group")) else str(rec.get("group"))
        key = (s, g, str(rec.get("metric")))
        # A FAIL anywhere wins over a PASS for the same cell (several criteria may apply).
        if out.get(key) != "FAIL":
            out[key] = str(rec.get("status"))
    return out


def config_text(config: Mapping[str, Any], *keys: str) -> str | None:
    for k in keys:
        v = config.get(k)
        if v not in (None, "", []):
            if isinstance(v, (list, tuple)):
                return "; ".join(str(x) for x in v)
            return str(v)
    return None


def config_list(config: Mapping[str, Any], key: str) -> list[str]:
    v = config.get(key)
    if v in (None, ""):
        return []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [str(v)]


# --------------------------------------------------------------------------- 1 identification
def section_identification(
    result: Any, config: Mapping[str, Any], adapter: Any, generated: str
) -> dict[str, Any]:
    prov = mapping(result, "provenance")
    settings = mapping(result, "settings")
    fingerprint = (
        getattr(adapter, "fingerprint", None)
        or prov.get("model_fingerprint")
        or prov.get("weights_sha256")
        or settings.get("model_fingerprint")
        or config.get("model_fingerprint")
    )
    rows = [
        (
            "Model",
            config_text(config, "model_name", "model") or prov.get("model_name") or "not stated",
        ),
        (
            "Model version",
            config_text(config, "model_version", "version")
            or prov.get("model_version")
            or "not stated",
        ),
        ("Weight fingerprint (sha256)", fingerprint or "not recorded (no model given)"),
        ("Manufacturer / owner", config_text(config, "manufacturer", "owner") or "not stated"),
        ("Report generated", generated),
        (
            "Audit run",
            (getattr(result, "run", None) or {}).get("created_at")
            or prov.get("created") or prov.get("timestamp") or prov.get("date") or "not recorded",
        ),
        (
            "Intended use",
            config_text(config, "intended_use") or "not stated (supply config['intended_use'])",
        ),
        ("Intended users", config_text(config, "intended_users", "users") or "not stated"),
        ("Reference standard", config_text(config, "reference_standard") or "not stated"),
    ]
    return {"rows": [(k, str(v)) for k, v in rows]}


# --------------------------------------------------------------------------- 2 provenance
def section_provenance(result: Any, config: Mapping[str, Any], strata: list[str]) -> dict:
    cases = frame(result, "cases")
    ok = ok_cases(cases)
    failed = failed_cases(cases)
    counts = []
    plain = [s for s in strata if " x " not in s]
    for col in ["site", "device", "patient_group", "lesion_size", *plain]:
        if (
            col in cases.columns
            and not identifying(col)
            and col not in [c["stratum"] for c in counts]
        ):
            vc = cases.groupby(cases[col].astype(str), dropna=False, sort=True).agg(
                cases=("case_id", "size") if "case_id" in cases.columns else (col, "size")
            )
            if "status" in cases.columns:
                vc["evaluated"] = (
                    cases.assign(_ok=cases["status"].astype(str) == "ok")
                    .groupby(cases[col].astype(str))["_ok"]
                    .sum()
                    .astype(int)
                )
                vc["failed"] = vc["cases"] - vc["evaluated"]
            df = vc.reset_index().rename(columns={col: "group"})
            counts.append({"stratum": col, "table": table_from_frame(df, f"counts-{col}")})
    fail_cols = [c for c in ("case_id", "error") if c in failed.columns]
    failed_tbl = table_from_frame(
        failed, "failed-cases", fail_cols, caption="Failed cases and reasons"
    )
    return {
        "n_rows": len(cases),
        "n_ok": len(ok),
        "n_failed": len(failed),
        "counts": counts,
        "failed": failed_tbl,
        "sampling": config_text(config, "test_set", "sampling", "test_set_statement")
        or "Not stated: supply config['test_set'] describing how the test set was drawn.",
        "exclusions": config_list(config, "exclusions"),
    }


# --------------------------------------------------------------------------- 3 SAP
def section_sap(result: Any, metrics: list[str], min_n: int) -> dict:
    settings = mapping(result, "settings")
    cases = frame(result, "cases")
    criteria = frame(result, "criteria")
    defs = [(m, METRIC_DEFINITIONS.get(m, "see the toolkit documentation")) for m in metrics]
    shown = {
        k: v
        for k, v in settings.items()
        if not isinstance(v, (dict, list, tuple)) or k in ("strata", "metrics")
    }
    settings_rows = [
        (k, ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else fmt(v))
        for k, v in shown.items()
        if not identifying(k)
    ]
    edge = None
    if "edge_case" in cases.columns:
        vc = ok_cases(cases)["edge_case"].astype(str).value_counts()
        edge = table_from_frame(vc.rename_axis("edge_case").reset_index(name="cases"), "edge-cases")
    crit_cols = ["criterion", "stratum", "group", "metric", "threshold"]
    crit = table_from_frame(
        criteria.drop_duplicates(subset=[c for c in ["criterion"] if c in criteria.columns])
        if not criteria.empty
        else criteria,
        "criteria-spec",
        crit_cols,
    )
    return {
        "definitions": defs,
        "settings": settings_rows,
        "empty_policy": settings.get("empty_policy") or settings.get("empty") or "worst",
        "ci_method": settings.get("ci_method", "not recorded"),
        "alpha": settings.get("alpha", "not recorded"),
        "correction": settings.get("correction", "not recorded"),
        "min_n": min_n,
        "edge_cases": edge,
        "criteria": crit,
    }


# --------------------------------------------------------------------------- 4 overall
def overall_rows(subgroups: pd.DataFrame) -> pd.DataFrame:
    if "stratum" not in subgroups.columns:
        return subgroups.iloc[0:0]
    return subgroups[subgroups["stratum"].map(is_overall)]


def section_overall(result: Any, metrics: list[str], crit: dict) -> dict:
    subgroups = frame(result, "subgroups")
    cases = ok_cases(frame(result, "cases"))
    rows = overall_rows(subgroups)
    rows = rows[rows["metric"].isin(metrics)] if "metric" in rows.columns else rows
    cols = ["metric", "n", "estimate", "ci_low", "ci_high", "median"]
    tbl = table_from_frame(
        rows, "overall-results", cols, headers={"ci_low": "95% CI low", "ci_high": "95% CI high"}
    )
    for rec, row in zip(rows.to_dict("records"), tbl.rows):
        row.append(cell(crit.get(("overall", "all", str(rec.get("metric"))), "–")))
    tbl.columns.append("criterion")
    fig = None
    if len(cases):
        fig = figures.to_uri(figures.distribution_plot(cases, metrics[:4]))
    return {"table": tbl, "figure": fig}


# --------------------------------------------------------------------------- 5 subgroups
def section_subgroups(
    result: Any, strata: list[str], metrics: list[str], crit: dict, min_n: int, seed: int
) -> dict:
    subgroups = frame(result, "subgroups")
    overall = {}
    for rec in overall_rows(subgroups).to_dict("records"):
        overall[str(rec["metric"])] = (
            _f(rec.get("estimate")),
            _f(rec.get("ci_low")),
            _f(rec.get("ci_high")),
        )
    plot_metrics = metrics[:3]
    blocks = []
    for i, stratum in enumerate(strata):
        rows = subgroups[
            (subgroups["stratum"].astype(str) == stratum) & subgroups["metric"].isin(metrics)
        ]
        if rows.empty:
            continue
        flagged = set()
        if "flag" in rows.columns:
            for rec in rows.to_dict("records"):
                if _truthy(rec.get("flag")):
                    flagged.add((str(rec["group"]), str(rec["metric"])))
        fig = figures.to_uri(
            figures.forest_plot(rows, plot_metrics, overall=overall, flagged=flagged)
        )
        cols = [
            "group",
            "metric",
            "n",
            "estimate",
            "ci_low",
            "ci_high",
            "gap",
            "p_adjusted",
            "flag",
        ]
        tbl = table_from_frame(
            rows,
            f"subgroup-table-{i}",
            cols,
            headers={"ci_low": "95% CI low", "ci_high": "95% CI high", "p_adjusted": "adjusted p"},
        )
        tbl.columns.append("criterion")
        for rec, row in zip(rows.to_dict("records"), tbl.rows):
            status = crit.get((stratum, str(rec["group"]), str(rec["metric"])))
            n = rec.get("n")
            if status is None and n is not None and not _na(n) and int(n) < min_n:
                status = "INSUFFICIENT DATA"
            row.append(cell(status or "–"))
            row[0].cls += " group"
        blocks.append(
            {
                "stratum": stratum,
                "figure": fig,
                "table": tbl,
                "intersection": " x " in stratum,
                "anchor": f"stratum-{i}",
            }
        )
    extra = None
    if not any(b["intersection"] for b in blocks):
        extra = descriptive_intersections(
            result, [b["stratum"] for b in blocks], metrics[:1], min_n, seed
        )
    return {
        "blocks": blocks,
        "descriptive_intersections": extra,
        "overall": {m: tuple(fmt(x) for x in v) for m, v in overall.items()},
    }


def _f(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _truthy(v: Any) -> bool:
    """A significant gap: the audit's ``"worse"`` / ``"better"`` flags (or a boolean True)."""
    if isinstance(v, str):
        return v.strip().lower() in ("worse", "better", "true", "yes")
    return bool(v) and not _na(v)


def descriptive_intersections(
    result: Any, strata: list[str], metrics: list[str], min_n: int, seed: int
) -> Table | None:
    """Mean and percentile-bootstrap CI per cell of each pair of strata with n >= min_n.

    Only when the audit itself did not test intersections; descriptive, outside the
    pre-specified tests.
    """
    cases = ok_cases(frame(result, "cases"))
    plain = [s for s in strata if s in cases.columns]
    if len(plain) < 2 or not metrics or metrics[0] not in cases.columns:
        return None
    metric = metrics[0]
    rng = np.random.default_rng(seed)
    rows = []
    for a_i, a in enumerate(plain):
        for b in plain[a_i + 1 :]:
            for (ga, gb), grp in cases.groupby([cases[a].astype(str), cases[b].astype(str)]):
                v = pd.to_numeric(grp[metric], errors="coerce").dropna().to_numpy(dtype=float)
                if v.size < max(min_n, 2):
                    continue
                boots = rng.choice(v, size=(1000, v.size), replace=True).mean(axis=1)
                rows.append(
                    {
                        "intersection": f"{a} x {b}",
                        "group": f"{ga} & {gb}",
                        "n": int(v.size),
                        "metric": metric,
                        "mean": float(v.mean()),
                        "ci_low": float(np.percentile(boots, 2.5)),
                        "ci_high": float(np.percentile(boots, 97.5)),
                    }
                )
    if not rows:
        return None
    return table_from_frame(
        pd.DataFrame(rows),
        "intersections",
        caption=f"Descriptive intersections (n ≥ {min_n}), percentile bootstrap",
    )


# --------------------------------------------------------------------------- 6 lesions
DEFAULT_SIZE_BINS = (0.0, 50.0, 250.0, 1000.0, math.inf)


def _bin_label(lo: float, hi: float) -> str:
    if math.isinf(hi):
        return f"≥ {lo:g} mm³"
    return f"{lo:g}–{hi:g} mm³"


_CI_HEADERS = {"ci_low": "95% CI low", "ci_high": "95% CI high"}


def _audit_tables(result: Any) -> dict[str, Any]:
    """False positives on empty scans and volume agreement as the audit computed them."""
    out: dict[str, Any] = {}
    fp = frame(result, "false_positives")
    if not fp.empty:
        out["empty_scans"] = table_from_frame(
            fp, "fp-empty-scans", headers=_CI_HEADERS, max_rows=200
        )
    va = frame(result, "volume_agreement")
    if not va.empty:
        out["bland_altman"] = table_from_frame(va, "bland-altman", max_rows=200)
    cases = ok_cases(frame(result, "cases"))
    if {"volume_pred_mm3", "volume_ref_mm3"} <= set(cases.columns) and len(cases) > 1:
        ov = va[va["stratum"].map(is_overall)] if "stratum" in va.columns else va.iloc[0:0]
        if len(ov):
            out["ba_figure"] = figures.to_uri(
                figures.bland_altman_plot(
                    cases["volume_pred_mm3"], cases["volume_ref_mm3"], ov.iloc[0].to_dict()
                )
            )
    return out


def section_lesions(result: Any) -> dict:
    from medseg_xai.audit.stats import bland_altman, wilson_ci

    lesions = frame(result, "lesions")
    cases = ok_cases(frame(result, "cases"))
    settings = mapping(result, "settings")
    out: dict[str, Any] = dict.fromkeys(
        (
            "detection",
            "detection_figure",
            "detection_subgroups",
            "empty_scans",
            "bland_altman",
            "ba_figure",
            "sensitivity",
        )
    )
    out["available"] = False
    det_tbl = frame(result, "lesion_detection")
    if not det_tbl.empty and {"size_bin", "rate", "stratum"} <= set(det_tbl.columns):
        # The audit computed detection by size (Wilson CIs) per subgroup: show it as is.
        ov = det_tbl[det_tbl["stratum"].map(is_overall)]
        det = ov.rename(columns={"size_bin": "bin", "n_lesions": "n", "n_detected": "detected"})
        if len(det):
            out["detection"] = table_from_frame(
                det,
                "detection-by-size",
                ["bin", "n", "detected", "rate", "ci_low", "ci_high", "flag"],
                headers=_CI_HEADERS | {"rate": "detection rate"},
            )
            out["detection_figure"] = figures.to_uri(figures.detection_by_size_plot(det))
            out["available"] = True
        sub = det_tbl[~det_tbl["stratum"].map(is_overall)]
        if len(sub):
            out["detection_subgroups"] = table_from_frame(
                sub, "detection-by-size-subgroups", headers=_CI_HEADERS, max_rows=200
            )
        out.update(_audit_tables(result))
        return out
    if not lesions.empty and {"source", "status"} <= set(lesions.columns):
        ref = lesions[lesions["source"].astype(str) == "reference"]
        if len(ref) and "volume_mm3" in ref.columns:
            edges = settings.get("lesion_size_bins") or DEFAULT_SIZE_BINS
            edges = [float(e) for e in edges]
            if edges[-1] != math.inf:
                edges = [*edges, math.inf]
            vol = pd.to_numeric(ref["volume_mm3"], errors="coerce")
            rows = []
            for lo, hi in zip(edges[:-1], edges[1:]):
                sel = ref[(vol >= lo) & (vol < hi)]
                n = len(sel)
                k = int((sel["status"].astype(str) == "detected").sum())
                lo_ci, hi_ci = wilson_ci(k, n)
                rows.append(
                    {
                        "bin": _bin_label(lo, hi),
                        "n": n,
                        "detected": k,
                        "rate": k / n if n else float("nan"),
                        "ci_low": lo_ci,
                        "ci_high": hi_ci,
                    }
                )
            det = pd.DataFrame(rows)
            out["detection"] = table_from_frame(
                det, "detection-by-size", headers=_CI_HEADERS | {"rate": "detection rate"}
            )
            out["detection_figure"] = figures.to_uri(figures.detection_by_size_plot(det))
            out["available"] = True
            n_ref = len(ref)
            k_all = int((ref["status"].astype(str) == "detected").sum())
            lo_ci, hi_ci = wilson_ci(k_all, n_ref)
            out["sensitivity"] = (fmt(k_all / n_ref), fmt(lo_ci), fmt(hi_ci), n_ref)
    # False positives on scans without any reference lesion.
    if "volume_ref_mm3" in cases.columns:
        empty = cases[pd.to_numeric(cases["volume_ref_mm3"], errors="coerce") == 0]
    elif "edge_case" in cases.columns:
        empty = cases[cases["edge_case"].astype(str).isin(["both_empty", "ref_empty"])]
    else:
        empty = cases.iloc[0:0]
    if len(empty):
        if "volume_pred_mm3" in empty.columns:
            with_fp = int((pd.to_numeric(empty["volume_pred_mm3"], errors="coerce") > 0).sum())
        else:
            with_fp = int((empty["edge_case"].astype(str) == "ref_empty").sum())
        n_fp = 0
        if not lesions.empty and "case_id" in lesions.columns and "case_id" in empty.columns:
            fl = lesions[lesions["case_id"].isin(empty["case_id"])]
            n_fp = int((fl["status"].astype(str) == "false_positive").sum())
        lo_ci, hi_ci = wilson_ci(with_fp, len(empty))
        out["empty_scans"] = table_from_frame(
            pd.DataFrame(
                [
                    {
                        "empty scans": len(empty),
                        "with any false positive": with_fp,
                        "share": with_fp / len(empty),
                        "ci_low": lo_ci,
                        "ci_high": hi_ci,
                        "false-positive lesions": n_fp,
                        "FP lesions per empty scan": n_fp / len(empty),
                    }
                ]
            ),
            "fp-empty-scans",
            headers=_CI_HEADERS,
        )
    if {"volume_pred_mm3", "volume_ref_mm3"} <= set(cases.columns) and len(cases):
        ba = bland_altman(
            pd.to_numeric(cases["volume_pred_mm3"], errors="coerce").to_numpy(float),
            pd.to_numeric(cases["volume_ref_mm3"], errors="coerce").to_numpy(float),
        )
        out["bland_altman"] = table_from_frame(pd.DataFrame([ba]), "bland-altman")
        if ba["n"] > 1:
            out["ba_figure"] = figures.to_uri(
                figures.bland_altman_plot(cases["volume_pred_mm3"], cases["volume_ref_mm3"], ba)
            )
    return out


# --------------------------------------------------------------------------- 7 failures
def worst_cases(
    result: Any, strata: list[str], metric: str | None, per_group: int, cap: int
) -> list[dict[str, Any]]:
    """Worst evaluated cases per subgroup by the primary metric, each case once, at most ``cap``."""
    cases = ok_cases(frame(result, "cases"))
    if metric is None or metric not in cases.columns or "case_id" not in cases.columns or cap <= 0:
        return []
    sign = direction(metric) or 1
    vals = pd.to_numeric(cases[metric], errors="coerce")
    cases = cases.assign(_v=vals * sign).dropna(subset=["_v"]).sort_values("_v", kind="stable")
    picked: dict[str, dict[str, Any]] = {}
    plain = [s for s in strata if s in cases.columns] or [None]
    for stratum in plain:
        groups = (
            [(None, cases)]
            if stratum is None
            else cases.groupby(cases[stratum].astype(str), sort=True)
        )
        for group, grp in groups:
            for rec in grp.head(per_group).to_dict("records"):
                cid = str(rec["case_id"])
                where = "overall" if stratum is None else f"{stratum} = {group}"
                if cid in picked:
                    picked[cid]["subgroups"].append(where)
                elif len(picked) < cap:
                    picked[cid] = {"case_id": cid, "subgroups": [where], "record": rec}
    return list(picked.values())


def section_failures(
    result: Any,
    strata: list[str],
    metric: str | None,
    *,
    cohort: Any,
    adapter: Any,
    explanations: Any,
    max_gallery: int,
    max_explanations: int,
    per_group: int,
) -> dict:
    picked = worst_cases(result, strata, metric, per_group, max_gallery)
    lesions = frame(result, "lesions")
    settings = mapping(result, "settings")
    class_index = int(settings.get("class_index", 1) or 1)
    gallery = []
    explained: list[dict[str, Any]] = []
    pre = _normalise_explanations(explanations)
    show = [m for m in ("dice", "hd95", "nsd", "recall") if m]
    for item in picked:
        rec = item["record"]
        entry: dict[str, Any] = {
            "case_id": item["case_id"],
            "subgroups": item["subgroups"],
            "figure": None,
            "note": "",
            "metric_values": [(m, fmt(rec.get(m))) for m in show if m in rec],
        }
        case = None
        if cohort is not None:
            try:
                case = cohort.load_case(item["case_id"])
                pred = case.prediction
                if pred is None:
                    raise ValueError("no prediction stored for this case")
                entry["figure"] = figures.to_uri(
                    figures.case_overlay(case.image, case.label, pred, spacing=case.spacing), dpi=60
                )
            except Exception as err:  # noqa: BLE001 - the report records, never crashes
                entry["note"] = f"overlay unavailable: {type(err).__name__}: {err}"
        else:
            entry["note"] = "overlay unavailable: no cohort given to the report"
        gallery.append(entry)
        # Missed lesions of this case: precomputed explanations first, else explain now.
        missed = pd.DataFrame()
        if {"case_id", "status"} <= set(lesions.columns):
            missed = lesions[
                (lesions["case_id"].astype(str) == item["case_id"])
                & (lesions["status"].astype(str) == "missed")
            ]
        for lrec in missed.to_dict("records"):
            if len(explained) >= max_explanations:
                break
            lid = str(lrec.get("lesion_id", ""))
            given = pre.get((item["case_id"], lid)) or pre.get((item["case_id"], None))
            if given is not None:
                explained.append(_from_given(item["case_id"], lid, given, case))
            elif adapter is not None and case is not None:
                explained.append(_explain_missed(adapter, case, lid, class_index))
    note = ""
    if adapter is None and not pre:
        note = (
            "No model was given to the report, so missed lesions are not explained; pass "
            "adapter= (and cohort=) or precomputed explanations=."
        )
    return {
        "gallery": gallery,
        "explanations": explained,
        "metric": metric,
        "note": note,
        "cap": max_gallery,
    }


def _normalise_explanations(explanations: Any) -> dict[tuple[str, str | None], Any]:
    """Accept ``{case_id: Explanation}``, ``{(case_id, lesion_id): ...}`` or a list of dicts."""
    out: dict[tuple[str, str | None], Any] = {}
    if not explanations:
        return out
    if isinstance(explanations, Mapping):
        for k, v in explanations.items():
            key = (str(k[0]), str(k[1])) if isinstance(k, tuple) else (str(k), None)
            out[key] = v
        return out
    for item in explanations:
        if not isinstance(item, Mapping) or "case_id" not in item:
            raise ValueError(
                "explanations: expected a mapping case_id -> Explanation or dicts with 'case_id', "
                f"got {type(item).__name__}"
            )
        lid = item.get("lesion_id")
        out[(str(item["case_id"]), None if lid is None else str(lid))] = item
    return out


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _lesion_mask(label: np.ndarray, lesion_id: str) -> np.ndarray | None:
    from medseg_xai.metrics import label_lesions

    try:
        k = int(lesion_id.split("-")[-1])
    except ValueError:
        return None
    labels, n = label_lesions(np.asarray(label) != 0)
    return labels == k if 1 <= k <= n else None


def _from_given(case_id: str, lesion_id: str, given: Any, case: Any) -> dict[str, Any]:
    att = _get(given, "attribution")
    method = _get(given, "method", "precomputed")
    target = _get(given, "target")
    mask = _get(given, "mask")
    if mask is None and target is not None:
        mask = getattr(target, "mask", None)
    if mask is None and case is not None:
        mask = _lesion_mask(case.label, lesion_id)
    score = _get(given, "localisation")
    if score is None and att is not None and mask is not None:
        score = float(localisation(att, mask))
    image = _get(given, "image")
    if image is None and case is not None:
        image = case.image
    fig = None
    if att is not None:
        att = np.asarray(att)
        if image is None:
            image = np.zeros(att.shape, np.float32)
        fig = figures.to_uri(
            figures.explanation_overlay(image, att, mask, spacing=getattr(case, "spacing", None)),
            dpi=60,
        )
    return {
        "case_id": case_id,
        "lesion_id": lesion_id,
        "method": str(method),
        "localisation": fmt(score),
        "localisation_value": score,
        "figure": fig,
        "note": "",
        "target": target.describe() if hasattr(target, "describe") else "",
    }


def _explain_missed(adapter: Any, case: Any, lesion_id: str, class_index: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "case_id": str(case.case_id),
        "lesion_id": lesion_id,
        "method": "gradcam",
        "localisation": "–",
        "localisation_value": None,
        "figure": None,
        "note": "",
        "target": "",
    }
    try:
        import medseg_xai as mx

        mask = _lesion_mask(case.label, lesion_id)
        if mask is None:
            raise ValueError(f"lesion {lesion_id!r} not found in the reference")
        target = mx.targets.region(class_index, mask)
        # Signed: a missed lesion often carries only negative evidence, blank after a ReLU.
        exp = mx.explain(adapter, case.image, target, method="gradcam", relu=False)
        score = float(localisation(exp.attribution, mask))
        entry.update(
            method=str(exp.method),
            localisation=fmt(score),
            localisation_value=score,
            target=target.describe() if hasattr(target, "describe") else "",
            figure=figures.to_uri(
                figures.explanation_overlay(
                    case.image, exp.attribution, mask, spacing=case.spacing
                ),
                dpi=60,
            ),
        )
    except Exception as err:  # noqa: BLE001 - one failed explanation must not sink the report
        entry["note"] = f"explanation failed: {type(err).__name__}: {err}"
    return entry


# --------------------------------------------------------------------------- 8 comparison
def section_comparison(comparison: Any) -> dict | None:
    if comparison is None:
        return None
    subgroups = frame(comparison, "subgroups")
    worse = getattr(comparison, "worse", None)
    if isinstance(worse, pd.DataFrame):
        worse_tbl = table_from_frame(worse, "comparison-worse")
        worse_list: list[str] = []
    else:
        worse_tbl = None
        worse_list = [str(w) for w in (worse or [])]
    names = getattr(comparison, "names", None) or getattr(comparison, "labels", None)
    return {
        "names": [str(n) for n in names] if names else ["A", "B"],
        "subgroups": table_from_frame(subgroups, "comparison-subgroups"),
        "worse_table": worse_tbl,
        "worse": worse_list,
    }


# --------------------------------------------------------------------------- 9 limitations
def section_limitations(
    result: Any, config: Mapping[str, Any], min_n: int, strata: list[str]
) -> dict:
    cases = frame(result, "cases")
    subgroups = frame(result, "subgroups")
    criteria = frame(result, "criteria")
    auto: list[str] = []
    failed = failed_cases(cases)
    if len(cases) and len(failed) == len(cases):
        auto.append(
            f"Every one of the {len(cases)} cases failed: no performance claim can be made."
        )
    elif len(failed):
        auto.append(
            f"{len(failed)} of {len(cases)} cases failed to evaluate and are excluded from "
            "the statistics (reasons in section 2); results may be biased if failures "
            "are not random."
        )
    if {"n", "stratum", "group"} <= set(subgroups.columns):
        small = subgroups[
            ~subgroups["stratum"].map(is_overall)
            & (pd.to_numeric(subgroups["n"], errors="coerce") < min_n)
        ]
        small = small.drop_duplicates(subset=["stratum", "group"])
        for rec in small.to_dict("records"):
            auto.append(
                f"Subgroup {rec['stratum']} = {rec['group']} has n = {fmt(rec['n'])} "
                f"(< {min_n}): its estimates are imprecise and not tested."
            )
    if "status" in criteria.columns:
        for rec in criteria[criteria["status"].astype(str) == "FAIL"].to_dict("records"):
            where = (
                "overall"
                if is_overall(rec.get("stratum"))
                else f"{rec.get('stratum')} = {rec.get('group')}"
            )
            auto.append(
                f"Acceptance criterion failed: {rec.get('criterion')} ({where}: "
                f"{rec.get('metric')} = {fmt(rec.get('value'))}, threshold "
                f"{fmt(rec.get('threshold'))})."
            )
        n_insuf = int((criteria["status"].astype(str) == "INSUFFICIENT DATA").sum())
        if n_insuf:
            auto.append(f"{n_insuf} criterion check(s) had insufficient data to decide.")
    if "flag" in subgroups.columns:
        flagged = subgroups[subgroups["flag"].map(_truthy) & ~subgroups["stratum"].map(is_overall)]
        for rec in (
            flagged.drop_duplicates(subset=["stratum", "group", "metric"])
            .head(20)
            .to_dict("records")
        ):
            auto.append(
                f"Flagged subgroup gap: {rec['stratum']} = {rec['group']} on {rec['metric']} "
                f"(gap {fmt(rec.get('gap'))}, adjusted p {fmt(rec.get('p_adjusted'))})."
            )
    lesions = frame(result, "lesions")
    if (
        lesions.empty
        or "source" not in lesions.columns
        or not (lesions["source"].astype(str) == "reference").any()
    ):
        auto.append(
            "No reference lesions in the evaluated cases: lesion-level detection is not assessed."
        )
    if not strata:
        auto.append(
            "No subgroup strata were audited: performance differences between sites, "
            "devices or patient groups are not assessed."
        )
    if not criteria.empty and "status" in criteria.columns:
        pass
    else:
        auto.append("No pre-specified acceptance criteria were given.")
    return {"automatic": auto, "user": config_list(config, "limitations")}


# --------------------------------------------------------------------------- 10 reproducibility
_LIBS = (
    "medseg-xai",
    "numpy",
    "scipy",
    "pandas",
    "torch",
    "monai",
    "captum",
    "matplotlib",
    "jinja2",
)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for lib in _LIBS:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if identifying(str(k)):
            continue
        if isinstance(v, Mapping):
            rows.extend(_flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            rows.append((key, " ".join(map(str, v))))
        else:
            rows.append((key, fmt(v)))
    return rows


def section_reproducibility(result: Any, config: Mapping[str, Any], adapter: Any) -> dict:
    prov = mapping(result, "provenance")
    settings = mapping(result, "settings")
    versions = prov.get("versions") or prov.get("library_versions")
    rows = [
        (k, v)
        for k, v in _flatten(
            {k: v for k, v in prov.items() if k not in ("versions", "library_versions")}
        )
    ]
    if adapter is not None and getattr(adapter, "fingerprint", None):
        rows.append(("model weights sha256 (adapter)", str(adapter.fingerprint)))
    seed = settings.get("seed", prov.get("seed"))
    command = (
        config.get("command_line")
        or prov.get("command")
        or prov.get("command_line")
        or " ".join([sys.argv[0].rsplit("/", 1)[-1], *sys.argv[1:]])
    )
    command = redact_paths(str(command))  # folder names on a command line can name patients
    approvers = config.get("approvers") or [
        {"role": "Prepared by"},
        {"role": "Reviewed by (clinical)"},
        {"role": "Approved by (quality / regulatory)"},
    ]
    return {
        "provenance": rows,
        "versions": sorted((versions or {}).items()) if isinstance(versions, Mapping) else [],
        "report_versions": sorted(library_versions().items()),
        "seed": fmt(seed),
        "command": command,
        "approvers": [
            {"role": str(_get(a, "role", "")), "name": str(_get(a, "name", "") or "")}
            if isinstance(a, (Mapping,))
            else {"role": str(a), "name": ""}
            for a in approvers
        ],
    }


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


__all__ = [
    "SECTION_TITLES",
    "Cell",
    "section_comparison",
    "section_failures",
    "section_identification",
    "section_lesions",
    "section_limitations",
    "section_overall",
    "section_provenance",
    "section_reproducibility",
    "section_sap",
    "section_subgroups",
    "today",
]
