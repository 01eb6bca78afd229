"""The dashboard's failure-detection panel: the sentences, the score table, calibration, and
the hidden strata with drill-down (each member case opens in a CaseExplorer).

A view: sentences, tables and groups come from ``AuditResult.selective``,
``failure_detection``, ``calibration`` and ``hidden_strata``; a group's cases are the rows whose
``hidden_stratum`` names it, worst first by the core ranking (``audit.analysis.rank_worst``).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import ipywidgets as W
import pandas as pd

__all__ = ["FailurePanel"]


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<i>no rows</i>"
    return df.to_html(index=False, escape=True, border=0, classes="mx-table", na_rep="n/a",
                      float_format=lambda v: f"{v:.3g}")


class FailurePanel(W.VBox):
    """Failure detection and hidden strata of an audit, with drill-down to cases.

    Parameters
    ----------
    result : AuditResult
        Audited with ``failure=`` (or ``uncertainty=``).
    on_open : callable, optional
        ``on_open(case_id)`` opens a case (``AuditDashboard.open_case``).
    n : int
        Cases listed per hidden stratum.
    """

    def __init__(self, result: Any, on_open: Callable[[str], Any] | None = None, *,
                 n: int = 8) -> None:
        super().__init__()
        self.result, self.on_open, self.n = result, on_open, int(n)
        fd = result.failure_detection
        sel = result.selective
        lines = []
        if sel is not None and len(sel) and "best" in sel:
            for r in sel[sel["best"]].to_dict("records"):
                lines.append(
                    f"If the scans with {r['score']} above {r['threshold']:.3g} go to a human "
                    f"({r['referred']:.0%}), the rest reach mean {r['metric']} "
                    f"{r['retained_metric']:.3f} with {r['retained_risk']:.1%} failures; "
                    f"{r['caught']:.0%} of the failures are caught.")
        self.sentences = W.HTML("<br>".join(html.escape(s) for s in lines) or
                                "<i>no failure-detection scores</i>")
        self.sentences.add_class("mx-failure-sentences")
        overall = fd[fd["stratum"] == "overall"] if fd is not None and len(fd) else pd.DataFrame()
        cols = [c for c in ("score", "n", "n_failures", "aurc", "e_aurc", "auroc",
                            "spearman_metric") if c in overall]
        self.scores = W.HTML(_html_table(overall[cols]) if len(overall) else "<i>no rows</i>")
        self.scores.add_class("mx-failure-scores")
        cal = result.calibration
        self.calibration = W.HTML(_html_table(cal[["stratum", "group", "class", "n", "ece", "ace",
                                                   "mce"]]) if cal is not None and len(cal)
                                  else "<i>no probabilities: no calibration</i>")
        hs = result.hidden_strata
        options = ([(f"{r['group_id']}: {r['description']}", r["group_id"])
                    for r in hs.to_dict("records")] if hs is not None and len(hs) else [])
        self.group = W.Dropdown(options=options, description="hidden stratum",
                                layout=W.Layout(width="95%"))
        self.group.add_class("mx-hidden-group")
        self.hidden = W.HTML(_html_table(hs[["group_id", "n", "mean_group", "mean_rest", "gap",
                                             "adjusted_gap", "p_adjusted"]]) if options else
                             "<i>No hidden stratum at the stated false-discovery level.</i>")
        self.hidden.add_class("mx-hidden-strata")
        self.members = W.VBox()
        self.members.add_class("mx-hidden-members")
        self.group.observe(lambda _c: self.refresh(), "value")
        self.children = [W.HTML("<b>Failure detection</b>"), self.sentences, self.scores,
                         W.HTML("<b>Calibration</b>"), self.calibration,
                         W.HTML("<b>Hidden strata</b>"), self.hidden, self.group, self.members]
        self.add_class("mx-failure-panel")
        self.refresh()

    def cases(self) -> pd.DataFrame:
        """The chosen hidden stratum's cases, worst first by the failure metric."""
        from medseg_xai.audit.analysis import rank_worst

        if self.group.value is None or "hidden_stratum" not in self.result.cases:
            return pd.DataFrame()
        metric = self.result.settings.get("failure", {}).get("metric", "dice")
        return rank_worst(self.result.cases, metric, stratum="hidden_stratum",
                          group=str(self.group.value), n=self.n, include_empty_reference=True)

    def refresh(self) -> None:
        rows = self.cases()
        buttons = []
        metric = self.result.settings.get("failure", {}).get("metric", "dice")
        for r in rows.to_dict("records"):
            b = W.Button(description=f"{r['case_id']} ({metric} {r[metric]:.3f})",
                         layout=W.Layout(width="auto"))
            b.add_class("mx-open-case")
            b.on_click(lambda _b, cid=str(r["case_id"]): self.on_open and self.on_open(cid))
            buttons.append(b)
        self.members.children = buttons
