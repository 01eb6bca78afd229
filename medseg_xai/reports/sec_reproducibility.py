"""Reproducibility appendix: settings, hashes, versions, command line, signatures."""

from __future__ import annotations

from typing import Any

from medseg_xai._privacy import redact_paths
from medseg_xai.reports.sec_identification import model_fingerprint
from medseg_xai.reports.tables import fmt

TITLE = "Reproducibility appendix"

_DEFAULT_APPROVERS = ({"role": "Prepared by"}, {"role": "Reviewed by (clinical)"},
                      {"role": "Approved by (quality / regulatory)"})


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    p = result.provenance
    rows = [
        ("Model fingerprint", model_fingerprint(result)),
        ("Manifest", str(p.get("manifest_source") or "not recorded")),
        ("Manifest hash", str(p.get("manifest_hash"))),
        ("Inputs hash", str(p.get("inputs_hash"))),
        ("Seed", str(p.get("seed"))),
        ("Empty-mask policy", str(p.get("empty_policy"))),
        ("Patient ids pseudonymised with the user's salt", fmt(bool(p.get("pseudonymised")))),
        ("Manifest rows / evaluated / failed",
         f"{p.get('n_rows')} / {p.get('n_evaluated')} / {p.get('n_failed')}"),
    ]
    approvers = config.get("approvers") or _DEFAULT_APPROVERS
    command = config.get("command_line")
    return {
        "rows": rows,
        "versions": sorted((p.get("versions") or {}).items()),
        "command": redact_paths(str(command)) if command else "not recorded",
        "approvers": [{"role": str(a.get("role", "")), "name": str(a.get("name") or "")}
                      if isinstance(a, dict) else {"role": str(a), "name": ""} for a in approvers],
    }
