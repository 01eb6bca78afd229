"""Lesion-level hidden strata: groups of reference lesions the model misses more often.

The case-level search (:mod:`medseg_xai.audit.hidden_strata`) asks where *scans* do worse; here
the unit is the reference lesion and the outcome is whether it was detected (``decide.py``'s
status on the audit's lesion rows). Each lesion is described by its own properties
(:mod:`medseg_xai.audit.lesion_properties`: contrast against its ring, intensity, distance to the
body edge, distance from the centre, position, elongation, volume, its predictive entropy) and
by its scan's (``prop_*`` intensity, noise and bias field, lesion count, the case's uncertainty
and feature-shift scores, prefixed ``case_``) and metadata (the audit's strata columns).

The same engine finds and confirms the groups (:func:`~medseg_xai.audit.hidden_strata.
find_hidden_strata`: rules on a seeded discovery half, confirmed on the held-out half by a
one-sided van Elteren test -- the rank-sum test within the cells of the known strata --, Holm/BH
over every candidate), with two differences that matter for lesions:

- the split is by *scan* (by patient where the cases carry ``patient_id``): lesions of one scan
  share its acquisition and are not independent, so none of them may sit on both sides;
- the known strata removed first are the audit's strata *and* the lesion-size bins of the
  detection table (``detection_bins``): a group is reported only where lesions are missed more
  than their size and their scan's device / site already say.

Results: ``AuditResult.lesion_hidden_strata`` (:data:`LESION_STRATA_COLUMNS`: the case-level
columns with group ids ``L1..``, ``metric = "detected"``, ``mean_group`` / ``mean_rest`` the
detection rates on the held-out half, ``failure_rate_*`` the miss rates over all lesions,
plus ``n_cases`` and the mean lesion Dice in and outside the group) and the lesions table's
``hidden_stratum`` column (the first reported group a reference lesion belongs to).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.audit.score_words import p_words, percent

__all__ = ["LESION_CASE_COLUMNS", "LESION_STRATA_COLUMNS", "LESION_STRATA_METHOD",
           "lesion_frame", "lesion_hidden_strata", "rank_group_lesions"]

#: The case-level hidden-strata columns plus the scans the group's lesions lie in and the mean
#: lesion Dice in / outside the group (all its lesions).
LESION_STRATA_COLUMNS = ("group_id", "rule", "description", "n", "n_cases", "n_confirmation",
                         "metric", "mean_group", "mean_rest", "gap", "adjusted_gap",
                         "relative_gap", "failure_rate_group", "failure_rate_rest",
                         "dice_group", "dice_rest", "p_value", "p_adjusted", "n_candidates",
                         "rule_exact", "sentence")
LESION_STRATA_METHOD = ("regression-tree rules found on half of the scans (split by patient "
                        "when known), each confirmed on the other half's lesions by a one-sided "
                        "van Elteren test of detection (rank-sum within the cells of the "
                        "audited strata and lesion-size bins), p-values {}-adjusted over all "
                        "candidates")
#: Case columns a lesion inherits (``case_`` + name); the case's lesion aggregates are left out
#: (the lesion's own ``lprop_*`` say it better).
LESION_CASE_COLUMNS = ("prop_intensity_mean", "prop_intensity_sd", "prop_noise",
                       "prop_nonuniformity", "prop_lesion_count", "ood_score", "unc_entropy",
                       "unc_disagreement", "unc_volume_cv", "unc_combined")
#: Lesion columns left out of the search: they restate the outcome (a lesion no member votes
#: for, or with no probability, is missed by construction) or are the outcome itself.
_OUTCOME_COLUMNS = ("unc_max_vote", "max_prob", "mean_prob", "dice", "iou", "overlap_fraction")


def lesion_frame(lesions: pd.DataFrame, cases: pd.DataFrame,
                 known: Sequence[tuple[str, pd.Series]] = (), size_bins: Any = None,
                 categorical: Sequence[str] = ()) -> pd.DataFrame:
    """One row per reference lesion of an evaluated case: ``detected`` (1/0), the lesion's
    describable columns, its scan's (``case_*``), the ``categorical`` metadata, the known strata's labels
    (``_stratum{i}``, and ``_size`` from ``size_bins``), ``patient_id`` (the split unit: the
    case's patient, else the case) and ``_row`` (the row's position in ``lesions``)."""
    from medseg_xai.audit.strata import lesion_size_labels

    if not len(lesions) or "source" not in lesions:
        return pd.DataFrame()
    ok_ids = cases.loc[cases["status"] == "ok", "case_id"] if "status" in cases else cases["case_id"]
    is_ref = (lesions["source"] == "reference").to_numpy() & lesions["case_id"].isin(
        set(ok_ids)).to_numpy()
    pos = pd.Index(cases["case_id"].astype(str)).get_indexer(
        lesions.loc[is_ref, "case_id"].astype(str))
    drop = {"status", "source", "matched", "merge", "bbox", "centroid_voxel", "centroid_mm",
            "lesion_id", "case_id", *_OUTCOME_COLUMNS}
    keep = [c for c in lesions.columns if c not in drop and c not in cases.columns]
    frame = lesions.loc[is_ref, keep].reset_index(drop=True)
    frame["detected"] = (lesions.loc[is_ref, "status"] == "detected").to_numpy(dtype=float)
    frame["dice"] = pd.to_numeric(lesions.loc[is_ref, "dice"], errors="coerce").to_numpy(
        dtype=float) if "dice" in lesions else np.nan
    frame["_row"] = np.flatnonzero(is_ref)
    frame["_case"] = lesions.loc[is_ref, "case_id"].astype(str).to_numpy()
    for c in LESION_CASE_COLUMNS:
        if c in cases:
            frame[f"case_{c}"] = cases[c].to_numpy()[pos]
    for c in categorical:  # metadata searched as categories
        if c in cases and c not in frame:
            frame[c] = cases[c].to_numpy()[pos]
    patients = cases["patient_id"] if "patient_id" in cases else None
    unit = (patients.astype(str).to_numpy()[pos] if patients is not None
            and patients.notna().all() else frame["_case"].to_numpy())
    frame["patient_id"] = unit
    for i, (_name, labels) in enumerate(known):
        frame[f"_stratum{i}"] = labels.reindex(cases.index).astype(str).to_numpy()[pos]
    if size_bins is not None and len(frame):
        frame["_size"] = lesion_size_labels(frame["volume_mm3"], size_bins)[0].astype(
            str).to_numpy()
    return frame


def _numeric_columns(frame: pd.DataFrame) -> list[str]:
    """The describable numeric columns present and varying (lesion first, then the scan's)."""
    names = [c for c in frame.columns if c.startswith(("lprop_", "case_"))
             or c in ("volume_mm3", "unc_entropy")]
    return [c for c in names if pd.api.types.is_numeric_dtype(frame[c])
            and frame[c].nunique() > 1]


def _words() -> dict[str, str]:
    from medseg_xai.audit.hidden_strata import _SCORE_WORDS
    from medseg_xai.audit.lesion_properties import LESION_PROPERTY_LABELS
    from medseg_xai.audit.properties import PROPERTY_LABELS

    scan = {**PROPERTY_LABELS, **_SCORE_WORDS}
    return {**LESION_PROPERTY_LABELS,
            **{f"case_{c}": f"scan {scan.get(c, c)}" for c in LESION_CASE_COLUMNS}}


def _group_rows(found: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """The found groups as :data:`LESION_STRATA_COLUMNS` rows (ids ``L1..``)."""
    rows = []
    dice = frame["dice"].to_numpy(dtype=float)
    for r in found.groups.to_dict("records"):
        mask = found.masks[r["group_id"]]
        gid = "L" + str(r["group_id"]).lstrip("H")
        d_in, d_out = dice[mask], dice[~mask]
        rows.append({**r, "group_id": gid, "n_cases": int(frame.loc[mask, "_case"].nunique()),
                     "dice_group": float(np.nanmean(d_in)) if np.isfinite(d_in).any() else np.nan,
                     "dice_rest": float(np.nanmean(d_out)) if np.isfinite(d_out).any()
                     else np.nan})
    for row in rows:  # the sentence the views print (shares as percentages)
        row["sentence"] = (
            f"Missed lesions concentrate in: {row['rule']} (group {row['group_id']}: "
            f"{int(row['n'])} lesions in {row['n_cases']} scans; detected "
            f"{percent(row['mean_group'])} against {percent(row['mean_rest'])} elsewhere on the "
            f"held-out scans, {row['adjusted_gap'] * 100:.0f} percentage points lower beyond "
            f"the audited strata and lesion size; adjusted p {p_words(row['p_adjusted'])}).")
    return pd.DataFrame(rows, columns=list(LESION_STRATA_COLUMNS))


def lesion_hidden_strata(lesions: pd.DataFrame, cases: pd.DataFrame,
                         groups: Sequence[tuple[str, pd.Series, Sequence[Any]]],
                         settings: Mapping[str, Any], stat: Mapping[str, Any],
                         categorical: Sequence[str] = ()
                         ) -> tuple[pd.DataFrame, pd.Series, dict[str, Any]]:
    """The audit's lesion-level hidden strata.

    Parameters
    ----------
    lesions, cases : pandas.DataFrame
        The audit's lesions (with the ``lprop_*`` columns of the runner) and cases tables.
    groups : sequence of (stratum, labels, order)
        The audited strata, as ``analysis.stratum_groups`` gives them (adjusted for).
    settings : mapping
        The audit's settings (``settings["failure"]``: ``min_gap``, ``max_depth``).
    stat : mapping
        The audit's statistics settings (``seed, alpha, correction, min_n, detection_bins``).
    categorical : sequence of str
        Metadata columns searched as categories.

    Returns
    -------
    (table, membership, info)
        :data:`LESION_STRATA_COLUMNS` rows; per lesion row the group id ("" outside any, and
        for false-positive rows); what was searched (``provenance["lesion_hidden_strata"]``).
    """
    from medseg_xai.audit.hidden_strata import HiddenStrataSettings, find_hidden_strata
    from medseg_xai.audit.score_words import correction_name

    fs = dict(settings.get("failure") or {})
    empty = pd.DataFrame(columns=list(LESION_STRATA_COLUMNS))
    membership = pd.Series("", index=lesions.index, dtype=object)
    frame = lesion_frame(lesions, cases, [(name, labels) for name, labels, _ in groups],
                         stat.get("detection_bins", (0, 100, 1000, 10000)), categorical)
    if frame.empty or frame["detected"].nunique() < 2:
        return empty, membership, {}
    numeric = _numeric_columns(frame)
    cat = [c for c in categorical if c in frame.columns]
    known = [c for c in frame.columns if c.startswith("_stratum") or c == "_size"]
    knobs = HiddenStrataSettings(
        seed=int(stat.get("seed", 0)), alpha=float(stat.get("alpha", 0.05)),
        correction=str(stat.get("correction", "holm")), min_n=int(stat.get("min_n", 10)),
        min_gap=float(fs.get("min_gap", 0.05)), max_depth=int(fs.get("max_depth", 2)))
    found = find_hidden_strata(
        frame, "detected", numeric=numeric, categorical=cat, adjust_for=known,
        clusters="patient_id", failed=(1.0 - frame["detected"]).to_numpy(), labels=_words(),
        settings=knobs)
    table = _group_rows(found, frame) if len(found.groups) else empty
    rows = frame["_row"].to_numpy()
    member = found.membership.to_numpy()
    membership.iloc[rows] = ["L" + str(g).lstrip("H") if g else "" for g in member]
    info = {"n_candidates": int(found.n_candidates), "n_groups": int(len(table)),
            "n_lesions": int(len(frame)), "n_cases": int(frame["_case"].nunique()),
            "n_units": int(frame["patient_id"].nunique()),
            "searched": numeric + cat,
            "adjusted_for": [*list(settings.get("strata") or []), "lesion size"],
            "method": LESION_STRATA_METHOD.format(correction_name(stat.get("correction", "holm")))}
    return table, membership, info


def rank_group_lesions(lesions: pd.DataFrame, group: str, n: int | None = None) -> pd.DataFrame:
    """The lesions of a lesion-level hidden stratum, missed first, then by lesion Dice (lowest
    first); ties keep table order. What the dashboard lists for drill-down."""
    if "hidden_stratum" not in lesions:
        return lesions.iloc[:0]
    rows = lesions[lesions["hidden_stratum"] == str(group)]
    key = pd.DataFrame({"missed": (rows["status"] != "missed").astype(int),
                        "dice": pd.to_numeric(rows.get("dice"), errors="coerce").fillna(-1.0)},
                       index=rows.index)
    order = key.sort_values(["missed", "dice"], kind="stable").index
    out = rows.loc[order]
    return out if n is None else out.head(int(n))
