"""Surface metrics: equality with MONAI, geometric properties and the empty-mask table."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from monai.metrics import (
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from scipy import ndimage

from medseg_xai import metrics as M


def _monai(pred, ref, spacing, tolerance):
    """HD, HD95, ASSD and NSD from MONAI itself (one-hot, batch and channel axes added)."""
    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yr = torch.from_numpy(ref[None, None].astype(np.float32))
    sp = list(spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "hd": compute_hausdorff_distance(yp, yr, include_background=True, spacing=sp).item(),
            "hd95": compute_hausdorff_distance(
                yp, yr, include_background=True, spacing=sp, percentile=95
            ).item(),
            "assd": compute_average_surface_distance(
                yp, yr, include_background=True, symmetric=True, spacing=sp
            ).item(),
            "nsd": compute_surface_dice(
                yp, yr, [tolerance], include_background=True, spacing=sp
            ).item(),
        }


def _blobs(rng, shape, density):
    """Random smooth-ish blobs plus a few isolated voxels (realistic and awkward surfaces)."""
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=1.2)
    mask = noise > np.quantile(noise, 1 - density)
    mask |= rng.random(shape) > 0.995
    return mask


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ndim", [2, 3])
def test_equals_monai_on_random_masks_with_anisotropic_spacing(seed, ndim):
    rng = np.random.default_rng(1000 * ndim + seed)
    shape = (41, 37) if ndim == 2 else (17, 23, 19)
    pred = _blobs(rng, shape, rng.uniform(0.05, 0.4))
    ref = _blobs(rng, shape, rng.uniform(0.05, 0.4))
    spacing = tuple(rng.uniform(0.3, 3.0, ndim))
    tolerance = float(rng.choice([0.5, 1.0, float(spacing[0]), 2.5]))
    ours = M.evaluate_case(pred, ref, spacing, tolerance=tolerance)
    ref_vals = _monai(pred, ref, spacing, tolerance)
    for key, value in ref_vals.items():
        assert ours[key] == pytest.approx(value, rel=1e-6), key
    # the single-metric functions give the same numbers as evaluate_case
    assert M.hausdorff_distance(pred, ref, spacing, percentile=None) == ours["hd"]
    assert M.hausdorff_distance(pred, ref, spacing) == ours["hd95"]
    assert M.average_surface_distance(pred, ref, spacing) == ours["assd"]
    assert M.normalized_surface_dice(pred, ref, tolerance, spacing) == ours["nsd"]


@st.composite
def small_pairs(draw, min_side=1):
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(min_side, 7)) for _ in range(ndim))
    pred = draw(arrays(bool, shape))
    ref = draw(arrays(bool, shape))
    spacing = tuple(draw(st.floats(0.25, 4.0)) for _ in range(ndim))
    return pred, ref, spacing


@given(small_pairs(), st.sampled_from([0.5, 1.0, 1.7]))
def test_equals_monai_on_arbitrary_small_masks(case, tolerance):
    pred, ref, spacing = case
    if not pred.any() or not ref.any():
        return
    ours = M.evaluate_case(pred, ref, spacing, tolerance=tolerance)
    for key, value in _monai(pred, ref, spacing, tolerance).items():
        assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


@given(arrays(bool, st.sampled_from([(6, 7), (3, 5, 4), (1, 4), (4, 1, 3)])))
def test_edge_voxels_are_mask_minus_face_erosion(mask):
    expected = np.argwhere(mask & ~ndimage.binary_erosion(mask))
    np.testing.assert_array_equal(M.edge_voxels(mask), expected)


@given(small_pairs())
def test_bounds_and_symmetry(case):
    pred, ref, spacing = case
    a = M.evaluate_case(pred, ref, spacing, tolerance=1.0)
    b = M.evaluate_case(ref, pred, spacing, tolerance=1.0)
    for key in ("hd", "hd95", "assd", "nsd"):
        assert a[key] == pytest.approx(b[key], rel=1e-12, abs=1e-12), key
    diagonal = M.image_diagonal_mm(pred.shape, spacing)
    assert 0.0 <= a["hd95"] <= a["hd"] + 1e-9
    assert a["assd"] <= a["hd"] + 1e-9
    assert a["hd"] <= diagonal + 1e-9
    assert 0.0 <= a["nsd"] <= 1.0
    same = M.evaluate_case(pred, pred, spacing)
    assert (same["hd"], same["assd"], same["nsd"]) == (0.0, 0.0, 1.0)


@given(small_pairs(), st.integers(1, 3))
def test_invariant_to_zero_padding(case, pad):
    pred, ref, spacing = case
    if not pred.any() or not ref.any():
        return  # the worst-case value depends on the image size by design
    a = M.evaluate_case(pred, ref, spacing)
    b = M.evaluate_case(np.pad(pred, pad), np.pad(ref, pad), spacing)
    for key in ("hd", "hd95", "assd", "nsd"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key


@given(small_pairs(), st.floats(0.1, 10.0))
def test_distances_scale_with_spacing(case, factor):
    pred, ref, spacing = case
    if not pred.any() or not ref.any():
        return
    a = M.evaluate_case(pred, ref, spacing)
    b = M.evaluate_case(pred, ref, tuple(s * factor for s in spacing))
    for key in ("hd", "hd95", "assd"):
        assert b[key] == pytest.approx(a[key] * factor, rel=1e-6, abs=1e-9), key


@given(small_pairs(), st.sampled_from([0.25, 0.5, 2.0, 8.0]), st.sampled_from([0.5, 1.0, 2.3]))
def test_nsd_unchanged_when_spacing_and_tolerance_scale_together(case, factor, tol):
    # powers of two scale every coordinate and distance exactly, so ties stay ties
    pred, ref, spacing = case
    scaled = [s * factor for s in spacing]
    assert M.normalized_surface_dice(pred, ref, tol * factor, scaled) == M.normalized_surface_dice(
        pred, ref, tol, spacing
    )


def test_hand_built_distances_with_spacing():
    pred = np.zeros((5, 9), bool)
    ref = np.zeros((5, 9), bool)
    pred[2, 1] = True
    ref[2, 7] = True
    ref[4, 1] = True
    sp = (0.5, 2.0)
    # pred -> ref: nearest is (4,1): 2 rows * 0.5 = 1.0; ref -> pred: (2,7) at 12 mm, (4,1) at 1 mm
    assert M.hausdorff_distance(pred, ref, sp, percentile=None) == pytest.approx(12.0)
    assert M.average_surface_distance(pred, ref, sp) == pytest.approx((1.0 + 12.0 + 1.0) / 3)
    assert M.normalized_surface_dice(pred, ref, 1.0, sp) == pytest.approx(2 / 3)
    # the 95th percentile of [1, 12] (linear interpolation) is 1 + 0.95 * 11
    assert M.hausdorff_distance(pred, ref, sp) == pytest.approx(1 + 0.95 * 11, rel=1e-6)
    assert M.hausdorff_distance(pred, ref, sp, percentile=100) == pytest.approx(12.0)


def test_empty_mask_table():
    empty = np.zeros((4, 5, 6), bool)
    blob = np.zeros_like(empty)
    blob[1:3, 1:3, 1:4] = True
    sp = (3.0, 1.0, 2.0)
    diagonal = math.sqrt(12.0**2 + 5.0**2 + 12.0**2)
    assert M.image_diagonal_mm(empty.shape, sp) == pytest.approx(diagonal)

    both = M.evaluate_case(empty, empty, sp)
    assert (both["hd"], both["hd95"], both["assd"], both["nsd"]) == (0.0, 0.0, 0.0, 1.0)
    assert both["edge_case"] == "both_empty"
    for pred, ref, case in ((empty, blob, "pred_empty"), (blob, empty, "ref_empty")):
        out = M.evaluate_case(pred, ref, sp)
        assert out["edge_case"] == case
        assert out["hd"] == out["hd95"] == out["assd"] == pytest.approx(diagonal)
        assert out["nsd"] == 0.0
        nan = M.evaluate_case(pred, ref, sp, empty="nan")
        assert all(math.isnan(nan[k]) for k in ("hd", "hd95", "assd"))
        assert nan["nsd"] == 0.0 and nan["empty_policy"] == "nan"
    nan_both = M.evaluate_case(empty, empty, sp, empty="nan")
    assert all(math.isnan(nan_both[k]) for k in ("hd", "hd95", "assd", "nsd", "dice"))
    assert math.isnan(M.hausdorff_distance(empty, blob, sp, empty="nan"))
    assert M.normalized_surface_dice(empty, empty, 1.0) == 1.0


def test_mask_touching_the_border_has_border_edges():
    # a full image has only its border as surface; MONAI agrees
    full = np.ones((5, 6), bool)
    inner = np.zeros((5, 6), bool)
    inner[2, 2:4] = True
    sp = (1.0, 1.5)
    ours = M.evaluate_case(full, inner, sp)
    for key, value in _monai(full, inner, sp, 1.0).items():
        assert ours[key] == pytest.approx(value, rel=1e-6), key
    assert len(M.edge_voxels(full)) == 5 * 6 - 3 * 4


@pytest.mark.parametrize("bad", [-1, 101, float("nan")])
def test_percentile_out_of_range_raises(bad):
    blob = np.ones((3, 3), bool)
    with pytest.raises(ValueError, match=r"percentile: expected a number in \[0, 100\]"):
        M.hausdorff_distance(blob, blob, percentile=bad)


def test_negative_tolerance_raises():
    blob = np.ones((3, 3), bool)
    with pytest.raises(
        ValueError, match=r"tolerance: expected a finite distance >= 0 in mm, got -1"
    ):
        M.normalized_surface_dice(blob, blob, -1)


@given(
    arrays(np.float32, st.integers(1, 300), elements=st.floats(0, 1000, width=32)),
    st.one_of(st.sampled_from([0.0, 0.5, 0.9, 0.95, 0.99, 1.0]), st.floats(0, 1)),
)
def test_partition_quantile_is_bit_identical_to_torch_quantile(d, q):
    from medseg_xai.metrics.surface import torch_quantile

    assert torch_quantile(d, q) == float(torch.quantile(torch.from_numpy(d.copy()), q))


@settings(max_examples=80, deadline=None)
@given(st.sampled_from([2, 3]).flatmap(
    lambda nd: arrays(bool, st.tuples(*[st.integers(1, 11)] * nd))))
def test_packed_edges_equal_the_bool_erosion(mask):
    # the packed-bit erosion of evaluate_case's dense path against the plain bool one
    from medseg_xai.metrics._nearest import box_of, pad_crop
    from medseg_xai.metrics.surface import _edges_box, _edges_padded

    box = box_of(mask)
    if box is None:
        return
    pad = (2,) * mask.ndim
    expected = _edges_padded(pad_crop(mask, box, pad), pad)
    flat, grid = _edges_box(mask, box, pad)
    np.testing.assert_array_equal(grid, expected)
    np.testing.assert_array_equal(flat, np.flatnonzero(expected))
