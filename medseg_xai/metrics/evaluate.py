"""``evaluate_case``: every metric of one case, sharing work between them.

Per class the masks are counted once (overlap and volume metrics) and their surfaces extracted
once, with one KD-tree query per direction feeding HD, HD95, ASSD and NSD together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from medseg_xai._validation import (
    check_label_map,
    check_labels,
    check_mask,
    check_probabilities,
    check_same_shape,
    check_spacing,
)
from medseg_xai.metrics._nearest import box_of
from medseg_xai.metrics.conventions import check_convention
from medseg_xai.metrics.overlap import (
    check_empty_policy,
    confusion_counts,
    edge_case,
    mcc_from_counts,
    overlap_from_counts,
    volumes_from_counts,
)
from medseg_xai.metrics.structure import boundary_iou, cldice, thickness
from medseg_xai.metrics.surface import (
    _check_percentile,
    _check_tolerance,
    case_surface_metrics,
)

__all__ = ["EXTRA_METRICS", "METRIC_KEYS", "evaluate_case"]

#: Opt-in metrics of :func:`evaluate_case` (``extra=``): thin-structure metrics that cost more
#: than the rest together (skeletons, distance transforms of the box).
EXTRA_METRICS = ("cldice", "boundary_iou", "thickness")

#: Numeric keys of a binary :func:`evaluate_case` result, in order.
METRIC_KEYS = (
    "dice",
    "jaccard",
    "precision",
    "recall",
    "specificity",
    "hd",
    "hd95",
    "assd",
    "masd",
    "nsd",
    "mcc",
    "volume_pred_mm3",
    "volume_ref_mm3",
    "volume_diff_mm3",
    "abs_volume_diff_mm3",
    "volume_diff_pct",
)


def _present_labels(label_map: np.ndarray) -> set[int]:
    """Label values occurring in a non-negative integer map (bincount: no sort of the volume)."""
    if label_map.size == 0:
        return set()
    top = int(label_map.max())
    if top < 1 << 16:
        return set(np.flatnonzero(np.bincount(label_map.ravel(), minlength=top + 1)).tolist())
    return set(np.unique(label_map).tolist())


def _binary_case(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    tolerance: float,
    percentile: float | None,
    empty: str,
    prob: np.ndarray | None,
    convention: str = "monai",
    use_subvoxels: bool = False,
    extra: tuple[str, ...] = (),
    boundary_width: float = 1.0,
) -> dict[str, Any]:
    # Everything but the probabilities lives in the box of the union: count and find surfaces
    # there (the same numbers, a fraction of the passes over the volume for small structures).
    box = box_of(pred, ref)
    if box is None:
        tp = n_pred = n_ref = 0
    else:
        tp, n_pred, n_ref, _ = confusion_counts(pred[box], ref[box])
    n_total = int(pred.size)
    out: dict[str, Any] = overlap_from_counts(tp, n_pred, n_ref, n_total, empty=empty)
    out["mcc"] = mcc_from_counts(tp, n_pred, n_ref, n_total, empty=empty)
    out.update(case_surface_metrics(
        pred, ref, spacing, percentile=percentile, tolerance=tolerance, empty=empty,
        convention=convention, use_subvoxels=use_subvoxels, box=box,
    ))
    out.update(volumes_from_counts(n_pred, n_ref, float(np.prod(spacing))))
    if "cldice" in extra:
        out["cldice"] = cldice(pred, ref, empty=empty)
    if "boundary_iou" in extra:
        out["boundary_iou"] = boundary_iou(pred, ref, spacing, boundary_width, empty=empty)
    if "thickness" in extra:
        out.update(thickness(pred, ref, spacing))
    if prob is not None:
        p = prob.astype(np.float64, copy=False)
        sum_p = float(p.sum())
        inter = float(p[ref].sum())
        # Soft Dice: 2 sum(p * r) / (sum(p) + sum(r)); both empty and all-zero p counts as 1.
        den = sum_p + n_ref
        out["soft_dice"] = 2 * inter / den if den else (1.0 if empty == "worst" else float("nan"))
        # Brier score of the foreground probability against the reference, over the image.
        out["brier"] = float(((p - ref) ** 2).mean())
    out["edge_case"] = edge_case(n_pred, n_ref)
    return out


def _check_options(
    empty: str, convention: str, use_subvoxels: bool, percentile: float | None,
    tolerance: float, extra: Any,
) -> tuple[float | None, float, tuple]:
    """Check :func:`evaluate_case`'s options; the checked percentile, tolerance and extras."""
    check_empty_policy(empty)
    check_convention(convention)
    if use_subvoxels and convention != "monai":
        raise ValueError(
            f"use_subvoxels: expected convention='monai' (MONAI's sub-voxel NSD), "
            f"got convention={convention!r}"
        )
    percentile = _check_percentile(percentile)
    tolerance = _check_tolerance(tolerance)
    extra = tuple(extra)
    unknown = [e for e in extra if e not in EXTRA_METRICS]
    if unknown:
        raise ValueError(f"extra: expected names from {EXTRA_METRICS}, got {unknown}")
    return percentile, tolerance, extra


def _class_probabilities(probabilities: Any, shape: tuple[int, ...], ndim: int,
                         classes: dict) -> np.ndarray:
    """Check ``(K, *spatial)`` class probabilities with a channel for every label."""
    probs = check_probabilities(probabilities, "probabilities")
    need = max(classes) + 1
    if probs.ndim != ndim + 1 or probs.shape[1:] != shape or probs.shape[0] < need:
        raise ValueError(
            f"probabilities: expected shape (K >= {need}, *{shape}) with channel k for "
            f"label k, got {tuple(probs.shape)}"
        )
    return probs


def _mask_case(
    pred: Any, ref: Any, spacing: Any, probabilities: Any,
    one: Callable[[np.ndarray, np.ndarray, tuple, np.ndarray | None], dict[str, Any]],
) -> dict[str, Any]:
    """Metrics of two binary masks (``one`` scores them), checked first."""
    pred_b = check_mask(pred, "pred")
    ref_b = check_mask(ref, "ref")
    check_same_shape(pred_b, ref_b, ("pred", "ref"))
    sp = check_spacing(spacing, pred_b.ndim)
    prob = None
    if probabilities is not None:
        prob = check_probabilities(probabilities, "probabilities", shape=pred_b.shape)
    return one(pred_b, ref_b, sp, prob)


def _label_map_case(
    pred: Any, ref: Any, spacing: Any, labels: Any, probabilities: Any,
    one: Callable[[np.ndarray, np.ndarray, tuple, np.ndarray | None], dict[str, Any]],
) -> dict[str, Any]:
    """Per-class metrics of two label maps (``one`` scores a class), and their class means."""
    pred_l = check_label_map(pred, "pred")
    ref_l = check_label_map(ref, "ref")
    check_same_shape(pred_l, ref_l, ("pred", "ref"))
    sp = check_spacing(spacing, pred_l.ndim)
    present = _present_labels(pred_l) | _present_labels(ref_l)
    classes = check_labels(labels, present)
    probs = None
    if probabilities is not None:
        probs = _class_probabilities(probabilities, pred_l.shape, pred_l.ndim, classes)

    out: dict[str, Any] = {}
    per_class: dict[str, list[float]] = {}
    cases: list[str] = []
    for lab, name in classes.items():
        res = one(pred_l == lab, ref_l == lab, sp, None if probs is None else probs[lab])
        case = res.pop("edge_case")
        out[f"edge_case_{name}"] = case
        if case != "none":
            cases.append(f"{name}:{case}")
        for key, value in res.items():
            out[f"{key}_{name}"] = value
            per_class.setdefault(key, []).append(value)
    for key, values in per_class.items():
        out[key] = float(np.mean(values))
    out["edge_case"] = ";".join(cases) if cases else "none"
    return out


def evaluate_case(
    pred: Any,
    ref: Any,
    spacing: Any = None,
    labels: Any = None,
    *,
    tolerance: float = 1.0,
    percentile: float | None = 95,
    empty: str = "worst",
    probabilities: Any = None,
    convention: str = "monai",
    use_subvoxels: bool = False,
    extra: Any = (),
    boundary_width: float = 1.0,
) -> dict[str, Any]:
    """Compute every segmentation metric of one case.

    Parameters
    ----------
    pred, ref : array-like
        Binary masks (``labels=None``) or integer label maps (``labels`` given) of the same
        2D ``(H, W)`` or 3D ``(D, H, W)`` shape.
    spacing : sequence of float, optional
        Voxel size in mm per axis (default 1.0).
    labels : list of int or dict, optional
        Label values to evaluate (``[1, 2]``) or ``{label: class name}``. Any other non-zero
        value in the maps raises (unknown label).
    tolerance : float
        NSD tolerance in mm (default 1.0).
    percentile : float or None
        Percentile of ``hd95`` (default 95; None or 100 = maximum); ``hd`` is always the maximum.
    empty : {"worst", "nan", "convention"}
        Empty-mask policy (see :mod:`medseg_xai.metrics.overlap` and
        :mod:`medseg_xai.metrics.surface`); ``"convention"`` gives the peer library's values.
    convention : str
        Surface-metric definitions: ``"monai"`` (default), ``"medpy"``, ``"deepmind"``,
        ``"metricsreloaded"``, ``"panoptica"`` (:mod:`medseg_xai.metrics.conventions`).
        Recorded in the result under ``convention``.
    use_subvoxels : bool
        MONAI's sub-voxel (area-weighted) NSD; ``convention="monai"`` only.
    extra : sequence of str
        Opt-in metrics from :data:`EXTRA_METRICS`: ``"cldice"``, ``"boundary_iou"`` (band
        ``boundary_width`` mm) and ``"thickness"`` (local-thickness statistics, keys of
        :func:`medseg_xai.metrics.structure.thickness`).
    probabilities : array-like, optional
        Binary case: foreground probabilities with the masks' shape. Multi-class: ``(K, *spatial)``
        class probabilities, channel ``k`` for label ``k``. Adds ``soft_dice`` and ``brier``
        (mean squared error of the probability against the reference over the image).

    Returns
    -------
    dict
        Binary: ``dice, jaccard, precision, recall, specificity, hd, hd95, assd, masd, nsd, mcc,
        volume_pred_mm3, volume_ref_mm3, volume_diff_mm3, abs_volume_diff_mm3, volume_diff_pct``
        (floats), ``edge_case`` (``"none" | "both_empty" | "pred_empty" | "ref_empty"``) and
        ``empty_policy``. Multi-class: ``"{metric}_{name}"`` and ``"edge_case_{name}"`` per class,
        the plain metric names holding the mean over classes (NaN if any class is NaN: no
        class drops out of the mean silently), ``edge_case`` ``"none"`` when every class is
        ``"none"``, else ``"name:case"`` entries of the other classes joined by ``";"``, and
        ``empty_policy`` and ``convention``.
    """
    percentile, tolerance, extra = _check_options(empty, convention, use_subvoxels, percentile,
                                                  tolerance, extra)

    def one(p: np.ndarray, r: np.ndarray, sp: tuple, prob: np.ndarray | None) -> dict[str, Any]:
        return _binary_case(p, r, sp, tolerance, percentile, empty, prob, convention,
                            use_subvoxels, extra, boundary_width)

    if labels is None:
        out = _mask_case(pred, ref, spacing, probabilities, one)
    else:
        out = _label_map_case(pred, ref, spacing, labels, probabilities, one)
    out["empty_policy"] = empty
    out["convention"] = convention
    return out
