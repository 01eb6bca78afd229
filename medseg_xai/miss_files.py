"""Files of one miss analysis (a view): the JSON, one attribution NIfTI and PNG per method.

Shared by ``medseg-xai explain`` and ``medseg-xai demo`` so both write the same files from the
same :class:`~medseg_xai.explain.miss.MissAnalysis` (nothing here runs a model).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["explanation_png", "write_miss_files"]


def explanation_png(path: Path, image: np.ndarray, mask: np.ndarray, pred: np.ndarray | None,
                    heatmap: np.ndarray, spacing: Sequence[float] | None, title: str,
                    affine: np.ndarray | None = None) -> Any:
    """Three planes with the target's outline, the prediction and the map, plus a colour bar;
    anatomical planes with orientation letters when the source ``affine`` is given."""
    from medseg_xai import viz

    geometry = {"spacing": spacing} if affine is None else {"affine": np.asarray(affine, float)}
    fig = viz.three_plane(image, center=viz.lesion_centre(mask), ref=mask, pred=pred,
                          heatmap=heatmap, style=viz.SliceStyle(contours=True, title=title),
                          **geometry)
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    hmax = float(np.abs(h).max())
    if hmax > 0:  # viz colours the map as RGBA: the same scale as a colour bar (viz's rule)
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        signed = bool((h < 0).any())
        bar = ScalarMappable(Normalize(-hmax if signed else 0.0, hmax),
                             "RdBu_r" if signed else "inferno")
        fig.colorbar(bar, ax=fig.axes, shrink=0.8,
                     label="attribution (blue: against)" if signed else "attribution")
    Path(path).write_bytes(viz.fig_to_png_bytes(fig, dpi=100))
    return fig


def write_miss_files(analysis: Any, out_dir: str | Path, *, case_id: str, image: np.ndarray,
                     pred: np.ndarray | None, affine: np.ndarray | None,
                     spacing: Sequence[float] | None) -> tuple[list[Path], list[str]]:
    """Write ``CASE_LESION_miss.json`` and ``CASE_LESION_METHOD.nii.gz`` / ``.png`` per map.

    Parameters
    ----------
    analysis : MissAnalysis
        What :func:`medseg_xai.explain.miss.explain_miss` returned.
    out_dir : str or Path
        Folder (created).
    case_id : str
        Starts every file name (made safe for a file name).
    image : numpy.ndarray
        The scan, spatial shape (a leading channel is dropped).
    pred : numpy.ndarray, optional
        The prediction drawn on the PNG.
    affine : numpy.ndarray, optional
        The source image's 4x4 affine, written into the NIfTI files.
    spacing : sequence of float, optional
        Voxel spacing for the PNG's aspect.

    Returns
    -------
    (list of Path, list of str)
        The files written, and one warning per map that fails its gates.
    """
    import nibabel as nib

    from medseg_xai._io import atomic_write
    from medseg_xai._privacy import safe_file_name  # ids become file names: stay in out_dir

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img = np.asarray(image)
    mask = np.asarray(analysis.mask)
    if img.ndim == mask.ndim + 1:
        img = img[0]
    stem = safe_file_name(f"{case_id}_{analysis.lesion_id}", folder=out)
    written = [out / f"{stem}_miss.json"]
    atomic_write(written[0], json.dumps(analysis.to_dict(), indent=2))  # never a truncated JSON
    warnings: list[str] = []
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    for row in analysis.evidence.itertuples():
        if not row.passed:
            warnings.append(f"{row.method} map fails its gates ({row.reason}); it is not used "
                            "in the verdict")
        attr = analysis.attributions.get(row.method)
        if attr is None:
            continue
        nii = out / f"{stem}_{safe_file_name(str(row.method))}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(attr, dtype=np.float32), aff), str(nii))
        png = nii.with_name(nii.name.removesuffix(".nii.gz") + ".png")
        explanation_png(png, img, mask, pred, attr, spacing,
                        f"{case_id} {analysis.lesion_id}: {row.method}", affine=affine)
        written += [nii, png]
    return written, warnings
