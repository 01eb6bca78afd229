"""Geometry traps of image headers (issue 28): refuse, by name, what would be read wrongly.

- **Sheared / non-orthogonal grids** (:func:`affine_problem`): a CT with gantry tilt stores a
  sheared affine. Spacing from the columns' norms (3.19 mm for a 3 mm axis at 20 degrees) and
  voxel volumes from their product were ~6 % too large, and distance transforms assume
  orthogonal axes, so surface distances were wrong too. The toolkit works on orthogonal grids
  only: a shear above 0.1 degree is refused naming the angle and the remedy (resample; dcm2niix
  corrects gantry tilt).
- **NIfTI datatypes** (:func:`nifti_datatype_problem`): the datatype code is read from the raw
  header, so DT_BINARY (1 bit per voxel, which no reader here unpacks: it was answered with
  "install the reader libraries"), complex (the imaginary part was dropped without a word when
  cast to float32), RGB/RGBA (a raw TypeError) and long double types are refused by name; every
  other type nibabel reads is accepted.
- **sform against pixdim** (:func:`nifti_pixdim_problem`): the affine is the one the NIfTI
  standard and nibabel choose (sform when ``sform_code > 0``, else qform, else pixdim); when
  that is the sform and its voxel sizes disagree with ``pixdim`` (which qform readers and many
  viewers use), two tools would measure two volumes: refused naming both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MAX_SHEAR_DEG", "affine_problem", "nifti_datatype_problem", "nifti_pixdim_problem"]

#: Largest angle (degrees) between two voxel axes' deviation from 90 still read as orthogonal
#: (rounding in headers written as float32 stays far below it).
MAX_SHEAR_DEG = 0.1
#: Relative tolerance between the sform's voxel sizes and pixdim.
PIXDIM_RTOL = 1e-3

_REFUSED_DATATYPES = {
    1: "DT_BINARY (1 bit per voxel)", 32: "complex64", 128: "RGB24 (colour)",
    1536: "float128 (long double)", 1792: "complex128", 2048: "complex256",
    2304: "RGBA32 (colour)", 0: "DT_UNKNOWN", 255: "DT_ALL",
}


def affine_problem(affine: np.ndarray, ndim: int) -> str | None:
    """Why a voxel-to-world matrix cannot be measured on (None when it can).

    Checks that the first ``ndim`` voxel axes are orthogonal (a shear is refused with its
    angle) and not degenerate (a zero-length axis).
    """
    a = np.asarray(affine, dtype=np.float64)
    n = min(ndim, a.shape[0] - 1, a.shape[1] - 1)
    cols = a[:-1, :n]
    norms = np.linalg.norm(cols, axis=0)
    if np.any(norms <= 0):
        return (f"its affine has a zero-length voxel axis ({np.flatnonzero(norms <= 0).tolist()});"
                " expected a positive voxel size on every axis")
    unit = cols / norms
    worst, pair = 0.0, (0, 0)
    for i in range(n):
        for j in range(i + 1, n):
            dev = abs(90.0 - float(np.degrees(np.arccos(np.clip(unit[:, i] @ unit[:, j], -1, 1)))))
            if dev > worst:
                worst, pair = dev, (i, j)
    if worst > MAX_SHEAR_DEG:
        return (f"its voxel axes {pair[0]} and {pair[1]} are not orthogonal (sheared by "
                f"{worst:.1f} degrees, e.g. a CT gantry tilt): spacing and volumes would be "
                "wrong; expected an orthogonal grid (resample it, e.g. dcm2niix corrects "
                "gantry tilt)")
    return None


def nifti_datatype_problem(head: bytes, hdr_size: int) -> str | None:
    """Why the raw NIfTI-1/2 header's datatype cannot be read (None when it can)."""
    at = 70 if hdr_size == 348 else 12
    if len(head) < at + 2:
        return None
    order = "little" if int.from_bytes(head[:4], "little") == hdr_size else "big"
    code = int.from_bytes(head[at:at + 2], order, signed=True)
    if code in _REFUSED_DATATYPES:
        return (f"its datatype is {code} ({_REFUSED_DATATYPES[code]}), which is not read as "
                "a scalar volume; expected an integer or real type (uint8, int16, int32, "
                "float32, float64...): re-save it, e.g. as uint8 for a label map")
    return None


def nifti_pixdim_problem(img: Any) -> str | None:
    """Why the chosen affine and pixdim disagree (None when they agree or qform/pixdim rule)."""
    hdr = img.header
    try:
        sform_code = int(hdr["sform_code"])
    except (KeyError, TypeError, ValueError):
        return None
    if sform_code <= 0:
        return None  # qform or pixdim: the affine is built from pixdim itself
    n = min(len(img.shape), 3)
    sizes = np.linalg.norm(np.asarray(img.affine, dtype=np.float64)[:3, :n], axis=0)
    pixdim = np.abs(np.asarray(hdr["pixdim"][1:1 + n], dtype=np.float64))
    if np.allclose(sizes, pixdim, rtol=PIXDIM_RTOL, atol=1e-4):
        return None
    return (f"its sform (used, sform_code {sform_code}) gives voxel sizes "
            f"{tuple(round(float(v), 4) for v in sizes)} mm but pixdim says "
            f"{tuple(round(float(v), 4) for v in pixdim)} mm; expected them to agree (fix the "
            "header: tools that read pixdim or the qform would measure other volumes)")
