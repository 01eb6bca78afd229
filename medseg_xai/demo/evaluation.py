"""Small, dependency-free scoring used to validate the demo model (training record and tests).

The toolkit's full metrics live in :mod:`medseg_xai.metrics`; this module only needs Dice and a
per-lesion detection table, and keeps the training script independent of the rest of the
package.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["SIZE_BINS", "case_dice", "lesion_rows", "size_bin"]

#: Lesion size bins by reference volume in mm^3: (name, lower bound inclusive, upper exclusive).
SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("small (<30 mm3)", 0.0, 30.0),
    ("medium (30-300 mm3)", 30.0, 300.0),
    ("large (>=300 mm3)", 300.0, float("inf")),
)


def size_bin(volume_mm3: float) -> str:
    """Name of the :data:`SIZE_BINS` entry holding ``volume_mm3``."""
    for name, lo, hi in SIZE_BINS:
        if lo <= volume_mm3 < hi:
            return name
    raise ValueError(f"volume_mm3: expected a non-negative number, got {volume_mm3!r}")


def case_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (nothing to find, nothing found)."""
    pred = np.asarray(pred) > 0
    ref = np.asarray(ref) > 0
    if pred.shape != ref.shape:
        raise ValueError(f"pred, ref: expected equal shapes, got {pred.shape} and {ref.shape}")
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * float(np.logical_and(pred, ref).sum()) / total


def lesion_rows(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], overlap_threshold: float = 0.1
) -> list[dict[str, float | bool | str]]:
    """One dict per reference lesion (26-connected component).

    Keys: ``volume_mm3``, ``size_bin``, ``overlap_fraction`` (share of the lesion's voxels
    predicted), ``detected`` (overlap fraction >= ``overlap_threshold``) and ``dice`` (against the
    predicted components that touch the lesion).
    """
    pred = np.asarray(pred) > 0
    ref = np.asarray(ref) > 0
    voxel_mm3 = float(np.prod(spacing))
    structure = np.ones((3,) * ref.ndim, dtype=bool)
    ref_lab, n_ref = ndimage.label(ref, structure=structure)
    pred_lab, _ = ndimage.label(pred, structure=structure)
    rows: list[dict[str, float | bool | str]] = []
    for k in range(1, n_ref + 1):
        lesion = ref_lab == k
        n = int(lesion.sum())
        hit = int(np.logical_and(lesion, pred).sum())
        touching = np.unique(pred_lab[lesion & pred])
        local = np.isin(pred_lab, touching[touching > 0])
        dice = 2.0 * hit / (n + int(local.sum()))
        volume = n * voxel_mm3
        rows.append({
            "volume_mm3": volume,
            "size_bin": size_bin(volume),
            "overlap_fraction": hit / n,
            "detected": hit / n >= overlap_threshold,
            "dice": dice,
        })
    return rows
