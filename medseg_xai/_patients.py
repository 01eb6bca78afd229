"""Signs that a manifest holds several scans per patient without saying so.

Scans of one patient are correlated; intervals that treat them as independent are too narrow
(``benchmarks/bench_coverage.py``: per-scan intervals of clustered cohorts covered 0.68-0.92
where the patient-clustered ones covered >= 0.93). When no ``patient_id`` column is given but a
column *named* like a patient or subject key repeats its values, the audit warns and says which
column to pass as ``patient_id``.
"""

from __future__ import annotations

import pandas as pd

from medseg_xai._privacy import identifier_tokens

__all__ = ["PATIENT_WORDS", "repeated_patient_columns", "repeated_patient_warning"]

#: a column whose name holds one of these words (and no measurement word) names a person
PATIENT_WORDS = frozenset({"patient", "patients", "subject", "subjects", "participant",
                           "participants", "pid", "mrn", "individual", "donor"})
_NOT_A_KEY = frozenset({"age", "sex", "gender", "weight", "height", "bmi", "count", "position",
                        "orientation", "size", "comment", "comments", "group", "birth", "birthdate"})


def repeated_patient_columns(manifest: pd.DataFrame) -> list[str]:
    """Columns named like a patient/subject key whose values repeat across rows.

    Empty when the manifest has a ``patient_id`` column (then clustering is already known).
    """
    if "patient_id" in manifest.columns:
        return []
    out = []
    for col in manifest.columns:
        words = set(identifier_tokens(col))
        if not words & PATIENT_WORDS or words & _NOT_A_KEY:
            continue
        values = manifest[col].dropna()
        if len(values) > 1 and values.astype(str).duplicated().any():
            out.append(str(col))
    return out


def repeated_patient_warning(columns: list[str]) -> str | None:
    """The one-sentence warning for :func:`repeated_patient_columns`' result (None if empty)."""
    if not columns:
        return None
    return (f"rows look like repeated patients (column(s) {columns} repeat their values) but no "
            "patient_id column was given: intervals treat every scan as independent and are too "
            "narrow if scans of one patient are correlated; pass that column as patient_id")
