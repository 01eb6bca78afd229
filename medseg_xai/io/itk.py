"""NRRD (``.nrrd``, ``.nhdr``), 3D Slicer segmentations (``.seg.nrrd``) and MetaImage
(``.mha``, ``.mhd``) through SimpleITK.

SimpleITK's arrays are ``(z, y, x)``; they are returned ``(x, y, z)`` with a RAS+ affine, the
layout nibabel gives for the NIfTI file SimpleITK writes from the same image, so a file and its
NIfTI twin read identically. Vector pixels (RGB) become channels. A fourth image dimension is
time (ITK's convention for 3D+t), and so is an NRRD axis whose ``kinds`` entry is ``time``
(a 2D cine stored as ``(x, y, t)``). Slicer segment names (``Segment<i>_Name`` with
``Segment<i>_LabelValue``) become class names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg_xai.io.volume import FormatError, Volume, affine_from_itk

__all__ = ["ITK_SUFFIXES", "read_itk", "slicer_segment_names"]

ITK_SUFFIXES = {".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage", ".mhd": "metaimage"}


def slicer_segment_names(image: object) -> dict[int, str]:
    """Label value -> segment name from a Slicer ``.seg.nrrd`` header (empty when none).

    Slicer stores one ``Segment<i>_Name`` / ``Segment<i>_LabelValue`` / ``Segment<i>_Layer``
    triple per segment; segments on other layers than 0 overlap the first layer and cannot be
    one label map.
    """
    keys = set(image.GetMetaDataKeys())  # type: ignore[attr-defined]
    names: dict[int, str] = {}
    i = 0
    while f"Segment{i}_Name" in keys:
        name = image.GetMetaData(f"Segment{i}_Name")  # type: ignore[attr-defined]
        value = int(image.GetMetaData(f"Segment{i}_LabelValue")  # type: ignore[attr-defined]
                    if f"Segment{i}_LabelValue" in keys else i + 1)
        layer = image.GetMetaData(f"Segment{i}_Layer") if f"Segment{i}_Layer" in keys else "0"  # type: ignore[attr-defined]
        if str(layer).strip() not in ("", "0"):
            raise FormatError(f"segment {name!r} is on layer {layer} (overlapping segments); "
                             "expected every segment on layer 0, one label map")
        names[value] = name
        i += 1
    return names


def read_itk(p: Path, *, is_image: bool) -> Volume:
    """Read an NRRD or MetaImage file with SimpleITK keeping its grid."""
    import SimpleITK as sitk

    fmt = ITK_SUFFIXES.get(p.suffix.lower(), "nrrd")
    image = sitk.ReadImage(str(p))
    names = slicer_segment_names(image) if fmt == "nrrd" else {}
    arr = sitk.GetArrayViewFromImage(image)
    n = image.GetDimension()
    comps = image.GetNumberOfComponentsPerPixel()
    spatial = arr[..., :] if comps == 1 else arr
    # (z, y, x[, c]) -> (c, x, y, z)
    order = tuple(range(n - 1, -1, -1))
    data = np.transpose(spatial, order)[None] if comps == 1 else \
        np.transpose(spatial, (n, *order))
    time_axis = None
    spacing, direction, origin = image.GetSpacing(), image.GetDirection(), image.GetOrigin()
    notes: list[str] = []
    if n == 4:  # ITK 3D+t: keep the spatial part of the geometry, time last
        d = np.asarray(direction).reshape(4, 4)[:3, :3].ravel()
        spacing, direction, origin = spacing[:3], tuple(d), origin[:3]
        time_axis = 3
        notes.append(f"4th axis read as time ({data.shape[-1]} frames)")
    elif n > 4:
        raise FormatError(f"expected a 2D, 3D or 3D+t image, got {n} dimensions")
    kinds = [image.GetMetaData(f"NRRD_kinds[{i}]").strip().lower()
             if image.HasMetaDataKey(f"NRRD_kinds[{i}]") else "" for i in range(n)]
    if time_axis is None and "time" in kinds:  # NRRD "kinds: domain domain time": a cine
        time_axis = kinds.index("time")
        notes.append(f"NRRD axis {time_axis} is time ({data.shape[time_axis + 1]} frames)")
    if comps > 1:
        notes.append(f"{comps} components per pixel read as {comps} channels")
    data = np.ascontiguousarray(data, dtype=np.float32 if is_image else data.dtype)
    return Volume(data, affine_from_itk(spacing, direction, origin), fmt,
                  class_names=names, time_axis=time_axis, notes=notes)
