"""Cohorts: a manifest of cases (image, reference, optional prediction) plus metadata.

A manifest is a table with one row per case::

    case_id, image, label[, prediction][, probability][, patient_id][, any metadata ...]

Paths may be relative; they resolve against the manifest's folder (``from_csv``,
``from_parquet``, ``from_decathlon``) or ``root`` (``from_dataframe``). Volumes load through
MONAI's ``LoadImage`` (NIfTI with nibabel; DICOM series folders with pydicom, ``dicom`` extra)
keeping the voxel grid as stored: spacing and orientation come from the affine, nothing is
resampled. A prediction or reference on another grid than its image makes the case fail with a
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
import logging
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
from medseg_xai._privacy import is_identifier_column, redact_paths
from medseg_xai._validation import check_label_values

# MONAI's DICOM reader warns once per process that the optional GPU decoder (nvImageCodec) is
# absent; on CPU machines that is expected, and with a process pool it floods the console.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

__all__ = ["Case", "Cohort", "is_identifier", "load_on_one_grid", "load_volume", "pseudonym"]

REQUIRED_COLUMNS = ("case_id", "image", "label")
PATH_COLUMNS = ("image", "label", "prediction", "probability")
RESERVED_COLUMNS = (*PATH_COLUMNS, "case_id", "patient_id")
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


_LOADERS: dict[tuple[str, bool], Any] = {}


def _loader(kind: str, is_image: bool) -> Any:
    """Cached MONAI ``LoadImage`` (building one costs more than reading a small volume)."""
    key = (kind, is_image)
    if key not in _LOADERS:
        from monai.transforms import LoadImage

        reader = "PydicomReader" if kind == "dicom" else "NibabelReader"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _LOADERS[key] = LoadImage(
                image_only=False,
                ensure_channel_first=True,
                reader=reader,
                dtype=np.float32 if is_image else None,
            )
    return _LOADERS[key]


def _kind(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir() or name.endswith(".dcm"):
        return "dicom"
    return "nifti"


def load_volume(
    path: str | Path, *, is_image: bool = True, what: str = "image", case_id: str = "?"
) -> tuple[np.ndarray, np.ndarray]:
    """Load one volume with MONAI, keeping its grid.

    Parameters
    ----------
    path : str or Path
        NIfTI file or DICOM series folder / file.
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
    p = Path(path)
    if not p.exists():
        raise ValueError(f"case {case_id!r}: {what} file not found: expected a file at {str(p)!r}")
    kind = _kind(p)
    if not (p.is_file() or (kind == "dicom" and p.is_dir())):
        # a FIFO or a device (a symlink to /dev/zero) would block or never end a read
        raise ValueError(f"case {case_id!r}: {what}: expected a regular file, got "
                         f"{file_kind(p)} at {str(p)!r}")
    shape = None
    if kind == "nifti":
        shape = _check_nifti(p, what, case_id)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data, meta = _loader(kind, is_image)(str(p))
    except MemoryError as exc:
        raise ValueError(
            f"case {case_id!r}: could not read {what} file {p.name!r}: its header declares "
            f"shape {shape}, too large to load (out of memory); expected a volume of the "
            "image's size"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - readers raise many types for corrupt files
        raise ValueError(
            f"case {case_id!r}: could not read {what} file {str(p)!r}: "
            f"{_read_error(exc, kind)}"
        ) from exc
    array = np.asarray(data.detach().cpu().numpy() if hasattr(data, "detach") else data)
    affine = meta.get("affine", getattr(data, "affine", None))
    if affine is None:
        affine = np.eye(array.ndim)
    affine = np.asarray(affine.detach().cpu().numpy() if hasattr(affine, "detach") else affine,
                        dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise ValueError(
            f"case {case_id!r}: could not read {what} file {p.name!r}: its affine "
            "(voxel-to-world matrix) holds NaN or infinite values; expected a finite one"
        )
    return array, affine


_NIFTI_MAGIC = {348: (344, (b"n+1\x00", b"ni1\x00")), 540: (4, (b"n+2\x00", b"ni2\x00"))}


def _check_nifti(p: Path, what: str, case_id: str) -> tuple[int, ...] | None:
    """Refuse empty, truncated and non-NIfTI files with a message a user can act on (MONAI's
    own errors for these say "install the reader libraries" or nothing at all).

    Returns the shape the header declares (for the out-of-memory message).
    """
    import gzip
    import zlib

    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"case {case_id!r}: could not read {what} file {p.name!r}: it is empty "
                         "(0 bytes); expected a NIfTI file")
    gz = p.name.lower().endswith(".gz")
    try:
        with (gzip.open(p, "rb") if gz else open(p, "rb")) as fh:
            head = fh.read(548)
    except (OSError, EOFError, zlib.error) as exc:
        with open(p, "rb") as fh:
            first = fh.read(8)
        state = ("truncated gzip data" if first[:2] == b"\x1f\x8b"
                 else f"not gzip data, its first bytes are {first!r}")
        raise ValueError(f"case {case_id!r}: could not read {what} file {p.name!r}: not a NIfTI "
                         f"file ({state}); expected a .nii.gz NIfTI file") from exc
    sizes = {int.from_bytes(head[:4], order) for order in ("little", "big")} & set(_NIFTI_MAGIC)
    if len(head) < 4 or not sizes:
        raise ValueError(
            f"case {case_id!r}: could not read {what} file {p.name!r}: not a NIfTI file (its "
            f"first bytes are {head[:8]!r}); expected a NIfTI-1/2 image (.nii or .nii.gz)"
        )
    hdr_size = sizes.pop()
    if len(head) < hdr_size:
        raise ValueError(f"case {case_id!r}: could not read {what} file {p.name!r}: truncated, "
                         f"{len(head)} header bytes, expected a NIfTI header of {hdr_size}")
    at, magics = _NIFTI_MAGIC[hdr_size]
    if head[at:at + 4] not in magics and hdr_size != 348:  # 348 without magic: Analyze 7.5
        raise ValueError(
            f"case {case_id!r}: could not read {what} file {p.name!r}: not a NIfTI file (no "
            f"NIfTI magic); expected a NIfTI-1/2 image (.nii or .nii.gz)"
        )
    try:
        import nibabel as nib

        img = nib.load(str(p))
        shape = tuple(int(n) for n in img.shape)
        if not np.all(np.isfinite(img.affine)):  # MONAI would silently fall back to identity
            raise ValueError(
                f"case {case_id!r}: could not read {what} file {p.name!r}: its affine "
                "(voxel-to-world matrix) holds NaN or infinite values; expected a finite "
                "qform/sform in the header"
            )
        if not gz:
            need = int(img.dataobj.offset) + int(np.prod(shape, dtype=np.int64)) * \
                img.get_data_dtype().itemsize
            if size < need:
                raise ValueError(
                    f"case {case_id!r}: could not read {what} file {p.name!r}: truncated, {size} bytes, "
                    f"expected {need} for its declared shape {shape}"
                )
        return shape
    except ValueError:
        raise
    except Exception:  # noqa: BLE001 - the full read below reports what the header lacks
        return None


def _read_error(exc: BaseException, kind: str) -> str:
    """The reader's failure in words, with what was expected."""
    import zlib

    text = f"{type(exc).__name__}: {str(exc)[:200]}" if str(exc) else type(exc).__name__
    chain = [exc, exc.__cause__, exc.__context__]
    if any(isinstance(e, EOFError) for e in chain) or "ended before" in str(exc):
        return f"the file is truncated (its compressed data ends early); expected a whole file ({text})"
    if any(isinstance(e, zlib.error) for e in chain):
        return f"the compressed data is corrupt; expected a valid .nii.gz file ({text})"
    expected = "a readable DICOM series" if kind == "dicom" else "a readable NIfTI file"
    return f"expected {expected} ({text})"


def _spacing(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    return tuple(float(np.linalg.norm(affine[:ndim, i])) for i in range(ndim))


def _as_mask(array: np.ndarray, what: str, case_id: str, labels: Any = None,
             binarize: bool = False) -> np.ndarray:
    if array.ndim >= 3 and array.shape[0] == 1:
        array = array[0]
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
    out: dict[str, np.ndarray] = {}
    affines: dict[str, np.ndarray] = {}
    for what, path in paths.items():  # every file's header first: a bad one fails before work
        p = Path(path) if path is not None else None
        if p is not None and p.is_file() and _kind(p) == "nifti":
            _check_nifti(p, what, case_id)
    for what, path in paths.items():
        if path is None:
            continue
        arr, aff = load_volume(path, is_image=what in images, what=what, case_id=case_id)
        out[what] = arr if what in images else _as_mask(arr, what, case_id, labels, binarize)
        affines[what] = aff
    if grid not in out:
        raise ValueError(f"case {case_id!r}: {grid}: expected a file path, got none")
    ref_shape = out[grid].shape[1:] if grid in images else out[grid].shape
    for what, arr in out.items():
        if what != grid:
            shape = arr.shape[1:] if what in images else arr.shape
            _check_grid(case_id, what, shape, affines[what], ref_shape, affines[grid],
                        against=f"the {grid}")
    return out, affines[grid]


def load_case_from_paths(
    case_id: str,
    paths: Mapping[str, str | None],
    metadata: Mapping[str, Any] | None = None,
    *,
    load_image: bool = True,
    labels: Any = None,
    binarize: bool = False,
    allow_missing_readers: bool = False,
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

    Raises
    ------
    ValueError
        Naming the case and the field for missing/unreadable files, grid mismatches, NaN values.
    """
    image, affine = load_volume(paths["image"], is_image=True, what="image", case_id=case_id)
    if image.ndim < 3:
        raise ValueError(
            f"case {case_id!r}: image: expected a 2D or 3D volume, got shape {image.shape[1:]}"
        )
    if not np.all(np.isfinite(image)):
        n_bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise ValueError(
            f"case {case_id!r}: image contains {n_bad} NaN or infinite voxels; expected finite "
            "intensities"
        )
    spatial = image.shape[1:]
    ndim = len(spatial)
    volumes: dict[str, np.ndarray | None] = {"label": None, "prediction": None, "probability": None}
    for what in ("label", "prediction", "probability"):
        path = paths.get(what)
        if path is None or (isinstance(path, float) and np.isnan(path)) or path == "":
            continue
        arr, aff = load_volume(path, is_image=what == "probability", what=what, case_id=case_id)
        if what == "probability":
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"case {case_id!r}: probability contains NaN or infinite values")
            _check_grid(case_id, what, arr.shape[1:], aff, spatial, affine)
            volumes[what] = arr.astype(np.float32, copy=False)
        else:
            mask = _as_mask(arr, what, case_id, labels, binarize)
            _check_grid(case_id, what, mask.shape, aff, spatial, affine)
            volumes[what] = mask
    readers: dict[str, np.ndarray] = {}
    missing_readers: list[str] = []
    for col in reader_columns(paths):
        name, path = col[len(READER_PREFIX):], paths.get(col)
        if _empty(path) or not Path(str(path)).exists():
            if allow_missing_readers:
                missing_readers.append(name)
                continue
            raise ValueError(f"case {case_id!r}: reader {name!r} ({col}): expected a file, got "
                             + ("an empty value" if _empty(path) else "a missing file"))
        arr, aff = load_volume(str(path), is_image=False, what=col, case_id=case_id)
        mask = _as_mask(arr, col, case_id, labels, binarize)
        _check_grid(case_id, col, mask.shape, aff, spatial, affine)
        readers[name] = mask
    if volumes["label"] is None and not reader_columns(paths):
        raise ValueError(f"case {case_id!r}: label: expected a reference file path, got none")
    return Case(
        case_id=case_id,
        image=image.astype(np.float32, copy=False),
        label=volumes["label"],
        prediction=volumes["prediction"],
        probability=volumes["probability"],
        spacing=_spacing(affine, ndim),
        affine=affine,
        metadata=dict(metadata or {}),
        readers=readers,
        missing_readers=missing_readers,
    )


# --------------------------------------------------------------------------------------------
# cohort


def is_identifier(column: object) -> bool:
    """A manifest column that holds a direct identifier (by normalised name or a DICOM
    identifying keyword); never kept. ``patient_id`` is the grouping key, pseudonymised."""
    name = str(column)
    return (name.lower() in IDENTIFYING_FIELDS and name != "patient_id") or \
        is_identifier_column(name)


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
        if read_metadata:
            df = self._fill_metadata(df, problems)
        if pseudonymise:
            assert salt is not None
            mapping = {cid: pseudonym(cid, salt, "c-") for cid in df["case_id"]}
            df["case_id"] = df["case_id"].map(mapping)
            for prob in problems:
                prob["message"] = prob["message"].replace(repr(prob["case_id"]),
                                                          repr(mapping[prob["case_id"]]))
                prob["case_id"] = mapping[prob["case_id"]]
            if "patient_id" in df.columns:
                df["patient_id"] = [None if _empty(v) else pseudonym(v, salt, "p-")
                                    for v in df["patient_id"]]
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

    def load_case(self, case_id: str, *, labels: Any = None, binarize: bool = False) -> Case:
        """Load image, reference, prediction and probability of one case (grid-checked; label
        values as declared by ``labels``, binary by default, see :func:`load_case_from_paths`)."""
        return load_case_from_paths(case_id, self.paths(case_id), self.metadata(case_id),
                                    labels=labels, binarize=binarize)

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
        new = object.__new__(Cohort)
        new.__dict__.update(self.__dict__)
        drop = [c for c in self.metadata_columns if c not in wanted]
        new.manifest = self.manifest.drop(columns=drop)
        new._fingerprint = self.fingerprint()
        return new

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
