"""Model comparison: two audits of the same cohort, paired per case.

Paired differences (``b - a``) remove the between-case variation that dominates segmentation
metrics, so a per-subgroup change is detected with far fewer cases than comparing two
independent means. Intervals resample patients (or cases) with their pair intact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from medseg_xai.audit import analysis, stats
from medseg_xai.audit.result import AuditResult, table_to_json
from medseg_xai.audit.strata import parse_strata
from medseg_xai.status import FLAG_BETTER, FLAG_INSUFFICIENT, FLAG_NO_CHANGE, FLAG_WORSE

__all__ = ["COMPARISON_COLUMNS", "ComparisonResult", "compare"]

COMPARISON_COLUMNS = ["stratum", "group", "metric", "n", "mean_a", "mean_b", "difference",
                      "ci_low", "ci_high", "p_value", "p_adjusted", "flag"]


@dataclass
class ComparisonResult:
    """Paired comparison of model B against model A.

    Attributes
    ----------
    cases : pandas.DataFrame
        ``case_id`` and, per metric, ``{metric}_a``, ``{metric}_b``, ``{metric}_diff`` (b - a) for
        cases evaluated in both audits.
    subgroups : pandas.DataFrame
        ``stratum, group, metric, n, mean_a, mean_b, difference, ci_low, ci_high`` (paired
        bootstrap CI of the mean difference), ``p_value`` (Wilcoxon signed-rank),
        ``p_adjusted`` (Holm over the family), ``flag``: ``"worse"`` / ``"better"`` when the CI
        lies entirely on that side of zero (direction-aware), ``"no change"``, or
        ``"insufficient data"``.
    worse : pandas.DataFrame
        The ``"worse"`` rows: the subgroups where model B got worse.
    settings : dict
        Names of the two models, seed, metrics, strata.
    """

    cases: pd.DataFrame
    subgroups: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def worse(self) -> pd.DataFrame:
        return self.subgroups[self.subgroups["flag"] == "worse"].reset_index(drop=True)

    @property
    def better(self) -> pd.DataFrame:
        return self.subgroups[self.subgroups["flag"] == "better"].reset_index(drop=True)

    def describe_worse(self) -> list[str]:
        """One plain sentence per subgroup that got worse."""
        a, b = self.settings.get("name_a", "A"), self.settings.get("name_b", "B")
        level = f"{float(self.settings.get('confidence', 0.95)) * 100:g}% CI"
        return [
            f"{r['metric']} in {r['stratum']} = {r['group']}: {b} {r['mean_b']:.3f} vs {a} "
            f"{r['mean_a']:.3f} (difference {r['difference']:+.3f}, {level} "
            f"{r['ci_low']:+.3f} to {r['ci_high']:+.3f}, n={r['n']})"
            for _, r in self.worse.iterrows()
        ]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "medseg-xai/comparison", "schema_version": "1.0",
                "settings": self.settings, "cases": table_to_json(self.cases),
                "subgroups": table_to_json(self.subgroups)}


def compare(
    result_a: AuditResult,
    result_b: AuditResult,
    *,
    strata: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    seed: int | None = None,
    n_resamples: int | None = None,
    confidence: float | None = None,
    min_n: int | None = None,
    name_a: str = "A",
    name_b: str = "B",
) -> ComparisonResult:
    """Compare two audits of the same cohort case by case.

    Parameters
    ----------
    result_a, result_b : AuditResult
        Audits of the same cases (e.g. model versions); cases are matched by ``case_id``.
    strata, metrics : sequence of str, optional
        Default: those of ``result_a``.
    seed, n_resamples, confidence, min_n : optional
        Default: the settings of ``result_a``.
    name_a, name_b : str
        Labels of the two audits (e.g. their file names), shown wherever the comparison is
        (model A is ``result_a``; differences are B − A).

    Raises
    ------
    ValueError
        If the two audits do not cover the same case ids.
    """
    _check_same_cohort(result_a, result_b)
    sa = result_a.settings
    strata_list = parse_strata(list(strata) if strata is not None else sa.get("strata", []))
    metric_names = list(metrics) if metrics is not None else list(sa.get("metrics") or [])
    dflt = analysis.STATS_DEFAULTS
    seed, n_resamples, confidence, min_n = _stats_settings(sa, seed, n_resamples, confidence,
                                                           min_n)

    both, metric_names, paired, cases = _paired_values(result_a, result_b, metric_names)
    clusters = _clusters(paired)
    rows = []
    orders = analysis.prepare_cases(paired, sa.get("lesion_size_bins", dflt["lesion_size_bins"]))[1]
    prepared = paired  # derived strata columns are already stored in result.cases
    for s_idx, stratum in enumerate([analysis.OVERALL, *strata_list]):
        labels, order = analysis.stratum_groups(prepared, stratum, orders)
        for m_idx, m in enumerate(metric_names):
            rng = np.random.default_rng([seed, s_idx, m_idx, 1])
            diff = cases[f"{m}_diff"].to_numpy()
            for g in order:
                sel = (labels == g).to_numpy() & np.isfinite(diff)
                d = diff[sel]
                n = int(sel.sum())
                lo, hi = stats.mean_interval(
                    d, metric=m, clusters=None if clusters is None else clusters[sel],
                    n_resamples=n_resamples, confidence=confidence,
                    method=sa.get("ci_method", dflt["ci_method"]), rng=rng, difference=True)
                p = _wilcoxon_p(d, n, min_n)
                rows.append({
                    "stratum": stratum.name, "group": str(g), "metric": m, "n": n,
                    "mean_a": float(np.nanmean(cases[f"{m}_a"].to_numpy()[sel])) if n else np.nan,
                    "mean_b": float(np.nanmean(cases[f"{m}_b"].to_numpy()[sel])) if n else np.nan,
                    "difference": float(d.mean()) if n else float("nan"),
                    "ci_low": lo, "ci_high": hi, "p_value": p,
                })
    table = pd.DataFrame(rows, columns=[c for c in COMPARISON_COLUMNS if c not in ("p_adjusted", "flag")])
    table["p_adjusted"] = stats.holm(table["p_value"].to_numpy(dtype=float)) if len(table) else []
    table["flag"] = [_flag(r, min_n) for r in rows]
    settings = {"name_a": name_a, "name_b": name_b, "seed": seed, "n_resamples": n_resamples,
                "confidence": confidence, "min_n": min_n, "metrics": metric_names,
                "strata": [s.name for s in strata_list], "n_paired": len(both)}
    return ComparisonResult(cases=cases, subgroups=table[COMPARISON_COLUMNS], settings=settings)


def _check_same_cohort(result_a: Any, result_b: Any) -> None:
    """Refuse anything but two AuditResults of the same case ids."""
    if not isinstance(result_a, AuditResult) or not isinstance(result_b, AuditResult):
        raise ValueError("compare: expected two AuditResult objects, got "
                         f"{type(result_a).__name__} and {type(result_b).__name__}")
    ids_a, ids_b = set(result_a.cases["case_id"]), set(result_b.cases["case_id"])
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b)[:5], sorted(ids_b - ids_a)[:5]
        raise ValueError(f"compare: expected audits of the same cohort; case ids only in A: "
                         f"{only_a}, only in B: {only_b}")


def _stats_settings(sa: Mapping[str, Any], seed: int | None, n_resamples: int | None,
                    confidence: float | None, min_n: int | None) -> tuple[int, int, float, int]:
    """The statistics settings given, else those of audit A, else the defaults."""
    dflt = analysis.STATS_DEFAULTS
    seed = int(sa.get("seed", dflt["seed"]) if seed is None else seed)
    n_resamples = int(sa.get("n_resamples", dflt["n_resamples"]) if n_resamples is None
                      else n_resamples)
    confidence = float(sa.get("confidence", dflt["confidence"]) if confidence is None
                       else confidence)
    min_n = int(sa.get("min_n", dflt["min_n"]) if min_n is None else min_n)
    return seed, n_resamples, confidence, min_n


def _paired_values(
    result_a: AuditResult, result_b: AuditResult, metric_names: Sequence[str]
) -> tuple[list[Any], list[str], pd.DataFrame, pd.DataFrame]:
    """Cases ok in both audits, the metrics both hold, A's rows of those cases, and the
    per-case table: each metric in A, in B and their difference B - A."""
    a = result_a.cases.set_index("case_id")
    b = result_b.cases.set_index("case_id")
    both = [c for c in result_a.cases["case_id"]
            if a.at[c, "status"] == "ok" and b.at[c, "status"] == "ok"]
    metric_names = [m for m in metric_names if m in a.columns and m in b.columns]
    paired = result_a.cases.set_index("case_id").loc[both].reset_index()
    cases = pd.DataFrame({"case_id": both})
    for m in metric_names:
        va = pd.to_numeric(a.loc[both, m], errors="coerce").to_numpy(dtype=float)
        vb = pd.to_numeric(b.loc[both, m], errors="coerce").to_numpy(dtype=float)
        cases[f"{m}_a"], cases[f"{m}_b"], cases[f"{m}_diff"] = va, vb, vb - va
    return both, metric_names, paired, cases


def _clusters(paired: pd.DataFrame) -> np.ndarray | None:
    """Patient id per case (the case id where missing); None without patient ids."""
    clustered = "patient_id" in paired.columns and paired["patient_id"].notna().any()
    return (paired["patient_id"].astype(object).where(paired["patient_id"].notna(),
                                                     paired["case_id"]).astype(str).to_numpy()
            if clustered else None)


def _wilcoxon_p(d: np.ndarray, n: int, min_n: int) -> float:
    """Wilcoxon signed-rank p-value of the differences (1 when all zero, NaN when too few)."""
    p = float("nan")
    if n >= min_n and np.any(d != 0):
        p = float(sps.wilcoxon(d).pvalue)
    elif n >= min_n:
        p = 1.0
    return p


def _flag(r: Mapping[str, Any], min_n: int) -> str:
    """A row's flag: too few cases, better, worse or no change (the CI against zero)."""
    n, lo, hi = r["n"], r["ci_low"], r["ci_high"]
    direction = stats.metric_direction(r["metric"])
    if n < min_n:
        return FLAG_INSUFFICIENT
    if direction != 0 and np.isfinite(lo) and (lo > 0 or hi < 0):
        return FLAG_BETTER if (lo > 0) == (direction > 0) else FLAG_WORSE
    return FLAG_NO_CHANGE
