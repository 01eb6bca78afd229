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
    return {"definitions": definitions, "results": results, "n": len(defs)}
