"""Memory budget and the out-of-memory answer (#25)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

import medseg_xai as mx
from medseg_xai.explain.budget import OutOfMemory, parse_memory, plan_batches
from medseg_xai.explain.core import explain
from medseg_xai.explain.miss import MissSettings, explain_miss
from medseg_xai.targets import region

pytestmark = pytest.mark.usefixtures("one_thread")


def test_parse_memory() -> None:
    assert parse_memory("8GB") == 8 * 10**9
    assert parse_memory("512 MiB") == 512 * 2**20
    assert parse_memory(1024) == 1024 and parse_memory(None) is None
    for bad in ("lots", "-1GB", 0, "0MB", True):
        with pytest.raises(ValueError, match="max_memory"):
            parse_memory(bad)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    net = UNet(3, 1, 2, (4, 8), (2,), num_res_units=1).eval()
    ad = mx.SegmentationAdapter(net, sliding_window={"roi_size": 8, "sw_batch_size": 4},
                                divisor=2)
    x = np.random.default_rng(0).normal(size=(1, 12, 12, 16)).astype(np.float32)
    mask = np.zeros(x.shape[1:], bool)
    mask[4:8, 4:8, 6:12] = True
    return ad, x, region(1, mask, margin=True)


def test_budget_picks_batches_and_keeps_the_result(case) -> None:
    ad, x, target = case
    small = plan_batches(ad, (1, 1, 12, 12, 16), 10**5)
    large = plan_batches(ad, (1, 1, 12, 12, 16), 10**10)
    assert small == (1, 1) and large[0] > 1 and large[1] > 1
    free = explain(ad, x, target, "integrated_gradients", n_steps=4)
    tight = explain(ad, x, target, "integrated_gradients", n_steps=4, max_memory="100kB")
    assert tight.params["window_batch"] == 1 and tight.params["batch_size"] == 1
    np.testing.assert_allclose(tight.attribution, free.attribution, rtol=1e-4,
                               atol=1e-6 * np.abs(free.attribution).max())
    auto = explain(ad, x, target, "saliency", max_memory="auto")
    assert auto.params["max_memory"] > 0


def test_out_of_memory_says_what_to_lower(case, monkeypatch) -> None:
    ad, x, target = case

    def boom(_x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(ad, "_model_forward", boom)
    with pytest.raises(OutOfMemory, match=r"lower batch_size or max_memory.*sw_batch_size \(4\)"):
        explain(ad, x, target, "saliency")
    ref = target.mask.astype(np.uint8)
    with pytest.raises(OutOfMemory, match=r"explain_miss\(\) ran out of host memory"):
        explain_miss(ad, x, ref, "ref-1", settings=MissSettings(methods=()))
