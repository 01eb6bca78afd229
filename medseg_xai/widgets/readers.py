"""Several readers per case in JupyterLab: the agreement view and the reader layers of a case.

- :class:`ReaderAgreementView` (for the :class:`~medseg_xai.widgets.AuditDashboard`): choose a
  stratum and a metric; it shows the reader agreement table (every reader pair, the model
  against each reader and the consensus, estimate and CI per group) and the plot of the
  non-inferiority question per group (model vs readers minus reader vs reader, with its CI and
  the margin). Everything shown comes from the ``AuditResult`` reader tables; the selection lives
  in the plain function :func:`agreement_rows` so it is testable without widgets.
- For the :class:`~medseg_xai.widgets.CaseExplorer`: :func:`reader_votes` (how many readers
  marked each voxel and where they disagree), :func:`reader_outlines` (each reader's outline on a
  slice) and :func:`draw_readers` (outlines in one colour per reader over a slice, disagreement
  shaded), selectable by reader. These are display layers of the loaded masks, like
  ``viz.error_map``: no metric is computed here.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["READER_COLOURS", "ReaderAgreementView", "ReaderCaseView", "agreement_rows", "draw_readers",
           "noninferiority_figure", "reader_outlines", "reader_votes"]

#: Colour-blind-safe outline colours (Okabe-Ito), one per reader in order.
READER_COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00", "#F0E442")
_DISAGREE = "#D55E00"


def _masks(masks_by_reader: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from medseg_xai.metrics.agreement import check_readers

    return check_readers(masks_by_reader, min_readers=1)


def reader_votes(masks_by_reader: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Votes per voxel and the disagreement map of several readers' masks.

    Returns
    -------
    votes : numpy.ndarray of uint8
        Number of readers marking each voxel.
    disagreement : numpy.ndarray of bool
        Voxels some but not all readers marked.
    """
    masks = _masks(masks_by_reader)
    votes = np.zeros(next(iter(masks.values())).shape, dtype=np.uint8)
    for m in masks.values():
        votes += m
    return votes, (votes > 0) & (votes < len(masks))


def reader_outlines(masks_by_reader: Mapping[str, Any], axis: int = 0,
                    index: int | None = None) -> dict[str, np.ndarray]:
    """Each reader's outline on one slice (2D bool: the slice's mask minus its erosion).

    ``index`` defaults to the slice where the readers' votes are largest; 2D masks are used as
    they are.
    """
    from scipy import ndimage

    masks = _masks(masks_by_reader)
    first = next(iter(masks.values()))
    if first.ndim == 3:
        if index is None:
            votes, _ = reader_votes(masks)
            per_slice = votes.sum(axis=tuple(a for a in range(3) if a != axis))
            index = int(np.argmax(per_slice))
        masks = {k: np.take(m, int(index), axis=axis) for k, m in masks.items()}
    return {k: m & ~ndimage.binary_erosion(m) for k, m in masks.items()}


def draw_readers(ax: Any, image2d: np.ndarray | None, masks2d: Mapping[str, np.ndarray], *,
                 readers: Sequence[str] | None = None, disagreement: bool = True,
                 alpha: float = 0.35) -> Any:
    """Draw readers' outlines (one colour each) and the disagreement map on a matplotlib axis.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    image2d : numpy.ndarray or None
        Background slice (grey).
    masks2d : mapping
        Reader -> 2D mask of the same slice.
    readers : sequence of str, optional
        The readers to outline (default all): the explorer's selection.
    disagreement : bool
        Shade the voxels where the readers differ.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.lines import Line2D

    masks = _masks(masks2d)
    names = list(masks)
    chosen = names if readers is None else [r for r in readers if r in masks]
    if image2d is not None:
        ax.imshow(np.asarray(image2d), cmap="gray", interpolation="nearest")
    if disagreement and len(masks) > 1:
        _, dis = reader_votes(masks)
        ax.imshow(np.ma.masked_where(~dis, dis.astype(float)),
                  cmap=ListedColormap([_DISAGREE]), alpha=alpha, interpolation="nearest",
                  vmin=0, vmax=1)
    handles = []
    for r in chosen:
        colour = READER_COLOURS[names.index(r) % len(READER_COLOURS)]
        if masks[r].any():
            ax.contour(masks[r].astype(float), levels=[0.5], colors=[colour], linewidths=1.0)
        handles.append(Line2D([0], [0], color=colour, lw=1.5, label=r))
    if disagreement and len(masks) > 1:
        handles.append(Line2D([0], [0], color=_DISAGREE, lw=6, alpha=alpha, label="readers differ"))
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize="x-small", framealpha=0.7)
    ax.set_axis_off()
    return ax


# --------------------------------------------------------------------------------------------
# dashboard view


def agreement_rows(result: Any, stratum: str = "overall", metric: str = "dice") -> pd.DataFrame:
    """Reader-agreement rows of one stratum and metric: ``group, comparison, n, estimate,
    ci_low, ci_high`` (comparison ``"r1 vs r2"``, ``"model vs r1"``, ``"model vs consensus"``,
    ``"reader pairs (mean)"``, ``"model vs readers (mean)"``), in the result's order."""
    sub = getattr(result, "reader_subgroups", None)
    if sub is None or sub.empty:
        return pd.DataFrame(columns=["group", "comparison", "n", "estimate", "ci_low", "ci_high"])
    rows = sub[(sub["stratum"] == stratum) & (sub["metric"] == metric)].copy()

    def label(r: pd.Series) -> str:
        if r["reader_a"] == "all readers":
            return "reader pairs (mean)" if r["comparison"] == "reader" else \
                "model vs readers (mean)"
        if r["comparison"] == "staple":
            return f"{r['reader_a']} (STAPLE)"
        return f"model vs {r['reader_a']}" if r["comparison"] == "model" else \
            f"{r['reader_a']} vs {r['reader_b']}"

    rows["comparison"] = [label(r) for _, r in rows.iterrows()]
    return rows[["group", "comparison", "n", "estimate", "ci_low", "ci_high"]].reset_index(
        drop=True)


def noninferiority_figure(result: Any, stratum: str = "overall", metric: str = "dice") -> Any:
    """Matplotlib figure: per group, model-vs-readers minus reader-vs-reader (mean, CI), with 0
    and -margin marked; green within reader variability, orange within-variability not shown, grey too few cases."""
    from matplotlib.figure import Figure

    ni = result.reader_noninferiority
    keep = (ni["metric"] == metric) & ((ni["stratum"] == stratum) | (ni["stratum"] == "overall"))
    d = ni[keep]
    fig = Figure(figsize=(5.2, 0.32 * max(len(d), 1) + 1.0))
    ax = fig.subplots()
    if d.empty:
        ax.text(0.5, 0.5, "no multi-reader cases", ha="center", va="center")
        ax.set_axis_off()
        return fig
    y = np.arange(len(d))[::-1]
    colours = ["#009E73" if s == "within reader variability" else
               "#999999" if s == "insufficient data" else "#D55E00" for s in d["status"]]
    lo, hi = d["ci_low"].to_numpy(float), d["ci_high"].to_numpy(float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.hlines(y[ok], lo[ok], hi[ok], colors=np.array(colours, dtype=object)[ok], lw=1.6)
    ax.scatter(d["difference"].to_numpy(float), y, c=colours, s=18, zorder=3)
    ax.axvline(0.0, color="#333333", lw=0.8)
    for m in sorted(set(d["margin"].astype(float))):
        ax.axvline(-m, color="#0072B2", lw=1, ls="--")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{g} (n={n})" for g, n in zip(d["group"], d["n"])], fontsize="x-small")
    ax.set_xlabel(f"{metric}: model vs readers - reader vs reader (dashed: -margin)",
                  fontsize="x-small")
    ax.tick_params(axis="x", labelsize="x-small")
    fig.subplots_adjust(left=0.38, right=0.97, bottom=0.7 / fig.get_figheight(), top=0.95)
    return fig


def _html_table(df: pd.DataFrame) -> str:
    from medseg_xai.reports.tables import fmt

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False, name=None))
    return f"<table class='medseg-readers'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class ReaderAgreementView:
    """Reader agreement of an audit: table and non-inferiority plot per stratum and metric.

    Parameters
    ----------
    result : AuditResult
        An audit of a manifest with reader columns ``label_<reader>``.

    Attributes
    ----------
    widget : ipywidgets.VBox
        Display it (``display(view.widget)``) or place it in a dashboard tab.
    stratum, metric : ipywidgets.Dropdown
    table : ipywidgets.HTML
    plot : ipywidgets.Image
        PNG of :func:`noninferiority_figure`.
    """

    def __init__(self, result: Any) -> None:
        import ipywidgets as W

        sub = getattr(result, "reader_subgroups", None)
        if sub is None or sub.empty:
            raise ValueError("result: expected an audit with several readers per case "
                             "(reader_subgroups is empty)")
        self.result = result
        strata = list(dict.fromkeys(sub["stratum"].astype(str)))
        metrics = [m for m in dict.fromkeys(sub["metric"].astype(str))
                   if m not in ("sensitivity", "specificity")]
        self.stratum = W.Dropdown(options=strata, value=strata[0], description="stratum")
        self.metric = W.Dropdown(options=metrics, value="dice" if "dice" in metrics
                                 else metrics[0], description="metric")
        self.table = W.HTML()
        self.plot = W.Image(format="png")
        self.stratum.observe(lambda _change: self.refresh(), names="value")
        self.metric.observe(lambda _change: self.refresh(), names="value")
        self.widget = W.VBox([W.HBox([self.stratum, self.metric]), self.plot, self.table])
        self.refresh()

    def refresh(self) -> None:
        """Redraw the table and the plot for the current selection."""
        from medseg_xai.viz import fig_to_png_bytes

        rows = agreement_rows(self.result, self.stratum.value, self.metric.value)
        self.table.value = _html_table(rows)
        ni_metric = self.metric.value if self.metric.value in set(
            self.result.reader_noninferiority["metric"]) else "dice"
        self.plot.value = fig_to_png_bytes(
            noninferiority_figure(self.result, self.stratum.value, ni_metric), dpi=90)

    def _ipython_display_(self) -> None:  # pragma: no cover - notebook display
        from IPython.display import display

        display(self.widget)


class ReaderCaseView:
    """One case's readers on a slice: each reader's outline (selectable) and the disagreement map.

    A companion of the :class:`~medseg_xai.widgets.CaseExplorer` for multi-reader cohorts
    (``ReaderCaseView.from_cohort(cohort, case_id)``). Slices are array slices along ``axis``
    (voxel axes, as the title says); the explorer's geometry-true planes stay its own.

    Parameters
    ----------
    image : numpy.ndarray
        ``(C, *spatial)`` or spatial image (the first channel is shown).
    readers : mapping
        Reader -> mask of the image's spatial shape.
    axis : int
        Slicing axis of 3D volumes.
    case_id : str, optional
        Shown in the title.

    Attributes
    ----------
    widget : ipywidgets.VBox
    slice : ipywidgets.IntSlider
    choose : ipywidgets.SelectMultiple
        The readers outlined.
    disagreement : ipywidgets.Checkbox
    picture : ipywidgets.Image
    """

    def __init__(self, image: Any, readers: Mapping[str, Any], *, axis: int = 0,
                 case_id: str | None = None) -> None:
        import ipywidgets as W

        self.masks = _masks(readers)
        img = np.asarray(image, dtype=float)
        shape = next(iter(self.masks.values())).shape
        self.image = img[0] if img.ndim == len(shape) + 1 else img
        if self.image.shape != shape:
            raise ValueError(f"image: expected spatial shape {shape} (the readers' masks), got "
                             f"{self.image.shape}")
        self.axis = int(axis)
        self.case_id = case_id
        votes, _ = reader_votes(self.masks)
        if len(shape) == 3:
            per = votes.sum(axis=tuple(a for a in range(3) if a != self.axis))
            start = int(np.argmax(per))
            self.slice = W.IntSlider(value=start, min=0, max=shape[self.axis] - 1,
                                     description="slice")
        else:
            self.slice = W.IntSlider(value=0, min=0, max=0, description="slice", disabled=True)
        names = list(self.masks)
        self.choose = W.SelectMultiple(options=names, value=tuple(names), description="readers")
        self.disagreement = W.Checkbox(value=True, description="disagreement map", indent=False)
        self.picture = W.Image(format="png")
        for w in (self.slice, self.choose, self.disagreement):
            w.observe(lambda _change: self.redraw(), names="value")
        self.widget = W.VBox([W.HBox([self.slice, self.choose, self.disagreement]), self.picture])
        self.redraw()

    @classmethod
    def from_cohort(cls, cohort: Any, case_id: str, **kwargs: Any) -> ReaderCaseView:
        """Open the readers of manifest row ``case_id`` (columns ``label_<reader>``)."""
        case = cohort.load_case(str(case_id))
        if not case.readers:
            raise ValueError(f"case {case_id!r}: readers: expected label_<reader> columns, "
                             "got none")
        return cls(case.image, case.readers, case_id=case.case_id, **kwargs)

    def slices(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The image slice and each reader's mask slice at the current position."""
        if self.image.ndim == 2:
            return self.image, dict(self.masks)
        i = int(self.slice.value)
        return (np.take(self.image, i, axis=self.axis),
                {k: np.take(m, i, axis=self.axis) for k, m in self.masks.items()})

    def redraw(self) -> None:
        from matplotlib.figure import Figure

        from medseg_xai.viz import fig_to_png_bytes

        img, masks = self.slices()
        fig = Figure(figsize=(4.2, 4.2))
        ax = fig.subplots()
        draw_readers(ax, img, masks, readers=list(self.choose.value),
                     disagreement=bool(self.disagreement.value))
        where = f"axis {self.axis} slice {int(self.slice.value)}" if self.image.ndim == 3 else ""
        ax.set_title(f"{self.case_id or 'case'}: readers, voxel axes {where}".strip(),
                     fontsize="small")
        self.picture.value = fig_to_png_bytes(fig, dpi=80)

    def _ipython_display_(self) -> None:  # pragma: no cover - notebook display
        from IPython.display import display

        display(self.widget)
