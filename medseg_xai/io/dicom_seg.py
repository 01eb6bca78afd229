"""DICOM Segmentation objects (``Modality`` = ``SEG``) through highdicom (``dicom`` extra).

Segments become classes: the label value is the segment number and the class name its
``SegmentLabel``. The segmentation is put on the image's grid: when the image is given (its
grid and, for a DICOM image, its Frame of Reference UID) every image voxel takes the segment
found at its position in patient coordinates (nearest neighbour; on the source series' own
grid this is an exact re-indexing). A SEG in another frame of reference than its image is
refused: its coordinates do not describe the same patient space.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg_xai.io.volume import LPS_TO_RAS, FormatError, Volume

__all__ = ["read_dicom_seg"]


def _segments(seg: object) -> dict[int, str]:
    names: dict[int, str] = {}
    for n in seg.get_segment_numbers():  # type: ignore[attr-defined]
        desc = seg.get_segment_description(n)  # type: ignore[attr-defined]
        names[int(n)] = str(getattr(desc, "segment_label", "") or f"segment {n}")
    return names


def _onto_grid(labels: np.ndarray, seg_affine_lps: np.ndarray, shape: tuple[int, ...],
               affine_ras: np.ndarray) -> tuple[np.ndarray, bool]:
    """``labels`` (on the SEG's grid) sampled at every voxel of the target grid; the flag says
    whether the target's voxel centres fall on the SEG's (an exact re-indexing)."""
    from scipy import ndimage

    target = np.asarray(affine_ras, dtype=np.float64)
    if len(shape) == 2:  # a single-slice image: sample its one plane
        shape = (*shape, 1)
    # target voxel -> RAS -> LPS -> SEG voxel
    m = np.linalg.inv(seg_affine_lps) @ LPS_TO_RAS @ target
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)]) @ m.T
    exact = bool(np.allclose(m[:3, :3], np.round(m[:3, :3]), atol=1e-3)
                 and np.allclose(corners[:, :3], np.round(corners[:, :3]), atol=1e-3))
    out = ndimage.affine_transform(labels, m[:3, :3], offset=m[:3, 3], output_shape=shape,
                                   order=0, mode="constant", cval=0, prefilter=False)
    return out, exact


def read_dicom_seg(p: Path, *, grid: tuple[tuple[int, ...], np.ndarray] | None = None,
                   frame_of_reference: str | None = None) -> Volume:
    """Read a DICOM-SEG as a label map (segment number = label value).

    Parameters
    ----------
    p : Path
    grid : (spatial shape, RAS affine), optional
        The image's grid to put the segmentation on; without it the SEG's own grid is returned.
    frame_of_reference : str, optional
        The image's Frame of Reference UID; a different one in the SEG is refused.
    """
    try:
        import highdicom as hd
    except ImportError as exc:  # pragma: no cover - the dicom extra is optional
        raise ValueError("reading DICOM-SEG needs highdicom: pip install 'medseg-xai[dicom]'") \
            from exc
    seg = hd.seg.segread(str(p))
    names = _segments(seg)
    seg_for = str(getattr(seg, "FrameOfReferenceUID", "") or "") or None
    if frame_of_reference and seg_for and seg_for != frame_of_reference:
        raise FormatError("its Frame of Reference UID differs from the image's; expected a "
                         "segmentation of the image's series (same frame of reference)")
    vol = seg.get_volume(combine_segments=True, relabel=False, dtype=np.int16)
    arr, aff = np.asarray(vol.array), np.asarray(vol.affine, dtype=np.float64)
    notes = [f"DICOM-SEG segments {names} read as classes"]
    if grid is None:
        return Volume(arr[None], LPS_TO_RAS @ aff, "dicom-seg", class_names=names, notes=notes,
                      frame_of_reference=seg_for)
    shape, affine = grid
    out, exact = _onto_grid(arr, aff, tuple(shape), affine)
    if len(shape) == 2:
        out = out[..., 0]
    if not exact:
        notes.append("resampled onto the image grid (nearest neighbour, patient coordinates)")
    return Volume(out[None], np.asarray(affine, dtype=np.float64), "dicom-seg",
                  class_names=names, notes=notes, frame_of_reference=seg_for)
