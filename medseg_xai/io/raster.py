"""2D PNG, JPEG, TIFF and BMP through Pillow.

These formats carry no patient geometry: the spacing comes from the manifest (a ``spacing``
column) or from a stated default, the direction is the identity and the origin 0 (as SimpleITK
gives them), and the result says which (``Volume.geometry``). Arrays are returned ``(C, x, y)``
(column axis first, like SimpleITK, MONAI's DICOM reader and a NIfTI twin written by
SimpleITK). Colour images become channels; a palette image is read as its indices (label maps
are often stored that way). A multi-page TIFF is refused: pages could be slices, frames or
channels, and the file does not say which.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg_xai.io.volume import FormatError, Volume, affine_from_itk

__all__ = ["DEFAULT_PIXEL_SPACING", "RASTER_SUFFIXES", "read_raster"]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Millimetres per pixel assumed when the manifest gives no spacing; always stated in results.
DEFAULT_PIXEL_SPACING = 1.0


def _pixels(p: Path, is_image: bool) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    notes: list[str] = []
    with Image.open(p) as im:
        if getattr(im, "n_frames", 1) > 1:
            raise FormatError(f"{im.n_frames} pages in one file; expected a single 2D image "
                             "(pages could be slices, frames or channels)")
        mode = im.mode
        if mode == "P" and is_image:
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            mode = im.mode
        arr = np.asarray(im)
    if arr.ndim == 3:
        if mode in ("RGBA", "LA") and np.all(arr[..., -1] == arr[..., -1].flat[0]):
            arr = arr[..., :-1]  # a constant alpha channel says nothing
            notes.append("constant alpha channel dropped")
        if not is_image:
            if not np.all(arr == arr[..., :1]):
                raise FormatError(f"a {mode} colour image; expected a single-channel label map "
                                 "(grey or palette indices)")
            arr = arr[..., 0]
            notes.append(f"{mode} label map with equal channels read as one channel")
    return arr, notes


def read_raster(p: Path, *, is_image: bool, spacing: tuple[float, float] | None = None) -> Volume:
    """Read a 2D raster image; ``spacing`` (mm per pixel along x = columns, y = rows) from the
    manifest, else :data:`DEFAULT_PIXEL_SPACING` (stated in ``Volume.notes``)."""
    arr, notes = _pixels(p, is_image)
    if arr.ndim == 3:  # (rows, cols, samples) -> (samples, cols, rows)
        data = np.transpose(arr, (2, 1, 0))
        notes.append(f"{arr.shape[-1]} colour samples read as {arr.shape[-1]} channels")
    else:
        data = arr.T[None]
    if spacing is None:
        geometry = "default"
        spacing = (DEFAULT_PIXEL_SPACING, DEFAULT_PIXEL_SPACING)
        notes.append(f"{p.suffix.lower().lstrip('.').upper()} carries no pixel spacing and the "
                     f"manifest gives none: {DEFAULT_PIXEL_SPACING:g} mm per pixel assumed")
    else:
        geometry = "manifest"
    data = np.ascontiguousarray(data, dtype=np.float32 if is_image else data.dtype)
    affine = affine_from_itk(tuple(float(s) for s in spacing), (1.0, 0.0, 0.0, 1.0), (0.0, 0.0))
    return Volume(data, affine, "raster", geometry=geometry, notes=notes)
