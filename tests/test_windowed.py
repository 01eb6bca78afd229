"""Window-by-window input gradients equal the whole-volume ones (issue #25)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

import medseg_xai as mx
import medseg_xai.explain.captum_methods as cm
from medseg_xai.explain.core import explain
from medseg_xai.explain.windowed import window_plan, windowed_gradient
from medseg_xai.targets import region


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(3, 1, 2, (4, 8, 16), (2, 2), num_res_units=1).eval()


@pytest.fixture(scope="module")
def volume():
    x = np.random.default_rng(0).normal(size=(1, 16, 20, 12)).astype(np.float32)
    mask = np.zeros(x.shape[1:], bool)
    mask[3:8, 12:18, 2:7] = True
    return x, mask


def _whole(adapter, x, target, method, **kw):
    saved = cm.WINDOWED_METHODS
    cm.WINDOWED_METHODS = ()  # the whole-volume backward pass through MONAI's blend
    try:
        return explain(adapter, x, target, method, batch_size=4, **kw)
    finally:
        cm.WINDOWED_METHODS = saved


ALL = [("saliency", {}), ("input_x_gradient", {}), ("integrated_gradients", {"n_steps": 3}),
       ("smoothgrad", {"n_samples": 2})]
CASES = [
    ({"roi_size": (8, 8, 8), "overlap": 0.25, "sw_batch_size": 2}, False, ALL),
    # gaussian blend, a margin target (non-linear in the blended logits), and a window longer
    # than the image along W: MONAI's reflect padding
    ({"roi_size": (8, 12, 16), "overlap": 0.5, "mode": "gaussian", "padding_mode": "reflect"},
     True, ALL[:1] + ALL[2:3]),
]


@pytest.mark.parametrize(("cfg", "margin", "methods"), CASES)
def test_windowed_attributions_equal_the_whole_volume(net, volume, cfg, margin, methods):
    x, mask = volume
    adapter = mx.SegmentationAdapter(net, sliding_window=cfg, divisor=4)
    target = region(1, mask, margin=margin)
    for method, kw in methods:
        ours = explain(adapter, x, target, method, batch_size=4, **kw)
        whole = _whole(adapter, x, target, method, **kw)
        a, b = ours.attribution.ravel(), whole.attribution.ravel()
        assert np.abs(b).max() > 0
        assert np.corrcoef(a, b)[0, 1] >= 0.999999, method
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
        if ours.convergence_delta is not None:
            assert ours.convergence_delta == pytest.approx(whole.convergence_delta, rel=1e-4)


def test_only_windows_on_the_target_support_run(net, volume):
    x, mask = volume
    adapter = mx.SegmentationAdapter(net, sliding_window={"roi_size": 8, "overlap": 0.0},
                                     divisor=4)
    plan = window_plan(x.shape[1:], adapter.sliding_window, torch.device("cpu"), torch.float32)
    calls = []
    handle = net.register_forward_hook(lambda _m, i, _o: calls.append(i[0].shape[0]))
    try:
        cot = torch.zeros((1, 2, *x.shape[1:]))
        cot[0, 1][torch.from_numpy(mask)] = 1.0
        windowed_gradient(adapter, torch.from_numpy(x[None]), cot)
    finally:
        handle.remove()
    # windows along (16, 20, 12): {0:8, 8:16} x {0:8, 8:16, 12:20} x {0:8, 4:12}; the target
    # box 3:8 x 12:18 x 2:7 meets 0:8 x {8:16, 12:20} x {0:8, 4:12} only
    assert len(plan.slices) == 2 * 3 * 2 and sum(calls) == 4


def test_gradcam_skips_windows_without_target(net, volume):
    x, mask = volume
    adapter = mx.SegmentationAdapter(net, sliding_window={"roi_size": 8, "overlap": 0.0},
                                     divisor=4)
    calls = []
    handle = net.register_forward_hook(lambda _m, i, _o: calls.append(i[0].shape[0]))
    try:
        cam = explain(adapter, x, region(1, mask), "gradcam", layer="model.0")
    finally:
        handle.remove()
    # the four windows on the target: a forward pass each (Grad-CAM's backward reuses it)
    assert sum(calls) == 4 and np.isfinite(cam.attribution).all() and cam.attribution.max() > 0
