"""Acquisition metadata from DICOM headers and JSON sidecars, without direct identifiers.

Only a whitelist of acquisition fields is ever read (device, site, field strength, slice
thickness, kernel, study date). Patient names, patient ids and birth dates are never returned,
whatever the header or sidecar holds, so they cannot reach a result or a report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["DICOM_FIELDS", "IDENTIFYING_FIELDS", "dicom_metadata", "sidecar_metadata", "tidy"]

# DICOM keyword -> manifest column.
DICOM_FIELDS: dict[str, str] = {
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "model",
    "InstitutionName": "institution",
    "MagneticFieldStrength": "field_strength",
    "SliceThickness": "slice_thickness",
    "ConvolutionKernel": "kernel",
    "StudyDate": "study_date",
    "Modality": "modality",
}

# Never kept, even if a user names them as metadata columns or a sidecar holds them.
IDENTIFYING_FIELDS = frozenset(
    {
        "patientname",
        "patient_name",
        "patientid",
        "patientbirthdate",
        "patient_birth_date",
        "birth_date",
        "birthdate",
        "date_of_birth",
        "dob",
        "patientaddress",
        "otherpatientids",
        "otherpatientnames",
        "patientmothersbirthname",
        "patienttelephonenumbers",
        "name",
    }
)


def _plain(value: Any) -> Any:
    """DICOM values -> JSON-friendly Python scalars (first item of multi-valued fields)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = list(value)
        value = value[0] if value else None
        return _plain(value)
    if isinstance(value, (int, float, str, bool)):
        return value.strip() if isinstance(value, str) else value
    # pydicom DSfloat / IS / PersonName and friends
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value).strip()


def tidy(meta: dict[str, Any]) -> dict[str, Any]:
    """Map acquisition keywords to column names and add ``device`` / ``site`` when possible."""
    out: dict[str, Any] = {}
    for key, column in DICOM_FIELDS.items():
        if key in meta and meta[key] not in (None, ""):
            out[column] = _plain(meta[key])
    device = " ".join(str(out[k]) for k in ("manufacturer", "model") if out.get(k))
    if device:
        out["device"] = device
    if out.get("institution"):
        out["site"] = out["institution"]
    return out


def dicom_metadata(path: str | Path) -> dict[str, Any]:
    """Whitelisted acquisition metadata of a DICOM file or series folder.

    Parameters
    ----------
    path : str or Path
        A DICOM file or a folder holding one series (the first readable file is used).

    Returns
    -------
    dict
        Columns from :data:`DICOM_FIELDS` plus ``device`` (manufacturer + model) and ``site``
        (institution). Empty when pydicom is missing (install the ``dicom`` extra).
    """
    try:
        import pydicom
    except ImportError:  # pragma: no cover - the dicom extra is optional
        return {}
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    for f in files:
        try:
            ds = pydicom.dcmread(
                f, stop_before_pixels=True, specific_tags=list(DICOM_FIELDS), force=False
            )
        except Exception:  # noqa: BLE001 - skip non-DICOM files in a series folder
            continue
        return tidy({k: ds.get(k) for k in DICOM_FIELDS if k in ds})
    return {}


def sidecar_metadata(image_path: str | Path) -> dict[str, Any]:
    """Whitelisted metadata of a BIDS-style JSON sidecar next to an image (``x.nii.gz`` ->
    ``x.json``); empty when there is none.

    Raises
    ------
    ValueError
        If the sidecar exists but is not valid JSON.
    """
    p = Path(image_path)
    name = p.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    side = p.with_name(name + ".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"sidecar {side}: expected a JSON object ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"sidecar {side}: expected a JSON object, got {type(data).__name__}")
    return tidy(data)
