"""Instance matching (Hungarian IoU), panoptic quality and lesions(matching="hungarian")."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medseg_xai import metrics as M


def _brute_force(iou, thr):
    """Best total IoU over every one-to-one assignment of pairs with IoU >= thr."""
    n_ref, n_pred = iou.shape
    best = 0.0
    for k in range(min(n_ref, n_pred) + 1):
        for refs in itertools.combinations(range(n_ref), k):
            for preds in itertools.permutations(range(n_pred), k):
                vals = [iou[r, p] for r, p in zip(refs, preds)]
                if all(v >= thr and v > 0 for v in vals):
                    best = max(best, sum(vals))
    return best


@settings(max_examples=60, deadline=None)
@given(arrays(float, st.tuples(st.integers(0, 4), st.integers(0, 4)),
              elements=st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.55, 0.7, 0.9])),
       st.sampled_from([0.1, 0.5, 0.6]))
def test_hungarian_matching_is_the_best_one_to_one_assignment(iou, thr):
    matches = M.match_instances(iou, thr)
    refs = [m[0] for m in matches]
    preds = [m[1] for m in matches]
    assert len(set(refs)) == len(refs) and len(set(preds)) == len(preds)
    assert all(v >= thr for *_, v in matches)
    assert sum(v for *_, v in matches) == pytest.approx(_brute_force(iou, thr))


def test_panoptic_quality_of_components():
    ref = np.zeros((20, 20), bool)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6] = True  # 16 voxels
    ref[10:14, 10:14] = True
    pred[2:6, 3:7] = True  # IoU 12/20 = 0.6 with the first
    pred[16:18, 16:18] = True  # false positive
    out = M.panoptic_quality(pred, ref)
    assert (out["instance_tp"], out["instance_fp"], out["instance_fn"]) == (1, 1, 1)
    assert out["rq"] == pytest.approx(1 / (1 + 0.5 + 0.5))
    assert out["sq"] == pytest.approx(0.6)
    assert out["pq"] == pytest.approx(0.3)
    assert M.panoptic_quality(pred, ref, iou_threshold=0.7)["instance_tp"] == 0
    z = np.zeros_like(ref)
    assert M.panoptic_quality(z, z)["pq"] == 1.0
    assert math.isnan(M.panoptic_quality(z, z, empty="nan")["pq"])
    assert M.panoptic_quality(z, ref)["pq"] == 0.0


def test_lesions_hungarian_mode_is_one_to_one():
    ref = np.zeros((6, 10, 20), bool)
    pred = np.zeros_like(ref)
    ref[2:4, 3:6, 2:5] = True  # 18 voxels
    ref[2:4, 3:6, 8:11] = True  # 18 voxels
    pred[2:4, 3:6, 2:11] = True  # 54 voxels bridging both
    overlap = M.lesions(pred, ref)
    assert set(overlap["status"]) == {"detected"}  # the covered-fraction rule: both found
    hung = M.lesions(pred, ref, matching="hungarian", iou_threshold=0.3)
    # IoU 18/54 = 1/3 with each: only one lesion can take the component
    assert sorted(hung["status"]) == ["detected", "missed"]
    det = hung[hung["status"] == "detected"].iloc[0]
    assert det["iou"] == pytest.approx(1 / 3)
    assert det["dice"] == pytest.approx(2 * 18 / (18 + 54))
    assert det["matched"] == "pred-1"
    # at IoU 0.5 nothing pairs: both lesions missed, the component a false positive row
    lone = M.lesions(pred, ref, matching="hungarian", iou_threshold=0.5)
    assert lone["status"].tolist() == ["missed", "missed", "false_positive"]


def test_lesion_summary_panoptic_quality():
    ref = np.zeros((20, 20), bool)
    pred = np.zeros_like(ref)
    ref[2:6, 2:6] = True
    ref[10:14, 10:14] = True
    pred[2:6, 3:7] = True
    pred[16:18, 16:18] = True
    table = M.lesions(pred, ref, matching="hungarian")
    summary = M.lesion_summary(table)
    pq = M.panoptic_quality(pred, ref)
    assert summary["rq"] == summary["lesion_f1"] == pytest.approx(pq["rq"])
    assert summary["sq"] == pytest.approx(pq["sq"])
    assert summary["pq"] == pytest.approx(pq["pq"])


def test_bad_matching_arguments():
    a = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match=r"matching: expected one of \('overlap', 'hungarian'\)"):
        M.lesions(a, a, matching="greedy")
    with pytest.raises(ValueError, match=r"iou_threshold: expected an IoU in \(0, 1\]"):
        M.lesions(a, a, matching="hungarian", iou_threshold=0)
    with pytest.raises(ValueError, match="iou_threshold"):
        M.panoptic_quality(a, a, iou_threshold=1.5)
    with pytest.raises(ValueError, match="pred and ref: expected the same shape"):
        M.panoptic_quality(a, np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="ref: expected non-negative labels"):
        M.panoptic_quality(a, -np.ones((4, 4), int))
