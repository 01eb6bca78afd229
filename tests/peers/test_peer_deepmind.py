"""DeepMind surface-distance's own test cases, run under ``convention="deepmind"``.

Inputs and expected values ported from google-deepmind/surface-distance (Apache-2.0),
``surface_distance_test.py``: the 2D and 3D two-pixel cases, the two squares shifted by one
pixel (surfels, areas and distances), the half-volume slabs and the empty-mask cases.
``masd`` here is the mean of DeepMind's two directed average distances.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg_xai.metrics.surface import case_surface_metrics, surfel_distances


def _nan_equal(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-3)


def _check(pred, ref, spacing, *, masd, hd100, hd95, nsd, empty="convention"):
    out = case_surface_metrics(pred, ref, spacing, convention="deepmind", tolerance=1.0,
                               empty=empty)
    assert _nan_equal(out["masd"], masd), out
    assert _nan_equal(out["hd"], hd100), out
    assert _nan_equal(out["hd95"], hd95), out
    assert _nan_equal(out["nsd"], nsd), out


def test_2d_two_pixels_2mm_away():
    gt = np.zeros((128, 128), bool)
    pred = np.zeros_like(gt)
    gt[50, 70] = True
    pred[50, 72] = True
    sd = surfel_distances(pred, gt, (2, 1))
    diag = 0.5 * math.sqrt(2**2 + 1**2)
    np.testing.assert_array_equal(np.sort(sd.ref_areas), [diag] * 4)
    np.testing.assert_array_equal(np.sort(sd.pred_areas), [diag] * 4)
    np.testing.assert_array_equal(np.sort(sd.ref_to_pred), [1.0, 1.0, 2.0, 2.0])
    np.testing.assert_array_equal(np.sort(sd.pred_to_ref), [1.0, 1.0, 2.0, 2.0])
    _check(pred, gt, (2, 1), masd=1.5, hd100=2.0, hd95=2.0, nsd=0.5)


def test_2d_two_squares_shifted_by_one_pixel():
    gt = np.zeros((6, 6), bool)
    gt[1:3, 1:3] = True
    pred = np.zeros((6, 6), bool)
    pred[1:4, 1:3] = True
    vertical, horizontal = 2, 1
    diag = 0.5 * math.sqrt(horizontal**2 + vertical**2)
    sd = surfel_distances(pred, gt, (vertical, horizontal))
    assert sorted(sd.ref_areas) == sorted(
        [diag, horizontal, diag, vertical, diag, horizontal, diag, vertical])
    assert sorted(sd.pred_areas) == sorted(
        [diag, horizontal, diag, vertical, vertical, diag, horizontal, diag, vertical, vertical])
    assert sorted(sd.ref_to_pred) == sorted([0] * 5 + [horizontal] + [0] * 2)
    assert sorted(sd.pred_to_ref) == sorted([0] * 5 + [vertical] * 3 + [0] * 2)


@pytest.mark.parametrize("ndim", [2, 3])
def test_empty_masks(ndim):
    shape = (128,) * ndim
    spacing = (3, 2, 1)[:ndim]
    point = (50, 60, 70)[:ndim]
    one = np.zeros(shape, bool)
    one[point] = True
    none = np.zeros(shape, bool)
    # empty prediction / empty reference: inf distances, NaN mean of (inf, NaN), surface Dice 0
    _check(none, one, spacing, masd=math.nan, hd100=math.inf, hd95=math.inf, nsd=0.0)
    _check(one, none, spacing, masd=math.nan, hd100=math.inf, hd95=math.inf, nsd=0.0)
    # both empty: robust HD inf, averages and surface Dice NaN
    _check(none, none, spacing, masd=math.nan, hd100=math.inf, hd95=math.inf, nsd=math.nan)


def test_3d_two_pixels_2mm_away():
    gt = np.zeros((128, 128, 128), bool)
    pred = np.zeros_like(gt)
    gt[50, 60, 70] = True
    pred[50, 60, 72] = True
    _check(pred, gt, (3, 2, 1), masd=1.5, hd100=2.0, hd95=2.0, nsd=0.5)


@pytest.mark.slow
def test_3d_two_cubes_shifted_by_one_pixel():
    gt = np.zeros((100, 100, 100), bool)
    pred = np.zeros_like(gt)
    gt[0:50] = True
    pred[0:51] = True
    out = case_surface_metrics(pred, gt, (2, 1, 1), convention="deepmind", tolerance=1.0)
    sd = surfel_distances(pred, gt, (2, 1, 1))
    avg_gt = np.sum(sd.ref_to_pred * sd.ref_areas) / np.sum(sd.ref_areas)
    avg_pred = np.sum(sd.pred_to_ref * sd.pred_areas) / np.sum(sd.pred_areas)
    assert (avg_gt, avg_pred) == pytest.approx((0.322, 0.339), abs=1e-3)
    assert out["masd"] == pytest.approx(0.5 * (0.322 + 0.339), abs=1e-3)
    assert out["hd"] == pytest.approx(2.0) and out["hd95"] == pytest.approx(2.0)
    overlap_gt = np.sum(sd.ref_areas[sd.ref_to_pred <= 1]) / np.sum(sd.ref_areas)
    overlap_pred = np.sum(sd.pred_areas[sd.pred_to_ref <= 1]) / np.sum(sd.pred_areas)
    assert (overlap_gt, overlap_pred) == pytest.approx((0.842, 0.830), abs=1e-3)
    assert out["nsd"] == pytest.approx(0.836, abs=1e-3)
