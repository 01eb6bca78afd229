"""Views of the miss analysis (no computation here).

:func:`verdict_html` renders a :class:`~medseg_xai.explain.miss.MissAnalysis` (what
``mx.explain_miss`` returns) as escaped HTML: the verdict's headline, its sentences, the
probe table and the attribution evidence, all read from the analysis.

The ring measurements (:func:`contrast_to_noise`, :func:`local_background`,
:func:`scale_contrast`, :func:`contrast_sweep`) moved to :mod:`medseg_xai.explain.probes` and are
re-exported here. :func:`miss_verdict` (with :class:`Verdict` and :class:`Finding`) is the
CaseExplorer's older per-lesion wording, kept until the explorer shows ``explain_miss``; it names
no cause a probe has not shown and will be removed then.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.explain.probes import (
    DEFAULT_FACTORS,
    contrast_sweep,
    contrast_to_noise,
    local_background,
    scale_contrast,
)

__all__ = [
    "DEFAULT_FACTORS",
    "Finding",
    "Verdict",
    "contrast_sweep",
    "contrast_to_noise",
    "local_background",
    "miss_verdict",
    "scale_contrast",
    "verdict_html",
]


def _cell(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{float(v):.3g}"
    return "" if v is None else str(v)


def _table(df: pd.DataFrame, columns: list[str], cls: str) -> str:
    cols = [c for c in columns if c in df.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in cols) + "</tr>"
        for _, r in df.iterrows()
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def verdict_html(analysis: Any, *, tables: bool = True) -> str:
    """Escaped HTML of a :class:`~medseg_xai.explain.miss.MissAnalysis`.

    Parameters
    ----------
    analysis : MissAnalysis
        What ``mx.explain_miss`` returned.
    tables : bool
        Also show the probe table and the evidence table.

    Returns
    -------
    str
        ``<div class="mx-miss">``: the headline in bold, the causes, one list item per further
        verdict sentence, then the tables.
    """
    lines = list(analysis.verdict_lines)
    causes = ", ".join(analysis.causes) if analysis.causes else "none named"
    items = "".join(f"<li>{html.escape(t.lstrip('- '))}</li>" for t in lines[1:])
    out = [f'<div class="mx-miss"><p><b>{html.escape(lines[0])}</b></p>',
           f"<p>Causes: <b>{html.escape(causes)}</b></p><ul>{items}</ul>"]
    if tables:
        out.append(_table(analysis.probes, ["probe", "setting", "max_prob", "mean_prob",
                                            "covered_fraction", "detected", "change", "effect"],
                          "mx-probes"))
        out.append(_table(analysis.evidence, ["method", "layer", "baseline", "enrichment",
                                              "completeness_error", "randomisation_spearman",
                                              "passed", "reason"], "mx-evidence"))
    out.append("</div>")
    return "".join(out)


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
