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

Cost (issue 27: ``k`` augmentations within ``(k + 1)x`` one inference): the audit's own pass is
reused (``base_probabilities``), or, for test-time augmentation of one adapter, runs in the batch
with the copies (:func:`plain_and_uncertainty`, what the audit runner uses: ``k = 1`` is then
one call of two images); the ``k`` augmented copies go through the model as batched
passes (:data:`BATCH_VOXELS` bounds copies x voxels a pass, so memory stays that of one pass of
a 128^3 image), which costs less than ``k`` single passes where per-call costs matter (small
images, several threads); the members are folded into a float32 running sum and one bit per
member and voxel (:mod:`.member_bits`): no member map is kept, the pairwise Dice of all members
comes from one Gram matrix of their bit patterns, and the entropy / vote maps and the lesion
table are computed only when read. ``benchmarks/bench_uncertainty.py`` measures the ratio.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from medseg_xai.explain.member_bits import (
    MemberBits,
    gram,
    lesion_rows,
    mean_pairwise_dice,
    pack_masks,
    popcount,
)

__all__ = ["BATCH_VOXELS", "UNCERTAINTY_COLUMNS", "LESION_UNCERTAINTY_COLUMNS", "CaseUncertainty",
           "PlainAndUncertainty", "UncertaintySettings", "case_uncertainty", "joins_plain_pass",
           "member_scores", "normalised_entropy", "plain_and_uncertainty"]

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


#: Input voxels (copies x voxels) one batched forward pass of augmented copies may hold (read at
#: each call). The copies of a small image go through the model together (one call instead of k:
#: the per-call cost is paid once); an image of more voxels goes alone, so a batch holds no more
#: activations than one pass of a 128^3 image (demo UNet: ~130 bytes a voxel, ~270 MB). Raising
#: it trades memory for speed: two 96x128x128 copies together cost 7% less CPU than apart (one
#: thread) and one pass's activations more (+200 MB with the demo UNet).
BATCH_VOXELS = 2 ** 21


@dataclass
class CaseUncertainty:
    """Uncertainty of one case: voxel maps, case scores and the lesion table.

    The member maps are not kept: ``codes`` holds one bit per member and voxel (which members
    call it foreground, :mod:`.member_bits`). The voxel maps ``entropy`` and ``vote`` and the
    ``lesions`` table are computed on first use (the audit reads boxes only:
    :meth:`box_entropy`, :meth:`box_vote`).
    """

    mean_probability: np.ndarray          # (K, *spatial) float32
    scores: dict[str, float]
    n_members: int
    members: list[str] = field(default_factory=list)
    codes: np.ndarray = field(default_factory=lambda: np.zeros((1, 0), np.uint8), repr=False)
    predicted: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)
    activation: str = "softmax"
    connectivity: int | None = None

    @functools.cached_property
    def entropy(self) -> np.ndarray:
        """``(*spatial)`` float32 in [0, 1]: normalised entropy of the mean probability."""
        return normalised_entropy(self.mean_probability, self.activation)

    @functools.cached_property
    def vote(self) -> np.ndarray:
        """``(*spatial)`` float32: the fraction of members calling each voxel foreground."""
        return popcount(self.codes).astype(np.float32) / np.float32(self.n_members)

    def box_entropy(self, box: tuple[slice, ...]) -> np.ndarray:
        """``entropy[box]`` without the whole map (unless it is already there)."""
        if "entropy" in self.__dict__:
            return self.entropy[box]
        return normalised_entropy(self.mean_probability[(slice(None), *box)], self.activation)

    def box_vote(self, box: tuple[slice, ...]) -> np.ndarray:
        """``vote[box]`` without the whole map."""
        if "vote" in self.__dict__:
            return self.vote[box]
        counts = popcount(self.codes[(slice(None), *box)])
        return counts.astype(np.float32) / np.float32(self.n_members)

    @functools.cached_property
    def lesions(self) -> pd.DataFrame:
        """One row per component of the mean prediction: volume, mean entropy, the fraction
        of members that overlap it, and the disagreement of the members inside it."""
        from scipy import ndimage

        from medseg_xai.metrics.lesions import label_lesions

        lab, n = label_lesions(self.predicted, self.connectivity)
        if n == 0:
            return pd.DataFrame(columns=list(LESION_UNCERTAINTY_COLUMNS))
        sel = lab > 0
        ids = lab[sel]
        ent = normalised_entropy(self.mean_probability[:, sel], self.activation)
        rows = lesion_rows(self.codes, self.n_members, lab, n)
        mean_ent = np.bincount(ids, weights=ent, minlength=n + 1)[1:] / rows["volume"]
        return pd.DataFrame({
            "lesion": [f"pred-{i}" for i in range(1, n + 1)],
            "volume_voxels": rows["volume"], "mean_entropy": mean_ent,
            "member_detection": rows["member_detection"], "disagreement": rows["disagreement"],
            "bbox": [[[sl.start, sl.stop] for sl in box] for box in ndimage.find_objects(lab)],
        }, columns=list(LESION_UNCERTAINTY_COLUMNS))


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
    best = p[1] if p.shape[0] == 2 else p[1:].max(axis=0)
    # softmax argmax: background wins ties (first index); a threshold tests the best class
    return best > p[0] if threshold is None else best > t


def normalised_entropy(p: np.ndarray, activation: str) -> np.ndarray:
    """Predictive entropy per voxel in [0, 1] of class probabilities ``(K, ...)``
    (float32 throughout, in place where it can: a per-voxel display and mean)."""
    q = np.clip(p, 1e-12, 1.0, dtype=np.float32)
    if p.shape[0] == 1 or activation == "sigmoid":  # independent channels: binary entropy
        r = np.clip(1.0 - p, 1e-12, 1.0, dtype=np.float32)
        h = -(q * np.log(q) + r * np.log(r)) / np.float32(math.log(2.0))
        return h.mean(axis=0, dtype=np.float32)
    lq = np.log(q)
    lq *= q
    h = lq.sum(axis=0)
    h /= np.float32(-math.log(p.shape[0]))
    return np.clip(h, 0.0, 1.0, out=h)


def _dropout_modules(model: Any) -> list[Any]:
    return [m for m in model.modules() if type(m).__name__ in _DROPOUT]


def _mc_dropout(adapter: Any, image: np.ndarray, n: int, seed: int) -> Iterator[np.ndarray]:
    """``n`` probability maps with the dropout layers in training mode (the rest in eval),
    one pass at a time (the seeded masks stay those of the unbatched passes)."""
    import torch

    drops = _dropout_modules(adapter.model)
    if not drops:
        raise ValueError("uncertainty.mc_dropout: the model has no dropout layer (expected "
                         "torch.nn.Dropout / Dropout2d / Dropout3d...); use flips or an ensemble")
    t, _ = adapter.as_batch(image)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), \
            adapter.frozen(freeze_parameters=False):
        torch.manual_seed(int(seed))
        for m in drops:
            m.train()
        for _ in range(n):
            yield adapter._activate(adapter.forward_logits(t)).cpu().numpy()[0]


class _Copy(NamedTuple):
    """One augmented copy: its name, the axes flipped (input and, back, output), jitter."""

    name: str
    axes: tuple[int, ...]
    jitter: tuple[float, float] | None = None

    def model_input(self, image: np.ndarray) -> np.ndarray:
        if self.jitter is not None:
            a, b = self.jitter
            return (image * a + b).astype(image.dtype)
        return np.flip(image, self.axes)


def _copies(image: np.ndarray, settings: UncertaintySettings, rng: np.random.Generator
            ) -> list[_Copy]:
    out = [_Copy("flip" + "".join(str(a) for a in axes), tuple(1 + a for a in axes))
           for axes in settings.flip_sets(image.ndim - 1)]
    sd = float(image.std()) if settings.jitter else 1.0
    sd = sd or 1.0
    for j in range(settings.jitter):
        a = rng.normal(1.0, settings.jitter_scale)
        b = rng.normal(0.0, settings.jitter_scale) * sd
        out.append(_Copy(f"jitter{j}", (), (a, b)))
    return out


def _batchable(adapter: Any, image: np.ndarray) -> bool:
    """A toolkit adapter taking the image as one ``(C, *spatial)`` sample: copies can be
    stacked on the batch axis (any other object gets one numpy image at a time)."""
    from medseg_xai.adapters import SegmentationAdapter

    return isinstance(adapter, SegmentationAdapter) and image.ndim == adapter.spatial_dims + 1


def _augmented(adapter: Any, image: np.ndarray, copies: list[_Copy], batch_voxels: int,
               first: _FirstPass | None = None
               ) -> Iterator[tuple[str, np.ndarray, tuple[int, ...]]]:
    """Probability maps ``(K, *spatial)`` of the copies with the axes that flip each back to
    the image's grid (:meth:`MemberBits.add` reads it reversed, no copy), from forward passes
    of at most ``batch_voxels`` input voxels (always at least one copy).
    The model sees exactly the float32 inputs of one-at-a-time passes; only the batch axis
    differs. ``first`` (batchable adapters only) watches the first batch: its hook runs
    during that pass alone and its seconds and size are recorded."""
    import torch

    if not _batchable(adapter, image):
        for c in copies:
            p = adapter.probabilities(np.ascontiguousarray(c.model_input(image))).numpy()[0]
            yield c.name, p, c.axes
        return
    per = max(1, int(batch_voxels) // max(1, math.prod(image.shape[1:])))
    for start in range(0, len(copies), per):
        chunk = copies[start:start + per]
        x = np.empty((len(chunk), *image.shape), np.float32)
        for row, c in zip(x, chunk):
            row[...] = c.model_input(image)  # one copy of the (flipped) view
        if first is not None and start == 0:
            probs = first.run(adapter, torch.from_numpy(x))
        else:
            probs = _batch_probabilities(adapter, torch.from_numpy(x)).cpu().numpy()
        del x
        for p, c in zip(probs, chunk):
            yield c.name, p, c.axes


def _batch_probabilities(adapter: Any, x: Any, retry: Any = None) -> Any:
    """``adapter.probabilities`` of a batch of copies; when the batch does not fit the GPU's
    memory, the same copies one at a time (what the unbatched path needed; ``retry`` is
    called first: a feature hook drops what the failed pass pooled)."""
    import torch

    try:
        return adapter.probabilities(x).detach()
    except torch.cuda.OutOfMemoryError:
        if len(x) == 1:
            raise
        torch.cuda.empty_cache()
        if retry is not None:
            retry()
        return torch.cat([adapter.probabilities(x[i:i + 1]).detach() for i in range(len(x))])


@dataclass
class _FirstPass:
    """The batch holding the plain image (row 0) in :func:`plain_and_uncertainty`: the feature
    hook active during it (told how many images the batch holds, so it pools the plain
    image's rows only), and its wall seconds."""

    hook: Any = None
    seconds: float = 0.0
    size: int = 0

    def run(self, adapter: Any, x: Any) -> np.ndarray:
        import contextlib
        import time

        self.size = len(x)
        if self.hook is not None:
            self.hook.samples = len(x)
        t0 = time.perf_counter()
        with self.hook or contextlib.nullcontext():
            reset = getattr(self.hook, "reset", None)
            probs = _batch_probabilities(adapter, x, reset).cpu().numpy()  # synchronises
        self.seconds = time.perf_counter() - t0
        return probs


def _members(adapter: Any, image: np.ndarray, settings: UncertaintySettings,
             rng: np.random.Generator, base: np.ndarray | None, batch_voxels: int
             ) -> Iterator[tuple[str, np.ndarray, tuple[int, ...]]]:
    """Probability maps ``(K, *spatial)`` of one adapter: plain, flipped, jittered, dropout.
    Without ``base`` the plain pass goes in the batch with the copies."""
    copies = _copies(image, settings, rng)
    if base is not None:
        yield "plain", base, ()
    else:
        copies.insert(0, _Copy("plain", ()))
    yield from _augmented(adapter, image, copies, batch_voxels)
    if settings.mc_dropout:
        maps = _mc_dropout(adapter, image, settings.mc_dropout, int(rng.integers(2**31)))
        for j, p in enumerate(maps):
            yield f"dropout{j}", p, ()


def _scores(bits: MemberBits, mean_p: np.ndarray, predicted: np.ndarray, activation: str
            ) -> dict[str, float]:
    """The case scores from the members' codes: one Gram matrix over their union."""
    assert bits.codes is not None
    union = bits.codes[0] != 0 if len(bits.codes) == 1 else bits.codes.any(axis=0)
    g = gram(bits.codes, bits.count, union)
    region = predicted if predicted.any() else union
    vols = np.diag(g)
    mean_vol = vols.mean()
    ent = normalised_entropy(mean_p[:, region], activation) if region.any() else None
    return {
        "unc_entropy": float(ent.mean()) if ent is not None else 0.0,
        "unc_disagreement": 1.0 - mean_pairwise_dice(g),
        "unc_volume_cv": float(vols.std() / mean_vol) if mean_vol > 0 else 0.0,
    }


def member_scores(masks: np.ndarray, entropy: np.ndarray, predicted: np.ndarray
                  ) -> dict[str, float]:
    """The case scores (:data:`UNCERTAINTY_COLUMNS`) from the members' foreground masks
    ``(M, *spatial)``, the entropy map and the mean prediction's foreground mask."""
    masks = np.asarray(masks, bool)
    codes = pack_masks(masks)
    union = masks.any(axis=0)
    g = gram(codes, len(masks), union)
    region = predicted if predicted.any() else union
    vols = np.diag(g)
    mean_vol = vols.mean()
    return {
        "unc_entropy": float(entropy[region].mean()) if region.any() else 0.0,
        "unc_disagreement": 1.0 - mean_pairwise_dice(g),
        "unc_volume_cv": float(vols.std() / mean_vol) if mean_vol > 0 else 0.0,
    }


def case_uncertainty(
    adapters: Any,
    image: np.ndarray,
    settings: UncertaintySettings | dict | None = None,
    *,
    base_probabilities: np.ndarray | None = None,
    connectivity: int | None = None,
    batch_voxels: int | None = None,
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
    batch_voxels : int, optional
        Memory bound of the batched passes: augmented copies go through the model together
        while copies x voxels stay within it (default :data:`BATCH_VOXELS`; 1: one copy a
        pass).
        Results do not depend on it beyond float rounding of the model's batched kernels.

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
    batch_voxels = BATCH_VOXELS if batch_voxels is None else int(batch_voxels)
    bits = MemberBits(s.n_members(len(members), image.ndim - 1),
                      functools.partial(_foreground, activation=act, threshold=s.threshold))
    names = []
    for i, adapter in enumerate(members):
        for name, p, axes in _members(adapter, image, s, rng,
                                      base_probabilities if i == 0 else None, batch_voxels):
            bits.add(p, f"{i} ({name})", axes)
            names.append(f"{i}:{name}")
    return _finish(bits, act, s.threshold, names, connectivity)


class PlainAndUncertainty(NamedTuple):
    """What :func:`plain_and_uncertainty` returns."""

    probabilities: np.ndarray       # (K, *spatial): the plain image's, from the batched pass
    uncertainty: CaseUncertainty
    plain_seconds: float            # the plain image's share of its batch: seconds / batch size
    seconds: float                  # everything: the passes and the aggregation
    batch: int                      # images in the plain image's batch (1 + copies in it)


def joins_plain_pass(adapter: Any, image: np.ndarray,
                     settings: UncertaintySettings | dict | None) -> bool:
    """Whether :func:`plain_and_uncertainty` can run the plain pass with the copies: one
    toolkit adapter taking the image as one sample, and no MC dropout (its seeded masks stay
    those of single passes)."""
    s = UncertaintySettings.from_value(True if settings is None else settings)
    return s is not None and not s.mc_dropout and _batchable(adapter, np.asarray(image))


def plain_and_uncertainty(
    adapter: Any,
    image: np.ndarray,
    settings: UncertaintySettings | dict | None = None,
    *,
    connectivity: int | None = None,
    batch_voxels: int | None = None,
    hook: Any = None,
) -> PlainAndUncertainty:
    """The plain probabilities and the test-time-augmentation uncertainty of one adapter from
    the same batched forward passes: the image goes in the first batch with its copies (the
    audit's own pass is then no extra call, which is what keeps ``k = 1`` within ``2x``).

    The result equals ``adapter.probabilities(image)`` and
    ``case_uncertainty(adapter, image, settings, base_probabilities=...)`` up to the float
    rounding of batched kernels (~1e-7; tested); members, their order and names are the same.

    Parameters
    ----------
    adapter : SegmentationAdapter
        One adapter for which :func:`joins_plain_pass` holds (else ValueError).
    image, settings, connectivity, batch_voxels
        As :func:`case_uncertainty`.
    hook : optional
        A :class:`~medseg_xai.explain.features.FeatureHook` to run during the plain image's
        batch only; it is told the batch size (``hook.samples``) so it pools the plain
        image's rows alone.

    Returns
    -------
    PlainAndUncertainty
    """
    import time

    t0 = time.perf_counter()
    s = UncertaintySettings.from_value(True if settings is None else settings)
    image = np.asarray(image)
    if s is None or not joins_plain_pass(adapter, image, s):
        raise ValueError("plain_and_uncertainty: expected one toolkit adapter taking the image "
                         "as one (C, *spatial) sample and no mc_dropout; use case_uncertainty")
    act = _activation(adapter)
    rng = np.random.default_rng([int(s.seed), 27])
    copies = [_Copy("plain", ()), *_copies(image, s, rng)]  # the order of case_uncertainty
    bits = MemberBits(s.n_members(1, image.ndim - 1),
                      functools.partial(_foreground, activation=act, threshold=s.threshold))
    first = _FirstPass(hook)
    names, plain = [], None
    bound = BATCH_VOXELS if batch_voxels is None else int(batch_voxels)
    for name, p, axes in _augmented(adapter, image, copies, bound, first):
        if plain is None:
            plain = np.array(p)  # its own copy: the batch's output is not kept
        bits.add(p, f"0 ({name})", axes)
        names.append(f"0:{name}")
    u = _finish(bits, act, s.threshold, names, connectivity)
    assert plain is not None
    return PlainAndUncertainty(plain, u, first.seconds / max(first.size, 1),
                               time.perf_counter() - t0, first.size)


def _finish(bits: MemberBits, activation: str, threshold: float | None, names: list[str],
            connectivity: int | None) -> CaseUncertainty:
    """The mean (the running sum divided in place), its foreground and the case scores."""
    assert bits.total is not None and bits.codes is not None
    mean_p = np.divide(bits.total, np.float32(bits.count), out=bits.total)
    predicted = _foreground(mean_p, activation, threshold)
    return CaseUncertainty(
        mean_probability=mean_p, scores=_scores(bits, mean_p, predicted, activation),
        n_members=bits.count, members=names, codes=bits.codes, predicted=predicted,
        activation=activation, connectivity=connectivity)
