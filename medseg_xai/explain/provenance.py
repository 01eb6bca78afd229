"""Provenance of an explanation: library versions, model fingerprint, device, time."""

from __future__ import annotations

import datetime as _dt
from typing import Any

__all__ = ["library_versions", "provenance"]

_LIBRARIES = ("medseg-xai", "torch", "monai", "captum", "numpy", "scipy")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries an explanation depends on (plus Python)."""
    from medseg_xai.versions import library_versions as _versions  # the one place versions are read

    return _versions(_LIBRARIES)


def provenance(adapter: Any) -> dict[str, Any]:
    """Everything needed to tell which model and software produced an explanation."""
    return {
        "versions": library_versions(),
        "model_class": type(adapter.model).__name__,
        "model_fingerprint": adapter.fingerprint,
        "activation": adapter.activation,
        "spatial_dims": adapter.spatial_dims,
        "slice_axis": adapter.slice_axis,
        "sliding_window": (
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in adapter.sliding_window.items()}
            if adapter.sliding_window
            else None
        ),
        "device": str(adapter.device),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
