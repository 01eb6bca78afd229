"""Audit engine: per-case evaluation at scale, subgroup statistics, criteria, model comparison.

::

    cohort = mx.Cohort.from_csv("manifest.csv")
    plan = mx.AuditPlan.from_options(strata=["device", "site", "lesion_size"], criteria="default")
    result = mx.audit(cohort, plan)
    result.subgroups ; result.criteria ; result.to_json("audit.json")
    mx.compare(result_a, result_b).worse
"""

from medseg_xai.audit.compare import ComparisonResult, compare
from medseg_xai.audit.criteria import DEFAULT_CRITERIA, load_criteria
from medseg_xai.audit.engine import DEFAULT_METRICS, audit, build_result
from medseg_xai.audit.io import write_outputs
from medseg_xai.audit.plan import AuditPlan
from medseg_xai.audit.result import AuditResult

__all__ = [
    "DEFAULT_CRITERIA",
    "DEFAULT_METRICS",
    "AuditPlan",
    "AuditResult",
    "ComparisonResult",
    "audit",
    "build_result",
    "compare",
    "load_criteria",
    "write_outputs",
]

# ``mx.audit(...)`` calls audit(); the package stays importable (``audit.stats``).
from medseg_xai._callable_module import make_callable  # noqa: E402

make_callable(__name__)
