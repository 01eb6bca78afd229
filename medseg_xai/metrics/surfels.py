"""Surface elements (surfels): neighbour codes of 2x2(x2) voxel cubes and their areas.

A cube of voxel centres whose corners are neither all foreground nor all background holds a
piece of the object's surface. Its corner pattern (the neighbour code, one bit per corner,
first corner the highest bit) indexes a table of the area of that piece in mm^2 (2D: contour
length in mm). This is the scheme of Nikolov et al. 2021 (DeepMind surface-distance), which
MONAI also uses for ``use_subvoxels=True``.

Areas: in 3D the marching-cubes normals come from MONAI (a core dependency), which carries
DeepMind's table; areas are computed from them in float64 exactly as DeepMind does (the norm
of each normal scaled by the products of the other two spacings, summed). In 2D the contour
lengths follow from the geometry of the 16 square patterns (a corner cut is half a diagonal,
a straight cut a full side).
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np

__all__ = ["area_table", "surfels"]


@lru_cache(maxsize=32)
def _table3d(spacing: tuple[float, float, float], precision: str) -> np.ndarray:
    if precision == "float32":
        from monai.metrics.utils import get_code_to_measure_table

        table, _ = get_code_to_measure_table(list(spacing))
        return table.numpy().astype(np.float64)
    from monai.metrics.utils import _get_neighbour_code_to_normals_table

    normals = _get_neighbour_code_to_normals_table(None).numpy().astype(np.float64)
    s0, s1, s2 = spacing
    out = np.zeros(256, dtype=np.float64)
    for code in range(256):
        total = 0.0
        for n in normals[code]:
            v = np.array([n[0] * s1 * s2, n[1] * s0 * s2, n[2] * s0 * s1])
            total += float(np.linalg.norm(v))
        out[code] = total
    return out


@lru_cache(maxsize=32)
def _table2d(spacing: tuple[float, float]) -> np.ndarray:
    # Bits: top-left 8, top-right 4, bottom-left 2, bottom-right 1 (axis 0 downwards).
    vertical, horizontal = spacing
    diag = 0.5 * math.sqrt(spacing[0] ** 2 + spacing[1] ** 2)
    out = np.zeros(16, dtype=np.float64)
    for code in range(1, 15):
        n = bin(code).count("1")
        if n in (1, 3):
            out[code] = diag  # one corner cut off
        elif code in (0b0011, 0b1100):
            out[code] = horizontal  # top pair vs bottom pair
        elif code in (0b0101, 0b1010):
            out[code] = vertical  # left pair vs right pair
        else:
            out[code] = 2 * diag  # opposite corners: two cuts
    return out


def area_table(spacing: tuple[float, ...], precision: str = "float64") -> np.ndarray:
    """Area (mm^2; 2D: length in mm) of the surface patch of each neighbour code."""
    sp = tuple(float(s) for s in spacing)
    if len(sp) == 2:
        table = _table2d(sp)  # type: ignore[arg-type]
        return table.astype(np.float32).astype(np.float64) if precision == "float32" else table
    try:
        return _table3d(sp, precision)  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover - MONAI without the private normals table
        return _table3d(sp, "float32")  # type: ignore[arg-type]


def surfels(
    padded: np.ndarray, spacing: tuple[float, ...], precision: str = "float64"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Surfels of a zero-padded mask (pad >= 1 on every side).

    Returns
    -------
    border : bool array
        Shape ``padded.shape - 1``: cube ``c`` spans voxels ``c .. c + 1`` of ``padded``.
    points : (n,) int array
        Flat (C-order) indices of the surfels in ``border``.
    areas : (n,) float64
        Their areas.
    """
    ndim = padded.ndim
    out_shape = tuple(n - 1 for n in padded.shape)
    code = np.zeros(out_shape, dtype=np.uint8)
    for bit, delta in enumerate(itertools.product((0, 1), repeat=ndim)):
        weight = 1 << (2**ndim - 1 - bit)  # first corner (0, 0, 0) is the highest bit
        sl = tuple(slice(d, d + n) for d, n in zip(delta, out_shape))
        code[padded[sl]] += np.uint8(weight)
    full = 2 ** (2**ndim) - 1
    border = (code != 0) & (code != full)
    points = np.flatnonzero(border)
    areas = area_table(spacing, precision)[code[border]]
    return border, points, areas
