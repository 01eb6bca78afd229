"""Overall results: every metric on the whole cohort with its interval."""

from __future__ import annotations

from typing import Any

from medseg_xai.reports import figures
from medseg_xai.reports.common import ci_text, criteria_status, metric_label
from medseg_xai.reports.tables import cell, table_from_frame

TITLE = "Overall results"


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    sub = result.subgroups
    rows = sub[sub["stratum"] == "overall"]
    ci = ci_text(result)
    shown = rows.assign(metric=[metric_label(m) for m in rows["metric"]])
    table = table_from_frame(shown, "overall-results",
                             ["metric", "n", "estimate", "ci_low", "ci_high", "median"],
                             headers={"estimate": "mean", "ci_low": f"{ci} low",
                                      "ci_high": f"{ci} high"})
    status = criteria_status(result)
    table.columns.append("criterion")
    for rec, row in zip(rows.to_dict("records"), table.rows):
        row.append(cell(status.get(("overall", "all", rec["metric"]), "–")))
    ok = result.cases[result.cases["status"] == "ok"]
    metrics = list(rows["metric"])[:4]
    fig = figures.to_uri(figures.distribution_plot(ok, metrics, rows)) if len(ok) else None
    return {"table": table, "figure": fig, "ci": ci}
