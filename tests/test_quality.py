"""Explanation quality: localisation, cascading randomisation, deletion/insertion curves."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import medseg_xai as mx
from medseg_xai.explain import quality


class Small(nn.Module):
    def __init__(self, dims: int) -> None:
        super().__init__()
        conv = nn.Conv3d if dims == 3 else nn.Conv2d
        self.enc = conv(1, 6, 3, padding=1)
        self.dec = conv(6, 6, 3, padding=1)
        self.head = conv(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.dec(torch.relu(self.enc(x)))))


@pytest.fixture(scope="module")
def case2d():
    torch.manual_seed(0)
    image = np.random.default_rng(0).random((1, 24, 24)).astype(np.float32)
    ref = np.zeros((24, 24), bool)
    ref[8:16, 8:16] = True
    return mx.SegmentationAdapter(Small(2), spatial_dims=2), image, mx.targets.reference(1, ref)


def test_localisation_exact_values():
    attr = np.array([[1.0, -2.0], [3.0, 0.0]])
    mask = np.array([[True, True], [False, False]])
    assert quality.localisation(attr, mask) == pytest.approx(0.25)
    assert np.isnan(quality.localisation(-np.ones((2, 2)), mask))
    with pytest.raises(ValueError, match="same shape"):
        quality.localisation(attr, mask[:1])


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, (4, 5), elements=st.floats(-5, 5)),
       arrays(bool, (4, 5)))
def test_localisation_is_a_share_and_complements(attr, mask):
    inside = quality.localisation(attr, mask)
    outside = quality.localisation(attr, ~mask)
    if (attr > 0).any():
        assert 0.0 <= inside <= 1.0
        assert inside + outside == pytest.approx(1.0)
    else:
        assert np.isnan(inside)


def test_sanity_check_correlation_drops_and_copies_once(case2d, monkeypatch):
    adapter, image, target = case2d
    calls = []
    real = copy.deepcopy

    def counting(obj, *a, **k):
        if isinstance(obj, nn.Module):
            calls.append(type(obj).__name__)
        return real(obj, *a, **k)

    monkeypatch.setattr(quality.copy, "deepcopy", counting)
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    # the whole image as region: no shared support/geometry to keep maps alike by themselves
    target = mx.targets.region(1, np.ones(image.shape[1:], bool))
    df = quality.sanity_check(adapter, image, target, method="saliency", max_steps=3, abs=False)
    assert calls == ["Small"]
    assert list(df["step"]) == [0, 1, 2, 3] and df["n_randomised"].iloc[-1] == 3
    assert df["randomised_to"].iloc[1] == "head"  # from the head down
    assert df["spearman"].iloc[0] == 1.0
    assert df["spearman"].iloc[-1] < 0.5
    # the original model is untouched
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, before[k])
    # the same (unrandomised) model correlates perfectly: the check can tell them apart
    again = mx.explain(adapter, image, target, "saliency", abs=False).attribution
    ref = mx.explain(adapter, image, target, "saliency", abs=False).attribution
    assert quality._spearman(ref.ravel(), again.ravel()) == pytest.approx(1.0)


@pytest.mark.parametrize("dims", [2, 3])
def test_deletion_insertion_curves(dims):
    torch.manual_seed(dims)
    size = 16 if dims == 2 else 8
    adapter = mx.SegmentationAdapter(Small(dims), spatial_dims=dims)
    image = np.random.default_rng(dims).random((1, *(size,) * dims)).astype(np.float32)
    ref = np.zeros((size,) * dims, bool)
    ref[(slice(2, 6),) * dims] = True
    target = mx.targets.reference(1, ref)
    exp = mx.explain(adapter, image, target, "saliency")
    curves = quality.deletion_insertion(adapter, image, target, exp, steps=8, batch_size=3)
    full = quality.deletion_insertion(adapter, image, target, exp.attribution, steps=8,
                                      batch_size=None)
    np.testing.assert_allclose(curves.deletion, full.deletion, rtol=1e-5)
    probs = adapter.foreground_probability(image, 1)[0].numpy()
    blank = adapter.foreground_probability(np.zeros_like(image), 1)[0].numpy()
    # the ends are the untouched image and the all-baseline image (lesion probability)
    assert curves.deletion[0] == pytest.approx(probs[ref].mean(), rel=1e-5)
    assert curves.deletion[-1] == pytest.approx(blank[ref].mean(), rel=1e-5)
    assert curves.insertion[0] == pytest.approx(curves.deletion[-1], rel=1e-5)
    assert curves.insertion[-1] == pytest.approx(curves.deletion[0], rel=1e-5)
    assert curves.auc_deletion == pytest.approx(np.trapezoid(curves.deletion, curves.fractions))
    assert len(curves.to_frame()) == 9
    with pytest.raises(ValueError, match="attribution"):
        quality.deletion_insertion(adapter, image, target, exp.attribution[:2])


# --------------------------------------------------------------- gates of the miss analysis
def test_map_gate_names_what_is_wrong():
    assert quality.map_gate(np.zeros((4, 4))) == "all-zero map"
    assert quality.map_gate(np.full((4, 4), 3.0)) == "constant map"
    assert quality.map_gate(np.array([0.0, np.nan])) == "non-finite values"
    assert quality.map_gate(np.arange(16.0).reshape(4, 4)) is None


def test_completeness_error_is_relative_with_a_floor():
    assert quality.completeness_error(1.9, 3.0, 1.0) == pytest.approx(0.05)
    # a change below the floor (0.01) is measured against the floor
    assert quality.completeness_error(0.0, 1.001, 1.0) == pytest.approx(0.1)


def test_randomised_copy_changes_the_copy_only(case2d):
    adapter, image, target = case2d
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    rand = quality.randomised_copy(adapter, seed=3)
    for k, v in adapter.model.state_dict().items():
        assert torch.equal(v, before[k])
    changed = [k for k, v in rand.model.state_dict().items() if not torch.equal(v, before[k])]
    assert set(changed) == set(before)  # every parameterised module re-initialised
    a = mx.explain(adapter, image, target, method="saliency").attribution
    b = mx.explain(rand, image, target, method="saliency").attribution
    rho = quality.randomisation_similarity(a, b)
    assert -1.0 <= rho <= 1.0
    assert not torch.allclose(adapter.logits(image), rand.logits(image))
    assert quality.randomisation_similarity(a, a) == pytest.approx(1.0)
    assert np.isnan(quality.randomisation_similarity(np.ones(9), a.ravel()[:9]))
    with pytest.raises(ValueError, match="no parameters"):
        quality.randomised_copy(mx.SegmentationAdapter(nn.Identity(), spatial_dims=2))
