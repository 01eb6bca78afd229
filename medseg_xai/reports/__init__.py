"""Regulatory audit reports: views of an AuditResult (one module per section).

``write_html(result, path, config=..., comparison=..., pdf=False)`` renders the sections of
:mod:`medseg_xai.reports.registry` (each ``sec_<name>.build(result, config)``) into one
self-contained HTML file; ``write_pdf`` prints it. ``figures`` holds the plot builders shared
with the widgets.
"""

from medseg_xai.reports import figures
from medseg_xai.reports.render import load_config, render_html, write_html, write_pdf

__all__ = ["figures", "load_config", "render_html", "write_html", "write_pdf"]
