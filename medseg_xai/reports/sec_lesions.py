"""Lesion-level results: detection by size, false positives on scans without reference
lesions, and volume agreement, each flagged against the rest of the cohort."""

from __future__ import annotations

from typing import Any

from medseg_xai.reports import figures
from medseg_xai.reports.common import ci_text, rows_of
from medseg_xai.reports.tables import cell, table_from_frame

TITLE = "Lesion-level results"


def _criterion(result: Any, kind: str, stratum: str, group: str) -> str:
    crit = result.criteria
    if crit is None or crit.empty:
        return "–"
    sel = rows_of(crit, kind=kind, stratum=stratum, group=group)
    if sel.empty:
        return "–"
    for s in ("FAIL", "INSUFFICIENT DATA", "NOT EVALUATED", "PASS"):
        if (sel["status"] == s).any():
            return s
    return "–"


def _with_criterion(table: Any, rows: Any, result: Any, kind: str) -> Any:
    table.columns.append("criterion")
    for rec, row in zip(rows.to_dict("records"), table.rows):
        row.append(cell(_criterion(result, kind, rec["stratum"], rec["group"])
                        if rec.get("size_bin", "all") == "all" or kind != "detection" else "–"))
    return table


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    ci = ci_text(result)
    heads = {"ci_low": f"{ci} low", "ci_high": f"{ci} high", "p_adjusted": "adjusted p"}
    det = result.lesion_detection
    out: dict[str, Any] = {"ci": ci, "detection": None, "detection_figure": None,
                           "detection_subgroups": None, "false_positives": None,
                           "volume": None, "volume_figure": None}
    ov = det[det["stratum"] == "overall"]
    if len(ov) and int(ov["n_lesions"].max()) > 0:
        out["detection"] = table_from_frame(
            ov, "detection-by-size",
            ["size_bin", "n_lesions", "n_detected", "rate", "ci_low", "ci_high", "flag"],
            headers={**heads, "rate": "detection rate", "size_bin": "lesion size"})
        plot = ov[ov["size_bin"] != "all"].rename(columns={"size_bin": "bin", "n_lesions": "n"})
        if len(plot):
            out["detection_figure"] = figures.to_uri(figures.detection_by_size_plot(plot, ci=ci))
        rest = det[det["stratum"] != "overall"]
        if len(rest):
            out["detection_subgroups"] = _with_criterion(table_from_frame(
                rest, "detection-subgroups",
                ["stratum", "group", "size_bin", "n_lesions", "n_detected", "rate", "ci_low",
                 "ci_high", "p_adjusted", "flag"],
                headers={**heads, "rate": "detection rate", "size_bin": "lesion size"}),
                rest, result, "detection").hide_in_print(
                    list(rest["n_lesions"] == 0), "with no lesion of that size in the group")
    fp = result.false_positives
    if len(fp) and int(fp["n_scans"].max()) > 0:
        out["false_positives"] = _with_criterion(table_from_frame(
            fp, "fp-empty-scans",
            ["stratum", "group", "n_scans", "n_with_fp", "fp_scan_rate", "ci_low", "ci_high",
             "fp_per_scan", "p_adjusted", "flag"],
            headers={**heads, "n_scans": "scans without reference lesions",
                     "n_with_fp": "with any false positive", "fp_scan_rate": "share",
                     "fp_per_scan": "false-positive components per scan"}),
            fp, result, "false_positive").hide_in_print(
                list((fp["n_scans"] == 0) & (fp["stratum"] != "overall")),
                "of groups without such scans")
    va = result.volume_agreement
    if len(va) and int(va["n"].max()) > 0:
        out["volume"] = table_from_frame(
            va, "bland-altman",
            ["stratum", "group", "n", "bias", "bias_ci_low", "bias_ci_high", "sd", "loa_low",
             "loa_high", "p_adjusted", "flag"],
            headers={"bias": "bias (mm³)", "bias_ci_low": f"bias {ci} low",
                     "bias_ci_high": f"bias {ci} high", "sd": "SD (mm³)",
                     "loa_low": "lower limit of agreement", "loa_high": "upper limit of agreement",
                     "p_adjusted": "adjusted p"}).hide_in_print(
            list(va["n"] == 0), "of groups without scans with both volumes")
        ok = result.cases[result.cases["status"] == "ok"]
        o = va[va["stratum"] == "overall"]
        if len(o) and len(ok) > 1:
            out["volume_figure"] = figures.to_uri(figures.bland_altman_plot(
                ok["volume_pred_mm3"], ok["volume_ref_mm3"], o.iloc[0].to_dict()))
    return out
