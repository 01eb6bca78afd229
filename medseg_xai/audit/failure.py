"""Failure detection: would the scans a score ranks as least certain be the ones that fail?

A *failure* is stated up front (``FailureSettings.failure``): ``"dice < 0.5"`` (any metric
column, operator and threshold) or ``"missed lesion"`` (a reference lesion missed). Each
per-case *score* is "larger = less trustworthy": the uncertainty aggregations
(``unc_entropy``, ``unc_disagreement``, ``unc_volume_cv``), the feature-shift ``ood_score``
and ``combined``, the mean of their rank percentiles (no fitting, so nothing leaks).

Selective prediction: scans are retained from the lowest score up; at coverage ``c`` the
fraction ``c`` with the lowest scores is retained and the rest go to a human. The *risk* is the
failure rate among the retained scans. The risk-coverage curve and its area (AURC, Geifman et
al.: the mean over ``k = 1..n`` of the risk of the ``k`` lowest-scored scans) use the
*expected* risk over random orderings of tied scores (cumulative failures interpolated
linearly inside a block of ties), so ties cannot flatter a score; ``e_aurc`` subtracts the AURC
of the ideal ranking (failures last). ``auroc`` is the probability that a failed scan scores
above a successful one (ties count half).

Per coverage target the result holds the sentence "if the scans above score ``t`` go to a
human (fraction ``1 - c``), the rest reach mean ``metric`` X with failure rate r, and f of
the failures are caught". Per subgroup, the overall threshold at the target coverage is
applied (one deployed threshold): how many of that group's failures it catches.

Calibration per subgroup (from the bin sums the runner stores per case,
:mod:`medseg_xai.metrics.calibration`): ``ece, ace, mce`` are the mean over the group's cases
of each case's value (MONAI's ``CalibrationErrorMetric`` with its default mean reduction over
the group's images), ``*_pooled`` those of the group's voxels pooled; the reliability table
has the pooled points per bin.
"""

from __future__ import annotations

import base64
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.audit.score_words import (
    CORRECTION_NAMES,
    SCORE_WORDS,
    correction_name,
    p_words,
    percent,
    score_label,
    score_phrase,
)

__all__ = ["CALIBRATION_COLUMNS", "CORRECTION_NAMES", "FAILURE_COLUMNS", "MIN_GROUP_FAILURES",
           "RISK_COVERAGE_COLUMNS", "SCORE_COLUMNS", "SCORE_WORDS", "SELECTIVE_COLUMNS",
           "FailureSettings", "audit_tables", "aurc", "calibration_tables", "case_calibration",
           "case_parts", "correction_name", "decode_sums", "expected_risks", "failure_label",
           "failure_tables", "failures", "parse_failure", "percent", "pop_calibration",
           "score_label", "score_phrase"]

#: Per-case score columns considered (those present), larger = less trustworthy.
SCORE_COLUMNS = ("unc_entropy", "unc_disagreement", "unc_volume_cv", "ood_score")
FAILURE_COLUMNS = ("stratum", "group", "score", "score_label", "n", "n_failures",
                   "failure_rate", "aurc", "e_aurc", "aurc_random", "auroc", "spearman_metric",
                   "coverage_target", "threshold", "coverage", "referred", "caught", "n_caught",
                   "retained_metric", "retained_risk", "best")
#: The selective-prediction sentences, one row per score and coverage target (overall): the
#: numbers, and the sentences the views print as they are (``failure_sentence``: the stated
#: failure; ``sentence``: what the threshold gives; ``worst_group``: on the target-coverage
#: rows, the audited group whose failures that threshold catches least, "" elsewhere).
SELECTIVE_COLUMNS = ("score", "score_label", "failure", "metric", "n", "n_failures",
                     "coverage_target", "threshold", "coverage", "referred", "caught",
                     "n_caught", "retained_metric", "retained_risk", "best",
                     "failure_sentence", "sentence", "worst_group")
#: Groups with fewer failures than this are not named as the one whose failures escape most
#: (a share of two failures says little).
MIN_GROUP_FAILURES = 5
RISK_COVERAGE_COLUMNS = ("stratum", "group", "score", "coverage", "risk", "threshold",
                         "retained_metric")
CALIBRATION_COLUMNS = ("stratum", "group", "class", "n", "n_voxels", "ece", "ace", "mce",
                       "ece_pooled", "ace_pooled", "mce_pooled")
RELIABILITY_COLUMNS = ("stratum", "group", "class", "bin", "bin_centre", "count",
                       "mean_probability", "observed")
#: What the case-level search runs, in words (``provenance["hidden_strata"]["method"]``).
HIDDEN_STRATA_METHOD = ("regression-tree rules found on a seeded half of the scans (candidates "
                        "measured relative to the audited strata), each confirmed on the other "
                        "half by a one-sided van Elteren test (rank-sum within the cells of the "
                        "audited strata), p-values {}-adjusted over all candidates")
_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def failure_label(failure: str) -> str:
    """The stated failure in words: ``"dice < 0.5"`` -> ``"Dice < 0.5"``, ``"missed lesion"``
    -> ``"a missed reference lesion"``."""
    from medseg_xai.metrics.metadata import metric_label

    name, op, value = parse_failure(failure)
    if op is None:
        return "a missed reference lesion"
    sign = {v: k for k, v in _OPS.items()}[op]
    return f"{metric_label(name)} {sign} {value:g}"


def _number(v: float) -> str:
    """A threshold as sentences print it (3 significant digits; the table keeps it exact)."""
    return f"{float(v):.3g}" if np.isfinite(v) else "n/a"


@dataclass(frozen=True)
class FailureSettings:
    """Failure detection, calibration and hidden-strata settings (plain data, in ``settings``).

    Attributes
    ----------
    failure : str
        ``"<metric> <op> <value>"`` (``"dice < 0.5"``) or ``"missed lesion"``.
    metric : str
        The metric the sentences report for the retained scans (default Dice).
    coverages : sequence of float
        Coverage targets of the sentences; ``target_coverage`` is the one applied per subgroup.
    target_coverage : float
    calibration_bins : int
        Bins of the calibration errors (MONAI's default 20); 0: no calibration tables.
    hidden_strata : bool
        Search for hidden strata (:mod:`medseg_xai.audit.hidden_strata`).
    min_gap : float
        Smallest metric gap (group below the rest) a hidden stratum must show.
    max_depth : int
        Depth of the rules describing hidden strata (conditions per group).
    lesion_strata : bool
        With ``hidden_strata``, also search groups of reference lesions missed more often
        (:mod:`medseg_xai.audit.lesion_strata`).
    curve_points : int
        Points of each stored risk-coverage curve.
    """

    failure: str = "dice < 0.5"
    metric: str = "dice"
    coverages: tuple[float, ...] = (0.5, 0.8, 0.9)
    target_coverage: float = 0.8
    calibration_bins: int = 20
    hidden_strata: bool = True
    min_gap: float = 0.05
    max_depth: int = 2
    curve_points: int = 50
    lesion_strata: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "coverages", tuple(float(c) for c in self.coverages))
        parse_failure(self.failure)
        for c in (*self.coverages, self.target_coverage):
            if not 0.0 < float(c) <= 1.0:
                raise ValueError(f"failure.coverages: expected fractions in (0, 1], got {c!r}")
        if int(self.calibration_bins) < 0 or int(self.max_depth) < 1 or int(self.curve_points) < 2:
            raise ValueError("failure: calibration_bins >= 0, max_depth >= 1 and curve_points "
                             f">= 2 expected, got {self.calibration_bins!r}, {self.max_depth!r}, "
                             f"{self.curve_points!r}")

    @classmethod
    def from_value(cls, value: Any) -> FailureSettings | None:
        """None, True (defaults), a mapping of fields, a failure string or an instance."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(failure=value)
        if isinstance(value, Mapping):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"failure: unknown setting(s) {sorted(unknown)}; expected some "
                                 f"of {sorted(cls.__dataclass_fields__)}")
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
        raise ValueError(f"failure: expected None, True, a failure string, a mapping or "
                         f"FailureSettings, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def parse_failure(text: str) -> tuple[str, Any, float] | tuple[str, None, None]:
    """``"dice < 0.5"`` -> ``("dice", operator.lt, 0.5)``; ``"missed lesion"`` ->
    ``("missed lesion", None, None)``."""
    t = str(text).strip().lower()
    if t in ("missed lesion", "missed_lesion", "missed"):
        return "missed lesion", None, None
    m = re.fullmatch(r"([a-z_][a-z0-9_]*)\s*(<=|>=|<|>)\s*([-+0-9.eE]+)", t)
    if not m:
        raise ValueError(f"failure: expected '<metric> <op> <value>' (e.g. 'dice < 0.5') or "
                         f"'missed lesion', got {text!r}")
    return m.group(1), _OPS[m.group(2)], float(m.group(3))


def failures(cases: pd.DataFrame, failure: str) -> np.ndarray:
    """Float array: 1 failed, 0 not, NaN undefined (metric missing)."""
    name, op, value = parse_failure(failure)
    if op is None:
        if "n_missed" not in cases:
            raise ValueError("failure 'missed lesion': the cases table has no n_missed column")
        v = cases["n_missed"].to_numpy(dtype=float)
        return np.where(np.isfinite(v), (v > 0).astype(float), np.nan)
    if name not in cases:
        raise ValueError(f"failure {failure!r}: no column {name!r} in the cases table")
    v = cases[name].to_numpy(dtype=float)
    return np.where(np.isfinite(v), op(v, value).astype(float), np.nan)


# -- risk and coverage --------------------------------------------------------------------

def expected_risks(scores: np.ndarray, failed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected failure count among the ``k`` lowest-scored scans, ``k = 1..n``, over random
    orderings of ties; and the score at rank ``k`` (ascending)."""
    order = np.argsort(scores, kind="stable")
    s, f = scores[order], failed[order].astype(np.float64)
    n = len(s)
    cum = np.cumsum(f)
    # tie blocks: [start, end) of equal scores; inside, failures accrue at the block's rate
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], n]
    block = np.repeat(np.arange(len(starts)), ends - starts)
    before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    total = cum[ends - 1] - before
    k = np.arange(1, n + 1)
    pos = k - starts[block]
    expected = before[block] + total[block] * pos / (ends - starts)[block]
    return expected, s


def aurc(scores: Any, failed: Any) -> float:
    """Area under the risk-coverage curve (expected over tie orderings; lower is better)."""
    s = np.asarray(scores, dtype=np.float64)
    f = np.asarray(failed, dtype=np.float64)
    if s.shape != f.shape or s.ndim != 1:
        raise ValueError(f"aurc: expected two 1D arrays of one length, got {s.shape}, {f.shape}")
    if not len(s):
        return float("nan")
    cum, _ = expected_risks(s, f)
    return float(np.mean(cum / np.arange(1, len(s) + 1)))


def _auroc(scores: np.ndarray, failed: np.ndarray) -> float:
    from scipy.stats import rankdata

    n1 = int(failed.sum())
    n0 = len(failed) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(scores)
    return float((r[failed > 0].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def combined_score(cases: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Mean rank percentile of the given score columns (NaN where any is missing)."""
    if not columns:
        return np.full(len(cases), np.nan)
    ranks = [cases[c].rank(pct=True).to_numpy(dtype=float) for c in columns]
    return np.mean(ranks, axis=0)


def _sentence(s: np.ndarray, f: np.ndarray, metric: np.ndarray, coverage: float
              ) -> dict[str, float]:
    """Threshold at ``coverage`` (the k-th lowest score, ties retained) and what it gives."""
    k = max(1, int(np.ceil(coverage * len(s))))
    t = float(np.sort(s)[k - 1])
    keep = s <= t
    fails = f > 0
    return {"coverage_target": float(coverage), "threshold": t,
            "coverage": float(keep.mean()), "referred": float(1.0 - keep.mean()),
            "caught": float(fails[~keep].sum() / fails.sum()) if fails.any() else float("nan"),
            "n_caught": int(fails[~keep].sum()),
            "retained_metric": float(np.nanmean(metric[keep])) if keep.any() else float("nan"),
            "retained_risk": float(f[keep].mean()) if keep.any() else float("nan")}


def _curve(s: np.ndarray, f: np.ndarray, metric: np.ndarray, points: int) -> list[dict]:
    cum, sorted_s = expected_risks(s, f)
    order = np.argsort(s, kind="stable")
    metric_cum = np.cumsum(np.nan_to_num(metric[order]))
    n = len(s)
    rows = []
    for c in np.linspace(1.0 / points, 1.0, points):
        k = max(1, int(np.ceil(c * n)))
        rows.append({"coverage": k / n, "risk": float(cum[k - 1] / k),
                     "threshold": float(sorted_s[k - 1]),
                     "retained_metric": float(metric_cum[k - 1] / k)})
    return rows


def _score_row(s: np.ndarray, f: np.ndarray, metric: np.ndarray, global_t: float | None,
               target: float) -> dict[str, Any]:
    from scipy.stats import spearmanr

    n = len(s)
    risk = float(f.mean())
    ideal = aurc(f, f)  # failures scored highest: the best any score can do
    a = aurc(s, f)
    row = {"n": n, "n_failures": int(f.sum()), "failure_rate": risk, "aurc": a,
           "e_aurc": a - ideal, "aurc_random": risk, "auroc": _auroc(s, f)}
    ok = np.isfinite(metric)
    row["spearman_metric"] = (float(spearmanr(s[ok], metric[ok]).statistic)
                              if ok.sum() > 2 and np.ptp(s[ok]) > 0 and np.ptp(metric[ok]) > 0
                              else float("nan"))
    sent = _sentence(s, f, metric, target)
    if global_t is not None:  # a subgroup: the overall threshold applied to it
        keep = s <= global_t
        fails = f > 0
        sent.update({"threshold": global_t, "coverage": float(keep.mean()),
                     "referred": float(1.0 - keep.mean()),
                     "caught": float(fails[~keep].sum() / fails.sum()) if fails.any() else np.nan,
                     "n_caught": int(fails[~keep].sum()),
                     "retained_metric": float(np.nanmean(metric[keep])) if keep.any() else np.nan,
                     "retained_risk": float(f[keep].mean()) if keep.any() else np.nan})
    row.update(sent)
    return row


def failure_tables(cases: pd.DataFrame,
                   groups: Sequence[tuple[str, pd.Series, Sequence[Any]]],
                   settings: FailureSettings, min_n: int = 10
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Failure-detection table, risk-coverage curves, selective sentences and the cases'
    ``combined`` score column.

    Parameters
    ----------
    cases : pandas.DataFrame
        The cases table (ok rows are used; score columns of :data:`SCORE_COLUMNS`).
    groups : sequence of (stratum, labels, order)
        As ``analysis.stratum_groups`` gives them; "overall" is added.
    settings : FailureSettings
    min_n : int
        Smallest group that gets a row.

    Returns
    -------
    (failure_detection, risk_coverage, selective, per_case)
        ``failure_detection`` (:data:`FAILURE_COLUMNS`: per stratum x group x score),
        ``risk_coverage`` (:data:`RISK_COVERAGE_COLUMNS`), ``selective`` (per score and
        coverage target, overall: the sentence data) and ``per_case`` (``unc_combined``).
    """
    ok = (cases["status"] == "ok").to_numpy()
    scores = [c for c in SCORE_COLUMNS if c in cases and cases.loc[ok, c].notna().any()]
    per_case = pd.DataFrame(index=cases.index)
    if not scores:
        empty = pd.DataFrame(columns=list(FAILURE_COLUMNS))  # no score column
        return empty, pd.DataFrame(columns=list(RISK_COVERAGE_COLUMNS)), pd.DataFrame(), per_case
    f_all = failures(cases, settings.failure)
    metric_all = (cases[settings.metric].to_numpy(dtype=float) if settings.metric in cases
                  else np.full(len(cases), np.nan))
    if len(scores) > 1:
        per_case["unc_combined"] = np.where(ok, combined_score(cases.where(
            pd.Series(ok, index=cases.index), np.nan), scores), np.nan)
        scores.append("unc_combined")
    table = {c: (per_case[c] if c in per_case else cases[c]).to_numpy(dtype=float)
             for c in scores}
    overall = ("overall", pd.Series("all", index=cases.index, dtype=object), ["all"])
    rows, curves, sentences = [], [], []
    thresholds: dict[str, float] = {}
    for stratum, labels, order in [overall, *groups]:
        lab = labels.reindex(cases.index).astype(object).to_numpy()
        for g in order:
            for name in scores:
                s_all = table[name]
                sel = ok & (lab == g) & np.isfinite(s_all) & np.isfinite(f_all)
                if sel.sum() < (1 if stratum == "overall" else max(int(min_n), 1)):
                    continue
                s, f, m = s_all[sel], f_all[sel], metric_all[sel]
                glob = None if stratum == "overall" else thresholds.get(name)
                row = _score_row(s, f, m, glob, settings.target_coverage)
                rows.append({"stratum": stratum, "group": str(g), "score": name,
                             "score_label": score_label(name), **row})
                if stratum == "overall":
                    thresholds[name] = row["threshold"]
                    sentences += [{"score": name, "score_label": score_label(name),
                                   "failure": settings.failure, "metric": settings.metric,
                                   "n": int(sel.sum()), "n_failures": int(f.sum()),
                                   **_sentence(s, f, m, c)} for c in settings.coverages]
                curves += [{"stratum": stratum, "group": str(g), "score": name, **p}
                           for p in _curve(s, f, m, settings.curve_points)]
    table = pd.DataFrame(rows, columns=list(FAILURE_COLUMNS))
    overall_rows = table["stratum"] == "overall"
    best = table.loc[overall_rows, "aurc"].idxmin() if overall_rows.any() else None
    table["best"] = False  # the overall score with the lowest AURC (what the views lead with)
    if best is not None and np.isfinite(table.loc[best, "aurc"]):
        table["best"] = table["score"] == table.loc[best, "score"]
    sent = pd.DataFrame(sentences)
    if len(sent):
        sent["best"] = sent["score"].isin(table.loc[table["best"], "score"])
        sent = _with_sentences(sent, table, settings, [c for c in scores if c != "unc_combined"])
    return table, pd.DataFrame(curves, columns=list(RISK_COVERAGE_COLUMNS)), sent, per_case


def _with_sentences(sent: pd.DataFrame, table: pd.DataFrame, settings: FailureSettings,
                    parts: Sequence[str]) -> pd.DataFrame:
    """The selective rows with the sentences the views print (:data:`SELECTIVE_COLUMNS`):
    every word and number comes from the row (or, for ``worst_group``, the subgroup rows of
    the failure-detection table at the same threshold)."""
    from medseg_xai.metrics.metadata import metric_label

    out, defined = [], set()
    for r in sent.to_dict("records"):
        n, n_fail, n_caught = int(r["n"]), int(r["n_failures"]), int(r["n_caught"])
        # a score's definition once, in its first sentence; the later ones name it
        words = score_label(r["score"]) if r["score"] in defined else score_phrase(r["score"],
                                                                                    parts)
        defined.add(r["score"])
        n_ref = int(round(r["referred"] * n))
        kept_fail = int(round(r["retained_risk"] * (n - n_ref))) if n > n_ref else 0
        r["failure_sentence"] = (f"Failure was pre-specified as {failure_label(r['failure'])} "
                                 f"({n_fail} of {n} scans failed).")
        r["sentence"] = (
            f"If the {percent(r['referred'])} of scans ({n_ref} of {n}) scoring highest on the "
            f"{words}, above {_number(r['threshold'])}, go to a "
            f"human, the other {n - n_ref} reach mean {metric_label(r['metric'])} "
            f"{r['retained_metric']:.3f} with {percent(r['retained_risk'])} failures "
            f"({kept_fail} of {n - n_ref}), and {percent(r['caught'])} of all failures "
            f"({n_caught} of {n_fail}) are caught.")
        r["worst_group"] = (_worst_group(table, r["score"], r["caught"], r["coverage_target"],
                                         r["threshold"])
                            if np.isclose(r["coverage_target"], settings.target_coverage) else "")
        out.append(r)
    return pd.DataFrame(out, columns=list(SELECTIVE_COLUMNS))


def _worst_group(table: pd.DataFrame, score: str, overall_caught: float, coverage: float,
                 threshold: float) -> str:
    """The audited group (at least :data:`MIN_GROUP_FAILURES` failures) whose failures the
    overall threshold catches least, as a sentence; "" when no group qualifies. Ties: the
    group with more failures."""
    rows = table[(table["stratum"] != "overall") & (table["score"] == score)
                 & (table["n_failures"] >= MIN_GROUP_FAILURES) & table["caught"].notna()]
    if rows.empty:
        return ""
    w = rows.sort_values(["caught", "n_failures"], ascending=[True, False], kind="stable").iloc[0]
    return (f"At the threshold for {percent(coverage)} coverage ({score_label(score)} above "
            f"{_number(threshold)}), {str(w['stratum']).replace('_', ' ')} {w['group']} has the "
            f"lowest share of its "
            f"failures caught: {percent(w['caught'])} ({int(w['n_caught'])} of "
            f"{int(w['n_failures'])}), against {percent(overall_caught)} overall (groups with at "
            f"least {MIN_GROUP_FAILURES} failures).")


def _hidden_sentences(groups: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The hidden strata with the sentence the views print (``sentence``)."""
    from medseg_xai.metrics.metadata import metric_label

    out = groups.copy()
    out["sentence"] = [
        f"Hidden stratum {r['group_id']}: the {int(r['n'])} scans with {r['rule']} reach mean "
        f"{metric_label(metric)} {r['mean_group']:.3f} against {r['mean_rest']:.3f} elsewhere "
        f"on the held-out half, {r['adjusted_gap']:.3f} lower beyond the audited strata; "
        f"failures {percent(r['failure_rate_group'])} against "
        f"{percent(r['failure_rate_rest'])}; adjusted p {p_words(r['p_adjusted'])}."
        for r in out.to_dict("records")]
    return out


# -- calibration ---------------------------------------------------------------------------

def case_calibration(probabilities: np.ndarray, reference: np.ndarray, labels: Any,
                     n_bins: int) -> dict[str, Any]:
    """The runner's calibration part of a case record: bin sums per scored class
    (``calibration_sums``: the ``(K, 3, n_bins)`` float64 array as base64 text, ~0.6 KB a
    case where nested lists of Python floats took several; :func:`decode_sums`), the class
    names (``calibration_classes``, comma-separated), and the
    case's ``ece, ace, mce`` (mean over the scored classes, as MONAI's mean reduction of one
    image).

    Binary audits score the foreground probability against ``reference > 0``; with ``labels``
    each label's probability channel against ``reference == label``.
    """
    from medseg_xai.metrics.calibration import calibration_bin_sums, calibration_errors

    p = np.asarray(probabilities, dtype=np.float32)
    if labels is None:
        probs = p[None] if p.ndim == np.ndim(reference) else p[-1:]
        refs = (np.asarray(reference) > 0)[None]
        names = ["1"]
        if probs.shape[1:] != refs.shape[1:]:
            raise ValueError(f"probabilities: expected the reference's shape {reference.shape}, "
                             f"got {p.shape}")
    else:
        values = list(labels.keys()) if isinstance(labels, Mapping) else list(labels)
        if p.shape[0] <= max(values):
            raise ValueError(f"probabilities: {p.shape[0]} channels, expected one per label up "
                             f"to {max(values)}")
        probs = np.stack([p[v] for v in values])
        refs = np.stack([np.asarray(reference) == v for v in values])
        names = [str(v) for v in values]
    sums = calibration_bin_sums(np.clip(probs, 0.0, 1.0), refs, n_bins)
    err = calibration_errors(sums)
    return {"calibration_sums": base64.b64encode(sums.astype("<f8").tobytes()).decode("ascii"),
            "calibration_classes": ",".join(names),
            **{k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
               for k, v in err.items()}}


def calibration_tables(sums: np.ndarray, classes: Sequence[str], cases: pd.DataFrame,
                       groups: Sequence[tuple[str, pd.Series, Sequence[Any]]], min_n: int = 1
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibration per stratum x group x class and the pooled reliability points.

    ``sums`` is ``(n_cases, K, 3, n_bins)`` (NaN rows for cases without probabilities).
    Groups with fewer than ``min_n`` cases get no row: a calibration error from a handful of
    scans describes those scans, not the group.
    """
    from medseg_xai.metrics.calibration import calibration_errors, reliability

    has = np.isfinite(sums).all(axis=(1, 2, 3)) & (cases["status"] == "ok").to_numpy()
    per_case = calibration_errors(sums)  # (n, K) each
    overall = ("overall", pd.Series("all", index=cases.index, dtype=object), ["all"])
    rows, points = [], []
    for stratum, labels, order in [overall, *groups]:
        lab = labels.reindex(cases.index).astype(object).to_numpy()
        for g in order:
            sel = has & (lab == g)
            smallest = 1 if stratum == "overall" else max(int(min_n), 1)
            if sel.sum() < smallest:
                continue
            pooled = sums[sel].sum(axis=0)  # (K, 3, B)
            perr = calibration_errors(pooled)
            for k, cls in enumerate(classes):
                row = {"stratum": stratum, "group": str(g), "class": str(cls),
                       "n": int(sel.sum()), "n_voxels": int(pooled[k, 0].sum())}
                for key in ("ece", "ace", "mce"):
                    v = per_case[key][sel, k]
                    row[key] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                    row[f"{key}_pooled"] = float(perr[key][k])
                rows.append(row)
                r = reliability(pooled[k])
                for b in range(pooled.shape[-1]):
                    points.append({"stratum": stratum, "group": str(g), "class": str(cls),
                                   "bin": b, **{c: float(r[c][b]) for c in (
                                       "bin_centre", "count", "mean_probability", "observed")}})
    return (pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS)),
            pd.DataFrame(points, columns=list(RELIABILITY_COLUMNS)))


# -- the runner's per-case part ------------------------------------------------------------

def case_parts(case: Any, ref: np.ndarray, settings: Mapping[str, Any], adapter: Any,
               class_probs: np.ndarray | None, probs_eval: np.ndarray | None,
               lesion_rows: list[dict[str, Any]], uncertainty: tuple[Any, float] | None = None
               ) -> tuple[dict[str, Any], float]:
    """What a case record gains from the audit's ``uncertainty`` / ``failure`` settings, and
    the seconds the uncertainty members took.

    - ``settings["uncertainty"]`` (with an adapter): the :data:`UNCERTAINTY_COLUMNS` scores
      (the audit's own pass is reused as the plain member; with ensemble members carried by
      the adapter, :mod:`.members`, those are the models); each lesion row gains
      ``unc_entropy`` (mean entropy in its box) and ``unc_max_vote`` (largest fraction of
      members calling a voxel of its box foreground); ``uncertainty``, ``(CaseUncertainty,
      seconds)``, is one the runner already computed with its own pass
      (:func:`~medseg_xai.explain.uncertainty.plain_and_uncertainty`);
    - ``settings["calibration_bins"]`` (with probabilities): :func:`case_calibration`;
    - ``settings["properties"]``: the ``prop_*`` numbers (:mod:`.properties`);
    - ``settings["lesion_properties"]``: each reference lesion row gains the ``lprop_*``
      numbers (:mod:`.lesion_properties`).
    """
    import time

    out: dict[str, Any] = {}
    labels = settings.get("labels")
    u, seconds = uncertainty if uncertainty is not None else (None, 0.0)
    if u is None and settings.get("uncertainty") and adapter is not None:
        from medseg_xai.audit.members import case_members
        from medseg_xai.explain.uncertainty import case_uncertainty

        t0 = time.perf_counter()
        # members: the fold models / ensemble when given (the audited pass reused only when
        # the audited model is the first member), else the audited model's own variants
        members, reuse = case_members(adapter)
        u = case_uncertainty(members or adapter, case.image, settings["uncertainty"],
                             base_probabilities=class_probs if reuse else None,
                             connectivity=settings.get("connectivity"))
        seconds = time.perf_counter() - t0
    if u is not None:
        out.update(u.scores)
        out["unc_members"] = u.n_members
        for les in lesion_rows:
            box = tuple(slice(int(a), int(b)) for a, b in (les.get("bbox") or []))
            if box:
                les["unc_entropy"] = float(u.box_entropy(box).mean())  # boxes, not maps
                les["unc_max_vote"] = float(u.box_vote(box).max())
    bins = int(settings.get("calibration_bins") or 0)
    if bins and probs_eval is not None:
        out.update(case_calibration(probs_eval, ref, labels, bins))
    if settings.get("properties"):
        from medseg_xai.audit.properties import case_properties

        out.update(case_properties(case.image, ref if labels is None else np.isin(
            ref, list(labels.keys()) if isinstance(labels, Mapping) else list(labels)),
            case.spacing))
    if settings.get("lesion_properties"):  # lesion-level hidden strata (lesion_strata.py)
        from medseg_xai.audit.lesion_properties import case_lesion_properties

        case_lesion_properties(case, ref, settings, lesion_rows)
    return out, seconds


# -- the audit's part ----------------------------------------------------------------------

def pop_calibration(cases: pd.DataFrame) -> tuple[pd.DataFrame, tuple[np.ndarray, list[str]] | None]:
    """The records' calibration bin sums as ``(n, K, 3, B)`` (NaN rows where a case has none)
    and the class names, taken out of the cases table."""
    if "calibration_sums" not in cases.columns:
        return cases, None
    texts = cases["calibration_sums"].to_numpy(dtype=object)
    names_col = cases.get("calibration_classes")
    names = next((str(c).split(",") for c in (names_col if names_col is not None else [])
                  if isinstance(c, str) and c), [])
    cases = cases.drop(columns=["calibration_sums", "calibration_classes"], errors="ignore")
    first = next((t for t in texts if isinstance(t, str)), None)
    if first is None or not names:
        return cases, None
    k = len(names)
    bins = decode_sums(first).size // (3 * k)
    out = np.full((len(texts), k, 3, bins), np.nan)
    for i, t in enumerate(texts):
        if isinstance(t, str):
            a = decode_sums(t)
            if a.size == out[i].size:
                out[i] = a.reshape(k, 3, bins)
    return cases, (out, names)


def decode_sums(text: str) -> np.ndarray:
    """The flat float64 bin sums of a record's ``calibration_sums`` text."""
    return np.frombuffer(base64.b64decode(text), dtype="<f8")


def audit_tables(cases: pd.DataFrame, groups: Sequence[tuple[str, pd.Series, Sequence[Any]]],
                 settings: Mapping[str, Any], *, features: np.ndarray | None = None,
                 calibration: tuple[np.ndarray, list[str]] | None = None,
                 categorical: Sequence[str] = (), stat: Mapping[str, Any] | None = None
                 ) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, dict[str, Any]]:
    """The :data:`~medseg_xai.audit.result.FAILURE_TABLES` of an audit, the case columns
    they add (``unc_combined``, ``hidden_stratum``) and what the hidden-strata search did
    (``provenance["hidden_strata"]``: candidates tested, method).

    Hidden strata are searched beyond the audit's own strata (``adjust_for``: each case's
    group in every audited stratum), with the metadata ``categorical`` columns, the
    ``prop_*`` / ``unc_*`` / ``ood_score`` columns and, with ``features``, five directions
    of the model's pooled features as candidate conditions.
    """
    from medseg_xai.audit.hidden_strata import (
        HIDDEN_STRATA_COLUMNS,
        HiddenStrataSettings,
        describable_columns,
        feature_directions,
        find_hidden_strata,
    )

    fs = FailureSettings.from_value(dict(settings["failure"]))
    assert fs is not None
    st = dict(stat or {})
    min_n = int(st.get("min_n", 10))
    tables: dict[str, pd.DataFrame] = {}
    detection, curves, sentences, per_case = failure_tables(cases, groups, fs, min_n)
    tables.update(failure_detection=detection, risk_coverage=curves, selective=sentences)
    if calibration is not None:
        tables["calibration"], tables["reliability"] = calibration_tables(
            calibration[0], calibration[1], cases, groups, min_n)
    with_scores = cases.join(per_case)
    if fs.hidden_strata and fs.metric in cases:
        frame = with_scores.copy()
        known, names = [], {}
        for i, (name, labels, _order) in enumerate(groups):
            frame[f"_stratum{i}"] = labels.reindex(cases.index).astype(str).to_numpy()
            known.append(f"_stratum{i}")
            names[f"_stratum{i}"] = str(name).replace("_", " ")  # words in descriptions
        if features is not None and features.shape[1] > 1:
            dirs = feature_directions(features)
            for c in dirs.columns:
                frame[c] = dirs[c].to_numpy()
        numeric, cat = describable_columns(frame, [c for c in categorical if c in frame])
        found = find_hidden_strata(
            frame, fs.metric, numeric=numeric, categorical=cat, adjust_for=known,
            failed=failures(cases, fs.failure), labels=names, settings=HiddenStrataSettings(
                alpha=float(st.get("alpha", 0.05)), correction=str(st.get("correction", "holm")),
                min_n=min_n, min_gap=fs.min_gap, max_depth=fs.max_depth,
                seed=int(st.get("seed", 0)), within_strata=True))
        tables["hidden_strata"] = _hidden_sentences(found.groups, fs.metric)
        per_case["hidden_stratum"] = found.membership.to_numpy()
        info = {"n_candidates": int(found.n_candidates), "n_groups": int(len(found.groups)),
                "searched": list(numeric) + list(cat), "adjusted_for": list(settings.get(
                    "strata") or []), "method": HIDDEN_STRATA_METHOD.format(
                    correction_name(st.get("correction", "holm")))}
    else:
        tables["hidden_strata"] = pd.DataFrame(columns=list(HIDDEN_STRATA_COLUMNS))
        info = {}
    return tables, per_case, info
