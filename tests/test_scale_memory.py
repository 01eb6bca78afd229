"""Peak memory of windowed explanations grows with the window, not the volume (#25).

Each measurement runs in a fresh interpreter: the peak resident size (``VmHWM``, reset just
before the call) during one call, above the resident size just before it. What the volume itself costs (arrays of the
volume's size: the image, probe images, logits, cotangents, the attribution) is taken out as
``ARRAYS x`` the image's bytes, counted generously; the rest (the network's activations) must
grow by less than 1.5x when the voxel count grows 8x. The whole-volume backward pass, measured
the same way, grows several-fold: the check can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from monai.networks.nets import UNet
import medseg_xai as mx
import medseg_xai.explain.captum_methods as cm
import medseg_xai.explain.miss as mm
from medseg_xai.explain.core import explain
from medseg_xai.explain.miss import MissSettings, explain_miss
from medseg_xai.targets import region

work, scale, windowed = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if not windowed:
    cm.WINDOWED_METHODS = ()
    mm.LOCAL_PROBES = False
torch.manual_seed(0)
net = UNet(3, 1, 2, (8, 16, 32), (2, 2), num_res_units=1).eval()
ad = mx.SegmentationAdapter(net, sliding_window={"roi_size": 16, "sw_batch_size": 2}, divisor=4)
shape = (16 * scale, 32 * scale, 32 * scale)
x = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
grid = np.ogrid[tuple(slice(0, s) for s in shape)]
mask = sum((g - s // 2) ** 2 for g, s in zip(grid, shape)) <= 9
x[0][mask] += 1.0
warm = np.zeros((16, 16, 16), bool)
warm[6:9, 6:9, 6:9] = True
explain(ad, x[:, :16, :16, :16], region(1, warm), "saliency")  # first-call allocations
def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))
# reset the high-water mark (VmHWM): the peak of imports and warm-up must not count
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
if work == "saliency":
    explain(ad, x, region(1, mask, margin=True), "saliency")
else:
    explain_miss(ad, x, mask.astype(np.uint8), "ref-1", settings=MissSettings(
        layer="model.0", methods=("gradcam", "integrated_gradients"),
        method_kwargs={"integrated_gradients": {"n_steps": 4}}))
peak = status("VmHWM:")
print(json.dumps({"peak": peak - before, "volume": x.nbytes}))
"""

# volume-sized float32 arrays held at once, counted generously: saliency (image, logits and
# cotangent of 2 classes, their padded / divided copies, gradient, attribution); the miss
# analysis adds its probe images and masks and IG's 4 steps of each
ARRAYS = {"saliency": 16, "miss": 64}


def _peak(work: str, scale: int, windowed: bool = True) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT, work, str(scale), str(int(windowed))],
                         capture_output=True, text=True, env=env, timeout=600, check=True)
    m = json.loads(out.stdout.strip().splitlines()[-1])
    return m["peak"] - ARRAYS[work] * m["volume"]


@pytest.mark.parametrize("work", ["saliency", "miss"])
def test_peak_memory_grows_with_the_window_not_the_volume(work) -> None:
    small, large = _peak(work, 1), _peak(work, 2)  # 8x the voxels
    assert small > 0
    assert large < 1.5 * small, (work, small, large)
    if work == "saliency":  # the whole-volume backward pass keeps every window's activations
        assert _peak(work, 2, windowed=False) > 1.5 * small
