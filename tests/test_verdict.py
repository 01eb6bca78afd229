"""The ring measurements re-exported by widgets.verdict, and verdict_html (the view of MissAnalysis)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.widgets.verdict import (
    contrast_sweep,
    contrast_to_noise,
    local_background,
    scale_contrast,
)


def _blob_image(shape=(12, 16, 16), centre=(6, 8, 8), radius=2.5, contrast=2.0, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    mask = dist <= radius
    img = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
    img[mask] += contrast
    return img, mask


class _IntensityModel(torch.nn.Module):
    """Two-class 1x1 conv: foreground logit minus background logit = 2 * (x - 1.5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0] = 2.0
            self.conv.bias.copy_(torch.tensor([0.0, -3.0]))

    def forward(self, x):
        return self.conv(x)


def test_cnr_matches_a_hand_computation() -> None:
    img, mask = _blob_image()
    ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
    expected = (img[mask].mean() - np.median(img[ring])) / img[ring].std()
    assert contrast_to_noise(img, mask) == pytest.approx(expected, rel=1e-6)
    # A channel axis changes nothing; the second channel is measured when asked.
    both = np.stack([img, -img])
    assert contrast_to_noise(both, mask) == pytest.approx(expected, rel=1e-6)
    assert contrast_to_noise(both, mask, channel=1) < 0


def test_cnr_excluding_other_lesions_ignores_their_intensity() -> None:
    img, mask = _blob_image()
    other = np.zeros_like(mask)
    other[6, 8, 12] = True  # a voxel of another lesion inside the ring
    bright = img.copy()
    bright[other] = 1e4
    assert contrast_to_noise(bright, mask, exclude=other) == pytest.approx(
        contrast_to_noise(img, mask, exclude=other)
    )
    assert contrast_to_noise(bright, mask) != pytest.approx(contrast_to_noise(img, mask))


@given(factor=st.floats(-3, 5, allow_nan=False), seed=st.integers(0, 10_000))
def test_scaling_contrast_scales_cnr_and_keeps_the_outside(factor: float, seed: int) -> None:
    img, mask = _blob_image(shape=(8, 10, 10), centre=(4, 5, 5), radius=1.8, seed=seed)
    out = scale_contrast(img, mask, factor)
    assert out.shape == (1, *img.shape)
    np.testing.assert_array_equal(out[0][~mask], img[~mask])
    # The ring (background) is untouched, so CNR is exactly proportional to the factor.
    assert contrast_to_noise(out, mask) == pytest.approx(
        factor * contrast_to_noise(img, mask), rel=1e-4, abs=1e-4
    )


def test_scale_contrast_identity_and_flattening() -> None:
    img, mask = _blob_image()
    np.testing.assert_allclose(scale_contrast(img, mask, 1.0)[0], img, rtol=0, atol=1e-6)
    bg, _ = local_background(img, mask)
    assert np.allclose(scale_contrast(img, mask, 0.0)[0][mask], bg)


def test_contrast_sweep_agrees_with_the_adapter_and_rises_with_contrast() -> None:
    img, mask = _blob_image(contrast=1.0)
    adapter = SegmentationAdapter(_IntensityModel(), spatial_dims=3)
    sweep = contrast_sweep(adapter, img, mask, factors=(0.0, 1.0, 2.0, 4.0))
    assert list(sweep.columns) == ["factor", "mean_prob", "max_prob", "covered_fraction",
                                   "detected"]
    # Factor 1 is the image as acquired: the numbers equal a direct run of the model.
    p = adapter.probabilities(img[None]).numpy()[0, 1]
    row = sweep[sweep["factor"] == 1.0].iloc[0]
    assert row["mean_prob"] == pytest.approx(float(p[mask].mean()), rel=1e-5)
    assert row["max_prob"] == pytest.approx(float(p[mask].max()), rel=1e-5)
    assert row["covered_fraction"] == pytest.approx(float((p[mask] > 0.5).mean()))
    # The model is monotone in intensity and the lesion is brighter than its background.
    assert sweep["mean_prob"].is_monotonic_increasing
    assert sweep["mean_prob"].iloc[-1] > sweep["mean_prob"].iloc[0] + 0.2
    assert bool(sweep["detected"].iloc[-1])
    assert sweep["detected"].tolist() == (sweep["covered_fraction"] >= 0.1).tolist()


def test_contrast_sweep_rejects_bad_input() -> None:
    img, mask = _blob_image()
    adapter = SegmentationAdapter(_IntensityModel(), spatial_dims=3)
    with pytest.raises(ValueError, match="mask"):
        contrast_sweep(adapter, img, np.zeros_like(mask))
    with pytest.raises(ValueError, match="factors"):
        contrast_sweep(adapter, img, mask, factors=())
    with pytest.raises(ValueError, match="class_index"):
        contrast_sweep(adapter, img, mask, class_index=5)
    with pytest.raises(ValueError, match="shape"):
        contrast_sweep(adapter, img, mask[:-1])


# --- the view of MissAnalysis ---------------------------------------------------------------
def test_verdict_html_shows_only_what_the_analysis_holds() -> None:
    from test_miss_validation import ContrastDetector, _adapter, scan

    from medseg_xai.explain.miss import MissSettings, explain_miss
    from medseg_xai.widgets.verdict import verdict_html

    img, lab = scan([((24, 20), 3, 0.15)], seed=3)
    a = explain_miss(_adapter(ContrastDetector()), img, lab, "ref-1",
                     settings=MissSettings(methods=("feature_ablation",)))
    page = verdict_html(a)
    assert page.startswith('<div class="mx-miss">') and page.endswith("</div>")
    assert f"<b>{a.verdict_lines[0]}</b>" in page
    assert "Causes: <b>contrast</b>" in page
    assert page.count("<li>") == len(a.verdict_lines) - 1
    # one table row per probe setting and per method, values as the analysis holds them
    assert page.count("<tr>") == 1 + len(a.probes) + 1 + len(a.evidence)
    assert "constant map" in page
    assert "<script" not in verdict_html(a, tables=False)


def test_verdict_html_escapes() -> None:
    from types import SimpleNamespace

    from medseg_xai.widgets.verdict import verdict_html

    fake = SimpleNamespace(verdict_lines=["<b>x</b> & y", "- z"], causes=[],
                           probes=pd.DataFrame(), evidence=pd.DataFrame())
    page = verdict_html(fake)
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in page and "none named" in page
