"""``AuditDashboard``: subgroup results of an audit, optionally against a second model.

Choose a stratum and a metric; the dashboard shows the forest plot (``reports.figures``) and the
per-group distribution, the subgroup table with confidence intervals and flags, the verdict and
the acceptance criteria (definitions, then results), and the worst cases of a chosen group, each
of which opens in a :class:`~medseg_xai.widgets.CaseExplorer`.

A view only: every number comes from the :class:`~medseg_xai.audit.AuditResult` (and the
:class:`~medseg_xai.audit.ComparisonResult`, computed by ``mx.compare`` beforehand), worst cases
from the core ranking :func:`medseg_xai.audit.analysis.rank_worst`, so the dashboard, the report
and ``audit.json`` agree by construction.
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


def subgroup_rows(subgroups: pd.DataFrame, stratum: str, metric: str) -> pd.DataFrame:
    """Rows of one stratum and metric, in table order."""
    for col in ("stratum", "metric", "group"):
        if col not in subgroups.columns:
            raise ValueError(f"subgroups: expected a '{col}' column, got {list(subgroups.columns)}")
    rows = subgroups[(subgroups["stratum"] == stratum) & (subgroups["metric"] == metric)]
    return rows.reset_index(drop=True)


def worst_cases(cases: pd.DataFrame, metric: str, stratum: str | None = None,
                group: str | None = None, n: int = 5) -> pd.DataFrame:
    """The ``n`` worst evaluated cases of a group: :func:`medseg_xai.audit.analysis.rank_worst`
    (metric direction aware; scans without reference lesions left out)."""
    from medseg_xai.audit.analysis import rank_worst

    return rank_worst(cases, metric, stratum=stratum, group=group, n=n)


def _png(fig: Figure) -> bytes:
    from medseg_xai.viz import fig_to_png_bytes

    return fig_to_png_bytes(fig, dpi=90)


#: Above this many evaluated cases in a group the distribution draws a fixed random sample of
#: its points (the box still summarises every case); drawing 100,000 markers costs seconds.
MAX_POINTS = 500
#: HTML tables list at most this many rows, then say how many there are.
MAX_TABLE_ROWS = 200


def _group_values(ok: pd.DataFrame, codes: dict[str, np.ndarray], metric: str
                  ) -> dict[str, np.ndarray]:
    """Finite per-case values of ``metric`` per group (``codes``: row positions per group)."""
    vals = pd.to_numeric(ok[metric], errors="coerce").to_numpy(dtype=float)
    groups = {g: vals[pos] for g, pos in codes.items()}
    return {g: v[np.isfinite(v)] for g, v in groups.items() if np.isfinite(v).any()}


def _group_distribution(groups: dict[str, np.ndarray], stratum: str, metric: str,
                        max_points: int = MAX_POINTS, counts: dict[str, int] | None = None
                        ) -> tuple[Figure, dict[str, tuple[int, int]]]:
    """Box plot plus points of ``metric`` per group of ``stratum``; returns the figure and, per
    group, (points drawn, values in the box).

    ``counts`` maps a group to its ``n`` in ``AuditResult.subgroups``: the tick labels show
    that number (the one the table shows), never a recount; a group without one gets no n.
    """
    counts = counts or {}
    fig = Figure(figsize=(max(3.0, 0.9 * len(groups) + 1.5), 2.6))
    ax = fig.add_subplot(1, 1, 1)
    if not groups:
        ax.text(0.5, 0.5, "no evaluated case", ha="center", va="center")
        return fig, {}
    ax.boxplot(list(groups.values()), showfliers=False)
    rng = np.random.default_rng(0)  # fixed jitter: the same picture for the same data
    drawn: dict[str, tuple[int, int]] = {}
    for i, (g, v) in enumerate(groups.items(), start=1):
        if v.size > max_points:  # a fixed sample of the points; the box uses every case
            v = v[np.sort(np.random.default_rng(i).choice(v.size, max_points, replace=False))]
        drawn[g] = (int(v.size), int(groups[g].size))
        ax.scatter(i + rng.uniform(-0.15, 0.15, v.size), v, s=8, alpha=0.6, color="#0072B2")
    ax.set_xticks(range(1, len(groups) + 1))
    ax.set_xticklabels([f"{g}\n(n={counts[g]})" if g in counts else g for g in groups],
                       fontsize="x-small")
    ax.set_ylabel(metric, fontsize="small")
    ax.tick_params(labelsize="x-small")
    title = f"{metric} by {stratum}"
    if any(d < n for d, n in drawn.values()):
        title += f"\n(points: a sample of {max_points} per group; boxes: all cases)"
    ax.set_title(title, fontsize="small")
    fig.subplots_adjust(left=0.15, right=0.98, bottom=0.25, top=0.80 if "\n" in title else 0.88)
    return fig, drawn


def _table_html(df: pd.DataFrame, cls: str, max_rows: int = MAX_TABLE_ROWS) -> str:
    if df.empty:
        return "<i>no rows</i>"
    from medseg_xai.reports.tables import fmt_p

    note = ""
    if len(df) > max_rows:  # the rest is in audit.json / the report
        note = (f"<p class='mx-table-note'><i>first {max_rows} of {len(df)} rows shown</i></p>")
        df = df.iloc[:max_rows]
    p_cols = [c for c in df.columns if c in ("p_value", "p_adjusted")]
    if p_cols:  # "< 0.001", as in the report
        df = df.assign(**{c: [fmt_p(v) for v in df[c]] for c in p_cols})
    return df.to_html(index=False, escape=True, border=0, classes=cls, na_rep="n/a",
                      float_format=lambda v: f"{v:.3g}") + note


def _check_results(result: Any, comparison: Any) -> None:
    """Refuse anything but an AuditResult and an optional ComparisonResult."""
    from medseg_xai.audit import AuditResult, ComparisonResult

    if not isinstance(result, AuditResult):
        raise ValueError(f"result: expected an AuditResult, got {type(result).__name__}")
    if comparison is not None and not isinstance(comparison, ComparisonResult):
        raise ValueError(
            f"comparison: expected a ComparisonResult (mx.compare(result_a, result_b)), got "
            f"{type(comparison).__name__}; the dashboard shows results, it does not compute them")


def _strata_metrics(result: Any) -> tuple[list[str], list[str]]:
    """The strata ("overall" last) and metrics the result has subgroup rows for."""
    sub = result.subgroups
    strata = list(dict.fromkeys(str(s) for s in sub["stratum"]))
    strata = [s for s in strata if s != "overall"] + (["overall"] if "overall" in strata else [])
    metrics = [m for m in (result.settings.get("metrics") or []) if (sub["metric"] == m).any()]
    metrics = metrics or list(dict.fromkeys(sub["metric"]))
    if not strata or not metrics:
        raise ValueError("result: expected subgroup rows (stratum, metric), got none")
    return strata, metrics


class AuditDashboard(W.VBox):
    """Subgroup audit results with plots, tables, criteria and worst cases.

    Parameters
    ----------
    result : AuditResult
        The audit to show.
    comparison : ComparisonResult, optional
        ``mx.compare(result_a, result_b, name_a=..., name_b=...)``: shows the paired
        differences B − A (names from the comparison).
    cohort : Cohort, optional
        The audited cohort, needed to open worst cases in a CaseExplorer (the audit result
        records only the manifest's file name, not where it lives).
    adapter : SegmentationAdapter, optional
        Passed to the CaseExplorer so cases can be explained.
    n_worst : int
        Worst cases listed.
    max_points : int
        Points drawn per group in the distribution plot; larger groups show a fixed random
        sample of their points (said in the title; the box still covers every case).
    max_rows : int
        Rows listed per HTML table, then a note with the full count.

    Figures, tables and worst-case lists are cached per (comparison, stratum, metric) and
    (metric, stratum, group): switching back is instant, and a 100,000-case result switches in
    well under a second (``benchmarks/bench_dashboard.py``).
    """

    def __init__(self, result: Any, comparison: Any = None, *, cohort: Any = None,
                 adapter: Any = None, n_worst: int = 5,
                 max_points: int = MAX_POINTS, max_rows: int = MAX_TABLE_ROWS) -> None:
        super().__init__()
        _check_results(result, comparison)
        self.result = result
        self.comparison = comparison
        self.cohort, self.adapter = cohort, adapter
        names = ((comparison.settings.get("name_a", "A"), comparison.settings.get("name_b", "B"))
                 if comparison is not None else ("A", "B"))
        self.names = names
        self.n_worst = int(n_worst)
        self.max_points, self.max_rows = int(max_points), int(max_rows)
        #: per group of the last distribution drawn: (points drawn, evaluated cases)
        self.distribution_points: dict[str, tuple[int, int]] = {}
        self._views: dict[tuple, tuple[bytes, bytes, str, list[str], dict]] = {}
        self._worst: dict[tuple, pd.DataFrame] = {}
        self._criteria: dict[str, str] = {}
        self._codes: dict[str, dict[str, np.ndarray]] = {}
        cases = result.cases  # evaluated rows only, once: switches then index small arrays
        self._ok = cases[cases["status"] == "ok"] if "status" in cases.columns else cases
        self.explorer: Any = None
        self.last_error: Exception | None = None
        self._quiet = False

        self._build_controls(*_strata_metrics(result))

        verdict = html.escape(result.verdict)
        header = W.HTML(f"<b>Audit</b> · {result.n_rows} manifest rows, {result.n_evaluated} "
                        f"evaluated, {result.n_failed} failed · verdict: "
                        f"<b class='mx-verdict'>{verdict}</b>")
        header.add_class("mx-header")
        self.children = [
            header,
            W.HBox([self.stratum, self.metric, self.compare]),
            W.HBox([self.forest, self.distribution]),
            W.HTML("<b>Subgroups</b>"), self.table,
            W.HTML("<b>Acceptance criteria</b>"), self.criteria,
            W.HTML("<b>Worst cases</b>"), self.group, self.worst, self.status, self.explorer_box,
        ]
        self._add_panels(result)
        self.add_class("mx-audit-dashboard")
        self.refresh()

    def _build_controls(self, strata: list[str], metrics: list[str]) -> None:
        """Create the selectors, figures, tables and status widgets; wire the selectors."""
        self.stratum = W.Dropdown(options=strata, value=strata[0], description="stratum")
        self.stratum.add_class("mx-stratum")
        self.metric = W.Dropdown(options=metrics, value="dice" if "dice" in metrics else metrics[0],
                                 description="metric")
        self.metric.add_class("mx-metric")
        names = self.names
        self.compare = W.Checkbox(value=False, description=f"compare {names[1]} vs {names[0]}",
                                  disabled=self.comparison is None, indent=False)
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

    def _add_panels(self, result: Any) -> None:
        """Append the readers, feature-shift and failure panels the result has data for."""
        self.readers = None  # several readers per case: agreement table and plot (widgets.readers)
        if len(getattr(result, "reader_subgroups", ())):
            from medseg_xai.widgets.readers import ReaderAgreementView

            self.readers = ReaderAgreementView(result)
            self.children = [*self.children, W.HTML("<b>Readers</b>"), self.readers.widget]
        self.feature_shift = None  # audit with a model: feature shift, drill-down (model_tab)
        if len(getattr(result, "feature_shift", ())):
            from medseg_xai.widgets.model_tab import FeatureShiftPanel

            self.feature_shift = FeatureShiftPanel(result, on_open=self.open_case)
            self.children = [*self.children, self.feature_shift]
        self.failure = None  # audit with failure=: sentences, calibration, hidden strata
        if len(getattr(result, "failure_detection", ())) or len(getattr(result, "hidden_strata",
                                                                        ())):
            from medseg_xai.widgets.failure_view import FailurePanel

            self.failure = FailurePanel(result, on_open=self.open_case)
            self.children = [*self.children, self.failure]

    # ------------------------------------------------------------------ data
    def rows(self) -> pd.DataFrame:
        """Subgroup rows (or paired-comparison rows) of the chosen stratum and metric."""
        if self.compare.value and self.comparison is not None:
            return subgroup_rows(self.comparison.subgroups, self.stratum.value, self.metric.value)
        return subgroup_rows(self.result.subgroups, self.stratum.value, self.metric.value)

    # ------------------------------------------------------------------ drawing
    def _set_status(self, text: str, error: bool = False) -> None:
        cls = ' class="mx-error" style="color:#b00020"' if error else ""
        self.status.value = f"<span{cls}>{html.escape(text)}</span>"

    def refresh(self) -> None:
        """Redraw plots and tables for the current stratum, metric and comparison choice."""
        stratum, metric = self.stratum.value, self.metric.value
        comparing = bool(self.compare.value and self.comparison is not None)
        key = (comparing, stratum, metric)
        if key not in self._views:
            self._views[key] = self._draw(comparing, stratum, metric)
        forest, dist, table, groups, drawn = self._views[key]
        self.forest.value, self.distribution.value, self.table.value = forest, dist, table
        self.distribution_points = drawn
        if stratum not in self._criteria:
            self._criteria[stratum] = self._criteria_html(stratum)
        self.criteria.value = self._criteria[stratum]
        keep = self.group.value if self.group.value in groups else (groups[0] if groups else None)
        self._quiet = True  # one worst-case refresh, not one per option change
        try:
            if tuple(self.group.options) != tuple(groups):
                self.group.options = groups
            self.group.value = keep
        finally:
            self._quiet = False
        self._show_worst()

    def _draw(self, comparing: bool, stratum: str, metric: str
              ) -> tuple[bytes, bytes, str, list[str], dict]:
        """Forest plot, distribution, subgroup table and groups of one view (then cached)."""
        from medseg_xai.reports.figures import forest_plot

        rows = self.rows()
        ci = f"{self.result.confidence * 100:g}% CI"
        if comparing:
            plot_rows = rows.rename(columns={"difference": "estimate"})
            fig = forest_plot(plot_rows, [metric], ci=ci, title=(
                f"{metric}: {self.names[1]} - {self.names[0]} by {stratum} (paired)"),
                flagged={(str(g), metric) for g in rows.loc[rows["flag"] == "worse", "group"]})
            ax = fig.axes[0]
            ax.axvline(0.0, color="#333333", lw=0.8)
            cols = [c for c in _COMPARE_COLUMNS if c in rows.columns]
        else:
            overall = subgroup_rows(self.result.subgroups, "overall", metric)
            ov = None
            if len(overall):
                o = overall.iloc[0]
                ov = {metric: (float(o["estimate"]), float(o["ci_low"]), float(o["ci_high"]))}
            flagged = {(str(g), metric) for g in rows.loc[rows["flag"] == "worse", "group"]} \
                if "flag" in rows else set()
            fig = forest_plot(rows, [metric], overall=ov, flagged=flagged, ci=ci,
                              title=f"{metric} by {stratum}")
            cols = [c for c in _SUBGROUP_COLUMNS if c in rows.columns]
        own = subgroup_rows(self.result.subgroups, stratum, metric)
        counts = {str(g): int(n) for g, n in zip(own["group"], own["n"])} if len(own) else {}
        dist_fig, drawn = _group_distribution(self._group_values(stratum, metric), stratum,
                                              metric, self.max_points, counts)
        groups = [str(g) for g in rows["group"]] if len(rows) else []
        return (_png(fig), _png(dist_fig), _table_html(rows[cols], "mx-table", self.max_rows),
                groups, drawn)

    def _group_values(self, stratum: str, metric: str) -> dict[str, np.ndarray]:
        ok = self._ok
        if stratum not in self._codes:  # row positions per group, once per stratum
            if stratum in (None, "overall") or stratum not in ok.columns:
                self._codes[stratum] = {"all": np.arange(len(ok))}
            else:
                labels = ok[stratum].astype(str)
                self._codes[stratum] = {
                    str(g): np.asarray(pos)
                    for g, pos in sorted(labels.groupby(labels, sort=True).indices.items())}
        return _group_values(ok, self._codes[stratum], metric)

    def _criteria_html(self, stratum: str) -> str:
        r = self.result
        if r.verdicts.empty:
            return "<i>No acceptance criteria were pre-specified for this audit.</i>"
        verdicts = r.verdicts[["criterion", "status", "n_pass", "n_fail", "n_insufficient",
                               "n_not_evaluated", "reason"]]
        defs = r.criteria_definitions
        crit = r.criteria
        show = crit[crit["stratum"].astype(str).isin([stratum, "overall"])]
        cols = ["criterion", "stratum", "group", "n", "statistic", "value", "op", "threshold",
                "status", "reason"]
        return (f"<p>Verdict: <b>{html.escape(r.verdict)}</b></p>"
                + _table_html(verdicts, "mx-table mx-verdicts", self.max_rows)
                + "<p><b>Definitions</b></p>"
                + _table_html(defs, "mx-table mx-definitions", self.max_rows)
                + f"<p><b>Results in {html.escape(stratum)} and overall</b></p>"
                + _table_html(show[cols], "mx-table mx-results", self.max_rows))

    def worst_cases(self) -> pd.DataFrame:
        """Worst cases of the chosen group for the chosen metric (the core ranking's rows)."""
        metric, stratum, group = self.metric.value, self.stratum.value, self.group.value
        key = (metric, stratum, group)
        if key not in self._worst:
            cases = self.result.cases
            # Rank on the few columns the ranking reads (filtering 100,000 wide rows per
            # switch is what cost the time), then return those rows of the full table.
            narrow = cases[[c for c in dict.fromkeys(("case_id", "status", "volume_ref_mm3",
                                                      metric, stratum)) if c in cases.columns]]
            picked = worst_cases(narrow, metric, stratum, group, self.n_worst)
            self._worst[key] = cases.loc[picked.index]
        return self._worst[key]

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
