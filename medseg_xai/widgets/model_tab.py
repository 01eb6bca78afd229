"""The "model" tab (layer table, kernels, activation montage, top channels for a target) and
the feature-shift panel of the dashboard (with drill-down to a case).

Both are views: the numbers come from :mod:`medseg_xai.explain.weights`,
:mod:`medseg_xai.explain.features` and the :class:`~medseg_xai.audit.AuditResult`
(``feature_shift``, ``ood_score``); the widgets only choose what to show.

CaseExplorer and AuditDashboard embed them::

    tab = ModelTab(adapter, image, target=target)          # e.g. in a CaseExplorer tab
    panel = FeatureShiftPanel(result, on_open=dashboard.open_case)
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import ipywidgets as W
import numpy as np
import pandas as pd

__all__ = ["FeatureShiftPanel", "ModelTab"]

_LAYER_COLUMNS = ["name", "type", "n_params", "weight_norm", "near_zero_share", "dead_channels"]


def _png(fig: Any) -> bytes:
    from medseg_xai.viz import fig_to_png_bytes

    return fig_to_png_bytes(fig, dpi=90)


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<i>no rows</i>"
    return df.to_html(index=False, escape=True, border=0, classes="mx-table", na_rep="n/a",
                      float_format=lambda v: f"{v:.3g}")


class ModelTab(W.VBox):
    """Layer table, the selected layer's kernels and activation montage, and the channels
    most responsible for the current target (Grad-CAM channel weights, ranked).

    Parameters
    ----------
    adapter : SegmentationAdapter
    image : numpy.ndarray, optional
        The current case ``(C, *spatial)``; without it only weights are shown.
    target : Target, optional
        The current target; enables the top-channel view.
    layer : str, optional
        The selected layer (default: the adapter's Grad-CAM layer's last convolution).
    k : int
        Top channels shown.
    """

    def __init__(self, adapter: Any, image: Any = None, target: Any = None,
                 layer: str | None = None, *, k: int = 6) -> None:
        from medseg_xai.explain.weights import weights

        super().__init__()
        self.adapter, self.image, self.target, self.k = adapter, image, target, int(k)
        self.layer_table = weights(adapter)
        convs = self.layer_table[self.layer_table["weight_shape"].map(len) >= 4]
        options = list(convs["name"])
        if not options:
            raise ValueError("ModelTab: the model has no convolution with a kernel to show")
        self.layer_select = W.Dropdown(options=options, value=layer if layer in options else
                                       options[0], description="layer")
        self.table_html = W.HTML(_html_table(self.layer_table[_LAYER_COLUMNS]))
        self.kernel_image = W.Image(format="png")
        self.activation_image = W.Image(format="png")
        self.channels_html = W.HTML()
        self.channels_image = W.Image(format="png")
        self.status = W.HTML()
        self.last_error: Exception | None = None
        self.top: pd.DataFrame | None = None
        self.layer_select.observe(lambda _c: self.refresh(), names="value")
        self.children = [
            W.HTML("<b>Layers</b>"), self.table_html, self.layer_select, self.status,
            W.HBox([self.kernel_image, self.activation_image]),
            W.HTML("<b>Top channels for the current target</b>"), self.channels_html,
            self.channels_image,
        ]
        self.refresh()

    @property
    def layer(self) -> str:
        return str(self.layer_select.value)

    def set_case(self, image: Any = None, target: Any = None) -> None:
        """Show another image and/or target (e.g. when the explorer's lesion changes)."""
        if image is not None:
            self.image = image
        self.target = target
        self.refresh()

    def refresh(self) -> None:
        """Redraw kernels, activations and top channels of the selected layer."""
        from medseg_xai.explain.weights import kernels
        from medseg_xai.viz import montage
        from medseg_xai.viz_model import kernel_montage

        try:
            self.kernel_image.value = _png(kernel_montage(kernels(self.adapter, self.layer),
                                                          title=f"kernels of {self.layer}"))
            if self.image is not None:
                from medseg_xai.explain.activations import activations

                acts = activations(self.adapter, self.image, self.layer)
                self.activation_image.value = _png(montage(acts, max_features=16,
                                                           title=f"activations of {self.layer}"))
            self._show_top_channels()
            self.status.value = ""
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.last_error = exc
            self.status.value = (f"<span style='color:#b00'>{type(exc).__name__}: "
                                 f"{html.escape(str(exc))}</span>")

    def _show_top_channels(self) -> None:
        from medseg_xai.explain.features import top_channels
        from medseg_xai.viz import montage

        if self.image is None or self.target is None:
            self.top = None
            self.channels_html.value = "<i>pick a target (lesion) to rank channels</i>"
            self.channels_image.value = b""
            return
        head, maps = top_channels(self.adapter, self.image, self.target, self.layer, k=self.k)
        self.top = head
        self.channels_html.value = _html_table(head)
        titles = [f"ch {c}  w={w:.2g}" for c, w in zip(head["channel"], head["weight"])]
        self.channels_image.value = _png(montage(maps, titles=titles))


class FeatureShiftPanel(W.VBox):
    """Feature shift of an audit: the table per stratum and its least typical cases, each with
    a button that opens the case (``on_open(case_id)``, e.g. ``AuditDashboard.open_case``).

    Parameters
    ----------
    result : AuditResult
        An audit run with an adapter (``result.feature_shift`` and ``ood_score``).
    on_open : callable, optional
        Called with a case id when its button is clicked.
    n : int
        Cases listed.
    """

    def __init__(self, result: Any, on_open: Callable[[str], Any] | None = None, *,
                 n: int = 8) -> None:
        super().__init__()
        self.result, self.on_open, self.n = result, on_open, int(n)
        shift = getattr(result, "feature_shift", pd.DataFrame())
        if shift is None or shift.empty or "ood_score" not in result.cases.columns:
            raise ValueError("FeatureShiftPanel: the audit has no feature shift; run "
                             "mx.audit(..., adapter=adapter) (feature_layer='auto')")
        strata = list(pd.unique(shift["stratum"]))
        self.stratum = W.Dropdown(options=strata, value=strata[0], description="stratum")
        groups = ["(all)", *map(str, shift.loc[shift["stratum"] == strata[0], "group"])]
        self.group = W.Dropdown(options=groups, value="(all)", description="group")
        self.table_html = W.HTML()
        self.cases_box = W.VBox()
        self.last_error: Exception | None = None
        self.stratum.observe(self._on_stratum, names="value")
        self.group.observe(lambda _c: self.refresh(), names="value")
        self.children = [W.HTML("<b>Feature shift</b>"), W.HBox([self.stratum, self.group]),
                         self.table_html, W.HTML("<b>Least typical cases</b>"), self.cases_box]
        self.refresh()

    def _on_stratum(self, change: dict) -> None:
        shift = self.result.feature_shift
        self.group.options = ["(all)", *map(str, shift.loc[shift["stratum"] == change["new"],
                                                           "group"])]
        self.group.value = "(all)"
        self.refresh()

    def rows(self) -> pd.DataFrame:
        """Feature-shift rows of the selected stratum."""
        shift = self.result.feature_shift
        return shift[shift["stratum"] == self.stratum.value].reset_index(drop=True)

    def outliers(self) -> pd.DataFrame:
        """The ``n`` evaluated cases with the highest ``ood_score`` (in the selected group)."""
        cases = self.result.cases.dropna(subset=["ood_score"])
        col = self.stratum.value
        if self.group.value != "(all)" and col in cases.columns:
            cases = cases[cases[col].astype(str) == self.group.value]
        return cases.sort_values("ood_score", ascending=False, kind="stable").head(self.n)

    def refresh(self) -> None:
        self.table_html.value = _html_table(self.rows().drop(columns="stratum"))
        items = []
        cols = [c for c in ("case_id", self.stratum.value, "dice", "ood_score")
                if c in self.result.cases.columns]
        for _, row in self.outliers().iterrows():
            text = "  ".join(f"{c}={row[c]:.3g}" if isinstance(row[c], (float, np.floating))
                             else f"{c}={row[c]}" for c in cols)
            button = W.Button(description="open", layout=W.Layout(width="70px"),
                              disabled=self.on_open is None)
            button.on_click(lambda _b, cid=str(row["case_id"]): self.open_case(cid))
            items.append(W.HBox([button, W.Label(text)]))
        self.cases_box.children = items

    def open_case(self, case_id: str) -> Any:
        """Drill down: hand ``case_id`` to ``on_open`` (errors are shown, and kept)."""
        if self.on_open is None:
            raise ValueError("FeatureShiftPanel: no on_open callback to open a case with")
        try:
            return self.on_open(case_id)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.last_error = exc
            self.table_html.value += (f"<p style='color:#b00'>{type(exc).__name__}: "
                                      f"{html.escape(str(exc))}</p>")
            return None
