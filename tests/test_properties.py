"""Case properties (audit.properties): each number against a hand-made image."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_xai.audit.properties import PROPERTY_LABELS, case_properties


def _phantom(bias: float = 0.0, noise: float = 0.0, contrast: float = 50.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    img = np.full((24, 32, 32), 100.0, np.float32)
    img[:, :, :2] = 0.0  # air: outside the body
    ref = np.zeros(img.shape, np.uint8)
    ref[10:14, 14:18, 14:18] = 1
    img[ref > 0] += contrast
    z = np.linspace(-1, 1, img.shape[0])[:, None, None]
    img = img * np.exp(bias * z) + rng.normal(0, noise, img.shape)
    return img.astype(np.float32), ref


def test_lesion_numbers() -> None:
    img, ref = _phantom()
    p = case_properties(img[None], ref, spacing=(2.0, 1.0, 1.0))
    assert set(p) == set(PROPERTY_LABELS)
    assert p["prop_lesion_volume_mm3"] == 64 * 2.0 and p["prop_lesion_count"] == 1
    body = img[:, :, 2:]
    assert p["prop_lesion_contrast"] == pytest.approx(50.0 / body.std(), rel=1e-5)
    assert p["prop_noise"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 <= p["prop_lesion_centrality"] < 0.2


def test_bias_and_noise_move_their_property_only() -> None:
    base = case_properties(*_phantom(seed=1))
    biased = case_properties(*_phantom(bias=0.4, seed=1))
    noisy = case_properties(*_phantom(noise=3.0, seed=1))
    noisier = case_properties(*_phantom(noise=10.0, seed=1))
    assert biased["prop_nonuniformity"] > base["prop_nonuniformity"] + 0.1
    assert noisy["prop_noise"] == pytest.approx(3.0 / noisy["prop_intensity_mean"], rel=0.1)
    assert noisier["prop_noise"] > 3 * noisy["prop_noise"] > 3 * base["prop_noise"]
    assert abs(noisy["prop_nonuniformity"] - base["prop_nonuniformity"]) < 0.01


def test_no_lesion_and_bad_shapes() -> None:
    img, ref = _phantom()
    p = case_properties(img, np.zeros_like(ref))
    assert np.isnan(p["prop_lesion_contrast"]) and p["prop_lesion_volume_mm3"] == 0
    with pytest.raises(ValueError, match="reference's shape"):
        case_properties(img[:-1], ref)
