"""Surface-distance metrics: Hausdorff distance (max and percentile), ASSD, MASD and NSD.

``convention=`` selects a peer library's definitions (:mod:`medseg_xai.metrics.conventions`).
The default, ``"monai"``, is MONAI 1.6 ``compute_hausdorff_distance``,
``compute_average_surface_distance(symmetric=True)`` and ``compute_surface_dice`` (also with
``use_subvoxels``), which the tests check against MONAI itself:

- The surface of a mask is its edge voxels: the mask minus its binary erosion with the
  face-connected structuring element, voxels outside the image counting as background (so a
  mask touching the image border has edge voxels on the border).
- Distances are Euclidean, in mm, between voxel centres, with voxel ``i`` along an axis at
  ``i * spacing``. Each directed distance is from one surface's edge voxel to the nearest edge
  voxel of the other surface, found exactly on the voxel lattice (:mod:`._nearest`: a KD-tree
  for small surfaces, an offset scan for large ones; both equal a distance transform of the
  other surface, at a fraction of its cost). As in MONAI the directed distances are rounded
  to float32 before any statistic or tolerance test.
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
``empty="convention"`` returns the peer library's own values instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg_xai._validation import check_mask, check_same_shape, check_spacing
from medseg_xai.metrics._nearest import (
    SCAN_MIN_POINTS,
    box_of,
    directed_distances,
    pad_crop,
    scan_pad,
)
from medseg_xai.metrics.conventions import EMPTY_VALUES, check_convention
from medseg_xai.metrics.overlap import check_empty_policy, edge_case

__all__ = [
    "SurfaceDistances",
    "average_surface_distance",
    "edge_voxels",
    "hausdorff_distance",
    "case_surface_metrics",
    "image_diagonal_mm",
    "mean_average_surface_distance",
    "normalized_surface_dice",
    "surfel_distances",
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
    """Directed surface distances of one binary case (float64, mm).

    ``pred_to_ref[i]`` is the distance from the i-th prediction surface point to the nearest
    reference surface point, and vice versa; either array is empty when its mask is empty.
    ``kind`` is ``"voxel"`` (edge voxels, MONAI / MedPy / MetricsReloaded / panoptica) or
    ``"surfel"`` (cube-corner surface elements with their areas ``pred_areas`` /
    ``ref_areas`` in mm^2, mm in 2D: DeepMind, MONAI ``use_subvoxels``).
    """

    pred_to_ref: np.ndarray
    ref_to_pred: np.ndarray
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    edge_case: str
    kind: str = "voxel"
    pred_areas: np.ndarray | None = None
    ref_areas: np.ndarray | None = None


def _edges_padded(padded: np.ndarray, pad: tuple[int, ...]) -> np.ndarray:
    """Edge voxels of a zero-padded mask (pad >= 1), on the same padded grid.

    The plain bool form of :func:`_edges_box`, kept as the reference the tests compare it to.
    """
    core = tuple(slice(p, n - p) for p, n in zip(pad, padded.shape))
    inner = padded[core]
    interior = inner.copy()
    for axis in range(padded.ndim):
        for step in (-1, 1):
            sl = list(core)
            sl[axis] = slice(core[axis].start + step, core[axis].stop + step)
            interior &= padded[tuple(sl)]
    out = np.zeros_like(padded)
    out[core] = inner & ~interior
    return out


def _shift_and(inter: np.ndarray, p: np.ndarray, axis: int) -> None:
    """``inter &= both face neighbours of p along a leading axis`` (outside = background)."""
    nd = p.ndim
    lo, hi = [slice(None)] * nd, [slice(None)] * nd
    lo[axis], hi[axis] = slice(0, -1), slice(1, None)
    inter[tuple(hi)] &= p[tuple(lo)]
    inter[tuple(lo)] &= p[tuple(hi)]
    for end in (0, -1):
        sl = [slice(None)] * nd
        sl[axis] = end
        inter[tuple(sl)] = 0


def _edges_box(mask: np.ndarray, box: tuple[slice, ...], pad: tuple[int, ...]):
    """Edge voxels of ``mask`` (all foreground inside ``box``) on the zero-padded box grid.

    Returns their sorted flat indices on the grid ``box + 2 * pad`` and that grid as a bool
    mask, as ``_edges_padded(pad_crop(mask, box, pad), pad)`` does. The erosion runs on the
    crop packed 8 voxels to a byte along the last axis (``np.packbits``: big-endian bits, so
    voxel ``x - 1`` is the next more significant bit): an eighth of the memory traffic of the
    bool passes, and no padded copy of the mask.
    """
    crop = mask[box]
    p = np.packbits(crop, axis=-1)
    inter = p.copy()
    for axis in range(p.ndim - 1):
        _shift_and(inter, p, axis)
    nb = np.zeros_like(p)
    nb[..., 1:] = p[..., :-1]  # the previous byte: its last bit is the first voxel's left
    inter &= (p >> 1) | (nb << 7)
    nb[..., :-1] = p[..., 1:]  # the next byte: its first bit is the last voxel's right
    nb[..., -1] = 0
    inter &= (p << 1) | (nb >> 7)
    edge = p & ~inter
    byte = np.flatnonzero(edge)
    row, bit = np.nonzero(np.unpackbits(edge.ravel()[byte]).reshape(-1, 8))
    coords = list(np.unravel_index(byte[row], edge.shape))
    coords[-1] = coords[-1] * 8 + bit
    grid = tuple(n + 2 * q for n, q in zip(crop.shape, pad))
    flat = np.ravel_multi_index(tuple(c + q for c, q in zip(coords, pad)), grid)
    out = np.zeros(grid, dtype=bool)
    out.ravel()[flat] = True
    return flat, out


def surface_distances(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    *,
    box: tuple[slice, ...] | None = None,
) -> SurfaceDistances:
    """Directed distances between the edge voxels of two validated bool masks.

    The masks are cropped to the box of their union (zero-padded, so voxels outside the image
    stay background) and each directed distance is found exactly on the voxel lattice
    (:mod:`medseg_xai.metrics._nearest`), equal to a distance transform of the other surface
    evaluated at this surface's voxels. Every surface metric of the case derives from the
    result (:func:`surface_metrics`). ``box``: the box of the union when the caller has it
    already (``box_of(pred, ref)``, a pass over both volumes).
    """
    pred = np.ascontiguousarray(pred, dtype=bool)
    ref = np.ascontiguousarray(ref, dtype=bool)
    shape, sp = tuple(pred.shape), tuple(float(s) for s in spacing)
    if box is None:
        box = box_of(pred, ref)
    if box is None:
        empty = np.empty(0, dtype=np.float64)
        return SurfaceDistances(empty, empty.copy(), shape, sp, "both_empty")
    n_fg = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    pad = scan_pad(sp)
    if n_fg * 16 < int(np.prod([b.stop - b.start for b in box])):
        # Structures far apart in a large box (lesions spread over the image): edges from the
        # foreground voxels alone, never a pass over the box.
        fp, fr = _edge_flat(pred), _edge_flat(ref)
        if len(fp) < SCAN_MIN_POINTS and len(fr) < SCAN_MIN_POINTS:
            grid = np.broadcast_to(False, shape)  # the lattice's shape; no memory
            return SurfaceDistances(
                pred_to_ref=directed_distances(fp, grid, fr, sp, scan=False),
                ref_to_pred=directed_distances(fr, grid, fp, sp, scan=False),
                shape=shape,
                spacing=sp,
                edge_case=edge_case(len(fp), len(fr)),
            )
        # Large surfaces: scatter the edges into a zero-padded crop (zeros are allocated
        # lazily, so only pages holding edges are touched) and scan.
        crop = tuple(b.stop - b.start + 2 * p for b, p in zip(box, pad))

        def local(flat: np.ndarray) -> np.ndarray:
            coords = np.unravel_index(flat, shape)
            return np.ravel_multi_index(
                tuple(c - b.start + p for c, b, p in zip(coords, box, pad)), crop)

        lp, lr = local(fp), local(fr)
        ep = np.zeros(crop, dtype=bool)
        er = np.zeros(crop, dtype=bool)
        ep.ravel()[lp] = True
        er.ravel()[lr] = True
        return SurfaceDistances(
            pred_to_ref=directed_distances(lp, er, lr, sp, scan=len(lp) >= SCAN_MIN_POINTS),
            ref_to_pred=directed_distances(lr, ep, lp, sp, scan=len(lr) >= SCAN_MIN_POINTS),
            shape=shape,
            spacing=sp,
            edge_case=edge_case(len(lp), len(lr)),
        )
    pts_p, ep = _edges_box(pred, box, pad)
    pts_r, er = _edges_box(ref, box, pad)
    return SurfaceDistances(
        pred_to_ref=directed_distances(pts_p, er, pts_r, sp, scan=len(pts_p) >= SCAN_MIN_POINTS),
        ref_to_pred=directed_distances(pts_r, ep, pts_p, sp, scan=len(pts_r) >= SCAN_MIN_POINTS),
        shape=shape,
        spacing=sp,
        edge_case=edge_case(len(pts_p), len(pts_r)),
    )


def surfel_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], *, areas: str = "float64"
) -> SurfaceDistances:
    """Directed distances and areas of the surface elements of two validated bool masks.

    Surface elements are the 2x2(x2) cubes of voxel centres that hold both foreground and
    background (the neighbour code of Nikolov et al., DeepMind surface-distance, also used by
    MONAI's ``use_subvoxels``); each has the area (2D: length) of its marching-cubes patch from
    :mod:`medseg_xai.metrics.surfels`. Distances are between cube corners, in mm.
    ``areas="float32"`` uses MONAI's float32 area table (``use_subvoxels``).
    """
    from medseg_xai.metrics.surfels import surfels

    pred = np.ascontiguousarray(pred, dtype=bool)
    ref = np.ascontiguousarray(ref, dtype=bool)
    shape, sp = tuple(pred.shape), tuple(float(s) for s in spacing)
    box = box_of(pred, ref)
    if box is None:
        empty = np.empty(0, dtype=np.float64)
        return SurfaceDistances(empty, empty.copy(), shape, sp, "both_empty", "surfel",
                                empty.copy(), empty.copy())
    pad = tuple(p + 1 for p in scan_pad(sp))
    bp, pts_p, ap = surfels(pad_crop(pred, box, pad), sp, areas)
    br, pts_r, ar = surfels(pad_crop(ref, box, pad), sp, areas)
    return SurfaceDistances(
        pred_to_ref=directed_distances(pts_p, br, pts_r, sp, scan=len(pts_p) >= SCAN_MIN_POINTS),
        ref_to_pred=directed_distances(pts_r, bp, pts_p, sp, scan=len(pts_r) >= SCAN_MIN_POINTS),
        shape=shape,
        spacing=sp,
        edge_case=edge_case(int(pred.any()), int(ref.any())),
        kind="surfel",
        pred_areas=ap,
        ref_areas=ar,
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


def _np_percentile(d: np.ndarray, percentile: float | None) -> float:
    return float(d.max()) if percentile is None else float(np.percentile(d, percentile))


def _voxel_stats(a: np.ndarray, b: np.ndarray, convention: str, p: float | None, tol: float):
    """Surface statistics of a non-empty case from voxel-edge distances (pred->ref, ref->pred)."""
    if convention == "monai":
        # MONAI rounds the distances to float32 before any statistic or tolerance test.
        a, b = a.astype(np.float32), b.astype(np.float32)
        n = a.size + b.size
        tol32 = np.float32(tol)
        return {
            "hd": max(float(a.max()), float(b.max())),
            "hd95": max(_percentile_hd(a, p), _percentile_hd(b, p)),
            "assd": (float(a.sum(dtype=np.float64)) + float(b.sum(dtype=np.float64))) / n,
            "masd": 0.5 * (float(a.mean(dtype=np.float64)) + float(b.mean(dtype=np.float64))),
            "nsd": (int(np.count_nonzero(a <= tol32)) + int(np.count_nonzero(b <= tol32))) / n,
        }
    hd = max(float(a.max()), float(b.max()))
    masd = 0.5 * (float(a.mean()) + float(b.mean()))
    within = (int(np.count_nonzero(a <= tol)) + int(np.count_nonzero(b <= tol))) / (a.size + b.size)
    if convention == "medpy":
        return {
            "hd": hd,
            "hd95": _np_percentile(np.hstack((a, b)), p),
            "assd": float(np.concatenate([a, b]).mean()),
            "masd": masd,
            "nsd": within,
        }
    if convention == "metricsreloaded":
        return {
            "hd": hd,
            "hd95": max(_np_percentile(a, p), _np_percentile(b, p)),
            "assd": (float(a.sum()) + float(b.sum())) / (a.size + b.size),
            "masd": 0.5 * (float(a.sum()) / a.size + float(b.sum()) / b.size),
            "nsd": within,
        }
    # panoptica: HD95 over the pooled distances, ASSD = mean of the directed means, NSD = the
    # GaNDLF form (mean of the two directed shares within tolerance).
    tp_a = np.sum(a <= tol) / a.size
    tp_b = np.sum(b <= tol) / b.size
    fp = np.sum(a > tol) / a.size
    fn = np.sum(b > tol) / b.size
    mean_of_means = float(np.mean((b.mean(), a.mean())))
    return {
        "hd": hd,
        "hd95": _np_percentile(np.hstack((a, b)), p),
        "assd": mean_of_means,
        "masd": mean_of_means,
        "nsd": float((tp_a + tp_b) / (tp_a + tp_b + fp + fn + sys.float_info.min)),
    }


def _sorted_surfels(d: np.ndarray, areas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by (distance, area), the order DeepMind's statistics run in."""
    order = np.lexsort((areas, d))
    return d[order], areas[order]


def _robust_hd(d: np.ndarray, areas: np.ndarray, percent: float) -> float:
    cum = np.cumsum(areas) / np.sum(areas)
    idx = int(np.searchsorted(cum, percent / 100.0))
    return float(d[min(idx, len(d) - 1)])


def _surfel_stats(sd: SurfaceDistances, p: float | None, tol: float) -> dict[str, float]:
    """DeepMind statistics (area-weighted) of a non-empty case; gt = ref."""
    d_gt, a_gt = _sorted_surfels(sd.ref_to_pred, sd.ref_areas)  # type: ignore[arg-type]
    d_pr, a_pr = _sorted_surfels(sd.pred_to_ref, sd.pred_areas)  # type: ignore[arg-type]
    pct = 100.0 if p is None else p
    avg_gt = np.sum(d_gt * a_gt) / np.sum(a_gt)
    avg_pr = np.sum(d_pr * a_pr) / np.sum(a_pr)
    return {
        "hd": max(_robust_hd(d_gt, a_gt, 100.0), _robust_hd(d_pr, a_pr, 100.0)),
        "hd95": max(_robust_hd(d_gt, a_gt, pct), _robust_hd(d_pr, a_pr, pct)),
        "assd": float((np.sum(d_gt * a_gt) + np.sum(d_pr * a_pr)) / (np.sum(a_gt) + np.sum(a_pr))),
        "masd": float(0.5 * (avg_gt + avg_pr)),
        "nsd": float(
            (np.sum(a_gt[d_gt <= tol]) + np.sum(a_pr[d_pr <= tol])) / (np.sum(a_gt) + np.sum(a_pr))
        ),
    }


def _subvoxel_nsd(sd: SurfaceDistances, tol: float) -> float:
    """MONAI's ``use_subvoxels`` surface Dice: area-weighted share within tolerance."""
    a_p, a_r = sd.pred_areas, sd.ref_areas
    within = float(a_p[sd.pred_to_ref <= tol].sum()) + float(a_r[sd.ref_to_pred <= tol].sum())
    return within / (float(a_p.sum()) + float(a_r.sum()))


def _empty_values(sd: SurfaceDistances, empty: str, convention: str) -> dict[str, float]:
    if empty == "convention":
        which = "both_empty" if sd.edge_case == "both_empty" else "one_empty"
        return dict(EMPTY_VALUES[convention][which])
    nan = float("nan")
    if sd.edge_case == "both_empty":
        dist = 0.0 if empty == "worst" else nan
        good = 1.0 if empty == "worst" else nan
        return {"hd": dist, "hd95": dist, "assd": dist, "masd": dist, "nsd": good}
    worst = image_diagonal_mm(sd.shape, sd.spacing) if empty == "worst" else nan
    return {"hd": worst, "hd95": worst, "assd": worst, "masd": worst, "nsd": 0.0}


def surface_metrics(
    sd: SurfaceDistances,
    *,
    percentile: float | None = 95,
    tolerance: float = 1.0,
    empty: str = "worst",
    convention: str = "monai",
    subvoxel: SurfaceDistances | None = None,
) -> dict[str, float]:
    """HD, HDp, ASSD, MASD and NSD from precomputed surface distances.

    Parameters
    ----------
    sd : SurfaceDistances
        Voxel-edge distances (surfels for ``convention="deepmind"``).
    convention : str
        One of :data:`medseg_xai.metrics.conventions.CONVENTIONS`.
    subvoxel : SurfaceDistances, optional
        Surfel distances for MONAI's ``use_subvoxels`` NSD (``convention="monai"`` only).

    Returns
    -------
    dict
        ``hd`` (maximum), ``hd95`` (the ``percentile``-th percentile HD, whatever its value),
        ``assd``, ``masd`` and ``nsd``, following the empty-mask policy ``empty``.
    """
    check_empty_policy(empty)
    check_convention(convention)
    p = _check_percentile(percentile)
    tol = _check_tolerance(tolerance)
    if sd.edge_case != "none":
        return _empty_values(sd, empty, convention)
    if sd.kind == "surfel":
        return _surfel_stats(sd, p, tol)
    out = _voxel_stats(sd.pred_to_ref, sd.ref_to_pred, convention, p, tol)
    if subvoxel is not None:
        out["nsd"] = _subvoxel_nsd(subvoxel, tol)
    return out


def case_surface_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...],
    *,
    percentile: float | None = 95,
    tolerance: float = 1.0,
    empty: str = "worst",
    convention: str = "monai",
    use_subvoxels: bool = False,
    box: tuple[slice, ...] | None = None,
) -> dict[str, float]:
    """Every surface metric of two validated bool masks under ``convention``.

    ``box``: the box of the union (``box_of(pred, ref)``) when the caller has it already.
    """
    check_convention(convention)
    if use_subvoxels and convention != "monai":
        raise ValueError(
            f"use_subvoxels: MONAI's sub-voxel surface Dice exists for convention='monai' only, "
            f"got convention={convention!r} (deepmind is surfel-based already)"
        )
    if convention == "deepmind":
        sd = surfel_distances(pred, ref, spacing)
        return surface_metrics(sd, percentile=percentile, tolerance=tolerance, empty=empty,
                               convention=convention)
    sd = surface_distances(pred, ref, spacing, box=box)
    sub = None
    if use_subvoxels and sd.edge_case == "none":
        sub = surfel_distances(pred, ref, spacing, areas="float32")
    return surface_metrics(sd, percentile=percentile, tolerance=tolerance, empty=empty,
                           convention=convention, subvoxel=sub)


def _prepare(pred: Any, ref: Any, spacing: Any) -> tuple[np.ndarray, np.ndarray, tuple]:
    pred = check_mask(pred, "pred")
    ref = check_mask(ref, "ref")
    check_same_shape(pred, ref, ("pred", "ref"))
    return pred, ref, check_spacing(spacing, pred.ndim)


_EMPTY_DOC = """empty : {"worst", "nan", "convention"}
        ``"worst"``: both empty -> distances 0, NSD 1; one empty -> distances = the image
        diagonal in mm, NSD 0. ``"nan"``: undefined values NaN. ``"convention"``: the values
        the convention's library returns (:data:`medseg_xai.metrics.conventions.EMPTY_VALUES`).
    convention : str
        ``"monai"`` (default), ``"medpy"``, ``"deepmind"``, ``"metricsreloaded"`` or
        ``"panoptica"`` (:mod:`medseg_xai.metrics.conventions`)."""


def hausdorff_distance(
    pred: Any,
    ref: Any,
    spacing: Any = None,
    percentile: float | None = 95,
    *,
    empty: str = "worst",
    convention: str = "monai",
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
    {empty}
    """
    p = _check_percentile(percentile)
    out = case_surface_metrics(*_prepare(pred, ref, spacing), percentile=p, empty=empty,
                               convention=convention)
    return out["hd"] if p is None else out["hd95"]


def average_surface_distance(
    pred: Any, ref: Any, spacing: Any = None, *, empty: str = "worst", convention: str = "monai"
) -> float:
    """Average symmetric surface distance (ASSD) in mm.

    Mean of the pooled directed distances of both surfaces (monai, medpy, metricsreloaded;
    area-weighted for deepmind), or the mean of the two directed means (panoptica).

    Parameters
    ----------
    {empty}
    """
    return case_surface_metrics(*_prepare(pred, ref, spacing), empty=empty,
                                convention=convention)["assd"]


def mean_average_surface_distance(
    pred: Any, ref: Any, spacing: Any = None, *, empty: str = "worst", convention: str = "monai"
) -> float:
    """Mean average surface distance (MASD) in mm: the mean of the two directed mean distances.

    Parameters
    ----------
    {empty}
    """
    return case_surface_metrics(*_prepare(pred, ref, spacing), empty=empty,
                                convention=convention)["masd"]


def normalized_surface_dice(
    pred: Any,
    ref: Any,
    tolerance: float,
    spacing: Any = None,
    *,
    empty: str = "worst",
    convention: str = "monai",
    use_subvoxels: bool = False,
) -> float:
    """Normalised surface Dice: share of the surfaces within ``tolerance`` mm of each other.

    Edge voxels are counted (monai, medpy, metricsreloaded; panoptica averages the two
    directed shares); surfels are weighted by area for deepmind and for MONAI's
    ``use_subvoxels=True``.

    Parameters
    ----------
    {empty}
    use_subvoxels : bool
        MONAI's sub-voxel surface Dice (``convention="monai"`` only).
    """
    return case_surface_metrics(*_prepare(pred, ref, spacing), tolerance=tolerance, empty=empty,
                                convention=convention, use_subvoxels=use_subvoxels)["nsd"]


for _f in (hausdorff_distance, average_surface_distance, mean_average_surface_distance,
           normalized_surface_dice):
    _f.__doc__ = _f.__doc__.replace("{empty}", _EMPTY_DOC)  # type: ignore[union-attr]
