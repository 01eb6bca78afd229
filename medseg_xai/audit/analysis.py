"""Subgroup tables of an audit, computed from the per-case and per-lesion tables.

Every table starts with the whole cohort (``stratum="overall"``, ``group="all"``) followed by
one block per stratum. Groups below ``min_n`` keep their numbers but are flagged
``"insufficient data"`` and take no part in tests or verdicts.

``subgroups`` flags: ``"insufficient data"`` (n < min_n), ``"worse"`` / ``"better"`` (adjusted
p-value below ``alpha`` and the gap to the overall value points that way), ``"ok"``. Scans
without reference lesions take no part in the tests of overlap and distance metrics (their value
is the empty-mask policy's, e.g. an image-diagonal HD95, not a finding): a group made only of
them reads ``"not tested"`` for those metrics, one with fewer than ``min_n`` scans with lesions
``"insufficient data"``.

The lesion-detection, false-positive and volume-agreement tables are flagged the same way: each
group is tested against the rest of the cohort in its stratum (Fisher's exact test for rates,
Mann-Whitney U for volume differences), p-values adjusted over the table's family, so a group
reads ``"ok"`` only when it is large enough *and* not significantly different from the rest.
Rows large enough but with nothing to compare with (the whole cohort; a group holding every
lesion of its size bin) read ``"not tested"``.

:func:`rank_worst` is the one ranking of worst cases (direction from
``audit.stats.metric_direction``); scans without reference lesions are left out of a ranking by
an overlap metric (their Dice says nothing about segmentation quality) and ranked by false
positives instead (:func:`rank_false_positive_scans`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.audit import stats
from medseg_xai.audit.criteria import judged_on_empty
from medseg_xai.audit.defaults import DEFAULTS as _PLAN_DEFAULTS
from medseg_xai.audit.strata import (
    DERIVED_STRATA,
    Stratum,
    add_derived_columns,
    case_clusters,
    group_labels,
    lesion_size_labels,
)
from medseg_xai.status import (
    FLAG_BETTER,
    FLAG_INSUFFICIENT,
    FLAG_NOT_TESTED,
    FLAG_OK,
    FLAG_WORSE,
)

__all__ = [
    "GROUP_COUNT_COLUMNS",
    "INSUFFICIENT",
    "group_counts_table",
    "rank_false_positive_scans",
    "rank_worst",
    "OVERALL",
    "STATS_DEFAULTS",
    "SUBGROUP_COLUMNS",
    "detection_table",
    "false_positive_table",
    "stratum_groups",
    "subgroup_table",
    "volume_agreement_table",
]

OVERALL = Stratum("overall", ())
#: Statistics defaults of an audit. ``audit()`` and :func:`subgroup_table` spell them out in
#: their signatures (tests keep the three in step); :func:`~medseg_xai.audit.build_result` and
#: ``compare()`` fall back on them for settings a stored result does not record.
#: The statistics defaults, as the analysis plan defines them (``audit.plan.DEFAULTS``).
STATS_DEFAULTS: dict[str, Any] = {
    "ci_method" if k == "interval_method" else k: v for k, v in _PLAN_DEFAULTS.items()
    if k != "n_permutations"
}
INSUFFICIENT = FLAG_INSUFFICIENT
SUBGROUP_COLUMNS = [
    "stratum", "group", "metric", "n", "n_clusters", "estimate", "median", "ci_low", "ci_high",
    "gap", "gap_ci_low", "gap_ci_high", "gap_best", "gap_best_ci_low", "gap_best_ci_high",
    "best_group", "p_value", "p_kruskal", "p_adjusted", "flag",
]


def stratum_groups(
    cases: pd.DataFrame, stratum: Stratum, orders: Mapping[str, list[str]]
) -> tuple[pd.Series, list[str]]:
    """Group label per case and the list of groups (in display order) of a stratum."""
    if stratum is OVERALL or not stratum.columns:
        return pd.Series("all", index=cases.index, dtype=object), ["all"]
    derived = any(c in DERIVED_STRATA for c in stratum.columns)
    labels = group_labels(cases, stratum, derived=derived)
    present = [g for g in pd.unique(labels.dropna())]
    if len(stratum.columns) == 1 and stratum.columns[0] in orders:
        order = list(orders[stratum.columns[0]])
        order += sorted(g for g in present if g not in order)
    else:
        order = sorted(present, key=str)
    return labels, order


# resampling units (patients when known): one definition, in strata.py, shared with readers
_clusters = case_clusters


def _float_values(column: pd.Series) -> np.ndarray:
    """A metric column as a float array: the column's own array when it is float64 (no copy
    per metric and stratum), else coerced."""
    if column.dtype == np.float64:
        return column.to_numpy()
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)


def _clustered_group_means(
    prepared: Sequence[tuple[Any, ...]], cl_codes: np.ndarray, g_codes: np.ndarray,
    n_groups: int, n_resamples: int, seed: list[int],
) -> dict[tuple[int, int], np.ndarray]:
    """Cluster-bootstrap means of every metric in every group: ``(metric k, group j) -> (B,)``.

    Each group's clusters (patients) are resampled with replacement, once per group for all
    metrics (in memory-bounded blocks); a metric's mean in a resample is the ratio of the
    drawn clusters' sums to their counts of finite values (clusters without a finite value of
    that metric add nothing). Drawing per metric made a 100,000-case audit with patient ids
    spend minutes on multinomial draws.
    """
    out: dict[tuple[int, int], np.ndarray] = {}
    for j in range(n_groups):
        in_group = g_codes == j
        members, local = np.unique(cl_codes[in_group], return_inverse=True)
        if members.size < 2:
            continue
        pairs = []
        for _, _, values, finite, _ in prepared:
            f = finite[in_group]
            sums, counts = _cluster_sums(local[f], None, values[in_group][f], members.size, 1)
            pairs.append((sums[:, 0], counts[:, 0]))
        rng = np.random.default_rng([*seed, 1 << 16, j])
        for k, means in enumerate(stats.blocked_weighted_means(members.size, n_resamples, rng,
                                                               *pairs)):
            out[(k, j)] = means
    return out


def _group_intervals(
    prepared: Sequence[tuple[Any, ...]], methods: Sequence[str], cl_codes: np.ndarray,
    g_codes: np.ndarray, n_groups: int, *, n_resamples: int, confidence: float, seed: list[int],
) -> dict[tuple[int, int], tuple[float, float]]:
    """Each group's interval of every metric by its own method (``"betting"`` or
    ``"studentized"``, :func:`stats.interval_method`): ``(metric k, group j) -> (low, high)``.

    Units are the clusters (patients; each scan its own when no patient id is given). Betting
    intervals take the units' means; the studentized bootstrap resamples the group's units
    once for all its unbounded metrics (:func:`stats.studentized_from_sums`). Below
    ``stats.MIN_INTERVAL_UNITS`` units the interval is NaN (not shown).
    """
    out: dict[tuple[int, int], tuple[float, float]] = {}
    nan = (float("nan"), float("nan"))
    for j in range(n_groups):
        in_group = g_codes == j
        members, local = np.unique(cl_codes[in_group], return_inverse=True)
        stud: list[tuple[int, np.ndarray, np.ndarray, str]] = []
        for k, (_, metric, values, finite, _) in enumerate(prepared):
            method = methods[k]
            if method not in ("betting", "studentized"):
                continue
            f = finite[in_group]
            sums, counts = _cluster_sums(local[f], None, values[in_group][f], members.size, 1)
            sums, counts = sums[:, 0], counts[:, 0]
            if int(np.count_nonzero(counts)) < stats.MIN_INTERVAL_UNITS[method]:
                out[(k, j)] = nan
            elif method == "betting":
                has = counts > 0
                out[(k, j)] = stats.betting_mean_ci(
                    sums[has] / counts[has], bounds=stats.metric_bounds(metric) or (0.0, 1.0),
                    confidence=confidence, rng=np.random.default_rng([*seed, 1 << 17, j, k]))
            else:
                stud.append((k, sums, counts, metric))
        if stud:
            cis = stats.studentized_from_sums(
                np.stack([t[1] for t in stud], axis=1), np.stack([t[2] for t in stud], axis=1),
                n_resamples=n_resamples, confidence=confidence,
                rng=np.random.default_rng([*seed, 1 << 18, j]))
            for (k, _, _, metric), ci in zip(stud, cis):
                out[(k, j)] = _clip(ci, stats.metric_bounds(metric))
    return out


def _clip(ci: tuple[float, float], bounds: tuple[float, float] | None) -> tuple[float, float]:
    if bounds is None:
        return ci
    return (max(ci[0], bounds[0]), min(ci[1], bounds[1]))


def _cluster_sums(clusters: np.ndarray, groups: np.ndarray | None, values: np.ndarray,
                  n_clusters: int, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``(n_clusters, n_groups)`` sum and count of ``values`` per cluster and group."""
    index = clusters * n_groups + (0 if groups is None else groups)
    size = n_clusters * n_groups
    sums = np.bincount(index, weights=values, minlength=size).reshape(n_clusters, n_groups)
    counts = np.bincount(index, minlength=size).astype(float).reshape(n_clusters, n_groups)
    return sums, counts


def _flag(n: int, min_n: int, gap: float, p_adj: float, direction: int, alpha: float) -> str:
    if n < min_n:
        return INSUFFICIENT
    if np.isfinite(p_adj) and p_adj < alpha and np.isfinite(gap) and gap != 0 and direction != 0:
        return "worse" if np.sign(gap) != direction else "better"
    return "ok"


def subgroup_table(
    cases: pd.DataFrame,
    strata: Sequence[Stratum],
    metrics: Sequence[str],
    *,
    orders: Mapping[str, list[str]] | None = None,
    seed: int = 0,
    min_n: int = 10,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    ci_method: str = "auto",
    test: str = "mannwhitney",
    correction: str = "holm",
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Per-subgroup estimate, bootstrap CI, gaps, tests and flags of every metric.

    Parameters
    ----------
    cases : pandas.DataFrame
        Cases table (``status``, metric columns, stratum columns, optional ``patient_id``).
    strata : sequence of Stratum
        Splits to report after the overall row.
    metrics : sequence of str
        Metric columns to summarise (NaN values are left out of that metric's n).
    orders : mapping, optional
        Display order of derived strata.
    seed : int
        Seeds the bootstrap. Each stratum draws one set of cluster resamples shared by its
        metrics (the gaps' intervals); each (stratum, metric) has its own stream for the group
        intervals and tests, so tables do not shift when a stratum or a metric is added.
    min_n : int
        Groups with fewer evaluated values are flagged ``"insufficient data"`` and not tested.
    n_resamples, confidence, ci_method
        Interval settings. ``ci_method="auto"`` chooses per metric
        (:func:`stats.interval_method`: betting for bounded metrics, studentized bootstrap for
        unbounded ones), patient-clustered with patient ids. The legacy ``"BCa"`` /
        ``"percentile"`` apply to every metric (with patient ids: the cluster percentile).
    test : {"mannwhitney", "permutation"}
        Group-vs-rest test; Kruskal-Wallis across groups is reported as ``p_kruskal``.
    correction : {"holm", "bh"}
        Multiple-comparison correction over the whole family of group-vs-rest tests.
    alpha : float
        Level at which an adjusted p-value flags a group.
    """
    if correction not in ("holm", "bh"):
        raise ValueError(f"correction: expected 'holm' or 'bh', got {correction!r}")
    orders = orders or {}
    # A mask, not a copy of the cases table (at 100,000 cases every copy is tens of MB); the
    # arrays below span every row (-1 codes outside the evaluated cases), so each metric's
    # values are the column itself, not a masked copy per stratum.
    ok = (cases["status"] == "ok").to_numpy()
    cl_codes, n_cl, clustered = _cluster_codes(cases, ok)
    has_ref = (~_empty_reference(cases)).to_numpy() if "volume_ref_mm3" in cases.columns \
        else np.ones(len(cases), dtype=bool)
    opts = {"seed": int(seed), "min_n": min_n, "n_resamples": n_resamples,
            "confidence": confidence, "ci_method": ci_method, "test": test}
    rows: list[dict[str, Any]] = []
    for s_idx, stratum in enumerate([OVERALL, *strata]):
        rows.extend(_stratum_rows(cases, stratum, s_idx, metrics, orders, ok, cl_codes, n_cl,
                                  clustered, has_ref, opts))
    return _adjusted_and_flagged(rows, correction, min_n, alpha)


def _cluster_codes(cases: pd.DataFrame, ok: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """Cluster code per row (-1 outside the evaluated cases), number of clusters, clustered."""
    clusters_all, clustered = _clusters(cases)
    if clustered:  # codes of the evaluated cases' clusters, in order of appearance
        cl_ok, cl_names = pd.factorize(clusters_all[ok])
        n_cl = len(cl_names)
    else:  # each case is its own cluster: no hashing of 100,000 case ids (17 MB)
        n_cl = int(ok.sum())
        cl_ok = np.arange(n_cl)
    cl_codes = np.full(len(cases), -1, dtype=np.int64)
    cl_codes[ok] = cl_ok
    return cl_codes, n_cl, clustered


@dataclass(frozen=True)
class _StratumRun:
    """What the metrics of one stratum share: codes, group intervals and the settings."""

    stratum: Stratum
    order: list[Any]
    cl_codes: np.ndarray
    g_codes: np.ndarray
    has_ref: np.ndarray
    clustered: bool
    legacy: bool
    group_ci: dict[tuple[int, int], tuple[float, float]]
    group_boot: dict[tuple[int, int], np.ndarray]
    opts: Mapping[str, Any]


def _stratum_rows(
    cases: pd.DataFrame, stratum: Stratum, s_idx: int, metrics: Sequence[str],
    orders: Mapping[str, list[str]], ok: np.ndarray, cl_codes: np.ndarray, n_cl: int,
    clustered: bool, has_ref: np.ndarray, opts: Mapping[str, Any],
) -> list[dict[str, Any]]:
    """Rows of every metric and group of one stratum (p-values not yet adjusted)."""
    seed, n_resamples, ci_method = opts["seed"], opts["n_resamples"], opts["ci_method"]
    labels_all, order = stratum_groups(cases, stratum, orders)
    g_codes = pd.Index(order).get_indexer(labels_all.to_numpy()).astype(np.int64)
    g_codes[~ok] = -1
    n_groups = len(order)
    prepared = []
    for m_idx, metric in enumerate(metrics):
        if metric not in cases.columns:
            continue
        values = _float_values(cases[metric])
        finite = np.isfinite(values) & ok
        prepared.append((m_idx, metric, values, finite, finite & (g_codes >= 0)))
    # One set of cluster resamples per stratum, shared by its metrics (a joint bootstrap):
    # drawing the (B x clusters) counts is the slow part at 100,000 cases, so it is done
    # once per stratum, block by block; each metric's per-cluster sums are rebuilt per
    # block (O(n)) rather than held for every metric at once (O(n x groups x metrics)).
    parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in prepared]
    for w in stats.weight_blocks(n_cl, n_resamples, np.random.default_rng([seed, s_idx])):
        for k, (_, _, values, finite, keep) in enumerate(prepared):
            sums, counts = _cluster_sums(cl_codes[keep], g_codes[keep], values[keep],
                                         n_cl, n_groups)
            o_sums, o_counts = _cluster_sums(cl_codes[finite], None, values[finite], n_cl, 1)
            parts[k].append((stats.weighted_means(w, sums, counts),
                             stats.weighted_means(w, o_sums[:, 0], o_counts[:, 0])))
    # With patient ids, each group's interval resamples the group's patients: drawn once
    # per group and shared by the metrics, like the gaps' resamples above.
    methods = [stats.interval_method(p[1], ci_method) for p in prepared]
    legacy = ci_method in ("BCa", "percentile")
    group_boot = (_clustered_group_means(prepared, cl_codes, g_codes, n_groups,
                                         n_resamples, [seed, s_idx])
                  if clustered and legacy else {})
    group_ci = ({} if legacy else _group_intervals(
        prepared, methods, cl_codes, g_codes, n_groups, n_resamples=n_resamples,
        confidence=opts["confidence"], seed=[seed, s_idx]))
    run = _StratumRun(stratum, order, cl_codes, g_codes, has_ref, clustered, legacy, group_ci,
                      group_boot, opts)
    rows: list[dict[str, Any]] = []
    for k, (m_idx, metric, values, finite, keep) in enumerate(prepared):
        if parts[k]:
            boot_groups = np.concatenate([g for g, _ in parts[k]])
            boot_overall = np.concatenate([o for _, o in parts[k]])
        else:
            boot_groups, boot_overall = np.zeros((0, n_groups)), np.zeros(0)
        parts[k] = []
        # group intervals and tests: a stream per (stratum, metric), so tables do not shift
        # when a metric or a stratum is added
        rng = np.random.default_rng([seed, s_idx, m_idx])
        rows.extend(_metric_rows(run, k, metric, values, finite, keep, boot_groups,
                                 boot_overall, rng))
    return rows


def _best_group(ests: np.ndarray, ns: np.ndarray, min_n: int, direction: int) -> int | None:
    """Index of the best group (large enough groups first), None without an estimate."""
    n_groups = len(ests)
    eligible = [j for j in range(n_groups) if ns[j] >= min_n and np.isfinite(ests[j])]
    if not eligible:
        eligible = [j for j in range(n_groups) if np.isfinite(ests[j])]
    best = None
    if eligible:
        score = {1: -ests, -1: ests, 0: np.abs(ests)}[direction]
        best = min(eligible, key=lambda j: score[j])
    return best


def _metric_rows(run: _StratumRun, k: int, metric: str, values: np.ndarray, finite: np.ndarray,
                 keep: np.ndarray, boot_groups: np.ndarray, boot_overall: np.ndarray,
                 rng: np.random.Generator) -> list[dict[str, Any]]:
    """One metric's row per group of the stratum: estimate, intervals, gaps and test."""
    g_codes, stratum, order = run.g_codes, run.stratum, run.order
    min_n, confidence = run.opts["min_n"], run.opts["confidence"]
    n_groups = len(order)
    overall = float(values[finite].mean()) if finite.any() else float("nan")
    direction = stats.metric_direction(metric)
    ests = np.array([values[keep & (g_codes == j)].mean() if (keep & (g_codes == j)).any()
                     else np.nan for j in range(n_groups)])
    ns = np.array([int((keep & (g_codes == j)).sum()) for j in range(n_groups)])
    best = _best_group(ests, ns, min_n, direction)
    # scans without reference lesions take no part in the tests of a metric that means
    # nothing on them (overlap, distances: their value is the empty-mask policy's)
    judged = keep if judged_on_empty(metric) else keep & run.has_ref
    n_judged = np.bincount(g_codes[judged], minlength=n_groups)
    tested = [j for j in range(n_groups) if n_judged[j] >= min_n]
    p_kw = (stats.kruskal_test([values[judged & (g_codes == j)] for j in tested])
            if stratum is not OVERALL and len(tested) >= 2 else float("nan"))
    rows = []
    for j, group in enumerate(order):
        sel = keep & (g_codes == j)
        v = values[sel]
        n = int(sel.sum())
        n_units = int(len(np.unique(run.cl_codes[sel]))) if n else 0
        ci = _group_ci(run, k, j, v, n_units, rng)
        est = float(ests[j])
        if stratum is OVERALL:
            gap = (0.0, 0.0, 0.0)
        else:
            gap = (est - overall, *stats.percentile_interval(
                boot_groups[:, j] - boot_overall, confidence))
        if best is None:
            gbest = (float("nan"),) * 3
        elif best == j:
            gbest = (0.0, 0.0, 0.0)
        else:
            gbest = (est - float(ests[best]), *stats.percentile_interval(
                boot_groups[:, j] - boot_groups[:, best], confidence))
        p, untested = _group_p(run, j, n, n_judged, values, judged, rng)
        rows.append({
            "stratum": stratum.name, "group": str(group), "metric": metric, "n": n,
            "n_clusters": n_units,
            "estimate": est, "median": float(np.median(v)) if n else float("nan"),
            "ci_low": ci[0], "ci_high": ci[1],
            "gap": gap[0], "gap_ci_low": gap[1], "gap_ci_high": gap[2],
            "gap_best": gbest[0], "gap_best_ci_low": gbest[1], "gap_best_ci_high": gbest[2],
            "best_group": "" if best is None else str(order[best]),
            "p_value": p, "p_kruskal": p_kw, "_direction": direction,
            "_untested": untested,
        })
    return rows


def _group_ci(run: _StratumRun, k: int, j: int, v: np.ndarray, n_units: int,
              rng: np.random.Generator) -> tuple[float, float]:
    """Interval of one group's mean of one metric, by the stratum's interval method."""
    if not run.legacy:
        return run.group_ci.get((k, j), (float("nan"), float("nan")))
    if not run.clustered:
        return stats.bootstrap_mean_ci(v, n_resamples=run.opts["n_resamples"],
                                       confidence=run.opts["confidence"],
                                       method=run.opts["ci_method"], rng=rng)
    if n_units < 2:
        return (float("nan"), float("nan"))
    if np.all(v == v[0]):  # every resample has the same mean
        return (float(v[0]), float(v[0]))
    return stats.percentile_interval(run.group_boot[(k, j)], run.opts["confidence"])


def _group_p(run: _StratumRun, j: int, n: int, n_judged: np.ndarray, values: np.ndarray,
             judged: np.ndarray, rng: np.random.Generator) -> tuple[float, str]:
    """Group-vs-rest p-value of group ``j``, or why it was not tested."""
    min_n, g_codes = run.opts["min_n"], run.g_codes
    p = float("nan")
    untested = ""
    if run.stratum is not OVERALL and n >= min_n and len(run.order) > 1:
        if n_judged[j] == 0:
            untested = FLAG_NOT_TESTED  # only scans without reference lesions
        elif n_judged[j] < min_n:
            untested = INSUFFICIENT
        else:
            rest = values[judged & (g_codes != j) & (g_codes >= 0)]
            p = stats.group_vs_rest_test(values[judged & (g_codes == j)], rest,
                                         test=run.opts["test"],
                                         n_resamples=run.opts["n_resamples"], rng=rng)
    return p, untested


def _adjusted_and_flagged(rows: list[dict[str, Any]], correction: str, min_n: int,
                          alpha: float) -> pd.DataFrame:
    """The subgroup table: rows with adjusted p-values and flags, in column order."""
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=SUBGROUP_COLUMNS)
    adjust = stats.holm if correction == "holm" else stats.bh
    table["p_adjusted"] = adjust(table["p_value"].to_numpy(dtype=float))
    table["flag"] = [
        u or _flag(n, min_n, g, pa, d, alpha)
        for n, g, pa, d, u in zip(table["n"], table["gap"], table["p_adjusted"],
                                  table["_direction"], table["_untested"])
    ]
    return table[SUBGROUP_COLUMNS].reset_index(drop=True)


def _groups_iter(
    cases: pd.DataFrame, strata: Sequence[Stratum], orders: Mapping[str, list[str]]
) -> list[tuple[str, str, pd.Index]]:
    """(stratum, group, case index) for the overall cohort and every group of every stratum."""
    out = []
    for stratum in [OVERALL, *strata]:
        labels, order = stratum_groups(cases, stratum, orders)
        for g in order:
            out.append((stratum.name, str(g), labels.index[labels == g]))
    return out


def _fisher_p(k: int, n: int, k_rest: int, n_rest: int) -> float:
    """Two-sided Fisher exact p-value of a group's rate against the rest's (NaN if untestable)."""
    from scipy.stats import fisher_exact

    if n <= 0 or n_rest <= 0:
        return float("nan")
    return float(fisher_exact([[k, n - k], [k_rest, n_rest - k_rest]]).pvalue)


def _rate_flags(rows: list[dict[str, Any]], *, n_key: str, k_key: str, rest: Mapping,
                higher_is_better: bool, min_n: int, alpha: float, correction: str) -> None:
    """Add ``p_value, p_adjusted, flag`` to rate rows: each group against the rest of its
    stratum (``rest[(stratum, extra)] = (k_total, n_total)``), adjusted over the family."""
    p = []
    for r in rows:
        if r["stratum"] == OVERALL.name or r[n_key] < min_n:
            p.append(float("nan"))
            continue
        k_tot, n_tot = rest[(r["stratum"], r.get("size_bin"))]
        p.append(_fisher_p(r[k_key], r[n_key], k_tot - r[k_key], n_tot - r[n_key]))
    adjust = stats.holm if correction == "holm" else stats.bh
    p_adj = adjust(np.asarray(p, dtype=float)) if rows else np.array([])
    for r, pv, pa in zip(rows, p, p_adj):
        r["p_value"], r["p_adjusted"] = pv, float(pa)
        if r[n_key] < min_n:
            r["flag"] = FLAG_INSUFFICIENT
            continue
        r["flag"] = FLAG_OK if np.isfinite(pa) else FLAG_NOT_TESTED
        if np.isfinite(pa) and pa < alpha:
            k_tot, n_tot = rest[(r["stratum"], r.get("size_bin"))]
            n_r = n_tot - r[n_key]
            rest_rate = (k_tot - r[k_key]) / n_r if n_r else float("nan")
            higher = r[k_key] / r[n_key] > rest_rate
            r["flag"] = FLAG_BETTER if higher == higher_is_better else FLAG_WORSE


def _case_positions(case_ids: pd.Series, wanted: pd.Series) -> np.ndarray:
    """Position in ``case_ids`` (unique) of each id of ``wanted``; -1 where absent.

    Arrow's ``index_in`` hashes the ids without a Python object per id (a dict of case ids
    took 15 MB at 100,000 cases).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    def ids(s: pd.Series) -> pa.Array:
        return pa.array(s, type=pa.string(), from_pandas=True)

    pos = pc.index_in(ids(wanted), value_set=ids(case_ids))
    return pc.fill_null(pos, -1).to_numpy().astype(np.int64)


def detection_table(
    cases: pd.DataFrame,
    lesions: pd.DataFrame,
    strata: Sequence[Stratum],
    *,
    bins: Sequence[float] = (0, 100, 1000, 10000),
    orders: Mapping[str, list[str]] | None = None,
    confidence: float = 0.95,
    min_n: int = 10,
    alpha: float = 0.05,
    correction: str = "holm",
) -> pd.DataFrame:
    """Lesion detection rate with Clopper-Pearson (exact) CIs by reference-lesion size bin, per subgroup.

    Columns: ``stratum, group, size_bin, n_lesions, n_detected, rate, ci_low, ci_high, p_value,
    p_adjusted, flag``; ``size_bin="all"`` covers every size. A group's rate is tested against
    the rest of its stratum in the same size bin (Fisher's exact test, ``correction`` over the
    table); ``flag`` is ``"worse"``/``"better"`` when the adjusted p is below ``alpha``.
    """
    orders = orders or {}
    is_ref = (lesions["source"] == "reference").to_numpy(dtype=bool) if len(lesions) else None
    volumes = lesions["volume_mm3"][is_ref] if len(lesions) else pd.Series(dtype=float)
    size_labels, size_order = (lesion_size_labels(volumes, list(bins)) if len(volumes)
                               else (pd.Series(dtype=object), ["empty"]))
    size_order = [s for s in size_order if s != "empty"]
    # Arrays, not per-group Series of the lesions: at 100,000 cases (150,000 reference
    # lesions) a case-id dict and the boolean Series per group took 60 MB.
    size_codes = (pd.Categorical(size_labels, categories=size_order).codes if len(volumes)
                  else np.zeros(0, dtype=np.int8))
    detected = ((lesions["status"][is_ref] == "detected").to_numpy(dtype=bool) if len(volumes)
                else np.zeros(0, dtype=bool))
    ref_pos = _case_positions(cases["case_id"], lesions["case_id"][is_ref] if len(volumes)
                              else pd.Series(dtype=object))
    rows = []
    totals: dict[tuple[str, Any], list[int]] = {}
    in_group = np.zeros(len(cases), dtype=bool)
    known = ref_pos >= 0
    for stratum, group, idx in _groups_iter(cases, strata, orders):
        in_group[:] = False
        in_group[cases.index.get_indexer(idx)] = True
        members = np.zeros(len(ref_pos), dtype=bool)
        members[known] = in_group[ref_pos[known]]
        for size_j, size in enumerate(["all", *size_order]):
            sel = members if size == "all" else members & (size_codes == size_j - 1)
            n = int(sel.sum())
            k = int((detected & sel).sum())
            lo, hi = stats.rate_interval(k, n, confidence)
            tot = totals.setdefault((stratum, size), [0, 0])
            tot[0] += k
            tot[1] += n
            rows.append({"stratum": stratum, "group": group, "size_bin": size, "n_lesions": n,
                         "n_detected": k, "rate": k / n if n else float("nan"),
                         "ci_low": lo, "ci_high": hi})
    _rate_flags(rows, n_key="n_lesions", k_key="n_detected",
                rest={k: tuple(v) for k, v in totals.items()}, higher_is_better=True,
                min_n=min_n, alpha=alpha, correction=correction)
    return pd.DataFrame(rows, columns=["stratum", "group", "size_bin", "n_lesions", "n_detected",
                                       "rate", "ci_low", "ci_high", "p_value", "p_adjusted",
                                       "flag"])


def _numeric(cases: pd.DataFrame, column: str) -> pd.Series:
    """A metric column as floats; all NaN when absent (every case failed: no metric columns)."""
    if column not in cases.columns:
        return pd.Series(np.nan, index=cases.index, dtype=float)
    return pd.to_numeric(cases[column], errors="coerce")


def false_positive_table(
    cases: pd.DataFrame, strata: Sequence[Stratum], *,
    orders: Mapping[str, list[str]] | None = None, confidence: float = 0.95, min_n: int = 10,
    alpha: float = 0.05, correction: str = "holm",
) -> pd.DataFrame:
    """False positives on scans whose reference is empty, per subgroup.

    Columns: ``stratum, group, n_scans, n_with_fp`` (scans with any predicted voxel),
    ``fp_scan_rate`` and its Clopper-Pearson ``ci_low, ci_high``, ``fp_per_scan`` (mean number of false
    positive components), ``p_value, p_adjusted`` (Fisher's exact test of the group's
    false-positive scan rate against the rest of its stratum) and ``flag`` (a higher rate is
    ``"worse"``).
    """
    orders = orders or {}
    ok = cases["status"] == "ok"
    vol_ref = _numeric(cases, "volume_ref_mm3")
    vol_pred = _numeric(cases, "volume_pred_mm3")
    fp = _numeric(cases, "n_false_positive")
    empty = ok & (vol_ref == 0)
    rows = []
    totals: dict[tuple[str, Any], list[int]] = {}
    for stratum, group, idx in _groups_iter(cases, strata, orders):
        sel = empty & cases.index.isin(idx)
        n = int(sel.sum())
        k = int((vol_pred[sel] > 0).sum())
        lo, hi = stats.rate_interval(k, n, confidence)
        tot = totals.setdefault((stratum, None), [0, 0])
        tot[0] += k
        tot[1] += n
        rows.append({"stratum": stratum, "group": group, "n_scans": n, "n_with_fp": k,
                     "fp_scan_rate": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi,
                     "fp_per_scan": float(fp[sel].mean()) if n else float("nan")})
    _rate_flags(rows, n_key="n_scans", k_key="n_with_fp",
                rest={k: tuple(v) for k, v in totals.items()}, higher_is_better=False,
                min_n=min_n, alpha=alpha, correction=correction)
    return pd.DataFrame(rows, columns=["stratum", "group", "n_scans", "n_with_fp", "fp_scan_rate",
                                       "ci_low", "ci_high", "fp_per_scan", "p_value",
                                       "p_adjusted", "flag"])


def volume_agreement_table(
    cases: pd.DataFrame, strata: Sequence[Stratum], *,
    orders: Mapping[str, list[str]] | None = None, confidence: float = 0.95, min_n: int = 10,
    alpha: float = 0.05, correction: str = "holm",
) -> pd.DataFrame:
    """Bland-Altman agreement of predicted and reference volumes (mm^3), per subgroup.

    Each group's volume differences are tested against the rest of its stratum (Mann-Whitney
    U, adjusted over the table); ``flag`` is ``"worse"`` when the group's bias is significantly
    different and further from zero than the rest's, ``"better"`` when closer.
    """
    orders = orders or {}
    ok = cases["status"] == "ok"
    has = "volume_pred_mm3" in cases and "volume_ref_mm3" in cases
    diff = (_numeric(cases, "volume_pred_mm3") - _numeric(cases, "volume_ref_mm3")).where(ok)
    rows, p = [], []
    for stratum, group, idx in _groups_iter(cases, strata, orders):
        sel = ok & cases.index.isin(idx)
        ba = stats.bland_altman(
            _numeric(cases, "volume_pred_mm3")[sel].to_numpy(),
            _numeric(cases, "volume_ref_mm3")[sel].to_numpy(),
            confidence,
        ) if has else stats.bland_altman(np.array([]), np.array([]))
        rest = ok & ~cases.index.isin(idx) & _in_stratum(cases, stratum, strata, orders)
        pv = float("nan")
        if stratum != OVERALL.name and ba["n"] >= min_n:
            pv = stats.group_vs_rest_test(diff[sel].to_numpy(), diff[rest].to_numpy())
        rest_bias = float(np.nanmean(diff[rest])) if rest.any() else float("nan")
        rows.append({"stratum": stratum, "group": group, **ba, "_rest_bias": rest_bias})
        p.append(pv)
    adjust = stats.holm if correction == "holm" else stats.bh
    p_adj = adjust(np.asarray(p, dtype=float)) if rows else np.array([])
    for r, pv, pa in zip(rows, p, p_adj):
        r["p_value"], r["p_adjusted"] = pv, float(pa)
        if r["n"] < min_n:
            r["flag"] = FLAG_INSUFFICIENT
        elif np.isfinite(pa) and pa < alpha:
            r["flag"] = FLAG_WORSE if abs(r["bias"]) > abs(r["_rest_bias"]) else FLAG_BETTER
        else:
            r["flag"] = FLAG_OK if np.isfinite(pa) else FLAG_NOT_TESTED
    return pd.DataFrame(rows, columns=["stratum", "group", "n", "bias", "sd", "loa_low",
                                       "loa_high", "bias_ci_low", "bias_ci_high", "p_value",
                                       "p_adjusted", "flag"])


def _in_stratum(cases: pd.DataFrame, stratum: str, strata: Sequence[Stratum],
                orders: Mapping[str, list[str]]) -> pd.Series:
    """Cases that belong to some group of ``stratum`` (the rest a group is compared with)."""
    for s in strata:
        if s.name == stratum:
            labels, order = stratum_groups(cases, s, orders)
            return labels.isin(order)
    return pd.Series(True, index=cases.index)


GROUP_COUNT_COLUMNS = ["stratum", "group", "n_rows", "n_evaluated", "n_failed",
                       "n_with_reference_lesions", "n_without_reference_lesions"]


def group_counts_table(cases: pd.DataFrame, strata: Sequence[Stratum],
                       orders: Mapping[str, list[str]] | None = None) -> pd.DataFrame:
    """Manifest rows per group: evaluated, failed, with and without reference lesions.

    Derived strata (lesion size, count) are known only for evaluated cases, so their failed
    count is 0 and their groups need not add up to the manifest.
    """
    orders = orders or {}
    ok = cases["status"] == "ok"
    vol = _numeric(cases, "volume_ref_mm3")
    rows = []
    for stratum, group, idx in _groups_iter(cases, strata, orders):
        sel = cases.index.isin(idx)
        rows.append({"stratum": stratum, "group": group, "n_rows": int(sel.sum()),
                     "n_evaluated": int((sel & ok).sum()), "n_failed": int((sel & ~ok).sum()),
                     "n_with_reference_lesions": int((sel & ok & (vol > 0)).sum()),
                     "n_without_reference_lesions": int((sel & ok & (vol == 0)).sum())})
    return pd.DataFrame(rows, columns=GROUP_COUNT_COLUMNS)


def _empty_reference(cases: pd.DataFrame) -> pd.Series:
    return _numeric(cases, "volume_ref_mm3") == 0


def rank_worst(
    cases: pd.DataFrame,
    metric: str,
    *,
    stratum: str | None = None,
    group: str | None = None,
    n: int | None = 5,
    include_empty_reference: bool = False,
) -> pd.DataFrame:
    """Evaluated cases worst first by ``metric`` (its direction from ``metric_direction``).

    Lowest first for higher-is-better metrics (Dice), highest first for lower-is-better ones
    (HD95), largest magnitude first for metrics best at zero. Failed rows and missing values are
    left out, and so are scans without reference lesions unless ``include_empty_reference``
    (their overlap scores reflect the empty-mask policy, not segmentation quality; see
    :func:`rank_false_positive_scans`). Ties keep manifest order.

    Parameters
    ----------
    cases : pandas.DataFrame
        ``AuditResult.cases``.
    metric : str
        A metric column.
    stratum, group : str, optional
        Restrict to one group (``stratum`` a column of ``cases``; ``None``/``"overall"``: all).
    n : int, optional
        At most this many rows (None: all).
    """
    if metric not in cases.columns:
        raise ValueError(f"metric: expected a column of the audit's cases, got {metric!r}")
    ok = cases[cases["status"] == "ok"] if "status" in cases.columns else cases
    if not include_empty_reference:
        ok = ok[~_empty_reference(ok)]
    if stratum not in (None, "overall"):
        if stratum not in ok.columns:
            raise ValueError(f"stratum: expected a column of the audit's cases, got {stratum!r}")
        ok = ok[ok[stratum].astype(str) == str(group)]
    values = pd.to_numeric(ok[metric], errors="coerce")
    keep = np.isfinite(values.to_numpy(dtype=float))
    ok, values = ok[keep], values[keep]
    d = stats.metric_direction(metric)
    key = values if d > 0 else (-values if d < 0 else -values.abs())
    order = key.sort_values(kind="stable").index
    return ok.loc[order if n is None else order[: int(n)]]


def rank_false_positive_scans(cases: pd.DataFrame, n: int | None = 5) -> pd.DataFrame:
    """Evaluated scans without reference lesions that have predicted voxels, most first."""
    ok = cases[cases["status"] == "ok"] if "status" in cases.columns else cases
    ok = ok[_empty_reference(ok)]
    vol = _numeric(ok, "volume_pred_mm3")
    ok = ok[vol > 0]
    order = (-_numeric(ok, "volume_pred_mm3")).sort_values(kind="stable").index
    return ok.loc[order if n is None else order[: int(n)]]


def prepare_cases(
    cases: pd.DataFrame, lesion_size_bins: int | Sequence[float]
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Cases table with derived strata columns and their display orders."""
    return add_derived_columns(cases, lesion_size_bins)
