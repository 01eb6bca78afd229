"""Networks that are not the demo's: odd sizes (divisor padding), sigmoid heads, deep
supervision and dict outputs, clear errors, the one thresholding rule, progress and cancel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor
from monai.networks import nets
from monai.transforms import DivisiblePad
from torch import nn

from medseg_xai.adapters import Cancelled, SegmentationAdapter, label_map


def _unet16(out_channels: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nets.UNet(3, 1, out_channels, channels=(2, 4, 4, 4, 4), strides=(2, 2, 2, 2),
                     num_res_units=0).eval()


@pytest.fixture(scope="module")
def odd_volume() -> np.ndarray:
    return np.random.default_rng(0).random((1, 61, 61, 61)).astype(np.float32)


@pytest.mark.slow
def test_61_cubed_on_a_unet_with_four_downsamplings_is_padded_and_cropped(odd_volume) -> None:
    model = _unet16()
    with pytest.raises(RuntimeError):  # the problem: the bare network refuses 61^3
        model(torch.from_numpy(odd_volume)[None])
    ad = SegmentationAdapter(model)
    assert ad.divisor == (16, 16, 16)  # inferred from the strided convolutions
    logits = ad.logits(odd_volume)
    assert logits.shape == (1, 2, 61, 61, 61)
    # Reference: MONAI's DivisiblePad, the network, then DivisiblePad's own inverse.
    pad = DivisiblePad(k=16)
    xp = pad(MetaTensor(torch.from_numpy(odd_volume)))
    with torch.no_grad():
        yp = model(xp.as_tensor()[None])[0]
    ref = pad.inverse(MetaTensor(yp, applied_operations=xp.applied_operations))
    torch.testing.assert_close(logits[0], ref.as_tensor())
    # Given explicitly it is the same; with padding off the failure says what to do.
    torch.testing.assert_close(SegmentationAdapter(model, divisor=16).logits(odd_volume), logits)
    with pytest.raises(ValueError, match=r"divisor") as info:
        SegmentationAdapter(model, divisor=None).logits(odd_volume)
    assert "61, 61, 61" in str(info.value)


def test_padding_keeps_gradients_and_divisible_sizes_are_untouched() -> None:
    model = _unet16()
    ad = SegmentationAdapter(model)
    x = torch.rand(1, 1, 17, 16, 20, requires_grad=True)
    ad.logits(x)[:, 1].sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape and x.grad.abs().sum() > 0
    x32 = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ad.logits(x32), model(x32))


class _Heads(nn.Module):
    """One sigmoid channel, returned as a tensor, a dict or deep-supervision heads."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.down = nn.Conv3d(1, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose3d(4, 4, 2, stride=2)
        self.head = nn.Conv3d(4, 1, 1)

    def forward(self, x):
        y = self.head(torch.relu(self.up(torch.relu(self.down(x)))))
        if self.kind == "dict":
            return {"seg": y, "aux": torch.zeros_like(y)}
        if self.kind == "deep":
            return [y, y[..., ::2, ::2, ::2]]
        return y


@pytest.mark.parametrize("kind,output", [("tensor", None), ("dict", "seg"), ("deep", None)])
def test_single_sigmoid_output_in_every_structure_with_odd_sizes(kind, output) -> None:
    torch.manual_seed(0)
    model = _Heads(kind)
    ad = SegmentationAdapter(model, activation="sigmoid", output=output, threshold=0.4)
    x = np.random.default_rng(1).random((1, 9, 7, 11)).astype(np.float32)
    assert ad.divisor == (2, 2, 2)
    p = ad.probabilities(x)
    assert p.shape == (1, 1, 9, 7, 11)
    torch.testing.assert_close(ad.predict(x), (p[:, 0] > 0.4).long())
    torch.testing.assert_close(ad.predict(x, threshold=0.6), (p[:, 0] > 0.6).long())
    with pytest.raises(ValueError, match=r"1 output channel.*class_index 0"):
        ad.check_class_index(1)
    assert ad.check_class_index(0) == 0


def test_channel_count_and_class_index_are_checked_up_front() -> None:
    ad = SegmentationAdapter(_unet16(3))
    with pytest.raises(ValueError, match=r"2 channel\(s\).*expects 1"):
        ad.logits(np.zeros((2, 16, 16, 16), np.float32))
    with pytest.raises(ValueError, match=r"3 output channel\(s\), so class_index must be 0..2"):
        ad.check_class_index(3, np.zeros((1, 32, 32, 32), np.float32))
    with pytest.raises(ValueError, match="divisor"):
        SegmentationAdapter(_unet16(), divisor=(16, 16))


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 4), st.floats(0.05, 0.95), st.integers(0, 2**31 - 1))
def test_label_map_rules(k, t, seed) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(k, 5, 6))
    soft = np.exp(logits) / np.exp(logits).sum(0)
    # softmax: None is the argmax; a threshold keeps the best foreground class above it
    np.testing.assert_array_equal(label_map(soft), soft.argmax(0))
    best = soft[1:].argmax(0) + 1
    expect = np.where(soft[1:].max(0) > t, best, 0)
    np.testing.assert_array_equal(label_map(soft, t), expect)
    if k == 2:
        np.testing.assert_array_equal(label_map(soft, 0.5), soft.argmax(0))
    sig = 1 / (1 + np.exp(-logits))
    np.testing.assert_array_equal(label_map(sig[:1], t, activation="sigmoid"), sig[0] > t)
    multi = label_map(torch.from_numpy(sig)[None], t, activation="sigmoid", channel_axis=1)
    assert isinstance(multi, torch.Tensor) and multi.shape == (1, 5, 6)
    np.testing.assert_array_equal(multi[0].numpy(),
                                  np.where(sig.max(0) > t, sig.argmax(0) + 1, 0))


def test_label_map_rejects_bad_thresholds() -> None:
    with pytest.raises(ValueError, match="threshold"):
        label_map(np.zeros((2, 3, 3)), 1.5)
    with pytest.raises(ValueError, match="activation"):
        label_map(np.zeros((2, 3, 3)), activation="relu")


def test_watch_counts_forward_passes_and_cancels_an_occlusion() -> None:
    from medseg_xai import explain, targets

    torch.manual_seed(0)
    model = _Heads("tensor")
    ad = SegmentationAdapter(model, activation="sigmoid")
    x = np.random.default_rng(2).random((1, 8, 8, 8)).astype(np.float32)
    mask = np.zeros((8, 8, 8), bool)
    mask[2:5, 2:5, 2:5] = True
    calls = []
    watched = ad.watch(lambda: calls.append(1))
    explain(watched, x, targets.region(0, mask), method="occlusion", window=4, stride=4)
    assert len(calls) == 1 + 8  # the unperturbed pass and one per window
    assert ad._watch is None  # the original adapter is not watched

    def stop_after_three():
        calls.append(1)
        if len(calls) > 12:
            raise Cancelled("stopped by the user")

    with pytest.raises(Cancelled):
        explain(ad.watch(stop_after_three), x, targets.region(0, mask), method="occlusion",
                window=4, stride=4)
    assert model.training and all(p.requires_grad for p in model.parameters())
