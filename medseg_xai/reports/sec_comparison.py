"""Model comparison: paired differences B − A per subgroup, naming which file is A and B."""

from __future__ import annotations

from typing import Any

from medseg_xai.reports.tables import ci_label, table_from_frame

TITLE = "Model comparison"


def build(result: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    comp = config.get("comparison")
    if comp is None:
        return None
    s = comp.settings
    ci = ci_label(float(s.get("confidence", 0.95)))
    cols = ["stratum", "group", "metric", "n", "mean_a", "mean_b", "difference", "ci_low",
            "ci_high", "p_adjusted", "flag"]
    heads = {"mean_a": f"mean A ({s.get('name_a', 'A')})", "mean_b": f"mean B ({s.get('name_b', 'B')})",
             "difference": "difference B − A", "ci_low": f"{ci} low", "ci_high": f"{ci} high",
             "p_adjusted": "adjusted p"}
    return {"name_a": str(s.get("name_a", "A")), "name_b": str(s.get("name_b", "B")),
            "n_paired": s.get("n_paired"), "ci": ci,
            "table": table_from_frame(comp.subgroups, "comparison-subgroups", cols, headers=heads),
            "worse": table_from_frame(comp.worse, "comparison-worse", cols, headers=heads)}
