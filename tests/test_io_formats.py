"""Every reading format against its NIfTI twin: a file written from the same volume (SimpleITK,
highdicom, Pillow) reads with the same array, the same affine and gives identical metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medseg_xai.cohort import Cohort, load_case_from_paths, load_on_one_grid
from medseg_xai.io import format_of, read_volume
from medseg_xai.metrics import evaluate_case

sitk = pytest.importorskip("SimpleITK")


def _volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(6, 9, 8)).astype(np.float32)  # (z, y, x) as SimpleITK holds it
    label = np.zeros((6, 9, 8), np.uint8)
    label[1:4, 2:6, 2:5] = 1
    label[3:5, 5:8, 4:7] = 2
    pred = np.roll(label, 1, axis=2)
    return image, label, pred


def _itk(array: np.ndarray) -> object:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((0.8, 0.6, 2.5))
    img.SetOrigin((12.0, -30.0, 7.5))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return img


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("formats")
    image, label, pred = _volume()
    for ext in ("nii.gz", "nrrd", "mha", "mhd"):
        sitk.WriteImage(_itk(image), str(d / f"image.{ext}"))
        sitk.WriteImage(_itk(label), str(d / f"label.{ext}"))
        sitk.WriteImage(_itk(pred), str(d / f"pred.{ext}"))
    seg = _itk(label)
    for i, (value, name) in enumerate(((1, "liver"), (2, "tumour"))):
        seg.SetMetaData(f"Segment{i}_Name", name)
        seg.SetMetaData(f"Segment{i}_LabelValue", str(value))
        seg.SetMetaData(f"Segment{i}_Layer", "0")
    sitk.WriteImage(seg, str(d / "label.seg.nrrd"))
    return d


@pytest.mark.parametrize("ext", ["nrrd", "mha", "mhd", "seg.nrrd"])
def test_itk_formats_equal_their_nifti_twin(files: Path, ext: str):
    twin = read_volume(files / "label.nii.gz", is_image=False)
    vol = read_volume(files / f"label.{ext}", is_image=False)
    assert vol.array.shape == twin.array.shape == (1, 8, 9, 6)  # (x, y, z) like nibabel
    np.testing.assert_array_equal(vol.array, twin.array)
    np.testing.assert_allclose(vol.affine, twin.affine, atol=1e-5)
    paths = {"image": str(files / f"image.{ext.replace('seg.', '')}"),
             "label": str(files / f"label.{ext}"), "prediction": str(files / f"pred.{ext.replace('seg.', '')}")}
    twin_paths = {k: str(files / f"{k if k != 'prediction' else 'pred'}.nii.gz") for k in paths}
    case = load_case_from_paths("c", paths, labels=[0, 1, 2])
    ref = load_case_from_paths("c", twin_paths, labels=[0, 1, 2])
    np.testing.assert_allclose(case.image, ref.image, rtol=0, atol=0)
    np.testing.assert_allclose(case.affine, ref.affine, atol=1e-5)
    assert case.spacing == pytest.approx(ref.spacing)
    assert case.spacing == pytest.approx((0.8, 0.6, 2.5))
    m = evaluate_case(case.prediction, case.label, spacing=case.spacing, labels=[1, 2])
    m_ref = evaluate_case(ref.prediction, ref.label, spacing=ref.spacing, labels=[1, 2])
    assert m == pytest.approx(m_ref, nan_ok=True)


def test_slicer_segment_names_become_class_names(files: Path):
    case = load_case_from_paths("c", {"image": str(files / "image.nrrd"),
                                      "label": str(files / "label.seg.nrrd")}, labels=[0, 1, 2])
    assert case.class_names == {1: "liver", 2: "tumour"}
    assert format_of(files / "label.seg.nrrd") == "nrrd" and format_of(files / "x.mha") == "metaimage"


def _raster_twins(d: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    rng = np.random.default_rng(1)
    image = (rng.random((20, 30)) * 255).astype(np.uint8)  # (rows, cols)
    label = np.zeros((20, 30), np.uint8)
    label[4:12, 6:20] = 1
    for ext in ("png", "tif", "bmp"):
        Image.fromarray(image).save(d / f"im.{ext}")
        Image.fromarray(label).save(d / f"lab.{ext}")
    Image.fromarray(np.roll(label, 2, axis=1)).save(d / "pred.png")
    Image.fromarray(np.stack([image, image // 2, 255 - image], -1)).save(d / "rgb.png")
    for name, arr in (("im", image), ("lab", label), ("pred", np.roll(label, 2, axis=1))):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((0.4, 0.7))
        sitk.WriteImage(img, str(d / f"{name}.nii.gz"))
    return image, label


@pytest.mark.parametrize("ext", ["png", "tif", "bmp"])
def test_raster_with_spacing_column_equals_nifti_twin(tmp_path: Path, ext: str):
    _raster_twins(tmp_path)
    twin = load_case_from_paths("c", {"image": str(tmp_path / "im.nii.gz"),
                                      "label": str(tmp_path / "lab.nii.gz"),
                                      "prediction": str(tmp_path / "pred.nii.gz")})
    case = load_case_from_paths("c", {"image": str(tmp_path / f"im.{ext}"),
                                      "label": str(tmp_path / f"lab.{ext}"),
                                      "prediction": str(tmp_path / "pred.png")},
                                read={"spacing": "0.4 0.7"})
    np.testing.assert_array_equal(case.image, twin.image)
    np.testing.assert_array_equal(case.label, twin.label)
    np.testing.assert_allclose(case.affine, twin.affine, atol=1e-6)
    assert evaluate_case(case.prediction, case.label, spacing=case.spacing) == \
        pytest.approx(evaluate_case(twin.prediction, twin.label, spacing=twin.spacing))


def test_raster_without_spacing_states_the_default(tmp_path: Path):
    _raster_twins(tmp_path)
    case = load_case_from_paths("c", {"image": str(tmp_path / "im.png"),
                                      "label": str(tmp_path / "lab.png")})
    assert case.spacing == (1.0, 1.0)
    assert any("1 mm per pixel assumed" in n for n in case.notes)
    with pytest.raises(ValueError, match="case 'c': spacing: expected one or two positive"):
        load_case_from_paths("c", {"image": str(tmp_path / "im.png"),
                                   "label": str(tmp_path / "lab.png")}, read={"spacing": "-1"})


def test_rgb_is_channels_never_a_spatial_axis(tmp_path: Path):
    _raster_twins(tmp_path)
    case = load_case_from_paths("c", {"image": str(tmp_path / "rgb.png"),
                                      "label": str(tmp_path / "lab.png")})
    assert case.image.shape == (3, 30, 20) and case.label.shape == (30, 20)
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("SC_rgb_small_odd.dcm")
    ds = pydicom.dcmread(path)
    vol = read_volume(path)
    assert vol.array.shape == (3, ds.Columns, ds.Rows)
    with pytest.raises(ValueError, match="label file 'rgb.png': a RGB colour image; expected a single-channel label map"):
        read_volume(tmp_path / "rgb.png", is_image=False, what="label")


def test_single_slice_dicom_with_png_mask_needs_no_affine(tmp_path: Path):
    pydicom = pytest.importorskip("pydicom")
    from PIL import Image
    from pydicom.data import get_testdata_file

    path = get_testdata_file("MR_small.dcm")
    pixels = pydicom.dcmread(path).pixel_array  # (rows, cols)
    mask = (pixels > np.percentile(pixels, 70)).astype(np.uint8)
    Image.fromarray(mask).save(tmp_path / "mask.png")
    case = load_case_from_paths("mr", {"image": path, "label": str(tmp_path / "mask.png")})
    np.testing.assert_array_equal(case.label, mask.T)  # aligned with the image's axes
    np.testing.assert_array_equal(case.image[0] > np.percentile(pixels, 70), case.label > 0)
    assert case.spacing == pytest.approx((0.3125, 0.3125))


def _ct_series(folder: Path, n: int = 5, shape: tuple[int, int] = (12, 10)) -> list:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.Modality = series, study, "CT"
        ds.FrameOfReferenceUID, ds.PatientID, ds.PatientName = frame, "anon", "anon"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = \
            "20240101", "120000", "1", ""
        ds.PatientBirthDate, ds.PatientSex, ds.StudyID, ds.SeriesNumber = "", "O", "1", 1
        ds.Rows, ds.Columns = shape
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.9], 2.0
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [5.0, -3.0, 2.0 * k], \
            [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber, ds.SamplesPerPixel, ds.PhotometricInterpretation = k + 1, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = (np.arange(shape[0] * shape[1], dtype=np.int16).reshape(shape) + k).tobytes()
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
        out.append(pydicom.dcmread(folder / f"{k}.dcm"))
    return out


def test_dicom_seg_equals_nifti_twin_and_names_classes(tmp_path: Path):
    hd = pytest.importorskip("highdicom")
    import nibabel as nib
    from pydicom.sr.codedict import codes

    sources = _ct_series(tmp_path / "ct")
    mask = np.zeros((5, 12, 10), np.uint8)  # (slices, rows, cols)
    mask[1:4, 3:8, 2:6] = 1
    mask[2:4, 8:11, 5:9] = 2
    descs = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=name,
        segmented_property_category=codes.SCT.Organ, segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL) for i, name in
        ((1, "liver"), (2, "tumour"))]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask, segmentation_type="BINARY",
        segment_descriptions=descs, series_instance_uid=hd.UID(), series_number=2,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test",
        manufacturer_model_name="test", software_versions="0", device_serial_number="0")
    seg.save_as(tmp_path / "seg.dcm")
    image = read_volume(tmp_path / "ct")
    # the twin: the mask in the image's (x, y, z) axes with the image's affine
    nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0), image.affine), tmp_path / "twin.nii.gz")
    pred = np.roll(mask, 1, axis=2).transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(pred, image.affine), tmp_path / "pred.nii.gz")
    case = load_case_from_paths("s", {"image": str(tmp_path / "ct"), "label": str(tmp_path / "seg.dcm"),
                                      "prediction": str(tmp_path / "pred.nii.gz")}, labels=[0, 1, 2])
    twin = load_case_from_paths("s", {"image": str(tmp_path / "ct"), "label": str(tmp_path / "twin.nii.gz"),
                                      "prediction": str(tmp_path / "pred.nii.gz")}, labels=[0, 1, 2])
    np.testing.assert_array_equal(case.label, twin.label)
    assert case.class_names == {1: "liver", 2: "tumour"}
    assert evaluate_case(case.prediction, case.label, spacing=case.spacing, labels=[1, 2]) == \
        pytest.approx(evaluate_case(twin.prediction, twin.label, spacing=twin.spacing, labels=[1, 2]))
    # another frame of reference: refused, not silently placed
    other = _ct_series(tmp_path / "other")
    assert other[0].FrameOfReferenceUID != sources[0].FrameOfReferenceUID
    with pytest.raises(ValueError, match="case 's': label file 'seg.dcm': its Frame of Reference UID differs"):
        load_case_from_paths("s", {"image": str(tmp_path / "other"), "label": str(tmp_path / "seg.dcm")},
                             labels=[0, 1, 2])


def test_cohort_reads_formats_and_explain_loader_accepts_dicom_folder(files: Path, tmp_path: Path):
    df = pd.DataFrame({"case_id": ["n", "m"], "image": ["image.nrrd", "image.mha"],
                       "label": ["label.seg.nrrd", "label.mha"]})
    cohort = Cohort.from_dataframe(df, root=files)
    assert cohort.load_case("n", labels=[0, 1, 2]).label.sum() == \
        cohort.load_case("m", labels=[0, 1, 2]).label.sum()
    pytest.importorskip("pydicom")
    _ct_series(tmp_path / "ct")
    arrays, affine = load_on_one_grid("ct", {"image": str(tmp_path / "ct"), "reference": None},
                                      "image", images=("image",))
    assert arrays["image"].shape == (1, 10, 12, 5) and affine.shape == (4, 4)


def test_explain_accepts_a_dicom_folder_like_audit(tmp_path: Path, capsys):
    pytest.importorskip("pydicom")
    import nibabel as nib

    from medseg_xai.cli import main

    _ct_series(tmp_path / "ct", n=8, shape=(16, 16))
    image = read_volume(tmp_path / "ct")
    lab = np.zeros(image.spatial_shape, np.uint8)
    lab[4:9, 5:10, 2:5] = 1
    nib.save(nib.Nifti1Image(lab, image.affine), tmp_path / "lab.nii.gz")
    code = main(["explain", str(tmp_path / "ct"), "--ref", str(tmp_path / "lab.nii.gz"),
                 "--target", "lesion", "--lesion", "1", "--method", "saliency",
                 "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    saved = list((tmp_path / "out").glob("*.nii.gz"))
    assert len(saved) == 1 and nib.load(saved[0]).shape == image.spatial_shape


def test_png_audit_report_states_the_assumed_spacing(tmp_path: Path):
    import medseg_xai as mx

    _raster_twins(tmp_path)
    df = pd.DataFrame({"case_id": ["p1", "p2"], "image": ["im.png", "im.bmp"],
                       "label": ["lab.png", "lab.bmp"], "prediction": ["pred.png", "pred.png"],
                       "spacing": [None, "0.4 0.7"]})
    result = mx.audit(mx.Cohort.from_dataframe(df, root=tmp_path), n_resamples=20, workers=1,
                      progress=False)
    assert (result.cases["status"] == "ok").all(), result.cases["error"].tolist()
    notes = result.provenance["read_notes"]
    assert notes == {"PNG carries no pixel spacing and the manifest gives none: 1 mm per pixel "
                     "assumed": 1}
    html = Path(result.to_html(tmp_path / "r.html")).read_text(encoding="utf-8")
    assert "1 mm per pixel assumed (1 case)" in html
    assert result.settings["reference_threshold"] == 0.5


def test_slicer_segment_names_become_the_audits_class_names(files: Path):
    import medseg_xai as mx

    df = pd.DataFrame({"case_id": ["n1", "n2"], "image": ["image.nrrd"] * 2,
                       "label": ["label.seg.nrrd"] * 2, "prediction": ["pred.nrrd"] * 2})
    result = mx.audit(mx.Cohort.from_dataframe(df, root=files), labels=[1, 2], n_resamples=20,
                      workers=1, progress=False)
    assert [c["name"] for c in result.settings["classes"]] == ["liver", "tumour"]
    assert {"dice_liver", "dice_tumour"} <= set(result.cases.columns)
    assert "mean of liver, tumour" in set(result.subgroups["class"])
