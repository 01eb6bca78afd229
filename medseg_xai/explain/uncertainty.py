"""Per-case and per-lesion uncertainty from what the user has: test-time augmentation (flips,
optional intensity jitter), MC dropout when the model has dropout layers, and ensembles of
several adapters (e.g. nnU-Net's fold models).

Each *member* is one probability map of the same image: every adapter on the image as given,
on each flipped copy (flipped back), on each intensity-jittered copy, and with dropout active
for each MC sample. From the members:

- voxel maps: the mean probability, its normalised predictive entropy (0 = certain, 1 = uniform;
  binary entropy per channel for sigmoid outputs) and the fraction of members that call each
  voxel foreground;
- per case (the aggregations Zenk et al. 2025 compare; larger = less certain, so every score
  ranks scans for failure detection the same way):

  ``unc_entropy``       mean entropy over the predicted region (of the mean probability; the
                        union of the members' predictions when it is empty; 0 when all are);
  ``unc_disagreement``  1 - mean pairwise Dice between the members' foreground masks (two
                        empty masks agree: Dice 1);
  ``unc_volume_cv``     coefficient of variation of the members' predicted volumes (0 when all
                        are empty);

- per predicted lesion (components of the mean prediction): volume, mean entropy, the fraction
  of members that overlap it, and the disagreement (1 - mean pairwise Dice) of the members
  restricted to its voxels.

Cost: with one adapter, ``k`` augmentations and the audit's own pass reused
(``base_probabilities``), ``k`` extra forward passes: at most ``(k + 1)x`` the inference of
one case (``benchmarks/bench_uncertainty.py`` measures it).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["UNCERTAINTY_COLUMNS", "LESION_UNCERTAINTY_COLUMNS", "CaseUncertainty",
           "UncertaintySettings", "case_uncertainty", "member_scores"]

#: Per-case columns, larger = less certain.
UNCERTAINTY_COLUMNS = ("unc_entropy", "unc_disagreement", "unc_volume_cv")
LESION_UNCERTAINTY_COLUMNS = ("lesion", "volume_voxels", "mean_entropy", "member_detection",
                              "disagreement", "bbox")
_DROPOUT = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
            "FeatureAlphaDropout")


@dataclass(frozen=True)
class UncertaintySettings:
    """How members are made (plain data: recorded in the audit's settings).

    Attributes
    ----------
    flips : sequence of int
        Spatial axes flipped one at a time (``(0, 1, 2)``: three flipped copies).
    flip_combinations : bool
        Every non-empty combination of ``flips`` instead (nnU-Net's mirroring: 7 for 3 axes).
    jitter : int
        Intensity-jittered copies (``x * a + b * std(x)``, ``a ~ N(1, jitter_scale)``,
        ``b ~ N(0, jitter_scale)``); 0 by default because it changes the input distribution.
    jitter_scale : float
    mc_dropout : int
        Forward passes with the model's dropout layers active (the model must have some).
    seed : int
        Seeds the jitter and the dropout masks.
    threshold : float, optional
        Decision threshold of the members' and the mean's label maps (``adapters.label_map``).
    """

    flips: tuple[int, ...] = (0, 1, 2)
    flip_combinations: bool = False
    jitter: int = 0
    jitter_scale: float = 0.1
    mc_dropout: int = 0
    seed: int = 0
    threshold: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "flips", tuple(int(a) for a in self.flips))
        for name in ("jitter", "mc_dropout"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"uncertainty.{name}: expected a count >= 0, got {v!r}")
        if not 0.0 <= float(self.jitter_scale) < 1.0:
            raise ValueError(f"uncertainty.jitter_scale: expected a number in [0, 1), got "
                             f"{self.jitter_scale!r}")
        if len(set(self.flips)) != len(self.flips) or any(a < 0 for a in self.flips):
            raise ValueError(f"uncertainty.flips: expected distinct spatial axes >= 0, got "
                             f"{self.flips!r}")

    @classmethod
    def from_value(cls, value: Any) -> UncertaintySettings | None:
        """None, True (defaults), a mapping of fields or an instance."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"uncertainty: unknown setting(s) {sorted(unknown)}; expected "
                                 f"some of {sorted(cls.__dataclass_fields__)}")
            return cls(**value)
        raise ValueError(f"uncertainty: expected None, True, a mapping or UncertaintySettings, "
                         f"got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def flip_sets(self, spatial_dims: int) -> list[tuple[int, ...]]:
        bad = [a for a in self.flips if a >= spatial_dims]
        if bad:
            raise ValueError(f"uncertainty.flips: axes {bad} do not exist in a "
                             f"{spatial_dims}D image")
        if not self.flip_combinations:
            return [(a,) for a in self.flips]
        return [c for r in range(1, len(self.flips) + 1)
                for c in itertools.combinations(self.flips, r)]

    def n_members(self, n_adapters: int, spatial_dims: int) -> int:
        return n_adapters * (1 + len(self.flip_sets(spatial_dims)) + self.jitter + self.mc_dropout)


@dataclass
class CaseUncertainty:
    """Uncertainty of one case: voxel maps, case scores and the lesion table."""

    mean_probability: np.ndarray          # (K, *spatial) float32
    entropy: np.ndarray                   # (*spatial) float32 in [0, 1]
    vote: np.ndarray                      # (*spatial) float32: fraction of members calling fg
    scores: dict[str, float]
    lesions: pd.DataFrame
    n_members: int
    members: list[str] = field(default_factory=list)


def _activation(adapter: Any) -> str:
    return str(getattr(adapter, "activation", "softmax"))


def _foreground(p: np.ndarray, activation: str, threshold: float | None) -> np.ndarray:
    """``adapters.label_map(p, threshold, activation) > 0`` without the label map: the rule's
    foreground test in numpy (torch's argmax over a class axis cost more than a forward pass
    of the demo model). Equal to it by test (``tests/test_uncertainty.py``)."""
    t = 0.5 if threshold is None else float(threshold)
    if p.shape[0] == 1:
        return p[0] > t
    if activation == "sigmoid":
        return p.max(axis=0) > t
    best = p[1:].max(axis=0)
    # softmax argmax: background wins ties (first index); a threshold tests the best class
    return best > p[0] if threshold is None else best > t


def normalised_entropy(p: np.ndarray, activation: str) -> np.ndarray:
    """Predictive entropy per voxel in [0, 1] of class probabilities ``(K, *spatial)``
    (float32 throughout: a per-voxel display and mean, not a sum over millions)."""
    q = np.clip(p, 1e-12, 1.0, dtype=np.float32)
    if p.shape[0] == 1 or activation == "sigmoid":  # independent channels: binary entropy
        r = np.clip(1.0 - p, 1e-12, 1.0, dtype=np.float32)
        h = -(q * np.log(q) + r * np.log(r)) / np.float32(math.log(2.0))
        return h.mean(axis=0, dtype=np.float32)
    h = -(q * np.log(q)).sum(axis=0) / np.float32(math.log(p.shape[0]))
    return np.clip(h, 0.0, 1.0).astype(np.float32, copy=False)


def _dropout_modules(model: Any) -> list[Any]:
    return [m for m in model.modules() if type(m).__name__ in _DROPOUT]


def _mc_dropout(adapter: Any, image: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    """``n`` probability maps with the dropout layers in training mode (the rest in eval)."""
    import torch

    drops = _dropout_modules(adapter.model)
    if not drops:
        raise ValueError("uncertainty.mc_dropout: the model has no dropout layer (expected "
                         "torch.nn.Dropout / Dropout2d / Dropout3d...); use flips or an ensemble")
    t, _ = adapter.as_batch(image)
    out = []
    with torch.random.fork_rng(devices=[]), torch.no_grad(), \
            adapter.frozen(freeze_parameters=False):
        torch.manual_seed(int(seed))
        for m in drops:
            m.train()
        for _ in range(n):
            out.append(adapter._activate(adapter.forward_logits(t)).cpu().numpy()[0])
    return out


def _members(adapter: Any, image: np.ndarray, settings: UncertaintySettings, rng: np.random.Generator,
             base: np.ndarray | None) -> tuple[list[np.ndarray], list[str]]:
    """Probability maps ``(K, *spatial)`` of one adapter: plain, flipped, jittered, dropout."""
    spatial = image.ndim - 1
    maps = [base if base is not None else adapter.probabilities(image).numpy()[0]]
    names = ["plain"]
    for axes in settings.flip_sets(spatial):
        ax = tuple(1 + a for a in axes)
        p = adapter.probabilities(np.ascontiguousarray(np.flip(image, ax))).numpy()[0]
        maps.append(np.ascontiguousarray(np.flip(p, ax)))
        names.append("flip" + "".join(str(a) for a in axes))
    sd = float(image.std()) or 1.0
    for j in range(settings.jitter):
        a = rng.normal(1.0, settings.jitter_scale)
        b = rng.normal(0.0, settings.jitter_scale) * sd
        maps.append(adapter.probabilities((image * a + b).astype(image.dtype)).numpy()[0])
        names.append(f"jitter{j}")
    if settings.mc_dropout:
        maps += _mc_dropout(adapter, image, settings.mc_dropout, int(rng.integers(2**31)))
        names += [f"dropout{j}" for j in range(settings.mc_dropout)]
    return maps, names


def _pairwise_dice(masks: np.ndarray) -> float:
    """Mean Dice over member pairs of ``(M, V)`` bool masks (both empty: 1)."""
    m = masks.reshape(len(masks), -1).astype(np.float32)
    if len(m) < 2:
        return 1.0
    inter = m @ m.T  # (M, M) intersections: one BLAS call, not M^2 passes
    vol = np.diag(inter)
    denom = vol[:, None] + vol[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1.0), 1.0)
    iu = np.triu_indices(len(m), 1)
    return float(d[iu].mean())


def member_scores(masks: np.ndarray, entropy: np.ndarray, predicted: np.ndarray
                  ) -> dict[str, float]:
    """The case scores (:data:`UNCERTAINTY_COLUMNS`) from the members' foreground masks
    ``(M, *spatial)``, the entropy map and the mean prediction's foreground mask."""
    region = predicted if predicted.any() else masks.any(axis=0)
    vols = masks.reshape(len(masks), -1).sum(axis=1).astype(np.float64)
    mean_vol = vols.mean()
    return {
        "unc_entropy": float(entropy[region].mean()) if region.any() else 0.0,
        "unc_disagreement": 1.0 - _pairwise_dice(masks),
        "unc_volume_cv": float(vols.std() / mean_vol) if mean_vol > 0 else 0.0,
    }


def _lesion_table(masks: np.ndarray, entropy: np.ndarray, predicted: np.ndarray,
                  connectivity: int | None) -> pd.DataFrame:
    """One row per component of the mean prediction, by label counts over its voxels (no
    per-lesion loop over the volume: a speckled prediction has thousands of components)."""
    from scipy import ndimage

    from medseg_xai.metrics.lesions import label_lesions

    lab, n = label_lesions(predicted, connectivity)
    if n == 0:
        return pd.DataFrame(columns=list(LESION_UNCERTAINTY_COLUMNS))
    sel = lab > 0
    ids = lab[sel]
    count = np.bincount(ids, minlength=n + 1).astype(np.float64)
    ent = np.bincount(ids, weights=entropy[sel], minlength=n + 1) / np.maximum(count, 1.0)
    inside = masks[:, sel]  # (M, lesion voxels)
    per = np.stack([np.bincount(ids[m], minlength=n + 1) for m in inside]).astype(np.float64)
    dice_sum, pairs = np.zeros(n + 1), 0
    for i, j in itertools.combinations(range(len(inside)), 2):
        inter = np.bincount(ids[inside[i] & inside[j]], minlength=n + 1)
        denom = per[i] + per[j]
        dice_sum += np.where(denom > 0, 2.0 * inter / np.where(denom > 0, denom, 1.0), 1.0)
        pairs += 1
    disagreement = 1.0 - dice_sum / pairs if pairs else np.zeros(n + 1)
    detection = (per > 0).mean(axis=0)
    boxes = ndimage.find_objects(lab)
    return pd.DataFrame({
        "lesion": [f"pred-{i}" for i in range(1, n + 1)],
        "volume_voxels": count[1:].astype(np.int64), "mean_entropy": ent[1:],
        "member_detection": detection[1:], "disagreement": disagreement[1:],
        "bbox": [[[sl.start, sl.stop] for sl in box] for box in boxes],
    }, columns=list(LESION_UNCERTAINTY_COLUMNS))


def case_uncertainty(
    adapters: Any,
    image: np.ndarray,
    settings: UncertaintySettings | dict | None = None,
    *,
    base_probabilities: np.ndarray | None = None,
    connectivity: int | None = None,
) -> CaseUncertainty:
    """Members, voxel maps, case scores and lesion table of one image.

    Parameters
    ----------
    adapters : SegmentationAdapter or sequence of them
        One model, or an ensemble (e.g. the fold models); every adapter gets every augmentation.
    image : numpy.ndarray
        ``(C, *spatial)``.
    settings : UncertaintySettings or mapping, optional
        Default: flips along every spatial axis.
    base_probabilities : numpy.ndarray, optional
        The first adapter's probabilities of ``image`` already computed (the audit's own pass):
        reused instead of a second forward pass.
    connectivity : int, optional
        Lesion connectivity (``metrics.label_lesions``).

    Returns
    -------
    CaseUncertainty
    """
    s = UncertaintySettings.from_value(True if settings is None else settings)
    assert s is not None
    members = list(adapters) if isinstance(adapters, Sequence) else [adapters]
    if not members:
        raise ValueError("adapters: expected at least one adapter")
    image = np.asarray(image)
    if image.ndim < 3:
        raise ValueError(f"image: expected (C, *spatial) with 2 or 3 spatial axes, got shape "
                         f"{image.shape}")
    acts = {_activation(a) for a in members}
    if len(acts) > 1:
        raise ValueError(f"adapters: expected one activation for the ensemble, got {sorted(acts)}")
    act = acts.pop()
    rng = np.random.default_rng([int(s.seed), 27])
    total = np.zeros(0)
    masks, names = [], []
    for i, adapter in enumerate(members):
        maps, labels = _members(adapter, image, s, rng, base_probabilities if i == 0 else None)
        for p, name in zip(maps, labels):
            total = p.astype(np.float64) if total.size == 0 else total + p
            if p.shape != total.shape:
                raise ValueError(f"adapters: member {i} ({name}) gave shape {p.shape}, expected "
                                 f"{total.shape}")
            masks.append(_foreground(p, act, s.threshold))
            names.append(f"{i}:{name}")
        del maps
    mean_p = (total / len(masks)).astype(np.float32)
    stack = np.stack(masks)
    entropy = normalised_entropy(mean_p, act)
    predicted = _foreground(mean_p, act, s.threshold)
    return CaseUncertainty(
        mean_probability=mean_p, entropy=entropy, vote=stack.mean(axis=0, dtype=np.float32),
        scores=member_scores(stack, entropy, predicted),
        lesions=_lesion_table(stack, entropy, predicted, connectivity),
        n_members=len(masks), members=names)
