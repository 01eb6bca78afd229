"""Figures of the failure-detection section: risk-coverage curves and reliability diagrams.

Views only: they draw the rows of ``AuditResult.risk_coverage`` and ``AuditResult.reliability``
as they are (no statistic is computed here).
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from medseg_xai.audit.failure import failure_label, score_label
from medseg_xai.reports.figures import FONT

__all__ = ["reliability_plot", "risk_coverage_plot"]

_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")


def risk_coverage_plot(curves: pd.DataFrame, failure: str) -> Figure:
    """Risk (failure rate of the retained scans) against coverage, one line per score."""
    fig = Figure(figsize=(5.2, 3.2))
    ax = fig.add_subplot()
    for i, (score, rows) in enumerate(curves.groupby("score", sort=False)):
        ax.plot(rows["coverage"], rows["risk"], color=_COLOURS[i % len(_COLOURS)], lw=1.4,
                label=score_label(str(score)))
    ax.set_xlabel("coverage (share of scans kept automatic)", fontsize=FONT)
    ax.set_ylabel(f"risk: share with {failure_label(failure)}", fontsize=FONT)
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.tick_params(labelsize=FONT)
    ax.legend(fontsize=FONT, frameon=False)
    return fig


def reliability_plot(points: pd.DataFrame, title: str) -> Figure:
    """Observed frequency against mean probability per bin (marker area ~ voxel count), one
    panel per group, the diagonal for perfect calibration."""
    groups = list(dict.fromkeys(points["group"]))
    cols = min(len(groups), 4) or 1
    rows_n = (len(groups) + cols - 1) // cols
    fig = Figure(figsize=(1.9 * cols + 0.4, 1.9 * rows_n + 0.4))
    for i, g in enumerate(groups):
        ax = fig.add_subplot(rows_n, cols, i + 1)
        p = points[(points["group"] == g) & (points["count"] > 0)]
        total = float(p["count"].sum()) or 1.0
        ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
        ax.scatter(p["mean_probability"], p["observed"], s=4 + 200 * p["count"] / total,
                   color=_COLOURS[0])
        ax.set_title(str(g), fontsize=FONT)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=FONT - 1)
    fig.suptitle(title, fontsize=FONT)
    return fig
