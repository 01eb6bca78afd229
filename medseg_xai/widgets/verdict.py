"""Views of the miss analysis (no computation here).

:func:`verdict_html` renders a :class:`~medseg_xai.explain.miss.MissAnalysis` (what
``mx.explain_miss`` returns) as escaped HTML: the verdict's headline, its sentences, the
probe table and the attribution evidence, all read from the analysis.

The ring measurements (:func:`contrast_to_noise`, :func:`local_background`,
:func:`scale_contrast`, :func:`contrast_sweep`) moved to :mod:`medseg_xai.explain.probes` and are
re-exported here (the lesion table shows the contrast-to-noise ratio). The older
``miss_verdict`` wording is gone: ``mx.explain_miss`` is the one way to explain a miss.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.explain.probes import (
    DEFAULT_FACTORS,
    contrast_sweep,
    contrast_to_noise,
    local_background,
    scale_contrast,
)

__all__ = [
    "DEFAULT_FACTORS",
    "contrast_sweep",
    "contrast_to_noise",
    "local_background",
    "scale_contrast",
    "verdict_html",
]


def _cell(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{float(v):.3g}"
    return "" if v is None else str(v)


def _table(df: pd.DataFrame, columns: list[str], cls: str) -> str:
    cols = [c for c in columns if c in df.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in cols) + "</tr>"
        for _, r in df.iterrows()
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def verdict_html(analysis: Any, *, tables: bool = True) -> str:
    """Escaped HTML of a :class:`~medseg_xai.explain.miss.MissAnalysis`.

    Parameters
    ----------
    analysis : MissAnalysis
        What ``mx.explain_miss`` returned.
    tables : bool
        Also show the probe table and the evidence table.

    Returns
    -------
    str
        ``<div class="mx-miss">``: the headline in bold, the causes, one list item per further
        verdict sentence, then the tables.
    """
    lines = list(analysis.verdict_lines)
    causes = ", ".join(analysis.causes) if analysis.causes else "none named"
    items = "".join(f"<li>{html.escape(t.lstrip('- '))}</li>" for t in lines[1:])
    out = [f'<div class="mx-miss"><p><b>{html.escape(lines[0])}</b></p>',
           f"<p>Causes: <b>{html.escape(causes)}</b></p><ul>{items}</ul>"]
    if tables:
        out.append(_table(analysis.probes, ["probe", "setting", "max_prob", "mean_prob",
                                            "covered_fraction", "detected", "change", "effect"],
                          "mx-probes"))
        out.append(_table(analysis.evidence, ["method", "layer", "baseline", "enrichment",
                                              "completeness_error", "randomisation_spearman",
                                              "passed", "reason"], "mx-evidence"))
    out.append("</div>")
    return "".join(out)
