"""Failure gallery: the cases and missed lesions the audit stored in ``result.explanations``."""

from __future__ import annotations

from typing import Any

from medseg_xai.reports import figures
from medseg_xai.reports.tables import fmt

TITLE = "Failure analysis"
#: Gallery cards per list in the printed copy (the HTML report shows every card).
PRINTED_CARDS = 6


def _analysis_rows(analysis: dict[str, Any] | None) -> list[tuple[str, str]]:
    if not analysis:
        return []
    rows = []
    for key in ("class", "status", "method", "target", "verdict"):
        if analysis.get(key):
            rows.append((key, str(analysis[key])))
    causes = analysis.get("causes")
    if causes:
        rows.append(("likely causes", ", ".join(map(str, causes))))
    if "localisation" in analysis:
        rows.append(("share of positive attribution inside the lesion",
                     fmt(analysis["localisation"])))
    return rows


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    entries = []
    for i, e in enumerate(result.explanations or []):
        entries.append({
            "anchor": f"case-{i + 1}", "case_id": e["case_id"], "category": e["category"],
            "picked_for": e.get("picked_for") or [], "metric": e.get("metric"),
            "value": fmt(e.get("value")), "lesion_id": e.get("lesion_id"),
            "method": e.get("method"), "analysis": _analysis_rows(e.get("analysis")),
            "figure": (figures.to_uri(figures.gallery_figure(e["figure"], method=e.get("method")),
                                      dpi=100) if e.get("figure") else None),
            "note": e.get("note") or "", "class": e.get("class"),
            "region_voxels": e.get("region_voxels"), "reference_voxels": e.get("reference_voxels"),
        })
    # a card shows a figure or an analysis; cases with neither are named in one sentence
    # instead of as empty cards
    def shown(e: dict[str, Any]) -> bool:
        return bool(e["figure"] or e["analysis"] or e["class"])

    bare = [e["case_id"] for e in entries if not shown(e)]
    entries = [e for e in entries if shown(e)]
    fp = [e for e in entries if e["category"] == "false_positive_scan"]
    worst = [e for e in entries if e["category"] != "false_positive_scan" and not e["class"]]
    by_class: dict[str, list[dict[str, Any]]] = {}
    for e in entries:  # structure classes (class_gallery.py): one list per class, in order
        if e["class"]:
            by_class.setdefault(str(e["class"]), []).append(e)
    # the printed copy keeps the first PRINTED_CARDS cards of each list (the HTML keeps all)
    groups = (worst, fp, *by_class.values())
    for group in groups:
        for k, e in enumerate(group):
            e["print_hide"] = k >= PRINTED_CARDS
    n_unprinted = sum(e["print_hide"] for group in groups for e in group)
    metrics = result.settings.get("metrics") or []
    return {"n_unprinted": n_unprinted, "worst": worst, "fp": fp, "empty": not entries and not bare, "bare": bare,
            "classes": [{"name": k, "entries": v} for k, v in by_class.items()],
            "metric": "dice" if "dice" in metrics else (metrics[0] if metrics else "")}
