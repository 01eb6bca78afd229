"""Conventions: every one cross-checked against its reference package (or the peer's formula).

MONAI, MedPy and DeepMind surface-distance are installed and called directly. MetricsReloaded
and panoptica are not on PyPI in a form we install; their definitions (read from their code,
``MetricsReloaded/metrics/pairwise_measures.py`` and ``panoptica/metrics/*.py``) are restated
here from a plain scipy distance transform of the whole image, the way those libraries compute
them, and compared with ours; their own test cases live in ``tests/peers/``.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from medseg_xai import metrics as M
from medseg_xai.metrics._nearest import directed_distances, lattice_distance
from medseg_xai.metrics.surface import case_surface_metrics, surface_distances

KEYS = ("hd", "hd95", "assd", "masd", "nsd")
# surface_distance imports scipy.ndimage.filters / .morphology (deprecated namespaces)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _blobs(rng, shape, density):
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=1.2)
    mask = noise > np.quantile(noise, 1 - density)
    mask |= rng.random(shape) > 0.995
    return mask


@st.composite
def mask_pairs(draw, min_side=3, max_side=12):
    """Two non-empty masks of one random 2D or 3D shape and an anisotropic spacing."""
    ndim = draw(st.sampled_from([2, 3]))
    shape = tuple(draw(st.integers(min_side, max_side)) for _ in range(ndim))
    a = draw(arrays(bool, shape))
    b = draw(arrays(bool, shape))
    a.flat[draw(st.integers(0, a.size - 1))] = True
    b.flat[draw(st.integers(0, b.size - 1))] = True
    spacing = tuple(draw(st.floats(0.3, 3.0)) for _ in range(ndim))
    return a, b, spacing


def _edt_directed(src_mask, dst_mask, spacing):
    """Distances from src edge voxels to dst edge voxels: the peers' distance-transform way."""
    e_src = src_mask ^ ndimage.binary_erosion(src_mask)
    e_dst = dst_mask ^ ndimage.binary_erosion(dst_mask)
    return ndimage.distance_transform_edt(~e_dst, sampling=spacing)[e_src]


# --- the exact lattice search -----------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask_pairs())
def test_offset_scan_and_kd_tree_equal_a_distance_transform_bit_for_bit(case):
    pred, ref, spacing = case
    expected = _edt_directed(pred, ref, spacing)
    sd = surface_distances(pred, ref, spacing)
    # equal to the last bit, except where two lattice offsets tie in exact arithmetic and
    # round differently: then either may be returned (1 ulp)
    np.testing.assert_allclose(sd.pred_to_ref, expected, rtol=4e-16, atol=0)
    # both search paths, forced, on the same padded crop
    from medseg_xai.metrics._nearest import box_of, pad_crop, scan_pad
    from medseg_xai.metrics.surface import _edges_padded

    pad = scan_pad(spacing)
    box = box_of(pred, ref)
    ep = _edges_padded(pad_crop(pred, box, pad), pad)
    er = _edges_padded(pad_crop(ref, box, pad), pad)
    src, dst = np.flatnonzero(ep), np.flatnonzero(er)
    scan = directed_distances(src, er, dst, spacing, scan=True)
    tree = directed_distances(src, er, dst, spacing, scan=False)
    np.testing.assert_allclose(scan, tree, rtol=4e-16, atol=0)
    np.testing.assert_allclose(scan, expected, rtol=4e-16, atol=0)


def test_far_points_fall_back_to_the_tree_exactly():
    # two specks 40 voxels apart: far beyond the scanned offsets
    a = np.zeros((5, 60, 5), bool)
    b = np.zeros_like(a)
    a[2, 3, 2] = b[2, 45, 2] = True
    sd = surface_distances(a, b, (1.0, 0.7, 2.0))
    assert sd.pred_to_ref.tolist() == [42 * 0.7]
    assert lattice_distance(np.array([[3, 4]]), (1.0, 1.0)).tolist() == [5.0]


# --- MONAI (default) --------------------------------------------------------------------


def _monai(pred, ref, spacing, tol, use_subvoxels=False):
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yr = torch.from_numpy(ref[None, None].astype(np.float32))
    sp = list(spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "hd": compute_hausdorff_distance(yp, yr, include_background=True, spacing=sp).item(),
            "hd95": compute_hausdorff_distance(
                yp, yr, include_background=True, spacing=sp, percentile=95).item(),
            "assd": compute_average_surface_distance(
                yp, yr, include_background=True, symmetric=True, spacing=sp).item(),
            "nsd": compute_surface_dice(yp, yr, [tol], include_background=True, spacing=sp,
                                        use_subvoxels=use_subvoxels).item(),
        }


@pytest.mark.parametrize("seed", range(4))
def test_monai_subvoxel_surface_dice_equals_monai(seed):
    rng = np.random.default_rng(seed)
    ndim = 2 + seed % 2
    shape = (31, 27) if ndim == 2 else (13, 17, 15)
    pred = _blobs(rng, shape, 0.2)
    ref = _blobs(rng, shape, 0.25)
    spacing = tuple(rng.uniform(0.4, 2.5, ndim))
    ours = M.normalized_surface_dice(pred, ref, 1.5, spacing, use_subvoxels=True)
    theirs = _monai(pred, ref, spacing, 1.5, use_subvoxels=True)["nsd"]
    # MONAI sums float32 areas: agreement to float32 precision
    assert ours == pytest.approx(theirs, rel=1e-5)
    assert ours != M.normalized_surface_dice(pred, ref, 1.5, spacing)  # a different metric


def test_monai_convention_empty_values_match_monai():
    z = np.zeros((9, 9), bool)
    m = z.copy()
    m[2:5, 3:7] = True
    for p, r in ((z, m), (m, z), (z, z)):
        theirs = _monai(p, r, (1.0, 1.0), 1.0)
        ours = case_surface_metrics(p, r, (1.0, 1.0), empty="convention")
        for key in ("hd", "hd95", "assd", "nsd"):
            a, b = ours[key], theirs[key]
            assert (math.isnan(a) and math.isnan(b)) or a == b, (key, a, b)


# --- MedPy ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask_pairs())
def test_medpy_convention_equals_medpy(case):
    from medpy.metric import binary

    pred, ref, spacing = case
    ours = case_surface_metrics(pred, ref, spacing, convention="medpy")
    assert ours["hd"] == pytest.approx(binary.hd(pred, ref, spacing), rel=4e-16)
    assert ours["hd95"] == pytest.approx(binary.hd95(pred, ref, spacing), rel=1e-12)
    assert ours["assd"] == pytest.approx(binary.assd(pred, ref, spacing), rel=1e-12)


# --- DeepMind surface-distance ----------------------------------------------------------


def _deepmind(pred, ref, spacing, tol):
    import surface_distance as sd

    d = sd.compute_surface_distances(ref, pred, list(spacing))
    return {
        "hd": sd.compute_robust_hausdorff(d, 100),
        "hd95": sd.compute_robust_hausdorff(d, 95),
        "masd": float(np.mean(sd.compute_average_surface_distance(d))),
        "nsd": sd.compute_surface_dice_at_tolerance(d, tol),
        "_d": d,
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask_pairs(), st.floats(0.0, 4.0))
def test_deepmind_convention_equals_surface_distance(case, tol):
    pred, ref, spacing = case
    theirs = _deepmind(pred, ref, spacing, tol)
    ours = case_surface_metrics(pred, ref, spacing, convention="deepmind", tolerance=tol)
    for key in ("hd", "hd95", "masd", "nsd"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-12, abs=1e-12), key
    d = theirs["_d"]
    pooled = (np.sum(d["distances_gt_to_pred"] * d["surfel_areas_gt"])
              + np.sum(d["distances_pred_to_gt"] * d["surfel_areas_pred"])) / (
        np.sum(d["surfel_areas_gt"]) + np.sum(d["surfel_areas_pred"]))
    assert ours["assd"] == pytest.approx(pooled, rel=1e-12)


def test_surfel_area_tables_equal_deepmind():
    from surface_distance import lookup_tables

    from medseg_xai.metrics.surfels import area_table

    for sp in [(1.0, 1.0, 1.0), (2.5, 0.8, 0.7), (0.3, 3.0, 1.1)]:
        np.testing.assert_allclose(
            area_table(sp), lookup_tables.create_table_neighbour_code_to_surface_area(sp),
            rtol=1e-14, atol=0)
    for sp in [(1.0, 1.0), (2.0, 0.5)]:
        np.testing.assert_array_equal(
            area_table(sp), lookup_tables.create_table_neighbour_code_to_contour_length(sp))


# --- MetricsReloaded and panoptica (their formulas on a full-image distance transform) ----


def _mr_formulas(pred, ref, spacing, tol, p=95):
    a = _edt_directed(pred, ref, spacing)  # pred -> ref
    b = _edt_directed(ref, pred, spacing)
    return {
        "hd": max(a.max(), b.max()),
        "hd95": max(np.percentile(a, p), np.percentile(b, p)),
        "assd": (a.sum() + b.sum()) / (a.size + b.size),
        "masd": 0.5 * (a.sum() / a.size + b.sum() / b.size),
        "nsd": (np.sum(a <= tol) + np.sum(b <= tol)) / (a.size + b.size),
    }


def _panoptica_formulas(pred, ref, spacing, tol, p=95):
    a = _edt_directed(pred, ref, spacing)
    b = _edt_directed(ref, pred, spacing)
    fa, fb = np.mean(a <= tol), np.mean(b <= tol)
    return {
        "hd": max(a.max(), b.max()),
        "hd95": np.percentile(np.concatenate([a, b]), p),
        "assd": 0.5 * (a.mean() + b.mean()),
        "masd": 0.5 * (a.mean() + b.mean()),
        "nsd": (fa + fb) / (fa + fb + (1 - fa) + (1 - fb) + sys.float_info.min),
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mask_pairs(), st.floats(0.0, 4.0), st.sampled_from([50, 90, 95, 100]))
def test_metricsreloaded_and_panoptica_conventions_follow_their_definitions(case, tol, p):
    pred, ref, spacing = case
    for convention, oracle in (("metricsreloaded", _mr_formulas), ("panoptica", _panoptica_formulas)):
        ours = case_surface_metrics(pred, ref, spacing, convention=convention, tolerance=tol,
                                    percentile=p)
        expected = oracle(pred, ref, spacing, tol, p)
        for key in KEYS:
            assert ours[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), (convention, key)


def test_conventions_differ_where_their_definitions_do():
    rng = np.random.default_rng(3)
    pred, ref = _blobs(rng, (14, 20, 18), 0.15), _blobs(rng, (14, 20, 18), 0.3)
    sp = (2.0, 0.8, 0.8)
    out = {c: case_surface_metrics(pred, ref, sp, convention=c) for c in M.CONVENTIONS}
    # pooled ASSD (monai, medpy, metricsreloaded) vs mean of the directed means (panoptica)
    assert out["monai"]["assd"] == pytest.approx(out["medpy"]["assd"], rel=1e-6)
    assert out["panoptica"]["assd"] == pytest.approx(out["monai"]["masd"], rel=1e-6)
    assert out["panoptica"]["assd"] != pytest.approx(out["monai"]["assd"], rel=1e-6)
    # HD95 of pooled distances (medpy, panoptica) vs max of the directed ones (monai, MR)
    assert out["medpy"]["hd95"] == out["panoptica"]["hd95"]
    assert out["medpy"]["hd95"] <= out["metricsreloaded"]["hd95"]


# --- empty masks and bad input ----------------------------------------------------------


@pytest.mark.parametrize("convention", ["monai", "medpy", "deepmind", "metricsreloaded",
                                        "panoptica"])
def test_empty_policies_under_every_convention(convention):
    z = np.zeros((6, 7, 8), bool)
    m = z.copy()
    m[2:4, 2:5, 3:6] = True
    diag = M.image_diagonal_mm((6, 7, 8), (1.0, 2.0, 1.0))
    kw = dict(convention=convention)
    worst_one = case_surface_metrics(z, m, (1.0, 2.0, 1.0), empty="worst", **kw)
    assert worst_one == {"hd": diag, "hd95": diag, "assd": diag, "masd": diag, "nsd": 0.0}
    worst_both = case_surface_metrics(z, z, (1.0, 2.0, 1.0), empty="worst", **kw)
    assert worst_both == {"hd": 0.0, "hd95": 0.0, "assd": 0.0, "masd": 0.0, "nsd": 1.0}
    peer = case_surface_metrics(m, z, (1.0, 2.0, 1.0), empty="convention", **kw)
    expected = M.conventions.EMPTY_VALUES[convention]["one_empty"]
    assert {k: str(v) for k, v in peer.items()} == {k: str(v) for k, v in expected.items()}
    nan = case_surface_metrics(z, z, (1.0, 2.0, 1.0), empty="nan", **kw)
    assert all(math.isnan(v) for v in nan.values())


def test_metricsreloaded_empty_values_are_theirs():
    z = np.zeros((14, 14), bool)
    both = case_surface_metrics(z, z, (1.0, 1.0), convention="metricsreloaded",
                                empty="convention")
    assert both == {"hd": 0.0, "hd95": 0.0, "assd": 0.0, "masd": 0.0, "nsd": 1.0}


def test_unknown_convention_lists_the_valid_ones():
    a = np.ones((4, 4), bool)
    msg = r"convention: expected one of \('monai', 'medpy', 'deepmind', 'metricsreloaded', " \
          r"'panoptica'\), got 'itk'"
    with pytest.raises(ValueError, match=msg):
        M.hausdorff_distance(a, a, convention="itk")
    with pytest.raises(ValueError, match=msg):
        M.evaluate_case(a, a, convention="itk")
    with pytest.raises(ValueError, match="use_subvoxels"):
        M.normalized_surface_dice(a, a, 1.0, convention="medpy", use_subvoxels=True)


def test_evaluate_case_records_the_convention_and_matches_single_metrics():
    rng = np.random.default_rng(5)
    pred, ref = _blobs(rng, (10, 16, 16), 0.2), _blobs(rng, (10, 16, 16), 0.2)
    sp = (2.0, 1.0, 0.9)
    for convention in M.CONVENTIONS:
        out = M.evaluate_case(pred, ref, sp, tolerance=1.5, convention=convention)
        assert out["convention"] == convention
        assert out["hd95"] == M.hausdorff_distance(pred, ref, sp, convention=convention)
        assert out["assd"] == M.average_surface_distance(pred, ref, sp, convention=convention)
        assert out["masd"] == M.mean_average_surface_distance(pred, ref, sp,
                                                              convention=convention)
        assert out["nsd"] == M.normalized_surface_dice(pred, ref, 1.5, sp,
                                                       convention=convention)
    multi = M.evaluate_case(pred.astype(int), ref.astype(int) * 2 + (ref == 0) * 0, sp,
                            labels=[1, 2], convention="deepmind")
    assert multi["convention"] == "deepmind"


@pytest.mark.parametrize("ignore_empty", [True, False])
def test_documented_recipe_reproduces_monai_dicemetric_cohort_mean(ignore_empty):
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(11)
    shape = (8, 12, 12)
    cases = []
    for i in range(8):
        ref = _blobs(rng, shape, 0.2) if i % 3 else np.zeros(shape, bool)
        pred = _blobs(rng, shape, 0.2) if i % 4 else np.zeros(shape, bool)
        cases.append((pred, ref))
    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=ignore_empty)
    for pred, ref in cases:
        metric(torch.from_numpy(pred[None, None].astype(np.float32)),
               torch.from_numpy(ref[None, None].astype(np.float32)))
    theirs = metric.aggregate().item()
    rows = [M.evaluate_case(p, r) for p, r in cases]
    if ignore_empty:
        ours = np.mean([r["dice"] for r in rows if r["volume_ref_mm3"] > 0])
    else:
        ours = np.mean([r["dice"] for r in rows])
    assert ours == pytest.approx(theirs, rel=1e-6)


@pytest.mark.parametrize("seed, scan", [(0, False), (1, False), (2, True), (3, True)])
def test_sparse_small_structures_path_equals_a_distance_transform(seed, scan, monkeypatch):
    # a few tiny lesions far apart in a large image: edges come from the foreground voxels,
    # then the KD-tree (few points) or the offset scan on a scattered crop (forced here)
    import medseg_xai.metrics.surface as surface

    if scan:
        monkeypatch.setattr(surface, "SCAN_MIN_POINTS", 1)
    rng = np.random.default_rng(seed)
    shape = (20, 48, 40)
    pred = np.zeros(shape, bool)
    ref = np.zeros(shape, bool)
    for mask in (pred, ref):
        for _ in range(3):
            c = [rng.integers(2, n - 4) for n in shape]
            mask[c[0]:c[0] + 2, c[1]:c[1] + rng.integers(1, 4), c[2]:c[2] + 3] = True
    spacing = (2.5, 0.8, 0.7)
    sd = surface_distances(pred, ref, spacing)
    np.testing.assert_allclose(sd.pred_to_ref, _edt_directed(pred, ref, spacing), rtol=4e-16)
    np.testing.assert_allclose(sd.ref_to_pred, _edt_directed(ref, pred, spacing), rtol=4e-16)
    ours = M.evaluate_case(pred, ref, spacing, tolerance=1.5)
    theirs = _monai(pred, ref, spacing, 1.5)
    for key in ("hd", "hd95", "assd", "nsd"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-6), key
