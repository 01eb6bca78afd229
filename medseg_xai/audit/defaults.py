"""The analysis defaults of the whole package, defined once (the plan's and the tables')."""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS"]

#: Defaults of the analysis plan's statistics and strata parts (``audit.plan``); the tables'
#: signatures (``audit.analysis.STATS_DEFAULTS``) read them from here.
DEFAULTS: dict[str, Any] = {
    "min_n": 10,
    "confidence": 0.95,
    "alpha": 0.05,
    "n_resamples": 2000,
    "n_permutations": 2000,
    "interval_method": "auto",
    "test": "mannwhitney",
    "correction": "holm",
    "seed": 0,
    "lesion_size_bins": 3,
    "detection_bins": (0.0, 100.0, 1000.0, 10000.0),
}
