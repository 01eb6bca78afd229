"""Planted slices: validation of hidden-strata discovery, as feature tables and in images.

A *planted slice* is a subset of cases defined by a property no metadata column records (a
bias field, a contrast drop or extra noise on some scans, spread over every device), on which
the model does worse. The table holds what an audit with a model would hold: metadata
(device, site), the interpretable properties the audit measures from each image (``prop_*``,
where the planted property shows up only through its *measured* proxy, with measurement
noise), uncertainty scores, and model-feature directions, plus the per-case Dice. The planted
membership is returned separately: the discovery never sees it.

``honest=True`` (with ``effect=0``) gives a cohort with nothing planted and no known effect
either (an honest model): any group found there is a false discovery.

:func:`plant_images` writes an acquisition fault (:data:`IMAGE_FAULTS`) into a random share of
a generated demo cohort's images, so the model itself meets it (validation end to end:
``benchmarks/bench_planted_images.py``, ``tests/test_planted_images.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["IMAGE_FAULTS", "PLANTED_KINDS", "PlantedCohort", "plant_images", "planted_settings",
           "planted_table"]

#: The unrecorded property degraded on the planted scans -> the measured proxy column.
PLANTED_KINDS = {"bias_field": "prop_nonuniformity", "contrast_drop": "prop_lesion_contrast",
                 "noise": "prop_noise"}


@dataclass
class PlantedCohort:
    cases: pd.DataFrame
    planted: np.ndarray  # bool per case
    kind: str
    fraction: float
    effect: float


def planted_table(n: int = 1000, *, kind: str = "bias_field", fraction: float = 0.2,
                  effect: float = 0.2, separation: float = 3.0, seed: int = 0,
                  honest: bool = False) -> PlantedCohort:
    """One planted-slice cohort.

    Parameters
    ----------
    n : int
        Cases.
    kind : {"bias_field", "contrast_drop", "noise"}
        The unrecorded property.
    fraction : float
        Share of the scans (spread over all devices) that carry it.
    effect : float
        Mean Dice drop on them (0: nothing planted).
    separation : float
        How far (in SDs of the property across normal scans) the planted scans' measured
        property moves: what an image statistic sees of the planted cause.
    seed : int
    honest : bool
        Dice independent of every column (no known effect either): the null cohort on which
        any reported group is a false discovery. Otherwise small lesions and device D do
        worse (known effects the search meets too).
    """
    if kind not in PLANTED_KINDS:
        raise ValueError(f"kind: expected one of {tuple(PLANTED_KINDS)}, got {kind!r}")
    rng = np.random.default_rng([int(seed), 31])
    device = rng.choice(["A", "B", "C", "D"], n, p=[0.35, 0.3, 0.2, 0.15])
    site = rng.choice(["north", "south", "east"], n)
    planted = rng.random(n) < fraction
    volume = rng.lognormal(6.0, 1.0, n)
    known = 0.0 if honest else 0.03 * np.log(volume / 400.0) - 0.04 * (device == "D")
    dice = np.clip(0.86 + known + rng.normal(0, 0.06, n), 0.0, 1.0)
    if effect:
        dice = np.clip(dice - planted * rng.normal(effect, effect / 4, n), 0.0, 1.0)
    props = {
        "prop_intensity_mean": rng.normal(100, 10, n) + 5 * (device == "B"),
        "prop_intensity_sd": rng.normal(20, 3, n),
        "prop_noise": rng.normal(0.05, 0.01, n),
        "prop_nonuniformity": rng.normal(0.08, 0.02, n),
        "prop_lesion_volume_mm3": volume,
        "prop_lesion_count": rng.integers(1, 6, n).astype(float),
        "prop_lesion_contrast": rng.normal(1.5, 0.3, n),
        "prop_lesion_centrality": rng.random(n),
    }
    proxy = PLANTED_KINDS[kind]
    sd = {"prop_nonuniformity": 0.02, "prop_lesion_contrast": -0.3, "prop_noise": 0.01}[proxy]
    props[proxy] = props[proxy] + planted * separation * sd
    unc = np.clip(0.3 - 0.2 * dice + rng.normal(0, 0.05, n), 0, 1)
    cases = pd.DataFrame({"case_id": [f"c{i:06d}" for i in range(n)], "status": "ok",
                          "device": device, "site": site, "dice": dice, **props,
                          "unc_entropy": unc,
                          "feature_dir1": rng.normal(0, 1, n) + 1.5 * (device == "D"),
                          "feature_dir2": rng.normal(0, 1, n)})
    return PlantedCohort(cases, planted, kind, float(fraction), float(effect))


def planted_settings(n: int = 1000) -> list[dict]:
    """The 24 planted settings of the validation: 3 kinds x 4 fractions x 2 effects."""
    return [{"n": n, "kind": k, "fraction": f, "effect": e, "seed": i}
            for i, (k, f, e) in enumerate((k, f, e) for k in PLANTED_KINDS
                                          for f in (0.05, 0.1, 0.2, 0.3) for e in (0.1, 0.2))]


#: Image faults -> the two strengths the validation uses: bias-field log-amplitude (SD of the
#: log of a smooth multiplicative field, correlation length 16 mm), share of the lesions'
#: contrast to their 3-voxel surround removed, added Rician noise SD as a share of the bright
#: tissue's median, Gaussian blur SD in mm.
IMAGE_FAULTS = {"bias_field": (0.4, 0.6), "contrast_drop": (0.5, 0.7), "noise": (0.3, 0.45),
                "blur": (1.0, 1.5)}
_FIELD_MM = 16.0


def _fault(x: np.ndarray, lab: np.ndarray, zooms: tuple, kind: str, strength: float,
           rng: np.random.Generator) -> np.ndarray:
    from scipy import ndimage

    if kind == "bias_field":  # smooth in mm, whatever the device's voxel size
        sigma = [_FIELD_MM / z for z in zooms]
        field = ndimage.gaussian_filter(rng.normal(size=x.shape), sigma=sigma, mode="wrap")
        return x * np.exp(strength * (field - field.mean()) / (field.std() + 1e-9))
    if kind == "contrast_drop":
        if lab.any():
            ring = ndimage.binary_dilation(lab, iterations=3) & ~lab
            x[lab] = x[lab] - strength * (x[lab] - x[ring].mean())
        return x
    if kind == "noise":
        sd = strength * float(np.median(x[x > np.percentile(x, 60)]))
        return np.hypot(x + rng.normal(0, sd, x.shape), rng.normal(0, sd, x.shape))
    return ndimage.gaussian_filter(x, sigma=[strength / z for z in zooms])  # blur


def plant_images(manifest: str | Path, kind: str, share: float, strength: float,
                 seed: int = 0) -> np.ndarray:
    """Write an unrecorded acquisition fault into a random ``share`` of a cohort's images.

    Parameters
    ----------
    manifest : str or Path
        A cohort manifest with ``image`` and ``label`` paths relative to its folder (as
        :func:`medseg_xai.demo.make_cohort` writes); the images are overwritten (int16).
    kind : {"bias_field", "contrast_drop", "noise", "blur"}
        The fault (:data:`IMAGE_FAULTS`); spread over every device, no column names it.
    share : float
        Probability that a scan carries it.
    strength : float
        Its strength in the fault's unit (:data:`IMAGE_FAULTS`).
    seed : int

    Returns
    -------
    numpy.ndarray
        The planted scans (bool, manifest order): what a discovery should recover.
    """
    import nibabel as nib

    if kind not in IMAGE_FAULTS:
        raise ValueError(f"kind: expected one of {tuple(IMAGE_FAULTS)}, got {kind!r}")
    manifest = Path(manifest)
    df = pd.read_csv(manifest)
    rng = np.random.default_rng([int(seed), 77])
    planted = rng.random(len(df)) < share
    for i in np.flatnonzero(planted):
        path = manifest.parent / df.loc[i, "image"]
        img = nib.load(path)
        x = np.asarray(img.dataobj).astype(np.float64)
        lab = np.asarray(nib.load(manifest.parent / df.loc[i, "label"]).dataobj) > 0
        x = _fault(x, lab, img.header.get_zooms()[:3], kind, float(strength), rng)
        nib.save(nib.Nifti1Image(np.clip(np.round(x), -32768, 32767).astype(np.int16),
                                 img.affine, img.header), path)
    return planted
