"""explain.features: default feature layer, pooled features, channel statistics, Grad-CAM
channel weights (cross-checked against the Grad-CAM map itself)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

import medseg_xai as mx
from medseg_xai import targets
from medseg_xai.explain import activations, explain
from medseg_xai.explain.features import (
    FeatureHook,
    channel_stats,
    channel_weights,
    cohort_channel_stats,
    feature_layer,
    pooled_features,
    top_channels,
)


def _unet(dims: int) -> mx.SegmentationAdapter:
    torch.manual_seed(0)
    net = UNet(spatial_dims=dims, in_channels=1, out_channels=2, channels=(4, 8, 16),
               strides=(2, 2), num_res_units=1)
    return mx.SegmentationAdapter(net, spatial_dims=dims)


def _image(shape, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(1, *shape)).astype(np.float32)
    img[(0, *[slice(s // 4, s // 2) for s in shape])] += 2.0
    return img


@pytest.mark.parametrize("dims", [2, 3])
def test_default_layer_is_the_bottleneck(dims):
    adapter = _unet(dims)
    shape = (16,) * dims
    name = feature_layer(adapter, (1, *shape))
    # MONAI UNet: model.1.submodule.1.submodule is the bottom residual unit (16 ch at 1/4 size)
    assert name == "model.1.submodule.1.submodule"
    acts = activations(adapter, _image(shape), name)
    assert acts.shape == (16, *(s // 4 for s in shape))
    vec = pooled_features(adapter, _image(shape))
    np.testing.assert_allclose(vec, acts.reshape(16, -1).mean(1), rtol=1e-5, atol=1e-6)


def test_hook_pools_every_call_and_reports_problems():
    adapter = _unet(2)
    layer = "model.1.submodule.1.submodule"
    a, b = _image((16, 16), 0), _image((16, 16), 1)
    with torch.no_grad(), FeatureHook(adapter, layer) as hook:
        adapter.logits(torch.from_numpy(np.stack([a, b])))  # a batch of two: mean of both images' vectors
    expected = (pooled_features(adapter, a, layer) + pooled_features(adapter, b, layer)) / 2
    np.testing.assert_allclose(hook.vector, expected, rtol=1e-5, atol=1e-6)
    assert not adapter.model.model[1].submodule[1].submodule._forward_hooks  # removed
    with FeatureHook(adapter, layer) as idle:
        pass
    with pytest.raises(ValueError, match="not called"):
        _ = idle.vector
    with pytest.raises(ValueError, match="not a sub-module"):
        FeatureHook(adapter, "model.9")
    no_conv = mx.SegmentationAdapter(nn.Conv2d(1, 2, 1), spatial_dims=2)
    assert FeatureHook.for_audit(no_conv, (1, 8, 8), "auto") is None


def test_channel_stats_case_and_cohort():
    adapter = _unet(2)
    layer = "model.0.conv"  # conv -> norm -> PReLU units: some zeros after the activation
    imgs = [_image((16, 16), s) for s in range(3)]
    one = channel_stats(adapter, imgs[0], layer)
    acts = activations(adapter, imgs[0], layer).reshape(4, -1)
    np.testing.assert_allclose(one["mean"], acts.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one["zero_share"], (acts == 0).mean(1))
    many = cohort_channel_stats(adapter, imgs, layer)
    per = np.stack([channel_stats(adapter, im, layer)["mean"] for im in imgs])
    np.testing.assert_allclose(many["mean"], per.mean(0))
    np.testing.assert_allclose(many["case_std"], per.std(0, ddof=1))
    assert (many["n_cases"] == 3).all()


@pytest.mark.parametrize("dims", [2, 3])
def test_channel_weights_rebuild_the_gradcam_map(dims):
    adapter = _unet(dims)
    shape = (16,) * dims
    img = _image(shape)
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s // 4, s // 2) for s in shape)] = True
    target = targets.region(1, mask)
    layer = adapter.default_layer((1, *shape))
    table = channel_weights(adapter, img, target, layer)
    assert table.attrs["layer"] == layer and list(table["rank"]) == list(range(1, len(table) + 1))
    assert (np.diff(table["contribution"]) <= 0).all()  # ranked
    acts = activations(adapter, img, layer)
    w = table.sort_values("channel")["weight"].to_numpy()
    cam = np.maximum(np.tensordot(w, acts, axes=1), 0)
    ref = explain(adapter, img, target, method="gradcam", layer=layer).attribution
    if cam.shape != ref.shape:  # layer below the input resolution: compare on the layer grid
        from medseg_xai.explain.gradcam import upsample

        cam = upsample(torch.from_numpy(cam)[None, None].float(), shape)[0, 0].numpy()
    np.testing.assert_allclose(cam, ref, rtol=1e-4, atol=1e-6 * float(np.abs(ref).max()))
    head, maps = top_channels(adapter, img, target, layer, k=3)
    assert len(head) == 3 and maps.shape == (3, *acts.shape[1:])
    np.testing.assert_array_equal(maps[0], acts[head["channel"].iloc[0]])


def test_model_tab_shows_layers_kernels_and_top_channels():
    from medseg_xai.widgets.model_tab import ModelTab

    adapter = _unet(2)
    img = _image((16, 16))
    mask = np.zeros((16, 16), bool)
    mask[4:8, 4:8] = True
    target = targets.region(1, mask)
    layer = "model.0.conv.unit0.conv"
    tab = ModelTab(adapter, img, target=target, layer=layer, k=3)
    assert tab.last_error is None, tab.last_error
    assert tab.layer == layer and tab.kernel_image.value[:4] == b"\x89PNG"
    assert tab.activation_image.value[:4] == b"\x89PNG"
    expected = channel_weights(adapter, img, target, layer).head(3)
    assert tab.top["channel"].tolist() == expected["channel"].tolist()
    assert "model.0.conv.unit0.conv" in tab.table_html.value
    tab.set_case(target=None)
    assert tab.top is None and "pick a target" in tab.channels_html.value
