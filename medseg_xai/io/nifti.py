"""NIfTI-1/2 (``.nii``, ``.nii.gz``) through MONAI's ``NibabelReader``, with the header checks
that give a user an actionable message (empty, truncated, not NIfTI, non-finite affine).

A fourth axis with more than one entry is time by the NIfTI standard (``dim[4]``, with the
header's time unit): it is returned as the last spatial-like axis with ``time_axis`` set, never
as image channels (MONAI's reader would make it the channel axis).
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from medseg_xai._geometry_checks import nifti_datatype_problem, nifti_pixdim_problem
from medseg_xai.io._monai import monai_loader
from medseg_xai.io.volume import Volume

__all__ = ["MAX_UNTIMED_CHANNELS", "check_nifti", "is_nifti", "read_nifti"]

_NIFTI_MAGIC = {348: (344, (b"n+1\x00", b"ni1\x00")), 540: (4, (b"n+2\x00", b"ni2\x00"))}
#: A 4th NIfTI axis without a time unit is read as channels up to this many (MR modalities);
#: longer ones are refused rather than silently becoming image channels.
MAX_UNTIMED_CHANNELS = 4


def is_nifti(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".nii", ".nii.gz", ".hdr", ".img", ".img.gz"))


def _loader(is_image: bool) -> Any:
    """MONAI's NibabelReader loader for an image (float32) or a label (stored type)."""
    return monai_loader("NibabelReader", is_image)


def _fail(case_id: str, what: str, name: str, text: str) -> ValueError:
    return ValueError(f"case {case_id!r}: could not read {what} file {name!r}: {text}")


def _head(p: Path, what: str, case_id: str) -> bytes:
    size = p.stat().st_size
    if size == 0:
        raise _fail(case_id, what, p.name, "it is empty (0 bytes); expected a NIfTI file")
    gz = p.name.lower().endswith(".gz")
    try:
        with (gzip.open(p, "rb") if gz else open(p, "rb")) as fh:
            return fh.read(548)
    except (OSError, EOFError, zlib.error) as exc:
        with open(p, "rb") as fh:
            first = fh.read(8)
        state = ("truncated gzip data" if first[:2] == b"\x1f\x8b"
                 else f"not gzip data, its first bytes are {first!r}")
        raise _fail(case_id, what, p.name, f"not a NIfTI file ({state}); expected a .nii.gz "
                    "NIfTI file") from exc


def check_nifti(p: Path, what: str, case_id: str) -> tuple[int, ...] | None:
    """Refuse empty, truncated and non-NIfTI files with a message a user can act on (MONAI's
    own errors for these say "install the reader libraries" or nothing at all).

    Returns the shape the header declares (for the out-of-memory message), None when the
    header could not be parsed (the full read then reports what it lacks).
    """
    head = _head(p, what, case_id)
    sizes = {int.from_bytes(head[:4], order) for order in ("little", "big")} & set(_NIFTI_MAGIC)
    if len(head) < 4 or not sizes:
        raise _fail(case_id, what, p.name, f"not a NIfTI file (its first bytes are "
                    f"{head[:8]!r}); expected a NIfTI-1/2 image (.nii or .nii.gz)")
    hdr_size = sizes.pop()
    if len(head) < hdr_size:
        raise _fail(case_id, what, p.name, f"truncated, {len(head)} header bytes, expected a "
                    f"NIfTI header of {hdr_size}")
    at, magics = _NIFTI_MAGIC[hdr_size]
    if head[at:at + 4] not in magics and hdr_size != 348:  # 348 without magic: Analyze 7.5
        raise _fail(case_id, what, p.name, "not a NIfTI file (no NIfTI magic); expected a "
                    "NIfTI-1/2 image (.nii or .nii.gz)")
    problem = nifti_datatype_problem(head, hdr_size)  # DT_BINARY, complex, RGB: by name
    if problem:
        raise _fail(case_id, what, p.name, problem)
    try:
        import nibabel as nib

        img = nib.load(str(p))
        shape = tuple(int(n) for n in img.shape)
        if not np.all(np.isfinite(img.affine)):  # MONAI would silently fall back to identity
            raise _fail(case_id, what, p.name, "its affine (voxel-to-world matrix) holds NaN or "
                        "infinite values; expected a finite qform/sform in the header")
        problem = nifti_pixdim_problem(img)  # two tools would measure two volumes
        if problem:
            raise _fail(case_id, what, p.name, problem)
        if not p.name.lower().endswith(".gz"):
            need = int(img.dataobj.offset) + int(np.prod(shape, dtype=np.int64)) * \
                img.get_data_dtype().itemsize
            if p.stat().st_size < need:
                raise _fail(case_id, what, p.name, f"truncated, {p.stat().st_size} bytes, "
                            f"expected {need} for its declared shape {shape}")
        return shape
    except ValueError:
        raise
    except Exception:  # noqa: BLE001 - the full read below reports what the header lacks
        return None


def _time_unit(p: Path) -> str:
    try:
        import nibabel as nib

        return str(nib.load(str(p)).header.get_xyzt_units()[1])
    except Exception:  # noqa: BLE001 - the unit only words a message
        return "unknown"


def read_nifti(p: Path, *, is_image: bool, what: str, case_id: str) -> Volume:
    """Read a NIfTI file keeping its grid (see the module docstring for time series)."""
    shape = check_nifti(p, what, case_id)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data, meta = _loader(is_image)(str(p))
    except MemoryError as exc:
        raise _fail(case_id, what, p.name, f"its header declares shape {shape}, too large to "
                    "load (out of memory); expected a volume of the image's size") from exc
    array = np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
    affine = meta.get("affine", getattr(data, "affine", None))
    affine = np.eye(4) if affine is None else np.asarray(
        affine.detach().cpu().numpy() if hasattr(affine, "detach") else affine, dtype=np.float64)
    time_axis = None
    notes: list[str] = []
    if shape is not None and len(shape) >= 4 and shape[3] > 1:
        if len(shape) > 4 and int(np.prod(shape[4:])) > 1:
            raise _fail(case_id, what, p.name, f"shape {shape}: a time axis and vector "
                        "components together; expected at most one of them")
        unit = _time_unit(p)
        if unit == "unknown":  # no time unit: channels (MR modalities, as the Decathlon stores)
            if shape[3] > MAX_UNTIMED_CHANNELS:
                raise _fail(case_id, what, p.name, f"shape {shape}: a 4th axis of {shape[3]} "
                            "entries without a time unit; expected channels (at most "
                            f"{MAX_UNTIMED_CHANNELS}, e.g. MR modalities) or a time unit in "
                            "the header (xyzt_units) for a time series")
            notes.append(f"{what}: NIfTI 4th axis (no time unit) read as {shape[3]} channels")
            return Volume(array, affine, "nifti", notes=notes)
        # MONAI made dim 4 (time) the channel axis: put it back behind the spatial axes
        # (X, Y, 1, T) stays 4D here so that the time axis is the file's axis 3; the frame
        # reader drops the singleton slice axis of a 2D cine
        array = np.moveaxis(array, 0, -1)[None]
        time_axis = 3
        notes.append(f"{what}: NIfTI dim 4 is time ({shape[3]} frames, unit {unit})")
    return Volume(array, affine, "nifti", time_axis=time_axis, notes=notes)
