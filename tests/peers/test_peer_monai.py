"""MONAI's own test cases, run under ``convention="monai"``.

Inputs and expected values ported from Project-MONAI/MONAI (Apache-2.0),
``tests/metrics/test_hausdorff_distance.py``, ``test_surface_distance.py`` and
``test_surface_dice.py`` (symmetric Euclidean cases; MONAI's chessboard/taxicab metrics and
per-component options have no counterpart here). The sphere images are regenerated from the
description in those files: voxel ``i`` at ``i * spacing`` mm, inside when within ``radius``
of ``centre`` (both in mm).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg_xai import metrics as M
from medseg_xai.metrics.surface import case_surface_metrics

SPACING = (0.85, 1.2, 0.9)


def sphere(radius=20.0, centre=(49, 49, 49), shape=(99, 99, 99), spacing=(1.0, 1.0, 1.0)):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum((g * s - c) ** 2 for g, s, c in zip(grids, spacing, centre))
    return d2 <= radius * radius


# (pred kwargs, ref kwargs, spacing, percentile, expected symmetric Euclidean HD)
HD_CASES = [
    ({}, {}, None, None, 0.0),
    (dict(centre=(20, 20, 20)), dict(centre=(19, 19, 19)), None, None, 1.7320508075688772),
    (dict(radius=33, centre=(19, 33, 22)), dict(radius=33, centre=(20, 33, 22)), None, None, 1.0),
    (dict(centre=(20, 33, 22)), dict(radius=40, centre=(20, 33, 22)), None, None,
     20.223748416156685),
    (dict(centre=(20, 33, 22)), dict(radius=40, centre=(20, 33, 22)), None, 95,
     20.09975124224178),
    (dict(centre=(20, 20, 20), spacing=SPACING), dict(centre=(19, 19, 19), spacing=SPACING),
     SPACING, None, 2.2671568),
    (dict(radius=15, centre=(20, 33, 22), spacing=SPACING),
     dict(radius=30, centre=(20, 33, 22), spacing=SPACING), SPACING, None, 15.62594),
]


@pytest.mark.slow
@pytest.mark.parametrize("pred_kw, ref_kw, spacing, percentile, expected", HD_CASES)
def test_monai_hausdorff_cases(pred_kw, ref_kw, spacing, percentile, expected):
    value = M.hausdorff_distance(sphere(**pred_kw), sphere(**ref_kw), spacing,
                                 percentile=percentile)
    assert value == pytest.approx(expected, rel=1e-6, abs=1e-12)


# (pred kwargs, ref kwargs, spacing, expected symmetric Euclidean ASSD)
ASSD_CASES = [
    ({}, {}, None, 0.0),
    (dict(radius=33, centre=(19, 33, 22)), dict(radius=33, centre=(20, 33, 22)), None, 0.350217),
    (dict(centre=(20, 33, 22)), dict(radius=40, centre=(20, 33, 22)), None, 15.117741),
    (dict(radius=33, centre=(42, 45, 52), spacing=SPACING),
     dict(radius=33, centre=(43, 45, 52), spacing=SPACING), SPACING, 0.4951),
]


@pytest.mark.slow
@pytest.mark.parametrize("pred_kw, ref_kw, spacing, expected", ASSD_CASES)
def test_monai_surface_distance_cases(pred_kw, ref_kw, spacing, expected):
    value = M.average_surface_distance(sphere(**pred_kw), sphere(**ref_kw), spacing)
    assert value == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_monai_empty_cases_are_inf_or_nan():
    empty = np.zeros((99, 99, 99), bool)
    full = sphere(radius=40, centre=(20, 33, 22))
    for p, r in ((empty, full), (sphere(), empty)):
        out = case_surface_metrics(p, r, (1.0, 1.0, 1.0), empty="convention")
        assert out["hd"] == math.inf and out["assd"] == math.inf  # MONAI: inf
    both = case_surface_metrics(empty, empty, SPACING, empty="convention")
    assert math.isnan(both["hd"]) and math.isnan(both["assd"])  # MONAI: NaN (not counted)


def _half_planes(shape, pred_from, ref_from, axis=-1):
    pred = np.zeros(shape, bool)
    ref = np.zeros(shape, bool)
    idx = [slice(None)] * len(shape)
    idx[axis] = slice(pred_from, None)
    pred[tuple(idx)] = True
    idx[axis] = slice(ref_from, None)
    ref[tuple(idx)] = True
    return pred, ref


@pytest.mark.parametrize("spacing", [None, (0.85, 1.2)])
def test_monai_surface_dice_2d_10px_shift(spacing):
    pred, ref = _half_planes((480, 640), 50, 60)
    fg = 1 - (478 + 480 + 9 * 2) / (480 * 4 + 588 * 2 + 578 * 2)
    bg = 1 - (478 + 480 + 9 * 2) / (480 * 4 + 48 * 2 + 58 * 2)
    assert M.normalized_surface_dice(pred, ref, 0.0, spacing) == pytest.approx(fg)
    assert M.normalized_surface_dice(~pred, ~ref, 0.0, spacing) == pytest.approx(bg)
    # monotone in the tolerance, and 1 once it covers the 10-pixel shift
    values = [M.normalized_surface_dice(pred, ref, t, spacing) for t in (0, 1, 9, 10, 11, 12, 13)]
    assert values == sorted(values)
    assert values[-1] == values[-2] == 1.0
    if spacing is None:
        assert values[3] == values[4] == 1.0  # 10 px at 1 mm
    # no foreground on either side: MONAI gives NaN for the class, 1 for the full background
    z = np.zeros((480, 640), bool)
    assert math.isnan(M.normalized_surface_dice(z, z, 0.0, spacing, empty="convention"))
    assert M.normalized_surface_dice(~z, ~z, 0.0, spacing) == 1.0


@pytest.mark.slow
def test_monai_surface_dice_3d_10px_shift():
    pred, ref = _half_planes((200, 110, 80), 20, 30)
    fg = 1 - (200 * 110 + 198 * 108 + 9 * 200 * 2 + 9 * 108 * 2) / (
        200 * 110 * 4 + (58 + 48) * 200 * 2 + (58 + 48) * 108 * 2)
    bg = 1 - (200 * 110 + 198 * 108 + 9 * 200 * 2 + 9 * 108 * 2) / (
        200 * 110 * 4 + (28 + 18) * 200 * 2 + (28 + 18) * 108 * 2)
    assert M.normalized_surface_dice(pred, ref, 0.0) == pytest.approx(fg)
    assert M.normalized_surface_dice(~pred, ~ref, 0.0) == pytest.approx(bg)
    assert M.normalized_surface_dice(pred, ref, 10.0) == M.normalized_surface_dice(pred, ref, 11.0)


def test_monai_surface_dice_all_distances():
    pred = np.zeros((10, 10), bool)
    ref = np.zeros((10, 10), bool)
    pred[1:4, 1] = True
    ref[5:8, 6] = True
    nsd = M.normalized_surface_dice
    assert nsd(~pred, ~ref, 0) == pytest.approx(1 - (8 + 4) / (36 * 2 + 8 + 4))
    assert nsd(pred, ref, 0) == 0.0
    assert nsd(~pred, ~ref, 2.8) == pytest.approx(1 - 3 / (36 * 2 + 8 + 4))
    assert nsd(pred, ref, 5.5) == pytest.approx(1 - (2 + 2) / (3 + 3))
    assert nsd(~pred, ~ref, 3) == pytest.approx(1 - 1 / (36 * 2 + 8 + 4))
    assert nsd(pred, ref, 6) == pytest.approx(1 - 2 / (3 + 3))


def test_monai_not_predicted_not_present():
    pred = np.zeros((80, 80), int)
    ref = np.zeros((80, 80), int)
    pred[10:20, 10:20] = 1
    ref[10:20, 10:20] = 2
    got = [M.normalized_surface_dice(pred == c, ref == c, 1.0, empty="convention")
           for c in range(4)]
    assert got[:3] == [1.0, 0.0, 0.0] and math.isnan(got[3])


def test_monai_subvoxel_surface_dice_cases():
    spacing = (3, 2, 1)
    gt = np.zeros((128, 128, 128), bool)
    pred = np.zeros_like(gt)
    gt[50, 60, 70] = True
    nsd = M.normalized_surface_dice
    assert nsd(pred, gt, 1.0, spacing, use_subvoxels=True) == 0.0
    gt[50, 60, 70] = False
    pred[50, 60, 72] = True
    assert nsd(pred, gt, 1.0, spacing, use_subvoxels=True) == 0.0
    gt[50, 60, 70] = True
    assert nsd(pred, gt, 1.0, spacing, use_subvoxels=True) == pytest.approx(0.5)


@pytest.mark.slow
def test_monai_subvoxel_surface_dice_slabs():
    gt = np.zeros((100, 100, 100), bool)
    pred = np.zeros_like(gt)
    gt[0:50] = True
    pred[0:51] = True
    value = M.normalized_surface_dice(pred, gt, 1.0, (2, 1, 1), use_subvoxels=True)
    assert value == pytest.approx(0.836145, abs=1e-3, rel=1e-3)
