"""medseg-xai: explain and audit medical image segmentation networks.

The three jobs of the toolkit are reachable from this namespace::

    import medseg_xai as mx
    mx.metrics.dice(pred, ref)
    exp = mx.explain(mx.SegmentationAdapter(model), image, target, method="gradcam")
    result = mx.audit(mx.Cohort.from_csv("manifest.csv"), strata=["device", "site"])

Core modules are imported eagerly (``mx.explain`` and ``mx.audit`` are functions that share
their names with sub-packages, which only eager imports keep straight). Heavy optional parts
(``widgets``, ``demo``, ``reports``) load on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# --- core (eager; one line per module, added as modules land) -------------------------------
from medseg_xai import (
    metrics,  # noqa: E402
    targets,  # noqa: E402
)
from medseg_xai.adapters import SegmentationAdapter  # noqa: E402
from medseg_xai.audit import AuditResult, audit, compare  # noqa: E402
from medseg_xai.cohort import Cohort  # noqa: E402
from medseg_xai.explain import Explanation, activations, explain  # noqa: E402
from medseg_xai.explain.weights import weights  # noqa: E402

# --- lazy optional sub-packages ------------------------------------------------------------
_LAZY_MODULES = {"widgets", "demo", "reports", "viz"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        module = importlib.import_module(f"medseg_xai.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'medseg_xai' has no attribute {name!r}")


__all__ = ["__version__", "metrics", "SegmentationAdapter", "targets", "explain", "Explanation", "activations", "weights", "Cohort", "audit", "compare", "AuditResult"]
