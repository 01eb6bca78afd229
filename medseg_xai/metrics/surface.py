"""Surface-distance metrics: Hausdorff distance (max and percentile), ASSD and NSD.

Conventions (the same as MONAI 1.6 ``compute_hausdorff_distance``,
``compute_average_surface_distance(symmetric=True)`` and ``compute_surface_dice`` without
sub-voxels, which the tests check against MONAI itself):

- The surface of a mask is its edge voxels: the mask minus its binary erosion with the
  face-connected structuring element, voxels outside the image counting as background (so a
  mask touching the image border has edge voxels on the border).
- Distances are Euclidean, in mm, between voxel centres, with voxel ``i`` along an axis at
  ``i * spacing``. Each directed distance is from one surface's edge voxel to the nearest edge
  voxel of the other surface, found exactly with a KD-tree over the edge voxels (surfaces are
  small, so this is much cheaper than a distance transform of the volume). As in MONAI the
  directed distances are rounded to float32 before any statistic or tolerance test.
- HD (``percentile=None`` or 100) is the largest directed distance; HDp is the larger of the two
  directed p-th percentiles, computed like MONAI with ``torch.quantile`` (linear interpolation)
  on the float32 distances.
- ASSD is the mean of all directed distances of both directions pooled together.
- NSD (normalised surface Dice at ``tolerance`` mm) is the share of edge voxels of both surfaces
  whose distance to the other surface is <= tolerance.

Empty masks (``empty=``): both empty -> distances 0 and NSD 1 (``"worst"``) or NaN (``"nan"``);
exactly one empty -> distances equal the image diagonal in mm, ``sqrt(sum((n_i * s_i)^2))``
(longer than any distance between two voxel centres of the image), or NaN, and NSD 0 under both
policies (no edge voxel of the non-empty mask lies within tolerance of anything).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from medseg_xai._validation import check_mask, check_same_shape, check_spacing
from medseg_xai.metrics.overlap import check_empty_policy, edge_case

__all__ = [
    "SurfaceDistances",
    "average_surface_distance",
    "edge_voxels",
    "hausdorff_distance",
    "image_diagonal_mm",
    "normalized_surface_dice",
    "surface_distances",
    "surface_metrics",
]


def _edge_flat(mask: np.ndarray) -> np.ndarray:
    """Sorted flat (C-order) indices of the edge voxels of a C-contiguous bool mask."""
    shape = mask.shape
    flat = mask.ravel()
    idx = np.flatnonzero(flat)
    if idx.size == 0:
        return idx
    coords = np.unravel_index(idx, shape)
    interior = np.ones(idx.size, dtype=bool)
    stride = 1
    for axis in range(mask.ndim - 1, -1, -1):
        c = coords[axis]
        n = shape[axis]
        for step, inside in ((-1, c > 0), (1, c < n - 1)):
            nb = idx + step * stride
            # Out-of-image neighbours count as background; clip the index so the lookup is valid.
            nb[~inside] = 0
            interior &= inside & flat[nb]
        stride *= n
    return idx[~interior]


def edge_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxel indices ``(n, ndim)`` of the edge voxels of a bool mask, in C order.

    An edge voxel is a foreground voxel with at least one face neighbour in the background or
    outside the image; this equals ``mask & ~binary_erosion(mask)`` with scipy's default
    (face-connected) structure and ``border_value=0``. The work is proportional to the number of
    foreground voxels, not to the image size.
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    flat = _edge_flat(mask)
    return np.stack(np.unravel_index(flat, mask.shape), axis=1).reshape(-1, mask.ndim)


def image_diagonal_mm(shape: tuple[int, ...], spacing: tuple[float, ...]) -> float:
    """Diagonal of the image box in mm, ``sqrt(sum((n_i * s_i)^2))``: the worst distance."""
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed surface distances of one binary case (float32, mm).

    ``pred_to_ref[i]`` is the distance from the i-th prediction edge voxel to the nearest
    reference edge voxel, and vice versa. Either array is empty when its mask is empty.
    """

    pred_to_ref: np.ndarray
    ref_to_pred: np.ndarray
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    edge_case: str


def _directed(
    points: np.ndarray, tree: cKDTree | None, shared: np.ndarray | None = None
) -> np.ndarray:
    """Distances from ``points`` to the nearest point of ``tree``, as float32.

    ``shared`` marks points that belong to the other surface too: their distance is exactly 0
    (the KD-tree would return 0.0 for them as well), so they are not queried.
    """
    if points.shape[0] == 0:
        return np.empty(0, dtype=np.float32)
    if tree is None:  # the other surface is empty: no finite distance exists
        return np.full(points.shape[0], np.inf, dtype=np.float32)
    # Round to float32 like MONAI so statistics and the NSD tolerance test agree with it.
    out = np.zeros(points.shape[0], dtype=np.float32)
    todo = ~shared if shared is not None else np.ones(points.shape[0], dtype=bool)
    if todo.any():
        out[todo] = tree.query(points[todo], k=1)[0]
    return out


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]
) -> SurfaceDistances:
    """Directed distances between the surfaces of two validated bool masks.

    One edge extraction and one KD-tree query per direction; every surface metric of the case
    is derived from the result (:func:`surface_metrics`).
    """
    pred = np.ascontiguousarray(pred, dtype=bool)
    ref = np.ascontiguousarray(ref, dtype=bool)
    flat_pred, flat_ref = _edge_flat(pred), _edge_flat(ref)
    scale = np.asarray(spacing, dtype=np.float64)

    def points(flat: np.ndarray) -> np.ndarray:
        coords = np.unravel_index(flat, pred.shape)
        return np.stack(coords, axis=1).reshape(-1, pred.ndim).astype(np.float64) * scale

    pts_pred, pts_ref = points(flat_pred), points(flat_ref)
    # leafsize 32 matches MONAI; the query itself is exact whatever the tree layout.
    tree_ref = cKDTree(pts_ref, leafsize=32) if len(pts_ref) else None
    tree_pred = cKDTree(pts_pred, leafsize=32) if len(pts_pred) else None
    return SurfaceDistances(
        pred_to_ref=_directed(pts_pred, tree_ref, np.isin(flat_pred, flat_ref, assume_unique=True)),
        ref_to_pred=_directed(pts_ref, tree_pred, np.isin(flat_ref, flat_pred, assume_unique=True)),
        shape=tuple(pred.shape),
        spacing=tuple(spacing),
        edge_case=edge_case(len(pts_pred), len(pts_ref)),
    )


def _check_percentile(percentile: float | None) -> float | None:
    if percentile is None:
        return None
    p = float(percentile)
    if not (np.isfinite(p) and 0 <= p <= 100):
        raise ValueError(f"percentile: expected a number in [0, 100] or None, got {percentile!r}")
    return None if p == 100 else p


def _check_tolerance(tolerance: float) -> float:
    tol = float(tolerance)
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tolerance: expected a finite distance >= 0 in mm, got {tolerance!r}")
    return tol


def torch_quantile(d: np.ndarray, q: float) -> float:
    """``torch.quantile(torch.from_numpy(d), q)`` for a 1D float32 array, without the full sort.

    MONAI's percentile HD goes through ``torch.quantile`` on float32 distances, whose float32
    rank and interpolation arithmetic differs from a float64 percentile by up to ~1e-6
    relative. This replays the same torch operations (rank ``q * (n - 1)`` in float32,
    ``lerp`` between the two neighbouring order statistics) on one-element tensors, and takes
    the order statistics from ``numpy.partition`` (O(n)) instead of sorting; the tests check
    it is bit-identical to ``torch.quantile``. torch is a core dependency, imported here so that
    importing the metrics stays light.
    """
    import torch

    n = d.size
    ranks = torch.scalar_tensor(q, dtype=torch.float32).reshape(1) * (n - 1)
    below = int(ranks.to(torch.long))
    above = int(torch.ceil(ranks).to(torch.long))
    part = np.partition(d, (below, above) if above != below else below)
    v_below = torch.tensor([part[below]], dtype=torch.float32)
    v_above = torch.tensor([part[above]], dtype=torch.float32)
    weights = ranks - ranks.to(torch.long)
    return float(v_below.lerp_(v_above, weights)[0])


def _percentile_hd(d: np.ndarray, percentile: float | None) -> float:
    if percentile is None:
        return float(d.max())
    return torch_quantile(d, percentile / 100.0)


def surface_metrics(
    sd: SurfaceDistances,
    *,
    percentile: float | None = 95,
    tolerance: float = 1.0,
    empty: str = "worst",
) -> dict[str, float]:
    """HD, HDp, ASSD and NSD from precomputed surface distances.

    Returns
    -------
    dict
        ``hd`` (maximum), ``hd95`` (the ``percentile``-th percentile HD, whatever its value),
        ``assd`` and ``nsd``, following the empty-mask policy ``empty``.
    """
    check_empty_policy(empty)
    p = _check_percentile(percentile)
    tol = _check_tolerance(tolerance)
    if sd.edge_case == "both_empty":
        good = 1.0 if empty == "worst" else float("nan")
        dist = 0.0 if empty == "worst" else float("nan")
        return {"hd": dist, "hd95": dist, "assd": dist, "nsd": good}
    if sd.edge_case != "none":
        worst = image_diagonal_mm(sd.shape, sd.spacing) if empty == "worst" else float("nan")
        return {"hd": worst, "hd95": worst, "assd": worst, "nsd": 0.0}
    a, b = sd.pred_to_ref, sd.ref_to_pred
    n = a.size + b.size
    tol32 = np.float32(tol)
    return {
        "hd": max(float(a.max()), float(b.max())),
        "hd95": max(_percentile_hd(a, p), _percentile_hd(b, p)),
        "assd": (float(a.sum(dtype=np.float64)) + float(b.sum(dtype=np.float64))) / n,
        "nsd": (int(np.count_nonzero(a <= tol32)) + int(np.count_nonzero(b <= tol32))) / n,
    }


def _prepare(pred: Any, ref: Any, spacing: Any) -> SurfaceDistances:
    pred = check_mask(pred, "pred")
    ref = check_mask(ref, "ref")
    check_same_shape(pred, ref, ("pred", "ref"))
    sp = check_spacing(spacing, pred.ndim)
    return surface_distances(pred, ref, sp)


def hausdorff_distance(
    pred: Any,
    ref: Any,
    spacing: Any = None,
    percentile: float | None = 95,
    *,
    empty: str = "worst",
) -> float:
    """Symmetric Hausdorff distance in mm between the surfaces of two binary masks.

    Parameters
    ----------
    pred, ref : array-like
        Binary masks of the same 2D or 3D shape.
    spacing : sequence of float, optional
        Voxel size in mm per axis (default 1.0).
    percentile : float or None
        Percentile of the directed distances (default 95, i.e. HD95); None or 100 gives the
        maximum (classic HD).
    empty : {"worst", "nan"}
        Both empty -> 0 (or NaN); one empty -> the image diagonal in mm (or NaN).
    """
    p = _check_percentile(percentile)
    out = surface_metrics(_prepare(pred, ref, spacing), percentile=p, empty=empty)
    return out["hd"] if p is None else out["hd95"]


def average_surface_distance(
    pred: Any, ref: Any, spacing: Any = None, *, empty: str = "worst"
) -> float:
    """Average symmetric surface distance (ASSD) in mm.

    Mean of the pooled directed distances of both surfaces. Both empty -> 0 (``"worst"``) or NaN;
    one empty -> the image diagonal in mm or NaN.
    """
    return surface_metrics(_prepare(pred, ref, spacing), empty=empty)["assd"]


def normalized_surface_dice(
    pred: Any, ref: Any, tolerance: float, spacing: Any = None, *, empty: str = "worst"
) -> float:
    """Normalised surface Dice: share of edge voxels within ``tolerance`` mm of the other surface.

    Both empty -> 1 (``"worst"``) or NaN; exactly one empty -> 0 under both policies.
    """
    return surface_metrics(_prepare(pred, ref, spacing), tolerance=tolerance, empty=empty)["nsd"]
