"""Acceptance criteria: the pre-specified definitions, then their results."""

from __future__ import annotations

from typing import Any

import pandas as pd

from medseg_xai.reports.common import statistic_label
from medseg_xai.reports.tables import table_from_frame

TITLE = "Acceptance criteria"


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    defs = result.criteria_definitions
    conf = result.confidence
    if len(defs):
        defs = defs.assign(statistic=[statistic_label(k, s, m, conf) for k, s, m in
                                      zip(defs["kind"], defs["statistic"], defs["metric"])])
    definitions = table_from_frame(
        defs, "criteria-definitions",
        ["criterion", "kind", "statistic", "op", "threshold", "strata", "size_range", "min_n"],
        headers={"statistic": "statistic (what is compared)", "op": "must be",
                 "strata": "groups", "size_range": "lesion sizes", "min_n": "minimum n"})
    crit = result.criteria
    if len(crit):
        crit = crit.assign(statistic=[statistic_label(k, s, m, conf) for k, s, m in
                                      zip(crit["kind"], crit["statistic"], crit["metric"])])
    else:
        crit = pd.DataFrame(columns=list(crit.columns))
    results = table_from_frame(
        crit, "criteria-results",
        ["criterion", "stratum", "group", "n", "statistic", "value", "op", "threshold", "status",
         "reason"],
        headers={"statistic": "statistic", "op": "must be"})
    if len(crit):  # the verdict table counts the passes; the print lists what did not pass
        results.hide_in_print(list(crit["status"] == "PASS"), "of checks that passed")
    return {"definitions": definitions, "results": results, "n": len(defs),
            "sample_size": _sample_size(result.criteria, conf)}


def _sample_size(crit: pd.DataFrame, conf: float) -> Any:
    """Rows of criteria on a confidence bound with their sample-size statement (computed by
    ``audit.sample_size``; this only selects and labels)."""
    if crit is None or crit.empty or "n_needed" not in crit.columns:
        return None
    # the overall row and every check that did not pass: where a justification is needed
    rows = crit[pd.to_numeric(crit["assumed_mean"], errors="coerce").notna()
                & ((crit["stratum"] == "overall") | (crit["status"] != "PASS"))]
    if rows.empty:
        return None
    rows = rows.assign(statistic=[statistic_label(k, s, m, conf) for k, s, m in
                                  zip(rows["kind"], rows["statistic"], rows["metric"])],
                       condition=["at least" if op.startswith(">") else "at most"
                                  for op in rows["op"]])
    table = table_from_frame(
        rows, "criteria-sample-size",
        ["criterion", "stratum", "group", "n", "statistic", "value", "threshold", "condition",
         "pass_needs_mean", "assumed_mean", "n_needed"],
        headers={"value": "bound", "condition": "the mean must be",
                 "pass_needs_mean": "for the bound to pass at this n and spread",
                 "assumed_mean": "stated true mean", "n_needed": "n needed at that mean"})
    # printed copy: the overall row and the failed checks (insufficient-data rows in the HTML)
    return table.hide_in_print(list((rows["stratum"] != "overall") & (rows["status"] != "FAIL")),
                               "of checks with insufficient data")
