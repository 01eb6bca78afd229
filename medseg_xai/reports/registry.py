"""The report's sections, in order.

Each entry names a module ``medseg_xai.reports.sec_<name>`` that exposes

* ``TITLE: str`` (without a number: numbers are given at render time to the sections that are
  shown, so they never have holes), and
* ``build(result, config) -> dict | None``: a pure function of the
  :class:`~medseg_xai.audit.AuditResult` and the report configuration (a dict: the result's own
  ``report`` merged with the caller's ``config``; the render-time key ``"comparison"`` holds a
  :class:`~medseg_xai.audit.ComparisonResult` or None). It returns the plain data its template
  shows, or None to leave the section out. It reads only what the result holds: no statistics,
  no bootstrap, no explanations, no file access.

and a Jinja2 template ``templates/sec_<name>.html.j2`` that receives ``s`` (the dict), ``num``
(the section number), ``title`` and ``anchor`` and the macros of ``_macros.html.j2``.

To add a section: write both files and add one line here.
"""

from __future__ import annotations

SECTIONS: tuple[str, ...] = (
    "verdict",
    "identification",
    "reference_standard",
    "reference_standard_readers",
    "data",
    "analysis_plan",
    "criteria",
    "overall",
    "subgroups",
    "lesions",
    "failures",
    "failure_detection",
    "model_and_data",
    "comparison",
    "limitations",
    "efficiency",
    "reproducibility",
    "traceability",
)

#: Sections that start a new printed page: the results part; every other section flows on after
#: the one before it (the demo report printed 37 pages with a break before every section).
MAJOR_PARTS: frozenset[str] = frozenset({"overall"})
