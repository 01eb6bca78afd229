"""MetricsReloaded's own test cases, run under ``convention="metricsreloaded"``.

Inputs and expected values (with MetricsReloaded's own tolerances) ported from
Project-MONAI/MetricsReloaded (BSD-3-Clause), ``test/test_metrics/test_pairwise_measures.py``
(figures of the "Metrics Reloaded" pitfalls paper: S2.10 distances, 5c Hausdorff, the plus
shape for ASSD/MASD/NSD, S2.12 boundary IoU, S2.14 and the small clDice shapes, S2.9 and
S3.8 MCC) and ``test/test_processes/test_mixed_measures_processes.py`` (figure 3.51 panoptic
quality).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medseg_xai import metrics as M
from medseg_xai.metrics.surface import case_surface_metrics


def _mr(pred, ref, tol=1.0, percentile=95, empty="convention"):
    return case_surface_metrics(np.asarray(pred, bool), np.asarray(ref, bool), (1.0, 1.0),
                                convention="metricsreloaded", tolerance=tol,
                                percentile=percentile, empty=empty)


# figure S2.10
REF210 = np.zeros((14, 14))
REF210[5:9, 5:9] = 1
PRED210_1 = np.zeros((14, 14))
PRED210_1[6:8, 6:8] = 1
PRED210_2 = np.zeros((14, 14))
PRED210_2[4:10, 4:10] = 1

# plus shape over a square
P_REF = np.zeros((11, 11))
P_REF[3:8, 3:8] = 1
P_PRED = P_REF.copy()
P_PRED[5, 1:10] = 1
P_PRED[1:10, 5] = 1


@pytest.mark.parametrize("pred, hd, masd, assd, nsd", [
    (PRED210_1, 1.41, 1.07, 1.10, 0.75),
    (PRED210_2, 1.41, 1.04, 1.05, 0.875),
])
def test_figure_s210_distances(pred, hd, masd, assd, nsd):
    out = _mr(pred, REF210)
    assert out["hd"] == pytest.approx(hd, abs=0.01)
    assert out["masd"] == pytest.approx(masd, abs=0.01)
    assert out["assd"] == pytest.approx(assd, abs=0.01)
    assert out["nsd"] == pytest.approx(nsd, abs=0.01)


def test_figure_5c_hausdorff_and_hd95():
    ref = np.zeros((14, 14))
    ref[1, 1] = 1
    ref[9:12, 9:12] = 1
    pred = np.zeros((14, 14))
    pred[9:12, 9:12] = 1
    out = _mr(pred, ref, percentile=95)
    assert out["hd"] == pytest.approx(11.31, abs=0.01)
    assert out["hd95"] == pytest.approx(6.79, abs=0.01)


def test_plus_shape_assd_masd_nsd():
    assert _mr(P_PRED, P_REF)["assd"] == pytest.approx(0.44, abs=0.01)
    assert _mr(P_PRED, P_REF)["masd"] == pytest.approx(0.425, abs=0.001)
    assert _mr(P_PRED, P_REF, tol=1)["nsd"] == pytest.approx(0.89, abs=0.01)
    assert _mr(P_PRED, P_REF, tol=2)["nsd"] == pytest.approx(1.0, abs=0.01)


def test_distances_of_empty_masks():
    pred29 = np.concatenate([np.ones(45), np.zeros(5), np.ones(10), np.zeros(40)]).reshape(10, 10)
    ref29 = np.concatenate([np.ones(50), np.zeros(50)]).reshape(10, 10)
    for p, r in ((pred29, ref29 * 0), (pred29 * 0, ref29)):
        out = _mr(p, r)
        assert all(math.isnan(out[k]) for k in ("hd", "hd95", "assd", "masd"))
    both = _mr(pred29 * 0, ref29 * 0)
    assert (both["hd"], both["hd95"], both["assd"], both["masd"]) == (0, 0, 0, 0)
    z = np.zeros((14, 14))
    assert _mr(z, z)["nsd"] == 1
    assert M.boundary_iou(z, z) == 1


def test_figure_s212_boundary_iou():
    ref = np.zeros((22, 22))
    ref[2:21, 2:21] = 1
    pred = np.zeros((22, 22))
    pred[3:21, 2:21] = 1
    assert M.boundary_iou(pred, ref) == pytest.approx(0.6, abs=0.1)
    assert M.boundary_iou(pred, ref, width=2) == pytest.approx(0.8, abs=0.1)


def _ref214():
    ref = np.zeros((24, 24))
    for sl in [(slice(1, 10), slice(7, 12)), (slice(10, 12), slice(3, 19)),
               (slice(12, 15), slice(3, 5)), (slice(12, 15), slice(15, 19)),
               (slice(14, 20), slice(15, 17)), (slice(14, 15), slice(1, 5)),
               (slice(14, 17), slice(2, 3)), (slice(14, 19), slice(4, 5)),
               (slice(17, 18), slice(4, 8)), (slice(14, 15), slice(15, 24)),
               (slice(12, 15), slice(22, 23)), (slice(14, 17), slice(21, 22)),
               (slice(17, 20), slice(5, 6)), (slice(17, 22), slice(12, 13)),
               (slice(19, 20), slice(12, 17)), (slice(18, 19), slice(15, 20))]:
        ref[sl] = 1
    ref[17, 19] = 1
    return ref


def test_figure_s214_cldice_and_dice():
    ref = _ref214()
    pred1 = np.zeros((24, 24))
    pred1[1:10, 7:12] = 1
    pred1[10:12, 3:15] = 1
    pred2 = ref.copy()
    for sl in [(slice(10, 14), slice(3, 4)), (slice(10, 11), slice(3, 9)),
               (slice(10, 11), slice(10, 19)), (slice(1, 11), slice(7, 9)),
               (slice(1, 11), slice(10, 12)), (slice(10, 14), slice(18, 19)),
               (slice(12, 14), slice(15, 17)), (slice(14, 19), slice(15, 16))]:
        pred2[sl] = 0
    assert M.cldice(pred1, ref) == pytest.approx(0.475, abs=0.01)
    assert M.cldice(pred2, ref) == pytest.approx(0.78, abs=0.01)
    assert M.dice(pred1, ref) == pytest.approx(0.666, abs=0.01)
    assert M.dice(pred2, ref) == pytest.approx(0.685, abs=0.01)


def test_small_cldice_shapes():
    ref = np.zeros((14, 14))
    ref[1:4, 1:2] = 1
    ref[3:4, 1:4] = 1
    pred1 = np.zeros((14, 14))
    pred1[2:4, 1:2] = 1
    pred1[3:4, 1:4] = 1
    pred2 = np.zeros((14, 14))
    pred2[3:4, 1:4] = 1
    assert M.cldice(pred1, ref) == pytest.approx(0.86, abs=0.01)
    assert M.cldice(pred2, ref) == pytest.approx(0.67, abs=0.01)


def test_matthews_correlation_coefficient_figures():
    pred1 = np.concatenate([np.ones(45), np.zeros(5), np.ones(10), np.zeros(40)])
    ref1 = np.concatenate([np.ones(50), np.zeros(50)])
    pred2 = np.concatenate([np.ones(81), np.zeros(9), np.ones(2), np.zeros(8)])
    ref2 = np.concatenate([np.ones(90), np.zeros(10)])
    assert M.mcc(pred1.reshape(10, 10), ref1.reshape(10, 10)) == pytest.approx(0.70, abs=0.01)
    assert M.mcc(pred2.reshape(10, 10), ref2.reshape(10, 10)) == pytest.approx(0.56, abs=0.02)
    f38_pred = np.concatenate([np.ones(1499), np.zeros(501)]).reshape(40, 50)
    f38_ref = np.concatenate([np.ones(1999), np.zeros(1)]).reshape(40, 50)
    assert M.mcc(f38_pred, f38_ref) == pytest.approx(0.0386, abs=0.001)


def test_figure_351_panoptic_quality():
    def box(*slices, extra=()):
        m = np.zeros((18, 18), int)
        for sl in slices:
            m[sl] = 1
        for p in extra:
            m[p] = 1
        return m

    preds = [box((slice(3, 7), slice(1, 3)), (slice(3, 6), slice(3, 7))),
             box((slice(13, 16), slice(4, 6))),
             box((slice(7, 12), slice(13, 17))),
             box((slice(13, 15), slice(13, 17)), extra=[(15, 15)])]
    refs = [box((slice(2, 7), slice(1, 3)), (slice(2, 5), slice(3, 6))),
            box((slice(6, 12), slice(12, 17))),
            box((slice(14, 15), slice(7, 10)), (slice(13, 16), slice(8, 9)))]
    pred = sum((i + 1) * m for i, m in enumerate(preds))
    ref = sum((i + 1) * m for i, m in enumerate(refs))
    out = M.panoptic_quality(pred, ref, iou_threshold=0.5)
    assert out["pq"] == pytest.approx(0.350, abs=0.001)
