"""Efficiency: where the audit's time went (per-stage timings) and its resource use.

A view of ``result.run["efficiency"]`` (built by the engine from the per-case timing columns):
per stage (load, inference, metrics, lesions, cache) the seconds summed over cases, their
share, and the per-case mean, median, 95th percentile and maximum; cases per second; the
slowest cases; the peak memory. Nothing is computed here; results written before the engine
recorded timings have no such section (``build`` returns None).
"""

from __future__ import annotations

from typing import Any

TITLE = "Efficiency: speed and resource use"

_STAGE_NAMES = {"load": "loading volumes", "inference": "model inference",
                "metrics": "metrics", "lesions": "lesion matching",
                "cache": "cache (hash, lookup, store)", "total": "whole case"}


def _s(v: Any) -> str:
    if v is None:
        return "–"
    x = float(v)
    if x != x:
        return "–"
    if x >= 100:
        return f"{x:.0f} s"
    if x >= 1:
        return f"{x:.2f} s"
    return f"{x * 1000:.1f} ms"


def build(result: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    eff = (getattr(result, "run", None) or {}).get("efficiency")
    if not eff or not eff.get("stages"):
        return None
    run = result.run
    stages = []
    order = list(_STAGE_NAMES)  # fixed order: audit.json stores the stages with sorted keys
    for key, st in sorted(eff["stages"].items(),
                          key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order),
                                          kv[0])):
        stages.append({
            "stage": _STAGE_NAMES.get(key, key), "total": _s(st.get("total_s")),
            "share": "" if key == "total" else f"{100 * float(st.get('share', 0.0)):.0f}%",
            "mean": _s(st.get("mean_s")), "median": _s(st.get("median_s")),
            "p95": _s(st.get("p95_s")), "max": _s(st.get("max_s")),
        })
    rate = eff.get("cases_per_s")
    facts = [
        ("Cases", str(eff.get("n_cases"))),
        ("Per-case phase (wall clock)", _s(eff.get("elapsed_s"))),
        ("Cases per second", "–" if rate is None else f"{float(rate):.1f}"),
        ("Executor", f"{run.get('executor', '–')} × {run.get('workers', '–')}"),
        ("Cases reused from the cache", str(run.get("n_from_cache", 0))),
    ]
    if run.get("case_timeout_s"):
        facts.append(("Per-case time limit", _s(run["case_timeout_s"])))
    for key, label in (("max_peak_memory_mb", "Largest peak memory of a case (process)"),
                       ("max_peak_gpu_memory_mb", "Largest peak GPU memory of a case")):
        if eff.get(key) is not None:
            facts.append((label, f"{float(eff[key]):.0f} MB"))
    slowest = [{"case_id": str(c["case_id"]), "total": _s(c["total_s"]), "status": str(c["status"])}
               for c in eff.get("slowest") or []]
    return {"facts": facts, "stages": stages, "slowest": slowest}
