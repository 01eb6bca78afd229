"""The dashboard's failure-detection panel: the sentences, the score table, calibration, and
the hidden strata of cases and of lesions with drill-down (each member case opens in a
CaseExplorer; each member lesion opens its case with that lesion selected).

A view: sentences, tables and groups come from ``AuditResult.selective``,
``failure_detection``, ``calibration``, ``hidden_strata`` and ``lesion_hidden_strata``; a group's
cases are the rows whose ``hidden_stratum`` names it, worst first by the core ranking
(``audit.analysis.rank_worst``), its lesions the lesion rows whose ``hidden_stratum`` names it,
missed first (``audit.lesion_strata.rank_group_lesions``).
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


def _sentences(sel: pd.DataFrame | None) -> list[str]:
    """The stated failure, then the best score's sentences, as ``result.selective`` holds
    them (the same words as the report)."""
    if sel is None or sel.empty or "sentence" not in sel:
        return []
    best = sel[sel["best"]].to_dict("records")
    return ([str(sel["failure_sentence"].iloc[0])] + [r["sentence"] for r in best]
            + [r["worst_group"] for r in best if r.get("worst_group")])


class FailurePanel(W.VBox):
    """Failure detection and hidden strata of an audit, with drill-down to cases.

    Parameters
    ----------
    result : AuditResult
        Audited with ``failure=`` (or ``uncertainty=``).
    on_open : callable, optional
        ``on_open(case_id)`` opens a case (``AuditDashboard.open_case``); when it returns a
        CaseExplorer, a lesion's button also selects the lesion there.
    n : int
        Cases (and lesions) listed per hidden stratum.
    on_open_lesion : callable, optional
        ``on_open_lesion(case_id, lesion_id)`` instead of ``on_open`` + ``select_lesion``.
    """

    def __init__(self, result: Any, on_open: Callable[[str], Any] | None = None, *,
                 n: int = 8,
                 on_open_lesion: Callable[[str, str], Any] | None = None) -> None:
        super().__init__()
        self.result, self.on_open, self.n = result, on_open, int(n)
        self.on_open_lesion = on_open_lesion
        fd = result.failure_detection
        sel = result.selective
        lines = _sentences(sel)
        self.sentences = W.HTML("<br>".join(html.escape(s) for s in lines) or
                                "<i>no failure-detection scores</i>")
        self.sentences.add_class("mx-failure-sentences")
        overall = fd[fd["stratum"] == "overall"] if fd is not None and len(fd) else pd.DataFrame()
        cols = [c for c in ("score_label", "score", "n", "n_failures", "aurc", "e_aurc",
                            "auroc", "spearman_metric") if c in overall]
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
        said = "<br>".join(html.escape(str(t)) for t in (
            hs["sentence"] if options and "sentence" in hs else []))
        self.hidden = W.HTML(said + _html_table(hs[["group_id", "n", "mean_group", "mean_rest",
                                                    "gap", "adjusted_gap", "p_adjusted"]])
                             if options else
                             "<i>No hidden stratum at the stated false-discovery level.</i>")
        self.hidden.add_class("mx-hidden-strata")
        self.members = W.VBox()
        self.members.add_class("mx-hidden-members")
        self.group.observe(lambda _c: self.refresh(), "value")
        lesion_part = self._lesion_widgets()
        self.children = [W.HTML("<b>Failure detection</b>"), self.sentences, self.scores,
                         W.HTML("<b>Calibration</b>"), self.calibration,
                         W.HTML("<b>Hidden strata</b>"), self.hidden, self.group, self.members,
                         *lesion_part]
        self.add_class("mx-failure-panel")
        self.refresh()
        self.refresh_lesions()

    def _lesion_widgets(self) -> list[W.Widget]:
        """Sentences, table, group dropdown and member list of the lesion-level strata."""
        ls = getattr(self.result, "lesion_hidden_strata", None)
        has = ls is not None and len(ls) > 0
        options = ([(f"{r['group_id']}: {r['description']}", r["group_id"])
                    for r in ls.to_dict("records")] if has else [])
        self.lesion_group = W.Dropdown(options=options, description="lesion stratum",
                                       layout=W.Layout(width="95%"))
        self.lesion_group.add_class("mx-lesion-group")
        cols = ["group_id", "n", "n_cases", "mean_group", "mean_rest", "adjusted_gap",
                "p_adjusted"]
        text = "<br>".join(html.escape(str(t)) for t in (
            ls["sentence"] if has and "sentence" in ls else []))
        self.lesion_hidden = W.HTML(
            (text + _html_table(ls[[c for c in cols if c in ls]])) if has else
            "<i>No hidden stratum of lesions at the stated false-discovery level.</i>")
        self.lesion_hidden.add_class("mx-lesion-strata")
        self.lesion_members = W.VBox()
        self.lesion_members.add_class("mx-lesion-members")
        self.lesion_group.observe(lambda _c: self.refresh_lesions(), "value")
        if ls is None and not self.result.provenance.get("lesion_hidden_strata"):
            return []  # an audit without lesion-level search (or an older document)
        return [W.HTML("<b>Hidden strata of lesions</b>"), self.lesion_hidden,
                self.lesion_group, self.lesion_members]

    def lesions(self) -> pd.DataFrame:
        """The chosen lesion stratum's lesions, missed first, then lowest lesion Dice."""
        from medseg_xai.audit.lesion_strata import rank_group_lesions

        if self.lesion_group.value is None:
            return pd.DataFrame()
        return rank_group_lesions(self.result.lesions, str(self.lesion_group.value), self.n)

    def open_lesion(self, case_id: str, lesion_id: str) -> Any:
        """Open ``case_id`` and select ``lesion_id`` in its CaseExplorer."""
        if self.on_open_lesion is not None:
            return self.on_open_lesion(case_id, lesion_id)
        explorer = self.on_open(case_id) if self.on_open else None
        if explorer is not None and hasattr(explorer, "select_lesion"):
            explorer.select_lesion(lesion_id)
        return explorer

    def refresh_lesions(self) -> None:
        buttons = []
        for r in self.lesions().to_dict("records"):
            cid, lid = str(r["case_id"]), str(r["lesion_id"])
            b = W.Button(description=f"{cid} {lid} ({r['status']}, "
                                     f"{float(r['volume_mm3']):.0f} mm3)",
                         layout=W.Layout(width="auto"))
            b.add_class("mx-open-lesion")
            b.on_click(lambda _b, c=cid, lesion=lid: self.open_lesion(c, lesion))
            buttons.append(b)
        self.lesion_members.children = buttons

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
