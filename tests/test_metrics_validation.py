"""Bad input raises ValueError naming the argument, what was expected and what came."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_xai import _validation as V
from medseg_xai import metrics as M

A = np.zeros((4, 5), bool)
A[1:3, 1:3] = True


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(
        ValueError, match=r"pred and ref: expected the same shape, got \(4, 5\) and \(4, 6\)"
    ):
        M.evaluate_case(A, np.zeros((4, 6), bool))
    with pytest.raises(ValueError, match="expected the same shape"):
        M.lesions(A, np.zeros((5, 4), bool))


@pytest.mark.parametrize(
    ("spacing", "message"),
    [
        ((1.0, 1.0, 1.0), r"spacing: expected 2 values \(one per spatial axis\), got 3"),
        ((1.0,), r"spacing: expected 2 values \(one per spatial axis\), got 1"),
        ((1.0, 0.0), r"spacing: expected positive finite values in mm, got \(1.0, 0.0\)"),
        ((1.0, -2.0), r"spacing: expected positive finite values in mm, got \(1.0, -2.0\)"),
        ((1.0, float("nan")), "spacing: expected positive finite values in mm"),
        (("a", 1.0), "spacing: expected 2 numbers in mm"),
    ],
)
def test_bad_spacing(spacing, message):
    with pytest.raises(ValueError, match=message):
        M.evaluate_case(A, A, spacing)


def test_scalar_and_default_spacing():
    assert V.check_spacing(None, 3) == (1.0, 1.0, 1.0)
    assert V.check_spacing(0.5, 2) == (0.5, 0.5)
    assert V.check_spacing(np.array([1, 2]), 2) == (1.0, 2.0)


def test_nan_in_mask_and_probabilities():
    bad = A.astype(float)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"pred: expected finite values, got 1 NaN and 0 infinite"):
        M.dice(bad, A)
    probs = np.full(A.shape, 0.5)
    probs[2, 2] = np.nan
    with pytest.raises(ValueError, match="probabilities: expected finite values, got 1 NaN"):
        M.lesions(A, A, probabilities=probs)
    with pytest.raises(ValueError, match=r"probabilities: expected values in \[0, 1\], got range"):
        M.lesions(A, A, probabilities=np.full(A.shape, 1.5))
    with pytest.raises(ValueError, match=r"probabilities: expected shape \(4, 5\), got \(4, 4\)"):
        M.evaluate_case(A, A, probabilities=np.zeros((4, 4)))


def test_non_binary_where_binary_needed():
    labels = A.astype(int) * 2
    with pytest.raises(
        ValueError,
        match=r"ref: expected a binary mask with values in \{0, 1\}, got other values such as \[2\]",
    ):
        M.evaluate_case(A, labels)
    with pytest.raises(ValueError, match="expected a binary mask"):
        M.hausdorff_distance(A * 0.5, A)
    with pytest.raises(ValueError, match="expected a binary mask"):
        M.lesions(labels, A)


def test_wrong_dimensionality():
    with pytest.raises(
        ValueError, match=r"pred: expected a 2D or 3D spatial array \(no channel axis\), got 4D"
    ):
        M.dice(np.zeros((1, 2, 3, 4), bool), np.zeros((1, 2, 3, 4), bool))
    with pytest.raises(ValueError, match="got 1D"):
        M.label_lesions(np.zeros(5, bool))


def test_unknown_labels_and_bad_label_arguments():
    ref = np.zeros((4, 4), int)
    ref[0, 0], ref[1, 1], ref[2, 2] = 1, 2, 3
    with pytest.raises(
        ValueError,
        match=r"labels: the label maps contain values \[3\] that are not among the expected labels \[1, 2\]",
    ):
        M.evaluate_case(ref, ref, labels=[1, 2])
    with pytest.raises(ValueError, match="labels: expected positive label values .* got 0"):
        M.evaluate_case(ref, ref, labels=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="labels: expected distinct labels, got 1 twice"):
        M.evaluate_case(ref, ref, labels=[1, 1, 2, 3])
    with pytest.raises(ValueError, match="labels: expected integer label values, got 1.5"):
        M.evaluate_case(ref, ref, labels=[1.5])
    with pytest.raises(ValueError, match="labels: expected at least one label, got none"):
        M.evaluate_case(ref, ref, labels=[])
    with pytest.raises(ValueError, match="pred: expected non-negative labels, got minimum -1"):
        M.evaluate_case(ref - 1, ref, labels=[1, 2, 3])
    with pytest.raises(
        ValueError, match="ref: expected integer labels, got non-integer float values"
    ):
        M.evaluate_case(ref, ref + 0.5, labels=[1, 2, 3])


def test_other_argument_checks():
    with pytest.raises(
        ValueError, match=r"overlap_threshold: expected a fraction in \(0, 1\], got 0"
    ):
        M.lesions(A, A, overlap_threshold=0)
    with pytest.raises(ValueError, match="empty: expected one of"):
        M.evaluate_case(A, A, empty="best")
    with pytest.raises(ValueError, match="df: expected a lesions\\(\\) table, missing columns"):
        M.lesion_summary(M.lesions(A, A).drop(columns="status"))
    with pytest.raises(ValueError, match="n_cases: expected a positive number of cases, got 0"):
        M.lesion_summary(M.lesions(A, A), n_cases=0)


def test_check_helpers_return_converted_arrays():
    out = V.check_mask([[0, 1], [1, 0]], "m")
    assert out.dtype == bool and out.tolist() == [[False, True], [True, False]]
    assert V.check_label_map(np.array([[0.0, 2.0]]), "x").dtype == np.int64
    assert V.check_labels({2: "b", 1: "a"}) == {2: "b", 1: "a"}
    V.check_same_shape(A, A.copy())
    assert V.check_finite(np.arange(3.0), "x").shape == (3,)


def test_probabilities_rounding_just_outside_unit_interval_is_clipped():
    probs = np.full(A.shape, 0.5, np.float32)
    probs[0, 0], probs[0, 1] = -1e-8, 1 + 1e-7
    out = V.check_probabilities(probs, "p")
    assert out.min() == 0.0 and out.max() == 1.0
    with pytest.raises(ValueError, match=r"p: expected values in \[0, 1\], got range \[-0.01"):
        V.check_probabilities(probs - 0.01, "p")
