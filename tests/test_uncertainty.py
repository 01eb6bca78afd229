"""Per-case uncertainty (explain.uncertainty): members, scores against hand computations."""

from __future__ import annotations

import functools

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
    calls = []  # images per model call
    ad.model.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    base = ad.probabilities(_image()).numpy()[0]
    calls.clear()
    s = UncertaintySettings(flips=(0, 2), jitter=1)
    u = case_uncertainty(ad, _image(), s, base_probabilities=base)
    # k = 3 augmentations: 3 extra images, in one batched call
    assert calls == [3] and u.n_members == 4
    calls.clear()
    voxels = _image()[0].size
    case_uncertainty(ad, _image(), s, base_probabilities=base, batch_voxels=2 * voxels)
    assert calls == [2, 1]  # chunked to the memory bound
    calls.clear()
    case_uncertainty(ad, _image(), s, base_probabilities=base, batch_voxels=1)
    assert calls == [1, 1, 1]  # at least one copy a pass
    calls.clear()
    case_uncertainty(ad, _image(), s)
    assert calls == [4]  # no audit pass to reuse: the plain member goes in the batch


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="uncertainty.jitter"):
        UncertaintySettings(jitter=-1)
    with pytest.raises(ValueError, match="unknown setting"):
        UncertaintySettings.from_value({"flip": 1})
    with pytest.raises(ValueError, match="do not exist"):
        case_uncertainty(_adapter(), _image()[:, 0], {"flips": (2,)})
    assert len(UncertaintySettings(flip_combinations=True).flip_sets(3)) == 7


from hypothesis import given, settings  # noqa: E402
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


# -- batched passes and the member-bit aggregation (issue 27's cost point) ------------------

class _Conv(nn.Module):
    """A small random convolutional net: not flip-equivariant, instance-normalised."""

    def __init__(self, spatial_dims: int = 3, classes: int = 2) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = nn.Sequential(conv(1, 4, 3, padding=1), norm(4), nn.ReLU(),
                                     conv(4, classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@functools.cache
def _conv_adapter(dims: int, activation: str) -> SegmentationAdapter:
    return SegmentationAdapter(_Conv(dims), spatial_dims=dims, divisor=1, activation=activation)


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([2, 3]), st.booleans(), st.integers(0, 1),
       st.sampled_from(["softmax", "sigmoid"]))
def test_batched_passes_equal_one_at_a_time(seed: int, dims: int, combos: bool, jitter: int,
                                            activation: str) -> None:
    rng = np.random.default_rng(seed)
    shape = (1, 6, 7, 5)[:dims + 1]
    img = rng.normal(size=shape).astype(np.float32)
    ad = _conv_adapter(dims, activation)
    s = {"flips": tuple(range(dims)), "flip_combinations": combos, "jitter": jitter}
    one = case_uncertainty(ad, img, s, batch_voxels=1)
    batched = case_uncertainty(ad, img, s, batch_voxels=10**9)
    np.testing.assert_allclose(batched.mean_probability, one.mean_probability, atol=1e-6)
    for k, v in one.scores.items():
        assert batched.scores[k] == pytest.approx(v, abs=1e-6)
    assert batched.members == one.members and batched.n_members == one.n_members


def _brute_force(maps: list[np.ndarray], activation: str, threshold, connectivity=None):
    """The member aggregation written out plainly: stacked masks, a loop over pairs."""
    from scipy import ndimage

    from medseg_xai.explain.uncertainty import _foreground
    from medseg_xai.metrics.lesions import label_lesions

    masks = np.stack([_foreground(p, activation, threshold) for p in maps])
    mean = np.mean(np.stack(maps).astype(np.float64), axis=0).astype(np.float32)
    entropy = normalised_entropy(mean, activation)
    predicted = _foreground(mean, activation, threshold)

    def dice(a, b):
        return 1.0 if a.sum() + b.sum() == 0 else 2 * (a & b).sum() / (a.sum() + b.sum())

    pairs = [(i, j) for i in range(len(masks)) for j in range(i + 1, len(masks))]
    region = predicted if predicted.any() else masks.any(axis=0)
    vols = masks.reshape(len(masks), -1).sum(axis=1).astype(float)
    scores = {"unc_entropy": float(entropy[region].mean()) if region.any() else 0.0,
              "unc_disagreement": 1 - np.mean([dice(masks[i], masks[j]) for i, j in pairs])
              if pairs else 0.0,
              "unc_volume_cv": vols.std() / vols.mean() if vols.mean() > 0 else 0.0}
    lab, n = label_lesions(predicted, connectivity)
    rows = []
    for les, box in zip(range(1, n + 1), ndimage.find_objects(lab)):
        inside = lab == les
        m = masks & inside
        rows.append({"volume_voxels": int(inside.sum()),
                     "mean_entropy": float(entropy[inside].astype(float).mean()),
                     "member_detection": float(np.mean([x.any() for x in m])),
                     "disagreement": 1 - np.mean([dice(m[i], m[j]) for i, j in pairs])
                     if pairs else 0.0,
                     "bbox": [[sl.start, sl.stop] for sl in box]})
    return masks, mean, scores, rows


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1, 2, 3, 9, 17, 40, 70]),
       st.sampled_from(["softmax", "sigmoid"]), st.sampled_from([None, 0.3]),
       st.sampled_from([1, 2, 3]))
def test_member_bits_equal_brute_force(seed: int, m: int, activation: str, threshold,
                                       classes: int) -> None:
    from medseg_xai.explain.member_bits import MemberBits
    from medseg_xai.explain.uncertainty import _finish, _foreground

    rng = np.random.default_rng(seed)
    shape = (classes, 5, 6, 4)
    # a few members share one random map, so masks overlap, agree and differ
    pool = [rng.random(shape).astype(np.float32) ** 3 for _ in range(3)]
    maps = [pool[int(rng.integers(3))] * rng.uniform(0.5, 1.5) for _ in range(m)]
    maps = [np.clip(p, 0, 1).astype(np.float32) for p in maps]
    if activation == "softmax" and classes > 1:
        maps = [p / p.sum(0, keepdims=True) for p in maps]
    bits = MemberBits(m, lambda p: _foreground(p, activation, threshold))
    for j, p in enumerate(maps):  # each given in a flipped frame, with the axes back
        axes = ((), (1,), (3,), (1, 3), (1, 2, 3))[(seed + j) % 5]
        bits.add(np.ascontiguousarray(np.flip(p, axes)), axes=axes)
    u = _finish(bits, activation, threshold, [str(i) for i in range(m)], None)
    masks, mean, scores, rows = _brute_force(maps, activation, threshold)
    np.testing.assert_allclose(u.mean_probability, mean, atol=1e-6)
    np.testing.assert_array_equal(u.predicted, _foreground(mean, activation, threshold))
    np.testing.assert_allclose(u.vote, masks.mean(axis=0), rtol=1e-6)
    for k, v in scores.items():
        assert u.scores[k] == pytest.approx(v, abs=1e-6), k
    assert len(u.lesions) == len(rows)
    for got, want in zip(u.lesions.to_dict(orient="records"), rows):
        for k, v in want.items():
            assert got[k] == (pytest.approx(v, abs=1e-6) if isinstance(v, float) else v), k
    box = (slice(1, 4), slice(0, 6), slice(2, 3))
    np.testing.assert_allclose(u.box_vote(box), u.vote[box])
    np.testing.assert_allclose(u.box_entropy(box), normalised_entropy(mean, activation)[box],
                               atol=1e-5)


def test_member_scores_equal_brute_force_pairs() -> None:
    rng = np.random.default_rng(5)
    masks = rng.random((6, 7, 8)) < 0.3
    masks[2] = False  # an empty member
    _, _, scores, _ = _brute_force([np.stack([~m, m]).astype(np.float32) for m in masks],
                                   "softmax", None)
    got = member_scores(masks, np.zeros((7, 8), np.float32), np.zeros((7, 8), bool))
    assert got["unc_disagreement"] == pytest.approx(scores["unc_disagreement"], abs=1e-12)
    assert got["unc_volume_cv"] == pytest.approx(scores["unc_volume_cv"], abs=1e-12)


def test_out_of_gpu_memory_falls_back_to_one_copy_a_pass() -> None:
    class _Small(_Threshold):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return super().forward(x)

    ad = SegmentationAdapter(_Small(), spatial_dims=3, divisor=1)
    u = case_uncertainty(ad, _image(), {"flips": (0, 1, 2)})
    ref = case_uncertainty(_adapter(), _image(), {"flips": (0, 1, 2)}, batch_voxels=1)
    assert u.n_members == 4 and u.scores == ref.scores
    np.testing.assert_array_equal(u.mean_probability, ref.mean_probability)


@pytest.mark.parametrize("mode", ["sliding_window", "slice_axis"])
def test_batched_passes_through_sliding_windows_and_slices(mode: str) -> None:
    rng = np.random.default_rng(3)
    img = rng.normal(size=(1, 6, 7, 5)).astype(np.float32)
    if mode == "sliding_window":
        ad = SegmentationAdapter(_Conv(3), spatial_dims=3, divisor=1,
                                 sliding_window={"roi_size": (4, 4, 4), "overlap": 0.25})
    else:
        ad = SegmentationAdapter(_Conv(2), spatial_dims=3, divisor=1, slice_axis=0)
    s = {"flips": (0, 1, 2), "flip_combinations": True}
    one = case_uncertainty(ad, img, s, batch_voxels=1)
    batched = case_uncertainty(ad, img, s)
    np.testing.assert_allclose(batched.mean_probability, one.mean_probability, atol=1e-6)
    for k, v in one.scores.items():
        assert batched.scores[k] == pytest.approx(v, abs=1e-6)


def test_bitcount_table_equals_numpy() -> None:
    from medseg_xai.explain import member_bits

    rng = np.random.default_rng(0)
    for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
        w = rng.integers(0, np.iinfo(dt).max, size=(3, 5), dtype=dt, endpoint=True)
        want = np.array([[bin(int(v)).count("1") for v in row] for row in w])
        np.testing.assert_array_equal(member_bits._bitcount(w), want)
        by = w.view(np.uint8).reshape(*w.shape, w.dtype.itemsize)  # the pre-2.0 path
        np.testing.assert_array_equal(member_bits._BYTE_BITS[by].sum(axis=-1), want)


# -- the audit's plain pass in the batch with the copies (plain_and_uncertainty) -------------

def _single(ad: SegmentationAdapter, img: np.ndarray, s: dict, layer: str = "net.2"):
    """Today's audit: one plain pass (with its feature hook), then the copies reusing it."""
    from medseg_xai.explain.features import FeatureHook

    with FeatureHook(ad, layer) as hook:
        base = ad.probabilities(img).numpy()[0]
    return base, hook.vector, case_uncertainty(ad, img, s, base_probabilities=base)


def _assert_same(joint, base, vector, ref, hook) -> None:
    np.testing.assert_allclose(joint.probabilities, base, atol=1e-6)
    np.testing.assert_allclose(hook.vector, vector, rtol=1e-6, atol=1e-6)
    u = joint.uncertainty
    np.testing.assert_allclose(u.mean_probability, ref.mean_probability, atol=1e-6)
    for k, v in ref.scores.items():
        assert u.scores[k] == pytest.approx(v, abs=1e-6)
    assert u.members == ref.members and u.n_members == ref.n_members
    np.testing.assert_array_equal(u.codes, ref.codes)


@pytest.mark.parametrize("mode", ["plain", "sliding_window", "slice_axis"])
def test_plain_pass_in_the_batch_equals_the_separate_pass(mode: str) -> None:
    from medseg_xai.explain.features import FeatureHook
    from medseg_xai.explain.uncertainty import plain_and_uncertainty

    img = np.random.default_rng(5).normal(size=(1, 6, 7, 5)).astype(np.float32)
    ad = {"plain": lambda: _conv_adapter(3, "softmax"),
          # sw_batch_size 3: windows of the plain image and of a copy share model calls
          "sliding_window": lambda: SegmentationAdapter(
              _Conv(3), spatial_dims=3, divisor=1,
              sliding_window={"roi_size": (4, 4, 4), "overlap": 0.25, "sw_batch_size": 3}),
          "slice_axis": lambda: SegmentationAdapter(_Conv(2), spatial_dims=3, divisor=1,
                                                    slice_axis=0)}[mode]()
    s = {"flips": (0, 2), "jitter": 1}
    base, vector, ref = _single(ad, img, s)
    calls = []  # images per model call
    handle = ad.model.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    hook = FeatureHook(ad, "net.2")
    joint = plain_and_uncertainty(ad, img, s, hook=hook)
    handle.remove()
    assert joint.batch == 4 and hook.samples == 4
    if mode == "plain":
        assert calls == [4]  # the plain image and its 3 copies: one forward pass
    _assert_same(joint, base, vector, ref, hook)
    # the features are the plain image's alone: a hook pooling a batch's rows would not be
    other = np.random.default_rng(8).gamma(1.0, size=img.shape).astype(np.float32)
    with FeatureHook(ad, "net.2") as every:
        ad.probabilities(torch.from_numpy(np.stack([img, other])))
    assert not np.allclose(hook.vector, every.vector, rtol=1e-3)


def test_plain_pass_chunks_and_k1_is_one_call() -> None:
    from medseg_xai.explain.features import FeatureHook
    from medseg_xai.explain.uncertainty import plain_and_uncertainty

    ad = _conv_adapter(3, "sigmoid")
    img = np.random.default_rng(6).normal(size=(1, 6, 7, 5)).astype(np.float32)
    calls = []
    handle = ad.model.register_forward_hook(lambda _m, inp, _o: calls.append(inp[0].shape[0]))
    try:
        r = plain_and_uncertainty(ad, img, {"flips": (1,)})
        assert calls == [2] and r.batch == 2  # k = 1: the plain pass and the flip together
        assert 0 < r.plain_seconds <= r.seconds
        calls.clear()
        s = {"flips": (0, 1, 2)}
        base, vector, ref = _single(ad, img, s)
        calls.clear()
        hook = FeatureHook(ad, "net.2")
        r = plain_and_uncertainty(ad, img, s, hook=hook, batch_voxels=img.size)
        assert calls == [1, 1, 1, 1] and r.batch == 1 and hook.samples == 1
        _assert_same(r, base, vector, ref, hook)
    finally:
        handle.remove()


def test_plain_pass_out_of_gpu_memory_keeps_the_plain_features() -> None:
    from medseg_xai.explain.features import FeatureHook
    from medseg_xai.explain.uncertainty import plain_and_uncertainty

    class _Small(_Conv):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.net[:2](x)  # the hooked layer has run before the "GPU" gives up
            if x.shape[0] > 1:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.net[2:](y)

    ad = SegmentationAdapter(_Small(3), spatial_dims=3, divisor=1)
    img = np.random.default_rng(7).normal(size=(1, 6, 7, 5)).astype(np.float32)
    s = {"flips": (0, 1)}
    base, vector, ref = _single(ad, img, s, layer="net.1")
    hook = FeatureHook(ad, "net.1")
    r = plain_and_uncertainty(ad, img, s, hook=hook)
    _assert_same(r, base, vector, ref, hook)


def test_plain_pass_joins_only_plain_tta_of_a_toolkit_adapter() -> None:
    from medseg_xai.explain.uncertainty import joins_plain_pass, plain_and_uncertainty

    img = _image()
    assert joins_plain_pass(_adapter(), img, {"flips": (0,)})
    assert joins_plain_pass(_adapter(), img, None)
    assert not joins_plain_pass(_adapter(dropout=0.5), img, {"mc_dropout": 2})
    assert not joins_plain_pass(_adapter(), img[0], {"flips": (0,)})  # no channel axis

    class _Callable:  # not a SegmentationAdapter: one numpy image at a time
        activation = "softmax"

        def probabilities(self, x):
            return _adapter().probabilities(x)

    assert not joins_plain_pass(_Callable(), img, {"flips": (0,)})
    with pytest.raises(ValueError, match="case_uncertainty"):
        plain_and_uncertainty(_adapter(dropout=0.5), img, {"mc_dropout": 2})
