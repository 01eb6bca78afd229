"""Data: how the test set was drawn, cases per group, edge cases, failed rows and reasons."""

from __future__ import annotations

from typing import Any

from medseg_xai._privacy import redact_paths
from medseg_xai.reports.common import config_list, config_text
from medseg_xai.reports.tables import table_from_frame

TITLE = "Data"


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    counts = result.group_counts
    blocks = []
    if counts is not None and not counts.empty:
        for i, stratum in enumerate(dict.fromkeys(counts["stratum"])):
            sub = counts[counts["stratum"] == stratum]
            blocks.append({"stratum": stratum, "table": table_from_frame(
                sub, f"counts-{i}", ["group", "n_rows", "n_evaluated", "n_failed",
                                     "n_with_reference_lesions", "n_without_reference_lesions"],
                headers={"n_rows": "manifest rows", "n_evaluated": "evaluated",
                         "n_failed": "failed", "n_with_reference_lesions": "with reference lesions",
                         "n_without_reference_lesions": "without reference lesions"})})
    failed = result.failed.copy()
    failed["error"] = [redact_paths(str(e)) for e in failed["error"]]
    edge = result.provenance.get("edge_cases") or {}
    return {
        "n_rows": result.n_rows, "n_evaluated": result.n_evaluated, "n_failed": result.n_failed,
        "sampling": config_text(config, "test_set") or "not stated",
        "exclusions": config_list(config, "exclusions"),
        "counts": blocks,
        "edge_cases": [("neither mask empty", edge.get("none", 0)),
                       ("both empty", edge.get("both_empty", 0)),
                       ("prediction empty, reference not", edge.get("pred_empty", 0)),
                       ("reference empty, prediction not", edge.get("ref_empty", 0))],
        "failed": table_from_frame(failed, "failed-cases", ["case_id", "error"]),
        # how the files were read: assumptions the readers made (default pixel spacing, soft
        # references thresholded, values merged by binarize), each with its number of cases
        "read_notes": [(n, k) for n, k in (result.provenance.get("read_notes") or {}).items()],
        "classes": [f"{c.get('name')} (value {c.get('value')}, {c.get('kind')})"
                    for c in (result.settings.get("classes") or [])],
        "reference_threshold": result.settings.get("reference_threshold"),
    }
