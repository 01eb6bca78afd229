"""The synthetic demo cohort: determinism, NIfTI headers, physical consistency across devices."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg_xai.demo import DEVICES, SITES, UNSEEN_DEVICE, make_cohort
from medseg_xai.demo.cohort import MANIFEST_COLUMNS, generate_cases
from medseg_xai.demo.phantom import (
    _box_matrix,
    _resample,
    device_grid,
    make_anatomy,
    render,
    sample_lesions,
)

SMALL = (32, 40, 40)  # reference grid for fast tests (field of view in mm)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("demo") / "c", n_cases=8, seed=3, shape=SMALL)


def test_same_seed_gives_byte_identical_files(cohort, tmp_path):
    again = make_cohort(tmp_path / "again", n_cases=8, seed=3, shape=SMALL)
    first, second = _hashes(cohort.parent), _hashes(again.parent)
    assert len(first) == 2 * 8 + 1
    assert first == second


def test_other_seed_gives_other_data(cohort, tmp_path):
    other = make_cohort(tmp_path / "other", n_cases=8, seed=4, shape=SMALL)
    first, second = _hashes(cohort.parent), _hashes(other.parent)
    assert first.keys() == second.keys()
    differing = [k for k in first if k.startswith("images/") and first[k] != second[k]]
    assert len(differing) == 8


def test_smaller_cohort_is_a_prefix_of_a_larger_one(cohort, tmp_path):
    small = make_cohort(tmp_path / "small", n_cases=3, seed=3, shape=SMALL)
    big, few = pd.read_csv(cohort), pd.read_csv(small)
    pd.testing.assert_frame_equal(few, big.iloc[:3].reset_index(drop=True))
    for rel in few["image"]:
        assert (small.parent / rel).read_bytes() == (cohort.parent / rel).read_bytes()


def test_manifest_columns_and_values(cohort):
    df = pd.read_csv(cohort, dtype={"case_id": str, "patient_id": str})
    assert tuple(df.columns) == MANIFEST_COLUMNS
    assert df["case_id"].is_unique
    assert set(df["site"]) <= set(SITES)
    assert set(df["device"]) <= set(DEVICES)
    assert set(df["sex"]) <= {"F", "M"}
    assert df["age"].between(18, 100).all()
    for row in df.itertuples():
        site = SITES[row.site]
        assert row.device in site.devices, (row.case_id, row.site, row.device)
        device = DEVICES[row.device]
        assert row.manufacturer == device.manufacturer
        assert row.field_strength_t == device.field_strength_t
        assert row.slice_thickness_mm == device.spacing[0]
        assert not Path(row.image).is_absolute() and not Path(row.label).is_absolute()


def test_nifti_headers_carry_device_spacing_and_volumes_match(cohort):
    df = pd.read_csv(cohort)
    for row in df.itertuples():
        device = DEVICES[row.device]
        img = nib.load(str(cohort.parent / row.image))
        lab = nib.load(str(cohort.parent / row.label))
        assert img.header.get_zooms() == pytest.approx(device.spacing)
        assert img.shape == device_grid(SMALL, device.spacing)
        np.testing.assert_allclose(img.affine, lab.affine)
        assert lab.shape == img.shape
        # The affine's column norms are the spacing of the array axes (slice axis first).
        np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), device.spacing)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert device.name.encode() in img.header["descrip"].tobytes()
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        label = np.asarray(lab.dataobj)
        assert set(np.unique(label)) <= {0, 1}
        volume = label.sum() * np.prod(img.header.get_zooms())
        assert row.lesion_volume_mm3 == pytest.approx(volume, abs=1e-3)
        # Field of view is the same physical box for every device.
        fov = np.array(img.shape) * np.array(device.spacing)
        np.testing.assert_allclose(fov, SMALL, atol=max(device.spacing) / 2 + 1e-6)


def test_non_ascii_and_html_special_site_names_round_trip(tmp_path):
    sites = ["Hôpital Saint-Éloi", "Lakeside & Valley Imaging"]
    manifest = make_cohort(tmp_path, n_cases=3, seed=0, shape=SMALL, sites=sites)
    text = manifest.read_text(encoding="utf-8")
    df = pd.read_csv(manifest)
    assert set(df["site"]) <= set(sites)
    assert any(s in text for s in sites)


def test_excluded_device_never_appears():
    devices = {c.device.name for c in generate_cases(12, 5, SMALL, exclude_devices=[UNSEEN_DEVICE])}
    assert UNSEEN_DEVICE not in devices and devices


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (8, 8)}, "shape"),
        ({"shape": (8, 64, 64)}, "shape"),
        ({"n_cases": 0}, "n_cases"),
        ({"exclude_devices": ["Acme 7T"]}, "device"),
        ({"sites": ["Nowhere"]}, "site"),
        ({"sites": ["Lakeside & Valley Imaging"],
          "exclude_devices": ["GE Signa 1.5T", UNSEEN_DEVICE]}, "no device left"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_cohort(tmp_path, **{"n_cases": 2, **kwargs})


def _one_lesion_scan(device_name: str, radius: float):
    rng = np.random.default_rng(11)
    anatomy = make_anatomy(rng, (48, 64, 64), age=50, sex="F")
    lesion = sample_lesions(np.random.default_rng(2), anatomy, 1, radius, 0.0)[0]
    return lesion, render(anatomy, [lesion], DEVICES[device_name], np.random.default_rng(3))


def test_lesion_volume_in_mm3_agrees_across_devices_and_with_geometry():
    """The same physical lesion gives the same mm^3 on 1 mm and 3 mm slices."""
    volumes = {}
    for name in DEVICES:
        lesion, (image, label, affine) = _one_lesion_scan(name, radius=5.0)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        volumes[name] = label.sum() * np.prod(spacing)
    # Union of lobes >= the main ellipsoid; extra lobes add at most their own volume.
    main = 4.0 / 3.0 * np.pi * np.prod(lesion.lobes[0][1])
    total = sum(4.0 / 3.0 * np.pi * np.prod(r) for _, r in lesion.lobes)
    for name, v in volumes.items():
        assert 0.85 * main <= v <= 1.15 * total, (name, v, main, total)
    ref = volumes["Siemens Skyra 3T"]
    for name, v in volumes.items():
        assert v == pytest.approx(ref, rel=0.15), (name, v, ref)


def test_thick_slices_lose_tiny_lesions_by_partial_volume():
    lesion, (_, thin, _) = _one_lesion_scan("Siemens Skyra 3T", radius=1.0)
    _, (_, thick, _) = _one_lesion_scan("GE Signa 1.5T", radius=1.0)
    assert thin.sum() >= 3
    assert thick.sum() * 3.0 < thin.sum()


def test_lesions_are_brighter_than_white_matter_and_tissue_is_structured():
    _, (image, label, _) = _one_lesion_scan("Siemens Skyra 3T", radius=4.0)
    head = image > image.mean()
    assert image[label > 0].mean() > 1.1 * np.median(image[head & (label == 0)])
    # Not plain noise: neighbouring voxels inside the head are strongly correlated.
    a, b = image[:, :, :-1][head[:, :, :-1]], image[:, :, 1:][head[:, :, :-1]]
    assert np.corrcoef(a, b)[0, 1] > 0.5


def test_small_lesion_site_sees_smaller_lesions():
    anatomy = make_anatomy(np.random.default_rng(0), SMALL, age=60, sex="M")
    radii = {}
    for name, site in SITES.items():
        rng = np.random.default_rng(1)
        lesions = sample_lesions(rng, anatomy, 200, site.radius_median_mm, site.radius_sigma)
        radii[name] = np.median([les.radius_mm for les in lesions])
    small_site = min(radii, key=radii.get)
    assert small_site == "Lakeside & Valley Imaging"
    others = [v for k, v in radii.items() if k != small_site]
    assert radii[small_site] < 0.7 * min(others)


@settings(max_examples=60, deadline=None)
@given(n_ref=st.integers(4, 80), spacing=st.floats(0.5, 4.0))
def test_box_resampling_conserves_mass_and_constants(n_ref, spacing):
    m = _box_matrix(n_ref, spacing)
    assert m.shape == (device_grid((n_ref,), (spacing,))[0], n_ref)
    lo = n_ref / 2.0 - m.shape[0] * spacing / 2.0 + np.arange(m.shape[0]) * spacing
    inside = (lo >= -1e-6) & (lo + spacing <= n_ref + 1e-6)
    np.testing.assert_allclose(m.sum(axis=1)[inside], 1.0, atol=1e-5)
    # Every reference voxel inside the device field of view is counted exactly once (in mm).
    idx = np.arange(n_ref)
    covered = (idx >= lo[0] - 1e-6) & (idx + 1 <= lo[-1] + spacing + 1e-6)
    np.testing.assert_allclose((m.sum(axis=0) * spacing)[covered], 1.0, atol=1e-5)


def test_resample_identity_at_reference_spacing():
    vol = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    np.testing.assert_allclose(_resample(vol, (1.0, 1.0, 1.0)), vol, atol=1e-6)
