"""Failure gallery: which cases a reviewer sees, why each missed lesion was missed, and compact
slices to draw them, stored in the :class:`~medseg_xai.audit.AuditResult` (and its JSON).

The report and the dashboard only *draw* these entries; they never load images or run a model,
so ``medseg-xai report audit.json`` re-renders the same gallery without the cohort or the model.

Selection (one place, :func:`gallery_cases`): the worst ``per_group`` evaluated cases of every
group of every plain stratum (and overall) by the primary metric, ranked by
:func:`medseg_xai.audit.analysis.rank_worst` (metric direction aware, scans without reference
lesions left out), then the scans without reference lesions that carry the largest false
positives, as their own category. Each case appears once, listing every group it is worst in.

Each entry (a plain dict, JSON-safe)::

    {"case_id", "category": "worst" | "false_positive_scan" | "requested",
     "picked_for": [str, ...],
     "metric", "value", "lesion_id" (the explained missed lesion or None),
     "status" (the audit's status of that lesion), "volume_mm3" (of the lesion's voxels as the
     gallery found them under the audit's rules), "method",
     "analysis" (MissAnalysis.to_dict(), or the fallback's summary, or None),
     "figure" (see :func:`slice_payload`, or None), "note"}

Audits with structure classes (``--classes 1=liver:structure``) add, per class, the entries of
:mod:`medseg_xai.audit.class_gallery` (category ``"worst_class"``, with ``class``,
``class_value``, ``class_index``, ``region_voxels``, ``reference_voxels``: the class's missed
region explained on its own output channel); an audit with only structure classes has only
those (it has no lesions).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.audit.analysis import rank_false_positive_scans, rank_worst
from medseg_xai.audit.class_gallery import class_entries
from medseg_xai.decide import (
    DecisionRules,
    foreground,
    lesion_mask,
    lesion_status,
    parse_lesion_id,
    predict,
    reference_mask,
)

__all__ = ["DEFAULT_MAX_CASES", "decode_plane", "explain_failures", "gallery_cases",
           "slice_payload"]

DEFAULT_MAX_CASES = 12
#: Side of the square crop (voxels) stored per plane; keeps a 1,000-case JSON small.
CROP = 64


def gallery_cases(result: Any, *, metric: str | None = None, per_group: int = 1,
                  max_cases: int = DEFAULT_MAX_CASES, max_fp_scans: int = 2) -> list[dict[str, Any]]:
    """The gallery's cases in order: ``case_id, category, picked_for, metric, value``."""
    cases = result.cases
    metrics = list(result.settings.get("metrics") or [])
    metric = metric or ("dice" if "dice" in metrics else (metrics[0] if metrics else None))
    picked: dict[str, dict[str, Any]] = {}
    if metric is not None and metric in cases.columns and max_cases > 0:
        plain = [s for s in result.strata if " x " not in s and s in cases.columns]
        for stratum in [None, *plain]:
            groups = ([None] if stratum is None else
                      [g for g in pd.unique(cases.loc[cases["status"] == "ok", stratum].dropna())])
            for group in sorted(groups, key=str) if stratum else groups:
                worst = rank_worst(cases, metric, stratum=stratum, group=group, n=per_group)
                where = "overall" if stratum is None else f"{stratum} = {group}"
                for _, rec in worst.iterrows():
                    cid = str(rec["case_id"])
                    if cid in picked:
                        picked[cid]["picked_for"].append(where)
                    elif len(picked) < max_cases:
                        picked[cid] = {"case_id": cid, "category": "worst", "picked_for": [where],
                                       "metric": metric, "value": float(rec[metric])}
    for _, rec in rank_false_positive_scans(cases, n=max_fp_scans).iterrows():
        cid = str(rec["case_id"])
        if cid not in picked:
            picked[cid] = {"case_id": cid, "category": "false_positive_scan",
                           "picked_for": ["no reference lesion, largest false positive"],
                           "metric": "volume_pred_mm3", "value": float(rec["volume_pred_mm3"])}
    return list(picked.values())


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _encode(a: np.ndarray, kind: str) -> dict[str, Any]:
    if kind == "mask":
        return {"dtype": "bits", "shape": list(a.shape), "data": _b64(np.packbits(a.astype(bool)))}
    return {"dtype": "float16", "shape": list(a.shape), "data": _b64(a.astype(np.float16))}


def decode_plane(obj: dict[str, Any] | None) -> np.ndarray | None:
    """Inverse of the compact encoding (float16 or packed bits, base64)."""
    if obj is None:
        return None
    shape = tuple(int(s) for s in obj["shape"])
    raw = base64.b64decode(obj["data"])
    if obj["dtype"] == "bits":
        n = int(np.prod(shape))
        return np.unpackbits(np.frombuffer(raw, np.uint8))[:n].reshape(shape).astype(bool)
    return np.frombuffer(raw, np.float16).reshape(shape).astype(np.float32)


def _window(size: int, centre: int, crop: int) -> slice:
    lo = int(np.clip(centre - crop // 2, 0, max(size - crop, 0)))
    return slice(lo, min(lo + crop, size))


def slice_payload(image: np.ndarray, *, pred: np.ndarray | None, ref: np.ndarray,
                  centre: Sequence[int], target: np.ndarray | None = None,
                  heatmap: np.ndarray | None = None, spacing: Sequence[float] | None = None,
                  affine: np.ndarray | None = None, crop: int = CROP) -> dict[str, Any]:
    """Slices through ``centre`` in each voxel axis, cropped to ``crop`` voxels, stored compactly.

    Returns ``{"shape", "spacing", "affine", "centre", "planes": [{"axis", "index", "offset",
    "image", "ref", "pred", "target", "heatmap"}, ...]}`` (one plane for 2D images; arrays as
    :func:`decode_plane` reads them). The affine travels so a view can name the anatomical
    directions; the arrays stay on the stored voxel grid.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == np.asarray(ref).ndim + 1:
        img = img[0]
    ndim = img.ndim
    sp = [float(s) for s in (spacing or (1.0,) * ndim)]
    layers = {"image": img, "ref": np.asarray(ref) != 0,
              "pred": None if pred is None else np.asarray(pred) != 0,
              "target": None if target is None else np.asarray(target) != 0,
              "heatmap": None if heatmap is None else np.asarray(heatmap, dtype=np.float32)}
    planes = []
    axes = range(ndim) if ndim == 3 else [None]
    for axis in axes:
        index = [slice(None)] * ndim
        if axis is not None:
            index[axis] = int(centre[axis])
        rest = [d for d in range(ndim) if d != axis]
        for d in rest:
            index[d] = _window(img.shape[d], int(centre[d]), crop)
        plane: dict[str, Any] = {"axis": axis, "index": None if axis is None else int(centre[axis]),
                                 "offset": [int(index[d].start) for d in rest],
                                 "spacing": [sp[d] for d in rest],
                                 "affine": _plane_affine(affine, rest, axis, index)}
        for name, arr in layers.items():
            plane[name] = None if arr is None else _encode(
                arr[tuple(index)], "mask" if arr.dtype == bool else "float")
        planes.append(plane)
    return {"shape": list(img.shape), "spacing": sp,
            "affine": None if affine is None else np.asarray(affine, float).tolist(),
            "centre": [int(c) for c in centre], "planes": planes}


def _plane_affine(affine: Any, rest: list[int], axis: int | None,
                  index: list[Any]) -> list[list[float]] | None:
    """4x4 voxel-to-world affine of a stored (cropped) plane: its two axes first, the sliced
    axis third, origin at the crop's first voxel, so a view can orient it anatomically."""
    if affine is None:
        return None
    a = np.asarray(affine, dtype=float)
    if a.shape != (4, 4) or len(rest) != 2 or axis is None:
        return None
    origin = np.zeros(3)
    for d in rest:
        origin[d] = index[d].start
    origin[axis] = index[axis]
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2] = a[:3, rest[0]], a[:3, rest[1]], a[:3, axis]
    m[:3, 3] = a[:3, :3] @ origin + a[:3, 3]
    return m.tolist()


def _missed_lesions(result: Any, case_id: str) -> pd.DataFrame:
    les = result.lesions
    if les is None or les.empty or "status" not in les:
        return pd.DataFrame()
    sel = les[(les["case_id"].astype(str) == case_id) & (les["status"] == "missed")]
    return sel.sort_values(["volume_mm3", "lesion_id"], ascending=[False, True], kind="mergesort")


def _explain(adapter: Any, case: Any, ref: np.ndarray, pred: np.ndarray | None, lesion_id: str,
             seed: int, explain_kwargs: Mapping[str, Any]
             ) -> tuple[Any, np.ndarray | None, str]:
    """(MissAnalysis, the first method's attribution map, its name) of one lesion."""
    from medseg_xai.explain.miss import explain_miss  # the one way to explain a miss
    from medseg_xai.explain.miss_settings import split_options

    bind = getattr(adapter, "with_geometry", None)  # models that resample need the geometry
    adapter = bind(case.spacing, case.affine) if callable(bind) else adapter
    settings, inputs = split_options(explain_kwargs, seed=seed)
    analysis = explain_miss(adapter, case.image, ref, lesion_id, pred=pred, spacing=case.spacing,
                            case_id=str(case.case_id), settings=settings, **inputs)
    maps = getattr(analysis, "attributions", None) or {}
    method = next(iter(maps), None)
    att = None if method is None else np.asarray(maps[method], dtype=np.float32)
    return analysis, att, str(method or "")


def explain_failures(
    result: Any,
    cohort: Any = None,
    adapter: Any = None,
    *,
    max_cases: int = DEFAULT_MAX_CASES,
    max_explanations: int = 6,
    per_group: int = 1,
    metric: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
    seed: int = 0,
    explain_kwargs: Mapping[str, Any] | None = None,
    analyses: dict[tuple[str, str], Any] | None = None,
) -> list[dict[str, Any]]:
    """Build the failure gallery of an audit (store it with ``result.explanations = ...``).

    Parameters
    ----------
    result : AuditResult
        The audit.
    cohort : Cohort, optional
        Loads images, references and predictions for the slices; without it entries carry no
        figure and say so.
    adapter : SegmentationAdapter, optional
        Explains the largest missed lesion of gallery cases with
        :func:`medseg_xai.explain.miss.explain_miss` (probes re-run through the model, gated
        attribution evidence, causes, verdict); without it no lesion is explained.
    max_cases : int
        Cases picked as worst per group (false-positive scans come on top, at most two).
    max_explanations : int
        Missed lesions explained (the model runs once per lesion).
    per_group : int
        Worst cases taken from each group.
    metric : str, optional
        Ranking metric (default: Dice, else the audit's first metric).
    extra : sequence of (case_id, lesion_id)
        Lesions to explain in any case (added to the gallery when not picked).
    seed : int
        Seed of the explanations' randomness.
    explain_kwargs : mapping, optional
        ``explain_miss`` inputs and ``MissSettings`` fields (``{"methods": ("gradcam",)}``).
    analyses : dict, optional
        When given, receives each :class:`~medseg_xai.explain.miss.MissAnalysis` under
        ``(case_id, lesion_id)`` (full-resolution maps and mask, e.g. for files the demo writes)
        so a caller never explains the same lesion twice.

    Returns
    -------
    list of dict
        The entries (module docstring). A case that cannot be loaded or explained keeps its
        entry with the error in ``note``.
    """
    structures = class_entries(result, per_group=per_group, max_cases=max_cases)
    # an organ-only audit has no lesions: its gallery is the per-class one (class_gallery.py)
    organs_only = bool(structures) and not result.settings.get("lesion_labels") and not extra
    entries = [] if organs_only else gallery_cases(result, metric=metric, per_group=per_group,
                                                   max_cases=max_cases)
    wanted = _add_requested(result, entries, extra)
    kwargs = dict(explain_kwargs or {})
    les = result.lesions
    if "detected_lesions" not in kwargs and les is not None and "status" in les:
        # the verdict compares a miss with the cohort's detected lesions, not one image's
        kwargs["detected_lesions"] = les[les["status"] == "detected"]
    kwargs["rules"] = DecisionRules.from_settings(result.settings)
    budget = {"left": int(max_explanations), "max": int(max_explanations)}
    for e in entries:
        e.update(lesion_id=None, status=None, volume_mm3=None, method=None, analysis=None,
                 figure=None, note="")
        if cohort is None:
            e["note"] = "no images: the audit was not given the cohort's files for the gallery"
            continue
        try:
            _fill_entry(e, result, cohort, adapter, wanted, seed, kwargs, budget, analyses)
        except Exception as err:  # noqa: BLE001 - recorded, never dropped
            from medseg_xai._privacy import redact_paths

            e["note"] = f"case could not be shown: {type(err).__name__}: {redact_paths(str(err))}"
    _word_budget_notes(entries, budget["max"], wanted)
    return entries + _fill_class_entries(structures, result, cohort, adapter, seed,
                                         max_explanations)


_BUDGET_SPENT = "\0budget spent"


def _word_budget_notes(entries: list[dict[str, Any]], max_explanations: int,
                       wanted: Mapping[str, str]) -> None:
    """Word the "budget spent" notes with the counts the gallery holds: requested lesions are
    explained beyond ``max_explanations``, so "at most N" alone would contradict the cards."""
    explained = [e for e in entries if e.get("analysis") is not None]
    asked = sum(e["case_id"] in wanted for e in explained)
    n = len(explained)
    text = (f"missed lesion not explained: the gallery's budget of {max_explanations} "
            f"explanations is spent; it explains {n} lesion{'s' if n != 1 else ''}"
            + (f", {asked} of them asked for (explained even past the budget)" if asked else ""))
    for e in entries:
        if e.get("note") == _BUDGET_SPENT:
            e["note"] = text


def _fill_class_entries(entries: list[dict[str, Any]], result: Any, cohort: Any, adapter: Any,
                        seed: int, max_explanations: int) -> list[dict[str, Any]]:
    """Fill the structure classes' entries (at most ``max_explanations`` explained per class)."""
    rules = DecisionRules.from_settings(result.settings)
    left: dict[str, int] = {}
    for e in entries:
        e.update(lesion_id=None, status=None, volume_mm3=None, method=None, analysis=None,
                 figure=None, note="", class_index=None, region_voxels=None,
                 reference_voxels=None)
        if cohort is None:
            e["note"] = "no images: the audit was not given the cohort's files for the gallery"
            continue
        try:
            budget = left.setdefault(e["class"], int(max_explanations))
            left[e["class"]] -= _fill_class_entry(e, result, cohort, adapter, rules, seed,
                                                  budget > 0)
        except Exception as err:  # noqa: BLE001 - recorded, never dropped
            from medseg_xai._privacy import redact_paths

            e["note"] = f"case could not be shown: {type(err).__name__}: {redact_paths(str(err))}"
    return entries


def _fill_class_entry(e: dict[str, Any], result: Any, cohort: Any, adapter: Any,
                      rules: DecisionRules, seed: int, explain_it: bool) -> int:
    """One class's missed region in one case, its evidence and slices; 1 if explained."""
    from medseg_xai.audit.class_gallery import explain_class_region

    case, ref_map, pred_map = _audit_maps(result, cohort, adapter, e["case_id"], rules)
    ref = ref_map == e["class_value"]
    pred = None if pred_map is None else pred_map == e["class_value"]
    region = ref & ~(np.zeros_like(ref) if pred is None else pred)
    e["reference_voxels"], e["region_voxels"] = int(ref.sum()), int(region.sum())
    e["volume_mm3"] = float(region.sum() * np.prod(case.spacing))
    heat, done = None, 0
    if not region.any():
        e["note"] = f"nothing of {e['class']} was missed in this case"
    elif pred is None:
        e["note"] = "no prediction to compare with"
    elif adapter is None:
        e["note"] = f"missed {e['class']} region not explained: no model was given"
    elif not explain_it:
        e["note"] = f"missed {e['class']} region not explained: the gallery's budget is spent"
    else:
        try:
            e["analysis"], heat = explain_class_region(adapter, case, e["class_value"],
                                                       pred=pred, ref=ref, seed=seed)
            e["analysis"]["class"] = e["class"]
            e["method"], e["class_index"], done = e["analysis"]["method"], \
                e["analysis"]["class_index"], 1
        except Exception as err:  # noqa: BLE001 - one failed explanation keeps its entry
            e["note"] = f"explanation failed: {type(err).__name__}: {err}"
    e["figure"] = slice_payload(case.image, pred=pred, ref=ref,
                                centre=_centre(pred=pred, ref=ref, target=region),
                                target=region, heatmap=heat, spacing=case.spacing,
                                affine=getattr(case, "affine", None))
    return done


def _add_requested(result: Any, entries: list[dict[str, Any]],
                   extra: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Add the cases of the requested lesions to ``entries``; ``{case_id: lesion_id}``."""
    by_id = {e["case_id"]: e for e in entries}
    for cid, _lid in extra:
        if cid not in by_id:
            row = result.cases[result.cases["case_id"].astype(str) == cid]
            m = entries[0]["metric"] if entries else "dice"
            value = float(row[m].iloc[0]) if len(row) and m in row else float("nan")
            by_id[cid] = {"case_id": cid, "category": "requested",
                          "picked_for": ["lesion asked for (e.g. the largest missed one)"],
                          "metric": m, "value": value}
            entries.append(by_id[cid])
    return {cid: lid for cid, lid in extra}


def _fill_entry(e: dict[str, Any], result: Any, cohort: Any, adapter: Any,
                wanted: Mapping[str, str], seed: int, kwargs: Mapping[str, Any],
                budget: dict[str, int], analyses: dict | None) -> None:
    """One gallery entry: the lesion as the audit decided it, its explanation, its slices."""
    rules = kwargs["rules"]
    case, ref, pred = _audit_masks(result, cohort, adapter, e["case_id"], rules)
    missed = _missed_lesions(result, e["case_id"])
    lesion_id = wanted.get(e["case_id"]) or (str(missed["lesion_id"].iloc[0])
                                             if len(missed) else None)
    target = heat = None
    if lesion_id is not None:
        target = _lesion_target(ref, pred, lesion_id, rules)
        # decided again from the masks the gallery shows, by the audit's rules
        e["status"] = (lesion_status(pred, ref, lesion_id, rules) if pred is not None
                       else _audit_status(result, e["case_id"], lesion_id))
        e["volume_mm3"] = float(target.sum() * np.prod(case.spacing))
    if lesion_id is not None and adapter is not None and (
            budget["left"] > 0 or e["case_id"] in wanted):
        try:
            analysis, heat, e["method"] = _explain(adapter, case, ref, pred, lesion_id, seed,
                                                   kwargs)
            e["analysis"] = analysis.to_dict()
            if analyses is not None:
                analyses[(e["case_id"], str(lesion_id))] = analysis
            budget["left"] -= 1
        except Exception as err:  # noqa: BLE001 - one failed explanation keeps its entry
            e["note"] = f"explanation failed: {type(err).__name__}: {err}"
    elif lesion_id is not None and adapter is None:
        e["note"] = "missed lesion not explained: no model was given"
    elif lesion_id is not None:
        e["note"] = _BUDGET_SPENT  # worded once every entry is filled (_word_budget_notes)
    e["lesion_id"] = lesion_id
    e["figure"] = slice_payload(case.image, pred=pred, ref=ref,
                                centre=_centre(pred=pred, ref=ref, target=target),
                                target=target, heatmap=heat, spacing=case.spacing,
                                affine=getattr(case, "affine", None))


def _audit_masks(result: Any, cohort: Any, adapter: Any, case_id: str, rules: DecisionRules
                 ) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """(case, reference foreground, prediction foreground) as the audit decided them: its
    label values, reference standard and (for audits that ran the model) its threshold."""
    case, ref_map, pred = _audit_maps(result, cohort, adapter, case_id, rules)
    lesion_labels = result.settings.get("lesion_labels")
    if lesion_labels:  # a multi-class audit: lesion ids name components of the lesion classes
        from medseg_xai.classes import lesion_foreground

        return case, lesion_foreground(ref_map, lesion_labels), (
            None if pred is None else lesion_foreground(pred, lesion_labels))
    ref = foreground(ref_map, rules.label_setting)
    return case, ref, None if pred is None else foreground(pred, rules.label_setting)


def _audit_maps(result: Any, cohort: Any, adapter: Any, case_id: str, rules: DecisionRules
                ) -> tuple[Any, np.ndarray, np.ndarray | None]:
    """(case, reference label map, prediction label map) as the audit decided them."""
    from medseg_xai.cohort import load_case_from_paths

    settings = result.settings
    case = load_case_from_paths(case_id, cohort.paths(case_id), labels=rules.label_setting,
                                binarize=rules.binarize,
                                allow_missing_readers=bool(settings.get("allow_missing_readers")),
                                read=cohort.read_options(case_id),
                                reference_threshold=float(settings.get("reference_threshold",
                                                                       0.5)))
    ref_map = reference_mask(case, rules)
    if settings.get("inference") and adapter is not None:
        pred: np.ndarray | None = predict(adapter, case.image, rules)
    else:
        pred = None if case.prediction is None else np.asarray(case.prediction)
    return case, ref_map, pred


def _lesion_target(ref: np.ndarray, pred: np.ndarray | None, lesion_id: str,
                   rules: DecisionRules) -> np.ndarray:
    kind, _ = parse_lesion_id(lesion_id)
    mask = ref if kind == "ref" else (np.zeros_like(ref) if pred is None else pred)
    return lesion_mask(mask, lesion_id, rules.connectivity)


def _audit_status(result: Any, case_id: str, lesion_id: str) -> str | None:
    les = result.lesions
    if les is None or les.empty or "status" not in les:
        return None
    row = les[(les["case_id"].astype(str) == case_id) & (les["lesion_id"].astype(str) == lesion_id)]
    return str(row["status"].iloc[0]) if len(row) else None


def _centre(*, pred: np.ndarray | None, ref: np.ndarray, target: np.ndarray | None) -> tuple:
    """The explained lesion, else the largest missed region, false positive or reference."""
    from medseg_xai.metrics import label_lesions

    p = np.zeros_like(ref) if pred is None else pred
    for mask in (target, ref & ~p, p & ~ref, ref, p):
        if mask is not None and mask.any():
            labels, n = label_lesions(mask)
            sizes = np.bincount(labels.ravel())[1:]
            biggest = labels == (int(np.argmax(sizes)) + 1)
            return tuple(int(round(float(c))) for c in np.argwhere(biggest).mean(axis=0))
    return tuple(s // 2 for s in ref.shape)
