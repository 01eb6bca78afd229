"""DICOM series folders and single DICOM files through MONAI's ``PydicomReader`` (``dicom``
extra), in RAS+ like NIfTI. Colour (``SamplesPerPixel`` > 1) becomes the channel axis, never a
spatial one. A file whose ``Modality`` is ``SEG`` is a DICOM-SEG (:mod:`medseg_xai.io.dicom_seg`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medseg_xai.io._monai import monai_loader
from medseg_xai.io.volume import Volume

__all__ = ["dicom_header", "read_dicom"]

_FIELDS = ["Modality", "SamplesPerPixel", "FrameOfReferenceUID", "NumberOfFrames"]


def _loader(is_image: bool) -> Any:
    """MONAI's PydicomReader loader for an image (float32) or a label (stored type)."""
    return monai_loader("PydicomReader", is_image)


def dicom_header(p: Path) -> dict[str, Any]:
    """A few header fields of a DICOM file (the first readable file of a folder); empty when
    nothing there is DICOM or pydicom is missing."""
    try:
        import pydicom
    except ImportError:  # pragma: no cover - the dicom extra is optional
        return {}
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=_FIELDS)
        except Exception:  # noqa: BLE001 - skip non-DICOM files in a series folder
            continue
        return {k: ds.get(k) for k in _FIELDS if k in ds}
    return {}


def read_dicom(p: Path, *, is_image: bool, header: dict[str, Any] | None = None) -> Volume:
    """Read a DICOM series folder or file keeping its grid (RAS+ affine, like MONAI)."""
    header = dicom_header(p) if header is None else header
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, meta = _loader(is_image)(str(p))
    array = np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
    affine = meta.get("affine", getattr(data, "affine", None))
    affine = np.eye(4) if affine is None else np.asarray(
        affine.detach().cpu().numpy() if hasattr(affine, "detach") else affine, dtype=np.float64)
    samples = int(header.get("SamplesPerPixel", 1) or 1)
    notes: list[str] = []
    if samples > 1 and array.shape[0] == 1 and array.shape[-1] == samples:
        array = np.moveaxis(array[0], -1, 0)  # colour samples -> channels
        notes.append(f"{samples} colour samples per pixel read as {samples} channels")
    for_uid = header.get("FrameOfReferenceUID")
    return Volume(array, affine, "dicom", notes=notes,
                  frame_of_reference=str(for_uid) if for_uid else None)
