"""Every metric's metadata in one place: direction, range, unit and a one-sentence definition.

Criteria, worst-case ranking (``medseg_xai.audit.stats.metric_direction`` delegates here) and
the report's glossary read this table, so a metric is described once. Per-class columns
(``"dice_liver"``) resolve to their metric by the longest known prefix.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["DISPLAY_NAMES", "METRICS", "MetricInfo", "glossary", "metric_direction",
           "metric_info", "metric_label", "unit_text"]

_INF = math.inf


@dataclass(frozen=True)
class MetricInfo:
    """What one metric means.

    Attributes
    ----------
    name : str
        Column name in ``evaluate_case`` / audit tables.
    direction : int
        +1 larger is better, -1 smaller is better, 0 closest to zero is best (signed errors) or
        no better direction (counts, volumes).
    range : tuple of float
        Smallest and largest possible value (``inf`` where unbounded).
    unit : str
        ``""`` for ratios, else ``"mm"``, ``"mm3"``, ``"%"``, ``"count"``, ``"per case"``.
    definition : str
        One sentence, for glossaries and tooltips.
    """

    name: str
    direction: int
    range: tuple[float, float]
    unit: str
    definition: str

    def to_dict(self) -> dict:
        return asdict(self)


def _m(name: str, direction: int, lo: float, hi: float, unit: str, definition: str) -> MetricInfo:
    return MetricInfo(name, direction, (lo, hi), unit, definition)


_ALL = [
    _m("dice", 1, 0, 1, "", "Dice coefficient 2|P∩R| / (|P| + |R|) of prediction P and reference R."),
    _m("jaccard", 1, 0, 1, "", "Jaccard index (IoU) |P∩R| / |P∪R|."),
    _m("precision", 1, 0, 1, "", "Share of predicted voxels that are in the reference, TP / (TP + FP)."),
    _m("recall", 1, 0, 1, "", "Share of reference voxels that are predicted (sensitivity), TP / (TP + FN)."),
    _m("specificity", 1, 0, 1, "", "Share of background voxels predicted as background, TN / (TN + FP)."),
    _m("mcc", 1, -1, 1, "", "Matthews correlation coefficient of the voxel confusion counts."),
    _m("hd", -1, 0, _INF, "mm", "Hausdorff distance: the largest distance from a surface point to the other surface."),
    _m("hd95", -1, 0, _INF, "mm", "Robust Hausdorff distance: the 95th percentile of the surface distances (per convention)."),
    _m("assd", -1, 0, _INF, "mm", "Average symmetric surface distance: mean distance of both surfaces' points to the other surface."),
    _m("masd", -1, 0, _INF, "mm", "Mean average surface distance: the mean of the two directed mean surface distances."),
    _m("nsd", 1, 0, 1, "", "Normalised surface Dice: share of both surfaces within the tolerance (mm) of the other."),
    _m("cldice", 1, 0, 1, "", "Centreline Dice: harmonic mean of the prediction skeleton's share inside the reference and the reference skeleton's share inside the prediction."),
    _m("boundary_iou", 1, 0, 1, "", "Boundary IoU: IoU of the mask bands within the boundary width of each contour."),
    _m("thickness_mean_ref", 0, 0, _INF, "mm", "Mean local thickness of the reference structure (diameter of the largest inscribed ball, on its skeleton)."),
    _m("thickness_mean_pred", 0, 0, _INF, "mm", "Mean local thickness of the predicted structure."),
    _m("thickness_p05_ref", 0, 0, _INF, "mm", "The 5th percentile of the reference's local thickness."),
    _m("thickness_p05_pred", 0, 0, _INF, "mm", "The 5th percentile of the prediction's local thickness."),
    _m("thickness_p95_ref", 0, 0, _INF, "mm", "The 95th percentile of the reference's local thickness."),
    _m("thickness_p95_pred", 0, 0, _INF, "mm", "The 95th percentile of the prediction's local thickness."),
    _m("thickness_mean_diff", 0, -_INF, _INF, "mm", "Mean local thickness of the prediction minus that of the reference."),
    _m("abs_thickness_mean_diff", -1, 0, _INF, "mm", "Absolute difference of the mean local thicknesses."),
    _m("volume_pred_mm3", 0, 0, _INF, "mm3", "Volume of the prediction (area in mm2 for 2D)."),
    _m("volume_ref_mm3", 0, 0, _INF, "mm3", "Volume of the reference (area in mm2 for 2D)."),
    _m("volume_diff_mm3", 0, -_INF, _INF, "mm3", "Predicted minus reference volume."),
    _m("abs_volume_diff_mm3", -1, 0, _INF, "mm3", "Absolute volume difference |V_pred - V_ref|."),
    _m("volume_diff_pct", 0, -100, _INF, "%", "Volume difference in percent of the reference volume."),
    _m("soft_dice", 1, 0, 1, "", "Dice of the foreground probabilities against the reference."),
    _m("brier", -1, 0, 1, "", "Mean squared difference between foreground probability and reference over the image."),
    _m("lesion_sensitivity", 1, 0, 1, "", "Share of reference lesions detected."),
    _m("lesion_f1", 1, 0, 1, "", "Lesion-wise F1: 2 TP / (2 TP + missed + false positives)."),
    _m("fp_per_case", -1, 0, _INF, "per case", "False-positive predicted components per case."),
    _m("n_false_positive", -1, 0, _INF, "count", "Predicted components matching no reference lesion."),
    _m("n_missed", -1, 0, _INF, "count", "Reference lesions not detected."),
    _m("n_detected", 0, 0, _INF, "count", "Reference lesions detected."),
    _m("n_ref_lesions", 0, 0, _INF, "count", "Connected components of the reference."),
    _m("n_pred_lesions", 0, 0, _INF, "count", "Connected components of the prediction."),
    _m("rq", 1, 0, 1, "", "Recognition quality: instance F1 at the IoU threshold, TP / (TP + FP/2 + FN/2)."),
    _m("sq", 1, 0, 1, "", "Segmentation quality: mean IoU of the matched instance pairs."),
    _m("pq", 1, 0, 1, "", "Panoptic quality RQ x SQ (Kirillov et al. 2019)."),
    _m("instance_tp", 0, 0, _INF, "count", "Matched instance pairs (one-to-one)."),
    _m("instance_fp", -1, 0, _INF, "count", "Predicted instances without a match."),
    _m("instance_fn", -1, 0, _INF, "count", "Reference instances without a match."),
]

#: name -> :class:`MetricInfo`.
METRICS: dict[str, MetricInfo] = {m.name: m for m in _ALL}
_BY_LENGTH = sorted(METRICS, key=len, reverse=True)


def metric_info(metric: str) -> MetricInfo | None:
    """Metadata of ``metric``, also for per-class columns (``"hd95_liver"`` -> ``hd95``).

    Returns None for a name that is not a known metric.
    """
    if metric in METRICS:
        return METRICS[metric]
    for name in _BY_LENGTH:
        if metric.startswith(name + "_"):
            return METRICS[name]
    return None


#: How reports, widgets and CLI name each metric (never the raw column name).
DISPLAY_NAMES: dict[str, str] = {
    "dice": "Dice", "jaccard": "Jaccard", "precision": "Precision", "recall": "Recall",
    "specificity": "Specificity", "mcc": "MCC", "hd": "Hausdorff distance", "hd95": "HD95",
    "assd": "ASSD", "masd": "MASD", "nsd": "NSD", "cldice": "clDice",
    "boundary_iou": "Boundary IoU",
    "thickness_mean_ref": "Mean thickness (reference)",
    "thickness_mean_pred": "Mean thickness (prediction)",
    "thickness_p05_ref": "5th-percentile thickness (reference)",
    "thickness_p05_pred": "5th-percentile thickness (prediction)",
    "thickness_p95_ref": "95th-percentile thickness (reference)",
    "thickness_p95_pred": "95th-percentile thickness (prediction)",
    "thickness_mean_diff": "Mean thickness difference",
    "abs_thickness_mean_diff": "Absolute mean thickness difference",
    "volume_pred_mm3": "Predicted volume", "volume_ref_mm3": "Reference volume",
    "volume_diff_mm3": "Volume difference", "abs_volume_diff_mm3": "Absolute volume difference",
    "volume_diff_pct": "Volume difference", "soft_dice": "Soft Dice", "brier": "Brier score",
    "lesion_sensitivity": "Lesion sensitivity", "lesion_f1": "Lesion F1",
    "fp_per_case": "False positives per scan", "n_false_positive": "False-positive lesions",
    "n_missed": "Missed lesions", "n_detected": "Detected lesions",
    "n_ref_lesions": "Reference lesions", "n_pred_lesions": "Predicted lesions",
    "rq": "Recognition quality", "sq": "Segmentation quality", "pq": "Panoptic quality",
    "instance_tp": "Matched instances", "instance_fp": "Unmatched predicted instances",
    "instance_fn": "Unmatched reference instances",
}
_UNIT_TEXT = {"mm": "mm", "mm3": "mm³", "%": "%"}


def unit_text(metric: str) -> str:
    """The unit as printed (``"mm"``, ``"mm³"``, ``"%"``; ``""`` for ratios, counts, rates)."""
    info = metric_info(metric)
    return "" if info is None else _UNIT_TEXT.get(info.unit, "")


def metric_label(metric: str, unit: bool = True) -> str:
    """Display name with unit: ``"HD95 (mm)"``, ``"Dice"``, ``"Dice (liver)"`` for a per-class
    column; an unknown name is returned as is."""
    info = metric_info(metric)
    if info is None:
        return metric
    name = DISPLAY_NAMES.get(info.name, info.name)
    suffix = metric[len(info.name) + 1:] if metric != info.name else ""
    parts = [p for p in (suffix.replace("_", " "), unit_text(metric) if unit else "") if p]
    return name + (f" ({', '.join(parts)})" if parts else "")


def metric_direction(metric: str) -> int:
    """+1 if larger is better, -1 if smaller is better, 0 otherwise (or unknown)."""
    info = metric_info(metric)
    return 0 if info is None else info.direction


def glossary(metrics: list[str] | None = None) -> list[dict]:
    """Rows ``name, direction, range, unit, definition`` for ``metrics`` (default: all known)."""
    names = list(METRICS) if metrics is None else metrics
    out = []
    for name in names:
        info = metric_info(name)
        if info is not None:
            row = info.to_dict()
            row["name"] = name
            out.append(row)
    return out
