"""Status words and flags: the vocabulary every table, report and widget uses.

One module so the JSON, the report, the dashboard and the CLI cannot drift apart in spelling.

Criterion statuses (``AuditResult.criteria``, ``.verdicts``, ``.verdict``):

``PASS`` / ``FAIL``
    The statistic met / missed its pre-specified threshold.
``INSUFFICIENT DATA``
    The group (or lesion count) is smaller than the criterion's minimum n, or the value is
    undefined (e.g. no lesion in the group).
``NOT EVALUATED``
    The criterion cannot be checked at all for this scope, with the reason in the ``reason``
    column (a gap criterion without strata, a Dice criterion on a group made only of scans
    without reference lesions).
``NO CRITERIA``
    Overall verdict of an audit that pre-specified none.

Flags (``subgroups``, ``lesion_detection``, ``false_positives``, ``volume_agreement`` and the
comparison table) compare a group with the rest of the cohort (or model B with model A):
``ok``, ``worse``, ``better``, ``insufficient data``, ``not tested`` (large enough but nothing to
compare with: the whole cohort, or a group that holds every lesion of its size bin) and
``no change`` in comparisons.
"""

from __future__ import annotations

__all__ = [
    "CRITERION_STATUSES",
    "FAIL",
    "FLAGS",
    "FLAG_BETTER",
    "FLAG_INSUFFICIENT",
    "FLAG_NO_CHANGE",
    "FLAG_NOT_TESTED",
    "FLAG_OK",
    "FLAG_WORSE",
    "INSUFFICIENT",
    "NO_CRITERIA",
    "NOT_EVALUATED",
    "OVERALL_VERDICTS",
    "PASS",
    "overall_verdict",
]

PASS = "PASS"
FAIL = "FAIL"
INSUFFICIENT = "INSUFFICIENT DATA"
NOT_EVALUATED = "NOT EVALUATED"
NO_CRITERIA = "NO CRITERIA"
CRITERION_STATUSES = (PASS, FAIL, INSUFFICIENT, NOT_EVALUATED)
#: Overall verdicts, worst first.
OVERALL_VERDICTS = (FAIL, INSUFFICIENT, PASS, NO_CRITERIA)

FLAG_OK = "ok"
FLAG_WORSE = "worse"
FLAG_BETTER = "better"
FLAG_INSUFFICIENT = "insufficient data"
FLAG_NO_CHANGE = "no change"
FLAG_NOT_TESTED = "not tested"
FLAGS = (FLAG_OK, FLAG_WORSE, FLAG_BETTER, FLAG_INSUFFICIENT, FLAG_NO_CHANGE, FLAG_NOT_TESTED)


def overall_verdict(statuses: list[str] | tuple[str, ...] | set[str]) -> str:
    """Fold per-criterion statuses into the audit's verdict.

    FAIL if any criterion fails; else INSUFFICIENT DATA if any lacks data or could not be
    evaluated (a pre-specified criterion that was not checked cannot support acceptance); else
    PASS; NO CRITERIA when there are none.
    """
    found = set(statuses)
    if not found:
        return NO_CRITERIA
    if FAIL in found:
        return FAIL
    if found & {INSUFFICIENT, NOT_EVALUATED}:
        return INSUFFICIENT
    return PASS
