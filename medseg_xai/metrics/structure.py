"""Metrics for thin and tubular structures: centreline Dice, boundary IoU, local thickness.

- ``cldice`` (Shit et al. 2021): topology precision ``|S(P) ∩ R| / |S(P)|`` and sensitivity
  ``|S(R) ∩ P| / |S(R)|`` with skeletons ``S`` from ``skimage.morphology.skeletonize`` (Lee's
  method in 3D), combined as their harmonic mean. Vessels, airways, nerves.
- ``boundary_iou`` (Cheng et al. 2021): IoU of the boundary bands, the voxels of each mask
  closer than ``width`` mm to its own edge voxels (MetricsReloaded's definition; with 1 mm
  voxels and ``width=1`` the bands are the edge voxels themselves).
- ``thickness`` (cartilage, cortex, vessel walls): local thickness of every voxel, the
  diameter of the largest inscribed ball holding it (Hildebrand & Rüegsegger 1997). Balls are
  centred on the distance ridge of the mask (its medial surface: voxels whose distance to the
  background, ``scipy.ndimage.distance_transform_edt`` with the spacing, no face neighbour
  exceeds), with the distance to the boundary as radius, the boundary lying half a voxel
  beyond the last foreground voxel centre towards the nearest background voxel. Exact for layers an odd number of voxels thick along an axis; within one
  voxel otherwise. Reported over the voxels as mean, 5th and 95th percentiles for reference and prediction.

Empty masks: cldice and boundary IoU follow the ``empty=`` policy of the overlap metrics (both
empty -> 1 or NaN; one empty -> 0); thickness statistics of an empty mask are NaN (there is no
thickness to describe) whatever the policy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from medseg_xai._validation import check_mask, check_same_shape, check_spacing
from medseg_xai.metrics._nearest import box_of, pad_crop
from medseg_xai.metrics.overlap import check_empty_policy

__all__ = ["boundary_iou", "cldice", "skeleton", "thickness", "thickness_values"]


def _pair(pred: Any, ref: Any, spacing: Any = None):
    pred = check_mask(pred, "pred")
    ref = check_mask(ref, "ref")
    check_same_shape(pred, ref, ("pred", "ref"))
    return pred, ref, check_spacing(spacing, pred.ndim)


def _empty_value(n_pred: int, n_ref: int, empty: str) -> float | None:
    """The value of an empty case, or None when both masks hold something."""
    if n_pred and n_ref:
        return None
    if n_pred == 0 and n_ref == 0:
        return 1.0 if empty == "worst" else float("nan")
    return 0.0


def skeleton(mask: Any) -> np.ndarray:
    """Skeleton of a binary 2D or 3D mask (``skimage.morphology.skeletonize``), as bool.

    skimage thins some solid boxes to nothing; a non-empty mask then keeps its innermost
    voxels (those farthest from the background), so every object has a centreline.
    """
    from skimage.morphology import skeletonize

    mask = check_mask(mask, "mask")
    sk = np.asarray(skeletonize(mask), dtype=bool)
    if not sk.any() and mask.any():
        dist = ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]
        sk = dist == dist.max()
    return sk


def _cropped(pred: np.ndarray, ref: np.ndarray, pad: int = 1):
    box = box_of(pred, ref)
    if box is None:
        return None, None
    p = (pad,) * pred.ndim
    return pad_crop(pred, box, p), pad_crop(ref, box, p)


def cldice(pred: Any, ref: Any, *, empty: str = "worst") -> float:
    """Centreline Dice of two binary masks (2D or 3D), in [0, 1].

    Parameters
    ----------
    pred, ref : array-like
        Binary masks of the same shape.
    empty : {"worst", "nan", "convention"}
        Both empty -> 1 (``"worst"``) or NaN; one empty -> 0. Neither skeleton inside the
        other mask (a 0/0 harmonic mean): 0 (``"worst"``) or NaN (``"nan"``, ``"convention"``:
        panoptica's value).
    """
    check_empty_policy(empty)
    pred, ref, _ = _pair(pred, ref)
    value = _empty_value(int(pred.any()), int(ref.any()), empty)
    if value is not None:
        return value
    p, r = _cropped(pred, ref)
    sp, sr = skeleton(p), skeleton(r)
    t_prec = np.count_nonzero(sp & r) / max(np.count_nonzero(sp), 1)
    t_sens = np.count_nonzero(sr & p) / max(np.count_nonzero(sr), 1)
    if t_prec + t_sens == 0:  # no centreline inside the other mask: 0/0 harmonic mean
        return 0.0 if empty == "worst" else float("nan")
    return float(2 * t_prec * t_sens / (t_prec + t_sens))


def _edges(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def boundary_iou(
    pred: Any, ref: Any, spacing: Any = None, width: float = 1.0, *, empty: str = "worst"
) -> float:
    """Boundary IoU of two binary masks.

    Parameters
    ----------
    pred, ref : array-like
        Binary masks of the same 2D or 3D shape.
    spacing : sequence of float, optional
        Voxel size in mm (default 1.0).
    width : float
        Band width in mm: a voxel belongs to a mask's band when its centre is closer than
        ``width`` to the centre of one of the mask's edge voxels (edge voxels always belong).
    empty : {"worst", "nan", "convention"}
        Both empty -> 1 (``"worst"``) or NaN; one empty -> 0.
    """
    check_empty_policy(empty)
    pred, ref, sp = _pair(pred, ref, spacing)
    w = float(width)
    if not (np.isfinite(w) and w > 0):
        raise ValueError(f"width: expected a positive band width in mm, got {width!r}")
    value = _empty_value(int(pred.any()), int(ref.any()), empty)
    if value is not None:
        return value
    p, r = _cropped(pred, ref)

    def band(m: np.ndarray) -> np.ndarray:
        dist = ndimage.distance_transform_edt(~_edges(m), sampling=sp)
        return m & (dist < w)

    bp, br = band(p), band(r)
    inter = np.count_nonzero(bp & br)
    union = np.count_nonzero(bp | br)
    return float(inter / union)


def _ball(radius: float, spacing: tuple[float, ...]) -> np.ndarray:
    """Footprint of the voxel centres within ``radius`` mm of the centre (centre kept)."""
    half = [int(np.floor(radius / s)) for s in spacing]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    d2 = sum((g * s) ** 2 for g, s in zip(grids, spacing))
    out = d2 <= radius**2 * (1 + 1e-9)
    out[tuple(half)] = True
    return out


def thickness_values(mask: Any, spacing: Any = None) -> np.ndarray:
    """Local thickness (mm) of every foreground voxel of a mask (empty for an empty mask).

    Hildebrand & Rüegsegger's definition on the voxel grid: the diameter of the largest
    inscribed ball that contains the voxel. Balls are centred on the distance ridge (module
    docstring) with radius = distance to the boundary (half a voxel beyond the last foreground
    centre), radii rounded to a quarter of the smallest voxel side. The cost grows with the
    cube of the thickness: meant for thin layers and tubes, not for organs.
    """
    mask = check_mask(mask, "mask")
    sp = check_spacing(spacing, mask.ndim)
    box = box_of(mask)
    if box is None:
        return np.empty(0, dtype=np.float64)
    m = pad_crop(mask, box, (1,) * mask.ndim)
    dist, idx = ndimage.distance_transform_edt(m, sampling=sp, return_indices=True)
    # Ridge of the distance map = medial surface (skeletonize thins plates to curves, and
    # some boxes to nothing, while thin layers need their whole mid-surface).
    cross = ndimage.generate_binary_structure(m.ndim, 1)
    ridge = m & (dist >= ndimage.maximum_filter(dist, footprint=cross))
    fg = np.argwhere(m)
    d = dist[m]
    nearest = idx[(slice(None),) + tuple(fg.T)].T  # nearest background voxel of each voxel
    unit = (nearest - fg) * np.asarray(sp) / d[:, None]
    own = d - 0.5 * np.abs(unit) @ np.asarray(sp)  # boundary half a voxel beyond
    q = min(sp) / 4.0
    own = np.maximum(np.round(own / q) * q, q)
    local = np.zeros(m.shape, dtype=np.float64)
    local[m] = 2.0 * own  # every voxel is at least in its own inscribed ball
    on_ridge = ridge[m]
    pts, radius = fg[on_ridge], own[on_ridge]
    for rho in np.unique(radius):  # ascending: larger balls overwrite smaller ones
        seeds = np.zeros(m.shape, dtype=bool)
        sel = pts[radius == rho]
        seeds[tuple(sel.T)] = True
        covered = ndimage.binary_dilation(seeds, structure=_ball(float(rho), sp)) & m
        local[covered] = np.maximum(local[covered], 2.0 * rho)
    return local[m]


def thickness(pred: Any, ref: Any, spacing: Any = None) -> dict[str, float]:
    """Local-thickness statistics (mm) of a thin structure, reference vs prediction.

    Returns
    -------
    dict
        ``thickness_mean_{ref,pred}``, ``thickness_p05_{ref,pred}``,
        ``thickness_p95_{ref,pred}``, ``thickness_mean_diff`` (pred - ref) and
        ``abs_thickness_mean_diff``; NaN for an empty mask.
    """
    pred, ref, sp = _pair(pred, ref, spacing)
    out: dict[str, float] = {}
    for name, m in (("ref", ref), ("pred", pred)):
        t = thickness_values(m, sp)
        has = t.size > 0
        out[f"thickness_mean_{name}"] = float(t.mean()) if has else float("nan")
        out[f"thickness_p05_{name}"] = float(np.percentile(t, 5)) if has else float("nan")
        out[f"thickness_p95_{name}"] = float(np.percentile(t, 95)) if has else float("nan")
    diff = out["thickness_mean_pred"] - out["thickness_mean_ref"]
    out["thickness_mean_diff"] = diff
    out["abs_thickness_mean_diff"] = abs(diff)
    return out
