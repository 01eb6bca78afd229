"""ECE / ACE / MCE against MONAI's CalibrationErrorMetric on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from monai.metrics import CalibrationErrorMetric

from medseg_xai.metrics.calibration import (
    calibration_bin_sums,
    calibration_error,
    calibration_errors,
    reliability,
)

REDUCTIONS = ("expected", "average", "maximum")


def _monai(p: np.ndarray, y: np.ndarray, n_bins: int, reduction: str, right: bool = False,
           metric_reduction: str = "none") -> np.ndarray:
    m = CalibrationErrorMetric(num_bins=n_bins, calibration_reduction=reduction,
                               metric_reduction=metric_reduction, right=right)
    m(y_pred=torch.from_numpy(p), y=torch.from_numpy(y))
    return m.aggregate().numpy()


def _inputs(seed: int, shape=(2, 3, 9, 7)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.random(shape).astype(np.float32) ** 3  # most mass near 0, as segmentation
    p.flat[::11] = 0.5  # on an inner edge for even bin counts (a zero logit)
    p.flat[::13] = 1.0
    p.flat[::17] = 0.0
    y = (rng.random(shape) < p).astype(np.float32)
    return p, y


@pytest.mark.parametrize("n_bins", [1, 10, 15, 20, 37])
@pytest.mark.parametrize("right", [False, True])
def test_equals_monai_per_image_and_channel(n_bins: int, right: bool) -> None:
    p, y = _inputs(n_bins + right)
    for reduction in REDUCTIONS:
        expected = _monai(p, y, n_bins, reduction, right)  # (B, C)
        ours = np.stack([calibration_error(p[b], y[b], n_bins, reduction, right)
                         for b in range(len(p))])
        np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


def test_mean_over_cases_equals_monai_mean_reduction() -> None:
    p, y = _inputs(5, (6, 1, 16, 16))
    sums = np.stack([calibration_bin_sums(p[b], y[b], 15) for b in range(6)])  # (B, 1, 3, 15)
    for reduction, key in zip(REDUCTIONS, ("ece", "ace", "mce")):
        ours = np.nanmean(calibration_errors(sums)[key])
        assert ours == pytest.approx(float(_monai(p, y, 15, reduction, metric_reduction="mean").ravel()[0]),
                                     abs=1e-6)


@given(st.integers(0, 2**31 - 1), st.integers(1, 30))
def test_property_equals_monai(seed: int, n_bins: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.random((1, 2, 5, 6)).astype(np.float32)
    y = (rng.random(p.shape) < 0.3).astype(np.float32)
    for reduction in REDUCTIONS:
        np.testing.assert_allclose(calibration_error(p[0], y[0], n_bins, reduction),
                                   _monai(p, y, n_bins, reduction)[0], atol=1e-6, rtol=0)


def test_pooled_sums_add_and_reliability_points() -> None:
    p, y = _inputs(1, (2, 1, 8, 8))
    a, b = calibration_bin_sums(p[0], y[0], 10), calibration_bin_sums(p[1], y[1], 10)
    pooled = calibration_bin_sums(np.concatenate([p[0], p[1]], 1),
                                  np.concatenate([y[0], y[1]], 1), 10)
    np.testing.assert_allclose(a + b, pooled)
    r = reliability(pooled[0])
    assert r["count"].sum() == 128
    filled = r["count"] > 0
    assert np.all(r["mean_probability"][filled] >= r["bin_centre"][filled] - 0.05 - 1e-6)


def test_perfectly_calibrated_and_empty() -> None:
    p = np.array([[0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75]], np.float32)
    y = np.array([[1, 0, 0, 0, 1, 1, 1, 0]], np.float32)
    assert calibration_error(p, y, 4)[0] == pytest.approx(0.0, abs=1e-12)
    e = calibration_errors(np.zeros((1, 3, 5)))
    assert np.isnan(e["ece"]).all() and np.isnan(e["mce"]).all()
    with pytest.raises(ValueError, match="reduction"):
        calibration_error(p, y, 4, "mean")
    with pytest.raises(ValueError, match="shape"):
        calibration_error(p, y[:, :4], 4)
