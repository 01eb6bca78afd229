"""The plain-words miss verdict, computed from measurements (no widgets here).

Four pieces of evidence are combined for one lesion:

- its size and contrast-to-noise ratio against the lesions the model *did* detect,
- the model's maximum foreground probability inside it against the decision threshold,
- where the attribution mass lies (share inside the lesion, from
  ``explain.quality.localisation``, against the lesion's share of the volume),
- a contrast sweep: the lesion's contrast over its local background is scaled by factors and the
  model re-run, giving the lesion probability per factor (:func:`contrast_sweep`).

:func:`miss_verdict` only formats and weighs numbers it is given, so it is cheap and testable;
:func:`contrast_to_noise` and :func:`contrast_sweep` compute the measurements.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

__all__ = [
    "DEFAULT_FACTORS",
    "Finding",
    "Verdict",
    "contrast_sweep",
    "contrast_to_noise",
    "local_background",
    "miss_verdict",
    "scale_contrast",
]

#: Contrast factors of the default sweep (1.0 = the image as acquired).
DEFAULT_FACTORS: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)


def _mask(mask: Any, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype == object:
        raise ValueError(f"{name}: expected a numeric or boolean mask, got dtype object")
    m = m != 0
    if shape is not None and m.shape != shape:
        raise ValueError(f"{name}: expected shape {shape} (the image's spatial shape), got {m.shape}")
    if not m.any():
        raise ValueError(f"{name}: expected at least one foreground voxel, got an empty mask")
    return m


def _image(image: Any, name: str = "image") -> np.ndarray:
    """Return a float32 ``(C, *spatial)`` array; a spatial-only array gets ``C=1``."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim not in (2, 3, 4):
        raise ValueError(
            f"{name}: expected (H, W), (D, H, W) or (C, *spatial) array, got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite values, got NaN or infinite values")
    return arr


def _ring(mask: np.ndarray, margin: int) -> np.ndarray:
    if int(margin) < 1:
        raise ValueError(f"margin: expected a positive number of voxels, got {margin!r}")
    grown = ndimage.binary_dilation(mask, iterations=int(margin))
    return grown & ~mask


def local_background(
    image2or3d: Any, mask: Any, *, margin: int = 3, exclude: Any = None
) -> tuple[float, float]:
    """Median and standard deviation of the intensities in a ring around a lesion.

    Parameters
    ----------
    image2or3d : array-like
        One channel, spatial shape only.
    mask : array-like
        The lesion (same shape).
    margin : int
        Ring width in voxels (the lesion dilated ``margin`` times, minus the lesion).
    exclude : array-like, optional
        Voxels kept out of the ring (e.g. other lesions).

    Returns
    -------
    (median, std) : tuple of float
    """
    img = np.asarray(image2or3d, dtype=np.float64)
    m = _mask(mask, "mask", img.shape)
    ring = _ring(m, margin)
    if exclude is not None:
        ring &= ~(np.asarray(exclude) != 0)
    if not ring.any():
        raise ValueError(
            f"mask: expected background voxels within {margin} voxels of the lesion, found none"
        )
    vals = img[ring]
    return float(np.median(vals)), float(vals.std())


def contrast_to_noise(
    image: Any, mask: Any, *, margin: int = 3, exclude: Any = None, channel: int = 0
) -> float:
    """Contrast-to-noise ratio of a lesion against its local background.

    ``CNR = (mean inside - median of the ring) / std of the ring``, with the ring of
    :func:`local_background`. Positive for a lesion brighter than its surroundings. When the ring
    is perfectly flat (std 0) the result is +/-inf for any contrast and 0 without contrast.

    Parameters
    ----------
    image : array-like
        ``(C, *spatial)`` or spatial only.
    mask : array-like
        Lesion mask, spatial shape.
    margin : int
        Ring width in voxels.
    exclude : array-like, optional
        Voxels kept out of the ring (other lesions).
    channel : int
        Channel measured.
    """
    img = _image(image)
    m = np.asarray(mask) != 0
    if img.ndim == m.ndim:
        img = img[None]
    if not 0 <= channel < img.shape[0]:
        raise ValueError(f"channel: expected 0..{img.shape[0] - 1}, got {channel!r}")
    ch = img[channel]
    bg, sd = local_background(ch, m, margin=margin, exclude=exclude)
    diff = float(ch[_mask(m, "mask", ch.shape)].mean()) - bg
    if sd == 0.0:
        return 0.0 if diff == 0.0 else float(np.sign(diff) * np.inf)
    return diff / sd


def scale_contrast(
    image: Any, mask: Any, factor: float, *, margin: int = 3, exclude: Any = None
) -> np.ndarray:
    """Scale a lesion's contrast over its local background by ``factor``.

    Inside the mask, every channel becomes ``background + factor * (image - background)`` with
    the channel's ring median as background; outside the mask the image is unchanged. Factor 1
    returns the image, factor 0 flattens the lesion into its background.

    Returns
    -------
    numpy.ndarray
        float32 ``(C, *spatial)``.
    """
    img = _image(image)
    m = np.asarray(mask) != 0
    if img.ndim == m.ndim:
        img = img[None]
    m = _mask(m, "mask", img.shape[1:])
    if not np.isfinite(factor):
        raise ValueError(f"factor: expected a finite number, got {factor!r}")
    out = img.copy()
    for c in range(img.shape[0]):
        bg, _ = local_background(img[c], m, margin=margin, exclude=exclude)
        out[c][m] = bg + float(factor) * (img[c][m] - bg)
    return out


def contrast_sweep(
    adapter: Any,
    image: Any,
    mask: Any,
    factors: Sequence[float] = DEFAULT_FACTORS,
    *,
    class_index: int = 1,
    margin: int = 3,
    exclude: Any = None,
    overlap_threshold: float = 0.1,
) -> pd.DataFrame:
    """Lesion probability as the lesion's contrast is scaled up and down.

    For each factor the image is changed with :func:`scale_contrast` and run through
    ``adapter.probabilities``; the model's foreground probability inside the lesion is summarised.

    Parameters
    ----------
    adapter : SegmentationAdapter
        Anything with ``probabilities(x)`` taking ``(N, C, *spatial)`` and returning
        ``(N, K, *spatial)``.
    image : array-like
        ``(C, *spatial)`` or spatial only.
    mask : array-like
        The lesion.
    factors : sequence of float
        Contrast factors (1.0 = unchanged).
    class_index : int
        Foreground class; with a single output channel the channel itself is used.
    margin, exclude
        Background ring, as in :func:`local_background`.
    overlap_threshold : float
        Share of lesion voxels the prediction must cover for the lesion to count as detected
        (the rule of ``metrics.lesions``).

    Returns
    -------
    pandas.DataFrame
        Columns ``factor, mean_prob, max_prob, covered_fraction, detected``; the prediction is
        the argmax over classes (softmax) or probability > 0.5 (one channel).
    """
    import torch

    img = _image(image)
    m = np.asarray(mask) != 0
    if img.ndim == m.ndim:
        img = img[None]
    m = _mask(m, "mask", img.shape[1:])
    facs = [float(f) for f in factors]
    if not facs:
        raise ValueError("factors: expected at least one contrast factor, got none")
    rows = []
    for f in facs:  # one at a time: a 3D volume per factor is the memory unit
        x = torch.from_numpy(scale_contrast(img, m, f, margin=margin, exclude=exclude)[None])
        with torch.no_grad():
            probs = adapter.probabilities(x)
        p = probs.detach().cpu().numpy()[0] if hasattr(probs, "detach") else np.asarray(probs)[0]
        if p.shape[0] == 1:
            fg, pred = p[0], p[0] > 0.5
        else:
            if not 0 <= class_index < p.shape[0]:
                raise ValueError(f"class_index: expected 0..{p.shape[0] - 1}, got {class_index!r}")
            fg, pred = p[class_index], p.argmax(axis=0) == class_index
        covered = float(pred[m].mean())
        rows.append({
            "factor": f,
            "mean_prob": float(fg[m].mean()),
            "max_prob": float(fg[m].max()),
            "covered_fraction": covered,
            "detected": covered >= overlap_threshold,
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the verdict
@dataclass(frozen=True)
class Finding:
    """One measured piece of evidence and the sentence that states it."""

    name: str
    value: float
    text: str
    supports_miss: bool = False


@dataclass(frozen=True)
class Verdict:
    """The plain-words verdict for one lesion."""

    lesion_id: str
    status: str
    headline: str
    findings: tuple[Finding, ...] = field(default_factory=tuple)
    reasons: tuple[str, ...] = field(default_factory=tuple)

    @property
    def text(self) -> str:
        """Headline and one line per finding."""
        return "\n".join([self.headline, *(f"- {f.text}" for f in self.findings)])

    def to_html(self) -> str:
        """Escaped HTML: the headline in bold and the findings as a list."""
        items = "".join(f"<li>{html.escape(f.text)}</li>" for f in self.findings)
        return f"<p><b>{html.escape(self.headline)}</b></p><ul>{items}</ul>"


def _num(row: Mapping[str, Any], key: str) -> float:
    try:
        v = row[key]
    except (KeyError, IndexError):
        return float("nan")
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _compare(value: float, others: np.ndarray, what: str, unit: str, fmt: str) -> tuple[str, float]:
    """Sentence comparing ``value`` with detected lesions, and the share of them above it."""
    others = others[np.isfinite(others)]
    if others.size == 0:
        return f"{what} {value:{fmt}}{unit}; no detected lesion to compare with.", float("nan")
    above = float((others > value).mean())
    med = float(np.median(others))
    if above == 1.0:
        rel = f"lower than all {others.size} detected lesion(s)"
    elif above == 0.0:
        rel = f"not lower than any of the {others.size} detected lesion(s)"
    else:
        rel = f"lower than {int(round(above * others.size))} of {others.size} detected lesions"
    return f"{what} {value:{fmt}}{unit}, {rel} (their median {med:{fmt}}{unit}).", above


def miss_verdict(
    lesion: Mapping[str, Any],
    detected: pd.DataFrame | None = None,
    *,
    threshold: float = 0.5,
    overlap_threshold: float = 0.1,
    attribution_inside: float | None = None,
    lesion_fraction: float | None = None,
    method: str | None = None,
    sweep: pd.DataFrame | None = None,
) -> Verdict:
    """State in plain words why a lesion was (or was not) missed, from measurements.

    Parameters
    ----------
    lesion : mapping
        One row of ``metrics.lesions`` (``lesion_id, status, volume_mm3, max_prob``,
        ``overlap_fraction``), optionally with ``cnr`` (contrast-to-noise ratio).
    detected : pandas.DataFrame, optional
        Rows of the lesions the model detected (this case or a cohort), with ``volume_mm3``
        and optionally ``cnr``.
    threshold : float
        Decision threshold on the foreground probability (0.5 for a two-class softmax argmax).
    overlap_threshold : float
        Covered share of a lesion needed for it to count as detected.
    attribution_inside : float, optional
        Share of positive attribution inside the lesion (``explain.quality.localisation``).
    lesion_fraction : float, optional
        The lesion's share of the image voxels: the share of attribution a uniform map would put
        inside it.
    method : str, optional
        Explanation method named in the attribution sentence.
    sweep : pandas.DataFrame, optional
        Output of :func:`contrast_sweep`.

    Returns
    -------
    Verdict
        ``reasons`` holds the supported causes, strongest first, among ``"low_contrast"``,
        ``"small"``, ``"low_probability"``, ``"attention_elsewhere"``, ``"partial"``.
    """
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold: expected a probability in (0, 1), got {threshold!r}")
    lesion_id = str(lesion.get("lesion_id", "lesion"))
    status = str(lesion.get("status", "missed"))
    if status not in {"missed", "detected", "false_positive"}:
        raise ValueError(
            f"lesion {lesion_id}: expected status 'missed', 'detected' or 'false_positive', "
            f"got {status!r}"
        )
    det = detected if detected is not None else pd.DataFrame(columns=["volume_mm3", "cnr"])
    findings: list[Finding] = []
    reasons: list[str] = []

    volume = _num(lesion, "volume_mm3")
    if np.isfinite(volume):
        vols = det["volume_mm3"].to_numpy(float) if "volume_mm3" in det else np.array([])
        text, above = _compare(volume, vols, "Volume", " mm³", ".0f")
        small = bool(np.isfinite(above) and above >= 0.75)
        findings.append(Finding("volume_mm3", volume, text, small))
        if small:
            reasons.append("small")

    cnr = _num(lesion, "cnr")
    if np.isfinite(cnr):
        cnrs = det["cnr"].to_numpy(float) if "cnr" in det else np.array([])
        text, above = _compare(cnr, cnrs, "Contrast-to-noise ratio", "", ".2f")
        faint = bool(np.isfinite(above) and above >= 0.75)
        findings.append(Finding("cnr", cnr, text, faint))
        if faint:
            reasons.append("low_contrast")

    pmax = _num(lesion, "max_prob")
    if np.isfinite(pmax):
        if pmax < threshold:
            text = (f"Maximum model probability inside it is {pmax:.2f}, below the "
                    f"{threshold:.2f} threshold by {threshold - pmax:.2f}: no voxel was called "
                    "lesion.")
            findings.append(Finding("max_prob", pmax, text, status == "missed"))
            if status == "missed":
                reasons.append("low_probability")
        else:
            cov = _num(lesion, "overlap_fraction")
            cov_txt = f" but only {cov:.0%} of its voxels" if np.isfinite(cov) else ""
            text = (f"Maximum model probability inside it is {pmax:.2f}, above the "
                    f"{threshold:.2f} threshold{cov_txt}" +
                    (f" (detection needs {overlap_threshold:.0%})." if status == "missed" else "."))
            findings.append(Finding("max_prob", pmax, text, status == "missed"))
            if status == "missed":
                reasons.append("partial")

    if attribution_inside is not None and np.isfinite(attribution_inside):
        share = float(attribution_inside)
        who = f"{method} attribution" if method else "Attribution"
        base = ""
        enrichment = float("nan")
        if lesion_fraction is not None and lesion_fraction > 0:
            enrichment = share / float(lesion_fraction)
            base = f" (the lesion is {lesion_fraction:.2%} of the image, {enrichment:.0f}x that share)"
        if share >= 0.5:
            where = "the model looks at the lesion, so its evidence there is weak rather than unseen."
            elsewhere = False
        elif share < 0.25 or (np.isfinite(enrichment) and enrichment < 2.0):
            where = f"{1 - share:.0%} of the evidence the model uses lies elsewhere."
            elsewhere = True
        else:
            where = "the lesion gets more than its share but most evidence lies elsewhere."
            elsewhere = False
        text = f"{who}: {share:.0%} of the positive mass lies inside the lesion{base}; {where}"
        findings.append(Finding("attribution_inside", share, text, elsewhere))
        if elsewhere:
            reasons.append("attention_elsewhere")
    elif attribution_inside is not None:
        # A signed map with no positive value: nothing in the image argues for a lesion.
        who = f"{method} attribution" if method else "Attribution"
        text = (f"{who}: no positive evidence for a lesion anywhere in the image; the model "
                f"sees only evidence against it.")
        findings.append(Finding("attribution_inside", float("nan"), text, False))

    if sweep is not None and len(sweep):
        sw = sweep.sort_values("factor")
        base_row = sw.iloc[(sw["factor"] - 1.0).abs().argmin()]
        hits = sw[sw["detected"].astype(bool) & (sw["factor"] > 1.0)]
        pairs = ", ".join(f"x{f:g}: {p:.2f}" for f, p in zip(sw["factor"], sw["max_prob"]))
        if status == "missed" and len(hits):
            f_hit = float(hits["factor"].iloc[0])
            text = (f"Contrast sweep (max probability per contrast factor: {pairs}): detected "
                    f"once its contrast is scaled x{f_hit:g}, so contrast limits detection.")
            findings.append(Finding("sweep_detect_factor", f_hit, text, True))
            if "low_contrast" not in reasons:
                reasons.insert(0, "low_contrast")
            else:  # measured and confirmed: the strongest reason
                reasons.remove("low_contrast")
                reasons.insert(0, "low_contrast")
        elif status == "missed":
            text = (f"Contrast sweep (max probability per contrast factor: {pairs}): still not "
                    f"detected at x{float(sw['factor'].max()):g}, so contrast alone does not "
                    "explain the miss.")
            findings.append(Finding("sweep_detect_factor", float("nan"), text, False))
            if "low_contrast" in reasons:
                reasons.remove("low_contrast")
        else:
            text = (f"Contrast sweep (max probability per contrast factor: {pairs}); at the "
                    f"acquired contrast {float(base_row['max_prob']):.2f}.")
            findings.append(Finding("sweep_detect_factor", float("nan"), text, False))

    if status != "missed":  # the same measurements, but no miss to explain
        reasons = []
        findings = [Finding(f.name, f.value, f.text, False) for f in findings]
    headline = _headline(lesion_id, status, reasons, lesion)
    return Verdict(lesion_id, status, headline, tuple(findings), tuple(reasons))


_REASON_WORDS = {
    "low_contrast": "its contrast is too low",
    "small": "it is small",
    "attention_elsewhere": "the model's evidence lies elsewhere",
    "partial": "the model segmented too little of it",
    "low_probability": "the model's probability stays below the threshold",
}


def _headline(lesion_id: str, status: str, reasons: list[str], lesion: Mapping[str, Any]) -> str:
    if status == "detected":
        dice = _num(lesion, "dice")
        extra = f" (lesion Dice {dice:.2f})" if np.isfinite(dice) else ""
        return f"{lesion_id} was detected{extra}."
    if status == "false_positive":
        return f"{lesion_id} is a false positive: the model marked tissue with no reference lesion."
    # low_probability restates the miss itself; name it only when nothing else explains it.
    causes = [r for r in reasons if r != "low_probability"] or reasons
    if not causes:
        return f"{lesion_id} was missed; no measurement here separates it from detected lesions."
    words = [_REASON_WORDS[r] for r in causes]
    joined = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"{lesion_id} was missed, most likely because {joined}."
