"""Geometry traps (issue 28): sheared (gantry-tilt) affines, sform against pixdim, the
affine the NIfTI standard chooses, and every NIfTI datatype accepted or refused by name."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medseg_xai import Cohort, audit
from medseg_xai.cli import main
from medseg_xai.cohort import load_volume

sys.path.insert(0, str(Path(__file__).parent))
from faults_helpers import FAST, write_cohort  # noqa: E402


def _save(path: Path, arr: np.ndarray, affine: np.ndarray, dtype=None) -> Path:
    nib.save(nib.Nifti1Image(arr, affine, dtype=dtype), str(path))
    return path


def _tilt(deg: float) -> np.ndarray:
    t = np.radians(deg)
    aff = np.eye(4)
    aff[:3, :3] = [[0.8, 0, 0], [0, 0.8, 3 * np.sin(t)], [0, 0, 3 * np.cos(t)]]
    return aff


ACCEPTED = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
            np.float32, np.float64]


@pytest.mark.parametrize("dtype", ACCEPTED, ids=lambda d: np.dtype(d).name)
def test_every_real_datatype_is_read_as_stored(tmp_path, dtype):
    arr = (np.arange(4 * 5 * 3) % 3).reshape(4, 5, 3).astype(dtype)
    path = _save(tmp_path / "v.nii.gz", arr, np.diag([1.0, 1.0, 2.0, 1.0]), dtype=dtype)
    for is_image in (True, False):
        got, affine = load_volume(path, is_image=is_image, case_id="c")
        np.testing.assert_array_equal(got[0], np.asarray(nib.load(path).dataobj))
        np.testing.assert_allclose(affine, nib.load(path).affine)


def _patched(tmp_path: Path, code: int, bitpix: int) -> Path:
    """A uint8 NIfTI whose header declares another datatype (what nibabel cannot write)."""
    src = _save(tmp_path / "u8.nii.gz", np.ones((4, 4, 4), np.uint8), np.eye(4))
    raw = bytearray(gzip.decompress(src.read_bytes()))
    raw[70:72] = code.to_bytes(2, "little")
    raw[72:74] = bitpix.to_bytes(2, "little")
    out = tmp_path / f"dt{code}.nii.gz"
    out.write_bytes(gzip.compress(bytes(raw)))
    return out


@pytest.mark.parametrize("code, bitpix, name", [
    (1, 1, "DT_BINARY"), (32, 64, "complex64"), (1792, 128, "complex128"),
    (128, 24, "RGB24"), (2304, 32, "RGBA32"), (1536, 128, "float128"), (0, 8, "DT_UNKNOWN")])
def test_unreadable_datatypes_are_refused_by_name(tmp_path, code, bitpix, name):
    path = _patched(tmp_path, code, bitpix)
    with pytest.raises(ValueError, match=rf"case 'c': could not read label file "
                                         rf"'dt{code}.nii.gz': its datatype is {code} \({name}"):
        load_volume(path, is_image=False, what="label", case_id="c")


def test_complex_data_is_not_silently_cast(tmp_path):
    arr = (np.ones((4, 4, 4)) * (1 + 2j)).astype(np.complex64)
    path = _save(tmp_path / "cx.nii.gz", arr, np.eye(4))
    with pytest.raises(ValueError, match=r"complex64"):
        load_volume(path, case_id="c")  # was: float32 with the imaginary part dropped


def test_gantry_tilt_is_refused_naming_the_angle(tmp_path, capsys):
    path = _save(tmp_path / "tilt.nii.gz", np.zeros((6, 6, 4), np.float32), _tilt(20))
    with pytest.raises(ValueError, match=r"case 'c': image file 'tilt.nii.gz': its voxel axes 1 "
                                         r"and 2 are not orthogonal \(sheared by 20.0 degrees"):
        load_volume(path, case_id="c")
    # float32 rounding of a rotated grid is not a shear
    rot = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    rot[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.8, 0.8, 3])
    _, affine = load_volume(_save(tmp_path / "rot.nii.gz", np.zeros((6, 6, 4), np.float32),
                                  rot.astype(np.float32)), case_id="c")
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.8, 0.8, 3], rtol=1e-5)
    lab = _save(tmp_path / "lab.nii.gz", np.ones((6, 6, 4), np.uint8), _tilt(20))
    assert main(["metrics", str(lab), str(lab)]) == 2
    assert "sheared by 20.0 degrees" in capsys.readouterr().err


def test_a_tilted_case_fails_its_row(tmp_path):
    m = write_cohort(tmp_path / "c", n=3)
    df = pd.read_csv(m)
    for col in ("image", "label", "prediction"):
        img = nib.load(tmp_path / "c" / df.loc[1, col])
        _save(tmp_path / "c" / df.loc[1, col], np.asarray(img.dataobj), _tilt(20))
    r = audit(Cohort.from_csv(m), **FAST)
    err = r.cases.set_index("case_id").loc["c1", "error"]
    assert r.n_failed == 1 and "case 'c1': image file" in err and "20.0 degrees" in err


def test_sform_and_pixdim_must_agree(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([1.0, 1.0, 3.0, 1.0]))
    img.header["pixdim"][3] = 2.0
    nib.save(img, tmp_path / "p.nii.gz")
    with pytest.raises(ValueError, match=r"gives voxel sizes \(1.0, 1.0, 3.0\) mm but pixdim "
                                         r"says \(1.0, 1.0, 2.0\) mm"):
        load_volume(tmp_path / "p.nii.gz", case_id="c")


def test_the_affine_is_the_one_the_standard_chooses(tmp_path):
    """sform (code > 0) over qform; qform when the sform code is 0 (NIfTI-1, as nibabel)."""
    sform = np.diag([1.0, 1.0, 2.0, 1.0])
    sform[:3, 3] = [5, 6, 7]
    qform = np.diag([-1.0, 1.0, 2.0, 1.0])
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), None)
    img.set_qform(qform, code=1)
    img.set_sform(sform, code=2)
    nib.save(img, tmp_path / "both.nii.gz")
    np.testing.assert_allclose(load_volume(tmp_path / "both.nii.gz", case_id="c")[1], sform)
    img.set_sform(sform, code=0)
    nib.save(img, tmp_path / "qform.nii.gz")
    np.testing.assert_allclose(load_volume(tmp_path / "qform.nii.gz", case_id="c")[1], qform)
    assert np.allclose(nib.load(tmp_path / "qform.nii.gz").affine, qform)
