"""``AuditDashboard``: subgroup results of an audit, optionally against a second model.

Choose a stratum and a metric; the dashboard shows the forest plot (``reports.figures``) and the
per-group distribution, the subgroup table with confidence intervals and flags, the acceptance
criteria and their status, and the worst cases of a chosen group, each of which opens in a
:class:`~medseg_xai.widgets.CaseExplorer`. The selection logic lives in plain functions
(:func:`subgroup_rows`, :func:`worst_cases`) so it is testable without widgets.
"""

from __future__ import annotations

import functools
import html
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["AuditDashboard", "subgroup_rows", "worst_cases"]

_SUBGROUP_COLUMNS = ["group", "n", "estimate", "ci_low", "ci_high", "gap", "p_adjusted", "flag"]
_COMPARE_COLUMNS = ["group", "n", "mean_a", "mean_b", "difference", "ci_low", "ci_high",
                    "p_adjusted", "flag"]


def _direction(metric: str) -> int:
    from medseg_xai.audit.stats import metric_direction

    return int(metric_direction(metric))


def subgroup_rows(subgroups: pd.DataFrame, stratum: str, metric: str) -> pd.DataFrame:
    """Rows of one stratum and metric, in table order."""
    for col in ("stratum", "metric", "group"):
        if col not in subgroups.columns:
            raise ValueError(f"subgroups: expected a '{col}' column, got {list(subgroups.columns)}")
    rows = subgroups[(subgroups["stratum"] == stratum) & (subgroups["metric"] == metric)]
    return rows.reset_index(drop=True)


def worst_cases(cases: pd.DataFrame, metric: str, stratum: str | None = None,
                group: str | None = None, n: int = 5) -> pd.DataFrame:
    """The ``n`` evaluated cases with the worst ``metric`` in a group.

    "Worst" follows the metric's direction (``audit.stats.metric_direction``): lowest Dice,
    highest HD95, largest absolute volume difference for metrics best at zero. Failed rows and
    missing values are left out.
    """
    if metric not in cases.columns:
        raise ValueError(f"metric: expected a column of the audit's cases, got {metric!r}")
    ok = cases[cases["status"] == "ok"] if "status" in cases.columns else cases
    if stratum not in (None, "overall"):
        if stratum not in ok.columns:
            raise ValueError(f"stratum: expected a column of the audit's cases, got {stratum!r}")
        ok = ok[ok[stratum].astype(str) == str(group)]
    values = pd.to_numeric(ok[metric], errors="coerce")
    ok = ok[np.isfinite(values)]
    values = values[ok.index]
    d = _direction(metric)
    key = values if d > 0 else (-values if d < 0 else -values.abs())
    order = key.sort_values(kind="stable").index[: int(n)]
    return ok.loc[order]


def _png(fig: Figure) -> bytes:
    from medseg_xai.viz import fig_to_png_bytes

    return fig_to_png_bytes(fig, dpi=90)


def _group_distribution(cases: pd.DataFrame, stratum: str, metric: str) -> Figure:
    """Box plot plus points of ``metric`` per group of ``stratum``."""
    ok = cases[cases["status"] == "ok"] if "status" in cases.columns else cases
    if stratum in (None, "overall") or stratum not in ok.columns:
        groups = {"all": pd.to_numeric(ok[metric], errors="coerce").dropna().to_numpy()}
    else:
        groups = {
            str(g): pd.to_numeric(sub[metric], errors="coerce").dropna().to_numpy()
            for g, sub in ok.groupby(ok[stratum].astype(str), sort=True)
        }
    groups = {g: v for g, v in groups.items() if v.size}
    fig = Figure(figsize=(max(3.0, 0.9 * len(groups) + 1.5), 2.6))
    ax = fig.add_subplot(1, 1, 1)
    if not groups:
        ax.text(0.5, 0.5, "no evaluated case", ha="center", va="center")
        return fig
    ax.boxplot(list(groups.values()), showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same picture for the same data
    for i, v in enumerate(groups.values(), start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, v.size), v, s=8, alpha=0.6, color="#0072B2")
    ax.set_xticks(range(1, len(groups) + 1))
    ax.set_xticklabels([f"{g}\n(n={v.size})" for g, v in groups.items()], fontsize="x-small")
    ax.set_ylabel(metric, fontsize="small")
    ax.tick_params(labelsize="x-small")
    ax.set_title(f"{metric} by {stratum}", fontsize="small")
    fig.subplots_adjust(left=0.15, right=0.98, bottom=0.25, top=0.88)
    return fig


def _table_html(df: pd.DataFrame, cls: str) -> str:
    if df.empty:
        return "<i>no rows</i>"
    return df.to_html(index=False, escape=True, border=0, classes=cls, na_rep="n/a",
                      float_format=lambda v: f"{v:.3g}")


class AuditDashboard(W.VBox):
    """Subgroup audit results with plots, tables, criteria and worst cases.

    Parameters
    ----------
    result : AuditResult
        The audit to show.
    other : AuditResult, optional
        A second audit of the same cohort (e.g. a new model version) to compare against.
    cohort : Cohort, optional
        The audited cohort, needed to open worst cases in a CaseExplorer (the audit result
        records only the manifest's file name, not where it lives).
    adapter : SegmentationAdapter, optional
        Passed to the CaseExplorer so cases can be explained.
    names : (str, str)
        Labels of ``result`` and ``other``.
    n_worst : int
        Worst cases listed.
    """

    def __init__(self, result: Any, other: Any = None, *, cohort: Any = None, adapter: Any = None,
                 names: tuple[str, str] = ("A", "B"), n_worst: int = 5) -> None:
        super().__init__()
        for attr in ("cases", "subgroups", "criteria"):
            if not isinstance(getattr(result, attr, None), pd.DataFrame):
                raise ValueError(
                    f"result: expected an AuditResult with a '{attr}' table, got "
                    f"{type(result).__name__}"
                )
        self.result, self.other = result, other
        self.cohort, self.adapter = cohort, adapter
        self.names = names
        self.n_worst = int(n_worst)
        self._comparison: Any = None
        self.explorer: Any = None
        self.last_error: Exception | None = None
        self._quiet = False

        sub = result.subgroups
        strata = list(dict.fromkeys(str(s) for s in sub["stratum"]))
        strata = [s for s in strata if s != "overall"] + (["overall"] if "overall" in strata else [])
        metrics = [m for m in (result.settings.get("metrics") or []) if (sub["metric"] == m).any()]
        metrics = metrics or list(dict.fromkeys(sub["metric"]))
        if not strata or not metrics:
            raise ValueError("result: expected subgroup rows (stratum, metric), got none")
        self.stratum = W.Dropdown(options=strata, value=strata[0], description="stratum")
        self.stratum.add_class("mx-stratum")
        self.metric = W.Dropdown(options=metrics, value="dice" if "dice" in metrics else metrics[0],
                                 description="metric")
        self.metric.add_class("mx-metric")
        self.compare = W.Checkbox(value=False, description=f"compare {names[1]} vs {names[0]}",
                                  disabled=other is None, indent=False)
        self.compare.add_class("mx-compare")
        self.group = W.Dropdown(options=[], description="group")
        self.group.add_class("mx-group")
        self.forest = W.Image(format="png", layout=W.Layout(width="auto"))
        self.forest.add_class("mx-forest")
        self.distribution = W.Image(format="png", layout=W.Layout(width="auto"))
        self.distribution.add_class("mx-distribution")
        self.table = W.HTML()
        self.table.add_class("mx-subgroup-table")
        self.criteria = W.HTML()
        self.criteria.add_class("mx-criteria")
        self.worst = W.VBox()
        self.worst.add_class("mx-worst")
        self.status = W.HTML()
        self.status.add_class("mx-status")
        self.explorer_box = W.VBox()
        for w in (self.stratum, self.metric, self.compare):
            w.observe(self._on_change, "value")
        self.group.observe(self._on_group, "value")

        verdict = html.escape(str(getattr(result, "verdict", "")))
        n_ok = int((result.cases["status"] == "ok").sum()) if "status" in result.cases else len(result.cases)
        header = W.HTML(f"<b>Audit</b> · {len(result.cases)} manifest rows, {n_ok} evaluated · "
                        f"verdict: <b>{verdict}</b>")
        self.children = [
            header,
            W.HBox([self.stratum, self.metric, self.compare]),
            W.HBox([self.forest, self.distribution]),
            W.HTML("<b>Subgroups</b>"), self.table,
            W.HTML("<b>Acceptance criteria</b>"), self.criteria,
            W.HTML("<b>Worst cases</b>"), self.group, self.worst, self.status, self.explorer_box,
        ]
        self.readers = None  # several readers per case: agreement table and plot (widgets.readers)
        if len(getattr(result, "reader_subgroups", ())):
            from medseg_xai.widgets.readers import ReaderAgreementView

            self.readers = ReaderAgreementView(result)
            self.children = [*self.children, W.HTML("<b>Readers</b>"), self.readers.widget]
        self.add_class("mx-audit-dashboard")
        self.refresh()

    # ------------------------------------------------------------------ data
    @property
    def comparison(self) -> Any:
        """``audit.compare(result, other)``, computed once on first use."""
        if self.other is None:
            return None
        if self._comparison is None:
            from medseg_xai.audit import compare

            self._comparison = compare(self.result, self.other, name_a=self.names[0],
                                       name_b=self.names[1])
        return self._comparison

    def rows(self) -> pd.DataFrame:
        """Subgroup rows (or paired-comparison rows) of the chosen stratum and metric."""
        if self.compare.value and self.other is not None:
            return subgroup_rows(self.comparison.subgroups, self.stratum.value, self.metric.value)
        return subgroup_rows(self.result.subgroups, self.stratum.value, self.metric.value)

    # ------------------------------------------------------------------ drawing
    def _set_status(self, text: str, error: bool = False) -> None:
        cls = ' class="mx-error" style="color:#b00020"' if error else ""
        self.status.value = f"<span{cls}>{html.escape(text)}</span>"

    def refresh(self) -> None:
        """Redraw plots and tables for the current stratum, metric and comparison choice."""
        stratum, metric = self.stratum.value, self.metric.value
        rows = self.rows()
        comparing = bool(self.compare.value and self.other is not None)
        if comparing:
            from medseg_xai.reports.figures import forest_plot

            plot_rows = rows.rename(columns={"difference": "estimate"})
            fig = forest_plot(plot_rows, [metric], title=(
                f"{metric}: {self.names[1]} - {self.names[0]} by {stratum} (paired, CI)"),
                flagged={(str(g), metric) for g in rows.loc[rows["flag"] == "worse", "group"]})
            ax = fig.axes[0]
            ax.axvline(0.0, color="#333333", lw=0.8)
            cols = [c for c in _COMPARE_COLUMNS if c in rows.columns]
        else:
            from medseg_xai.reports.figures import forest_plot

            overall = subgroup_rows(self.result.subgroups, "overall", metric)
            ov = None
            if len(overall):
                o = overall.iloc[0]
                ov = {metric: (float(o["estimate"]), float(o["ci_low"]), float(o["ci_high"]))}
            flagged = {(str(g), metric) for g in rows.loc[rows["flag"] == "worse", "group"]} \
                if "flag" in rows else set()
            fig = forest_plot(rows, [metric], overall=ov, flagged=flagged,
                              title=f"{metric} by {stratum} (estimate and CI)")
            cols = [c for c in _SUBGROUP_COLUMNS if c in rows.columns]
        self.forest.value = _png(fig)
        self.distribution.value = _png(_group_distribution(self.result.cases, stratum, metric))
        self.table.value = _table_html(rows[cols], "mx-table")
        self.criteria.value = self._criteria_html(stratum)
        groups = [str(g) for g in rows["group"]] if len(rows) else []
        keep = self.group.value if self.group.value in groups else (groups[0] if groups else None)
        self._quiet = True  # one worst-case refresh, not one per option change
        try:
            if tuple(self.group.options) != tuple(groups):
                self.group.options = groups
            self.group.value = keep
        finally:
            self._quiet = False
        self._show_worst()

    def _criteria_html(self, stratum: str) -> str:
        crit = self.result.criteria
        if crit is None or crit.empty:
            return "<i>No acceptance criteria were pre-specified for this audit.</i>"
        show = crit[crit["stratum"].astype(str).isin([stratum, "overall"])] if "stratum" in crit \
            else crit
        cols = [c for c in ("criterion", "stratum", "group", "metric", "value", "op", "threshold",
                            "status") if c in show.columns]
        counts = crit["status"].value_counts().to_dict()
        summary = ", ".join(f"{html.escape(str(k))}: {v}" for k, v in counts.items())
        return f"<p>All criteria: {summary}</p>" + _table_html(show[cols], "mx-table")

    def worst_cases(self) -> pd.DataFrame:
        """Worst cases of the chosen group for the chosen metric."""
        return worst_cases(self.result.cases, self.metric.value, self.stratum.value,
                           self.group.value, self.n_worst)

    def _show_worst(self) -> None:
        if self.group.value is None:
            self.worst.children = [W.HTML("<i>no group</i>")]
            return
        metric = self.metric.value
        buttons = []
        for _, row in self.worst_cases().iterrows():
            cid = str(row["case_id"])
            b = W.Button(description=f"{cid} · {metric} {float(row[metric]):.3g}",
                         layout=W.Layout(width="auto"), tooltip=f"open {cid} in a CaseExplorer")
            b.add_class("mx-worst-case")
            b.on_click(functools.partial(self._open_clicked, cid))
            buttons.append(b)
        self.worst.children = buttons or [W.HTML("<i>no evaluated case in this group</i>")]

    # ------------------------------------------------------------------ callbacks
    def _on_change(self, _change: dict) -> None:
        try:
            self.refresh()
            self._set_status("")
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.last_error = exc
            self._set_status(f"Error: {type(exc).__name__}: {exc}", error=True)

    def _on_group(self, _change: dict) -> None:
        if not self._quiet:
            self._show_worst()

    def _open_clicked(self, case_id: str, _button: Any) -> None:
        try:
            self.open_case(case_id)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.last_error = exc
            self._set_status(f"Error: {type(exc).__name__}: {exc}", error=True)

    def open_case(self, case_id: str) -> Any:
        """Open ``case_id`` in a CaseExplorer below the dashboard and return it."""
        from medseg_xai.widgets.case_explorer import CaseExplorer

        if self.cohort is None:
            raise ValueError(
                f"case {case_id}: opening a case needs the audited cohort; create the dashboard "
                "with AuditDashboard(result, cohort=cohort)"
            )
        self._set_status(f"opening {case_id}…")
        self.explorer = CaseExplorer.from_audit(self.result, case_id, adapter=self.adapter,
                                                cohort=self.cohort)
        self.explorer_box.children = [self.explorer]
        self._set_status(f"opened {case_id}")
        return self.explorer
