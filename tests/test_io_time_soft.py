"""Silent misreadings made loud: time series evaluated per frame (or refused), 4D images with
3D labels refused, soft references thresholded as stated, --binarize saying what it did."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import medseg_xai as mx
from medseg_xai.cohort import load_case_from_paths
from medseg_xai.metrics import dice

FAST = {"n_resamples": 50, "workers": 1, "progress": False}


def _save(path: Path, array: np.ndarray, time_unit: str | None = None) -> str:
    img = nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0]))
    if time_unit:
        img.header.set_xyzt_units("mm", time_unit)
    nib.save(img, path)
    return str(path)


def _cine() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    lab = np.zeros((16, 14, 6), np.uint8)  # (H, W, T)
    for t in range(6):
        lab[4 + t % 2:10, 3:9 + t % 3, t] = 1
    pred = lab.copy()
    pred[4:7, 3:9, 2] = 0  # frames 2 and 4 are worse
    pred[4:6, 3:9, 4] = 0
    return rng.normal(size=lab.shape).astype(np.float32), lab, pred


def test_cine_with_frame_axis_column_gives_per_frame_rows(tmp_path: Path):
    image, lab, pred = _cine()
    df = pd.DataFrame({"case_id": ["cine"], "image": [_save(tmp_path / "i.nii.gz", image)],
                       "label": [_save(tmp_path / "l.nii.gz", lab)],
                       "prediction": [_save(tmp_path / "p.nii.gz", pred)], "frame_axis": [2]})
    cohort = mx.Cohort.from_dataframe(df, root=tmp_path)
    assert cohort.case_ids == [f"cine_f{t}" for t in range(6)]
    result = mx.audit(cohort, strata="frame", **FAST)
    cases = result.cases.set_index("case_id")
    for t in range(6):
        assert cases.loc[f"cine_f{t}", "dice"] == pytest.approx(dice(pred[..., t], lab[..., t]))
    assert (cases["patient_id"].nunique() == 1)  # frames clustered by their case
    assert cases.loc["cine_f0", "dice"] == 1.0 and cases.loc["cine_f2", "dice"] < 0.8
    sub = result.subgroups
    assert set(sub.loc[(sub["stratum"] == "frame") & (sub["metric"] == "dice"), "group"]
               .astype(str)) == {str(t) for t in range(6)}


def test_time_series_without_frames_and_4d_image_with_3d_label_fail_clearly(tmp_path: Path):
    image, lab, _ = _cine()
    img4 = _save(tmp_path / "i4.nii.gz", image[:, :, None, :], time_unit="sec")  # (H, W, 1, T)
    lab3 = _save(tmp_path / "l3.nii.gz", lab[..., 0][..., None])
    with pytest.raises(ValueError, match=r"case 'c': image: a time series \(6 frames along axis 3\)"):
        load_case_from_paths("c", {"image": img4, "label": lab3})
    # with a frame axis the 4D image is read frame by frame; a 3D label cannot follow it
    with pytest.raises(ValueError, match="case 'c': label: frame_axis 3: expected an axis"):
        load_case_from_paths("c", {"image": img4, "label": lab3}, read={"frame_axis": 3, "frame": 1})
    lab4 = _save(tmp_path / "l4.nii.gz", lab[:, :, None, :], time_unit="sec")
    case = load_case_from_paths("c", {"image": img4, "label": lab4}, read={"frame_axis": 3, "frame": 1})
    np.testing.assert_array_equal(case.label, lab[..., 1])
    twelve = _save(tmp_path / "i12.nii.gz", np.zeros((8, 8, 4, 12), np.float32))
    with pytest.raises(ValueError, match="a 4th axis of 12 entries without a time unit"):
        load_case_from_paths("c", {"image": twelve, "label": lab3})


def test_soft_reference_is_thresholded_as_stated(tmp_path: Path):
    rng = np.random.default_rng(0)
    soft = np.clip(rng.normal(0.3, 0.3, size=(12, 12, 6)), 0, 1).astype(np.float32)
    pred = (soft >= 0.5).astype(np.uint8)
    df = pd.DataFrame({"case_id": ["s"], "image": [_save(tmp_path / "i.nii.gz", soft)],
                       "label": [_save(tmp_path / "l.nii.gz", soft)],
                       "prediction": [_save(tmp_path / "p.nii.gz", pred)]})
    cohort = mx.Cohort.from_dataframe(df, root=tmp_path)
    result = mx.audit(cohort, **FAST)
    assert result.cases["dice"].iloc[0] == 1.0  # not the 0.4 of "everything above 0"
    assert "thresholded at >= 0.5" in result.cases["read_notes"].iloc[0]
    assert result.settings["reference_threshold"] == 0.5
    lower = mx.audit(cohort, reference_threshold=0.25, **FAST)
    assert lower.cases["dice"].iloc[0] == pytest.approx(dice(pred, soft >= 0.25))


def test_binarize_says_what_it_did(tmp_path: Path):
    lab = np.zeros((10, 10, 4), np.uint8)
    lab[2:5, 2:5, 1:3] = 2
    lab[6:8, 6:8, 1:3] = 7
    case = load_case_from_paths("b", {"image": _save(tmp_path / "i.nii.gz", lab.astype(np.float32)),
                                      "label": _save(tmp_path / "l.nii.gz", lab)}, binarize=True)
    assert "label: binarize counted value(s) [2, 7] as foreground" in case.notes
    assert set(np.unique(case.label)) == {0, 1}


def test_classes_option_is_checked_before_any_case(tmp_path: Path, capsys):
    from medseg_xai.cli import main

    image, lab, pred = _cine()
    pd.DataFrame({"case_id": ["c"], "image": [_save(tmp_path / "i.nii.gz", image)],
                  "label": [_save(tmp_path / "l.nii.gz", lab)],
                  "prediction": [_save(tmp_path / "p.nii.gz", pred)]}).to_csv(tmp_path / "m.csv")
    assert main(["audit", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"),
                 "--classes", "1=liver:organ"]) == 2
    assert "expected a kind in ['structure', 'lesion'], got 'organ'" in capsys.readouterr().err
    assert main(["audit", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"),
                 "--classes", "1=liver", "--labels", "1"]) == 2


def test_nrrd_cine_with_a_time_kind_is_refused_or_read_per_frame(tmp_path: Path):
    _, lab, pred = _cine()  # (H, W, T)
    for name, arr in (("lab", lab), ("pred", pred)):
        hdr = (f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {arr.shape[0]} {arr.shape[1]} "
               f"{arr.shape[2]}\nkinds: domain domain time\nspacings: 1.5 1.5 0.03\n"
               "encoding: raw\n\n").encode("ascii")
        (tmp_path / f"{name}.nrrd").write_bytes(hdr + arr.transpose(2, 1, 0).tobytes())
    paths = {"image": str(tmp_path / "lab.nrrd"), "label": str(tmp_path / "lab.nrrd"),
             "prediction": str(tmp_path / "pred.nrrd")}
    with pytest.raises(ValueError, match=r"case 'n': image: a time series \(6 frames along axis 2\)"):
        load_case_from_paths("n", paths)
    case = load_case_from_paths("n", paths, read={"frame_axis": 2, "frame": 2})
    np.testing.assert_array_equal(case.label, lab[..., 2])
    np.testing.assert_array_equal(case.prediction, pred[..., 2])
    assert case.spacing == pytest.approx((1.5, 1.5))
