"""Report section "Model and data": the network's layers, and whether subgroups' scans look
different to the model (feature shift, out-of-distribution scores, a 2D feature projection).

Reads only what the :class:`~medseg_xai.audit.AuditResult` holds: ``model_layers``,
``feature_shift``, the ``ood_score`` / ``feature_pc1`` / ``feature_pc2`` case columns and the
feature settings. ``build`` returns None when the audit ran without a model (nothing to show).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from medseg_xai.audit.score_words import score_label
from medseg_xai.metrics.metadata import metric_label
from medseg_xai.reports.tables import table_from_frame

__all__ = ["TEMPLATE", "TITLE", "build"]

TITLE = "Model and data"
TEMPLATE = "sec_model_and_data.html.j2"
_LAYER_COLUMNS = ["name", "type", "n_params", "weight_norm", "near_zero_share",
                  "n_out_channels", "dead_channels"]
_SHIFT_COLUMNS = ["group", "n", "n_reference", "in_reference", "median_ood_score",
                  "median_ood_reference", "distance", "p_value", "p_adjusted", "flag"]
_HEADERS = {"n_params": "parameters", "weight_norm": "weight norm",
            "near_zero_share": "near-zero share", "n_out_channels": "out channels",
            "dead_channels": "dead channels", "n_reference": "n reference",
            "in_reference": "share in reference",
            "median_ood_score": f"median {score_label('ood_score')}",
            "median_ood_reference": f"median {score_label('ood_score')} (reference)",
            "distance": "mean-shift distance", "p_value": "p", "p_adjusted": "p adjusted",
            # the least-typical cases table: words, as the failure-detection section prints them
            "case_id": "case", "ood_score": score_label("ood_score"),
            "dice": metric_label("dice"), "recall": metric_label("recall")}


def _frame(result: Any, name: str) -> pd.DataFrame:
    df = getattr(result, name, None)
    return df if isinstance(df, pd.DataFrame) else pd.DataFrame()


def _colour_column(result: Any, cases: pd.DataFrame) -> str | None:
    for col in ("device", *(result.settings.get("strata") or [])):
        if col in cases.columns:
            return col
    return None


def build(result: Any, config: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """Data for the template, or None when the audit has no model tables."""
    layers = _frame(result, "model_layers")
    shift = _frame(result, "feature_shift")
    cases = _frame(result, "cases")
    if layers.empty and shift.empty:
        return None
    settings = result.settings
    out: dict[str, Any] = {"layer_summary": None, "layers": None,
                           "shift_tables": [], "projection": None, "outliers": None,
                           "feature_layer": settings.get("feature_layer"),
                           "reference": _reference_text(settings.get("feature_reference")),
                           "method": settings.get("feature_method"),
                           "correction": settings.get("correction", "holm"),
                           "alpha": settings.get("alpha", 0.05)}
    if not layers.empty:
        out["layer_summary"] = {
            "n_layers": len(layers), "n_params": int(layers["n_params"].sum()),
            "n_dead": int(layers["dead_channels"].sum()),
            "layers_with_dead": int((layers["dead_channels"] > 0).sum()),
        }
        out["layers"] = table_from_frame(layers, "model-layers", _LAYER_COLUMNS,
                                         headers=_HEADERS, max_rows=40,
                                         caption="Layers with weights, in definition order")
    # an audit without strata has a feature-shift table without rows or columns
    for stratum, rows in (shift.groupby("stratum", sort=False) if "stratum" in shift else ()):
        out["shift_tables"].append(table_from_frame(
            rows, f"feature-shift-{stratum}", _SHIFT_COLUMNS, headers=_HEADERS,
            caption=f"Feature shift by {stratum}"))
    if {"feature_pc1", "feature_pc2"} <= set(cases.columns):
        colour = _colour_column(result, cases)
        if colour is not None:
            from medseg_xai.reports.figures import to_uri
            from medseg_xai.viz_model import feature_projection

            out["projection"] = {"uri": to_uri(feature_projection(cases, colour)),
                                 "colour": colour}
    if "ood_score" in cases.columns:
        cols = ["case_id", *[c for c in (_colour_column(result, cases), "dice", "recall")
                             if c and c in cases.columns], "ood_score"]
        top = cases.dropna(subset=["ood_score"]).sort_values("ood_score", ascending=False)
        out["outliers"] = table_from_frame(top, "ood-cases", cols, headers=_HEADERS,
                                           max_rows=10,
                                           caption="Cases least typical of the reference")
    return out


def _reference_text(reference: Mapping[str, Any] | None) -> str:
    if not reference:
        return "the whole cohort (each group against the other cases)"
    return "; ".join(f"{col} in {', '.join(map(str, vals))}" for col, vals in reference.items())
