"""Why was it missed? A counterfactual miss analysis: :func:`explain_miss` -> :class:`MissAnalysis`.

The analysis changes the image in one stated way at a time and re-runs the model (the probes of
:mod:`medseg_xai.explain.probes`):

========== ===================================================================================
contrast   the lesion's deviation from its local background scaled (x1.5, x2 for a miss;
           x0.5, x0 for a false positive or a detected lesion)
size       the lesion resampled about its centroid (x1.5, x2; x0.67, x0.5), contrast kept
intensity  the image's intensity distribution matched to ``reference_images`` (a group where
           the model works); only with reference images
noise      total-variation denoising, weight 1 and 3 times the estimated noise sigma
location   the lesion moved to up to 3 plausible positions of the same image, and a detected
           lesion of the image moved into this one's place
========== ===================================================================================

A cause is named only when one of its settings *fixes the error*: a missed lesion becomes
detected, or its lesion probability (the mean class probability over the lesion, which one
noisy voxel cannot move) rises by at least ``margin`` (0.2); for a false positive (or a
detected lesion) it disappears, or its lesion probability falls by ``margin``; for the
location swap, the detected lesion moved here is missed (a mere drop of its probability does
not count: it may be larger than the missed lesion, or of another contrast). Causes are ordered
by strength: settings that flip detection first, then by the largest change of probability.

Attributions are supporting evidence only, and gated (``explain.quality``): a constant or
all-zero map, a map that still correlates with the map of the fully randomised model
(Spearman >= 0.8 of |attribution|), or a path method whose completeness error exceeds 5 % is
reported as failed and kept out of the verdict. Integrated gradients and DeepLift use the lesion
replaced by its local background as baseline; Grad-CAM uses the network's first block
(:func:`~medseg_xai.explain.gradcam.localising_layer`); the target is the mean lesion logit
margin (softmax) or logit (one sigmoid channel) over the lesion.

Comparisons with detected lesions (size, contrast-to-noise ratio) are descriptive and are made
only with at least ``min_comparison`` detected lesions (a cohort's, via ``detected_lesions``, or
else this image's); otherwise the verdict says there are too few.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai._legacy import apply_legacy
from medseg_xai.decide import (
    DecisionRules,
    components,
    foreground,
    is_detected,
    lesion_mask,
    lesion_status,
    parse_lesion_id,
)
from medseg_xai.explain import probes as P
from medseg_xai.explain.budget import answer_oom
from medseg_xai.explain.miss_settings import DEFAULT_MARGIN, MissSettings
from medseg_xai.explain.registry import BASELINE_METHODS, PATH_METHODS, REGISTRY

__all__ = ["CAUSES", "DEFAULT_MARGIN", "MissAnalysis", "MissSettings", "PROBES", "explain_miss"]

#: Cause words, in the order used to break ties.
CAUSES: tuple[str, ...] = ("contrast", "size", "intensity", "noise", "location")
#: Probe names (one per cause).
PROBES: tuple[str, ...] = CAUSES
#: Probes under sliding-window inference evaluate only the windows covering the mask they read
#: (:mod:`medseg_xai.explain.local`); False runs every probe image whole (the reference).
LOCAL_PROBES = True
#: Default probe settings when the error is a miss (make it appear) / otherwise (make it vanish).
SETTINGS_MISS: dict[str, tuple[float, ...]] = {
    "contrast": (1.5, 2.0), "size": (1.5, 2.0), "noise": (1.0, 3.0), "location": (3,)}
SETTINGS_REMOVE: dict[str, tuple[float, ...]] = {
    "contrast": (0.5, 0.0), "size": (0.67, 0.5), "noise": (1.0, 3.0), "location": (3,)}
#: Integrated-gradients steps of the miss analysis (Gauss-Legendre; the path from the
#: lesion-free image is short, so few steps keep completeness within tolerance).
IG_STEPS = 8
#: Largest distance (source voxels) an impulse may move through a pipeline's layer-map mapping.
ALIGNMENT_TOLERANCE = 1.5
# method names and properties: the one registry (explain/registry.py)
_METHOD_NAMES = {m: i.display for m, i in REGISTRY.items()}
_PATH_METHODS = PATH_METHODS
_BASELINE_METHODS = BASELINE_METHODS
PROBE_COLUMNS = ["probe", "setting", "value", "max_prob", "mean_prob", "covered_fraction",
                 "detected", "change", "effect"]
EVIDENCE_COLUMNS = ["method", "layer", "baseline", "enrichment", "inside_share", "total",
                    "completeness_error", "randomisation_spearman", "passed", "reason"]


@dataclass
class MissAnalysis:
    """Why one lesion (or predicted blob, or drawn region) was missed or called.

    Attributes
    ----------
    lesion_id : str
        ``"ref-2"``, ``"pred-3"`` or ``"region"``.
    status : str
        ``"missed"``, ``"detected"``, ``"false_positive"`` (a predicted component with no
        reference lesion), ``"predicted"`` (a predicted component, no reference given) or, for a
        drawn region, ``"missed"`` / ``"detected"`` by the model's own call.
    causes : list of str
        Subset of :data:`CAUSES`, strongest first; ``[]`` when no probe fixes the error (and for
        detected lesions, which have no error to explain).
    probes : pandas.DataFrame
        One row per probe setting, the first the image as acquired: ``probe, setting, value,
        max_prob, mean_prob, covered_fraction, detected, change`` (change of the mean lesion
        probability in the direction that fixes the error), ``effect`` (bool: passes the rule).
    evidence : pandas.DataFrame
        One row per attribution method: ``method, layer, baseline, enrichment`` (share of the
        positive attribution inside the lesion / the lesion's share of the image),
        ``inside_share, total`` (sum of the map), ``completeness_error`` (path methods, else
        NaN), ``randomisation_spearman, passed, reason``.
    verdict : str
        Plain words, one sentence per line, stating only what the probes and evidence show.
    measurements : dict
        ``volume_voxels, volume_mm3, cnr, max_prob, mean_prob, covered_fraction``.
    comparison : dict
        ``source, n_detected, min_required, enough`` and, when enough, ``larger_share``
        (share of detected lesions larger than this one), ``median_volume_mm3``,
        ``higher_cnr_share``, ``median_cnr``.
    settings : dict
        Threshold, overlap threshold, margin, class index, methods, layer, probes, seed.
    attributions : dict of str to numpy.ndarray
        The maps (spatial shape, float32), signed, for figures; not in :meth:`to_dict`.
    mask : numpy.ndarray
        The lesion (boolean, spatial shape), for outlines; not in :meth:`to_dict`.
    elapsed_s : float
        Wall time (not in :meth:`to_dict`, which is deterministic).
    """

    lesion_id: str
    status: str
    causes: list[str]
    probes: pd.DataFrame
    evidence: pd.DataFrame
    verdict: str
    measurements: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    attributions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    elapsed_s: float = 0.0

    @property
    def verdict_lines(self) -> list[str]:
        """The verdict's sentences (its first line is the headline)."""
        return self.verdict.split("\n")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, deterministic: floats rounded to 6 significant digits, NaN as None."""
        return _clean({
            "lesion_id": self.lesion_id,
            "status": self.status,
            "causes": list(self.causes),
            "verdict": self.verdict,
            "measurements": self.measurements,
            "comparison": self.comparison,
            "probes": self.probes.to_dict(orient="records"),
            "evidence": self.evidence.to_dict(orient="records"),
            "settings": self.settings,
        })


def _clean(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return None
        return float(f"{f:.6g}")
    if v is None or isinstance(v, str):
        return v
    return str(v)


# ----------------------------------------------------------------------------- helpers
class _Model:
    """The adapter's class probability and call (``adapters.label_map``), batched and counted.

    With ``local`` (a :class:`~medseg_xai.explain.local.WindowCache` of the original image) and
    masks given, each image is evaluated only inside its mask's box, from the sliding windows
    that cover it: the arrays returned are then zero outside that box.
    """

    def __init__(self, adapter: Any, class_index: int | None, threshold: float,
                 batch: int = 4) -> None:
        self.adapter = adapter
        self.class_index = class_index
        self.threshold = threshold
        self.batch = batch
        self.n_images = 0
        self.local: Any = None

    def _called(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class probability, called) of probabilities ``(N, K, *s)``."""
        from medseg_xai.decide import call_threshold, called

        k = p.shape[1]
        if self.class_index is None:
            self.class_index = 1 if k > 1 else 0
        if not 0 <= self.class_index < k:
            raise ValueError(
                f"class_index: the model has {k} output channels, got {self.class_index}")
        # the toolkit's one decision rule (decide.py); None: 0.5 / argmax as the audit
        self.threshold = call_threshold(self.threshold, None, k, self.adapter.activation)
        calls = called(p, self.class_index, self.threshold, activation=self.adapter.activation,
                       channel_axis=1)
        return p[:, self.class_index], calls

    def __call__(self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
        """(probability, called) per image, both spatial; called = the toolkit's decision."""
        import torch

        if self.local is not None and masks is not None:
            return [self._region(im, m) for im, m in zip(images, masks)]
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for start in range(0, len(images), self.batch):
            chunk = np.stack(images[start:start + self.batch]).astype(np.float32)
            t = torch.from_numpy(chunk).to(self.adapter.device)
            p = self.adapter.probabilities(t).detach().float().cpu().numpy()
            out.extend(zip(*self._called(p)))
            self.n_images += len(chunk)
        return out

    def _region(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from medseg_xai.explain.local import mask_box

        box = mask_box(mask)
        logits = self.local.region_logits(image, box)[None]
        p = self.adapter._activate(logits).numpy()
        pc, called = self._called(p)
        # zeros are allocated lazily: only the box's pages are touched
        pf = np.zeros(mask.shape, np.float32)
        cf = np.zeros(mask.shape, bool)
        pf[box], cf[box] = pc[0], called[0]
        self.n_images += 1
        return pf, cf


def _stats(pc: tuple[np.ndarray, np.ndarray], mask: np.ndarray, overlap: float) -> dict[str, Any]:
    p, called = pc
    vals = p[mask]
    covered = float(called[mask].mean())
    return {"max_prob": float(vals.max()), "mean_prob": float(vals.mean()),
            "covered_fraction": covered, "detected": bool(is_detected(covered, overlap))}


def _foreground(labels: Any, class_index: int, name: str, shape: tuple[int, ...],
                rules: DecisionRules | None, class_value: int | None = None
                ) -> tuple[np.ndarray, int | None]:
    """(foreground mask, lesion class value) of a reference or prediction.

    With an audit's rules: the audit's foreground (its declared label values). Without: a
    boolean mask as given; a prediction label map is read by the reference lesion's class
    ``class_value`` when known (a voxel called as another class does not cover the lesion);
    otherwise a label map with one foreground value is that class and one with several is
    read at ``class_index``.
    """
    a = np.asarray(labels)
    if a.shape != shape:
        raise ValueError(f"{name}: expected the image's spatial shape {shape}, got {a.shape}")
    if rules is not None:
        return foreground(a, rules.label_setting), None
    if a.dtype == bool:
        return a, None
    if class_value is not None:
        return a == class_value, class_value
    values = [v for v in np.unique(a).tolist() if v != 0]
    if len(values) <= 1:  # one foreground value: that is the lesion class
        return a != 0, (int(values[0]) if values else None)
    if class_index not in values:
        raise ValueError(f"{name}: labels {values} do not include the lesion class "
                         f"{class_index}; pass class_index= or a binary mask")
    return a == class_index, int(class_index)


def _resolve_lesion(lesion: Any, ref_fg: np.ndarray | None, pred_fg: np.ndarray,
                    shape: tuple[int, ...], connectivity: int | None = None
                    ) -> tuple[str, np.ndarray, str]:
    """(lesion_id, mask, source) with source 'reference' | 'prediction' | 'region'."""
    if isinstance(lesion, (np.ndarray, list)) and np.asarray(lesion).ndim == len(shape):
        m = np.asarray(lesion) != 0
        if m.shape != shape:
            raise ValueError(f"lesion: a drawn region must have the image's spatial shape {shape}, "
                             f"got {m.shape}")
        if not m.any():
            raise ValueError("lesion: the drawn region is empty")
        return "region", m, "region"
    try:
        kind, k = parse_lesion_id(lesion)
    except ValueError:
        raise ValueError(f"lesion: expected an id such as 'ref-2' or 'pred-3', a 1-based "
                         f"reference lesion number or a mask, got {lesion!r}") from None
    lid = f"{kind}-{k}"
    if kind == "ref" and ref_fg is None:
        raise ValueError(f"lesion {lid!r}: a reference lesion needs ref (the reference mask); "
                         f"without one explain a predicted component ('pred-N') or a drawn mask")
    mask = lesion_mask(ref_fg if kind == "ref" else pred_fg, lid, connectivity)
    return lid, mask, "reference" if kind == "ref" else "prediction"


def _safe_cnr(image: np.ndarray, mask: np.ndarray, exclude: np.ndarray) -> float:
    try:
        return float(P.contrast_to_noise(image, mask, exclude=exclude))
    except ValueError:
        return float("nan")


# ----------------------------------------------------------------------------- probes
def _probe_images(
    name: str,
    settings: Sequence[Any],
    img: np.ndarray,
    mask: np.ndarray,
    filled: np.ndarray,
    exclude: np.ndarray,
    reference_images: Sequence[Any] | None,
    seed: int,
) -> list[tuple[str, float, np.ndarray, np.ndarray]]:
    """(setting words, value, image, mask where the lesion now is) for one probe."""
    out: list[tuple[str, float, np.ndarray, np.ndarray]] = []
    if name == "contrast":
        for f in settings:
            out.append((f"contrast x{float(f):g} over local background", float(f),
                        P.scale_lesion_contrast(img, mask, float(f), filled=filled), mask))
    elif name == "size":
        for s in settings:
            changed, m2 = P.resize_lesion(img, mask, float(s), filled=filled, exclude=exclude)
            out.append((f"lesion resampled x{float(s):g} per axis", float(s), changed, m2))
    elif name == "intensity":
        if reference_images:
            out.append((f"intensities matched to {len(reference_images)} reference image(s)",
                        float(len(reference_images)), P.match_intensity(img, reference_images),
                        mask))
    elif name == "noise":
        for w in settings:
            out.append((f"denoised (total variation, weight {float(w):g} x noise sigma)",
                        float(w), P.denoise(img, float(w)), mask))
    elif name == "location":
        n = int(settings[0]) if settings else 3
        for shift in P.plausible_positions(img, mask, n, exclude=exclude, seed=seed):
            moved, m2 = P.move_lesion(img, mask, shift, filled=filled)
            words = "moved by (" + ", ".join(str(s) for s in shift) + ") voxels"
            out.append((words, float(np.linalg.norm(shift)), moved, m2))
    else:
        raise ValueError(f"probes: unknown probe {name!r}; expected some of {list(PROBES)}")
    return out


def _swap_image(
    img: np.ndarray, mask: np.ndarray, donor: np.ndarray, filled_target: np.ndarray,
) -> tuple[np.ndarray, np.ndarray] | None:
    """A detected lesion (``donor``) moved into ``mask``'s place (this lesion removed first)."""
    c_t = np.round(np.array([np.mean(i) for i in np.nonzero(mask)])).astype(int)
    c_d = np.round(np.array([np.mean(i) for i in np.nonzero(donor)])).astype(int)
    shift = tuple(int(v) for v in c_t - c_d)
    donor_filled = P.fill_lesion(img, donor, exclude=mask)
    try:
        # take the donor from the original image, add it to the image without this lesion
        return P.move_lesion(filled_target, donor, shift, filled=donor_filled, source_image=img)
    except ValueError:
        return None


def _run_probes(
    model: _Model,
    img: np.ndarray,
    mask: np.ndarray,
    base: dict[str, Any],
    want_detect: bool,
    probe_spec: Mapping[str, Sequence[Any]],
    exclude: np.ndarray,
    donor: tuple[str, np.ndarray, dict[str, Any]] | None,
    reference_images: Sequence[Any] | None,
    overlap: float,
    margin: float,
    seed: int,
) -> pd.DataFrame:
    filled = P.fill_lesion(img, mask, exclude=exclude)
    jobs: list[tuple[str, str, float, np.ndarray, np.ndarray]] = []
    for name, settings in probe_spec.items():
        for words, value, changed, m2 in _probe_images(name, settings, img, mask, filled, exclude,
                                                       reference_images, seed):
            jobs.append((name, words, value, changed, m2))
    swap = None
    if donor is not None and "location" in probe_spec:
        swapped = _swap_image(img, mask, donor[1], filled)
        if swapped is not None:
            swap = (f"detected {donor[0]} moved into this place", *swapped)
    images = [j[3] for j in jobs] + ([swap[1]] if swap else [])
    masks = [j[4] for j in jobs] + ([swap[2]] if swap else [])  # where each is read
    probs = model(images, masks) if images else []
    rows = [{"probe": "original", "setting": "as acquired", "value": 1.0, **base,
             "change": 0.0, "effect": False}]
    sign = 1.0 if want_detect else -1.0
    for (name, words, value, _img, m2), p in zip(jobs, probs):
        st = _stats(p, m2, overlap)
        change = sign * (st["mean_prob"] - base["mean_prob"])
        flipped = st["detected"] != base["detected"] and st["detected"] == want_detect
        rows.append({"probe": name, "setting": words, "value": value, **st, "change": change,
                     "effect": bool(flipped or change >= margin)})
    if swap is not None:
        st = _stats(probs[-1], swap[2], overlap)
        d = donor[2]
        # supports "location" when the place makes a detected lesion vanish (or fade)
        change = d["mean_prob"] - st["mean_prob"]
        flipped = d["detected"] and not st["detected"]
        rows.append({"probe": "location", "setting": swap[0], "value": float("nan"), **st,
                     "change": change if want_detect else -change,
                     # only a detected lesion that is *missed* here says the place is why
                     "effect": bool(want_detect and flipped)})
    return pd.DataFrame(rows, columns=PROBE_COLUMNS)


def _causes(table: pd.DataFrame) -> list[str]:
    found = []
    for name in CAUSES:
        rows = table[(table["probe"] == name) & table["effect"]]
        if len(rows):
            detect_flip = bool((rows["detected"] != table["detected"].iloc[0]).any())
            found.append((-int(detect_flip), -float(rows["change"].max()), CAUSES.index(name), name))
    return [f[3] for f in sorted(found)]


# ----------------------------------------------------------------------------- evidence
def _target(adapter: Any, mask: np.ndarray, class_index: int, k: int) -> Any:
    from medseg_xai import targets

    return targets.region(class_index, mask, margin=(adapter.activation == "softmax" and k > 1))


def _method_kwargs(adapter: Any, img: np.ndarray, method: str, layer: str | None,
                   kwargs: dict[str, Any], row: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The method's keyword arguments with this analysis's defaults, and its layer (if any)."""
    from medseg_xai.explain.captum_methods import LOCAL_BACKGROUND
    from medseg_xai.explain.gradcam import localising_layer

    kw = dict(kwargs)
    if method in ("gradcam", "gradcam++"):
        kw.setdefault("relu", False)  # keep the sign; enrichment uses the positive part
        layer = layer or localising_layer(adapter, img.shape)
        row["layer"] = layer
    if method in _BASELINE_METHODS:
        kw.setdefault("baseline", LOCAL_BACKGROUND)
        row["baseline"] = kw["baseline"] if isinstance(kw["baseline"], (str, int, float)) \
            else "array"
    if method == "integrated_gradients":
        kw.setdefault("n_steps", IG_STEPS)
        if adapter.sliding_window is not None:  # 4 steps per pass, not 32 volumes at once
            kw.setdefault("batch_size", 4)
    return kw, (layer if method in ("gradcam", "gradcam++") else None)


def _completeness(adapter: Any, img: np.ndarray, mask: np.ndarray, target: Any,
                  kw: dict[str, Any], row: dict[str, Any], reasons: list[str]) -> None:
    """Check a path method's completeness: the map's total against f(x) - f(baseline)."""
    import torch

    from medseg_xai.explain.captum_methods import local_background_baseline
    from medseg_xai.explain.quality import COMPLETENESS_TOLERANCE, completeness_error

    x = torch.from_numpy(img[None]).to(adapter.device)
    b = kw["baseline"]
    if isinstance(b, str):
        xb = local_background_baseline(x, mask)
    elif isinstance(b, (int, float)):
        xb = torch.full_like(x, float(b))
    elif isinstance(b, torch.Tensor):
        xb = b.detach().to(device=x.device, dtype=x.dtype).reshape(x.shape)
    else:
        xb = torch.as_tensor(np.asarray(b, dtype=np.float32), device=x.device).reshape(x.shape)
    with torch.no_grad():
        both = torch.cat([x, xb])
        if adapter.sliding_window is not None:  # only the windows the target reads (#25)
            from medseg_xai.explain.windowed import windowed_target

            with adapter.frozen(freeze_parameters=False):
                vals = windowed_target(adapter, target)(both)
        else:
            vals = target(adapter.logits(both))
        fx, fb = (float(v) for v in vals)
    err = completeness_error(row["total"], fx, fb)
    row["completeness_error"] = err
    if not (np.isfinite(fx) and np.isfinite(fb)):
        reasons.append("the target is not finite at the baseline (the model cannot take it)")
    elif err > COMPLETENESS_TOLERANCE:
        reasons.append(f"completeness error {err:.0%} > {COMPLETENESS_TOLERANCE:.0%}")


def _randomisation(adapter: Any, img: np.ndarray, mask: np.ndarray, target: Any, method: str,
                   lay: str | None, kw: dict[str, Any], a: np.ndarray, seed: int,
                   randomised: dict[str, Any], row: dict[str, Any], reasons: list[str]) -> None:
    """Check that the map changes when the model's parameters are randomised."""
    from medseg_xai.explain.core import explain
    from medseg_xai.explain.quality import (
        RANDOMISATION_MAX_SPEARMAN,
        randomisation_similarity,
        randomised_copy,
    )

    try:
        if "adapter" not in randomised:  # one re-initialised copy serves every method
            randomised["adapter"] = randomised_copy(adapter, seed)
        rand = randomised["adapter"]
        kr = dict(kw)
        if method == "integrated_gradients":  # rank similarity needs no accurate integral
            kr["n_steps"] = max(2, int(kw["n_steps"]) // 2)
        ra = explain(rand, img, target, method=method, layer=lay, **kr).attribution
        region = mask if method in _BASELINE_METHODS else None
        rho = randomisation_similarity(a, ra, region)
        row["randomisation_spearman"] = rho
        if np.isfinite(rho) and rho >= RANDOMISATION_MAX_SPEARMAN:
            reasons.append(f"map survives parameter randomisation (Spearman {rho:.2f} >= "
                           f"{RANDOMISATION_MAX_SPEARMAN:g})")
    except ValueError as err:
        reasons.append(f"randomisation check could not run: {err}")


def _evidence(
    adapter: Any,
    img: np.ndarray,
    mask: np.ndarray,
    target: Any,
    method: str,
    layer: str | None,
    kwargs: dict[str, Any],
    seed: int,
    randomised: dict[str, Any],
) -> tuple[dict[str, Any], np.ndarray | None]:
    """One method's attribution map and its gated summary row (passed, and why not)."""
    from medseg_xai.explain.core import explain
    from medseg_xai.explain.quality import map_gate

    row: dict[str, Any] = {"method": method, "layer": None, "baseline": None,
                           "enrichment": float("nan"), "inside_share": float("nan"),
                           "total": float("nan"), "completeness_error": float("nan"),
                           "randomisation_spearman": float("nan"), "passed": False, "reason": ""}
    try:
        kw, lay = _method_kwargs(adapter, img, method, layer, kwargs, row)
        exp = explain(adapter, img, target, method=method, layer=lay, **kw)
    except ValueError as err:
        row["reason"] = f"could not run: {err}"
        return row, None
    a = exp.attribution
    pos = np.clip(a.astype(np.float64), 0.0, None)
    share = float(pos[mask].sum() / pos.sum()) if pos.sum() > 0 else float("nan")
    row["inside_share"] = share
    row["enrichment"] = share / float(mask.mean()) if np.isfinite(share) else float("nan")
    row["total"] = float(a.astype(np.float64).sum())
    reasons: list[str] = []
    gate = map_gate(a)
    if gate:
        reasons.append(gate)
    align = getattr(adapter.model, "alignment_error", None)  # pipelines that map layer grids
    if method in ("gradcam", "gradcam++") and callable(align):
        moved = align(tuple(img.shape[1:]))
        if moved > ALIGNMENT_TOLERANCE:
            reasons.append(f"layer map misaligned: an impulse comes back {moved:.1f} voxels "
                           f"from where it started (> {ALIGNMENT_TOLERANCE:g})")
    if method in _PATH_METHODS:
        _completeness(adapter, img, mask, target, kw, row, reasons)
    if not gate:
        _randomisation(adapter, img, mask, target, method, lay, kw, a, seed, randomised, row,
                       reasons)
    row["passed"] = not reasons
    row["reason"] = "; ".join(reasons) if reasons else "passed: varies, changes under parameter " \
        "randomisation" + (", complete" if method in _PATH_METHODS else "")
    return row, a


# ----------------------------------------------------------------------------- comparison
def _comparison(volume: float, cnr: float, detected: pd.DataFrame, source: str,
                minimum: int) -> dict[str, Any]:
    n = int(len(detected))
    out: dict[str, Any] = {"source": source, "n_detected": n, "min_required": int(minimum),
                           "enough": n >= minimum}
    if n < minimum:
        return out
    vols = pd.to_numeric(detected.get("volume_mm3"), errors="coerce").dropna().to_numpy(float) \
        if "volume_mm3" in detected else np.array([])
    if vols.size and np.isfinite(volume):
        out["larger_share"] = float((vols > volume).mean())
        out["median_volume_mm3"] = float(np.median(vols))
    cnrs = pd.to_numeric(detected["cnr"], errors="coerce").to_numpy(float) \
        if "cnr" in detected else np.array([])
    cnrs = cnrs[np.isfinite(cnrs)]
    if cnrs.size >= minimum and np.isfinite(cnr):
        out["higher_cnr_share"] = float((cnrs > cnr).mean())
        out["median_cnr"] = float(np.median(cnrs))
    return out


# ----------------------------------------------------------------------------- verdict
def _share(x: float) -> str:
    """A share as a percentage with two significant digits (0.15%, 12%, 100%)."""
    return f"{100 * x:.2g}%" if x < 0.995 else "100%"


def _fmt_p(p: float) -> str:
    return f"{p:.2f}" if p >= 0.005 or p == 0 else f"{p:.1e}"


def _headline(lid: str, status: str, table: pd.DataFrame, st: dict[str, Any]) -> str:
    """The verdict's first line: status, lesion probability and the share called lesion."""
    thr, ov = st["threshold"], st["overlap_threshold"]
    o = table.iloc[0]
    headline = {
        "missed": f"{lid} was missed",
        "detected": f"{lid} was detected",
        "false_positive": f"{lid} is a false positive (no reference lesion overlaps it)",
        "predicted": f"{lid} is a region the model calls lesion (no reference given)",
    }[status]
    at = (f" at threshold {thr:.2f}" if thr is not None
          else f", where class {st['class_index']} is the most probable class")
    return (f"{headline}: its highest class {st['class_index']} probability is "
            f"{_fmt_p(o['max_prob'])} (mean {_fmt_p(o['mean_prob'])}) and "
            f"{o['covered_fraction']:.0%} of its voxels are called lesion{at} ({ov:.0%} needed "
            f"to count as detected).")


def _probe_lines(status: str, causes: list[str], table: pd.DataFrame, st: dict[str, Any],
                 skipped: list[str]) -> list[str]:
    """The verdict's lines on the probes: the causes named, then one line per probe."""
    lines = []
    want = "detected" if status == "missed" else "no longer called lesion"
    rule = (f"a cause is named when a probe makes it {want} or moves its mean lesion "
            f"probability by at least {st['margin']:g} that way")
    if status == "detected":
        dep = [c for c in CAUSES if bool(table[(table["probe"] == c)]["effect"].any())]
        lines.append("Probes re-run through the model: its detection depends on "
                     + (", ".join(dep) if dep else "none of the probed factors") + f" ({rule}).")
    elif causes:
        lines.append(f"Probes re-run through the model name: {', '.join(causes)} ({rule}).")
    else:
        lines.append(f"Probes re-run through the model name no cause ({rule}).")
    for name in CAUSES:
        rows = table[table["probe"] == name]
        if rows.empty:
            continue
        best = rows.iloc[int(np.argmax(rows["change"].to_numpy()))]
        parts = "; ".join(
            f"{r.setting}: mean {_fmt_p(r.mean_prob)}, max {_fmt_p(r.max_prob)}"
            f"{' (detected)' if r.detected else ''}" for r in rows.itertuples())
        tag = "effect" if rows["effect"].any() else "no effect"
        lines.append(f"- {name} ({tag}; best change {best['change']:+.2f}): {parts}.")
    for name in skipped:
        why = ("no reference images given" if name == "intensity"
               else "no plausible position found" if name == "location" else "not requested")
        lines.append(f"- {name}: not probed ({why}).")
    return lines


def _evidence_lines(ev: pd.DataFrame, meas: dict[str, Any], st: dict[str, Any]) -> list[str]:
    """The verdict's lines on the attribution maps, one per method."""
    lines = []
    for r in ev.itertuples():
        who = _METHOD_NAMES.get(r.method, r.method)
        extra = f" at layer {r.layer}" if isinstance(r.layer, str) else ""
        local = r.baseline == "local_background"
        if isinstance(r.baseline, str):
            extra += (", baseline: the lesion replaced by its local background" if local
                      else f", baseline {r.baseline}")
        if not r.passed:
            lines.append(f"Attribution {who}{extra}: excluded from the verdict ({r.reason}).")
            continue
        if local and r.method in _BASELINE_METHODS:
            # by construction the map is zero where the image equals the baseline
            where = "its map lies inside the lesion by construction"
        elif np.isfinite(r.enrichment):
            where = (f"{_share(r.inside_share)} of its positive mass lies inside the lesion, "
                     f"{r.enrichment:.3g}x the lesion's share of the image "
                     f"({_share(meas['lesion_fraction'])})")
        else:
            where = "no positive attribution anywhere (only evidence against a lesion)"
        if r.method in _PATH_METHODS:
            where += (f"; the lesion's appearance changes the target ({st['target']}) by "
                      f"{r.total:+.3g} (completeness error {r.completeness_error:.1%})")
        lines.append(f"Attribution {who}{extra} (supporting evidence only): {where}.")
    return lines


def _comparison_lines(comp: dict[str, Any], meas: dict[str, Any]) -> list[str]:
    """The verdict's line comparing the lesion with detected ones (or saying there are too few)."""
    if not comp.get("enough"):
        return [f"Too few detected lesions to compare size or contrast with "
                f"({comp['n_detected']} in {comp['source']}, at least "
                f"{comp['min_required']} needed)."]
    bits = []
    if "larger_share" in comp:
        bits.append(f"{comp['larger_share']:.0%} of them are larger (median "
                    f"{comp['median_volume_mm3']:.0f} mm3; this one "
                    f"{meas['volume_mm3']:.0f} mm3)")
    if "higher_cnr_share" in comp:
        bits.append(f"{comp['higher_cnr_share']:.0%} have a higher contrast-to-noise ratio "
                    f"(median {comp['median_cnr']:.2f}; this one {meas['cnr']:.2f})")
    if not bits:
        return []
    return [f"Compared with {comp['n_detected']} detected lesions ({comp['source']}): "
            + "; ".join(bits) + "."]


def _verdict(lid: str, status: str, causes: list[str], table: pd.DataFrame, ev: pd.DataFrame,
             comp: dict[str, Any], meas: dict[str, Any], st: dict[str, Any],
             skipped: list[str]) -> str:
    """The plain-language verdict: headline, probes, attribution evidence, comparison."""
    lines = [_headline(lid, status, table, st)]
    lines += _probe_lines(status, causes, table, st, skipped)
    lines += _evidence_lines(ev, meas, st)
    lines += _comparison_lines(comp, meas)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- entry point
def _probe_spec(probes: Any, want_detect: bool) -> dict[str, tuple[Any, ...]]:
    defaults = SETTINGS_MISS if want_detect else SETTINGS_REMOVE
    if probes is None:
        names: Sequence[str] = PROBES
        given: Mapping[str, Any] = {}
    elif isinstance(probes, Mapping):
        names, given = list(probes), probes
    elif isinstance(probes, str):
        names, given = [probes], {}
    else:
        names, given = list(probes), {}
    spec: dict[str, tuple[Any, ...]] = {}
    for n in names:
        if n not in PROBES:
            raise ValueError(f"probes: unknown probe {n!r}; expected some of {list(PROBES)}")
        value = given.get(n)
        spec[n] = tuple(value) if value is not None else defaults.get(n, ())
    return spec


def _check_methods(methods: Sequence[str] | str) -> tuple[str, ...]:
    from medseg_xai.explain.core import METHODS

    if isinstance(methods, str):
        methods = (methods,)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {list(METHODS)}")
    return tuple(methods)


def _check_spacing(spacing: Sequence[float] | None, shape: tuple[int, ...]) -> tuple[float, ...]:
    from medseg_xai._validation import check_spacing  # the shared check

    return check_spacing(spacing, len(shape))


def _decide(ref: Any, pred: Any, p0: tuple[np.ndarray, np.ndarray], lesion: Any, ci: int,
            shape: tuple[int, ...], rules: DecisionRules, given: bool
            ) -> tuple[np.ndarray | None, np.ndarray, str, np.ndarray, str, str]:
    """(ref_fg, pred_fg, lesion id, lesion mask, source, status) by ``medseg_xai.decide``.

    The status of a reference lesion comes from the rules' matching (the audit's own table);
    a predicted component is a false positive when it touches no reference voxel.
    """
    audit_rules = rules if given else None
    ref_fg, value = (None, None) if ref is None else _foreground(ref, ci, "ref", shape,
                                                                  audit_rules)
    if pred is None:
        pred_fg = p0[1]
    else:
        pred_fg, _ = _foreground(pred, ci, "pred", shape, audit_rules, value)
    lid, mask, source = _resolve_lesion(lesion, ref_fg, pred_fg, shape, rules.connectivity)
    if source == "reference":
        status = lesion_status(pred_fg, ref_fg, lid, rules)
    elif source == "prediction":
        status = "predicted" if ref_fg is None else (
            "false_positive" if not (ref_fg & mask).any() else "detected")
    else:
        status = ""
    return ref_fg, pred_fg, lid, mask, source, status


def _donors(img: np.ndarray, p0: tuple[np.ndarray, np.ndarray], ref_fg: np.ndarray | None,
            pred_fg: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...],
            overlap_threshold: float, connectivity: int | None, want_detect: bool
            ) -> tuple[Any, list[dict[str, Any]]]:
    """A detected lesion of this image to move into a missed one's place, and the detected
    reference lesions of this image (the comparison without a cohort)."""
    donor = None
    rows: list[dict[str, Any]] = []
    if ref_fg is None:
        return donor, rows
    labels, n = components(ref_fg, connectivity)
    for j in range(1, n + 1):
        mj = labels == j
        if (mj & mask).any():
            continue
        sj = _stats(p0, mj, overlap_threshold)
        if sj["detected"]:
            rows.append({"lesion_id": f"ref-{j}", "volume_mm3": float(mj.sum() * np.prod(spacing)),
                         "cnr": _safe_cnr(img, mj, (ref_fg | pred_fg) & ~mj)})
            if donor is None and want_detect:
                donor = (f"ref-{j}", mj, sj)
    return donor, rows


def _check_rules(adapter: Any, rules: Any, threshold: float | None, overlap_threshold: float,
                 margin: float) -> tuple[DecisionRules | None, float | None, float]:
    """An audit's rules (they replace ``threshold`` and ``overlap_threshold``), checked."""
    if rules is not None:
        rules = rules if isinstance(rules, DecisionRules) else DecisionRules.from_settings(rules)
        threshold = rules.threshold if rules.threshold is not None else getattr(
            adapter, "threshold", None)
        overlap_threshold = rules.overlap_threshold
    if threshold is not None and not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold: expected a probability in (0, 1), got {threshold!r}")
    if not 0.0 < float(overlap_threshold) <= 1.0:
        raise ValueError(f"overlap_threshold: expected a share in (0, 1], got {overlap_threshold!r}")
    if not 0.0 < float(margin) < 1.0:
        raise ValueError(f"margin: expected a probability change in (0, 1), got {margin!r}")
    return rules, threshold, float(overlap_threshold)


def _evidence_rows(adapter: Any, img: np.ndarray, mask: np.ndarray, target: Any,
                   methods: Sequence[str], layer: str | None,
                   method_kwargs: Mapping[str, Mapping[str, Any]] | None, seed: int
                   ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """One gated evidence row (and map) per attribution method."""
    rows, maps, randomised = [], {}, {}
    for method in methods:
        kw = dict((method_kwargs or {}).get(method, {}))
        row, a = _evidence(adapter, img, mask, target, method, layer, kw, seed, randomised)
        rows.append(row)
        if a is not None:
            maps[method] = a
    return rows, maps


def _measurements(img: np.ndarray, mask: np.ndarray, exclude: np.ndarray,
                  base: Mapping[str, Any], spacing: Sequence[float]) -> dict[str, Any]:
    return {"volume_voxels": int(mask.sum()), "volume_mm3": float(mask.sum() * np.prod(spacing)),
            "cnr": _safe_cnr(img, mask, exclude),
            **{k: base[k] for k in ("max_prob", "mean_prob", "covered_fraction")},
            "lesion_fraction": float(mask.mean())}


def _prepare(adapter: Any, image: Any, spacing: Sequence[float] | None, methods: Any,
             class_index: int | None, threshold: float | None
             ) -> tuple[tuple[str, ...], np.ndarray, tuple[float, ...], _Model,
                        tuple[np.ndarray, np.ndarray], int]:
    """Checked methods, image and spacing, the model wrapper, its call and its class index."""
    if methods is None:  # Grad-CAM and IG where the model allows them, else occlusion
        from medseg_xai.explain.core import default_methods

        methods = default_methods(adapter, miss=True)
    methods = _check_methods(methods)
    img = P.as_image(image, adapter.spatial_dims)
    spacing = _check_spacing(spacing, tuple(img.shape[1:]))
    model = _Model(adapter, class_index, None if threshold is None else float(threshold))
    p0 = model([img])[0]
    if LOCAL_PROBES and adapter.sliding_window is not None:
        from medseg_xai.explain.local import WindowCache

        # probes run only the windows covering the lesion (#25; docs/scale.md)
        model.local = WindowCache(adapter, img)
    return methods, img, spacing, model, p0, int(model.class_index)


def _probe_stage(model: _Model, img: np.ndarray, p0: tuple[np.ndarray, np.ndarray],
                 mask: np.ndarray, base: dict[str, Any], status: str,
                 fgs: tuple[np.ndarray | None, np.ndarray], spacing: tuple[float, ...],
                 overlap_threshold: float, rules: DecisionRules, probes: Any,
                 reference_images: Sequence[Any] | None, margin: float, seed: int
                 ) -> tuple[pd.DataFrame, dict[str, tuple[Any, ...]], list[str], np.ndarray,
                            list[dict[str, Any]], list[str]]:
    """Run the probes: (table, spec, skipped, excluded voxels, detected lesion rows, causes)."""
    from scipy import ndimage

    ref_fg, pred_fg = fgs
    want_detect = status == "missed"
    shape = tuple(img.shape[1:])
    others = ((ref_fg if ref_fg is not None else np.zeros(shape, bool)) | pred_fg) & ~mask
    exclude = ndimage.binary_dilation(others, iterations=1) & ~mask
    donor, detected_rows = _donors(img, p0, ref_fg, pred_fg, mask, spacing, overlap_threshold,
                                   rules.connectivity, want_detect)
    spec = _probe_spec(probes, want_detect)
    skipped = []
    if "intensity" in spec and not reference_images:
        skipped.append("intensity")
    table = _run_probes(model, img, mask, base, want_detect, spec, exclude, donor,
                        reference_images, overlap_threshold, margin, seed)
    if "location" in spec and not (table["probe"] == "location").any():
        skipped.append("location")
    causes = _causes(table) if status != "detected" else []
    return table, spec, skipped, exclude, detected_rows, causes


def _compare(img: np.ndarray, mask: np.ndarray, exclude: np.ndarray, base: dict[str, Any],
             spacing: tuple[float, ...], detected_rows: list[dict[str, Any]],
             detected_lesions: pd.DataFrame | None, min_comparison: int
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The lesion's measurements and their comparison with detected lesions."""
    meas = _measurements(img, mask, exclude, base, spacing)
    det = pd.DataFrame(detected_rows) if detected_lesions is None else detected_lesions
    if "status" in det:
        det = det[det["status"] == "detected"]
    comp = _comparison(meas["volume_mm3"], meas["cnr"], det,
                       "this image" if detected_lesions is None else "the cohort", min_comparison)
    return meas, comp


def _settings(case_id: str | None, model: _Model, overlap_threshold: float,
              rules: DecisionRules, margin: float, ci: int, methods: Sequence[str],
              rows: list[dict[str, Any]], spec: dict[str, tuple[Any, ...]], seed: int,
              target: Any, reference_images: Sequence[Any] | None) -> dict[str, Any]:
    """The settings an analysis records (and its verdict quotes)."""
    return {
        "case_id": case_id, "threshold": model.threshold,
        "overlap_threshold": float(overlap_threshold), "matching": rules.matching,
        "connectivity": rules.connectivity,
        "margin": float(margin), "class_index": ci, "methods": list(methods),
        "layer": next((r["layer"] for r in rows if r["layer"]), None),
        "probes": {n: list(v) for n, v in spec.items()}, "seed": int(seed),
        "target": target.describe(), "n_model_images": model.n_images,
        "reference_images": len(reference_images) if reference_images else 0,
    }


def _locate(ref: Any, pred: Any, p0: tuple[np.ndarray, np.ndarray], lesion: Any, ci: int,
            shape: tuple[int, ...], rules: DecisionRules | None, overlap_threshold: float
            ) -> tuple[DecisionRules, str, np.ndarray, str, dict[str, Any],
                       tuple[np.ndarray | None, np.ndarray]]:
    """(rules, lesion id, mask, status, model's stats on it, (ref_fg, pred_fg))."""
    given = rules is not None
    rules = rules or DecisionRules(overlap_threshold=float(overlap_threshold))
    ref_fg, pred_fg, lid, mask, source, status = _decide(ref, pred, p0, lesion, ci, shape, rules,
                                                         given)
    base = _stats(p0, mask, overlap_threshold)
    if source == "region":
        status = "detected" if base["detected"] else "missed"
    return rules, lid, mask, status, base, (ref_fg, pred_fg)


def _evidence_stage(adapter: Any, img: np.ndarray, mask: np.ndarray, ci: int,
                    methods: Sequence[str], layer: str | None,
                    method_kwargs: Mapping[str, Mapping[str, Any]] | None, seed: int
                    ) -> tuple[Any, list[dict[str, Any]], dict[str, np.ndarray], pd.DataFrame]:
    """The attribution target, the evidence rows and maps, and the evidence table."""
    target = _target(adapter, mask, ci, 2 if adapter.activation == "softmax" else 1)
    rows, maps = _evidence_rows(adapter, img, mask, target, methods, layer, method_kwargs, seed)
    return target, rows, maps, pd.DataFrame(rows, columns=EVIDENCE_COLUMNS)


@answer_oom("explain_miss()")
def explain_miss(
    adapter: Any, image: Any, ref: Any, lesion: Any, *, pred: Any = None,
    spacing: Sequence[float] | None = None, reference_images: Sequence[Any] | None = None,
    detected_lesions: pd.DataFrame | None = None,
    rules: DecisionRules | Mapping[str, Any] | None = None, case_id: str | None = None,
    settings: MissSettings | Mapping[str, Any] | None = None, **legacy: Any,
) -> MissAnalysis:
    """Why did the model miss (or call) this lesion? Probes re-run through the model.

    Parameters
    ----------
    adapter : SegmentationAdapter
        The model.
    image : array
        ``(C, *spatial)`` or spatial only.
    ref : array or None
        Reference label map; None for a case without one (explain ``"pred-N"`` or a mask).
    lesion : str, int or array
        ``"ref-N"`` (1-based, the audit's ids) or int N, ``"pred-N"`` (a predicted component)
        or a boolean mask.
    pred : array, optional
        The prediction the status is read from; default the model's call. Probes re-run it.
    spacing : sequence of float, optional
        Voxel size in mm (volumes).
    reference_images : sequence of arrays, optional
        Images from a group where the model works, for the intensity probe.
    detected_lesions : pandas.DataFrame, optional
        A cohort's detected lesions (``volume_mm3``, ``cnr``) to compare with; default this image's.
    rules : DecisionRules or mapping, optional
        An audit's decision rules (replace both thresholds; ``ref-N`` gets the audit's status).
    case_id : str, optional
        Recorded in ``settings``.
    settings : MissSettings or mapping, optional
        How the analysis runs: ``probes``, ``methods``, ``layer``, ``method_kwargs``,
        ``threshold``, ``overlap_threshold``, ``class_index``, ``margin``, ``min_comparison``,
        ``seed`` (:class:`~medseg_xai.explain.miss_settings.MissSettings`, ``mx.MissSettings``;
        default its defaults).
    **legacy
        Those settings as keywords (``methods=()``, ``seed=1``...): still accepted for one
        release, with a ``FutureWarning`` naming ``settings=MissSettings(...)``. Any other
        keyword is a ``TypeError``.

    Returns
    -------
    MissAnalysis
    """
    start = time.perf_counter()
    opts = apply_legacy("explain_miss", MissSettings, settings, legacy)
    rules, threshold, overlap_threshold = _check_rules(adapter, rules, opts.threshold,
                                                       opts.overlap_threshold, opts.margin)
    margin, seed = opts.margin, opts.seed
    methods, img, spacing, model, p0, ci = _prepare(adapter, image, spacing, opts.methods,
                                                    opts.class_index, threshold)
    rules, lid, mask, status, base, fgs = _locate(ref, pred, p0, lesion, ci, tuple(img.shape[1:]),
                                                  rules, overlap_threshold)
    table, spec, skipped, exclude, detected_rows, causes = _probe_stage(
        model, img, p0, mask, base, status, fgs, spacing, overlap_threshold, rules, opts.probes,
        reference_images, margin, seed)
    target, rows, maps, evidence = _evidence_stage(adapter, img, mask, ci, methods, opts.layer,
                                                   opts.method_kwargs, seed)
    meas, comp = _compare(img, mask, exclude, base, spacing, detected_rows, detected_lesions,
                          opts.min_comparison)
    recorded = _settings(case_id, model, overlap_threshold, rules, margin, ci, methods, rows,
                         spec, seed, target, reference_images)
    verdict = _verdict(lid, status, causes, table, evidence, comp, meas, recorded, skipped)
    return MissAnalysis(lesion_id=lid, status=status, causes=causes, probes=table,
                        evidence=evidence, verdict=verdict, measurements=meas, comparison=comp,
                        settings=recorded, attributions=maps, mask=mask,
                        elapsed_s=time.perf_counter() - start)
