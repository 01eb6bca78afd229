"""The miss analysis under sliding windows runs only the windows its probes read (#25)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import medseg_xai.explain.miss as miss_mod
from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.explain.miss import MissSettings, explain_miss

pytestmark = pytest.mark.usefixtures("one_thread")


class _WindowContrast(nn.Module):
    """A lesion detector normalising each window (as instance norm does)."""

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Conv3d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.gain.weight.fill_(1.0)

    def forward(self, x):
        z = (x - x.mean(dim=(2, 3, 4), keepdim=True)) / x.std(dim=(2, 3, 4), keepdim=True)
        z = self.gain(z)
        return 40.0 * (z - F.avg_pool3d(z, 5, 1, 2, count_include_pad=False) - 0.5)


def _case():
    rng = np.random.default_rng(0)
    shape = (16, 24, 40)
    zz, yy, xx = np.indices(shape)
    vol = np.ones(shape)
    vol[:, :5] = 2.0
    faint = (zz - 8) ** 2 + (yy - 14) ** 2 + (xx - 10) ** 2 <= 6
    seen = (zz - 8) ** 2 + (yy - 14) ** 2 + (xx - 30) ** 2 <= 6
    img = (vol + 0.04 * faint + 0.8 * seen + rng.normal(0, 0.02, shape))[None]
    return img.astype(np.float32), (faint | seen).astype(np.uint8)


def test_local_probes_equal_the_whole_volume_probes(monkeypatch) -> None:
    img, lab = _case()
    ad = SegmentationAdapter(_WindowContrast().eval(), spatial_dims=3, activation="sigmoid",
                             sliding_window={"roi_size": (8, 12, 12), "overlap": 0.25,
                                             "sw_batch_size": 4}, divisor=None)
    calls: list[int] = []
    handle = ad.model.register_forward_hook(lambda _m, i, _o: calls.append(i[0].shape[0]))
    try:
        local = explain_miss(ad, img, lab, "ref-1", spacing=(2.0, 1.0, 1.0),
                             settings=MissSettings(methods=()))
        n_local = sum(calls)
        calls.clear()
        monkeypatch.setattr(miss_mod, "LOCAL_PROBES", False)
        whole = explain_miss(ad, img, lab, "ref-1", spacing=(2.0, 1.0, 1.0),
                             settings=MissSettings(methods=()))
        n_whole = sum(calls)
    finally:
        handle.remove()
    assert local.status == whole.status
    assert local.causes == whole.causes
    assert local.probes["effect"].any()  # the probes move the lesion's probability
    a, b = local.probes, whole.probes
    assert a["setting"].tolist() == b["setting"].tolist()
    for col in ("max_prob", "mean_prob", "covered_fraction", "change"):
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), atol=1e-4,
                                   rtol=0)
    assert a["effect"].tolist() == b["effect"].tolist()
    # every probe image ran whole (all windows) before; now only the windows on its mask
    assert n_local < n_whole / 2
