"""Several readers per case: the reference standard, inter-reader agreement, and the model
judged against reader variability.

Per case (called by the audit's case computation when the manifest has ``label_<reader>``
columns):

- The **reference standard** is the ``label`` column when present, else the declared rule:
  ``reference="staple" | "majority"`` (a consensus of the readers, see
  :func:`medseg_xai.metrics.consensus`) or ``reference="<reader>"`` (one reader's mask). The
  model's usual metrics (the cases table, every subgroup table) are computed against it.
- **Inter-reader agreement**: every reader pair compared with
  :func:`medseg_xai.metrics.agreement`'s metrics (Dice, Jaccard, HD95, ASSD, NSD, lesion F1).
- **Model vs readers**: the model against each reader and against the consensus (STAPLE unless
  ``reference="majority"``), with the same metrics; STAPLE's per-reader sensitivity and
  specificity are kept.
- Per-case summaries in the cases table: ``n_readers``, ``readers_missing``, ``reference``,
  ``interreader_<m>`` (mean over reader pairs) and ``model_readers_<m>`` (mean over readers of
  model vs reader) for each metric ``m``.
- **Lesion level**: the connected components of the union of the readers' masks are the
  candidate lesions; each gets the readers that marked it (any overlap), whether it lies in the
  reference standard and whether the model detected it (prediction covering at least
  ``overlap_threshold`` of the component). Reference lesion rows of ``AuditResult.lesions`` get
  ``n_readers_marked`` (readers whose mask overlaps that lesion).

Per subgroup (:func:`reader_tables`, from the per-case rows), with the audit's bootstrap
(patient-level clusters when patient ids are known):

- ``reader_subgroups``: estimate and CI of every comparison and metric.
- ``reader_noninferiority``: "is the model within inter-reader variability?" For each case the
  difference ``model_readers_<m> - interreader_<m>`` (for Dice: mean over readers r of
  Dice(model, r), minus mean over pairs of Dice(r, r'); as Dice is symmetric this equals the
  mean over readers of Dice(model, r) minus the mean Dice of the other readers with r), paired by
  case, its mean and bootstrap CI. The model is *within reader variability* at margin ``delta``
  when the CI's lower bound is >= ``-delta`` (non-inferiority). ``delta`` is pre-specified as an
  acceptance criterion of kind ``"noninferiority"`` (``margin``, default 0.05); without one the
  table uses 0.05.
- ``reader_detection``: detection rate (Clopper-Pearson CI) of lesions marked by all readers, by a
  majority of readers and by any reader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.decide import foreground, is_detected, parse_lesion_id, reference_from_readers

__all__ = [
    "DEFAULT_MARGIN",
    "NONINFERIORITY_METRICS",
    "READER_METRICS",
    "READER_TABLES",
    "ReaderContext",
    "case_readers",
    "case_reference",
    "check_reference",
    "noninferiority_rows",
    "reader_tables",
    "records_tables",
]

#: Metrics of every comparison (the per-pair metrics of ``metrics.agreement``).
READER_METRICS = ("dice", "jaccard", "hd95", "assd", "nsd", "lesion_f1")
#: Metrics summarised per subgroup with CIs.
SUBGROUP_METRICS = ("dice", "hd95", "assd", "nsd", "lesion_f1")
#: Metrics of the non-inferiority question (unitless, higher is better: one margin fits all).
NONINFERIORITY_METRICS = ("dice", "nsd")
DEFAULT_MARGIN = 0.05
CONSENSUS = "consensus"
MODEL = "model"
#: AuditResult tables this module fills.
READER_TABLES = ("readers", "reader_lesions", "reader_subgroups", "reader_noninferiority",
                 "reader_detection")
READER_COLUMNS = ["case_id", "comparison", "reader_a", "reader_b", *READER_METRICS,
                  "sensitivity", "specificity"]
READER_LESION_COLUMNS = ["case_id", "lesion_id", "volume_mm3", "n_readers", "n_readers_marked",
                         "marked_by", "agreement", "in_reference", "detected"]
SUBGROUP_COLUMNS = ["stratum", "group", "comparison", "reader_a", "reader_b", "metric", "n",
                    "n_clusters", "estimate", "ci_low", "ci_high"]
NONINFERIORITY_COLUMNS = ["stratum", "group", "metric", "n", "n_clusters", "model_vs_readers",
                          "reader_vs_reader", "difference", "ci_low", "ci_high", "margin",
                          "status"]
DETECTION_COLUMNS = ["stratum", "group", "lesion_set", "n_lesions", "n_detected", "rate",
                     "ci_low", "ci_high"]
LESION_SETS = ("all readers", "majority of readers", "any reader")
WITHIN, NOT_SHOWN, INSUFFICIENT = "within reader variability", "within-variability not shown", "insufficient data"


# --------------------------------------------------------------------------------------------
# per case


@dataclass
class ReaderContext:
    """What one case's reader analysis needs after the reference was resolved."""

    masks: dict[str, np.ndarray]
    reference: str
    missing: list[str] = field(default_factory=list)
    staple: Any = None
    majority: Any = None


def check_reference(reference: str | None, readers: Sequence[str], has_label: bool) -> None:
    """Validate ``reference=`` against a cohort's readers before any case runs.

    Raises
    ------
    ValueError
        Unknown rule or reader, a rule without readers, or neither ``label`` nor a rule.
    """
    rules = ("staple", "majority")
    if reference is None:
        if not has_label:
            raise ValueError(
                "reference: the manifest has no 'label' column; expected a declared reference "
                f"standard: one of {rules} or a reader of {list(readers)}, got None")
        return
    if not isinstance(reference, str):
        raise ValueError(f"reference: expected a str, got {type(reference).__name__}")
    if not readers:
        raise ValueError(f"reference: {reference!r} needs reader columns label_<reader> in the "
                         "manifest, got none")
    if reference in rules:
        if len(readers) < 2:
            raise ValueError(f"reference: {reference!r} combines readers; expected at least 2 "
                             f"reader columns, got {list(readers)}")
        return
    if reference not in readers:
        raise ValueError(f"reference: expected one of {rules} or a reader of {list(readers)}, "
                         f"got {reference!r}")


def case_reference(case: Any, settings: Mapping[str, Any]) -> tuple[np.ndarray, ReaderContext]:
    """The reference label map of a case under ``settings["reference"]``, and its readers.

    Parameters
    ----------
    case : medseg_xai.cohort.Case
        With ``readers`` (and ``missing_readers`` when missing readers are allowed).
    settings : mapping
        Case settings: ``reference``, ``labels``.

    Raises
    ------
    ValueError
        Naming the case: too few readers for a consensus, the reference reader missing, or a
        consensus of multi-class maps.
    """
    from medseg_xai.metrics import consensus

    cid = case.case_id
    rule = settings.get("reference")
    labels = settings.get("labels")
    masks = {name: np.ascontiguousarray(foreground(m, labels)) for name, m in case.readers.items()}
    missing = list(getattr(case, "missing_readers", []) or [])
    ctx = ReaderContext(masks=masks, reference=rule or "label", missing=missing)
    if len(masks) >= 2:
        ctx.staple = consensus(masks, "staple")
        if rule == "majority":
            ctx.majority = consensus(masks, "majority")
    # the reference standard itself is decided in one place (decide.py)
    consensus_of = {"staple": ctx.staple, "majority": ctx.majority}
    ref = reference_from_readers(cid, case.label, case.readers, rule, labels, missing=missing,
                                 masks=masks, consensus_of=consensus_of)
    return ref, ctx


def _pair(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...],
          settings: Mapping[str, Any]) -> dict[str, Any]:
    from medseg_xai.metrics.agreement import pair_metrics

    m = pair_metrics(a, b, spacing, tolerance=settings["tolerance"],
                     percentile=settings["percentile"], empty=settings["empty"],
                     connectivity=settings["connectivity"],
                     overlap_threshold=settings["overlap_threshold"],
                     convention=settings.get("convention", "monai"),
                     use_subvoxels=bool(settings.get("use_subvoxels", False)),
                     matching=settings.get("matching", "overlap"),
                     iou_threshold=settings.get("iou_threshold", 0.5))
    return {k: m[k] for k in READER_METRICS}


def case_readers(
    pred_fg: np.ndarray,
    ref_fg: np.ndarray,
    ctx: ReaderContext,
    spacing: tuple[float, ...],
    settings: Mapping[str, Any],
    lesion_table: pd.DataFrame | None = None,
    main: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Reader analysis of one case: record keys for the cases table and the reader tables.

    Parameters
    ----------
    pred_fg, ref_fg : numpy.ndarray
        bool foreground of the prediction and of the reference standard.
    ctx : ReaderContext
        From :func:`case_reference`.
    spacing : tuple of float
    settings : mapping
        Case settings (``tolerance, percentile, empty, connectivity, overlap_threshold``).
    lesion_table : pandas.DataFrame, optional
        The case's ``metrics.lesions`` table; its reference rows get ``n_readers_marked``
        (in place).
    main : mapping, optional
        The case's metrics against the reference (``evaluate_case`` plus ``lesion_f1``), reused
        for "model vs consensus" when the consensus is the reference (binary audits only).

    Returns
    -------
    dict
        ``n_readers, readers_missing, reference, interreader_<m>, model_readers_<m>`` (floats;
        NaN without two readers) plus ``readers`` and ``reader_lesions`` (lists of row dicts).
    """
    masks = ctx.masks
    names = list(masks)
    rows: list[dict[str, Any]] = []
    for ra, rb in combinations(names, 2):
        rows.append({"comparison": "reader", "reader_a": ra, "reader_b": rb,
                     **_pair(masks[ra], masks[rb], spacing, settings)})
    for r in names:
        rows.append({"comparison": "model", "reader_a": r, "reader_b": MODEL,
                     **_pair(masks[r], pred_fg, spacing, settings)})
    cons = ctx.majority if ctx.majority is not None else ctx.staple
    if cons is not None and main is not None and ctx.reference in ("staple", "majority"):
        # The consensus is the reference: the case's own metrics are the comparison.
        rows.append({"comparison": "model", "reader_a": CONSENSUS, "reader_b": MODEL,
                     **{k: float(main[k]) for k in READER_METRICS}})
    elif cons is not None:
        rows.append({"comparison": "model", "reader_a": CONSENSUS, "reader_b": MODEL,
                     **_pair(cons.mask, pred_fg, spacing, settings)})
    if ctx.staple is not None:
        for _, p in ctx.staple.performance.iterrows():
            rows.append({"comparison": "staple", "reader_a": p["reader"], "reader_b": "",
                         "sensitivity": float(p["sensitivity"]),
                         "specificity": float(p["specificity"])})
    out: dict[str, Any] = {"n_readers": len(names), "readers_missing": ",".join(ctx.missing),
                           "reference": ctx.reference}
    pairs = [r for r in rows if r["comparison"] == "reader"]
    model = [r for r in rows if r["comparison"] == "model" and r["reader_a"] != CONSENSUS]
    for m in READER_METRICS:
        out[f"interreader_{m}"] = _nanmean([r[m] for r in pairs])
        out[f"model_readers_{m}"] = _nanmean([r[m] for r in model])
    out["readers"] = [{c: r.get(c, float("nan")) for c in READER_COLUMNS[1:]} for r in rows]

    out["reader_lesions"] = _reader_lesions(pred_fg, ref_fg, masks, spacing, settings)
    if lesion_table is not None and len(lesion_table):
        _mark_readers(lesion_table, ref_fg, masks, settings["connectivity"])
    return out


def _reader_lesions(pred_fg: np.ndarray, ref_fg: np.ndarray, masks: Mapping[str, np.ndarray],
                    spacing: tuple[float, ...], settings: Mapping[str, Any]
                    ) -> list[dict[str, Any]]:
    """Lesion level: the components of the union of the readers' masks (``u-k``), who marked
    each, whether the reference holds it and whether the model detected it."""
    from medseg_xai.metrics import label_lesions

    names = list(masks)
    les_rows: list[dict[str, Any]] = []
    if not names:
        return les_rows
    union = np.zeros_like(pred_fg, dtype=bool)
    for m in masks.values():
        union |= m
    lab, n = label_lesions(union, settings["connectivity"])
    if not n:
        return les_rows
    flat = lab.ravel()
    counts = np.bincount(flat, minlength=n + 1)
    marked = {r: np.bincount(flat[masks[r].ravel()], minlength=n + 1) > 0 for r in names}
    in_ref = np.bincount(flat[ref_fg.ravel()], minlength=n + 1) > 0
    covered = np.bincount(flat[pred_fg.ravel()], minlength=n + 1)
    voxel = float(np.prod(spacing))
    thr = float(settings["overlap_threshold"])
    for k in range(1, n + 1):
        by = [r for r in names if marked[r][k]]
        agree = ("all readers" if len(by) == len(names) else
                 "majority of readers" if 2 * len(by) > len(names) else "minority")
        les_rows.append({
            "lesion_id": f"u-{k}", "volume_mm3": float(counts[k]) * voxel,
            "n_readers": len(names), "n_readers_marked": len(by), "marked_by": ",".join(by),
            "agreement": agree, "in_reference": bool(in_ref[k]),
            "detected": bool(is_detected(covered[k] / counts[k], thr))})
    return les_rows


def _mark_readers(lesion_table: pd.DataFrame, ref_fg: np.ndarray,
                  masks: Mapping[str, np.ndarray], connectivity: int | None) -> None:
    """``n_readers_marked`` of each reference lesion row (in place)."""
    from medseg_xai.metrics import label_lesions

    ref_lab, n_ref = label_lesions(ref_fg, connectivity)
    flat = ref_lab.ravel()
    n_marked = np.zeros(n_ref + 1, dtype=int)
    for m in masks.values():
        n_marked += np.bincount(flat[m.ravel()], minlength=n_ref + 1) > 0
    ids = lesion_table["lesion_id"].astype(str)
    is_ref = lesion_table["source"] == "reference"
    lesion_table["n_readers_marked"] = [
        int(n_marked[parse_lesion_id(i)[1]]) if r else float("nan") for i, r in zip(ids, is_ref)]


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else float("nan")


# --------------------------------------------------------------------------------------------
# tables


def records_tables(records: Sequence[Mapping[str, Any]]) -> dict[str, pd.DataFrame]:
    """The per-case ``readers`` and ``reader_lesions`` tables from the audit's case records."""
    rows: list[tuple[int, dict[str, Any]]] = []
    les: list[tuple[int, dict[str, Any]]] = []
    # Records are streamed in completion order; only the reader rows are kept, then put in
    # manifest order (``row``; the sort is stable within a case).
    for rec in records:
        at = int(rec.get("row", 0))
        rows.extend((at, {"case_id": rec["case_id"], **r}) for r in rec.get("readers") or [])
        les.extend((at, {"case_id": rec["case_id"], **r})
                   for r in rec.get("reader_lesions") or [])
    rows.sort(key=lambda t: t[0])
    les.sort(key=lambda t: t[0])
    readers = pd.DataFrame([r for _, r in rows], columns=READER_COLUMNS)
    lesions = pd.DataFrame([r for _, r in les], columns=READER_LESION_COLUMNS)
    for col in ("n_readers", "n_readers_marked"):
        lesions[col] = lesions[col].astype("int64")
    for col in ("in_reference", "detected"):
        lesions[col] = lesions[col].astype(bool)
    return {"readers": readers, "reader_lesions": lesions}


def _margins(criteria: Sequence[Mapping[str, Any]] | None) -> dict[str, float]:
    """Pre-specified margin per metric from ``noninferiority`` criteria (first one wins)."""
    out: dict[str, float] = {}
    for c in criteria or []:
        if c.get("kind") == "noninferiority" and c.get("metric") not in out:
            out[str(c.get("metric") or "dice")] = float(c.get("margin", DEFAULT_MARGIN))
    return out


def _ci(values: np.ndarray, clusters: np.ndarray | None, stat: Mapping[str, Any],
        rng: np.random.Generator, metric: str, difference: bool = False) -> tuple[float, float]:
    from medseg_xai.audit.stats import mean_interval

    return mean_interval(values, metric=metric, clusters=clusters,
                         n_resamples=int(stat["n_resamples"]),
                         confidence=float(stat["confidence"]), method=stat["ci_method"],
                         rng=rng, difference=difference)


def _seed(seed: int, *parts: str) -> np.random.Generator:
    """One stream per (table, group, comparison, metric): rows do not shift when others change."""
    import zlib

    key = zlib.crc32("|".join(parts).encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence([int(seed), key]))


def reader_tables(
    cases: pd.DataFrame,
    readers: pd.DataFrame,
    reader_lesions: pd.DataFrame,
    groups: Sequence[tuple[str, str, pd.Index]],
    stat: Mapping[str, Any],
    criteria: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, pd.DataFrame]:
    """Subgroup tables of the reader analysis.

    Parameters
    ----------
    cases : pandas.DataFrame
        The audit's cases table (``status``, ``interreader_<m>``, ``model_readers_<m>``,
        optional ``patient_id``).
    readers, reader_lesions : pandas.DataFrame
        From :func:`records_tables`.
    groups : sequence of (stratum, group, index)
        Every group of every stratum (overall first) with its cases' index.
    stat : mapping
        ``seed, min_n, n_resamples, confidence, ci_method``.
    criteria : sequence of mapping, optional
        Normalised criteria; ``noninferiority`` ones set the margin per metric.

    Returns
    -------
    dict
        ``reader_subgroups``, ``reader_noninferiority``, ``reader_detection``.
    """
    from medseg_xai.audit.strata import case_clusters as _clusters

    empty = {"reader_subgroups": pd.DataFrame(columns=SUBGROUP_COLUMNS),
             "reader_noninferiority": pd.DataFrame(columns=NONINFERIORITY_COLUMNS),
             "reader_detection": pd.DataFrame(columns=DETECTION_COLUMNS)}
    if readers is None or readers.empty or "interreader_dice" not in cases.columns:
        return empty
    seed = int(stat["seed"])
    ok = cases["status"] == "ok"
    clusters, clustered = _clusters(cases)
    cl_by_case = dict(zip(cases["case_id"], clusters))
    margins = _margins(criteria)

    values, keys = _long_values(readers, cases, ok)
    grouped = {k: g for k, g in values.groupby(["comparison", "reader_a", "reader_b", "metric"],
                                               sort=False)}
    sub_rows, ni_rows, det_rows = [], [], []
    for stratum, group, idx in groups:
        members = set(cases.loc[cases.index.isin(idx) & ok, "case_id"])
        for key in keys[["comparison", "reader_a", "reader_b", "metric"]].itertuples(
                index=False, name=None):
            g = grouped[key]
            sel = g[g["case_id"].isin(members)]
            x = sel["value"].to_numpy(float)
            cl = np.asarray([cl_by_case[c] for c in sel["case_id"]]) if clustered else None
            lo, hi = (_ci(x, cl, stat, _seed(seed, "readers", stratum, group, *key), key[3])
                      if x.size >= 2 else (float("nan"), float("nan")))
            sub_rows.append({"stratum": stratum, "group": group, "comparison": key[0],
                             "reader_a": key[1], "reader_b": key[2], "metric": key[3],
                             "n": int(x.size),
                             "n_clusters": int(len(set(cl))) if cl is not None else int(x.size),
                             "estimate": float(x.mean()) if x.size else float("nan"),
                             "ci_low": lo, "ci_high": hi})
        ni_rows += _noninferiority_group(cases[cases["case_id"].isin(members)], margins,
                                         cl_by_case if clustered else None, stat,
                                         (stratum, group))
        les = (reader_lesions[reader_lesions["case_id"].isin(members)]
               if len(reader_lesions) else reader_lesions)
        det_rows += _detection_rows(les, stratum, group, float(stat["confidence"]))
    return {"reader_subgroups": pd.DataFrame(sub_rows, columns=SUBGROUP_COLUMNS),
            "reader_noninferiority": pd.DataFrame(ni_rows, columns=NONINFERIORITY_COLUMNS),
            "reader_detection": pd.DataFrame(det_rows, columns=DETECTION_COLUMNS)}


def _noninferiority_group(sel_cases: pd.DataFrame, margins: Mapping[str, float],
                          cl_by_case: Mapping[str, str] | None, stat: Mapping[str, Any],
                          where: tuple[str, Any]) -> list[dict[str, Any]]:
    """Model vs readers minus reader vs reader in one group, per metric, against its margin."""
    stratum, group = where
    seed, min_n = int(stat["seed"]), int(stat["min_n"])
    rows = []
    for m in NONINFERIORITY_METRICS:
        margin = margins.get(m, DEFAULT_MARGIN)
        model = pd.to_numeric(sel_cases[f"model_readers_{m}"], errors="coerce")
        inter = pd.to_numeric(sel_cases[f"interreader_{m}"], errors="coerce")
        keep = np.isfinite(model) & np.isfinite(inter)
        d = (model - inter)[keep].to_numpy(float)
        cl = (np.asarray([cl_by_case[c] for c in sel_cases.loc[keep, "case_id"]])
              if cl_by_case is not None else None)
        lo, hi = (_ci(d, cl, stat, _seed(seed, "noninferiority", stratum, group, m), m,
                      difference=True)
                  if d.size >= 2 else (float("nan"), float("nan")))
        if d.size < min_n or not np.isfinite(lo):
            status = INSUFFICIENT
        else:
            status = WITHIN if lo >= -margin else NOT_SHOWN
        rows.append({"stratum": stratum, "group": group, "metric": m, "n": int(d.size),
                     "n_clusters": int(len(set(cl))) if cl is not None else int(d.size),
                     "model_vs_readers": float(model[keep].mean()) if d.size else np.nan,
                     "reader_vs_reader": float(inter[keep].mean()) if d.size else np.nan,
                     "difference": float(d.mean()) if d.size else float("nan"),
                     "ci_low": lo, "ci_high": hi, "margin": margin, "status": status})
    return rows


def _long_values(readers: pd.DataFrame, cases: pd.DataFrame, ok: pd.Series
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long per-case values (the two case-level means plus every single comparison) and the
    comparison keys in display order: aggregates, pairs, model vs each reader, consensus,
    STAPLE."""
    long = [readers.loc[readers["comparison"] == "staple",
                        ["case_id", "comparison", "reader_a", "reader_b", "sensitivity",
                         "specificity"]].melt(
        id_vars=["case_id", "comparison", "reader_a", "reader_b"], var_name="metric")]
    single = readers[readers["comparison"] != "staple"]
    long.append(single[["case_id", "comparison", "reader_a", "reader_b", *SUBGROUP_METRICS]].melt(
        id_vars=["case_id", "comparison", "reader_a", "reader_b"], var_name="metric"))
    for col, comp, a, b in (("interreader", "reader", "all readers", "all readers"),
                            ("model_readers", "model", "all readers", MODEL)):
        part = cases.loc[ok, ["case_id", *[f"{col}_{m}" for m in SUBGROUP_METRICS]]]
        part = part.melt(id_vars=["case_id"], var_name="metric")
        part["metric"] = part["metric"].str[len(col) + 1:]
        part["comparison"], part["reader_a"], part["reader_b"] = comp, a, b
        long.append(part)
    values = pd.concat(long, ignore_index=True)
    values["value"] = pd.to_numeric(values["value"], errors="coerce")
    values = values[np.isfinite(values["value"])]
    keys = values[["comparison", "reader_a", "reader_b", "metric"]].drop_duplicates()
    rank = {"reader": 0, "model": 1, "staple": 2}
    keys = keys.assign(_agg=(keys["reader_a"] != "all readers").astype(int),
                       _c=keys["comparison"].map(rank),
                       _cons=(keys["reader_a"] == CONSENSUS).astype(int))
    keys = keys.sort_values(["_agg", "_c", "_cons", "reader_a", "reader_b"], kind="mergesort")
    return values, keys


def _detection_rows(les: pd.DataFrame, stratum: str, group: Any, confidence: float
                    ) -> list[dict[str, Any]]:
    """Detection rate of the model on each lesion set of the readers (Wilson-type interval)."""
    from medseg_xai.audit.stats import rate_interval

    rows = []
    for lesion_set in LESION_SETS:
        if lesion_set == "all readers":
            s = les[les["n_readers_marked"] == les["n_readers"]] if len(les) else les
        elif lesion_set == "majority of readers":
            s = les[2 * les["n_readers_marked"] > les["n_readers"]] if len(les) else les
        else:
            s = les
        n = len(s)
        k = int(s["detected"].astype(bool).sum()) if n else 0
        lo, hi = rate_interval(k, n, confidence)
        rows.append({"stratum": stratum, "group": group, "lesion_set": lesion_set,
                     "n_lesions": n, "n_detected": k,
                     "rate": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi})
    return rows


def noninferiority_rows(crit: Mapping[str, Any], table: pd.DataFrame, strata: Sequence[str],
                        min_n: int) -> list[dict[str, Any]]:
    """Rows of the criteria table for one ``kind="noninferiority"`` criterion.

    PASS in a group when the lower CI bound of (model vs readers - reader vs reader) is at least
    ``-margin``; FAIL when it is below; INSUFFICIENT DATA below ``min_n`` cases (or without a
    finite interval); NOT EVALUATED without multi-reader cases in that stratum. Rows carry a
    ``reason`` when not PASS / FAIL.
    """
    from medseg_xai.status import FAIL, NOT_EVALUATED, PASS
    from medseg_xai.status import INSUFFICIENT as INS

    metric = crit.get("metric") or "dice"
    margin = float(crit.get("margin", DEFAULT_MARGIN))
    need = int(crit.get("min_n") or min_n)
    base = {"criterion": crit["name"], "kind": "noninferiority", "metric": metric,
            "statistic": "ci_low", "op": ">=", "threshold": -margin}
    rows: list[dict[str, Any]] = []
    for stratum in strata:
        sub = (table[(table["stratum"] == stratum) & (table["metric"] == metric)]
               if table is not None and len(table) else pd.DataFrame())
        if sub.empty:
            rows.append({**base, "stratum": stratum, "group": "", "n": 0,
                         "value": float("nan"), "status": NOT_EVALUATED,
                         "reason": "no case with two or more readers in this stratum"})
            continue
        for _, r in sub.iterrows():
            value = float(r["ci_low"])
            reason = ""
            if int(r["n"]) < need or not np.isfinite(value):
                status = INS
                reason = (f"{int(r['n'])} multi-reader case(s), fewer than {need}"
                          if int(r["n"]) < need else "no finite confidence interval")
            else:
                status = PASS if value >= -margin else FAIL
            rows.append({**base, "stratum": stratum, "group": str(r["group"]), "n": int(r["n"]),
                         "value": value, "status": status, "reason": reason})
    return rows
