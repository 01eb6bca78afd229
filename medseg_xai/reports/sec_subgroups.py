"""Subgroup results: per stratum a forest plot and the table of every group and metric."""

from __future__ import annotations

from typing import Any

from medseg_xai.reports import figures
from medseg_xai.reports.common import ci_text, criteria_status, metric_label, stratum_title
from medseg_xai.reports.tables import cell, table_from_frame

TITLE = "Subgroup results"
PLOT_METRICS = 3


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    sub = result.subgroups
    ci = ci_text(result)
    status = criteria_status(result)
    overall = {r["metric"]: (r["estimate"], r["ci_low"], r["ci_high"])
               for r in sub[sub["stratum"] == "overall"].to_dict("records")}
    metrics = list(dict.fromkeys(sub["metric"]))
    per_class = "class" in sub.columns and sub["class"].notna().any()
    if per_class:  # a multi-class audit: the forest plots show each class, not their mean
        of = dict(zip(sub["metric"], sub["class"]))
        named = [m for m in metrics if isinstance(of.get(m), str)
                 and not of[m].startswith("mean of")]
        n_classes = len(result.settings.get("classes") or ()) or PLOT_METRICS
        plotted = named[:max(PLOT_METRICS, n_classes)] or metrics[:PLOT_METRICS]
    else:
        plotted = metrics[:PLOT_METRICS]
    blocks = []
    for i, stratum in enumerate(result.strata):
        rows = sub[sub["stratum"] == stratum]
        if rows.empty:
            continue
        flagged = {(str(r["group"]), str(r["metric"])) for r in rows.to_dict("records")
                   if r["flag"] in ("worse", "better")}
        fig = figures.to_uri(figures.forest_plot(rows, plotted, overall=overall,
                                                 flagged=flagged, ci=ci))
        columns = ["group", "metric", *(["class"] if per_class else []), "n", "estimate",
                   "ci_low", "ci_high", "gap", "p_adjusted", "flag"]
        table = table_from_frame(
            rows.assign(metric=[metric_label(m) for m in rows["metric"]]), f"subgroup-table-{i}",
            columns,
            headers={"estimate": "mean", "ci_low": f"{ci} low", "ci_high": f"{ci} high",
                     "gap": "difference to overall mean", "p_adjusted": "adjusted p"})
        # printed copy: groups too small to be tested show their Dice only
        table.hide_in_print(list((rows["flag"] == "insufficient data")
                                 & (rows["metric"] != plotted[0] if plotted else False)),
                            "of groups below the minimum n for metrics other than "
                            f"{metric_label(plotted[0]) if plotted else ''}")
        table.columns.append("criterion")
        for rec, row in zip(rows.to_dict("records"), table.rows):
            row.append(cell(status.get((stratum, str(rec["group"]), rec["metric"]), "–")))
            row[0].cls += " group"
        blocks.append({"stratum": stratum, "title": stratum_title(stratum), "figure": fig,
                       "table": table, "anchor": f"stratum-{i}"})
    s = result.settings
    return {"blocks": blocks, "ci": ci, "correction": s.get("correction"),
            "alpha": s.get("alpha"), "min_n": s.get("min_n"), "test": s.get("test")}
