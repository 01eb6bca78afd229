"""Lesion-wise matching on hand-built cases, plus a brute-force property check."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from medseg_xai import metrics as M

CONTRACT_COLUMNS = [
    "lesion_id", "source", "status", "volume_voxels", "volume_mm3", "dice", "overlap_fraction",
    "matched", "merge", "centroid_voxel", "centroid_mm", "bbox", "max_prob", "mean_prob", "iou",
]  # fmt: skip


def _by_id(df: pd.DataFrame) -> dict[str, pd.Series]:
    return {row.lesion_id: row for _, row in df.iterrows()}


def test_two_lesions_merged_by_one_predicted_component():
    ref = np.zeros((6, 10, 20), bool)
    pred = np.zeros_like(ref)
    ref[2:4, 3:6, 2:5] = True  # 18 voxels
    ref[2:4, 3:6, 8:11] = True  # 18 voxels
    pred[2:4, 3:6, 2:11] = True  # 54 voxels bridging both
    df = M.lesions(pred, ref, spacing=(2.0, 1.0, 0.5))
    assert list(df.columns) == CONTRACT_COLUMNS
    assert list(df["lesion_id"]) == ["ref-1", "ref-2"]  # no false positive row
    assert set(df["status"]) == {"detected"}
    assert set(df["merge"]) == {"merged"}
    assert set(df["matched"]) == {"pred-1"}
    assert df["dice"].tolist() == pytest.approx([2 * 18 / (18 + 54)] * 2)
    assert df["volume_mm3"].tolist() == pytest.approx([18.0, 18.0])
    summary = M.lesion_summary(df)
    assert summary["n_ref_lesions"] == 2 and summary["n_pred_lesions"] == 1
    assert summary["lesion_sensitivity"] == 1.0 and summary["lesion_f1"] == 1.0


def test_one_lesion_split_in_two():
    ref = np.zeros((8, 30), bool)
    pred = np.zeros_like(ref)
    ref[2:6, 5:25] = True  # 80 voxels
    pred[2:6, 5:12] = True  # 28
    pred[2:6, 16:25] = True  # 36
    df = M.lesions(pred, ref)
    (row,) = [r for _, r in df.iterrows()]
    assert row.status == "detected" and row.merge == "split"
    assert row.matched == "pred-1,pred-2"
    assert row.overlap_fraction == pytest.approx(64 / 80)
    assert row.dice == pytest.approx(2 * 64 / (80 + 64))
    assert M.lesion_summary(df)["n_pred_lesions"] == 2


def test_poorly_overlapped_lesion_is_missed_and_its_component_a_false_positive():
    ref = np.zeros((20, 20), bool)
    pred = np.zeros_like(ref)
    ref[2:8, 2:8] = True  # 36 voxels, segmented exactly
    pred[2:8, 2:8] = True
    ref[10:14, 10:14] = True  # 16 voxels, one of them covered by a mostly-outside component
    pred[13:17, 13] = True  # 4 voxels, (13, 13) inside the lesion
    ref[18, 18] = True  # tiny lesion nobody touches
    df = M.lesions(pred, ref, overlap_threshold=0.25)
    rows = _by_id(df)
    assert list(rows) == ["ref-1", "ref-2", "ref-3", "pred-2"]
    assert rows["ref-1"].status == "detected" and rows["ref-1"].dice == pytest.approx(1.0)
    assert rows["ref-2"].status == "missed"
    assert rows["ref-2"].overlap_fraction == pytest.approx(1 / 16)
    assert rows["ref-2"].matched == "pred-2"
    assert rows["ref-2"].dice == pytest.approx(2 * 1 / (16 + 4))
    assert rows["ref-3"].status == "missed" and rows["ref-3"].volume_voxels == 1
    assert rows["pred-2"].status == "false_positive" and rows["pred-2"].matched == "ref-2"
    assert rows["pred-2"].overlap_fraction == pytest.approx(1 / 4)
    summary = M.lesion_summary(df)
    assert (summary["n_detected"], summary["n_missed"], summary["n_false_positive"]) == (1, 2, 1)
    assert summary["lesion_f1"] == pytest.approx(2 / (2 + 2 + 1))
    assert summary["lesion_sensitivity"] == pytest.approx(1 / 3)


def test_tiny_missed_lesion_has_zero_dice_and_no_match():
    ref = np.zeros((5, 12, 12), bool)
    pred = np.zeros_like(ref)
    ref[1:4, 1:5, 1:5] = True
    pred[1:4, 1:5, 1:5] = True
    ref[3, 10, 10] = True  # one voxel, far from the prediction
    df = M.lesions(pred, ref, spacing=(3.0, 0.8, 0.8))
    tiny = _by_id(df)["ref-2"]
    assert tiny.status == "missed" and tiny.dice == 0.0 and tiny.matched == ""
    assert tiny.centroid_voxel == (3.0, 10.0, 10.0)
    assert tiny.centroid_mm == pytest.approx((9.0, 8.0, 8.0))
    assert tiny.bbox == ((3, 4), (10, 11), (10, 11))
    assert tiny.volume_mm3 == pytest.approx(3.0 * 0.8 * 0.8)
    summary = M.lesion_summary(df)
    assert summary["lesion_sensitivity"] == 0.5
    assert summary["lesion_f1"] == pytest.approx(2 / 3)


def test_overlap_threshold_decides_detection_and_partial_component_is_false_positive():
    ref = np.zeros((10, 20), bool)
    pred = np.zeros_like(ref)
    ref[2:6, 2:12] = True  # 40 voxels
    pred[2:6, 9:18] = True  # covers 12 of them (30 %), 24 voxels outside
    low = M.lesions(pred, ref, overlap_threshold=0.3)
    assert low["status"].tolist() == ["detected"]
    high = M.lesions(pred, ref, overlap_threshold=0.5)
    rows = _by_id(high)
    assert rows["ref-1"].status == "missed"
    fp = rows["pred-1"]
    assert fp.status == "false_positive" and fp.source == "prediction"
    assert fp.matched == "ref-1"  # names the missed lesion it touches
    assert fp.overlap_fraction == pytest.approx(12 / 36)
    assert fp.dice == 0.0


def test_false_positive_on_empty_scan():
    ref = np.zeros((4, 16, 16), bool)
    pred = np.zeros_like(ref)
    pred[1:3, 4:7, 5:9] = True
    probs = np.zeros(ref.shape, np.float32)
    probs[1:3, 4:7, 5:9] = np.linspace(0.5, 0.9, 24).reshape(2, 3, 4)
    df = M.lesions(pred, ref, probabilities=probs)
    assert len(df) == 1
    row = df.iloc[0]
    assert (row.lesion_id, row.status, row.merge) == ("pred-1", "false_positive", "none")
    assert row.volume_voxels == 24
    assert row.max_prob == pytest.approx(0.9)
    assert row.mean_prob == pytest.approx(0.7)
    assert row.centroid_voxel == pytest.approx((1.5, 5.0, 6.5))
    summary = M.lesion_summary(df)
    assert summary["n_ref_lesions"] == 0 and summary["fp_per_case"] == 1.0
    assert math.isnan(summary["lesion_sensitivity"])
    assert summary["lesion_f1"] == 0.0


def test_both_empty_gives_empty_table_with_contract_columns():
    empty = np.zeros((3, 4), bool)
    df = M.lesions(empty, empty)
    assert len(df) == 0 and list(df.columns) == CONTRACT_COLUMNS
    summary = M.lesion_summary(df)
    assert summary["n_false_positive"] == 0 and math.isnan(summary["lesion_f1"])


def test_connectivity_full_by_default_face_on_request():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours
    assert M.label_lesions(mask)[1] == 1
    labels, n = M.label_lesions(mask, connectivity=1)
    assert n == 2 and set(np.unique(labels)) == {0, 1, 2}
    assert len(M.lesions(mask, mask, connectivity=1)) == 2
    with pytest.raises(
        ValueError, match="connectivity: expected 1 .face. .. 2 .full. for 2D masks, got 3"
    ):
        M.label_lesions(mask, connectivity=3)


def test_probabilities_inside_reference_lesion():
    ref = np.zeros((6, 6), bool)
    ref[1:3, 1:3] = True
    probs = np.zeros((6, 6))
    probs[1:3, 1:3] = [[0.1, 0.2], [0.3, 0.4]]
    row = M.lesions(np.zeros_like(ref), ref, probabilities=probs).iloc[0]
    assert row.status == "missed"
    assert row.max_prob == pytest.approx(0.4) and row.mean_prob == pytest.approx(0.25)
    no_probs = M.lesions(ref, ref).iloc[0]
    assert math.isnan(no_probs.max_prob) and math.isnan(no_probs.mean_prob)


def test_summary_over_concatenated_cases():
    ref = np.zeros((8, 8), bool)
    ref[1:3, 1:3] = True
    fp = np.zeros_like(ref)
    fp[5:7, 5:7] = True
    a = M.lesions(ref, ref).assign(case_id="a")  # detected
    b = M.lesions(fp, ref).assign(case_id="b")  # missed + FP
    summary = M.lesion_summary(pd.concat([a, b], ignore_index=True))
    assert summary["n_detected"] == 1 and summary["n_missed"] == 1
    assert summary["fp_per_case"] == 0.5
    assert summary["n_pred_lesions"] == 2  # pred-1 of case a and pred-1 of case b
    assert M.lesion_summary(pd.concat([a, b]), n_cases=4)["fp_per_case"] == 0.25


@given(
    arrays(bool, st.sampled_from([(7, 9), (4, 5, 6)])),
    arrays(bool, st.sampled_from([(7, 9), (4, 5, 6)])),
    st.sampled_from([0.1, 0.5, 1.0]),
)
def test_matches_brute_force(pred, ref, thr):
    if pred.shape != ref.shape:
        return
    df = M.lesions(pred, ref, overlap_threshold=thr)
    full = np.ones((3,) * ref.ndim)
    rlab, n_ref = ndimage.label(ref, structure=full)
    plab, n_pred = ndimage.label(pred, structure=full)
    rows = _by_id(df)
    detected_refs = set()
    for r in range(1, n_ref + 1):
        lesion = rlab == r
        frac = (lesion & pred).sum() / lesion.sum()
        row = rows[f"ref-{r}"]
        assert row.volume_voxels == lesion.sum()
        assert row.overlap_fraction == pytest.approx(frac)
        assert row.status == ("detected" if frac >= thr else "missed")
        touching = np.isin(plab, np.unique(plab[lesion & pred]))
        assert row.dice == pytest.approx(
            2 * (lesion & touching).sum() / (lesion.sum() + touching.sum())
        )
        if frac >= thr:
            detected_refs.add(r)
    for p in range(1, n_pred + 1):
        comp = plab == p
        is_fp = not (set(np.unique(rlab[comp])) & detected_refs)
        assert (f"pred-{p}" in rows) == is_fp
    assert M.lesion_summary(df)["n_pred_lesions"] == n_pred
