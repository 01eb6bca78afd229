"""Acquisition devices and sites of the synthetic demo cohort.

The devices mimic how real MR scanners differ for the same FLAIR-like protocol: the stored
intensity scale, the tissue and lesion contrast, the noise level, the strength of the receive-coil
bias field and the voxel spacing / slice thickness. Sites differ in which devices they run and in
the lesions they see (one screening site sees mostly small lesions), so device and site effects
are confounded as they are in practice.

The names are generic model names; the numbers are plausible, not vendor specifications.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DEVICES", "SITES", "Device", "Site", "UNSEEN_DEVICE", "get_device", "get_site"]


@dataclass(frozen=True)
class Device:
    """One scanner model with its acquisition protocol.

    Attributes
    ----------
    name : str
        Display name, e.g. ``"Siemens Skyra 3T"``.
    manufacturer : str
        Vendor name as it would appear in a DICOM header.
    field_strength_t : float
        Main field strength in tesla.
    spacing : tuple of float
        Voxel spacing in mm along the array axes ``(slice, row, column)``; the first entry is the
        slice thickness.
    scale : float
        Stored intensity of white matter (the arbitrary units differ between vendors).
    tissue : dict
        Relative intensity of each tissue class, white matter = 1.
    lesion_contrast : float
        Multiplier on each lesion's intrinsic contrast (protocol-dependent conspicuity).
    noise : float
        Rician noise standard deviation relative to white matter.
    bias : float
        Strength of the smooth multiplicative bias field (log-amplitude).
    """

    name: str
    manufacturer: str
    field_strength_t: float
    spacing: tuple[float, float, float]
    scale: float
    tissue: dict[str, float] = field(default_factory=dict)
    lesion_contrast: float = 1.0
    noise: float = 0.04
    bias: float = 0.1

    @property
    def slice_thickness_mm(self) -> float:
        """Thickness of one slice (spacing along the first array axis) in mm."""
        return self.spacing[0]


# FLAIR-like relative intensities: CSF suppressed (dark), grey matter brighter than white matter,
# scalp fat bright, cortical bone dark, lesions hyperintense.
_BASE_TISSUE = {
    "background": 0.0,
    "scalp": 1.35,
    "skull": 0.12,
    "csf": 0.18,
    "gm": 1.22,
    "wm": 1.0,
}

DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device(
            name="Siemens Skyra 3T",
            manufacturer="Siemens",
            field_strength_t=3.0,
            spacing=(1.0, 1.0, 1.0),
            scale=620.0,
            tissue=dict(_BASE_TISSUE),
            lesion_contrast=1.0,
            noise=0.035,
            bias=0.12,
        ),
        Device(
            name="GE Signa 1.5T",
            manufacturer="GE",
            field_strength_t=1.5,
            spacing=(3.0, 1.0, 1.0),
            scale=2400.0,
            tissue={**_BASE_TISSUE, "gm": 1.16, "csf": 0.22},
            lesion_contrast=0.9,
            noise=0.06,
            bias=0.10,
        ),
        Device(
            name="Philips Ingenia 3T",
            manufacturer="Philips",
            field_strength_t=3.0,
            spacing=(1.5, 1.0, 1.0),
            scale=180.0,
            tissue={**_BASE_TISSUE, "gm": 1.26, "scalp": 1.5},
            lesion_contrast=1.05,
            noise=0.04,
            bias=0.18,
        ),
        # Left out of the demo model's training data: its protocol shows lesions with less
        # contrast, grey matter closer to lesion intensity, more noise and a strong bias field.
        Device(
            name="Canon Vantage 1.5T",
            manufacturer="Canon",
            field_strength_t=1.5,
            spacing=(2.0, 1.2, 1.2),
            scale=950.0,
            tissue={**_BASE_TISSUE, "gm": 1.34, "csf": 0.3, "scalp": 1.2},
            lesion_contrast=0.6,
            noise=0.075,
            bias=0.3,
        ),
    )
}

#: The device deliberately absent from the bundled demo model's training cohort.
UNSEEN_DEVICE = "Canon Vantage 1.5T"


@dataclass(frozen=True)
class Site:
    """One hospital: its device mix, lesion burden and lesion-size distribution.

    Attributes
    ----------
    name : str
        Display name (may hold non-ASCII characters and HTML-special characters on purpose).
    devices : dict
        Device name -> probability that a scan at this site was acquired on it.
    weight : float
        Relative share of the cohort's patients coming from this site.
    lesion_rate : float
        Mean number of lesions per scan (Poisson).
    radius_median_mm : float
        Median lesion radius (log-normal distribution).
    radius_sigma : float
        Log-scale spread of the lesion radius.
    """

    name: str
    devices: dict[str, float]
    weight: float
    lesion_rate: float
    radius_median_mm: float
    radius_sigma: float


SITES: dict[str, Site] = {
    s.name: s
    for s in (
        Site(
            name="Northfield University Hospital",
            devices={"Siemens Skyra 3T": 0.75, "Philips Ingenia 3T": 0.25},
            weight=0.32,
            lesion_rate=2.2,
            radius_median_mm=3.4,
            radius_sigma=0.55,
        ),
        Site(
            name="Hôpital Saint-Éloi",
            devices={"Philips Ingenia 3T": 0.6, "Canon Vantage 1.5T": 0.4},
            weight=0.26,
            lesion_rate=2.0,
            radius_median_mm=3.3,
            radius_sigma=0.55,
        ),
        # A screening site: mostly small lesions, and most of the unseen device's scans.
        Site(
            name="Lakeside & Valley Imaging",
            devices={"GE Signa 1.5T": 0.45, "Canon Vantage 1.5T": 0.55},
            weight=0.22,
            lesion_rate=2.6,
            radius_median_mm=1.8,
            radius_sigma=0.45,
        ),
        Site(
            name="St. Mary's Regional",
            devices={"GE Signa 1.5T": 0.6, "Siemens Skyra 3T": 0.4},
            weight=0.20,
            lesion_rate=1.8,
            radius_median_mm=3.6,
            radius_sigma=0.6,
        ),
    )
}


def get_device(name: str) -> Device:
    """Return the device called ``name``, raising ``ValueError`` listing the known ones."""
    try:
        return DEVICES[name]
    except KeyError:
        raise ValueError(
            f"device: expected one of {sorted(DEVICES)}, got {name!r}"
        ) from None


def get_site(name: str) -> Site:
    """Return the site called ``name``, raising ``ValueError`` listing the known ones."""
    try:
        return SITES[name]
    except KeyError:
        raise ValueError(f"site: expected one of {sorted(SITES)}, got {name!r}") from None
