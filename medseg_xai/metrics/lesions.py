"""Lesion-wise analysis: connected components, matching, detected / missed / false positive.

Matching rules
--------------
- Lesions are the connected components of the reference and of the prediction (full
  connectivity by default: 8-connected in 2D, 26-connected in 3D).
- A reference lesion is *detected* when the share of its voxels covered by the prediction,
  ``|ref_lesion ∩ pred| / |ref_lesion|`` (``overlap_fraction``), reaches ``overlap_threshold``;
  otherwise it is *missed*.
- Its ``dice`` compares the lesion with the union of every predicted component that overlaps it,
  and ``matched`` lists those components.
- ``merge`` is ``"merged"`` when one predicted component overlapping the lesion also overlaps
  another reference lesion (many-to-one), ``"split"`` when two or more predicted components
  overlap it (one-to-many); a lesion that is both is reported as ``"merged"``.
- A predicted component that overlaps no *detected* reference lesion is a *false positive* and
  gets its own row (its ``overlap_fraction`` is the share of its voxels inside the reference and
  ``matched`` lists the missed reference lesions it touches).

``matching="hungarian"`` replaces the covered-fraction rule by panoptica's one-to-one rule:
reference lesions and predicted components are paired by maximum total IoU among the pairs
with IoU >= ``iou_threshold`` (:func:`medseg_xai.metrics.instances.match_instances`). A paired
lesion is detected, its ``dice`` and ``iou`` are those with its partner and ``matched`` names
it; every predicted component left unpaired is a false positive, also when it overlaps a
detected lesion. ``iou`` (both modes) is the IoU of the lesion with the components it is
scored against; :func:`lesion_summary` turns it into panoptic quality (RQ, SQ, PQ).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from medseg_xai._validation import (
    check_mask,
    check_probabilities,
    check_same_shape,
    check_spacing,
)
from medseg_xai.metrics.components import label_lesions  # re-exported: the one labelling

__all__ = ["LESION_COLUMNS", "MATCHING_MODES", "is_detected", "label_lesions", "lesion_summary", "lesions"]

LESION_COLUMNS = [
    "lesion_id",
    "source",
    "status",
    "volume_voxels",
    "volume_mm3",
    "dice",
    "overlap_fraction",
    "matched",
    "merge",
    "centroid_voxel",
    "centroid_mm",
    "bbox",
    "max_prob",
    "mean_prob",
    "iou",
]

#: Lesion matching modes of :func:`lesions`.
MATCHING_MODES = ("overlap", "hungarian")


def check_matching(matching: str) -> str:
    """Return ``matching`` if it is a known mode, else raise a ValueError listing them."""
    if matching not in MATCHING_MODES:
        raise ValueError(f"matching: expected one of {MATCHING_MODES}, got {matching!r}")
    return matching


def is_detected(covered_fraction: Any, overlap_threshold: float) -> Any:
    """The one covered-share rule: a reference lesion is detected when the share of its voxels
    the prediction covers reaches ``overlap_threshold`` (``medseg_xai.decide`` re-exports it)."""
    if np.ndim(covered_fraction):
        return np.asarray(covered_fraction) >= float(overlap_threshold)
    return bool(float(covered_fraction) >= float(overlap_threshold))


def _reduce_at(ufunc: np.ufunc, values: np.ndarray, lab: np.ndarray, n: int) -> np.ndarray:
    """Per-label reduction (``np.minimum`` / ``np.maximum``) of ``values`` over labels 0..n."""
    start = np.iinfo(np.int64).max if ufunc is np.minimum else np.iinfo(np.int64).min
    out = np.full(n + 1, start, dtype=np.int64)
    ufunc.at(out, lab, values)
    return out


def _foreground_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Smallest box holding every foreground voxel (the whole image when it is empty)."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0))
    return tuple(box)


def _component_stats(
    labels: np.ndarray, n: int, probs: np.ndarray | None, offset: tuple[int, ...]
) -> dict[str, np.ndarray | list]:
    """Voxel count, centroid, bbox and probability stats of components 1..n.

    ``labels`` (and ``probs``) are a crop of the image starting at voxel ``offset``; centroids
    and boxes are returned in the coordinates of the whole image.
    """
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    lab = flat[idx]
    counts = np.bincount(lab, minlength=n + 1).astype(np.int64)
    coords = tuple(c + o for c, o in zip(np.unravel_index(idx, labels.shape), offset))
    safe = np.maximum(counts, 1)
    centroids = np.stack(
        [np.bincount(lab, weights=c, minlength=n + 1) / safe for c in coords], axis=1
    )
    # Bounding boxes from the foreground coordinates: cheaper than find_objects on the volume.
    lo = np.stack([_reduce_at(np.minimum, c, lab, n) for c in coords], axis=1)
    hi = np.stack([_reduce_at(np.maximum, c, lab, n) for c in coords], axis=1)
    bboxes = [tuple((int(a), int(b) + 1) for a, b in zip(lo[i], hi[i])) for i in range(1, n + 1)]
    if probs is not None:
        p = probs.ravel()[idx].astype(np.float64)
        mean_p = np.bincount(lab, weights=p, minlength=n + 1) / safe
        max_p = np.full(n + 1, -np.inf)
        np.maximum.at(max_p, lab, p)
    else:
        mean_p = np.full(n + 1, np.nan)
        max_p = np.full(n + 1, np.nan)
    return {
        "counts": counts,
        "centroids": centroids,
        "bboxes": bboxes,
        "mean": mean_p,
        "max": max_p,
    }


def _row(
    lesion_id: str,
    source: str,
    status: str,
    i: int,
    stats: dict,
    voxel_mm3: float,
    spacing: tuple[float, ...],
    dice: float,
    overlap_fraction: float,
    matched: list[str],
    merge: str,
    iou: float = 0.0,
) -> dict[str, Any]:
    centroid = tuple(float(v) for v in stats["centroids"][i])
    return {
        "lesion_id": lesion_id,
        "source": source,
        "status": status,
        "volume_voxels": int(stats["counts"][i]),
        "volume_mm3": float(stats["counts"][i]) * voxel_mm3,
        "dice": float(dice),
        "overlap_fraction": float(overlap_fraction),
        "matched": ",".join(matched),
        "merge": merge,
        "centroid_voxel": centroid,
        "centroid_mm": tuple(c * s for c, s in zip(centroid, spacing)),
        "bbox": stats["bboxes"][i - 1],
        "max_prob": float(stats["max"][i]),
        "mean_prob": float(stats["mean"][i]),
        "iou": float(iou),
    }


def _check_lesion_inputs(
    pred: Any, ref: Any, spacing: Any, probabilities: Any, overlap_threshold: float,
    matching: str, iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray, tuple, float, float, np.ndarray | None]:
    """Checked masks, spacing, thresholds and probabilities of :func:`lesions`."""
    pred = check_mask(pred, "pred")
    ref = check_mask(ref, "ref")
    check_same_shape(pred, ref, ("pred", "ref"))
    sp = check_spacing(spacing, pred.ndim)
    thr = float(overlap_threshold)
    if not (0 < thr <= 1):
        raise ValueError(
            f"overlap_threshold: expected a fraction in (0, 1], got {overlap_threshold!r}"
        )
    check_matching(matching)
    from medseg_xai.metrics.instances import _check_threshold

    iou_thr = _check_threshold(iou_threshold)
    probs = None
    if probabilities is not None:
        probs = check_probabilities(probabilities, "probabilities", shape=pred.shape)
    return pred, ref, sp, thr, iou_thr, probs


class _Overlaps(NamedTuple):
    """Overlapping (reference lesion, predicted component) pairs, sorted by lesion, component."""

    pr: np.ndarray  # reference lesion of each pair
    pp: np.ndarray  # predicted component of each pair
    shared: np.ndarray  # voxels the two share
    covered: np.ndarray  # per reference lesion: its voxels inside the prediction


def _overlaps(pred: np.ndarray, ref: np.ndarray, ref_lab: np.ndarray, pred_lab: np.ndarray,
              n_ref: int, n_pred: int) -> _Overlaps:
    """The overlapping pairs of two labelled masks and each lesion's covered voxels."""
    # Overlapping pairs only (sparse): voxels shared by reference lesion r and component p,
    # sorted by r then p. A dense (n_ref x n_pred) table took 3.8 GB for 10,000 x 9,000 lesions.
    both = np.flatnonzero(pred.ravel() & ref.ravel())
    r_ids = ref_lab.ravel()[both].astype(np.int64)
    p_ids = pred_lab.ravel()[both].astype(np.int64)
    pair, shared = np.unique(r_ids * (n_pred + 1) + p_ids, return_counts=True)
    pr, pp = pair // (n_pred + 1), pair % (n_pred + 1)
    covered = np.bincount(pr, weights=shared, minlength=n_ref + 1)  # each lesion's voxels in pred
    return _Overlaps(pr, pp, shared, covered)


def _detections(
    ov: _Overlaps, rs: dict, ps: dict, ref_frac: np.ndarray, n_ref: int, matching: str,
    thr: float, iou_thr: float,
) -> tuple[np.ndarray, dict[int, int]]:
    """Which reference lesions are detected, and (hungarian) each one's predicted partner."""
    partner: dict[int, int] = {}  # hungarian: reference lesion -> its one predicted component
    if matching == "overlap":
        detected = is_detected(ref_frac, thr)
    else:
        from medseg_xai.metrics.instances import match_pairs

        pr, pp, shared = ov.pr, ov.pp, ov.shared
        iou_pairs = shared / np.maximum(rs["counts"][pr] + ps["counts"][pp] - shared, 1)
        partner = {i: j for i, j, _ in match_pairs(pr, pp, iou_pairs, iou_thr)}
        detected = np.zeros(n_ref + 1, dtype=bool)
        detected[list(partner)] = True
    detected[0] = False
    return detected, partner


def _merge_kind(comps: np.ndarray, n_refs_per_pred: np.ndarray) -> str:
    """Merge kind: "merged" (a component on several lesions), "split" or "none"."""
    if np.any(n_refs_per_pred[comps] > 1):
        return "merged"
    if comps.size > 1:
        return "split"
    return "none"


def _reference_rows(
    ov: _Overlaps, rs: dict, ps: dict, detected: np.ndarray, partner: dict[int, int],
    ref_frac: np.ndarray, n_ref: int, n_pred: int, voxel_mm3: float, sp: tuple[float, ...],
) -> list[dict[str, Any]]:
    """One row per reference lesion: detected or missed, its Dice, IoU and merge kind."""
    pp, shared, covered = ov.pp, ov.shared, ov.covered
    n_refs_per_pred = np.bincount(pp, minlength=n_pred + 1)  # reference lesions per component
    r_start = np.searchsorted(ov.pr, np.arange(n_ref + 2))
    rows: list[dict[str, Any]] = []
    for r in range(1, n_ref + 1):
        lo, hi = r_start[r], r_start[r + 1]
        comps = pp[lo:hi]
        if r in partner:
            j = partner[r]
            common, size_p = int(shared[lo + np.searchsorted(comps, j)]), int(ps["counts"][j])
            d = 2.0 * common / (rs["counts"][r] + size_p)
            iou = common / (rs["counts"][r] + size_p - common)
            named = [j]
        else:
            union = int(ps["counts"][comps].sum())
            d = 2.0 * covered[r] / (rs["counts"][r] + union)
            iou = covered[r] / (rs["counts"][r] + union - covered[r])
            named = list(comps)
        rows.append(_row(f"ref-{r}", "reference", "detected" if detected[r] else "missed", r,
                         rs, voxel_mm3, sp, d, ref_frac[r], [f"pred-{p}" for p in named],
                         _merge_kind(comps, n_refs_per_pred), iou))
    return rows


def _false_positive_rows(
    ov: _Overlaps, ps: dict, detected: np.ndarray, partner: dict[int, int], n_pred: int,
    matching: str, voxel_mm3: float, sp: tuple[float, ...],
) -> list[dict[str, Any]]:
    """One row per predicted component that is no part of a detection."""
    pr, pp = ov.pr, ov.pp
    in_ref = np.bincount(pp, weights=ov.shared, minlength=n_pred + 1)  # component voxels in ref
    by_p = np.argsort(pp, kind="stable")
    p_start = np.searchsorted(pp[by_p], np.arange(n_pred + 2))
    paired = set(partner.values())
    rows: list[dict[str, Any]] = []
    for p in range(1, n_pred + 1):
        refs = pr[by_p[p_start[p]:p_start[p + 1]]]
        if matching == "overlap" and np.any(detected[refs]):
            continue  # part of a detection, reported on the reference lesion's row
        if p in paired:
            continue  # the partner of a detected lesion
        frac = in_ref[p] / max(int(ps["counts"][p]), 1)
        rows.append(_row(f"pred-{p}", "prediction", "false_positive", p, ps, voxel_mm3, sp,
                         0.0, frac, [f"ref-{r}" for r in refs], "none"))
    return rows


def lesions(
    pred: Any,
    ref: Any,
    spacing: Any = None,
    probabilities: Any = None,
    *,
    connectivity: int | None = None,
    overlap_threshold: float = 0.1,
    matching: str = "overlap",
    iou_threshold: float = 0.5,
) -> pd.DataFrame:
    """Match reference lesions and predicted components of one case.

    Parameters
    ----------
    pred, ref : array-like
        Binary masks of the same 2D or 3D shape.
    spacing : sequence of float, optional
        Voxel size in mm per axis (default 1.0).
    probabilities : array-like, optional
        Foreground probabilities in [0, 1] with the masks' shape; fills ``max_prob`` and
        ``mean_prob`` (NaN otherwise).
    connectivity : int, optional
        Component connectivity (see :func:`label_lesions`); default full connectivity.
    overlap_threshold : float
        Minimum covered share of a reference lesion, in (0, 1], for it to count as detected
        (``matching="overlap"``).
    matching : {"overlap", "hungarian"}
        Covered-fraction rule (default) or one-to-one IoU matching (module docstring).
    iou_threshold : float
        Smallest IoU of a pair under ``matching="hungarian"`` (default 0.5).

    Returns
    -------
    pandas.DataFrame
        One row per reference lesion (``"ref-k"``) and per false-positive predicted component
        (``"pred-k"``), with the columns of :data:`LESION_COLUMNS`; matching rules in the
        module docstring.
    """
    pred, ref, sp, thr, iou_thr, probs = _check_lesion_inputs(
        pred, ref, spacing, probabilities, overlap_threshold, matching, iou_threshold)

    # Components lie inside the box of the union: labelling the box gives the same components
    # at a fraction of the cost of labelling the volume.
    box = _foreground_box(pred | ref)
    offset = tuple(b.start for b in box)
    pred, ref = pred[box], ref[box]
    probs = None if probs is None else probs[box]
    ref_lab, n_ref = label_lesions(ref, connectivity)
    pred_lab, n_pred = label_lesions(pred, connectivity)
    rs = _component_stats(ref_lab, n_ref, probs, offset)
    ps = _component_stats(pred_lab, n_pred, probs, offset)
    voxel_mm3 = float(np.prod(sp))

    ov = _overlaps(pred, ref, ref_lab, pred_lab, n_ref, n_pred)
    ref_frac = ov.covered / np.maximum(rs["counts"], 1)
    detected, partner = _detections(ov, rs, ps, ref_frac, n_ref, matching, thr, iou_thr)
    rows = _reference_rows(ov, rs, ps, detected, partner, ref_frac, n_ref, n_pred, voxel_mm3, sp)
    rows += _false_positive_rows(ov, ps, detected, partner, n_pred, matching, voxel_mm3, sp)
    df = pd.DataFrame(rows, columns=LESION_COLUMNS)
    return df.astype({"volume_voxels": "int64"}) if len(df) else df


def lesion_summary(df: pd.DataFrame, n_cases: int | None = None) -> dict[str, float]:
    """Case-level lesion detection figures from a :func:`lesions` table.

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`lesions`, or several cases' tables concatenated with a ``case_id``
        column (false positives per case then divide by the number of distinct cases).
    n_cases : int, optional
        Number of cases the table covers; needed for ``fp_per_case`` when cases without any
        lesion row (no reference lesion and no false positive) belong to the cohort.

    Returns
    -------
    dict
        ``n_ref_lesions, n_pred_lesions`` (all predicted components, matched or not),
        ``n_detected, n_missed, n_false_positive``, ``lesion_sensitivity`` (detected / reference
        lesions; NaN without reference lesions), ``fp_per_case`` and ``lesion_f1``
        (2 TP / (2 TP + missed + FP), TP = detected lesions; NaN when there are neither
        reference lesions nor false positives), and panoptic quality from the same counts:
        ``rq`` (= ``lesion_f1``), ``sq`` (mean ``iou`` of the detected lesions; NaN when none)
        and ``pq`` = RQ x SQ (0 when nothing is detected but something exists).
    """
    missing = {"lesion_id", "source", "status", "matched"} - set(df.columns)
    if missing:
        raise ValueError(f"df: expected a lesions() table, missing columns {sorted(missing)}")
    case = df["case_id"].astype(str) if "case_id" in df.columns else pd.Series("", index=df.index)
    if n_cases is None:
        n_cases = max(int(case.nunique()), 1)
    elif int(n_cases) < 1:
        raise ValueError(f"n_cases: expected a positive number of cases, got {n_cases!r}")
    is_ref = df["source"] == "reference"
    n_ref = int(is_ref.sum())
    n_det = int((df["status"] == "detected").sum())
    n_miss = int((df["status"] == "missed").sum())
    n_fp = int((df["status"] == "false_positive").sum())
    # Predicted components: those named on reference rows plus the false-positive rows.
    preds: set[tuple[str, str]] = set()
    for c, m in zip(case[is_ref], df.loc[is_ref, "matched"]):
        preds.update((c, x) for x in str(m).split(",") if x)
    preds.update(zip(case[~is_ref], df.loc[~is_ref, "lesion_id"]))
    denom = 2 * n_det + n_miss + n_fp
    if "iou" in df.columns and n_det:
        sq = float(df.loc[df["status"] == "detected", "iou"].astype(float).mean())
    else:
        sq = float("nan")
    rq = 2 * n_det / denom if denom else float("nan")
    pq = rq * sq if n_det else (0.0 if denom else float("nan"))
    return {
        "n_ref_lesions": n_ref,
        "n_pred_lesions": len(preds),
        "n_detected": n_det,
        "n_missed": n_miss,
        "n_false_positive": n_fp,
        "lesion_sensitivity": n_det / n_ref if n_ref else float("nan"),
        "fp_per_case": n_fp / n_cases,
        "lesion_f1": 2 * n_det / denom if denom else float("nan"),
        "rq": rq,
        "sq": sq,
        "pq": pq,
    }
