"""Overlap and volume metrics: properties, MONAI cross-checks and the empty-mask table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from monai.metrics import compute_dice, compute_iou, get_confusion_matrix

from medseg_xai import metrics as M

SHAPES = st.one_of(
    st.tuples(st.integers(1, 9), st.integers(1, 9)),
    st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6)),
)


@st.composite
def mask_pairs(draw):
    shape = draw(SHAPES)
    pred = draw(arrays(bool, shape))
    ref = draw(arrays(bool, shape))
    return pred, ref


@given(mask_pairs())
def test_bounds_symmetry_and_dice_jaccard_identity(pair):
    pred, ref = pair
    d, j = M.dice(pred, ref), M.jaccard(pred, ref)
    for value in (d, j, M.precision(pred, ref), M.recall(pred, ref), M.specificity(pred, ref)):
        assert 0.0 <= value <= 1.0
    assert d == pytest.approx(M.dice(ref, pred), abs=1e-12)
    assert j == pytest.approx(M.jaccard(ref, pred), abs=1e-12)
    assert d == pytest.approx(2 * j / (1 + j), abs=1e-12)
    # precision and recall swap when the roles of the masks swap
    assert M.precision(pred, ref) == pytest.approx(M.recall(ref, pred), abs=1e-12)


@given(mask_pairs(), st.integers(0, 3), st.integers(0, 3))
def test_overlap_invariant_to_zero_padding(pair, before, after):
    pred, ref = pair
    pad = [(before, after)] * pred.ndim
    pp, rp = np.pad(pred, pad), np.pad(ref, pad)
    for fn in (M.dice, M.jaccard, M.precision, M.recall):
        assert fn(pp, rp) == pytest.approx(fn(pred, ref), abs=1e-12)


@given(mask_pairs())
def test_overlap_matches_monai_when_both_non_empty(pair):
    pred, ref = pair
    if not pred.any() or not ref.any():
        return
    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yr = torch.from_numpy(ref[None, None].astype(np.float32))
    assert M.dice(pred, ref) == pytest.approx(
        compute_dice(yp, yr, include_background=True).item(), rel=1e-6
    )
    assert M.jaccard(pred, ref) == pytest.approx(
        compute_iou(yp, yr, include_background=True).item(), rel=1e-6
    )
    tp, fp, tn, fn = get_confusion_matrix(yp, yr, include_background=True)[0, 0].tolist()
    assert M.precision(pred, ref) == pytest.approx(tp / (tp + fp), rel=1e-12)
    assert M.recall(pred, ref) == pytest.approx(tp / (tp + fn), rel=1e-12)
    if tn + fp:
        assert M.specificity(pred, ref) == pytest.approx(tn / (tn + fp), rel=1e-12)


def test_hand_counts_2d():
    pred = np.zeros((4, 5), bool)
    ref = np.zeros((4, 5), bool)
    pred[0, :4] = True  # 4 voxels
    ref[0, 2:] = True  # 3 voxels, 2 shared
    assert M.dice(pred, ref) == pytest.approx(2 * 2 / 7)
    assert M.jaccard(pred, ref) == pytest.approx(2 / 5)
    assert M.precision(pred, ref) == pytest.approx(2 / 4)
    assert M.recall(pred, ref) == pytest.approx(2 / 3)
    assert M.specificity(pred, ref) == pytest.approx(15 / 17)  # 20 - 3 negatives, 2 FP


EMPTY = np.zeros((3, 4, 4), bool)
FULL_BLOCK = np.zeros((3, 4, 4), bool)
FULL_BLOCK[1, 1:3, 1:3] = True


@pytest.mark.parametrize(
    ("pred", "ref", "worst", "nan_policy"),
    [
        # (dice, jaccard, precision, recall) per policy
        (EMPTY, EMPTY, (1, 1, 1, 1), (math.nan,) * 4),
        (EMPTY, FULL_BLOCK, (0, 0, 0, 0), (0, 0, math.nan, 0)),
        (FULL_BLOCK, EMPTY, (0, 0, 0, 0), (0, 0, 0, math.nan)),
    ],
    ids=["both_empty", "pred_empty", "ref_empty"],
)
def test_empty_mask_table(pred, ref, worst, nan_policy):
    fns = (M.dice, M.jaccard, M.precision, M.recall)
    got_worst = tuple(fn(pred, ref) for fn in fns)
    got_nan = tuple(fn(pred, ref, empty="nan") for fn in fns)
    assert got_worst == worst
    for got, exp in zip(got_nan, nan_policy):
        assert (math.isnan(got) and math.isnan(exp)) or got == exp
    assert M.specificity(pred, ref) == (1.0 if not pred.any() else 1 - 4 / 48)


def test_specificity_undefined_when_reference_fills_image():
    full = np.ones((2, 3), bool)
    assert M.specificity(full, full) == 1.0
    assert math.isnan(M.specificity(full, full, empty="nan"))


def test_unknown_empty_policy_raises():
    with pytest.raises(ValueError, match=r"empty: expected one of \('worst', 'nan', 'convention'\), got 'zero'"):
        M.dice(FULL_BLOCK, FULL_BLOCK, empty="zero")


def test_volumes_with_anisotropic_spacing():
    pred = np.zeros((4, 4, 4), bool)
    ref = np.zeros((4, 4, 4), bool)
    pred[:2, :2, :3] = True  # 12 voxels
    ref[:2, :2, :2] = True  # 8 voxels
    sp = (2.0, 0.5, 1.5)  # 1.5 mm^3 per voxel
    out = M.volume_difference(pred, ref, sp)
    assert out["volume_pred_mm3"] == pytest.approx(18.0)
    assert out["volume_ref_mm3"] == pytest.approx(12.0)
    assert out["volume_diff_mm3"] == pytest.approx(6.0)
    assert out["abs_volume_diff_mm3"] == pytest.approx(6.0)
    assert out["volume_diff_pct"] == pytest.approx(50.0)
    assert M.volume(ref, sp) == pytest.approx(12.0)
    swapped = M.volume_difference(ref, pred, sp)
    assert swapped["volume_diff_mm3"] == pytest.approx(-6.0)
    assert swapped["volume_diff_pct"] == pytest.approx(-100 / 3)
    assert math.isnan(M.volume_difference(pred, np.zeros_like(ref), sp)["volume_diff_pct"])


def test_accepts_torch_tensors_and_0_1_integers():
    pred = torch.tensor([[0, 1], [1, 1]])
    ref = np.array([[0, 1], [0, 1]], dtype=np.uint8)
    assert M.dice(pred, ref) == pytest.approx(0.8)
