"""The miss verdict's measurements (contrast, contrast sweep) and its wording rules."""

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
    miss_verdict,
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


# --- verdict wording ------------------------------------------------------------------------

DETECTED = pd.DataFrame({"volume_mm3": [300.0, 520.0, 410.0, 800.0], "cnr": [3.1, 2.5, 4.0, 3.3]})


def _missed(**kw):
    row = {"lesion_id": "ref-3", "status": "missed", "volume_mm3": 40.0, "cnr": 0.8,
           "max_prob": 0.31, "overlap_fraction": 0.0}
    row.update(kw)
    return row


def test_small_faint_lesion_verdict_states_the_numbers() -> None:
    sweep = pd.DataFrame({"factor": [0.5, 1.0, 2.0, 3.0], "max_prob": [0.1, 0.31, 0.62, 0.9],
                          "mean_prob": [0.05, 0.2, 0.5, 0.8],
                          "covered_fraction": [0.0, 0.0, 0.3, 0.9],
                          "detected": [False, False, True, True]})
    v = miss_verdict(_missed(), DETECTED, attribution_inside=0.02, lesion_fraction=0.01,
                     method="gradcam", sweep=sweep)
    assert v.reasons[0] == "low_contrast"  # confirmed by the sweep: strongest reason
    assert set(v.reasons) == {"low_contrast", "small", "low_probability", "attention_elsewhere"}
    assert v.headline.startswith("ref-3 was missed, most likely because its contrast is too low")
    text = v.text
    assert "40 mm³" in text and "lower than all 4 detected lesion(s)" in text
    assert "median 465 mm³" in text  # median of the detected volumes
    assert "0.31" in text and "below the 0.50 threshold by 0.19" in text
    assert "2% of the positive mass" in text and "x2" in text
    by_name = {f.name: f for f in v.findings}
    assert by_name["sweep_detect_factor"].value == 2.0
    assert by_name["cnr"].value == 0.8
    assert "<b>" in v.to_html()


def test_verdict_when_a_signed_map_has_no_positive_evidence() -> None:
    # localisation() is NaN when a signed map (relu=False Grad-CAM) has no positive value.
    v = miss_verdict(_missed(), DETECTED, attribution_inside=float("nan"), lesion_fraction=0.01,
                     method="gradcam")
    by_name = {f.name: f for f in v.findings}
    assert np.isnan(by_name["attribution_inside"].value)
    assert "no positive evidence for a lesion anywhere" in v.text
    assert "attention_elsewhere" not in v.reasons
    # No explanation at all: no attribution finding.
    plain = miss_verdict(_missed(), DETECTED)
    assert "attribution_inside" not in {f.name for f in plain.findings}


def test_verdict_when_nothing_explains_the_miss() -> None:
    sweep = pd.DataFrame({"factor": [1.0, 3.0], "max_prob": [0.2, 0.3], "mean_prob": [0.1, 0.2],
                          "covered_fraction": [0.0, 0.0], "detected": [False, False]})
    v = miss_verdict(_missed(volume_mm3=600.0, cnr=3.5), DETECTED, attribution_inside=0.7,
                     lesion_fraction=0.01, sweep=sweep)
    assert "small" not in v.reasons and "low_contrast" not in v.reasons
    assert "attention_elsewhere" not in v.reasons
    assert "contrast alone does not explain" in v.text
    assert "looks at the lesion" in v.text
    # Only the below-threshold probability remains, and the headline says so.
    assert v.reasons == ("low_probability",)
    assert "probability stays below the threshold" in v.headline


def test_partial_detection_and_other_statuses() -> None:
    v = miss_verdict(_missed(max_prob=0.9, overlap_fraction=0.05), DETECTED)
    assert "partial" in v.reasons and "only 5% of its voxels" in v.text
    det = miss_verdict({"lesion_id": "ref-1", "status": "detected", "volume_mm3": 300.0,
                        "max_prob": 0.97, "dice": 0.81}, DETECTED)
    assert det.headline == "ref-1 was detected (lesion Dice 0.81)." and det.reasons == ()
    fp = miss_verdict({"lesion_id": "pred-2", "status": "false_positive", "volume_mm3": 12.0,
                       "max_prob": 0.7}, DETECTED)
    assert "false positive" in fp.headline


def test_verdict_without_detected_lesions_and_bad_input() -> None:
    v = miss_verdict(_missed(), None)
    assert "no detected lesion to compare with" in v.text and "small" not in v.reasons
    with pytest.raises(ValueError, match="threshold"):
        miss_verdict(_missed(), DETECTED, threshold=1.5)
    with pytest.raises(ValueError, match="ref-3.*status"):
        miss_verdict(_missed(status="lost"), DETECTED)


def test_verdict_html_is_escaped() -> None:
    v = miss_verdict(_missed(lesion_id="<script>"), DETECTED)
    assert "<script>" not in v.to_html() and "&lt;script&gt;" in v.to_html()


# --- the view of MissAnalysis ---------------------------------------------------------------
def test_verdict_html_shows_only_what_the_analysis_holds() -> None:
    from test_miss_validation import ContrastDetector, _adapter, scan

    from medseg_xai.explain.miss import explain_miss
    from medseg_xai.widgets.verdict import verdict_html

    img, lab = scan([((24, 20), 3, 0.15)], seed=3)
    a = explain_miss(_adapter(ContrastDetector()), img, lab, "ref-1", methods=("feature_ablation",))
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
