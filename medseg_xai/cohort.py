"""Cohorts: a manifest of cases (image, reference, optional prediction) plus metadata.

A manifest is a table with one row per case::

    case_id, image, label[, prediction][, probability][, patient_id][, any metadata ...]

Paths may be relative; they resolve against the manifest's folder (``from_csv``,
``from_parquet``, ``from_decathlon``) or ``root`` (``from_dataframe``). Volumes load through
:mod:`medseg_xai.io` (NIfTI, NRRD / Slicer ``.seg.nrrd``, MetaImage, DICOM series and DICOM-SEG,
2D PNG/JPEG/TIFF/BMP with a ``spacing`` column) keeping the voxel grid as stored: spacing and
orientation come from the affine, nothing is resampled (a DICOM-SEG is put on its source
series' grid). A prediction or reference on another grid than its image makes the case fail with a
message saying so, never a silent resample.

Acquisition metadata (device, site, field strength, slice thickness, kernel, study date) is read
from DICOM headers and BIDS-style JSON sidecars into columns where the manifest does not already
give them. Direct identifiers (patient names, ids from headers, birth dates) are never kept; case
and patient ids can be pseudonymised with a salted HMAC (``pseudonymise=True, salt=...``).

Validation happens up front: missing columns and duplicate case ids raise ``ValueError``;
per-row problems (missing or empty paths) are listed in :attr:`Cohort.problems` and turn into
failed rows of an audit instead of aborting it.
"""

from __future__ import annotations

import hashlib
import hmac
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai._dicom import IDENTIFYING_FIELDS, dicom_metadata, sidecar_metadata
from medseg_xai._io import file_kind
from medseg_xai._manifest import normalise_path, read_csv_manifest
from medseg_xai._memory import system_arrow_pool
from medseg_xai._patients import repeated_patient_columns, repeated_patient_warning
from medseg_xai._privacy import (
    free_text_findings,
    is_identifier_column,
    redact_paths,
    strip_file_names,
)
from medseg_xai._validation import check_label_values
from medseg_xai.io.nifti import check_nifti as _check_nifti
from medseg_xai.io.volume import Volume

__all__ = ["Case", "Cohort", "is_identifier", "load_on_one_grid", "load_volume", "pseudonym"]

REQUIRED_COLUMNS = ("case_id", "image", "label")
PATH_COLUMNS = ("image", "label", "prediction", "probability")
#: Reading options of a row (pixel spacing of 2D raster files; a time series' frame axis and
#: the frame of an expanded row). ``frame`` also stays a metadata column (a stratum).
READ_COLUMNS = ("spacing", "frame_axis", "frame")
RESERVED_COLUMNS = (*PATH_COLUMNS, "case_id", "patient_id", "spacing", "frame_axis")
#: Several readers' references: columns ``label_<reader>`` (``label_r1, label_r2, ...``).
READER_PREFIX = "label_"
_GRID_ATOL_MM = 1e-3


@dataclass
class Case:
    """One loaded case.

    Attributes
    ----------
    case_id : str
    image : numpy.ndarray
        ``(C, *spatial)`` float32.
    label : numpy.ndarray or None
        Reference label map, spatial shape.
    prediction : numpy.ndarray or None
        Stored predicted label map, spatial shape.
    probability : numpy.ndarray or None
        Stored probabilities, ``(K, *spatial)`` or spatial shape (foreground probability).
    spacing : tuple of float
        Voxel size in mm per spatial axis (from the image affine).
    affine : numpy.ndarray
        ``(ndim + 1, ndim + 1)`` voxel-to-world matrix of the image.
    metadata : dict
        Manifest metadata of the row (no path columns).
    readers : dict
        Reader name -> that reader's label map (manifest columns ``label_<reader>``), grid-checked.
    missing_readers : list of str
        Readers whose file was absent, skipped with ``allow_missing_readers=True``.
    class_names : dict
        Label value -> name where the reference file names its segments (Slicer ``.seg.nrrd``,
        DICOM-SEG).
    notes : list of str
        What the readers assumed (default pixel spacing, colour as channels, resampling).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    prediction: np.ndarray | None
    probability: np.ndarray | None
    spacing: tuple[float, ...]
    affine: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)
    readers: dict[str, np.ndarray] = field(default_factory=dict)
    missing_readers: list[str] = field(default_factory=list)
    class_names: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def reader_columns(columns: Any) -> list[str]:
    """The ``label_<reader>`` columns of a manifest, in manifest order."""
    return [str(c) for c in columns
            if str(c).startswith(READER_PREFIX) and len(str(c)) > len(READER_PREFIX)]


def pseudonym(value: object, salt: str | bytes, prefix: str = "") -> str:
    """Salted HMAC-SHA256 pseudonym of an identifier (16 hex characters).

    The same value and salt always give the same pseudonym, so patients stay grouped; without
    the salt the original cannot be recovered by hashing guesses.
    """
    key = salt.encode("utf-8") if isinstance(salt, str) else bytes(salt)
    digest = hmac.new(key, str(value).encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}{digest[:16]}"


# --------------------------------------------------------------------------------------------
# loading


def _kind(path: Path) -> str:
    """``"dicom"`` for DICOM series folders and files, else the reading format."""
    from medseg_xai.io import format_of

    return format_of(path)


def read_file(path: str | Path, *, is_image: bool = True, what: str = "image",
              case_id: str = "?", **kwargs: Any) -> Volume:
    """Read one image or label file (any format of :mod:`medseg_xai.io`) as a
    :class:`~medseg_xai.io.Volume`; ``kwargs`` go to :func:`medseg_xai.io.read_volume`."""
    from medseg_xai.io import read_volume

    return read_volume(path, is_image=is_image, what=what, case_id=case_id, **kwargs)


def load_volume(
    path: str | Path, *, is_image: bool = True, what: str = "image", case_id: str = "?"
) -> tuple[np.ndarray, np.ndarray]:
    """Load one volume keeping its grid (any format of :mod:`medseg_xai.io`).

    Parameters
    ----------
    path : str or Path
        NIfTI, NRRD, MetaImage, PNG/JPEG/TIFF/BMP file or DICOM series folder / file.
    is_image : bool
        Images are cast to float32; masks keep their stored dtype.
    what, case_id : str
        Used in error messages.

    Returns
    -------
    array : numpy.ndarray
        ``(C, *spatial)``.
    affine : numpy.ndarray
        Voxel-to-world matrix.

    Raises
    ------
    ValueError
        If the file is missing or unreadable, naming the case, field and path.
    """
    vol = read_file(path, is_image=is_image, what=what, case_id=case_id)
    return vol.array, vol.affine


def _spacing(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    return tuple(float(np.linalg.norm(affine[:ndim, i])) for i in range(ndim))


#: Default threshold of soft (probabilistic, 0..1) references: a voxel is reference
#: foreground where its value is >= this; recorded in every audit's settings.
REFERENCE_THRESHOLD = 0.5


def _soft_reference(array: np.ndarray, threshold: float, what: str,
                    notes: list[str] | None) -> np.ndarray:
    """A soft reference (floats in 0..1, some not 0 or 1) thresholded at ``>= threshold``;
    any other map unchanged (integer maps keep the label-value rule)."""
    if array.dtype.kind != "f" or not np.all(np.isfinite(array)):
        return array
    if array.size == 0 or array.min() < 0 or array.max() > 1 or np.all(array == np.round(array)):
        return array
    if notes is not None:
        notes.append(f"{what}: soft reference (values in 0..1) thresholded at >= {threshold:g} "
                     "(reference_threshold)")
    return (array >= threshold).astype(np.uint8)


def _as_mask(array: np.ndarray, what: str, case_id: str, labels: Any = None,
             binarize: bool = False, *, reference_threshold: float | None = None,
             notes: list[str] | None = None) -> np.ndarray:
    if array.ndim >= 3 and array.shape[0] == 1:
        array = array[0]
    if reference_threshold is not None:
        array = _soft_reference(array, float(reference_threshold), what, notes)
    if binarize and notes is not None and array.dtype != bool:
        found = [v for v in np.unique(array).tolist() if v > 0]
        notes.append(f"{what}: binarize counted value(s) {found[:8]}"
                     f"{' and more' if len(found) > 8 else ''} as foreground")
    # label values are explicit: anything outside ``labels`` fails here, with the values found
    array = check_label_values(array, labels, f"case {case_id!r}: {what}", binarize=binarize)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"case {case_id!r}: {what} contains NaN or infinite values")
    if array.dtype.kind == "f":
        if not np.all(array == np.round(array)):
            raise ValueError(
                f"case {case_id!r}: {what}: expected an integer label map, got non-integer values"
            )
        array = array.astype(np.int16 if array.max(initial=0) < 2**15 else np.int32)
    return array


def _check_grid(
    case_id: str, what: str, shape: tuple[int, ...], affine: np.ndarray,
    ref_shape: tuple[int, ...], ref_affine: np.ndarray, against: str = "the image",
) -> None:
    """The one grid check of every entry point (audit, metrics, explain): shape, spacing and
    orientation (the affine) must match ``against``; nothing is resampled."""
    if tuple(shape) != tuple(ref_shape):
        raise ValueError(
            f"case {case_id!r}: {what} grid does not match {against}: expected spatial shape "
            f"{tuple(ref_shape)}, got {tuple(shape)}"
        )
    if affine.shape != ref_affine.shape:
        raise ValueError(f"case {case_id!r}: {what} grid does not match {against}: expected a "
                         f"{ref_affine.shape} affine, got {affine.shape}")
    ndim = affine.shape[0] - 1
    sp, ref_sp = _spacing(affine, ndim), _spacing(ref_affine, ndim)
    if not np.allclose(sp, ref_sp, atol=_GRID_ATOL_MM):
        raise ValueError(
            f"case {case_id!r}: {what} grid does not match {against}: expected spacing "
            f"{tuple(round(v, 4) for v in ref_sp)} mm, got {tuple(round(v, 4) for v in sp)} mm"
        )
    if not np.allclose(affine, ref_affine, atol=_GRID_ATOL_MM):
        raise ValueError(
            f"case {case_id!r}: {what} grid does not match {against} (orientation or origin "
            f"differ): expected affine {np.round(ref_affine, 4).tolist()}, got "
            f"{np.round(affine, 4).tolist()}"
        )


def load_on_one_grid(
    case_id: str,
    paths: Mapping[str, str | None],
    grid: str,
    *,
    images: Sequence[str] = (),
    labels: Any = None,
    binarize: bool = False,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Load several volumes and check they share the grid of ``paths[grid]``.

    The loader of the ``metrics`` and ``explain`` commands, with the checks of an audit:
    readable NIfTI files, finite affines, equal shape, spacing and orientation, and label values
    as declared (:func:`medseg_xai._validation.check_label_values`).

    Parameters
    ----------
    case_id : str
        Names the case in messages.
    paths : mapping
        Field name -> file (None entries are skipped).
    grid : str
        The field whose grid the others must match.
    images : sequence of str
        Fields that are intensity images (float32 ``(C, *spatial)``); the others are label maps
        (spatial shape).
    labels, binarize
        The label-value rule for label maps.

    Returns
    -------
    arrays : dict
        Field -> array.
    affine : numpy.ndarray
        The grid's affine.
    """
    for what, path in paths.items():  # every file's header first: a bad one fails before work
        p = Path(path) if path is not None else None
        if p is not None and p.is_file() and _kind(p) == "nifti":
            _check_nifti(p, what, case_id)
    if paths.get(grid) is None:
        raise ValueError(f"case {case_id!r}: {grid}: expected a file path, got none")
    base = read_file(str(paths[grid]), is_image=grid in images, what=grid, case_id=case_id)
    base = _time(base, {}, grid, case_id)
    out: dict[str, np.ndarray] = {
        grid: base.array if grid in images else _as_mask(base.array, grid, case_id, labels,
                                                         binarize)}
    for what, path in paths.items():
        if path is None or what == grid:
            continue
        vol = _read_on_grid(case_id, what, str(path), base, {}, what in images)
        if what not in images:
            _check_label_shape(case_id, what, vol, base)
        out[what] = vol.array if what in images else _as_mask(vol.array, what, case_id,
                                                              labels, binarize)
        shape = out[what].shape[1:] if what in images else out[what].shape
        _check_grid(case_id, what, shape, vol.affine, base.spatial_shape, base.affine,
                    against=f"the {grid}")
    return out, base.affine


def _parse_spacing(value: Any, case_id: str) -> tuple[float, float] | None:
    """A manifest ``spacing`` cell ("0.5", "0.5 0.4", "0.5x0.4") -> mm per pixel (x, y)."""
    if _empty(value):
        return None
    parts = str(value).replace("x", " ").replace(",", " ").split()
    try:
        nums = [float(v) for v in parts]
    except ValueError:
        nums = []
    if len(nums) not in (1, 2) or not all(np.isfinite(v) and v > 0 for v in nums):
        raise ValueError(f"case {case_id!r}: spacing: expected one or two positive numbers in "
                         f"mm per pixel (\"0.5\" or \"0.5 0.4\"), got {value!r}")
    return (nums[0], nums[-1])


def _drop_axis(array: np.ndarray, affine: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove spatial ``axis`` (of a ``(C, *spatial)`` array) and move its affine column behind
    the remaining axes, so the 4x4 matrix still maps the remaining voxel axes."""
    n = array.ndim - 1
    cols = [i for i in range(n) if i != axis] + [axis]
    new = affine.copy()
    new[:3, :n] = affine[:3, cols] if n <= 3 else affine[:3, cols[:3]]
    return np.take(array, 0, axis=axis + 1), new


def _select_frame(vol: Volume, axis: int, frame: int, what: str, case_id: str) -> Volume:
    """One frame of a time series as its own 2D/3D volume."""
    n = vol.array.shape[axis + 1]
    if not 0 <= frame < n:
        raise ValueError(f"case {case_id!r}: {what}: frame {frame} out of range; expected 0.."
                         f"{n - 1} along axis {axis}")
    arr = np.take(vol.array, [frame], axis=axis + 1)
    affine = vol.affine
    if axis < 3:
        arr, affine = _drop_axis(arr, affine, axis)
    else:
        arr = arr[..., 0]
    if arr.ndim == 4 and 1 in arr.shape[1:]:  # (X, Y, 1) after the frame: a 2D frame
        arr, affine = _drop_axis(arr, affine, arr.shape[1:].index(1))
    return Volume(arr, affine, vol.format, vol.geometry, vol.class_names, None, vol.notes,
                  vol.frame_of_reference)


def _time(vol: Volume, read: Mapping[str, Any], what: str, case_id: str) -> Volume:
    """Apply the declared frame (manifest ``frame_axis`` + ``frame``, or the header's time
    axis); a time series without a frame is refused, never scored as a volume or channels."""
    axis = read.get("frame_axis")
    axis = vol.time_axis if _empty(axis) else int(axis)
    if axis is None:
        return vol
    frame = read.get("frame")
    if _empty(frame):
        n = vol.array.shape[axis + 1] if axis + 1 < vol.array.ndim else "?"
        raise ValueError(
            f"case {case_id!r}: {what}: a time series ({n} frames along axis {axis}); expected "
            "a 2D/3D volume, or a manifest frame_axis column for per-frame evaluation")
    if axis + 1 >= vol.array.ndim:
        raise ValueError(f"case {case_id!r}: {what}: frame_axis {axis}: expected an axis of "
                         f"the shape {vol.array.shape[1:]}")
    return _select_frame(vol, axis, int(frame), what, case_id)


def _read_image(case_id: str, path: str, read: Mapping[str, Any]) -> Volume:
    vol = read_file(path, is_image=True, what="image", case_id=case_id,
                    spacing=_parse_spacing(read.get("spacing"), case_id))
    vol = _time(vol, read, "image", case_id)
    if vol.array.ndim < 3:
        raise ValueError(
            f"case {case_id!r}: image: expected a 2D or 3D volume, got shape {vol.array.shape[1:]}"
        )
    if vol.array.ndim > 4:
        raise ValueError(f"case {case_id!r}: image: expected a 2D or 3D volume (channels "
                         f"first), got shape {vol.array.shape}")
    if not np.all(np.isfinite(vol.array)):
        n_bad = int(np.size(vol.array) - np.count_nonzero(np.isfinite(vol.array)))
        raise ValueError(
            f"case {case_id!r}: image contains {n_bad} NaN or infinite voxels; expected finite "
            "intensities"
        )
    return vol


def _read_on_grid(case_id: str, what: str, path: str, image: Volume, read: Mapping[str, Any],
                  is_image: bool = False) -> Volume:
    """A label/prediction/probability file read and put on the image's grid: a file without
    geometry (PNG...) takes the image's when the shapes agree; a DICOM-SEG is put on it."""
    spatial = image.spatial_shape
    vol = read_file(path, is_image=is_image, what=what, case_id=case_id,
                    spacing=_parse_spacing(read.get("spacing"), case_id),
                    grid=(spatial, image.affine), frame_of_reference=image.frame_of_reference)
    if vol.time_axis is not None or not _empty(read.get("frame_axis")):
        if not _empty(read.get("frame")) or vol.time_axis is not None:
            vol = _time(vol, read, what, case_id)
    if vol.array.ndim - 1 != len(spatial) and not is_image and vol.array.ndim == len(spatial):
        vol.array = vol.array[None]  # a spatial-only array from a reader without channels
    shape = vol.array.shape[1:]
    if vol.geometry != "file" and image.geometry == "file" and tuple(shape) == spatial:
        vol.affine = image.affine  # no geometry in the file: the image's, shapes checked
    return vol


def _load_volume(case_id: str, what: str, path: str, image: Volume, read: Mapping[str, Any],
                 labels: Any, binarize: bool, reference_threshold: float, notes: list[str]
                 ) -> tuple[np.ndarray, dict[int, str]]:
    """A label, prediction or probability file on the image's grid, checked (notes appended)."""
    spatial, affine = image.spatial_shape, image.affine
    vol = _read_on_grid(case_id, what, path, image, read, what == "probability")
    notes += vol.notes
    if what == "probability":
        if not np.all(np.isfinite(vol.array)):
            raise ValueError(f"case {case_id!r}: probability contains NaN or infinite values")
        _check_grid(case_id, what, vol.array.shape[1:], vol.affine, spatial, affine)
        return vol.array.astype(np.float32, copy=False), {}
    _check_label_shape(case_id, what, vol, image)
    mask = _as_mask(vol.array, what, case_id, labels, binarize, notes=notes,
                    reference_threshold=reference_threshold if what == "label" else None)
    _check_grid(case_id, what, mask.shape, vol.affine, spatial, affine)
    return mask, dict(vol.class_names)


def load_case_from_paths(
    case_id: str,
    paths: Mapping[str, str | None],
    metadata: Mapping[str, Any] | None = None,
    *,
    load_image: bool = True,
    labels: Any = None,
    binarize: bool = False,
    allow_missing_readers: bool = False,
    read: Mapping[str, Any] | None = None,
    reference_threshold: float = REFERENCE_THRESHOLD,
) -> Case:
    """Load a case from its path columns and check that every volume shares the image grid.

    Parameters
    ----------
    case_id : str
    paths : mapping
        ``image`` and ``label`` (required unless reader columns ``label_<reader>`` are given),
        ``prediction``, ``probability`` and ``label_<reader>`` (optional).
    metadata : mapping, optional
        Stored on the case unchanged.
    load_image : bool
        Always True in audits (the image grid is the reference grid and NaN images must fail).
    labels : list of int, dict or None
        Declared label values of the label and prediction maps (None: binary ``{0, 1}``);
        other values fail the case with the values found
        (:func:`medseg_xai._validation.check_label_values`).
    binarize : bool
        Count every value ``> 0`` as foreground instead.
    allow_missing_readers : bool
        Skip reader files that are absent (listed in ``Case.missing_readers``) instead of failing.
    read : mapping, optional
        Reading options from the manifest (:data:`READ_COLUMNS`): ``spacing`` (mm per pixel of
        2D PNG/JPEG/TIFF/BMP files), ``frame_axis`` and ``frame`` (one frame of a time series).
    reference_threshold : float
        A soft reference (label or reader file of floats in 0..1) counts voxels ``>=`` it as
        foreground (stated in ``Case.notes``); integer label maps are unaffected.

    Raises
    ------
    ValueError
        Naming the case and the field for missing/unreadable files, grid mismatches, NaN values.
    """
    read = dict(read or {})
    image = _read_image(case_id, str(paths["image"]), read)
    spatial, affine = image.spatial_shape, image.affine
    notes = list(image.notes)
    class_names: dict[int, str] = {}
    volumes: dict[str, np.ndarray | None] = {"label": None, "prediction": None, "probability": None}
    for what in ("label", "prediction", "probability"):
        path = paths.get(what)
        if _empty(path):
            continue
        volumes[what], names = _load_volume(case_id, what, str(path), image, read, labels,
                                            binarize, reference_threshold, notes)
        if what == "label":
            class_names = names
    readers, missing_readers = _load_readers(case_id, paths, image, read, labels, binarize,
                                             allow_missing_readers, reference_threshold, notes)
    if volumes["label"] is None and not reader_columns(paths):
        raise ValueError(f"case {case_id!r}: label: expected a reference file path, got none")
    return Case(
        case_id=case_id,
        image=image.array.astype(np.float32, copy=False),
        label=volumes["label"],
        prediction=volumes["prediction"],
        probability=volumes["probability"],
        spacing=_spacing(affine, len(spatial)),
        affine=affine,
        metadata=dict(metadata or {}),
        readers=readers,
        missing_readers=missing_readers,
        class_names=class_names,
        notes=list(dict.fromkeys(notes)),
    )


def _check_label_shape(case_id: str, what: str, vol: Volume, image: Volume) -> None:
    """A label with more axes than the image (or a 3D label of a 3D+t image) fails clearly."""
    if vol.array.ndim >= 3 and vol.array.shape[0] > 1:
        raise ValueError(
            f"case {case_id!r}: {what}: expected one label map on the image grid "
            f"{image.spatial_shape}, got {vol.array.shape[0]} channels/frames of shape "
            f"{vol.array.shape[1:]}")


def _load_readers(case_id: str, paths: Mapping[str, str | None], image: Volume,
                  read: Mapping[str, Any], labels: Any, binarize: bool,
                  allow_missing: bool, reference_threshold: float | None = None,
                  notes: list[str] | None = None) -> tuple[dict[str, np.ndarray], list[str]]:
    readers: dict[str, np.ndarray] = {}
    missing: list[str] = []
    for col in reader_columns(paths):
        name, path = col[len(READER_PREFIX):], paths.get(col)
        if _empty(path) or not Path(str(path)).exists():
            if allow_missing:
                missing.append(name)
                continue
            raise ValueError(f"case {case_id!r}: reader {name!r} ({col}): expected a file, got "
                             + ("an empty value" if _empty(path) else "a missing file"))
        vol = _read_on_grid(case_id, col, str(path), image, read)
        mask = _as_mask(vol.array, col, case_id, labels, binarize, notes=notes,
                        reference_threshold=reference_threshold)
        _check_grid(case_id, col, mask.shape, vol.affine, image.spatial_shape, image.affine)
        readers[name] = mask
    return readers, missing


# --------------------------------------------------------------------------------------------
# cohort


def _frame_count(path: str, axis: int) -> int:
    """Entries along ``axis`` of a file (the header only for NIfTI)."""
    p = Path(path)
    if _kind(p) == "nifti":
        import nibabel as nib

        shape = nib.load(str(p)).shape
    else:
        shape = read_file(p).array.shape[1:]
    if not 0 <= axis < len(shape):
        raise ValueError(f"frame_axis: expected an axis of the image shape {tuple(shape)}, "
                         f"got {axis}")
    return int(shape[axis])


def _expand_frames(df: pd.DataFrame, problems: list[dict[str, str]]) -> pd.DataFrame:
    """Rows with a ``frame_axis`` become one row per frame: case id ``<case>_f<k>``, a
    ``frame`` column (a stratum) and ``patient_id`` the case's (frames are clustered by case in
    every interval unless a patient id groups them more widely)."""
    rows: list[dict[str, Any]] = []
    for rec in df.to_dict(orient="records"):
        value = rec.get("frame_axis")
        if _empty(value):
            rows.append(rec)
            continue
        cid = rec["case_id"]
        try:
            axis = int(float(value))
            if axis != float(value):
                raise ValueError
        except (TypeError, ValueError):
            problems.append({"case_id": cid, "field": "frame_axis", "message":
                             f"case {cid!r}: frame_axis: expected an axis number, got {value!r}"})
            rows.append(rec)
            continue
        try:
            n = _frame_count(str(rec["image"]), axis) if rec.get("image") else 0
        except Exception as exc:  # noqa: BLE001 - the row fails, the cohort goes on
            problems.append({"case_id": cid, "field": "frame_axis",
                             "message": f"case {cid!r}: frame_axis: {exc}"})
            rows.append(rec)
            continue
        patient = rec.get("patient_id")
        for k in range(n):
            rows.append({**rec, "case_id": f"{cid}_f{k}", "frame": k, "frame_axis": axis,
                         "patient_id": cid if _empty(patient) else patient})
    out = pd.DataFrame(rows, columns=[*df.columns, *[c for c in ("frame", "patient_id")
                                                    if c not in df.columns]])
    if "frame" in out.columns:
        out["frame"] = out["frame"].astype("Int64")
    return out


def is_identifier(column: object) -> bool:
    """A manifest column that holds a direct identifier (by normalised name or a DICOM
    identifying keyword); never kept. ``patient_id`` is the grouping key, pseudonymised."""
    name = str(column)
    return (name.lower() in IDENTIFYING_FIELDS and name != "patient_id") or \
        is_identifier_column(name)


def describe_findings(found: Mapping[str, Mapping[str, int]]) -> str:
    """``{column: {kind: n}}`` in words, without any cell's content."""
    return "; ".join(f"column {col!r} holds what looks like " + ", ".join(
        f"{kind} ({n} cell{'s' if n > 1 else ''})" for kind, n in kinds.items())
        for col, kinds in found.items())


def _warn_shared_files(df: pd.DataFrame) -> None:
    """Rows naming the same image, label or prediction file count one scan twice (a copy-paste
    slip in a spreadsheet): legal, so a warning naming the column and the case ids."""
    shared = []
    for col in ("image", "label", "prediction"):
        if col not in df.columns:
            continue
        paths = df[col]
        dup = paths.notna() & paths.duplicated(keep=False)
        if dup.any():
            ids = df["case_id"][dup].tolist()
            shared.append(f"{col} of cases {ids[:6]}" + (f" (+{len(ids) - 6})" if len(ids) > 6 else ""))
    if shared:
        warnings.warn("manifest: rows share files, so a scan counts more than once: "
                      + "; ".join(shared), stacklevel=3)


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _check_manifest(manifest: Any, pseudonymise: bool, salt: str | bytes | None) -> list[str]:
    """Check the manifest's type, required columns, rows and salt; its reader columns."""
    if not isinstance(manifest, pd.DataFrame):
        raise ValueError(f"manifest: expected a pandas DataFrame, got {type(manifest).__name__}")
    readers = reader_columns(manifest.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in manifest.columns
               and not (c == "label" and readers)]
    if missing:
        raise ValueError(
            f"manifest: missing required column(s) {missing}; expected at least "
            f"{list(REQUIRED_COLUMNS)}, got {list(map(str, manifest.columns))}"
        )
    if pseudonymise and salt is None:
        raise ValueError("salt: expected a secret str or bytes when pseudonymise=True, got None")
    if len(manifest) == 0:
        raise ValueError(
            "manifest: expected at least one case row, got a header only (columns "
            f"{list(map(str, manifest.columns))[:12]})"
        )
    return readers


def _checked_ids(manifest: pd.DataFrame) -> pd.DataFrame:
    """A copy of the manifest with non-empty, unique case ids as str."""
    df = manifest.copy().reset_index(drop=True)
    ids = df["case_id"]
    empty_ids = [i for i, v in enumerate(ids) if _empty(v)]
    if empty_ids:
        raise ValueError(
            f"manifest: case_id: expected a non-empty id in every row, got empty ids in rows "
            f"{empty_ids[:10]}"
        )
    df["case_id"] = [str(v) if not isinstance(v, float) else f"{v:g}" for v in ids]
    dup = df["case_id"][df["case_id"].duplicated()].unique().tolist()
    if dup:
        raise ValueError(
            f"manifest: case_id: expected unique ids, got duplicates {dup[:10]}"
            + (f" (and {len(dup) - 10} more)" if len(dup) > 10 else "")
        )
    return df


def _resolve_paths(df: pd.DataFrame, base: Path, readers: Sequence[str],
                   problems: list[dict[str, str]]) -> None:
    """Resolve the path columns in place against ``base``; missing/odd files go to problems."""
    for col in (*PATH_COLUMNS, *readers):
        if col not in df.columns:
            continue
        resolved: list[object] = []
        for cid, value in zip(df["case_id"], df[col]):
            if _empty(value):
                if col in REQUIRED_COLUMNS or col in readers:
                    problems.append({"case_id": cid, "field": col, "message":
                                     f"case {cid!r}: {col}: expected a file path, got an empty value"})
                resolved.append(None)
                continue
            p = normalise_path(str(value), base)  # Windows "\\" separators too
            if not p.exists():
                problems.append({"case_id": cid, "field": col, "message":
                                 f"case {cid!r}: {col} file not found: expected a file at {str(p)!r}"})
            elif not (p.is_file() or p.is_dir()):  # a FIFO or device would hang the audit
                problems.append({"case_id": cid, "field": col, "message":
                                 f"case {cid!r}: {col}: expected a regular file, got "
                                 f"{file_kind(p)} at {str(p)!r}"})
            resolved.append(str(p))
        # no dtype: pandas >= 3 stores the paths as Arrow strings (about half the memory
        # of a Python str per row: 100,000 rows x 3 path columns were 25 MB as objects)
        with system_arrow_pool():  # see medseg_xai._memory
            df[col] = pd.Series(resolved, index=df.index)


def _pseudonymise(df: pd.DataFrame, problems: list[dict[str, str]], salt: str | bytes) -> None:
    """Replace case and patient ids by salted pseudonyms in place (problems too)."""
    mapping = {cid: pseudonym(cid, salt, "c-") for cid in df["case_id"]}
    df["case_id"] = df["case_id"].map(mapping)
    for prob in problems:  # file names can carry the original ids too
        prob["message"] = strip_file_names(prob["message"].replace(
            repr(prob["case_id"]), repr(mapping[prob["case_id"]])))
        prob["case_id"] = mapping[prob["case_id"]]
    if "patient_id" in df.columns:
        df["patient_id"] = [None if _empty(v) else pseudonym(v, salt, "p-")
                            for v in df["patient_id"]]


class Cohort:
    """A validated manifest of cases.

    Parameters
    ----------
    manifest : pandas.DataFrame
        Columns ``case_id, image, label``; optional ``prediction, probability, patient_id`` and
        any metadata columns.
    root : str or Path, optional
        Folder that relative paths resolve against (default: the current directory).
    read_metadata : bool
        Fill acquisition columns (``device``, ``site``, ``manufacturer``, ``model``,
        ``field_strength``, ``slice_thickness``, ``kernel``, ``study_date``...) from DICOM headers
        and JSON sidecars where the manifest leaves them empty.
    pseudonymise : bool
        Replace case ids and patient ids by salted HMAC pseudonyms (requires ``salt``).
    salt : str or bytes, optional
        Secret salt of the pseudonyms; keep it to map results back to cases.

    Raises
    ------
    ValueError
        Missing required columns, duplicate or empty case ids, a missing salt.

    Attributes
    ----------
    manifest : pandas.DataFrame
        Validated manifest with absolute path strings.
    problems : pandas.DataFrame
        ``case_id, field, message`` for per-row problems (missing files...); these rows fail in
        an audit with the message as their error.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path | None = None,
        *,
        read_metadata: bool = True,
        pseudonymise: bool = False,
        salt: str | bytes | None = None,
        source: str | None = None,
    ) -> None:
        readers = _check_manifest(manifest, pseudonymise, salt)
        df = _checked_ids(manifest)
        # looked for before identifier columns are dropped: "PatientID" is both
        self.repeated_patient_columns: list[str] = repeated_patient_columns(df)
        if self.repeated_patient_columns:
            warnings.warn(f"manifest: {repeated_patient_warning(self.repeated_patient_columns)}",
                          stacklevel=2)
        dropped = [c for c in df.columns if is_identifier(c)]
        if dropped:
            warnings.warn(
                f"manifest: dropping {len(dropped)} direct-identifier column(s) "
                f"{[str(c) for c in dropped]}; they are never kept",
                stacklevel=2,
            )
            df = df.drop(columns=dropped)
        self.dropped_columns: list[str] = [str(c) for c in dropped]
        base = Path(root) if root is not None else Path.cwd()
        problems: list[dict[str, str]] = []
        _resolve_paths(df, base, readers, problems)
        if "frame_axis" in df.columns:
            df = _expand_frames(df, problems)
        if read_metadata:
            df = self._fill_metadata(df, problems)
        if pseudonymise:
            assert salt is not None
            _pseudonymise(df, problems, salt)
        _warn_shared_files(df)  # after pseudonymisation: the ids shown are the ones kept
        self.manifest: pd.DataFrame = df
        self.problems: pd.DataFrame = pd.DataFrame(problems, columns=["case_id", "field", "message"])
        self.root = base
        self.source = source
        self.pseudonymised = bool(pseudonymise)
        self._positions: dict[str, int] | None = None  # built on the first row() lookup
        self._fingerprint: str | None = None
        if len(self.problems):
            warnings.warn(  # stderr is shared too (logs, CI): file names only, no folders
                f"cohort: {len(self.problems)} row problem(s), these cases will fail: "
                + "; ".join(redact_paths(m) for m in self.problems["message"].head(3)),
                stacklevel=2,
            )

    # -- constructors ------------------------------------------------------------------------

    @classmethod
    def from_dataframe(cls, df: pd.DataFrame, root: str | Path | None = None, **kwargs: Any) -> Cohort:
        """Cohort from a DataFrame; relative paths resolve against ``root`` (default: cwd)."""
        return cls(df, root=root, **kwargs)

    @classmethod
    @system_arrow_pool()
    def from_csv(cls, path: str | Path, root: str | Path | None = None, *,
                 na_values: Sequence[str] | None = None, **kwargs: Any) -> Cohort:
        """Cohort from a CSV manifest; relative paths resolve against its folder.

        The encoding is detected (UTF-8 with or without a byte-order mark, UTF-16, cp1252 with a
        warning), ``;``-separated files are read, and only empty cells are missing: a case id or
        site ``NA`` stays that text unless listed in ``na_values``
        (:func:`medseg_xai._manifest.read_csv_manifest`).
        """
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"manifest: expected a CSV file, got {str(p)!r} (not found)")
        df = read_csv_manifest(p, na_values=na_values)
        return cls(df, root=root if root is not None else p.parent, source=str(p), **kwargs)

    @classmethod
    @system_arrow_pool()
    def from_parquet(cls, path: str | Path, root: str | Path | None = None, **kwargs: Any) -> Cohort:
        """Cohort from a Parquet manifest (``parquet`` extra); relative paths resolve against its
        folder."""
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"manifest: expected a Parquet file, got {str(p)!r} (not found)")
        return cls(pd.read_parquet(p), root=root if root is not None else p.parent,
                   source=str(p), **kwargs)

    @classmethod
    def from_decathlon(
        cls,
        path: str | Path,
        *,
        section: str = "training",
        predictions_dir: str | Path | None = None,
        **kwargs: Any,
    ) -> Cohort:
        """Cohort from a Medical Segmentation Decathlon ``dataset.json``.

        Parameters
        ----------
        path : str or Path
            The ``dataset.json``; its ``training`` entries hold ``image`` and ``label`` paths.
        section : str
            Which list to read (``"training"``; ``"test"`` entries have no labels).
        predictions_dir : str or Path, optional
            Folder with one prediction per case named like the image file.
        """
        import json

        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"dataset.json: expected a readable JSON file at {str(p)!r} ({exc})") from exc
        entries = data.get(section)
        if not isinstance(entries, list) or not entries:
            raise ValueError(
                f"dataset.json: expected a non-empty list under {section!r}, got "
                f"{type(entries).__name__}"
            )
        rows = []
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                entry = {"image": entry}
            if not isinstance(entry, dict) or "image" not in entry:
                raise ValueError(f"dataset.json: {section}[{i}]: expected an object with 'image'")
            image = str(entry["image"])
            name = Path(image).name
            case_id = name[:-7] if name.endswith(".nii.gz") else Path(name).stem
            row = {"case_id": case_id, "image": image, "label": entry.get("label")}
            if predictions_dir is not None:
                row["prediction"] = str(Path(predictions_dir) / name)
            if isinstance(data.get("modality"), dict):
                row["modality"] = ",".join(str(v) for v in data["modality"].values())
            rows.append(row)
        kwargs.setdefault("root", p.parent)
        return cls(pd.DataFrame(rows), source=str(p), **kwargs)

    # -- metadata ----------------------------------------------------------------------------

    @staticmethod
    def _fill_metadata(df: pd.DataFrame, problems: list[dict[str, str]]) -> pd.DataFrame:
        found: list[dict[str, Any]] = []
        for cid, image in zip(df["case_id"], df["image"]):
            meta: dict[str, Any] = {}
            if image is not None and Path(image).exists():
                try:
                    if _kind(Path(image)) == "dicom":
                        meta.update(dicom_metadata(image))
                    meta.update(sidecar_metadata(image))
                except ValueError as exc:
                    problems.append({"case_id": cid, "field": "metadata", "message": f"case {cid!r}: {exc}"})
            found.append(meta)
        columns = sorted({k for m in found for k in m})
        for col in columns:
            values = [m.get(col) for m in found]
            if col in df.columns:
                df[col] = [v if _empty(old) else old for old, v in zip(df[col], values)]
            else:
                df[col] = pd.Series(values, index=df.index, dtype=object)
        return df

    # -- access ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.manifest)

    def __iter__(self) -> Iterator[str]:
        return iter(self.case_ids)

    def __repr__(self) -> str:
        return (f"Cohort({len(self)} cases, metadata={self.metadata_columns}, "
                f"problems={len(self.problems)})")

    @property
    def case_ids(self) -> list[str]:
        """Case ids in manifest order."""
        return self.manifest["case_id"].tolist()

    @property
    def metadata_columns(self) -> list[str]:
        """Columns that are neither paths nor ids (candidates for strata)."""
        readers = set(reader_columns(self.manifest.columns))
        return [str(c) for c in self.manifest.columns
                if c not in RESERVED_COLUMNS and c not in readers]

    @property
    def readers(self) -> list[str]:
        """Reader names from the ``label_<reader>`` columns (empty without readers)."""
        return [c[len(READER_PREFIX):] for c in reader_columns(self.manifest.columns)]

    @property
    def has_predictions(self) -> bool:
        """True when every row names a stored prediction."""
        return "prediction" in self.manifest and bool(self.manifest["prediction"].notna().all())

    def row(self, case_id: str) -> dict[str, Any]:
        """Manifest row of a case as a dict."""
        if self._positions is None:  # not at construction: an audit never looks rows up
            self._positions = {cid: i for i, cid in enumerate(self.manifest["case_id"])}
        if case_id not in self._positions:
            raise ValueError(f"case_id: expected one of the cohort's {len(self)} ids, got {case_id!r}")
        return self.manifest.iloc[self._positions[case_id]].to_dict()

    def metadata(self, case_id: str) -> dict[str, Any]:
        """Metadata columns of a case."""
        row = self.row(case_id)
        return {k: row[k] for k in self.metadata_columns}

    def paths(self, case_id: str) -> dict[str, str | None]:
        """Path columns of a case (absolute, None when absent)."""
        row = self.row(case_id)
        cols = (*PATH_COLUMNS, *reader_columns(self.manifest.columns))
        return {c: (None if _empty(row.get(c)) else row.get(c)) for c in cols}

    def read_options(self, case_id: str) -> dict[str, Any]:
        """Reading options of a case (:data:`READ_COLUMNS`: ``spacing``, ``frame_axis``,
        ``frame``), empty ones left out."""
        row = self.row(case_id)
        return {c: row[c] for c in READ_COLUMNS if c in row and not _empty(row[c])}

    def load_case(self, case_id: str, *, labels: Any = None, binarize: bool = False,
                  reference_threshold: float = REFERENCE_THRESHOLD) -> Case:
        """Load image, reference, prediction and probability of one case (grid-checked; label
        values as declared by ``labels``, binary by default, see :func:`load_case_from_paths`)."""
        return load_case_from_paths(case_id, self.paths(case_id), self.metadata(case_id),
                                    labels=labels, binarize=binarize,
                                    read=self.read_options(case_id),
                                    reference_threshold=reference_threshold)

    def with_metadata(self, columns: Sequence[str]) -> Cohort:
        """The same cohort with only the metadata ``columns`` kept (the rest never reach a
        result): what an audit keeps are its strata and the columns declared to keep.

        The fingerprint stays the full manifest's, so it identifies the manifest whatever is
        kept.

        Raises
        ------
        ValueError
            For a column that is not a metadata column (an identifier column dropped at
            construction is named as such).
        """
        wanted = list(dict.fromkeys(str(c) for c in columns))
        for c in wanted:
            if c in self.dropped_columns:
                raise ValueError(f"keep_columns: {c!r} is a direct-identifier column and is "
                                 "never kept")
            if c not in self.metadata_columns:
                raise ValueError(f"keep_columns: expected metadata columns of the cohort "
                                 f"{self.metadata_columns}, got {c!r}")
        found = self.identifier_findings(wanted)
        if found:  # the CLI refuses these unless --allow-free-text
            warnings.warn(f"keep_columns: {describe_findings(found)} reach the outputs; "
                          "check them or drop the column(s)", stacklevel=2)
        new = object.__new__(Cohort)
        new.__dict__.update(self.__dict__)
        # the reading options (a frame's index) stay: the rows cannot be read without them
        drop = [c for c in self.metadata_columns if c not in wanted and c not in READ_COLUMNS]
        new.manifest = self.manifest.drop(columns=drop)
        new._fingerprint = self.fingerprint()
        return new

    def identifier_findings(self, columns: Sequence[str]) -> dict[str, dict[str, int]]:
        """Text columns among ``columns`` whose cells look like names, record numbers, dates,
        e-mail addresses or phone numbers (:func:`medseg_xai._privacy.free_text_findings`):
        column -> kind -> number of cells. Identifier columns are dropped by name; this finds
        identifiers inside free text (a ``notes`` column) that no column name reveals."""
        out = {}
        for col in columns:
            if col in self.manifest.columns and self.manifest[col].dtype.kind not in "biufcM":
                found = free_text_findings(self.manifest[col])
                if found:
                    out[str(col)] = found
        return out

    def fingerprint(self) -> str:
        """SHA-256 (16 hex) of the manifest content (ids, file names, metadata)."""
        if self._fingerprint is not None:
            return self._fingerprint
        df = self.manifest.copy()
        for col in (*PATH_COLUMNS, *reader_columns(df.columns)):
            if col in df:
                df[col] = [None if _empty(v) else Path(v).name for v in df[col]]
        text = df.to_csv(index=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
