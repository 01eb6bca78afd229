"""Planted *lesion-level* faults in demo images: validation of lesion-level hidden strata.

:func:`plant_lesions` rewrites some images of a demo cohort (``demo.make_cohort``) so that chosen
reference lesions become hard to see, and returns which lesions (by the audit's own lesion ids,
``ref-k`` under full connectivity, :func:`medseg_xai.decide.lesion_table`'s numbering). No
manifest column says which: the audit sees the fault only through what it measures.

Kinds (each on the lesions of a random ``share`` of the scans, across every device):

- ``"contrast"``: every lesion of the chosen scans is pulled towards the mean of a 3-voxel ring
  around it by ``strength`` (0 = unchanged, 1 = invisible): a sequence or reconstruction that
  flattens lesion contrast;
- ``"region"``: the same, only for the lesions whose centroid lies in the last ``region`` share
  of voxel axis 2 (e.g. one side of the head under a failing coil element): a fault defined by
  location *and* contrast.

Lesions of other scans and outside the region keep their natural contrast; naturally faint
lesions are missed too, so a perfect discovery need not match the planted set exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["PLANTED_LESION_KINDS", "plant_lesions"]

PLANTED_LESION_KINDS = ("contrast", "region")


def _planted_in_image(x: np.ndarray, label: np.ndarray, kind: str, strength: float,
                      region: float) -> tuple[np.ndarray, list[str]]:
    from scipy import ndimage

    from medseg_xai.metrics.components import label_lesions

    lab, n = label_lesions(label > 0)
    ids = []
    for k, box in enumerate(ndimage.find_objects(lab), start=1):
        if box is None:
            continue
        m = np.zeros(lab.shape, bool)
        m[box] = lab[box] == k
        centroid = np.argwhere(m).mean(axis=0)
        if kind == "region" and centroid[2] / max(lab.shape[2] - 1, 1) < 1.0 - region:
            continue
        ring = ndimage.binary_dilation(m, iterations=3) & ~(label > 0)
        if not ring.any():
            continue
        x[m] = x[m] - strength * (x[m] - x[ring].mean())
        ids.append(f"ref-{k}")
    return x, ids


def plant_lesions(manifest: str | Path, kind: str = "contrast", share: float = 0.3,
                  strength: float = 0.7, *, region: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """Plant a lesion-level fault into a demo cohort's images (in place).

    Parameters
    ----------
    manifest : str or Path
        A manifest written by ``demo.make_cohort`` (``image`` / ``label`` paths relative to it).
    kind : {"contrast", "region"}
        See the module docstring.
    share : float
        Probability that a scan is chosen.
    strength : float
        How far lesion voxels are pulled towards their ring's mean (0-1).
    region : float
        ``kind="region"``: the share of voxel axis 2 (its far end) where lesions are affected.
    seed : int
        Seed of the choice of scans.

    Returns
    -------
    pandas.DataFrame
        ``case_id, lesion_id`` of every planted lesion.
    """
    import nibabel as nib

    if kind not in PLANTED_LESION_KINDS:
        raise ValueError(f"kind: expected one of {PLANTED_LESION_KINDS}, got {kind!r}")
    if not (0.0 <= share <= 1.0 and 0.0 <= strength <= 1.0 and 0.0 < region <= 1.0):
        raise ValueError(f"share, strength in [0, 1] and region in (0, 1] expected, got {share!r}, "
                         f"{strength!r}, {region!r}")
    manifest = Path(manifest)
    df = pd.read_csv(manifest)
    rng = np.random.default_rng([int(seed), 31])
    chosen = rng.random(len(df)) < share
    rows = []
    for i in np.flatnonzero(chosen):
        img = nib.load(manifest.parent / df.loc[i, "image"])
        label = np.asarray(nib.load(manifest.parent / df.loc[i, "label"]).dataobj)
        x = np.asarray(img.dataobj).astype(np.float32)
        x, ids = _planted_in_image(x, label, kind, float(strength), float(region))
        if ids:
            out = nib.Nifti1Image(np.round(x).astype(img.get_data_dtype()), img.affine, img.header)
            nib.save(out, manifest.parent / df.loc[i, "image"])
            rows += [{"case_id": str(df.loc[i, "case_id"]), "lesion_id": lid} for lid in ids]
    return pd.DataFrame(rows, columns=["case_id", "lesion_id"])
