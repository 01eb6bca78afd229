"""panoptica's own test cases, run under ``convention="panoptica"``.

Inputs and expected values ported from BrainLesion/panoptica (Apache-2.0),
``unit_tests/unit_test_utils.py`` (the 4x4 cases) and ``unit_tests/test_metrics.py`` (DSC,
ASSD, clDSC, HD, HD95, NSD), plus the one-to-one matching of
``case_multiple_overlapping_instances``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg_xai import metrics as M
from medseg_xai.metrics.surface import case_surface_metrics

IDENTICAL = np.array([[0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 0, 0], [0, 1, 0, 0]])
NOOVERLAP_PRED = np.array([[0, 1, 0, 1], [0, 1, 0, 1], [0, 1, 0, 0], [0, 1, 0, 0]])
SHIFTED = (np.array([[1, 1, 0, 0]] * 4), np.array([[0, 1, 1, 0]] * 4))
OVER = (np.array([[0, 0, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 0]]),
        np.array([[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]))
UNDER = (OVER[1], OVER[0])
DISCREPANCY = (np.array([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [1, 0, 0, 0]]),
               np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]))
CASES = {
    "identical": (IDENTICAL, IDENTICAL.copy()),
    "nooverlap": (NOOVERLAP_PRED, 1 - NOOVERLAP_PRED),
    "shifted": SHIFTED,
    "overpredicted": OVER,
    "underpredicted": UNDER,
    "large_discrepancy": DISCREPANCY,
}


def _p(case, spacing=(1.0, 1.0), tol=1.0):
    pred, ref = CASES[case]
    return case_surface_metrics(pred.astype(bool), ref.astype(bool), spacing,
                                convention="panoptica", tolerance=tol)


@pytest.mark.parametrize("case, expected", [
    ("identical", 1.0), ("nooverlap", 0.0), ("overpredicted", 0.5714285714285714),
    ("underpredicted", 0.5714285714285714),
])
def test_dsc(case, expected):
    assert M.dice(*CASES[case]) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("case, spacing, expected", [
    ("identical", (1.0, 1.0), 0.0), ("nooverlap", (1.0, 1.0), 1.05),
    ("nooverlap", (20.0, 20.0), 21.0), ("overpredicted", (1.0, 1.0), 0.625),
    ("underpredicted", (1.0, 1.0), 0.625),
])
def test_assd(case, spacing, expected):
    assert _p(case, spacing)["assd"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("case, spacing, hd, hd95", [
    ("identical", (1.0, 1.0), 0.0, 0.0), ("shifted", (1.0, 1.0), 1.0, 1.0),
    ("nooverlap", (20.0, 20.0), 40.0, None), ("overpredicted", (1.0, 1.0), 1.0, 1.0),
    ("underpredicted", (1.0, 1.0), 1.0, 1.0),
    ("large_discrepancy", (1.0, 1.0), 2.82842712474619, 2.473011636398349),
])
def test_hd_and_hd95(case, spacing, hd, hd95):
    out = _p(case, spacing)
    assert out["hd"] == pytest.approx(hd, rel=1e-12)
    if hd95 is not None:
        assert out["hd95"] == pytest.approx(hd95, rel=1e-12)


def test_nsd():
    assert _p("identical")["nsd"] == 1.0
    assert _p("underpredicted", tol=0.5)["nsd"] == 0.375
    assert _p("underpredicted", tol=1.0)["nsd"] == 1.0


@pytest.mark.parametrize("case, expected", [
    ("identical", 1.0), ("nooverlap", math.nan), ("overpredicted", 1.0),
    ("underpredicted", 1.0),
])
def test_cldsc(case, expected):
    value = M.cldice(*CASES[case], empty="convention")
    assert (math.isnan(value) and math.isnan(expected)) or value == expected


def test_multiple_overlapping_instances_one_to_one():
    pred = np.zeros((30, 30), np.uint8)
    ref = np.zeros((30, 30), np.uint8)
    ref[1:10, 1:10] = 1
    ref[11:20, 11:20] = 2
    pred[1:3, 1:3] = 1
    pred[7:13, 7:13] = 2
    # Dice of the foreground: 4 + 9 + 4 shared voxels
    assert M.dice(pred > 0, ref > 0) == pytest.approx(2 * (4 + 9 + 4) / (40 + 162))
    # no pair reaches IoU 0.5: nothing is matched, every instance unpaired
    out = M.panoptic_quality(pred, ref, iou_threshold=0.5)
    assert (out["instance_tp"], out["instance_fp"], out["instance_fn"]) == (0, 2, 2)
    assert out["pq"] == 0.0
    # at a low threshold the Hungarian assignment pairs each with its best partner
    low = M.panoptic_quality(pred, ref, iou_threshold=0.01)
    assert [(r, p) for r, p, _ in low["matches"]] == [(1, 1), (2, 2)]
    assert low["sq"] == pytest.approx((4 / 81 + 4 / (81 + 36 - 4)) / 2)
