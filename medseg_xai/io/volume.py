"""The one value every reader returns: an array on its stored grid, with its geometry.

``array`` is ``(C, *spatial)`` (channels first: colour samples and image channels are never a
spatial axis), ``affine`` the ``(4, 4)`` voxel-to-world matrix in RAS+ millimetres (nibabel's
and MONAI's convention; 2D images get a 4x4 matrix too, like a 2D NIfTI file). Readers of
formats that carry no geometry (PNG, JPEG, TIFF, BMP) say so in ``geometry``; their spacing
comes from the manifest or from a stated default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LPS_TO_RAS", "FormatError", "Volume", "affine_from_itk"]

#: ITK, DICOM and NRRD ("left-posterior-superior") to NIfTI/MONAI ("right-anterior-superior").
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class FormatError(ValueError):
    """A file that reads but is not what it must be (colour label map, overlapping segments,
    another frame of reference); the message says what was expected."""


@dataclass
class Volume:
    """One image or label file as read.

    Attributes
    ----------
    array : numpy.ndarray
        ``(C, *spatial)``.
    affine : numpy.ndarray
        ``(4, 4)`` voxel-to-world (RAS+, mm).
    format : str
        ``"nifti"``, ``"nrrd"``, ``"metaimage"``, ``"dicom"``, ``"dicom-seg"``, ``"raster"``.
    geometry : str
        ``"file"`` (the header gives spacing, direction and origin), ``"manifest"`` (spacing
        from the manifest, no direction/origin) or ``"default"`` (a stated default spacing).
    class_names : dict
        Label value -> name where the file names its segments (Slicer ``.seg.nrrd``,
        DICOM-SEG); empty otherwise.
    time_axis : int or None
        Spatial axis the header declares as time (cine), None when none is declared.
    notes : list of str
        What the reader assumed, in words (for the report).
    frame_of_reference : str or None
        DICOM Frame of Reference UID where the file has one.
    """

    array: np.ndarray
    affine: np.ndarray
    format: str
    geometry: str = "file"
    class_names: dict[int, str] = field(default_factory=dict)
    time_axis: int | None = None
    notes: list[str] = field(default_factory=list)
    frame_of_reference: str | None = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape[1:])


def affine_from_itk(spacing: tuple[float, ...], direction: tuple[float, ...],
                    origin: tuple[float, ...]) -> np.ndarray:
    """A RAS+ ``(4, 4)`` affine from ITK's LPS geometry (2D gets a unit third axis).

    The matrix SimpleITK writes into a NIfTI header for the same image, so a file and its
    NIfTI twin written by SimpleITK read with the same affine.
    """
    n = len(spacing)
    d = np.asarray(direction, dtype=np.float64).reshape(n, n)
    lps = np.eye(4)
    lps[:n, :n] = d * np.asarray(spacing, dtype=np.float64)[None, :]
    lps[:n, 3] = np.asarray(origin, dtype=np.float64)
    return LPS_TO_RAS @ lps
