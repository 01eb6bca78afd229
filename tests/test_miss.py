"""explain_miss and its probes: interventions, rules, gates, false positives, JSON, 3D."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from test_miss_validation import (
    ContrastDetector,
    IntensityDetector,
    SizeDetector,
    _adapter,
    _disc,
    scan,
)
from torch import nn

import medseg_xai as mx
from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.explain import probes as P
from medseg_xai.explain.miss import CAUSES, MissAnalysis, MissSettings, explain_miss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def contrast_model():
    return _adapter(ContrastDetector())


# ------------------------------------------------------------------------------ probes
def test_fill_lesion_recovers_a_background_gradient() -> None:
    yy, xx = np.indices((32, 32))
    background = 1.0 + 0.02 * xx  # a tissue gradient the fill must follow
    m = _disc((16, 16), 4, (32, 32))
    img = (background + 0.8 * m)[None].astype(np.float32)
    filled = P.fill_lesion(img, m)
    assert np.array_equal(filled[0][~m], img[0][~m])  # outside untouched
    assert np.abs(filled[0][m] - background[m]).max() < 0.03
    # the contrast probe is the fill plus the scaled deviation
    np.testing.assert_allclose(P.scale_lesion_contrast(img, m, 0.0, filled=filled), filled)
    np.testing.assert_allclose(P.scale_lesion_contrast(img, m, 1.0, filled=filled), img, atol=1e-6)
    doubled = P.scale_lesion_contrast(img, m, 2.0, filled=filled)
    np.testing.assert_allclose(doubled[0][m] - filled[0][m], 2 * (img[0][m] - filled[0][m]),
                               rtol=1e-5, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(scale=st.sampled_from([0.5, 1.5, 2.0]), radius=st.integers(3, 5))
def test_resize_scales_the_area_and_keeps_the_contrast(scale, radius) -> None:
    m = _disc((20, 20), radius, (40, 40))
    img = (np.ones((40, 40)) + 0.5 * m)[None].astype(np.float32)
    out, m2 = P.resize_lesion(img, m, scale)
    assert m2.sum() == pytest.approx(m.sum() * scale ** 2, rel=0.3)
    # contrast inside the new lesion's core is the old one (linear resampling of a flat disc)
    core = ndimage.binary_erosion(m2, iterations=1) if m2.sum() > 9 else m2
    assert np.median(out[0][core]) == pytest.approx(1.5, abs=0.05)
    assert np.allclose(out[0][~ndimage.binary_dilation(m | m2, iterations=1)], 1.0)


def test_move_transplants_the_lesion_onto_the_new_background() -> None:
    img, lab = scan([((20, 12), 3, 0.5)], noise=0.0)
    m = lab > 0
    out, m2 = P.move_lesion(img, m, (0, 14))
    assert m2.sum() == m.sum() and not (m2 & m).any()
    assert np.allclose(out[0][m], 1.0, atol=5e-3)  # removed where it was
    assert np.allclose(out[0][m2], 1.5, atol=5e-3)  # same contrast where it goes
    with pytest.raises(ValueError, match="out of the image"):
        P.move_lesion(img, m, (0, 40))


def test_plausible_positions_stay_in_the_same_tissue_and_spread_out() -> None:
    img, lab = scan([((22, 10), 3, 0.5)])
    m = lab > 0
    shifts = P.plausible_positions(img, m, 3)
    assert len(shifts) == 3
    for s in shifts:
        moved = P._shift(m, s)
        assert moved.sum() == m.sum() and not (moved & m).any()
        rows = np.nonzero(moved)[0]
        assert rows.min() >= 8 + 3  # never into (or next to) the bright band
    # farthest-point sampling: the first is farther from the lesion than the others
    d = [np.hypot(*s) for s in shifts]
    assert d[0] == max(d)


def test_intensity_matching_undoes_a_gain_without_denoising() -> None:
    refs = [scan([((24, 20), 3, 0.5)], seed=s)[0] for s in (1, 2)]
    dark, lab = scan([((24, 20), 3, 0.5)], scale=0.6, noise=0.05, seed=3)
    matched = P.match_intensity(dark, refs)
    assert np.median(matched[0][12:, :][lab[12:, :] == 0]) == pytest.approx(1.0, abs=0.02)
    assert np.median(matched[0][lab > 0]) == pytest.approx(1.5, abs=0.05)
    # the tissue-median map is linear here: noise scales with the gain only (x 1/0.6) ...
    assert P.noise_sigma(matched[0]) == pytest.approx(P.noise_sigma(dark[0]) / 0.6, rel=0.1)
    # ... while cumulative matching narrows the noisy peak to the references' width
    squeezed = P.match_intensity(dark, refs, method="histogram")
    assert P.noise_sigma(squeezed[0]) < 0.6 * P.noise_sigma(matched[0])
    with pytest.raises(ValueError, match="reference_images"):
        P.match_intensity(dark, [])


@settings(max_examples=10, deadline=None)
@given(sigma=st.floats(0.01, 0.2), seed=st.integers(0, 100))
def test_noise_sigma_estimates_white_noise_and_denoising_lowers_it(sigma, seed) -> None:
    img, _ = scan([((24, 20), 4, 0.5)], noise=sigma, seed=seed)
    est = P.noise_sigma(img[0])
    assert est == pytest.approx(sigma, rel=0.2)
    assert P.noise_sigma(P.denoise(img, 1.0)[0]) < 0.5 * est


# ------------------------------------------------------------------------------ explain_miss
def test_missed_faint_lesion_names_contrast_only(contrast_model) -> None:
    img, lab = scan([((24, 20), 3, 0.15), ((30, 32), 3, 0.45)], seed=3)
    a = mx.explain_miss(contrast_model, img, lab, "ref-1", settings=mx.MissSettings(methods=()))
    assert isinstance(a, MissAnalysis)
    assert a.status == "missed" and a.causes == ["contrast"]
    assert list(a.probes.columns[:6]) == ["probe", "setting", "value", "max_prob", "mean_prob",
                                          "covered_fraction"]
    assert a.probes["probe"].iloc[0] == "original"
    # the rule: every effect row changes detection or the highest probability by the margin
    eff = a.probes[a.probes["effect"]]
    assert ((eff["change"] >= a.settings["margin"]) | eff["detected"]).all()
    # the detected ref-2 moved into this place stays detected: no location effect
    swap = a.probes[a.probes["setting"].str.startswith("detected ref-2")]
    assert len(swap) == 1 and bool(swap["detected"].iloc[0]) and not swap["effect"].iloc[0]
    assert "threshold 0.50" in a.verdict and "Probes re-run through the model name: contrast" \
        in a.verdict
    assert "intensity: not probed (no reference images given)" in a.verdict
    assert "Too few detected lesions" in a.verdict


def test_threshold_is_used_throughout(contrast_model) -> None:
    img, lab = scan([((24, 20), 3, 0.15)], seed=3)
    base = explain_miss(contrast_model, img, lab, "ref-1",
                        settings=MissSettings(methods=(), probes=["contrast"]))
    p0 = float(base.probes["max_prob"].iloc[0])
    # a threshold just below its highest probability makes the same lesion partly called
    low = explain_miss(contrast_model, img, lab, "ref-1",
                       settings=MissSettings(methods=(), probes=["contrast"], threshold=p0 * 0.5,
                                             overlap_threshold=0.01))
    assert low.status == "detected" and low.causes == []
    assert low.settings["threshold"] == pytest.approx(p0 * 0.5)


def test_false_positive_and_no_reference(contrast_model) -> None:
    img, _ = scan([((24, 20), 3, 0.45)], seed=4)
    empty = np.zeros(img.shape[1:], np.uint8)
    # the band's lower edge is called lesion too; find the blob's component
    pred = contrast_model.probabilities(img).numpy()[0, 0] > 0.5
    lab, n = ndimage.label(pred, np.ones((3, 3)))
    k = int(lab[24, 20])
    fp = explain_miss(contrast_model, img, empty, f"pred-{k}", settings=MissSettings(methods=()))
    assert fp.status == "false_positive" and fp.causes[0] == "contrast"
    no_ref = explain_miss(contrast_model, img, None, f"pred-{k}",
                          settings=MissSettings(methods=()))
    assert no_ref.status == "predicted" and no_ref.causes == fp.causes
    # a drawn region the model does not call
    drawn = _disc((30, 8), 2)
    d = explain_miss(contrast_model, img, None, drawn, settings=MissSettings(methods=()))
    assert d.lesion_id == "region" and d.status == "missed" and d.causes == []
    assert "name no cause" in d.verdict


def test_input_errors_name_the_field(contrast_model) -> None:
    img, lab = scan([((24, 20), 3, 0.45)])
    with pytest.raises(ValueError, match="lesion 'ref-3': the reference mask has 1"):
        explain_miss(contrast_model, img, lab, "ref-3", settings=MissSettings(methods=()))
    with pytest.raises(ValueError, match="needs ref"):
        explain_miss(contrast_model, img, None, "ref-1", settings=MissSettings(methods=()))
    with pytest.raises(ValueError, match="lesion: expected"):
        explain_miss(contrast_model, img, lab, "lesion-1", settings=MissSettings(methods=()))
    with pytest.raises(ValueError, match="threshold"):
        explain_miss(contrast_model, img, lab, "ref-1", settings=MissSettings(threshold=1.5))
    with pytest.raises(ValueError, match="methods: unknown"):
        explain_miss(contrast_model, img, lab, "ref-1",
                     settings=MissSettings(methods=("gradcam", "lime")))
    with pytest.raises(ValueError, match="probes: unknown probe 'blur'"):
        explain_miss(contrast_model, img, lab, "ref-1",
                     settings=MissSettings(probes=["blur"], methods=()))


def test_to_dict_is_json_and_deterministic(contrast_model) -> None:
    img, lab = scan([((24, 20), 3, 0.15), ((30, 32), 3, 0.45)], seed=3)
    runs = [explain_miss(contrast_model, img, lab, "ref-1",
                         settings=MissSettings(methods=("gradcam",), seed=1))
            for _ in range(2)]
    texts = [json.dumps(r.to_dict(), sort_keys=True, allow_nan=False) for r in runs]
    assert texts[0] == texts[1]
    d = json.loads(texts[0])
    assert d["causes"] == ["contrast"] and d["probes"][0]["probe"] == "original"
    assert set(d["evidence"][0]) >= {"method", "enrichment", "completeness_error", "passed",
                                     "reason"}
    assert "gradcam" in runs[0].attributions and runs[0].attributions["gradcam"].shape == (40, 40)
    assert runs[0].mask.sum() == (_disc((24, 20), 3)).sum()


def test_comparison_needs_the_stated_minimum(contrast_model) -> None:
    img, lab = scan([((24, 20), 3, 0.15)], seed=3)
    few = pd.DataFrame({"volume_mm3": [50.0, 60.0], "status": "detected"})
    a = explain_miss(contrast_model, img, lab, "ref-1", detected_lesions=few,
                     settings=MissSettings(methods=(), probes=["contrast"]))
    assert not a.comparison["enough"] and "Too few detected lesions" in a.verdict
    cohort = pd.DataFrame({"volume_mm3": [10, 20, 40, 50, 80, 90, 5.0],
                           "cnr": [3, 4, 5, 6, 7, 8, 9.0],
                           "status": ["detected"] * 6 + ["missed"]})
    b = explain_miss(contrast_model, img, lab, "ref-1", detected_lesions=cohort,
                     spacing=(1.0, 1.0), settings=MissSettings(methods=(), probes=["contrast"]))
    vol = b.measurements["volume_mm3"]
    assert b.comparison["n_detected"] == 6  # the missed row is not a detected lesion
    assert b.comparison["larger_share"] == pytest.approx(np.mean(np.array([10, 20, 40, 50, 80,
                                                                            90]) > vol))
    assert "Compared with 6 detected lesions (the cohort)" in b.verdict


# ------------------------------------------------------------------------------ evidence gates
def test_gates_exclude_constant_and_randomisation_proof_maps(contrast_model) -> None:
    img, lab = scan([((24, 20), 3, 0.15)], seed=3)
    a = explain_miss(contrast_model, img, lab, "ref-1",
                     settings=MissSettings(methods=("feature_ablation", "integrated_gradients")))
    ev = a.evidence.set_index("method")
    # one input channel: feature ablation attributes one number to every voxel
    assert not ev.loc["feature_ablation", "passed"]
    assert ev.loc["feature_ablation", "reason"] == "constant map"
    # the detector's only parameter is a gain: randomising it leaves the ranks as they were
    assert not ev.loc["integrated_gradients", "passed"]
    assert "parameter randomisation" in ev.loc["integrated_gradients", "reason"]
    assert ev.loc["integrated_gradients", "completeness_error"] < 0.05
    assert "excluded from the verdict (constant map)" in a.verdict
    assert a.causes == ["contrast"]  # attributions never change the causes


def test_zero_baseline_on_a_normalising_model_is_excluded(contrast_model) -> None:
    img, lab = scan([((24, 20), 3, 0.15)], seed=3)
    a = explain_miss(contrast_model, img, lab, "ref-1",
                     settings=MissSettings(
                         methods=("integrated_gradients",), probes=[],
                         method_kwargs={"integrated_gradients": {"baseline": 0.0}}))
    row = a.evidence.iloc[0]
    assert not row["passed"] and "not finite at the baseline" in row["reason"]


class _Learned(nn.Module):
    """A small random CNN with a sigmoid head: its maps depend on many parameters."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        return self.head(F.relu(self.c2(F.relu(self.c1(x)))))


def test_learned_model_maps_pass_the_gates() -> None:
    ad = SegmentationAdapter(_Learned().eval(), spatial_dims=2, activation="sigmoid")
    img, lab = scan([((24, 20), 4, 0.5)], seed=5)
    a = explain_miss(ad, img, lab, "ref-1",
                     settings=MissSettings(methods=("gradcam", "integrated_gradients"),
                                           probes=["contrast"]))
    ev = a.evidence.set_index("method")
    assert ev.loc["gradcam", "layer"] == "c1"  # the first block
    assert ev.loc["integrated_gradients", "completeness_error"] < 0.05
    assert ev.loc["integrated_gradients", "baseline"] == "local_background"
    for m in ("gradcam", "integrated_gradients"):
        assert ev.loc[m, "randomisation_spearman"] < 0.8, ev.loc[m, "reason"]
        assert ev.loc[m, "passed"]


# ------------------------------------------------------------------------------ 3D
class _Contrast3D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Conv3d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.gain.weight.fill_(1.0)

    def forward(self, x):
        z = (x - x.mean(dim=(2, 3, 4), keepdim=True)) / x.std(dim=(2, 3, 4), keepdim=True)
        z = self.gain(z)
        return 40.0 * (z - F.avg_pool3d(z, 9, 1, 4, count_include_pad=False) - 0.5)


def test_3d_faint_and_small_lesions() -> None:
    rng = np.random.default_rng(0)
    shape = (16, 24, 24)
    zz, yy, xx = np.indices(shape)
    vol = np.ones(shape)
    vol[:, :5] = 2.0
    m = (zz - 8) ** 2 + (yy - 14) ** 2 + (xx - 12) ** 2 <= 9
    img = (vol + 0.15 * m + rng.normal(0, 0.02, shape))[None].astype(np.float32)
    ad = SegmentationAdapter(_Contrast3D().eval(), spatial_dims=3, activation="sigmoid")
    a = explain_miss(ad, img, m.astype(np.uint8), "ref-1", spacing=(2.0, 1.0, 1.0),
                     settings=MissSettings(methods=()))
    assert a.status == "missed" and a.causes == ["contrast"]
    assert a.measurements["volume_mm3"] == pytest.approx(2.0 * m.sum())


def test_size_and_intensity_models_name_their_cause() -> None:
    img, lab = scan([((24, 20), 1.5, 0.6)], seed=21)
    a = explain_miss(_adapter(SizeDetector()), img, lab, "ref-1",
                     settings=MissSettings(methods=()))
    assert a.causes == ["size"]
    refs = [scan([((22, 14), 3, 0.45)], seed=100)[0]]
    dark, lab2 = scan([((24, 20), 3, 0.6)], scale=0.6, noise=0.012, seed=41)
    b = explain_miss(_adapter(IntensityDetector()), dark, lab2, "ref-1", reference_images=refs,
                     settings=MissSettings(methods=()))
    assert b.causes == ["intensity"]
    # without reference images the intensity probe cannot run, and nothing else explains it
    c = explain_miss(_adapter(IntensityDetector()), dark, lab2, "ref-1",
                     settings=MissSettings(methods=()))
    assert c.causes == [] and "intensity" not in set(c.probes["probe"])


def test_causes_are_known_words() -> None:
    assert CAUSES == ("contrast", "size", "intensity", "noise", "location")
    assert mx.explain_miss is explain_miss and mx.MissAnalysis is MissAnalysis


def test_probe_settings_can_be_given_and_two_channel_images_work(contrast_model) -> None:
    img, lab = scan([((24, 20), 3, 0.15)], seed=3)
    a = explain_miss(contrast_model, img, lab, "ref-1",
                     settings=MissSettings(methods=(), probes={"contrast": (3.0,), "size": None}))
    assert a.probes["setting"].tolist() == ["as acquired", "contrast x3 over local background",
                                            "lesion resampled x1.5 per axis",
                                            "lesion resampled x2 per axis"]
    assert a.settings["probes"] == {"contrast": [3.0], "size": [1.5, 2.0]}

    class TwoChannel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.c = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.c(x)

    ad = SegmentationAdapter(TwoChannel().eval(), spatial_dims=2, activation="softmax")
    two = np.concatenate([img, 2 * img])
    b = explain_miss(ad, two, lab, "ref-1",
                     settings=MissSettings(methods=("integrated_gradients",),
                                           probes=["contrast", "location"]))
    assert b.settings["class_index"] == 1 and b.attributions["integrated_gradients"].shape == (40, 40)
    assert b.evidence["completeness_error"].iloc[0] < 0.05  # linear model: exact up to rounding


@settings(max_examples=12, deadline=None)
@given(cy=st.integers(0, 39), cx=st.integers(0, 39), radius=st.sampled_from([0, 1, 2.5, 4]),
       contrast=st.sampled_from([0.1, 0.5]))
def test_any_lesion_position_and_size_gives_a_valid_analysis(cy, cx, radius, contrast) -> None:
    ad = _adapter(ContrastDetector())
    img, lab = scan([((cy, cx), radius, contrast)], seed=cy * 40 + cx)
    a = explain_miss(ad, img, lab, "ref-1", settings=MissSettings(methods=()))
    assert a.status in ("missed", "detected")
    assert set(a.causes) <= set(CAUSES) and len(set(a.causes)) == len(a.causes)
    if a.status == "detected":
        assert a.causes == []
    json.dumps(a.to_dict(), allow_nan=False)
    assert a.probes["mean_prob"].between(0, 1).all()


def test_label_maps_with_several_classes(contrast_model) -> None:
    img, lab = scan([((24, 20), 3, 0.15), ((30, 32), 3, 0.45)], seed=3)
    two = lab.copy()
    two[_disc((30, 32), 3)] = 2  # a second class: not the lesion class of a one-channel model
    with pytest.raises(ValueError, match=r"ref: labels \[1, 2\] do not include the lesion class 0"):
        explain_miss(contrast_model, img, two, "ref-1", settings=MissSettings(methods=()))
    a = explain_miss(contrast_model, img, (lab * 2).astype(np.uint8), "ref-1",
                     settings=MissSettings(methods=()))
    assert a.causes == ["contrast"]  # one foreground value, whatever it is


def test_explain_miss_class_index_uses_only_that_class() -> None:
    """A named class of a multi-class map: another class's voxels never count for it."""
    torch.manual_seed(0)
    net = nn.Conv2d(1, 4, 1)  # a 4-class softmax model (background + 3 classes)
    ad = SegmentationAdapter(net.eval(), spatial_dims=2, activation="softmax")
    img, lab = scan([((14, 14), 4, 0.4), ((28, 28), 4, 0.4)], seed=5)
    ref = np.zeros(lab.shape, np.uint8)
    ref[_disc((14, 14), 4)] = 2
    ref[_disc((28, 28), 4)] = 3
    only3 = np.where(ref > 0, 3, 0).astype(np.uint8)  # label 3 where the reference says 2 or 3
    a = explain_miss(ad, img, ref, "ref-1", pred=only3,
                     settings=MissSettings(class_index=2, methods=(), probes=()))
    assert a.status == "missed"  # was "detected": the single label 3 counted as class 2
    ones_and_threes = np.where(ref == 3, 3, 0).astype(np.uint8)
    ones_and_threes[_disc((14, 14), 2)] = 1
    # labels 1 and 3: no error, class 2 is simply absent
    b = explain_miss(ad, img, ref, "ref-1", pred=ones_and_threes,
                     settings=MissSettings(class_index=2, methods=(), probes=()))
    assert b.status == "missed"
