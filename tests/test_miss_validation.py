"""explain_miss on models whose failure cause is known by construction.

Five hand-built 2D detectors (fixed convolutions, one sigmoid channel), each blind in exactly
one way, and planted cases that each one misses for that reason:

- ``contrast``: thresholds the local contrast of the z-scored image (indifferent to size, to the
  global intensity scale, to position and to noise), misses faint lesions;
- ``size``: bright voxels followed by a morphological opening (min then max pool, 5 x 5): a
  lesion that cannot hold the window vanishes whatever its contrast;
- ``intensity``: thresholds the raw intensity; misses every lesion of a darker device, which
  intensity standardisation to the normal device's scans fixes;
- ``location``: the contrast detector blind over the left half of the image;
- ``noise``: the contrast detector gated off where the local noise level is high.

Each planted case must be explained by its cause and by no cause whose probe had no effect;
the confusion table over all planted cases is checked cell by cell (and printed with ``-s``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.explain.miss import CAUSES, MissSettings, explain_miss

SHAPE = (40, 40)
BAND = 8  # bright tissue rows at the top: makes the image's spread anatomy, not noise
K = 15  # local-mean window


def _disc(centre, radius, shape=SHAPE):
    yy, xx = np.indices(shape)
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def scan(lesions, *, scale=1.0, noise=0.02, seed=0):
    """(image (1, H, W), label) with dark tissue 1.0, a bright band 2.0 and additive lesions."""
    rng = np.random.default_rng(seed)
    img = np.ones(SHAPE)
    img[:BAND] = 2.0
    label = np.zeros(SHAPE, np.uint8)
    for centre, radius, contrast in lesions:
        m = _disc(centre, radius)
        img[m] += contrast
        label[m] = 1
    img = scale * img + rng.normal(0.0, noise, SHAPE)
    return img[None].astype(np.float32), label


class _Detector(nn.Module):
    """Shared parts: the image's z-score and its local contrast (z minus a 15 x 15 local mean).

    ``gain`` is a fixed 1 x 1 convolution (weight 1): a parameterised layer for Grad-CAM and
    the randomisation check; it does not change what the detector computes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Conv2d(1, 1, 1, bias=False)
        with torch.no_grad():
            self.gain.weight.fill_(1.0)

    @staticmethod
    def zscore(x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=(2, 3), keepdim=True)
        sd = x.std(dim=(2, 3), keepdim=True)
        return (x - mu) / sd

    def contrast(self, x: torch.Tensor) -> torch.Tensor:
        z = self.gain(self.zscore(x))
        return z - F.avg_pool2d(z, K, 1, K // 2, count_include_pad=False)


class ContrastDetector(_Detector):
    def forward(self, x):
        return 40.0 * (self.contrast(x) - 0.5)


class SizeDetector(_Detector):
    def forward(self, x):
        bright = torch.sigmoid(40.0 * (self.contrast(x) - 0.5))
        opened = F.max_pool2d(-F.max_pool2d(-bright, 5, 1, 2), 5, 1, 2)  # opening, 5 x 5
        return 12.0 * (opened - 0.5)


class IntensityDetector(_Detector):
    def forward(self, x):
        return 40.0 * (self.gain(x) - 1.45)


class LocationDetector(_Detector):
    def __init__(self) -> None:
        super().__init__()
        blind = torch.zeros(1, 1, *SHAPE)
        blind[..., : SHAPE[1] // 2] = 1.0
        self.register_buffer("blind", blind)

    def forward(self, x):
        return 40.0 * (self.contrast(x) - 0.5) - 200.0 * self.blind


class NoiseDetector(_Detector):
    """Refuses to call anything on a noisy scan: gated by the scan's median residual level."""

    def forward(self, x):
        smooth = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
        resid = (x - smooth) ** 2
        level = torch.sqrt(F.avg_pool2d(resid, 9, 1, 4, count_include_pad=False))
        scan_level = level.flatten(1).median(dim=1).values.reshape(-1, 1, 1, 1)
        # closed above 0.035 (normal scans: ~0.02, noisy ones ~0.06)
        return 40.0 * (self.contrast(x) - 0.5) - 5000.0 * F.relu(scan_level - 0.035)


def _adapter(model: nn.Module) -> SegmentationAdapter:
    return SegmentationAdapter(model.eval(), spatial_dims=2, activation="sigmoid")


def _references(n=3):
    """Normal-device scans with well-visible lesions: a group where the models work."""
    return [scan([((20 + 4 * i, 14 + 6 * i), 3, 0.45)], seed=100 + i)[0] for i in range(n)]


def planted_cases():
    """(planted cause, model name, image, label, lesion id, references) over >= 40 cases."""
    rng = np.random.default_rng(7)
    cases = []
    for i in range(10):  # faint lesions: contrast detector
        c = (int(rng.integers(18, 32)), int(rng.integers(10, 30)))
        img, lab = scan([(c, 3, float(rng.uniform(0.14, 0.17)))], seed=i)
        cases.append(("contrast", "contrast", img, lab, "ref-1"))
    for i in range(10):  # small bright lesions: minimum-extent detector
        c = (int(rng.integers(18, 32)), int(rng.integers(10, 30)))
        img, lab = scan([(c, 1.5, 0.6)], seed=20 + i)
        cases.append(("size", "size", img, lab, "ref-1"))
    for i in range(10):  # darker device: raw-intensity detector
        c = (int(rng.integers(18, 32)), int(rng.integers(10, 30)))
        img, lab = scan([(c, 3, 0.6)], scale=0.6, noise=0.012, seed=40 + i)
        cases.append(("intensity", "intensity", img, lab, "ref-1"))
    for i in range(10):  # inside the blind band; half with a detected lesion to swap in
        c = (int(rng.integers(18, 32)), int(rng.integers(4, 9)))
        les = [(c, 3, 0.4)] + ([((36, 30), 3, 0.4)] if i % 2 else [])  # ref-2: after it
        img, lab = scan(les, seed=60 + i)
        cases.append(("location", "location", img, lab, "ref-1"))
    for i in range(10):  # noisy scans: noise-gated detector
        c = (int(rng.integers(18, 32)), int(rng.integers(10, 30)))
        img, lab = scan([(c, 4, 0.45)], noise=0.06, seed=80 + i)
        cases.append(("noise", "noise", img, lab, "ref-1"))
    return cases


MODELS = {"contrast": ContrastDetector, "size": SizeDetector, "intensity": IntensityDetector,
          "location": LocationDetector, "noise": NoiseDetector}


@pytest.fixture(scope="module")
def results(one_thread):
    refs = _references()
    adapters = {k: _adapter(v()) for k, v in MODELS.items()}
    out = []
    for planted, model, img, lab, lid in planted_cases():
        a = explain_miss(adapters[model], img, lab, lid, reference_images=refs,
                         settings=MissSettings(methods=(), seed=0))
        out.append((planted, a))
    return out


def confusion(results) -> pd.DataFrame:
    rows = []
    for planted, a in results:
        rows.append({"planted": planted, **{c: int(c in a.causes) for c in CAUSES},
                     "none": int(not a.causes)})
    return pd.DataFrame(rows).groupby("planted").sum().reindex(list(CAUSES))


@pytest.mark.slow
def test_every_planted_case_is_missed_and_named_by_its_cause_only(results) -> None:
    table = confusion(results)
    counts = pd.Series([p for p, _ in results]).value_counts()
    print("\nplanted cause x named causes\n" + table.to_string())
    assert len(results) >= 40 and set(counts.index) == set(CAUSES)
    for planted, a in results:
        assert a.status == "missed", (planted, a.verdict)
        assert a.causes == [planted], (planted, a.verdict)
        # a probe without an effect never names its cause
        effects = a.probes.groupby("probe")["effect"].any()
        for cause in a.causes:
            assert effects[cause]
    counts = pd.Series([p for p, _ in results]).value_counts()
    expected = pd.DataFrame(0, index=list(CAUSES), columns=[*CAUSES, "none"])
    for planted in CAUSES:
        expected.loc[planted, planted] = int(counts[planted])
    pd.testing.assert_frame_equal(table, expected, check_names=False, check_dtype=False)
