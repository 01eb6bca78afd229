"""medseg-xai: explain and audit medical image segmentation networks.

The three jobs of the toolkit are reachable from this namespace::

    import medseg_xai as mx
    mx.metrics.dice(pred, ref)
    exp = mx.explain(mx.SegmentationAdapter(model), image, target, method="gradcam")
    result = mx.audit(mx.Cohort.from_csv("manifest.csv"), strata=["device", "site"])

Every name loads on first use (PEP 562 ``__getattr__``), so ``import medseg_xai`` and
``import medseg_xai.metrics`` cost numpy, scipy and pandas only: torch, captum and matplotlib load
when a model, an explanation or a figure is used. ``mx.explain`` and ``mx.audit`` are the
sub-packages themselves, made callable (:mod:`medseg_xai._callable_module`), so
``mx.audit(cohort)`` and ``import medseg_xai.audit.stats`` both work.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "metrics": ("medseg_xai.metrics", None),
    "targets": ("medseg_xai.targets", None),
    "explain": ("medseg_xai.explain", None),
    "audit": ("medseg_xai.audit", None),
    "widgets": ("medseg_xai.widgets", None),
    "demo": ("medseg_xai.demo", None),
    "reports": ("medseg_xai.reports", None),
    "viz": ("medseg_xai.viz", None),
    "SegmentationAdapter": ("medseg_xai.adapters", "SegmentationAdapter"),
    "label_map": ("medseg_xai.decide", "label_map"),
    "Cohort": ("medseg_xai.cohort", "Cohort"),
    "Explanation": ("medseg_xai.explain", "Explanation"),
    "activations": ("medseg_xai.explain", "activations"),
    "weights": ("medseg_xai.explain.weights", "weights"),
    "explain_miss": ("medseg_xai.explain.miss", "explain_miss"),
    "MissAnalysis": ("medseg_xai.explain.miss", "MissAnalysis"),
    "MissSettings": ("medseg_xai.explain.miss_settings", "MissSettings"),
    "AuditResult": ("medseg_xai.audit", "AuditResult"),
    "AuditPlan": ("medseg_xai.audit.plan", "AuditPlan"),
    "compare": ("medseg_xai.audit", "compare"),
    "models": ("medseg_xai.models", None),
    "load_model": ("medseg_xai.models", "load_model"),
}

if TYPE_CHECKING:  # static tools see the real names
    from medseg_xai import audit, explain, metrics, targets
    from medseg_xai.adapters import SegmentationAdapter
    from medseg_xai.audit import AuditResult, compare
    from medseg_xai.audit.plan import AuditPlan
    from medseg_xai.cohort import Cohort
    from medseg_xai.explain import Explanation, activations
    from medseg_xai.explain.miss_settings import MissSettings
    from medseg_xai.explain.weights import weights


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'medseg_xai' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["__version__", "metrics", "SegmentationAdapter", "targets", "explain", "Explanation",
           "activations", "weights", "Cohort", "audit", "compare", "AuditResult",
           "AuditPlan", "load_model", "MissSettings"]
