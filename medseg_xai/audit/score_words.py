"""The words every view prints for the failure-detection scores, shares and corrections.

One place: the report, the dashboard, the demo summary and the hidden-strata descriptions read
these (the tables keep the column names, for traceability to audit.json). Light: numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["CORRECTION_NAMES", "SCORE_WORDS", "correction_name", "p_words", "percent",
           "score_label", "score_phrase"]

#: Each score's words, (label, what it measures): reports, the dashboard and the CLI print these
#: (``score_phrase``); the tables keep the column name (``score``) for traceability to audit.json.
SCORE_WORDS: dict[str, tuple[str, str]] = {
    "unc_entropy": ("predictive entropy", "mean entropy over the predicted region"),
    "unc_disagreement": ("member disagreement", "1 - mean pairwise Dice of the members' masks"),
    "unc_volume_cv": ("predicted-volume variation",
                      "coefficient of variation of the members' predicted volumes"),
    "ood_score": ("feature-shift (OOD) score",
                  "squared Mahalanobis distance of the scan's model features to the reference "
                  "scans'"),
    "unc_combined": ("combined uncertainty score", "mean rank of {}"),
}
#: The multiplicity corrections' names in method sentences.
CORRECTION_NAMES = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


def correction_name(correction: str) -> str:
    """``"holm"`` -> ``"Holm"``, ``"bh"`` -> ``"Benjamini-Hochberg"`` (others as given)."""
    return CORRECTION_NAMES.get(str(correction).lower(), str(correction))


def score_label(column: str) -> str:
    """A score column's words (``"unc_entropy"`` -> ``"predictive entropy"``); an unknown
    column is returned as is."""
    return SCORE_WORDS.get(column, (column, ""))[0]


def score_phrase(column: str, parts: Sequence[str] = ()) -> str:
    """The label with what it measures, for sentences: ``"member disagreement (1 - mean
    pairwise Dice of the members' masks)"``; ``unc_combined`` names the ``parts`` it ranks."""
    label, what = SCORE_WORDS.get(column, (column, ""))
    if column == "unc_combined":
        names = [score_label(p) for p in parts] or ["the other scores"]
        if "ood_score" in parts:
            names[list(parts).index("ood_score")] = "the feature-shift (OOD) score"
        joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        what = what.format(joined)
    return f"{label} ({what})" if what else label


def percent(fraction: float) -> str:
    """One percentage format for every sentence: ``"42%"``; below 1% one decimal; ``"n/a"``
    for NaN."""
    v = float(fraction) * 100.0
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.1f}%" if 0.0 < abs(v) < 1.0 else f"{v:.0f}%"


def p_words(p: float) -> str:
    """A p-value after "p": ``"< 0.001"`` or ``"= 0.012"`` (``"n/a"`` for NaN)."""
    v = float(p)
    if not np.isfinite(v):
        return "n/a"
    return "< 0.001" if v < 0.001 else f"= {v:.3f}"
