"""Reference standard: how the labels were made (from the report config; "not stated")."""

from __future__ import annotations

from typing import Any

from medseg_xai.reports.common import config_text, reference_statement

TITLE = "Reference standard"

#: Report-config keys of this section, with their row labels.
KEYS = (
    ("reference_standard", "How the reference labels were made"),
    ("annotators", "Annotators (number, profession, experience)"),
    ("annotation_protocol", "Annotation protocol / software"),
    ("adjudication", "Adjudication of disagreements"),
    ("blinding", "Blinding to the model's output"),
)


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    rows = [(label, config_text(config, key) or "not stated") for key, label in KEYS]
    silent = all(v == "not stated" for _, v in rows)
    used = reference_statement(result)
    return {"rows": [("Reference standard used by this audit", used[0].upper() + used[1:]),
                     *rows], "silent": silent, "used": used}
