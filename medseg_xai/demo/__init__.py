"""Synthetic multi-site demo cohort and the small demo model bundled with medseg-xai.

Everything here runs offline: no data and no weights are downloaded.

>>> import medseg_xai as mx
>>> manifest = mx.demo.make_cohort("demo_cohort", n_cases=24, seed=0)   # doctest: +SKIP
>>> adapter = mx.demo.load_model()                                      # doctest: +SKIP
>>> manifest = mx.demo.predict_cohort(manifest, adapter)                # doctest: +SKIP

``make_cohort`` needs only numpy, scipy and nibabel; ``load_model`` and ``predict_cohort`` import
torch and MONAI on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from medseg_xai.demo.cohort import make_cohort
from medseg_xai.demo.scanners import DEVICES, SITES, UNSEEN_DEVICE

__all__ = ["DEVICES", "SITES", "UNSEEN_DEVICE", "load_model", "make_cohort", "predict_cohort"]

_LAZY = {"load_model": "medseg_xai.demo.model", "predict_cohort": "medseg_xai.demo.predict"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medseg_xai.demo' has no attribute {name!r}")
