"""Per-case uncertainty (explain.uncertainty): members, scores against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medseg_xai import SegmentationAdapter
from medseg_xai.explain.uncertainty import (
    UncertaintySettings,
    case_uncertainty,
    member_scores,
    normalised_entropy,
)


class _Threshold(nn.Module):
    """Foreground logit = scale * (x - offset): a model whose answer we know."""

    def __init__(self, offset: float = 0.5, scale: float = 8.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.offset, self.scale = offset, scale
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = self.drop(self.scale * self.w * (x[:, :1] - self.offset))
        return torch.cat([torch.zeros_like(fg), fg], dim=1)


def _image() -> np.ndarray:
    img = np.zeros((1, 8, 10, 12), np.float32)
    img[0, 2:5, 3:7, 4:9] = 1.0
    return img


def _adapter(**kw) -> SegmentationAdapter:
    return SegmentationAdapter(_Threshold(**kw), spatial_dims=3, divisor=1)


def test_equivariant_model_has_no_disagreement() -> None:
    # a voxel-wise model is flip-equivariant: every member equals the plain one
    u = case_uncertainty(_adapter(), _image(), {"flips": (0, 1, 2)})
    assert u.n_members == 4
    assert u.scores["unc_disagreement"] == pytest.approx(0.0, abs=1e-7)
    assert u.scores["unc_volume_cv"] == pytest.approx(0.0, abs=1e-7)
    p = u.mean_probability[1]
    h = -(p * np.log(p) + (1 - p) * np.log1p(-p)) / np.log(2)
    assert u.scores["unc_entropy"] == pytest.approx(float(h[p > 0.5].mean()), rel=1e-4)
    assert list(u.lesions["lesion"]) == ["pred-1"] and u.lesions["volume_voxels"][0] == 60
    assert u.lesions["member_detection"][0] == 1.0


def test_ensemble_disagreement_is_one_minus_pairwise_dice() -> None:
    img = _image()
    img[0, 2:5, 3:7, 4:6] = 0.7  # half the object is 0.7: offset 0.6 keeps it, 0.8 drops it
    members = [_adapter(offset=0.6), _adapter(offset=0.8)]
    u = case_uncertainty(members, img, {"flips": ()})
    a, b = img[0] > 0.6, img[0] > 0.8
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert u.scores["unc_disagreement"] == pytest.approx(1 - dice, rel=1e-6)
    vols = np.array([a.sum(), b.sum()], float)
    assert u.scores["unc_volume_cv"] == pytest.approx(vols.std() / vols.mean(), rel=1e-6)
    assert u.vote[2, 3, 4] == 0.5 and u.vote[2, 3, 8] == 1.0


def test_member_scores_edge_cases() -> None:
    empty = np.zeros((3, 4, 4), bool)
    s = member_scores(empty, np.zeros((4, 4), np.float32), np.zeros((4, 4), bool))
    assert s == {"unc_entropy": 0.0, "unc_disagreement": 0.0, "unc_volume_cv": 0.0}
    one = empty.copy()
    one[0, 1, 1] = True  # one member of three sees a voxel: pairs (0,1),(0,2) Dice 0, (1,2) 1
    s = member_scores(one, np.full((4, 4), 0.5, np.float32), np.zeros((4, 4), bool))
    assert s["unc_disagreement"] == pytest.approx(2 / 3)
    assert s["unc_entropy"] == 0.5  # the union of the members stands in for an empty mean


def test_entropy_is_normalised() -> None:
    p = np.full((4, 3, 3), 0.25, np.float32)
    assert np.allclose(normalised_entropy(p, "softmax"), 1.0)
    q = np.zeros((2, 3, 3), np.float32)
    q[1] = 1.0
    assert np.allclose(normalised_entropy(q, "softmax"), 0.0, atol=1e-6)


def test_mc_dropout_needs_dropout_and_is_seeded() -> None:
    with pytest.raises(ValueError, match="no dropout layer"):
        case_uncertainty(_adapter(), _image(), {"flips": (), "mc_dropout": 2})
    ad = _adapter(dropout=0.5)
    ad.model.eval()
    u1 = case_uncertainty(ad, _image(), {"flips": (), "mc_dropout": 4, "seed": 3})
    u2 = case_uncertainty(ad, _image(), {"flips": (), "mc_dropout": 4, "seed": 3})
    assert u1.n_members == 5 and u1.scores == u2.scores
    assert u1.scores["unc_disagreement"] > 0
    assert not ad.model.drop.training  # modes restored


def test_reuses_base_probabilities_and_counts_passes() -> None:
    ad = _adapter()
    calls = []
    ad.model.register_forward_hook(lambda *a: calls.append(1))
    base = ad.probabilities(_image()).numpy()[0]
    calls.clear()
    u = case_uncertainty(ad, _image(), UncertaintySettings(flips=(0, 2), jitter=1),
                         base_probabilities=base)
    assert len(calls) == 3 and u.n_members == 4  # k = 3 augmentations, 3 extra passes


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="uncertainty.jitter"):
        UncertaintySettings(jitter=-1)
    with pytest.raises(ValueError, match="unknown setting"):
        UncertaintySettings.from_value({"flip": 1})
    with pytest.raises(ValueError, match="do not exist"):
        case_uncertainty(_adapter(), _image()[:, 0], {"flips": (2,)})
    assert len(UncertaintySettings(flip_combinations=True).flip_sets(3)) == 7


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(st.integers(1, 4), st.sampled_from(["softmax", "sigmoid"]),
       st.one_of(st.none(), st.sampled_from([0.0, 0.3, 0.5, 0.9])), st.integers(0, 2**31 - 1))
def test_foreground_equals_the_decision_rule(k: int, activation: str, threshold, seed: int
                                             ) -> None:
    from medseg_xai.adapters import label_map
    from medseg_xai.explain.uncertainty import _foreground

    rng = np.random.default_rng(seed)
    p = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=(k, 5, 6)).astype(np.float32)  # ties
    if activation == "softmax" and k > 1:
        p = rng.random((k, 5, 6)).astype(np.float32)
        p[:, 0, :] = 1.0 / k  # exact ties on a row
        p /= p.sum(0, keepdims=True)
    expected = np.asarray(label_map(p, threshold, activation=activation)) > 0
    np.testing.assert_array_equal(_foreground(p, activation, threshold), expected)
