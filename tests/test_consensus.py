"""metrics.consensus: STAPLE equals SimpleITK's filter; majority vote with documented ties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medseg_xai.metrics import consensus


def _readers(seed, shape=(12, 16, 16)):
    rng = np.random.default_rng(seed)
    truth = ndimage.gaussian_filter(rng.random(shape), 1.5)
    truth = truth > np.quantile(truth, 0.85)
    return {
        "r1": truth,
        "r2": ndimage.binary_dilation(truth),
        "r3": ndimage.binary_erosion(truth) | (rng.random(shape) > 0.99),
        "r4": truth & (rng.random(shape) > 0.2),
    }


@pytest.mark.parametrize("backend", ["counts", "simpleitk"])
@pytest.mark.parametrize(("seed", "weight"), [(0, 1.0), (1, 1.0), (2, 0.5), (3, 2.0)])
def test_staple_equals_simpleitk_filter_on_the_same_inputs(seed, weight, backend):
    masks = _readers(seed)
    out = consensus(masks, method="staple", confidence_weight=weight, backend=backend)
    f = sitk.STAPLEImageFilter()
    f.SetConfidenceWeight(weight)
    f.SetForegroundValue(1)
    prob = sitk.GetArrayFromImage(f.Execute(*[sitk.GetImageFromArray(m.astype(np.uint8))
                                              for m in masks.values()]))
    np.testing.assert_allclose(out.probability, prob, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(out.mask, prob >= 0.5)
    assert out.readers == list(masks)
    assert list(out.performance["reader"]) == list(masks)
    np.testing.assert_allclose(out.performance["sensitivity"], f.GetSensitivity(), atol=1e-9)
    np.testing.assert_allclose(out.performance["specificity"], f.GetSpecificity(), atol=1e-9)
    assert out.params["iterations"] == f.GetElapsedIterations()
    # The dilating reader is the most sensitive, the eroding one the least.
    sens = out.performance.set_index("reader")["sensitivity"]
    assert sens["r2"] > sens["r3"]


def test_staple_threshold_and_repeatability():
    masks = _readers(3)
    a = consensus(masks, "staple")
    b = consensus(masks, "staple")
    np.testing.assert_array_equal(a.probability, b.probability)
    loose = consensus(masks, "staple", threshold=0.1)
    assert loose.mask.sum() >= a.mask.sum()
    np.testing.assert_array_equal(loose.mask, a.probability >= 0.1)


def test_staple_with_no_foreground_is_empty_not_nan():
    z = np.zeros((5, 5, 5), bool)
    out = consensus({"a": z, "b": z, "c": z}, "staple")
    assert not out.mask.any()
    assert out.performance["sensitivity"].isna().all()
    assert (out.performance["specificity"] == 1.0).all()


def test_majority_with_hand_built_ties():
    # Four readers, voxel k marked by k of them (0..4): 2 of 4 is a tie.
    votes = np.array([[0, 1, 2, 3, 4]])
    readers = {f"r{i + 1}": votes > i for i in range(4)}
    assert [int(sum(m[0, k] for m in readers.values())) for k in range(5)] == [0, 1, 2, 3, 4]
    strict = consensus(readers, "majority")
    assert strict.mask[0].tolist() == [False, False, False, True, True]
    generous = consensus(readers, "majority", ties="foreground")
    assert generous.mask[0].tolist() == [False, False, True, True, True]
    np.testing.assert_allclose(strict.probability[0], [0, 0.25, 0.5, 0.75, 1.0])
    assert strict.performance is None and strict.params == {"ties": "background"}
    # Three readers never tie: two of three wins, whatever the tie rule.
    three = {k: readers[k] for k in ("r1", "r2", "r3")}  # votes 0, 1, 2, 3, 3
    for ties in ("background", "foreground"):
        assert consensus(three, "majority", ties=ties).mask[0].tolist() == [
            False, False, True, True, True]


def test_majority_equals_a_plain_vote_count():
    masks = _readers(4)
    stack = np.stack(list(masks.values()))
    out = consensus(list(masks.values()), "majority")
    np.testing.assert_array_equal(out.mask, stack.sum(0) > 2)
    assert out.readers == ["r1", "r2", "r3", "r4"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"method": "mean"}, "method: expected one of"),
    ({"method": "majority", "ties": "coin"}, "ties: expected one of"),
    ({"method": "staple", "threshold": 0.0}, "threshold"),
])
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        consensus(_readers(0), **kwargs)


def test_staple_agrees_with_identical_readers():
    m = _readers(1)["r1"]
    out = consensus({"a": m, "b": m.copy()}, "staple")
    np.testing.assert_array_equal(out.mask, m)
    assert out.performance["sensitivity"].min() == pytest.approx(1.0)
    assert not math.isnan(out.performance["specificity"].min())
