"""Verdict block: the overall verdict, one line per criterion, cohort size, failed rows."""

from __future__ import annotations

from typing import Any

from medseg_xai.reports.tables import table_from_frame

TITLE = "Verdict"


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    v = result.verdicts
    table = table_from_frame(
        v, "verdict-table",
        ["criterion", "status", "n_rows", "n_pass", "n_fail", "n_insufficient", "n_not_evaluated",
         "reason"],
        headers={"n_rows": "checks", "n_pass": "pass", "n_fail": "fail",
                 "n_insufficient": "insufficient data", "n_not_evaluated": "not evaluated"})
    return {"verdict": result.verdict, "table": table, "n_rows": result.n_rows,
            "n_evaluated": result.n_evaluated, "n_failed": result.n_failed,
            "n_criteria": len(v)}
