"""Cohort manifests: constructors, path resolution, validation, metadata, pseudonyms, loading."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medseg_xai.cohort import Cohort, load_case_from_paths, pseudonym

AFFINE = np.diag([0.8, 0.9, 2.0, 1.0])


def _write(folder: Path, name: str, array: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    nib.save(nib.Nifti1Image(array, affine), folder / name)
    return name


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(3):
        img = rng.random((12, 16, 16)).astype(np.float32)
        lab = np.zeros((12, 16, 16), np.uint8)
        lab[2:6, 3:8, 4:9] = 1
        rows.append({
            "case_id": f"c{i}",
            "image": _write(tmp_path, f"img{i}.nii.gz", img),
            "label": _write(tmp_path, f"lab{i}.nii.gz", lab),
            "prediction": _write(tmp_path, f"pred{i}.nii.gz", lab),
            "patient_id": f"P{i // 2}",
            "site": ["Zürich", "Köln", "Zürich"][i],
        })
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path


def test_from_csv_resolves_relative_paths_and_loads_grid(tiny: Path):
    cohort = Cohort.from_csv(tiny / "manifest.csv")
    assert len(cohort) == 3 and cohort.case_ids == ["c0", "c1", "c2"]
    assert Path(cohort.manifest.loc[0, "image"]) == tiny / "img0.nii.gz"
    assert cohort.problems.empty
    case = cohort.load_case("c1")
    assert case.image.shape == (1, 12, 16, 16) and case.image.dtype == np.float32
    assert case.label.shape == (12, 16, 16)
    assert case.spacing == pytest.approx((0.8, 0.9, 2.0))
    np.testing.assert_allclose(case.affine, AFFINE)
    assert case.metadata["site"] == "Köln"
    assert int(case.label.sum()) == 4 * 5 * 5


def test_from_dataframe_root_and_parquet(tiny: Path, tmp_path: Path):
    df = pd.read_csv(tiny / "manifest.csv")
    cohort = Cohort.from_dataframe(df, root=tiny)
    assert cohort.problems.empty
    sub = tiny / "sub"
    sub.mkdir()
    df2 = df.copy()
    for col in ("image", "label", "prediction"):
        df2[col] = "../" + df2[col]
    df2.to_parquet(sub / "m.parquet")
    pq = Cohort.from_parquet(sub / "m.parquet")
    assert pq.problems.empty
    assert pq.manifest["image"].tolist() == cohort.manifest["image"].tolist()


def test_from_decathlon(tiny: Path):
    data = {"name": "Test", "modality": {"0": "MRI"},
            "training": [{"image": "./img0.nii.gz", "label": "./lab0.nii.gz"},
                         {"image": "./img1.nii.gz", "label": "./lab1.nii.gz"}]}
    (tiny / "dataset.json").write_text(json.dumps(data))
    cohort = Cohort.from_decathlon(tiny / "dataset.json", predictions_dir=tiny)
    assert cohort.case_ids == ["img0", "img1"]
    assert cohort.manifest.loc[0, "modality"] == "MRI"
    assert Path(cohort.manifest.loc[1, "prediction"]).name == "img1.nii.gz"
    with pytest.raises(ValueError, match="non-empty list under 'validation'"):
        Cohort.from_decathlon(tiny / "dataset.json", section="validation")


def test_missing_columns_and_duplicate_ids_raise(tiny: Path):
    df = pd.read_csv(tiny / "manifest.csv")
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['label'\]"):
        Cohort.from_dataframe(df.drop(columns="label"), root=tiny)
    dup = df.copy()
    dup.loc[2, "case_id"] = "c0"
    with pytest.raises(ValueError, match=r"duplicates \['c0'\]"):
        Cohort.from_dataframe(dup, root=tiny)
    empty = df.copy()
    empty.loc[1, "case_id"] = None
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        Cohort.from_dataframe(empty, root=tiny)


def test_missing_files_become_row_problems(tiny: Path):
    df = pd.read_csv(tiny / "manifest.csv")
    df.loc[1, "label"] = "nope.nii.gz"
    with pytest.warns(UserWarning, match="1 row problem"):
        cohort = Cohort.from_dataframe(df, root=tiny)
    assert cohort.problems["case_id"].tolist() == ["c1"]
    assert cohort.problems["field"].tolist() == ["label"]
    assert "nope.nii.gz" in cohort.problems["message"].iloc[0]


def test_sidecar_fills_device_and_site_but_never_identifiers(tiny: Path):
    side = {"Manufacturer": "Siemens", "ManufacturerModelName": "Skyra",
            "InstitutionName": "Hôpital Nord", "MagneticFieldStrength": 3,
            "PatientName": "Doe^Jane", "PatientBirthDate": "19700101"}
    (tiny / "img0.json").write_text(json.dumps(side), encoding="utf-8")
    df = pd.read_csv(tiny / "manifest.csv").drop(columns="site")
    df["patient_name"] = "Jane Doe"
    with pytest.warns(UserWarning, match="direct-identifier"):
        cohort = Cohort.from_dataframe(df, root=tiny)
    m = cohort.manifest
    assert m.loc[0, "device"] == "Siemens Skyra"
    assert m.loc[0, "site"] == "Hôpital Nord"
    assert m.loc[0, "field_strength"] == 3
    assert pd.isna(m.loc[1, "device"])
    text = m.to_csv()
    assert "Doe" not in text and "19700101" not in text and "patient_name" not in text


def test_manifest_values_win_over_sidecar(tiny: Path):
    (tiny / "img2.json").write_text(json.dumps({"InstitutionName": "Other"}))
    cohort = Cohort.from_csv(tiny / "manifest.csv")
    assert cohort.manifest.loc[2, "site"] == "Zürich"
    assert cohort.manifest.loc[2, "institution"] == "Other"


def test_dicom_metadata_whitelist(tmp_path: Path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medseg_xai._dicom import dicom_metadata

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Manufacturer = "GE"
    ds.ManufacturerModelName = "Signa"
    ds.InstitutionName = "Clinic A"
    ds.MagneticFieldStrength = "1.5"
    ds.SliceThickness = "3.0"
    ds.StudyDate = "20240102"
    ds.PatientName = "Doe^John"
    ds.PatientID = "123456"
    ds.PatientBirthDate = "19600101"
    folder = tmp_path / "series"
    folder.mkdir()
    ds.save_as(folder / "1.dcm", enforce_file_format=True)
    out = dicom_metadata(folder)
    assert out["device"] == "GE Signa" and out["site"] == "Clinic A"
    assert out["field_strength"] == pytest.approx(1.5)
    assert out["slice_thickness"] == pytest.approx(3.0)
    assert out["study_date"] == "20240102"
    assert "Doe" not in json.dumps(out) and "123456" not in json.dumps(out)
    assert pydicom is not None


def _write_series(folder: Path, n: int = 4, shape: tuple[int, int] = (16, 16)) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, study = generate_uid(), generate_uid()
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = series, study, "CT"
        ds.Manufacturer, ds.ManufacturerModelName, ds.InstitutionName = "ACME", "Scan 9", "Clinic Ü"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^John", "12345", "19500101"
        ds.Rows, ds.Columns = shape
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.5 * k], [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber, ds.SamplesPerPixel, ds.PhotometricInterpretation = k + 1, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = (np.arange(shape[0] * shape[1], dtype=np.int16).reshape(shape) + k).tobytes()
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)


def test_dicom_series_cohort(tmp_path: Path):
    pytest.importorskip("pydicom")
    _write_series(tmp_path / "series")
    # MONAI reports DICOM in RAS: x and y flipped relative to the LPS patient coordinates
    lab = np.zeros((16, 16, 4), np.uint8)
    lab[4:8, 4:8, 1:3] = 1
    _write(tmp_path, "lab.nii.gz", lab, np.diag([-0.7, -0.7, 2.5, 1.0]))
    _write(tmp_path, "bad.nii.gz", lab, np.diag([0.7, 0.7, 2.5, 1.0]))
    df = pd.DataFrame({"case_id": ["d1", "d2"], "image": ["series", "series"],
                       "label": ["lab.nii.gz", "bad.nii.gz"]})
    cohort = Cohort.from_dataframe(df, root=tmp_path)
    m = cohort.manifest
    assert m.loc[0, "device"] == "ACME Scan 9" and m.loc[0, "site"] == "Clinic Ü"
    assert m.loc[0, "slice_thickness"] == pytest.approx(2.5)
    assert "Doe" not in m.to_csv() and "12345" not in m.to_csv()
    case = cohort.load_case("d1")
    assert case.image.shape == (1, 16, 16, 4)
    assert case.spacing == pytest.approx((0.7, 0.7, 2.5))
    assert case.image[0, :, :, 2].min() == 2  # slice order follows ImagePositionPatient
    with pytest.raises(ValueError, match="case 'd2': label grid does not match"):
        cohort.load_case("d2")


def test_pseudonymise(tiny: Path):
    with pytest.raises(ValueError, match="salt"):
        Cohort.from_csv(tiny / "manifest.csv", pseudonymise=True)
    a = Cohort.from_csv(tiny / "manifest.csv", pseudonymise=True, salt="s3cret")
    b = Cohort.from_csv(tiny / "manifest.csv", pseudonymise=True, salt="s3cret")
    c = Cohort.from_csv(tiny / "manifest.csv", pseudonymise=True, salt="other")
    assert a.case_ids == b.case_ids != c.case_ids
    assert a.case_ids[0] == pseudonym("c0", "s3cret", "c-")
    assert not any(cid.startswith("c0") for cid in a.case_ids[1:])
    pids = a.manifest["patient_id"].tolist()
    assert pids[0] == pids[1] != pids[2] and "P0" not in pids
    assert a.load_case(a.case_ids[0]).label.sum() > 0


def test_grid_mismatch_and_nan_fail_clearly(tiny: Path):
    img = np.zeros((12, 16, 16), np.float32)
    _write(tiny, "shifted.nii.gz", np.zeros((12, 16, 16), np.uint8), np.diag([1.0, 1.0, 1.0, 1.0]))
    _write(tiny, "small.nii.gz", np.zeros((12, 16, 8), np.uint8))
    img[0, 0, 0] = np.nan
    _write(tiny, "nan.nii.gz", img)
    paths = {"image": str(tiny / "img0.nii.gz"), "label": str(tiny / "lab0.nii.gz")}
    with pytest.raises(ValueError, match=r"case 'x': prediction grid .* spacing"):
        load_case_from_paths("x", {**paths, "prediction": str(tiny / "shifted.nii.gz")})
    with pytest.raises(ValueError, match=r"case 'x': label grid .* expected spatial shape \(12, 16, 16\), got \(12, 16, 8\)"):
        load_case_from_paths("x", {**paths, "label": str(tiny / "small.nii.gz")})
    with pytest.raises(ValueError, match="case 'x': image contains 1 NaN"):
        load_case_from_paths("x", {**paths, "image": str(tiny / "nan.nii.gz")})
    (tiny / "corrupt.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(ValueError, match="case 'x': could not read label file 'corrupt.nii.gz': not a NIfTI file"):
        load_case_from_paths("x", {**paths, "label": str(tiny / "corrupt.nii.gz")})


def test_unknown_case_id(tiny: Path):
    cohort = Cohort.from_csv(tiny / "manifest.csv")
    with pytest.raises(ValueError, match="got 'zz'"):
        cohort.load_case("zz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cohort.fingerprint() == Cohort.from_csv(tiny / "manifest.csv").fingerprint()
