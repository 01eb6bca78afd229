"""Voxel-overlap metrics: Dice, Jaccard, precision, recall, specificity and volumes.

Empty-mask policy (``empty=``), recorded by :func:`medseg_xai.metrics.evaluate_case` under
``edge_case`` and ``empty_policy``:

=================  =============  ==============  =================================
case               Dice/Jaccard   precision       recall
=================  =============  ==============  =================================
both empty         1 (nan)        1 (nan)         1 (nan)
pred empty only    0              0 (nan)         0
ref empty only     0              0               0 (nan)
=================  =============  ==============  =================================

Values in brackets are those of ``empty="nan"`` (and of ``"convention"``, whose peer values
differ only for surface metrics): a ratio 0/0 (mathematically undefined) becomes
NaN instead of the worst/best value; well-defined values (e.g. Dice = 0 when exactly one mask is
empty) are the same under both policies. Specificity TN / (TN + FP) is undefined only when the
reference covers the whole image: then it is 1 under ``"worst"`` (no negative voxel can be
misclassified) and NaN under ``"nan"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg_xai._validation import check_mask, check_same_shape, check_spacing

__all__ = [
    "EMPTY_POLICIES",
    "dice",
    "edge_case",
    "jaccard",
    "mcc",
    "precision",
    "recall",
    "specificity",
    "volume",
    "volume_difference",
]

EMPTY_POLICIES = ("worst", "nan", "convention")


def check_empty_policy(empty: str) -> str:
    """Raise unless ``empty`` is a known empty-mask policy."""
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty: expected one of {EMPTY_POLICIES}, got {empty!r}")
    return empty


def edge_case(n_pred: int, n_ref: int) -> str:
    """Name the empty-mask case from the foreground counts of prediction and reference.

    Returns one of ``"none"``, ``"both_empty"``, ``"pred_empty"``, ``"ref_empty"``.
    """
    if n_pred == 0 and n_ref == 0:
        return "both_empty"
    if n_pred == 0:
        return "pred_empty"
    if n_ref == 0:
        return "ref_empty"
    return "none"


def _binary_pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    pred = check_mask(pred, "pred")
    ref = check_mask(ref, "ref")
    check_same_shape(pred, ref, ("pred", "ref"))
    return pred, ref


def _ratio(num: float, den: float, undefined: float) -> float:
    return float(num) / float(den) if den else undefined


def overlap_from_counts(
    tp: int, n_pred: int, n_ref: int, n_total: int, empty: str = "worst"
) -> dict[str, float]:
    """All overlap metrics from the confusion counts of one binary case.

    Parameters
    ----------
    tp : int
        Voxels in both prediction and reference.
    n_pred, n_ref : int
        Foreground voxels of the prediction and of the reference.
    n_total : int
        Voxels in the image.
    empty : {"worst", "nan"}
        Empty-mask policy (module docstring).

    Returns
    -------
    dict
        ``dice, jaccard, precision, recall, specificity``.
    """
    check_empty_policy(empty)
    fp, fn = n_pred - tp, n_ref - tp
    tn = n_total - tp - fp - fn
    both_empty = n_pred == 0 and n_ref == 0
    # 0/0 ratios: 1 when both masks agree that there is nothing (both empty), otherwise the
    # worst value 0 -- or NaN for the "nan" policy.
    if empty in ("nan", "convention"):  # the peers leave 0/0 overlap ratios undefined
        undef = float("nan")
        undef_spec = float("nan")
    else:
        undef = 1.0 if both_empty else 0.0
        undef_spec = 1.0
    return {
        "dice": _ratio(2 * tp, n_pred + n_ref, undef),
        "jaccard": _ratio(tp, n_pred + n_ref - tp, undef),
        "precision": _ratio(tp, n_pred, undef),
        "recall": _ratio(tp, n_ref, undef),
        "specificity": _ratio(tn, tn + fp, undef_spec),
    }


def mcc_from_counts(tp: int, n_pred: int, n_ref: int, n_total: int, empty: str = "worst") -> float:
    """Matthews correlation coefficient from the confusion counts of one binary case.

    ``(TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))`` in [-1, 1]. Undefined (a zero
    factor) when a mask is empty or fills the image: then 1 if the masks are equal, else 0
    (``"worst"``), or NaN.
    """
    check_empty_policy(empty)
    fp, fn = n_pred - tp, n_ref - tp
    tn = n_total - tp - fp - fn
    den = float(tp + fp) * float(tp + fn) * float(tn + fp) * float(tn + fn)
    if den == 0:
        if empty != "worst":
            return float("nan")
        return 1.0 if fp == 0 and fn == 0 else 0.0
    return (float(tp) * float(tn) - float(fp) * float(fn)) / float(np.sqrt(den))


def mcc(pred: Any, ref: Any, *, empty: str = "worst") -> float:
    """Matthews correlation coefficient of two binary masks (see :func:`mcc_from_counts`)."""
    pred, ref = _binary_pair(pred, ref)
    return mcc_from_counts(*confusion_counts(pred, ref), empty=empty)


def confusion_counts(pred: np.ndarray, ref: np.ndarray) -> tuple[int, int, int, int]:
    """Return ``(tp, n_pred, n_ref, n_total)`` for two bool arrays of the same shape."""
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    tp = int(np.count_nonzero(pred & ref)) if n_pred and n_ref else 0
    return tp, n_pred, n_ref, int(pred.size)


def _metric(pred: Any, ref: Any, key: str, empty: str) -> float:
    pred, ref = _binary_pair(pred, ref)
    return overlap_from_counts(*confusion_counts(pred, ref), empty=empty)[key]


def dice(pred: Any, ref: Any, *, empty: str = "worst") -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|) of two binary masks (2D or 3D).

    Both empty: 1 (``empty="worst"``) or NaN (``"nan"``); exactly one empty: 0.
    """
    return _metric(pred, ref, "dice", empty)


def jaccard(pred: Any, ref: Any, *, empty: str = "worst") -> float:
    """Jaccard index |P∩R| / |P∪R| of two binary masks; empty cases as for :func:`dice`."""
    return _metric(pred, ref, "jaccard", empty)


def precision(pred: Any, ref: Any, *, empty: str = "worst") -> float:
    """Precision TP / (TP + FP).

    Undefined when the prediction is empty: 1 if the reference is empty too, else 0
    (``empty="worst"``), or NaN (``"nan"``).
    """
    return _metric(pred, ref, "precision", empty)


def recall(pred: Any, ref: Any, *, empty: str = "worst") -> float:
    """Recall (sensitivity) TP / (TP + FN).

    Undefined when the reference is empty: 1 if the prediction is empty too, else 0
    (``empty="worst"``), or NaN (``"nan"``).
    """
    return _metric(pred, ref, "recall", empty)


def specificity(pred: Any, ref: Any, *, empty: str = "worst") -> float:
    """Specificity TN / (TN + FP).

    Undefined only when the reference covers the whole image: 1 (``"worst"``) or NaN (``"nan"``).
    """
    return _metric(pred, ref, "specificity", empty)


def volume(mask: Any, spacing: Any = None) -> float:
    """Volume (3D, mm^3) or area (2D, mm^2) of a binary mask."""
    mask = check_mask(mask, "mask")
    sp = check_spacing(spacing, mask.ndim)
    return float(np.count_nonzero(mask)) * float(np.prod(sp))


def volumes_from_counts(n_pred: int, n_ref: int, voxel_volume: float) -> dict[str, float]:
    """Volume keys of :func:`volume_difference` from foreground counts."""
    v_pred = n_pred * voxel_volume
    v_ref = n_ref * voxel_volume
    diff = v_pred - v_ref
    return {
        "volume_pred_mm3": v_pred,
        "volume_ref_mm3": v_ref,
        "volume_diff_mm3": diff,
        "abs_volume_diff_mm3": abs(diff),
        "volume_diff_pct": 100.0 * diff / v_ref if v_ref else float("nan"),
    }


def volume_difference(pred: Any, ref: Any, spacing: Any = None) -> dict[str, float]:
    """Volumes and their differences in mm^3 (mm^2 for 2D masks) and percent.

    Returns
    -------
    dict
        ``volume_pred_mm3, volume_ref_mm3, volume_diff_mm3`` (pred - ref),
        ``abs_volume_diff_mm3`` and ``volume_diff_pct`` (100 * diff / ref volume; NaN when the
        reference is empty, whatever the empty policy, since no finite worst value exists).
    """
    pred, ref = _binary_pair(pred, ref)
    sp = check_spacing(spacing, pred.ndim)
    return volumes_from_counts(
        int(np.count_nonzero(pred)), int(np.count_nonzero(ref)), float(np.prod(sp))
    )
