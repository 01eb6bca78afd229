"""Targets: mean (margin) logit over masks, regions from reference/prediction, lesions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from medseg_xai import targets


def test_region_is_the_mean_class_logit_over_the_mask():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(3, 2, 5, 6)).astype(np.float32))
    mask = rng.random((5, 6)) > 0.5
    t = targets.region(1, mask)
    expected = logits[:, 1].numpy()[:, mask].mean(axis=1)
    np.testing.assert_allclose(t(logits).numpy(), expected, rtol=1e-5)
    assert t.name == "region[1]" and t.n_voxels == mask.sum()


def test_margin_subtracts_the_strongest_competitor():
    rng = np.random.default_rng(1)
    logits = torch.from_numpy(rng.normal(size=(2, 3, 4, 4, 4)).astype(np.float32))
    mask = np.zeros((4, 4, 4), bool)
    mask[1:3, :, 2] = True
    t = targets.region(2, mask, margin=True)
    arr = logits.numpy()
    margin = arr[:, 2] - np.maximum(arr[:, 0], arr[:, 1])
    np.testing.assert_allclose(t(logits).numpy(), margin[:, mask].mean(axis=1), rtol=1e-5)
    assert "margin" in t.describe() and t.name.endswith("-margin")
    with pytest.raises(ValueError, match="margin=True needs at least 2"):
        targets.region(0, mask, margin=True)(logits[:, :1])


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 3),
    st.lists(st.integers(0, 15), min_size=1, max_size=16, unique=True),
    st.floats(-3, 3),
)
def test_region_is_linear_and_ignores_voxels_outside(k, inside, shift):
    # adding a constant outside the mask changes nothing; inside it shifts the mean exactly
    mask = np.zeros(16, bool)
    mask[inside] = True
    mask = mask.reshape(4, 4)
    t = targets.region(k - 1, mask)
    logits = torch.zeros(1, k, 4, 4)
    out = torch.zeros_like(logits)
    out[:, k - 1][:, torch.from_numpy(~mask)] = 100.0
    assert float(t(out)) == pytest.approx(0.0, abs=1e-6)
    assert float(t(logits + shift)) == pytest.approx(shift, abs=1e-5)


def test_missed_is_reference_minus_prediction_and_reports_nothing_missed():
    ref = np.zeros((6, 6), int)
    ref[1:4, 1:4] = 1
    pred = np.zeros((6, 6), int)
    pred[1:4, 1:3] = 1
    t = targets.missed(1, pred=pred, ref=ref)
    np.testing.assert_array_equal(t.mask, (ref == 1) & (pred == 0))
    assert "missed" in t.describe() and "3 voxels" in t.describe()
    with pytest.raises(ValueError, match="nothing was missed"):
        targets.missed(1, pred=ref, ref=ref)
    with pytest.raises(ValueError, match="same shape"):
        targets.missed(1, pred=pred[:5], ref=ref)
    # the old positional (ref, pred) order: same target, with a FutureWarning
    with pytest.warns(FutureWarning, match="pred=..., ref=..."):
        old = targets.missed(1, ref, pred)
    np.testing.assert_array_equal(old.mask, t.mask)
    with pytest.raises(TypeError, match="pred= and ref="):
        targets.missed(1, ref, pred=pred)


def test_multiclass_label_maps_select_the_class():
    ref = np.array([[0, 1, 2], [2, 2, 0]])
    t = targets.reference(2, ref)
    np.testing.assert_array_equal(t.mask, ref == 2)
    assert "reference" in t.describe(["bg", "liver", "tumour"])
    assert "tumour" in t.describe(["bg", "liver", "tumour"])


def test_lesion_by_index_point_and_id_uses_full_connectivity():
    ref = np.zeros((8, 8, 8), bool)
    ref[1:3, 1:3, 1:3] = True
    ref[3, 3, 3] = True  # touches the first lesion only at a corner
    ref[6:8, 6:8, 0:2] = True
    labels, n = ndimage.label(ref, ndimage.generate_binary_structure(3, 3))
    assert n == 2
    first = targets.lesion(1, ref, 1)
    np.testing.assert_array_equal(first.mask, labels == 1)
    assert first.n_voxels == 9
    by_point = targets.lesion(1, ref, point=(7, 7, 1))
    np.testing.assert_array_equal(by_point.mask, labels == labels[7, 7, 1])
    np.testing.assert_array_equal(targets.lesion(1, ref, "ref-2").mask, labels == 2)
    faces = targets.lesion(1, ref, point=(3, 3, 3), connectivity=1)
    assert faces.n_voxels == 1
    assert "lesion 1 of 2" in first.describe()
    with pytest.raises(ValueError, match="lesion_index"):
        targets.lesion(1, ref, 3)
    with pytest.raises(ValueError, match="not inside"):
        targets.lesion(1, ref, point=(5, 0, 5))
    with pytest.raises(ValueError, match="exactly one"):
        targets.lesion(1, ref)


def test_bad_inputs_raise_value_errors_that_name_the_argument():
    mask = np.ones((4, 4), bool)
    with pytest.raises(ValueError, match="class_index"):
        targets.region(-1, mask)
    with pytest.raises(ValueError, match="class_index"):
        targets.region(1.5, mask)
    with pytest.raises(ValueError, match="empty"):
        targets.region(1, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="mask"):
        targets.region(1, np.ones(4, bool))
    t = targets.region(1, mask)
    with pytest.raises(ValueError, match="spatial shape"):
        t(torch.zeros(1, 2, 5, 4))
    with pytest.raises(ValueError, match="out of range"):
        targets.region(3, mask)(torch.zeros(1, 2, 4, 4))


def test_crop_keeps_the_graph_and_an_empty_crop_scores_zero():
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    t = targets.region(1, mask)
    logits = torch.ones(1, 2, 2, 2, requires_grad=True)
    empty = t.crop((slice(2, 4), slice(2, 4)))
    value = empty(logits)
    assert float(value.detach()) == 0.0 and value.requires_grad
    assert float(t.crop((slice(0, 2), slice(0, 2)))(logits)) == 1.0
