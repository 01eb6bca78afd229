"""The synthetic multi-site demo cohort: :func:`make_cohort` and the case generator behind it.

Each patient is drawn from its own seed (``SeedSequence([seed, patient_index])``), so a cohort of
``n`` cases is the first ``n`` cases of any larger cohort with the same seed, and the files are
byte-identical between runs (NIfTI headers carry no timestamps; gzip uses mtime 0).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medseg_xai.demo.phantom import Lesion, make_anatomy, render, sample_lesions, simulate_readers
from medseg_xai.demo.scanners import DEVICES, SITES, Device, Site, get_device, get_site

__all__ = ["MANIFEST_COLUMNS", "DemoCase", "generate_cases", "make_cohort", "save_nifti"]

MANIFEST_COLUMNS = (
    "case_id", "patient_id", "visit", "image", "label", "site", "device", "manufacturer",
    "field_strength_t", "slice_thickness_mm", "age", "sex", "n_lesions", "lesion_volume_mm3",
)

# Share of patients scanned twice (a follow-up visit, possibly on another device of the site).
_FOLLOW_UP_RATE = 0.2


@dataclass
class DemoCase:
    """One generated scan with its arrays and manifest metadata."""

    case_id: str
    patient_id: str
    visit: int
    site: Site
    device: Device
    age: int
    sex: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    lesion_radii_mm: tuple[float, ...]
    lesion_contrasts: tuple[float, ...]
    readers: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel spacing in mm per array axis."""
        return self.device.spacing

    def metadata(self) -> dict[str, object]:
        """Manifest fields other than the file paths."""
        voxel_mm3 = float(np.prod(self.spacing))
        n_components = int(ndimage.label(self.label > 0, structure=np.ones((3, 3, 3)))[1])
        return {
            "case_id": self.case_id,
            "patient_id": self.patient_id,
            "visit": self.visit,
            "site": self.site.name,
            "device": self.device.name,
            "manufacturer": self.device.manufacturer,
            "field_strength_t": self.device.field_strength_t,
            "slice_thickness_mm": self.device.slice_thickness_mm,
            "age": self.age,
            "sex": self.sex,
            "n_lesions": n_components,
            "lesion_volume_mm3": round(float(self.label.sum()) * voxel_mm3, 3),
        }


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"shape: expected 3 ints (D, H, W), got {shape!r}") from None
    if len(out) != 3 or min(out) < 16:
        raise ValueError(f"shape: expected 3 ints (D, H, W), each >= 16, got {shape!r}")
    return out  # type: ignore[return-value]


def _pick(rng: np.random.Generator, options: dict[str, float]) -> str:
    names = sorted(options)
    p = np.array([options[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _device_mixes(site_list: Sequence[Site], excluded: set[str]) -> dict[str, dict[str, float]]:
    """Each site's device weights without the excluded devices (a site left with none fails)."""
    mixes = {}
    for site in site_list:
        mix = {d: p for d, p in site.devices.items() if d not in excluded}
        if not mix:
            raise ValueError(
                f"exclude_devices: site {site.name!r} has no device left "
                f"(its devices {sorted(site.devices)}, excluded {sorted(excluded)})"
            )
        mixes[site.name] = mix
    return mixes


def _reader_masks(fraction: np.ndarray, device: Device, seed: int, patient: int, visit: int,
                  readers: int) -> dict[str, np.ndarray]:
    """Simulated readers' masks of one scan, from a random stream of their own."""
    if not readers:
        return {}
    reader_rng = np.random.default_rng(np.random.SeedSequence([int(seed), patient, visit, 15]))
    return simulate_readers(fraction, device.spacing, reader_rng, int(readers))


def generate_cases(
    n_cases: int,
    seed: int = 0,
    shape: Sequence[int] = (48, 64, 64),
    *,
    exclude_devices: Sequence[str] = (),
    sites: Sequence[str] | None = None,
    readers: int = 0,
) -> Iterator[DemoCase]:
    """Yield ``n_cases`` synthetic scans, patient by patient, deterministic for ``seed``.

    Parameters
    ----------
    n_cases : int
        Number of scans (a patient's follow-up counts as a scan).
    seed : int
        Seed of the cohort.
    shape : sequence of 3 int
        Reference grid ``(D, H, W)``: the field of view in mm, and the array shape of a 1 mm
        isotropic device; thicker slices give proportionally fewer voxels along that axis.
    exclude_devices : sequence of str
        Devices never used (each site then draws among its other devices).
    sites : sequence of str or None
        Restrict the cohort to these sites (default all).
    readers : int
        Simulated readers per scan (``phantom.simulate_readers``), drawn from a random stream of
        their own: the scans and ``label`` are the same with or without them.
    """
    if int(n_cases) < 1:
        raise ValueError(f"n_cases: expected a positive int, got {n_cases!r}")
    shape = _check_shape(shape)
    excluded = {get_device(d).name for d in exclude_devices}
    site_list = [get_site(s) for s in (sites if sites is not None else SITES)]
    mixes = _device_mixes(site_list, excluded)
    site_weights = {s.name: s.weight for s in site_list}

    produced = 0
    patient = 0
    while produced < n_cases:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), patient]))
        site = SITES[_pick(rng, site_weights)]
        sex = "F" if rng.random() < 0.5 else "M"
        age = int(rng.integers(24, 86))
        n_visits = 2 if rng.random() < _FOLLOW_UP_RATE else 1
        anatomy = make_anatomy(rng, shape, age, sex)
        burden = 0.6 + 0.8 * (age - 24) / 62.0  # older patients carry more lesions
        n_lesions = 0 if rng.random() < 0.15 else int(min(6, rng.poisson(site.lesion_rate * burden)))
        lesions = sample_lesions(rng, anatomy, n_lesions, site.radius_median_mm, site.radius_sigma)
        for visit in range(1, n_visits + 1):
            if produced >= n_cases:
                break
            if visit > 1:
                # Follow-up: lesions grow a little, the scan may be on another device.
                lesions = [_grow(lesion, rng.uniform(1.0, 1.25)) for lesion in lesions]
                age += int(rng.integers(1, 3))
            device = DEVICES[_pick(rng, mixes[site.name])]
            image, label, affine, fraction = render(anatomy, lesions, device, rng,
                                                    return_fraction=True)
            masks = _reader_masks(fraction, device, seed, patient, visit, readers)
            produced += 1
            yield DemoCase(
                case_id=f"case-{produced:04d}", patient_id=f"P{patient + 1:04d}", visit=visit,
                site=site, device=device, age=age, sex=sex, image=image, label=label,
                affine=affine,
                lesion_radii_mm=tuple(lesion.radius_mm for lesion in lesions),
                lesion_contrasts=tuple(lesion.contrast for lesion in lesions),
                readers=masks,
            )
        patient += 1


def _grow(lesion: Lesion, factor: float) -> Lesion:
    return Lesion(
        lobes=tuple((c, tuple(r * factor for r in radii)) for c, radii in lesion.lobes),
        contrast=lesion.contrast,
    )


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, description: str = "") -> None:
    """Write ``array`` as NIfTI-1 with ``affine`` (mm) and no timestamp, byte-reproducibly."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)  # scanner coordinates
    img.set_sform(affine, code=1)
    # descrip is 80 bytes of ASCII: drop anything else so non-ASCII names cannot break writing.
    img.header["descrip"] = description.encode("ascii", "ignore")[:79]
    nib.save(img, str(path))


def make_cohort(
    out_dir: str | Path,
    n_cases: int = 120,
    seed: int = 0,
    shape: Sequence[int] = (48, 64, 64),
    *,
    exclude_devices: Sequence[str] = (),
    sites: Sequence[str] | None = None,
    manifest_name: str = "manifest.csv",
    readers: int = 0,
) -> Path:
    """Write a synthetic multi-site, multi-device cohort and return its manifest CSV path.

    Writes ``images/<case_id>.nii.gz`` (int16 FLAIR-like scan in the device's intensity units),
    ``labels/<case_id>.nii.gz`` (uint8: 0 background, 1 lesion) and the manifest, whose columns
    are :data:`MANIFEST_COLUMNS` (paths relative to ``out_dir``). The voxel spacing of each device
    is in the NIfTI affine and header (``get_zooms()``); the manifest's ``slice_thickness_mm`` is
    its first entry. Deterministic: the same arguments give byte-identical files.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write into (created if missing).
    n_cases : int
        Number of scans (about 20 % of patients have a follow-up scan).
    seed : int
        Cohort seed.
    shape : sequence of 3 int
        Reference grid ``(D, H, W)`` = field of view in mm and the array shape at 1 mm spacing.
    exclude_devices : sequence of str
        Devices left out (sites draw among their other devices).
    sites : sequence of str or None
        Restrict to these sites.
    manifest_name : str
        File name of the manifest inside ``out_dir``.
    readers : int
        Simulated readers (0 = none): ``labels_<reader>/<case_id>.nii.gz`` and manifest columns
        ``label_r1, label_r2, ...`` after :data:`MANIFEST_COLUMNS`; ``label`` (the generator's
        truth) stays. ``r2`` outlines generously, ``r3`` tightly and misses small lesions more
        often (``phantom.READER_PROFILES``). The demo uses 3.

    Returns
    -------
    Path
        The manifest CSV (UTF-8).

    Examples
    --------
    >>> import medseg_xai as mx
    >>> manifest = mx.demo.make_cohort("demo_cohort", n_cases=12, seed=0)  # doctest: +SKIP
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    rows = []
    reader_names: list[str] = []
    for case in generate_cases(n_cases, seed, shape, exclude_devices=exclude_devices, sites=sites,
                               readers=readers):
        image_rel = f"images/{case.case_id}.nii.gz"
        label_rel = f"labels/{case.case_id}.nii.gz"
        descrip = f"medseg-xai demo; {case.device.name}"
        save_nifti(case.image.astype(np.int16), case.affine, out / image_rel, descrip)
        save_nifti(case.label, case.affine, out / label_rel, descrip)
        meta = case.metadata()
        row = {**meta, "image": image_rel, "label": label_rel}
        for name, mask in case.readers.items():
            (out / f"labels_{name}").mkdir(exist_ok=True)
            row[f"label_{name}"] = f"labels_{name}/{case.case_id}.nii.gz"
            save_nifti(mask, case.affine, out / row[f"label_{name}"], descrip)
            if name not in reader_names:
                reader_names.append(name)
        rows.append(row)
    manifest = out / manifest_name
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*MANIFEST_COLUMNS,
                                                *(f"label_{r}" for r in reader_names)],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest
