"""Traceability: the items of FDA's draft guidance on AI-enabled device software functions
(January 2025), CLAIM (2024 update) and TRIPOD+AI (2024) that a performance report can answer,
each mapped to the section of this report that answers it, or "not provided: <why>".

The mapping itself is :data:`ITEMS` (also printed in ``docs/traceability.md``); what is shown
depends only on the result and the report configuration: an item answered by a section that is
left out of this report (no readers, no model run) or by a configuration key that was not given
reads "not provided" with the reason.
"""

from __future__ import annotations

from typing import Any

from medseg_xai.reports.common import config_text

TITLE = "Traceability to guidance and reporting checklists"

FDA = "FDA draft guidance AI-DSF (Jan 2025)"

#: (source, item, what is asked, how it is answered): the answer is a section name
#: (``"section:<name>"``), a report-configuration key (``"config:<key>"``), either of several
#: (``"|"``), or ``"none:<why>"``.
ITEMS: tuple[tuple[str, str, str, str], ...] = (
    (FDA, "VIII data management", "Reference standard: how it was determined, by whom",
     "section:reference_standard"),
    (FDA, "VIII data management", "Multiple readers, agreement and adjudication",
     "section:reference_standard_readers|none:the audit had one reference per scan"),
    (FDA, "VIII data management", "Test data: source, sites, devices, size, inclusion",
     "section:data"),
    (FDA, "VIII data management", "Independence of test data from training data",
     "config:test_set|none:no statement on the test set in the report configuration"),
    (FDA, "VIII data management", "Data quality: cases that could not be evaluated",
     "section:failures"),
    (FDA, "X.A performance validation", "Pre-specified acceptance criteria and their results",
     "section:criteria"),
    (FDA, "X.A performance validation", "Performance overall with confidence intervals",
     "section:overall"),
    (FDA, "X.A performance validation", "Performance per subgroup (site, device, lesion size...)",
     "section:subgroups"),
    (FDA, "X.A performance validation", "Sample-size justification", "section:criteria"),
    (FDA, "X.A performance validation", "Performance against readers / reader variability",
     "section:reference_standard_readers|none:no reader masks in the manifest"),
    (FDA, "X.A performance validation", "Failure cases and error analysis", "section:failures"),
    (FDA, "Appendix C statistics", "Statistical analysis plan: methods, multiplicity, seed",
     "section:analysis_plan"),
    (FDA, "Appendix C statistics", "Two-sided confidence intervals and their method",
     "section:analysis_plan"),
    (FDA, "Appendix C statistics", "Clinical reference values / comparison to predicate",
     "section:comparison|none:no comparison model given to this report"),
    (FDA, "Appendix E model card", "Model identification, version, fingerprint",
     "section:identification"),
    (FDA, "Appendix E model card", "Intended use and users", "config:intended_use"),
    (FDA, "Appendix E model card", "Limitations and known failure modes", "section:limitations"),
    (FDA, "Appendix E model card", "Model architecture, inputs and training data",
     "section:model_and_data|none:the audit read stored predictions (no model run); "
     "training data are outside an audit's inputs"),
    ("CLAIM 2024", "items 7-9 data", "Data sources, eligibility, preprocessing", "section:data"),
    ("CLAIM 2024", "items 14-18 ground truth", "Reference standard definition, annotators, "
     "inter-rater variability", "section:reference_standard"),
    ("CLAIM 2024", "items 26-29 evaluation", "Metrics, statistical measures of significance "
     "and uncertainty, subgroup robustness", "section:analysis_plan"),
    ("CLAIM 2024", "items 32-35 results", "Performance with CIs, failure analysis",
     "section:overall"),
    ("CLAIM 2024", "item 21 training", "Training procedure and hyperparameters",
     "none:a performance audit does not train the model"),
    ("TRIPOD+AI 2024", "item 8 outcome", "How the outcome (reference) was assessed, blinding",
     "section:reference_standard"),
    ("TRIPOD+AI 2024", "item 9 predictors", "Inputs (images) and their acquisition",
     "section:data"),
    ("TRIPOD+AI 2024", "item 10 sample size", "Study size and how it was arrived at",
     "section:criteria"),
    ("TRIPOD+AI 2024", "item 12 analysis", "Performance measures, uncertainty, heterogeneity "
     "across clusters (sites)", "section:subgroups"),
    ("TRIPOD+AI 2024", "item 14 fairness", "Performance in key subgroups", "section:subgroups"),
    ("TRIPOD+AI 2024", "item 18 open science", "Code, software versions, reproducibility",
     "section:reproducibility"),
    ("TRIPOD+AI 2024", "item 20 participants", "Flow of participants, missing data",
     "section:data"),
)


def _answer(spec: str, shown: dict[str, int], config: dict[str, Any]) -> tuple[str, str]:
    """(where, status) for one item: the first alternative that this report has."""
    reasons = []
    for alt in spec.split("|"):
        kind, _, what = alt.partition(":")
        if kind == "section" and what in shown:
            return f"§{shown[what]}", "answered"
        if kind == "config" and config_text(config, what):
            return f"§{shown.get('identification', 2)} (report configuration: {what})", "answered"
        if kind == "none":
            reasons.append(what)
        elif kind == "section":
            reasons.append(f"section '{what}' is not part of this report")
        else:
            reasons.append(f"report configuration key '{what}' not given")
    return "not provided: " + reasons[-1], "not provided"


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Rows are filled by :func:`resolve` once the report knows which sections it shows."""
    return {"config": {k: v for k, v in config.items() if k != "comparison"}, "rows": [],
            "n_answered": 0, "n": len(ITEMS)}


def resolve(data: dict[str, Any], shown: dict[str, int]) -> None:
    """Fill ``data["rows"]`` from the shown sections (name -> number); called by the renderer."""
    rows = []
    for source, part, asked, spec in ITEMS:
        where, status = _answer(spec, shown, data["config"])
        rows.append((source, part, asked, where, status))
    data["rows"] = rows
    data["n_answered"] = sum(r[4] == "answered" for r in rows)
