"""Exact nearest-surface distances on a voxel lattice, fast at every structure size.

Both surfaces are point sets of one lattice (voxel centres, or the cube corners of the surfel
grid), so the distance from a point to the nearest point of the other surface is the length of
the shortest lattice offset ``o`` that lands on the other surface, ``sqrt(sum((o_i * s_i)^2))``
in mm. That is the formula of ``scipy.ndimage.distance_transform_edt(sampling=spacing)``, which
MONAI, MedPy, MetricsReloaded, panoptica and DeepMind surface-distance evaluate at the other
surface's points, so the values are theirs bit for bit.

Two exact ways of finding the offset, chosen by surface size:

- few points: a KD-tree over the other surface (cost ~ n log n, tiny for small lesions);
- many points (organs): scan the lattice offsets in increasing length on a zero-padded crop,
  one vectorised look-up per offset for the points still unresolved. Most points of two
  similar surfaces are a few voxels apart, so almost all are resolved by the first offsets;
  the rare far points left when the offset budget is spent go to the KD-tree. This replaces a
  distance transform of the whole box (what the peers do) by work proportional to the surface.

Every distance, whichever way it was found, is recomputed from its integer offset with the same
formula, so both paths give identical floats.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["box_of", "directed_distances", "lattice_distance", "pad_crop"]

# Above this many source points the offset scan beats the KD-tree (measured in
# benchmarks/bench_metrics.py); below it the tree is cheaper than the per-offset overhead.
SCAN_MIN_POINTS = 4000
# Offsets scanned before the unresolved rest goes to the KD-tree.
SCAN_MAX_OFFSETS = 1000


def box_of(*masks: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box holding the foreground of every mask (None when all are empty).

    Projections are OR-reduced as 64-bit words where the row length allows it: one pass over
    the volume at memory speed instead of a boolean reduction per axis.
    """
    shape = masks[0].shape
    rows = int(np.prod(shape[1:]))
    lead = np.zeros(shape[0], dtype=bool)
    plane = np.zeros(shape[1:], dtype=bool)
    for m in masks:
        m = np.ascontiguousarray(m, dtype=bool)
        if rows % 8 == 0:
            words = m.reshape(shape[0], rows // 8 * 8).view(np.uint64)
            lead |= words.any(axis=1)
            plane |= np.bitwise_or.reduce(words, axis=0).view(bool).reshape(shape[1:])
        else:
            lead |= m.reshape(shape[0], -1).any(axis=1)
            plane |= m.any(axis=0)
    hit = np.flatnonzero(lead)
    if hit.size == 0:
        return None
    box = [slice(int(hit[0]), int(hit[-1]) + 1)]
    for axis in range(plane.ndim):
        other = tuple(a for a in range(plane.ndim) if a != axis)
        h = np.flatnonzero(plane.any(axis=other) if other else plane)
        box.append(slice(int(h[0]), int(h[-1]) + 1))
    return tuple(box)


def pad_crop(mask: np.ndarray, box: tuple[slice, ...], pad: tuple[int, ...]) -> np.ndarray:
    """``mask[box]`` with ``pad[i]`` background voxels added on both sides of axis ``i``."""
    crop = mask[box]
    out = np.zeros(tuple(n + 2 * p for n, p in zip(crop.shape, pad)), dtype=bool)
    out[tuple(slice(p, p + n) for n, p in zip(crop.shape, pad))] = crop
    return out


def lattice_distance(offsets: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """``sqrt(sum_i (o_i * s_i)^2)`` summed in axis order, as scipy's distance transform does."""
    acc = np.zeros(offsets.shape[0], dtype=np.float64)
    for axis, s in enumerate(spacing):
        d = offsets[:, axis].astype(np.float64) * s
        acc += d * d
    return np.sqrt(acc)


def scan_radius(spacing: tuple[float, ...], budget: int = SCAN_MAX_OFFSETS) -> float:
    """Radius in mm of the ball holding about ``budget`` lattice offsets."""
    cell = float(np.prod(spacing))
    if len(spacing) == 2:
        return math.sqrt(budget * cell / math.pi)
    return (budget * cell * 3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)


def scan_pad(spacing: tuple[float, ...], budget: int = SCAN_MAX_OFFSETS) -> tuple[int, ...]:
    """Padding (voxels per axis) that keeps every scanned offset inside the padded crop."""
    r = scan_radius(spacing, budget)
    return tuple(int(math.floor(r / s)) + 1 for s in spacing)


def _offsets(spacing: tuple[float, ...], pad: tuple[int, ...], radius: float):
    """Lattice offsets of length <= radius (|o_i| < pad_i), sorted by length, with lengths."""
    axes = [np.arange(-(p - 1), p) for p in pad]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, len(pad))
    dist = lattice_distance(grid, spacing)
    keep = dist <= radius
    grid, dist = grid[keep], dist[keep]
    order = np.argsort(dist, kind="stable")
    return grid[order], dist[order]


@lru_cache(maxsize=64)
def _shells(spacing: tuple[float, ...]):
    """Scanned offsets grouped by equal length: [(flat offsets per stride set, length)]."""
    pad = scan_pad(spacing)
    offs, lens = _offsets(spacing, pad, scan_radius(spacing))
    cut = np.flatnonzero(np.diff(lens)) + 1
    return [(o, float(d[0])) for o, d in zip(np.split(offs, cut), np.split(lens, cut))]


def directed_distances(
    src: np.ndarray,
    dst_mask: np.ndarray,
    dst: np.ndarray,
    spacing: tuple[float, ...],
    *,
    scan: bool,
) -> np.ndarray:
    """Distance (mm, float64) from each ``src`` point to the nearest point of ``dst_mask``.

    Parameters
    ----------
    src, dst : int arrays
        Flat (C-order) indices of the source points and of the other surface's points in
        ``dst_mask``'s grid.
    dst_mask : bool array
        The other surface on the padded crop, C-contiguous; its padding must exceed every
        scanned offset (:func:`scan_pad`).
    spacing : tuple of float
        Lattice spacing in mm.
    scan : bool
        Offset scan first (large surfaces) or the KD-tree straight away.
    """
    n = src.shape[0]
    out = np.empty(n, dtype=np.float64)
    if n == 0:
        return out
    if dst.shape[0] == 0:
        out.fill(np.inf)
        return out
    todo = np.arange(n)
    if scan and dst_mask.size >= 1 << 32:
        scan = False  # flat indices must fit the low 32 bits of the packed bookkeeping
    if scan:
        strides = np.array(dst_mask.strides, dtype=np.int64)  # bool: strides are element steps
        flat_dst = dst_mask.ravel()
        # Each unresolved point as one int64: its position in ``out`` (high bits) and its flat
        # index (low 32 bits), so one compaction per shell keeps both.
        cur = src.astype(np.int64)
        packed = (todo.astype(np.int64) << 32) | cur
        low = np.int64(0xFFFFFFFF)
        for offs, d in _shells(spacing):
            flat_offs = (offs.astype(np.int64) @ strides).tolist()
            hit = flat_dst[cur + flat_offs[0]]
            for off in flat_offs[1:]:
                hit |= flat_dst[cur + off]
            k = int(np.count_nonzero(hit))
            if k:
                out[packed[hit] >> 32] = d
                if k == cur.size:
                    return out
                packed = packed[~hit]
                cur = packed & low
        todo = packed >> 32
        src = cur
    else:
        src = src[todo]
    shape = dst_mask.shape
    scale = np.asarray(spacing, dtype=np.float64)
    dst_pts = np.stack(np.unravel_index(dst, shape), axis=1).reshape(-1, len(shape))
    src_pts = np.stack(np.unravel_index(src, shape), axis=1).reshape(-1, len(shape))
    # Few queries against many points: an unbalanced tree with large leaves builds fastest.
    tree = cKDTree(dst_pts * scale, leafsize=128, balanced_tree=False, compact_nodes=False)
    _, j = tree.query(src_pts * scale, k=1)
    # Recomputed from the integer offset, like the scan. Where two offsets have the same
    # length in exact arithmetic the tree may return either, so such a distance can differ
    # from a distance transform's in the last bit.
    out[todo] = lattice_distance(dst_pts[j] - src_pts, spacing)
    return out
