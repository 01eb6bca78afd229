"""Regulatory audit reports: one self-contained HTML file (Jinja2, inline CSS, PNG data URIs).

``write_html(result, path, ...)`` renders the ten sections of the audit report; the matching JSON
comes from ``result.to_json(path)``. ``figures`` holds the plot builders shared with widgets.
"""

from medseg_xai.reports import figures
from medseg_xai.reports.render import load_config, render_html, write_html

__all__ = ["figures", "load_config", "render_html", "write_html"]
