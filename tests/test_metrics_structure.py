"""Thin-structure metrics: centreline Dice, boundary IoU and local thickness."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from medseg_xai import metrics as M


def _tube(shape=(24, 24, 24), radius=3.0, axis=0):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    others = [g - n / 2 for i, (g, n) in enumerate(zip(grids, shape)) if i != axis]
    mask = sum(o**2 for o in others) <= radius**2
    mask = np.broadcast_to(mask, shape).copy()
    sl = [slice(None)] * 3
    sl[axis] = slice(0, 3)
    mask[tuple(sl)] = False
    sl[axis] = slice(shape[axis] - 3, None)
    mask[tuple(sl)] = False
    return mask


def test_cldice_identity_bounds_and_a_broken_vessel():
    tube = _tube()
    assert M.cldice(tube, tube) == 1.0
    broken = tube.copy()
    broken[10:14] = False  # a gap in the vessel
    value = M.cldice(broken, tube)
    assert 0.7 < value < 1.0
    # a gap costs centreline Dice more than voxel Dice of a thicker-walled version
    assert M.cldice(np.roll(tube, 5, axis=2), tube) < M.dice(tube | np.roll(tube, 1, 2), tube)
    # it is symmetric
    assert M.cldice(tube, broken) == pytest.approx(value)


def test_cldice_and_boundary_iou_empty_policies():
    z = np.zeros((6, 7), bool)
    m = z.copy()
    m[2:4, 2:5] = True
    for f in (M.cldice, M.boundary_iou):
        assert f(z, z) == 1.0 and math.isnan(f(z, z, empty="nan"))
        assert f(z, m) == 0.0 and f(m, z, empty="nan") == 0.0


def _mr_boundary_iou(pred, ref, d):
    """MetricsReloaded's definition (voxel units): bands = mask voxels closer than d to edges."""
    def band(m):
        edge = m & ~ndimage.binary_erosion(m)
        return m & (ndimage.distance_transform_edt(~edge) < d)

    bp, br = band(pred), band(ref)
    return np.count_nonzero(bp & br) / np.count_nonzero(bp | br)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays(bool, st.tuples(st.integers(3, 12), st.integers(3, 12))),
       arrays(bool, st.tuples(st.integers(3, 12), st.integers(3, 12))),
       st.sampled_from([1.0, 1.5, 2.0, 3.0]))
def test_boundary_iou_equals_the_metricsreloaded_definition(a, b, width):
    shape = (max(a.shape[0], b.shape[0]), max(a.shape[1], b.shape[1]))
    pred, ref = np.zeros(shape, bool), np.zeros(shape, bool)
    pred[: a.shape[0], : a.shape[1]] = a
    ref[: b.shape[0], : b.shape[1]] = b
    pred[0, 0] = ref[-1, -1] = True
    assert M.boundary_iou(pred, ref, width=width) == pytest.approx(
        _mr_boundary_iou(pred, ref, width), rel=1e-12)


def test_boundary_iou_width_in_mm_follows_the_spacing():
    ref = np.zeros((30, 30), bool)
    ref[5:25, 5:25] = True
    pred = np.roll(ref, 1, axis=1)
    at_1mm = M.boundary_iou(pred, ref, (1.0, 1.0), width=2.0)
    # halving the voxel size doubles the band width in voxels for the same mm
    assert M.boundary_iou(pred, ref, (0.5, 0.5), width=1.0) == pytest.approx(at_1mm)
    assert M.boundary_iou(pred, ref, width=6.0) > at_1mm


@pytest.mark.parametrize("layers, spacing", [(3, (2.0, 1.0, 1.0)), (5, (0.5, 0.3, 0.3)),
                                             (1, (1.5, 1.0, 1.0)), (3, (1.0, 1.0, 1.0))])
def test_thickness_of_a_layer_within_half_a_voxel(layers, spacing):
    m = np.zeros((layers + 6, 40, 40), bool)
    m[3:3 + layers, 4:36, 4:36] = True
    from medseg_xai.metrics.structure import thickness_values

    t = thickness_values(m, spacing)
    true = layers * spacing[0]
    assert abs(np.median(t) - true) <= 0.5 * max(spacing) + 1e-9
    out = M.thickness(m, m, spacing)
    assert out["thickness_mean_ref"] == out["thickness_mean_pred"]
    assert out["thickness_mean_diff"] == 0.0
    assert abs(out["thickness_mean_ref"] - true) <= max(spacing)  # within one voxel


def test_thickness_tells_a_thinned_prediction():
    ref = np.zeros((12, 30, 30), bool)
    ref[3:8, 5:25, 5:25] = True  # 5 voxels = 2.5 mm
    pred = ref.copy()
    pred[3] = pred[7] = False  # 3 voxels = 1.5 mm
    out = M.thickness(pred, ref, (0.5, 0.4, 0.4))
    assert out["thickness_mean_diff"] < -0.4
    assert abs(out["thickness_p95_ref"] - 2.5) <= 0.25
    assert abs(out["thickness_p95_pred"] - 1.5) <= 0.25
    assert out["abs_thickness_mean_diff"] == -out["thickness_mean_diff"]
    empty = M.thickness(np.zeros_like(ref), ref)
    assert math.isnan(empty["thickness_mean_pred"]) and math.isnan(empty["thickness_mean_diff"])


def test_evaluate_case_extra_metrics_and_bad_names():
    tube = _tube((16, 16, 16), 2.0)
    out = M.evaluate_case(tube, tube, extra=("cldice", "boundary_iou", "thickness"))
    assert out["cldice"] == 1.0 and out["boundary_iou"] == 1.0
    assert out["thickness_mean_diff"] == 0.0
    assert "cldice" not in M.evaluate_case(tube, tube)
    with pytest.raises(ValueError, match=r"extra: expected names from .*'cldice'.*got \['cl'\]"):
        M.evaluate_case(tube, tube, extra=("cl",))


def test_new_metrics_validate_input_like_the_others():
    a = np.zeros((5, 5), bool)
    with pytest.raises(ValueError, match=r"pred and ref: expected the same shape"):
        M.cldice(a, np.zeros((5, 6), bool))
    with pytest.raises(ValueError, match=r"ref: expected a binary mask"):
        M.boundary_iou(a, np.full((5, 5), 2))
    with pytest.raises(ValueError, match=r"width: expected a positive band width"):
        M.boundary_iou(a, a, width=0)
    with pytest.raises(ValueError, match=r"spacing: expected 2 values"):
        M.thickness(a, a, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"pred: expected a 2D or 3D"):
        M.mcc(np.zeros(5, bool), np.zeros(5, bool))
    with pytest.raises(ValueError, match="empty: expected one of"):
        M.cldice(a, a, empty="zero")
