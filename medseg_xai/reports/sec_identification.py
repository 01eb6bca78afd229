"""Identification: the model, its fingerprint, intended use and users."""

from __future__ import annotations

from typing import Any

from medseg_xai.reports.common import config_text

TITLE = "Identification"


def model_fingerprint(result: Any) -> str:
    """The one fingerprint string shown everywhere (the audit's provenance)."""
    return str(result.provenance.get("model_fingerprint") or "not recorded (no model given)")


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    rows = [
        ("Model", config_text(config, "model_name", "model") or "not stated"),
        ("Model version", config_text(config, "model_version") or "not stated"),
        ("Model fingerprint (sha256 of the weights, 16 hex)", model_fingerprint(result)),
        ("Manufacturer / owner", config_text(config, "manufacturer", "owner") or "not stated"),
        ("Audit run", str(result.run.get("created_at") or "not recorded")),
        ("Intended use", config_text(config, "intended_use") or "not stated"),
        ("Intended users", config_text(config, "intended_users") or "not stated"),
    ]
    return {"rows": rows}
