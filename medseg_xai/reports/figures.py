"""Report figures: forest plots, distributions, Bland-Altman, detection by size, gallery slices.

Every builder returns a :class:`matplotlib.figure.Figure` (never pyplot-managed, so nothing leaks
between reports); :func:`to_uri` turns one into a PNG data URI for the self-contained HTML.
Figures are sized for a laptop screen and rendered at a modest dpi so a 1,000-case report stays
small.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from medseg_xai import viz
from medseg_xai.metrics.metadata import metric_label

__all__ = [
    "bland_altman_plot",
    "detection_by_size_plot",
    "distribution_plot",
    "forest_plot",
    "gallery_figure",
    "to_uri",
]

#: Rendered at 100 dpi with fonts of at least 8 pt: figures are at most ~7 in wide, so they
#: print near 1:1 on A4 and their text stays legible.
DPI = 100
FONT = 8
_STATUS_COLOURS = {"PASS": "#009E73", "FAIL": "#D55E00", "INSUFFICIENT DATA": "#999999"}


def to_uri(fig: Figure, dpi: float = DPI) -> str:
    """PNG data URI of a figure (the figure is released)."""
    with warnings.catch_warnings():
        # Site names in scripts the bundled font lacks render as boxes; the tables keep the text.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        return viz.fig_to_data_uri(fig, dpi=dpi, tight=True)


def _finite(values: Any) -> np.ndarray:
    a = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    return a[np.isfinite(a)]


def forest_plot(
    rows: pd.DataFrame,
    metrics: Sequence[str],
    *,
    overall: dict[str, tuple[float, float, float]] | None = None,
    title: str | None = None,
    flagged: set[tuple[str, str]] | None = None,
    ci: str = "CI",
) -> Figure:
    """Estimates with CIs per group, one panel per metric, against the overall value.

    Parameters
    ----------
    rows : DataFrame
        Subgroup rows of one stratum: ``group, metric, n, estimate, ci_low, ci_high``.
    metrics : sequence of str
        One panel per metric, in this order.
    overall : dict, optional
        ``metric -> (estimate, ci_low, ci_high)``: drawn as a line and a shaded band.
    flagged : set of (group, metric), optional
        Drawn in the highlight colour.
    ci : str
        Label of the intervals (``"90% CI"``), shown in each panel's title.
    """
    metrics = [m for m in metrics if (rows["metric"] == m).any()]
    groups = list(dict.fromkeys(rows["group"].astype(str)))
    n_groups = max(len(groups), 1)
    # at least 2 in high: the fixed margins below (0.95 + 0.6 in) must leave room for the axes
    height = max(0.3 * n_groups + 1.1, 2.0)
    fig = Figure(figsize=(min(2.2 * max(len(metrics), 1) + 1.8, 7.0), height))
    if not metrics:
        fig.text(0.5, 0.5, "no metric to plot", ha="center", va="center")
        return fig
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    y = np.arange(n_groups)[::-1]
    flagged = flagged or set()
    for ax, metric in zip(axes, metrics):
        sub = rows[rows["metric"] == metric].copy()
        sub["group"] = sub["group"].astype(str)
        sub = sub.set_index("group").reindex(groups)
        est = pd.to_numeric(sub["estimate"], errors="coerce").to_numpy(dtype=float)
        lo = pd.to_numeric(sub["ci_low"], errors="coerce").to_numpy(dtype=float)
        hi = pd.to_numeric(sub["ci_high"], errors="coerce").to_numpy(dtype=float)
        if overall and metric in overall:
            o, olo, ohi = overall[metric]
            if np.isfinite(olo) and np.isfinite(ohi):
                ax.axvspan(olo, ohi, color="#56B4E9", alpha=0.2, lw=0)
            if np.isfinite(o):
                ax.axvline(o, color="#0072B2", lw=1, ls="--")
        colours = ["#D55E00" if (g, metric) in flagged else "#333333" for g in groups]
        ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(est)
        ax.hlines(y[ok], lo[ok], hi[ok], colors=np.array(colours, dtype=object)[ok], lw=1.5)
        ax.scatter(est, y, c=colours, s=18, zorder=3)
        # short panel titles (display name and unit, wrapped): "mean, 95% CI" is said once
        # below, so neighbouring titles never run into each other
        ax.set_title(textwrap.fill(metric_label(metric), 18), fontsize=FONT + 1)
        ax.tick_params(labelsize=FONT)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([f"{g} (n={_n(rows, g)})" for g in groups], fontsize=FONT)
    axes[0].set_ylim(-0.7, n_groups - 0.3)
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    fig.supxlabel(f"mean with {ci} per group; dashed line and band: all cases", fontsize=FONT)
    fig.subplots_adjust(
        left=min(0.45, 0.06 + 0.012 * max(len(s) for s in groups) + 0.9 / fig.get_figwidth()),
        right=0.98,
        bottom=0.95 / fig.get_figheight(),
        top=1 - 0.6 / fig.get_figheight(),
        wspace=0.12,
    )
    return fig


def _n(rows: pd.DataFrame, group: str) -> str:
    n = rows.loc[rows["group"].astype(str) == group, "n"]
    return str(int(n.max())) if len(n) and pd.notna(n.max()) else "?"


def distribution_plot(
    cases: pd.DataFrame, metrics: Sequence[str], overall: pd.DataFrame | None = None
) -> Figure:
    """Histogram of each metric over the evaluated cases, with mean and median marked.

    The marks are the ``estimate`` and ``median`` of the metric's row in ``overall`` (the
    ``stratum == "overall"`` rows of ``AuditResult.subgroups``), so the figure shows the very
    numbers of the results table; a metric without a row there gets no marks.
    """
    marks: dict[str, tuple[float, float]] = {}
    if overall is not None and len(overall):
        marks = {str(r["metric"]): (float(r["estimate"]), float(r["median"]))
                 for r in overall.to_dict("records")}
    metrics = [m for m in metrics if m in cases.columns and _finite(cases[m]).size]
    fig = Figure(figsize=(min(2.2 * max(len(metrics), 1), 7.0), 2.2))
    if not metrics:
        fig.text(0.5, 0.5, "no evaluated case", ha="center", va="center")
        return fig
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        v = _finite(cases[metric])
        ax.hist(v, bins=min(30, max(5, int(np.sqrt(v.size)))), color="#0072B2", alpha=0.8)
        mean, median = marks.get(metric, (float("nan"), float("nan")))
        if np.isfinite(mean):
            ax.axvline(mean, color="#D55E00", lw=1, label="mean")
        if np.isfinite(median):
            ax.axvline(median, color="#333333", lw=1, ls=":", label="median")
        ax.set_title(f"{metric} (n={v.size})", fontsize=FONT + 1)
        ax.tick_params(labelsize=FONT)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=FONT)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.15, top=0.85, wspace=0.3)
    return fig


def bland_altman_plot(measured: Any, reference: Any, summary: dict[str, float]) -> Figure:
    """Difference against mean of predicted and reference volumes, with bias and limits."""
    m = pd.to_numeric(pd.Series(measured), errors="coerce").to_numpy(dtype=float)
    r = pd.to_numeric(pd.Series(reference), errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(m) & np.isfinite(r)
    m, r = m[keep], r[keep]
    fig = Figure(figsize=(4.6, 3.0))
    ax = fig.add_subplot()
    ax.scatter((m + r) / 2, m - r, s=8, alpha=0.6, color="#0072B2")
    for key, style in (("bias", "-"), ("loa_low", "--"), ("loa_high", "--")):
        v = summary.get(key, float("nan"))
        if np.isfinite(v):
            ax.axhline(v, color="#D55E00", ls=style, lw=1)
            ax.annotate(
                f"{key} {v:.1f}",
                (1.0, v),
                xycoords=("axes fraction", "data"),
                fontsize=FONT,
                ha="right",
                va="bottom",
            )
    ax.axhline(0, color="#999999", lw=0.5)
    ax.set_xlabel("mean of predicted and reference volume (mm³)", fontsize=FONT)
    ax.set_ylabel("predicted − reference (mm³)", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    fig.subplots_adjust(left=0.17, right=0.97, bottom=0.16, top=0.95)
    return fig


def detection_by_size_plot(table: pd.DataFrame, ci: str = "CI") -> Figure:
    """Lesion detection rate per size bin with Clopper-Pearson intervals (``bin, rate, ci_low, ci_high, n``)."""
    fig = Figure(figsize=(4.8, 2.8))
    ax = fig.add_subplot()
    x = np.arange(len(table))
    rate = table["rate"].to_numpy(dtype=float)
    err = np.vstack(
        [
            rate - table["ci_low"].to_numpy(dtype=float),
            table["ci_high"].to_numpy(dtype=float) - rate,
        ]
    )
    ax.bar(x, rate, color="#009E73", alpha=0.8)
    ax.errorbar(x, rate, yerr=np.nan_to_num(err), fmt="none", ecolor="#333333", capsize=3)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{b}\n(n={n})" for b, n in zip(table["bin"], table["n"])], fontsize=FONT
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"share detected ({ci})", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.25, top=0.95)
    return fig


def _accepts(func: Any, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def gallery_figure(payload: dict[str, Any], *, method: str | None = None) -> Figure:
    """Draw one stored failure-gallery entry (:func:`medseg_xai.audit.explanations.slice_payload`).

    One panel per stored plane: the image, the reference / explained lesion and prediction
    outlines, the error map where no attribution is stored, else the attribution with a colour
    bar (its scale shared by the planes; blue = evidence against a lesion).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from medseg_xai.audit.explanations import decode_plane

    planes = payload["planes"]
    heats = [decode_plane(p.get("heatmap")) for p in planes]
    has_heat = any(h is not None for h in heats)
    hmax = max((float(np.abs(h).max()) for h in heats if h is not None), default=0.0)
    signed = any(h is not None and (h < 0).any() for h in heats)
    # ~330 px per plane at the gallery's dpi: large enough to follow an outline
    fig = Figure(figsize=(3.3 * len(planes) + (0.6 if has_heat else 0.0), 3.5))
    axes = fig.subplots(1, len(planes), squeeze=False)[0]
    for ax, plane, heat in zip(axes, planes, heats):
        affine = plane.get("affine")
        image = decode_plane(plane["image"])
        ref = decode_plane(plane.get("target")) if plane.get("target") else decode_plane(plane["ref"])
        pred = decode_plane(plane.get("pred"))
        if heat is not None and hmax > 0:
            kw = {"ref": ref, "pred": pred, "heatmap": heat, "alpha": 0.7,
                  "spacing": plane.get("spacing"),
                  "style": viz.SliceStyle(contours=True, hmax=hmax)}
        else:
            kw = {"ref": decode_plane(plane["ref"]), "pred": pred, "error": pred is not None,
                  "alpha": 0.45, "spacing": plane.get("spacing"),
                  "style": viz.SliceStyle(contours=True)}
        oriented = affine is not None and _accepts(viz.show_slice, "affine")
        if oriented:  # anatomical plane, orientation letters and scale bar
            kw.pop("spacing")
            viz.show_slice(ax, image, affine=np.asarray(affine), **kw)
        else:
            viz.show_slice(ax, image, **kw)
        where = ("slice" if plane["axis"] is None else
                 f"voxel axis {plane['axis']} = {plane['index']}")
        ax.set_title(where, fontsize=FONT)
        ax.set_xticks([])
        ax.set_yticks([])
    if has_heat and hmax > 0:
        cmap = "RdBu_r" if signed else "inferno"
        norm = Normalize(-hmax if signed else 0.0, hmax)
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), fraction=0.04,
                           pad=0.02)
        bar.ax.tick_params(labelsize=FONT)
        bar.set_label(f"{method or 'attribution'} (red: for, blue: against)" if signed
                      else f"{method or 'attribution'}", fontsize=FONT)
    return fig
