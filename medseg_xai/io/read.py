"""One entry point for every format: :func:`read_volume` picks the reader from the path and
turns any reader failure into one message naming the case, the field and what was expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg_xai._geometry_checks import affine_problem
from medseg_xai._io import file_kind
from medseg_xai.io.itk import ITK_SUFFIXES
from medseg_xai.io.raster import RASTER_SUFFIXES
from medseg_xai.io.volume import FormatError, Volume

__all__ = ["FORMATS", "format_of", "read_volume"]

#: Format -> what it needs, in words (the README's manifest section says the same).
FORMATS: dict[str, str] = {
    "nifti": ".nii / .nii.gz: geometry from the header (qform/sform)",
    "nrrd": ".nrrd / .nhdr / Slicer .seg.nrrd: geometry from the header; Slicer segment names "
            "become class names",
    "metaimage": ".mha / .mhd: geometry from the header",
    "dicom": "a DICOM series folder or a .dcm file: geometry from the headers (dicom extra)",
    "dicom-seg": "a DICOM-SEG .dcm as label: segments become classes, put on the image's grid "
                 "when they share its frame of reference (dicom extra: highdicom)",
    "raster": ".png / .jpg / .tif / .bmp (2D): no geometry in the file; a manifest `spacing` "
              "column (mm per pixel), else 1 mm per pixel, stated in the result",
}


def format_of(path: str | Path) -> str:
    """The format a path is read as (by suffix; a folder is a DICOM series)."""
    p = Path(path)
    name = p.name.lower()
    if p.is_dir() or name.endswith((".dcm", ".dicom", ".ima")):
        return "dicom"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    for suffix, fmt in ITK_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return "nifti"  # the historical default: a non-NIfTI file gets the NIfTI reader's message


def _read_error(exc: BaseException, fmt: str) -> str:
    """The reader's failure in words, with what was expected."""
    import zlib

    text = f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__
    chain = [exc, exc.__cause__, exc.__context__]
    if any(isinstance(e, EOFError) for e in chain) or "ended before" in str(exc):
        return ("the file is truncated (its compressed data ends early); expected a whole "
                f"file ({text})")
    if any(isinstance(e, zlib.error) for e in chain):
        return f"the compressed data is corrupt; expected a valid .nii.gz file ({text})"
    expected = {"dicom": "a readable DICOM series", "nifti": "a readable NIfTI file",
                "raster": "a readable 2D PNG/JPEG/TIFF/BMP image"}.get(
        fmt, f"a readable {fmt} file")
    return f"expected {expected} ({text})"


def _dispatch(p: Path, fmt: str, is_image: bool, spacing: Any, grid: Any,
              frame_of_reference: str | None) -> Volume:
    if fmt == "nifti":
        raise AssertionError("NIfTI is read by read_nifti")  # pragma: no cover
    if fmt == "raster":
        return _read_raster(p, is_image, spacing)
    if fmt in ("nrrd", "metaimage"):
        from medseg_xai.io.itk import read_itk

        return read_itk(p, is_image=is_image)
    from medseg_xai.io.dicom import dicom_header, read_dicom

    header = dicom_header(p)
    if not is_image and str(header.get("Modality", "")).upper() == "SEG":
        from medseg_xai.io.dicom_seg import read_dicom_seg

        return read_dicom_seg(p, grid=grid, frame_of_reference=frame_of_reference)
    return read_dicom(p, is_image=is_image, header=header)


def _read_raster(p: Path, is_image: bool, spacing: Any) -> Volume:
    from medseg_xai.io.raster import read_raster

    return read_raster(p, is_image=is_image, spacing=spacing)


def read_volume(path: str | Path, *, is_image: bool = True, what: str = "image",
                case_id: str = "?", spacing: tuple[float, ...] | None = None,
                grid: tuple[tuple[int, ...], np.ndarray] | None = None,
                frame_of_reference: str | None = None) -> Volume:
    """Read an image or label file of any supported format, keeping its grid.

    Parameters
    ----------
    path : str or Path
        A file (:data:`FORMATS`) or a DICOM series folder.
    is_image : bool
        Images are cast to float32; masks keep their stored dtype.
    what, case_id : str
        Name the field and the case in error messages.
    spacing : tuple of float, optional
        Pixel spacing in mm for formats without geometry (PNG, JPEG, TIFF, BMP).
    grid : (spatial shape, affine), optional
        The image's grid, for a DICOM-SEG label to be put on.
    frame_of_reference : str, optional
        The image's DICOM Frame of Reference UID (a DICOM-SEG in another one is refused).

    Raises
    ------
    ValueError
        Missing, unreadable or non-regular files, non-finite affines, naming case and field.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"case {case_id!r}: {what} file not found: expected a file at {str(p)!r}")
    fmt = format_of(p)
    if not (p.is_file() or (fmt == "dicom" and p.is_dir())):
        # a FIFO or a device (a symlink to /dev/zero) would block or never end a read
        raise ValueError(f"case {case_id!r}: {what}: expected a regular file, got "
                         f"{file_kind(p)} at {str(p)!r}")
    if fmt == "nifti":
        from medseg_xai.io.nifti import read_nifti

        try:
            vol = read_nifti(p, is_image=is_image, what=what, case_id=case_id)
        except ValueError as exc:
            if str(exc).startswith(f"case {case_id!r}"):
                raise
            raise ValueError(f"case {case_id!r}: could not read {what} file {str(p)!r}: "
                             f"{_read_error(exc, fmt)}") from exc
        except Exception as exc:  # noqa: BLE001 - readers raise many types for corrupt files
            raise ValueError(f"case {case_id!r}: could not read {what} file {str(p)!r}: "
                             f"{_read_error(exc, fmt)}") from exc
    else:
        try:
            vol = _dispatch(p, fmt, is_image, spacing, grid, frame_of_reference)
        except FormatError as exc:
            raise ValueError(f"case {case_id!r}: {what} file {p.name!r}: {exc}") from exc
        except MemoryError as exc:
            raise ValueError(f"case {case_id!r}: could not read {what} file {p.name!r}: too "
                             "large to load (out of memory)") from exc
        except Exception as exc:  # noqa: BLE001 - readers raise many types for corrupt files
            raise ValueError(f"case {case_id!r}: could not read {what} file {str(p)!r}: "
                             f"{_read_error(exc, fmt)}") from exc
    if not np.all(np.isfinite(vol.affine)):
        raise ValueError(
            f"case {case_id!r}: could not read {what} file {p.name!r}: its affine "
            "(voxel-to-world matrix) holds NaN or infinite values; expected a finite one")
    problem = affine_problem(vol.affine, len(vol.spatial_shape))  # sheared: spacing wrong
    if problem:
        raise ValueError(f"case {case_id!r}: {what} file {p.name!r}: {problem}")
    return vol
