"""Interpretable properties of each reference lesion: the vocabulary of lesion-level hidden
strata (:mod:`medseg_xai.audit.lesion_strata`).

Computed in the runner's per-case part (``audit(failure=...)`` with hidden strata) from the image
(first channel) and the reference, on the grid they are stored on; none needs the model. Every
number is computed in the lesion's own bounding box (plus a two-voxel margin), except the body
outline, which is found once per case on a grid strided to at most ~1 M voxels, so the cost and
memory stay bounded at clinical sizes. Names start with ``lprop_``; :data:`LESION_PROPERTY_LABELS`
says each in words.

- ``lprop_contrast``: (mean in the lesion - mean in a 2-voxel ring around it, other reference
  voxels left out) / the body's intensity SD (as ``prop_lesion_contrast`` of the case, per lesion);
- ``lprop_intensity``: (mean in the lesion - the body's mean) / the body's SD;
- ``lprop_edge_mm``: distance in mm from the lesion's nearest voxel to the body's outline (the
  voxels above 10% of the robust intensity range, holes filled), measured on the strided grid
  (resolution: the stride times the spacing);
- ``lprop_centrality``: distance of the lesion's centroid from the image centre as a fraction of
  the half-diagonal (0 centre, 1 corner);
- ``lprop_position{k}``: the centroid's position along voxel axis ``k`` as a fraction (0-1);
- ``lprop_elongation``: square root of the largest over the smallest eigenvalue of the lesion's
  voxel-coordinate covariance in mm (each voxel counted as a uniform box, so 1 = round, a
  single voxel included).

The lesion's own volume (``volume_mm3``) and the per-lesion uncertainty (``unc_entropy``) are
already columns of the lesion rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medseg_xai.audit.properties import body_mask, centrality

__all__ = ["LESION_PROPERTY_LABELS", "case_lesion_properties", "lesion_properties"]

LESION_PROPERTY_LABELS = {
    "lprop_contrast": "lesion contrast",
    "lprop_intensity": "lesion intensity (body SDs from the body mean)",
    "lprop_edge_mm": "distance to the body edge (mm)",
    "lprop_centrality": "lesion distance from the image centre",
    "lprop_position0": "position along voxel axis 0 (0-1)",
    "lprop_position1": "position along voxel axis 1 (0-1)",
    "lprop_position2": "position along voxel axis 2 (0-1)",
    "lprop_elongation": "lesion elongation",
    "volume_mm3": "lesion volume (mm3)",
    "unc_entropy": "lesion predictive entropy",
}
_MAX_COARSE = 1_000_000  # voxels of the strided grid the body outline is found on


def _outline_points(body: np.ndarray, step: np.ndarray) -> Any:
    """A KD-tree of the background voxels (connected to the array's border: the body's holes
    are not outside) that touch the body along an axis, in mm; None when nothing is outside.

    The nearest background voxel of a body voxel always has a face neighbour in the body (one
    step towards the body voxel is closer), so the nearest of these points gives the exact
    Euclidean distance transform's value at a fraction of its cost."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    lab, _ = ndimage.label(~body)
    faces = np.concatenate([np.take(lab, i, axis=a).ravel() for a in range(lab.ndim)
                            for i in (0, -1)])
    border = np.setdiff1d(np.unique(faces), [0])
    if not border.size:
        return None
    outside = np.isin(lab, border)
    edge = np.zeros_like(outside)
    for a in range(outside.ndim):
        lo = tuple(slice(None, -1) if j == a else slice(None) for j in range(outside.ndim))
        hi = tuple(slice(1, None) if j == a else slice(None) for j in range(outside.ndim))
        edge[lo] |= outside[lo] & ~outside[hi]
        edge[hi] |= outside[hi] & ~outside[lo]
    return cKDTree(np.argwhere(edge) * step) if edge.any() else None


def _body(x: np.ndarray, spacing: np.ndarray) -> tuple[float, float, Any, int]:
    """Body mean and SD (from a strided sample), the body outline's points (mm) on the strided
    grid, and the stride."""
    stride = max(1, int(np.ceil((x.size / _MAX_COARSE) ** (1.0 / x.ndim))))
    coarse = x[tuple(slice(None, None, stride) for _ in range(x.ndim))].astype(np.float32)
    body = body_mask(coarse, coarse)
    vals = coarse[body]
    tree = _outline_points(body, spacing * stride)
    return float(vals.mean()), float(vals.std()), tree, stride


def _lesion_mask(crop_fg: np.ndarray, row: Mapping[str, Any], connectivity: int | None
                 ) -> np.ndarray:
    """The row's lesion inside its box: the component of the box's reference foreground with
    the lesion's voxel count that spans the box (a component lies inside its own box)."""
    from medseg_xai.metrics.components import label_lesions

    lab, n = label_lesions(crop_fg, connectivity)
    if n == 1:
        return lab == 1
    counts = np.bincount(lab.ravel(), minlength=n + 1)
    want = int(row.get("volume_voxels") or 0)
    for k in np.flatnonzero(counts == want):
        if k == 0:
            continue
        m = lab == k
        if all(m.any(axis=tuple(j for j in range(m.ndim) if j != a))[[0, -1]].all()
               for a in range(m.ndim)):
            return m
    return lab == int(np.argmax(counts[1:]) + 1)


def _elongation(coords: np.ndarray, spacing: np.ndarray) -> float:
    mm = coords * spacing
    cov = np.cov(mm, rowvar=False) if len(mm) > 1 else np.zeros((len(spacing),) * 2)
    cov = np.atleast_2d(cov) + np.diag(spacing ** 2 / 12.0)  # each voxel a uniform box
    ev = np.linalg.eigvalsh(cov)
    return float(np.sqrt(ev[-1] / ev[0])) if ev[0] > 0 else float("nan")


def _one_lesion(x: np.ndarray, ref_fg: np.ndarray, row: Mapping[str, Any], body: tuple,
                spacing: np.ndarray, connectivity: int | None) -> dict[str, float]:
    from scipy import ndimage

    mean, sd, tree, stride = body
    bbox = [(int(a), int(b)) for a, b in row["bbox"]]
    outer = tuple(slice(max(a - 2, 0), min(b + 2, s)) for (a, b), s in zip(bbox, x.shape))
    fg = ref_fg[outer]
    inner = tuple(slice(a - o.start, b - o.start) for (a, b), o in zip(bbox, outer))
    m = np.zeros_like(fg)
    m[inner] = _lesion_mask(fg[inner], row, connectivity)
    xb = x[outer].astype(np.float32)
    ring = ndimage.binary_dilation(m, iterations=2) & ~fg
    inside = float(xb[m].mean())
    coords = np.argwhere(m) + np.array([o.start for o in outer])
    coarse = np.unique(coords // stride, axis=0)  # the lesion's voxels on the strided grid
    shape = np.asarray(x.shape, dtype=float)
    centroid = coords.mean(axis=0)
    out = {
        "lprop_contrast": float((inside - xb[ring].mean()) / sd) if ring.any() and sd > 0
        else float("nan"),
        "lprop_intensity": float((inside - mean) / sd) if sd > 0 else float("nan"),
        "lprop_edge_mm": (float(tree.query(coarse * spacing * stride)[0].min())
                          if tree is not None else float("nan")),
        "lprop_centrality": centrality(centroid, x.shape, spacing),
        "lprop_elongation": _elongation(coords.astype(float), spacing),
    }
    for k in range(x.ndim):
        out[f"lprop_position{k}"] = float(centroid[k] / max(shape[k] - 1, 1.0))
    return out


def lesion_properties(image: Any, reference_fg: Any, lesion_rows: list[dict[str, Any]],
                      spacing: Any = None, connectivity: int | None = None) -> None:
    """Add the ``lprop_*`` numbers to each reference lesion row (``source == "reference"``,
    ``bbox`` as the lesion table gives it), in place; other rows are left alone.

    Parameters
    ----------
    image : numpy.ndarray
        ``(C, *spatial)`` or ``(*spatial)``; the first channel is described.
    reference_fg : numpy.ndarray
        The reference foreground the lesions were labelled from (bool, the image's grid).
    lesion_rows : list of dict
        The case's lesion rows (``metrics.lesions`` records).
    spacing : sequence of float, optional
        Voxel size in mm (default 1).
    connectivity : int, optional
        The audit's lesion connectivity (``decide.DecisionRules``), so a lesion is the same
        voxels its ``lesion_id`` names.
    """
    rows = [r for r in lesion_rows if r.get("source") == "reference" and r.get("bbox")]
    if not rows:
        return
    ref = np.asarray(reference_fg).astype(bool, copy=False)
    x = np.asarray(image)
    if x.ndim == ref.ndim + 1:
        x = x[0]
    if x.shape != ref.shape:
        raise ValueError(f"image: expected the reference's shape {ref.shape}, got {x.shape}")
    sp = np.ones(ref.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    body = _body(x, sp)
    for row in rows:
        row.update(_one_lesion(x, ref, row, body, sp, connectivity))


def case_lesion_properties(case: Any, ref: np.ndarray, settings: Mapping[str, Any],
                           lesion_rows: list[dict[str, Any]]) -> None:
    """The runner's part: :func:`lesion_properties` on the reference foreground the audit
    matched lesions on, with its connectivity."""
    from medseg_xai.decide import DecisionRules, foreground

    if not any(r.get("source") == "reference" for r in lesion_rows):
        return
    if "lesion_labels" in settings:  # as the runner's _lesion_foregrounds, reference only
        from medseg_xai.classes import lesion_foreground

        ref_fg = lesion_foreground(ref, settings["lesion_labels"])
    else:
        ref_fg = foreground(ref, settings.get("labels"))
    lesion_properties(case.image, ref_fg, lesion_rows, case.spacing,
                      DecisionRules.from_settings(settings).connectivity)
