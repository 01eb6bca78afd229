"""Interpretable properties of one case, the vocabulary hidden strata are described in.

Every property is a number computed from the image (first channel) and the reference on the
grid they are stored on; none needs the model. Names start with ``prop_`` and
:data:`PROPERTY_LABELS` says each in words.

- ``prop_intensity_mean``, ``prop_intensity_sd``: over the *body* (voxels above 10% of the
  image's robust range: air does not dilute them);
- ``prop_noise``: the noise level relative to the body's spread: the median absolute
  difference of neighbouring voxels along the last axis, as a Gaussian SD
  (``MAD / 0.6745 / sqrt(2)``), divided by ``|prop_intensity_mean|`` (1 / SNR);
- ``prop_nonuniformity``: low-frequency intensity variation (a bias field): the coefficient of
  variation of the body's block means on a 4-per-axis grid;
- ``prop_lesion_volume_mm3``, ``prop_lesion_count``: of the reference;
- ``prop_lesion_contrast``: (mean inside the reference lesions - mean in a 2-voxel ring around
  them) / body SD (NaN without lesions);
- ``prop_lesion_centrality``: distance of the lesions' centroid from the image centre as a
  fraction of the half-diagonal (0 centre, 1 corner; NaN without lesions).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PROPERTY_LABELS", "body_mask", "case_properties", "centrality"]

PROPERTY_LABELS = {
    "prop_intensity_mean": "mean intensity",
    "prop_intensity_sd": "intensity spread",
    "prop_noise": "noise level",
    "prop_nonuniformity": "intensity non-uniformity (bias field)",
    "prop_lesion_volume_mm3": "lesion volume (mm3)",
    "prop_lesion_count": "lesion count",
    "prop_lesion_contrast": "lesion contrast",
    "prop_lesion_centrality": "lesion distance from the image centre",
}
_BLOCKS = 4


def body_mask(x: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """The body: voxels of ``x`` above 10% of the robust (1st-99th percentile) range of
    ``sample`` (a subsample of ``x``: air does not count); every voxel when fewer than 8 pass.
    The one rule both the case and the lesion properties use."""
    lo, hi = np.percentile(sample, [1, 99])
    body = x > lo + 0.1 * (hi - lo)
    return body if body.sum() >= 8 else np.ones(x.shape, dtype=bool)


def centrality(point: np.ndarray, shape: Any, spacing: np.ndarray) -> float:
    """Distance of ``point`` (voxel coordinates) from the grid's centre in mm, as a fraction of
    the half-diagonal (0 centre, 1 corner)."""
    centre = (np.asarray(shape, dtype=float) - 1) / 2.0
    half = float(np.linalg.norm(centre * spacing)) or 1.0
    return float(np.linalg.norm((np.asarray(point, dtype=float) - centre) * spacing) / half)


def _block_means(x: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Mean of the body's voxels in each cell of a ``_BLOCKS``-per-axis grid (cells with less
    than a quarter body left out)."""
    edges = [np.linspace(0, s, _BLOCKS + 1).astype(int) for s in x.shape]
    out = []
    for idx in np.ndindex(*([_BLOCKS] * x.ndim)):
        sl = tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, idx))
        b = body[sl]
        if b.size and b.mean() >= 0.25:
            out.append(float(x[sl][b].mean()))
    return np.asarray(out)


def case_properties(image: Any, reference: Any, spacing: Any = None) -> dict[str, float]:
    """The ``prop_*`` numbers of one case (see the module docstring).

    Parameters
    ----------
    image : numpy.ndarray
        ``(C, *spatial)`` or ``(*spatial)``; the first channel is described.
    reference : numpy.ndarray
        Label map on the image's grid (foreground = ``> 0``).
    spacing : sequence of float, optional
        Voxel size in mm (default 1).
    """
    from scipy import ndimage

    ref = np.asarray(reference) > 0
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == ref.ndim + 1:
        x = x[0]
    if x.shape != ref.shape:
        raise ValueError(f"image: expected the reference's shape {ref.shape}, got {x.shape}")
    spacing = np.ones(ref.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    # robust range from at most ~1 M voxels (a fixed stride): a CT-size volume otherwise
    # costs a full partition per percentile
    flat = x.ravel()
    body = body_mask(x, flat[:: max(1, flat.size // 1_000_000)])
    vals = x[body]
    mean, sd = float(vals.mean()), float(vals.std())
    diff = np.diff(x, axis=-1)
    mad = float(np.median(np.abs(diff - np.median(diff))))
    blocks = _block_means(x, body)
    out = {
        "prop_intensity_mean": mean, "prop_intensity_sd": sd,
        "prop_noise": mad / 0.6745 / np.sqrt(2.0) / abs(mean) if mean else 0.0,
        "prop_nonuniformity": (float(blocks.std() / abs(blocks.mean()))
                               if blocks.size > 1 and blocks.mean() != 0 else 0.0),
        "prop_lesion_volume_mm3": float(ref.sum() * np.prod(spacing)),
        "prop_lesion_count": float(ndimage.label(ref)[1]),
        "prop_lesion_contrast": float("nan"), "prop_lesion_centrality": float("nan"),
    }
    if ref.any():
        # the ring around the lesions, in their bounding box (plus the ring's width) only
        box = tuple(slice(max(int(a.min()) - 2, 0), int(a.max()) + 3) for a in np.nonzero(ref))
        r, xb = ref[box], x[box]
        ring = ndimage.binary_dilation(r, iterations=2) & ~r
        if ring.any() and sd > 0:
            out["prop_lesion_contrast"] = float((xb[r].mean() - xb[ring].mean()) / sd)
        out["prop_lesion_centrality"] = centrality(np.asarray(ndimage.center_of_mass(ref)),
                                                   ref.shape, spacing)
    return out
