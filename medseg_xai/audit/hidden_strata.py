"""Hidden strata: coherent groups of cases where the model does worse that no column names.

Candidates come from the cases' *describable* columns: interpretable properties (``prop_*``,
:mod:`medseg_xai.audit.properties`), uncertainty and feature-shift scores (``unc_*``,
``ood_score``), directions of the model's pooled features (``feature_dir1..5``: principal
components of the z-scored features) and metadata columns (categorical). Each candidate is a
rule, a conjunction of at most ``max_depth`` conditions (``lesion contrast <= 0.21 and device
= C``), so a group is described in words by construction; its description adds the properties
that set it apart most (standardised mean difference against the rest).

False discoveries are controlled by a held-out check (the split is seeded, by patient where
the cases carry one):

1. *discovery* half: a regression tree (scikit-learn, depth ``max_depth``, leaves of at least
   ``max(min_n, 2%)`` cases) on the metric gives every non-root node as a rule, and a depth-1
   tree per column gives each column's best single threshold (or category);
2. *confirmation* half: every candidate that looked worse by ``min_gap`` in discovery is
   applied to the other half and tested there (one-sided rank-sum test within the cells of the
   known strata, van Elteren's: the group's metric is lower than the rest's in its own
   cells); the p-values are adjusted together (Holm by default: the chance
   that an honest model yields any group is at most ``alpha``) and a group is reported when
   the adjusted p-value is below ``alpha`` *and* its confirmed gap is at least ``min_gap``.

With ``adjust_for`` (the audit passes its own strata) the search runs on the metric minus the
known strata's additive effects (least squares on their levels): a group is "hidden" only where
the model does worse than the named strata already say.

Reported groups are ranked by adjusted p (ties: raw p, then gap); one more than half inside an
earlier reported group (or holding more than half of one) is dropped, and at most five are
kept. Work is a
few tree fits and rank tests over one table: 100,000 cases take seconds with memory linear in
the table (``benchmarks/bench_hidden_strata.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.audit.score_words import SCORE_WORDS

__all__ = ["HIDDEN_STRATA_COLUMNS", "HiddenStrata", "HiddenStrataSettings", "describable_columns",
           "find_hidden_strata", "feature_directions"]

HIDDEN_STRATA_COLUMNS = ("group_id", "rule", "description", "n", "n_confirmation", "metric",
                         "mean_group", "mean_rest", "gap", "adjusted_gap", "relative_gap",
                         "failure_rate_group", "failure_rate_rest", "p_value", "p_adjusted",
                         "n_candidates", "rule_exact")
_MAX_LEVELS = 20
# the scores' words are failure.py's (one place for every view and description)
_SCORE_WORDS = {**{c: words[0] for c, words in SCORE_WORDS.items()},
                **{f"feature_dir{i}": f"model-feature direction {i}" for i in range(1, 6)}}
_MAX_GROUPS = 5


@dataclass
class HiddenStrata:
    """Reported groups (:data:`HIDDEN_STRATA_COLUMNS`), per-case membership (group id of the
    first reported group a case belongs to, "" otherwise) and the number of candidates tested."""

    groups: pd.DataFrame
    membership: pd.Series
    n_candidates: int = 0
    masks: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class _Cond:
    column: str
    op: str  # "<=", ">", "==", "!="
    value: Any

    def apply(self, frame: pd.DataFrame, medians: dict[str, float]) -> np.ndarray:
        v = frame[self.column]
        if self.op in ("==", "!="):
            eq = (v.astype(str) == str(self.value)).to_numpy()
            return eq if self.op == "==" else ~eq
        x = v.to_numpy(dtype=float)
        x = np.where(np.isfinite(x), x, medians.get(self.column, 0.0))
        return x <= self.value if self.op == "<=" else x > self.value

    def text(self, labels: dict[str, str]) -> str:
        """In words, the threshold to 3 significant digits (``rule_exact`` keeps it exact)."""
        name = labels.get(self.column, self.column)
        if self.op in ("==", "!="):
            return f"{name} {'=' if self.op == '==' else '!='} {self.value}"
        return f"{name} {'<=' if self.op == '<=' else '>'} {_rounded(float(self.value))}"

    def exact(self) -> str:
        """The column name and the exact threshold, as audit.json's columns hold them."""
        value = repr(float(self.value)) if self.op in ("<=", ">") else str(self.value)
        return f"{self.column} {self.op} {value}"


def _rounded(v: float) -> str:
    """3 significant digits without an exponent for everyday magnitudes (0.713, 373, 1.3e+06)."""
    text = f"{v:.3g}"
    if "e" in text and 1e-4 <= abs(v) < 1e6:
        text = f"{float(text):f}".rstrip("0").rstrip(".")
    return text


def _simplify(conds: list[_Cond]) -> list[_Cond]:
    """Keep the tightest bound per column and direction."""
    out: dict[tuple[str, str], _Cond] = {}
    for c in conds:
        key = (c.column, c.op if c.op in ("<=", ">") else f"{c.op}{c.value}")
        old = out.get(key)
        if old is None or (c.op == "<=" and c.value < old.value) or (
                c.op == ">" and c.value > old.value):
            out[key] = c
    return list(out.values())


def describable_columns(cases: pd.DataFrame, metadata: Sequence[str] = ()
                        ) -> tuple[list[str], list[str]]:
    """Numeric candidate columns present (``prop_*``, ``unc_*``, ``ood_score``,
    ``feature_dir*``) and the categorical ones (``metadata``)."""
    numeric = [c for c in cases.columns if (c.startswith(("prop_", "unc_", "feature_dir"))
                                           or c == "ood_score")
               and pd.api.types.is_numeric_dtype(cases[c]) and cases[c].nunique() > 1]
    categorical = [c for c in metadata if c in cases.columns and c not in numeric]
    return numeric, categorical


def feature_directions(features: np.ndarray, k: int = 5) -> pd.DataFrame:
    """The first ``k`` principal components of the z-scored pooled features
    (``feature_dir1..k``; NaN rows stay NaN)."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float64)
    has = np.isfinite(x).all(axis=1)
    k = int(min(k, x.shape[1], max(has.sum() - 1, 0)))
    out = np.full((len(x), k), np.nan)
    if k >= 1:
        z = x[has]
        z = (z - z.mean(0)) / np.maximum(z.std(0), 1e-12)
        out[has] = PCA(n_components=k, svd_solver="randomized" if len(z) > 2000 else "full",
                       random_state=0).fit_transform(z)
    return pd.DataFrame(out, columns=[f"feature_dir{i + 1}" for i in range(k)])


def _design(frame: pd.DataFrame, numeric: list[str], categorical: list[str], min_n: int
            ) -> tuple[np.ndarray, list[tuple[str, str, Any]], dict[str, float]]:
    """Matrix for the trees: numeric columns (NaN -> median) and one-hot frequent levels."""
    medians = {c: float(np.nanmedian(frame[c].to_numpy(dtype=float))) for c in numeric}
    cols, spec = [], []
    for c in numeric:
        x = frame[c].to_numpy(dtype=float)
        cols.append(np.where(np.isfinite(x), x, medians[c]))
        spec.append((c, "num", None))
    for c in categorical:
        counts = frame[c].astype(str).value_counts()
        for level in counts.index[:_MAX_LEVELS]:
            if counts[level] >= min_n and counts[level] < len(frame):
                cols.append((frame[c].astype(str) == level).to_numpy(dtype=float))
                spec.append((c, "cat", level))
    x = np.column_stack(cols) if cols else np.zeros((len(frame), 0))
    return x, spec, medians


def _tree_rules(tree: Any, spec: list[tuple[str, str, Any]]) -> list[list[_Cond]]:
    """Every non-root node's path as conditions."""
    t = tree.tree_
    rules: list[list[_Cond]] = []

    def walk(node: int, path: list[_Cond]) -> None:
        if path:
            rules.append(path)
        left, right = t.children_left[node], t.children_right[node]
        if left == -1:
            return
        col, kind, level = spec[t.feature[node]]
        thr = float(t.threshold[node])
        if kind == "cat":  # one-hot: <= 0.5 is "not this level"
            walk(left, [*path, _Cond(col, "!=", level)])
            walk(right, [*path, _Cond(col, "==", level)])
        else:
            walk(left, [*path, _Cond(col, "<=", thr)])
            walk(right, [*path, _Cond(col, ">", thr)])

    walk(0, [])
    return rules


def _candidates(x: np.ndarray, y: np.ndarray, spec: list, depth: int, leaf: int, seed: int
                ) -> list[list[_Cond]]:
    from sklearn.tree import DecisionTreeRegressor

    if x.shape[1] == 0 or len(y) < 2 * leaf:
        return []
    rules = _tree_rules(DecisionTreeRegressor(max_depth=depth, min_samples_leaf=leaf,
                                              random_state=seed).fit(x, y), spec)
    for j in range(x.shape[1]):  # each column's best single split
        stump = DecisionTreeRegressor(max_depth=1, min_samples_leaf=leaf).fit(x[:, j:j + 1], y)
        rules += _tree_rules(stump, [spec[j]])
    seen, out = set(), []
    for r in rules:
        r = _simplify(r)
        key = tuple(sorted((c.column, c.op, str(c.value)) for c in r))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _split(frame: pd.DataFrame, clusters: str | None, seed: int) -> np.ndarray:
    """True = discovery half (by cluster, e.g. patient, when the rows carry one)."""
    rng = np.random.default_rng([int(seed), 2718])
    if clusters and clusters in frame and frame[clusters].notna().all():
        codes, uniq = pd.factorize(frame[clusters])
        return (rng.random(len(uniq)) < 0.5)[codes]
    return rng.random(len(frame)) < 0.5


def _describe(mask: np.ndarray, frame: pd.DataFrame, numeric: list[str],
              categorical: list[str], rule: list[_Cond], labels: dict[str, str]) -> str:
    """The rule, then the properties that differ most (|SMD| >= 0.5, top 3)."""
    used = {c.column for c in rule}
    diffs = []
    for c in numeric:
        if c in used:
            continue
        v = frame[c].to_numpy(dtype=float)
        a, b = v[mask & np.isfinite(v)], v[~mask & np.isfinite(v)]
        if len(a) > 1 and len(b) > 1:
            sd = np.sqrt((a.var() + b.var()) / 2)
            if sd > 0:
                diffs.append(((a.mean() - b.mean()) / sd, labels.get(c, c)))
    for c in categorical:
        if c in used:
            continue
        share = frame.loc[mask, c].astype(str).value_counts(normalize=True)
        rest = frame.loc[~mask, c].astype(str).value_counts(normalize=True)
        if len(share):
            level = share.index[0]
            if share.iloc[0] - rest.get(level, 0.0) >= 0.25:
                diffs.append((np.inf, f"{labels.get(c, c)} mostly {level} "
                                      f"({share.iloc[0]:.0%} vs {rest.get(level, 0.0):.0%})"))
    diffs = sorted([d for d in diffs if abs(d[0]) >= 0.5], key=lambda d: -abs(d[0]))[:3]
    text = " and ".join(c.text(labels) for c in rule)
    if diffs:
        parts = [name if np.isinf(d) else f"{name} {'higher' if d > 0 else 'lower'} "
                 f"({d:+.1f} SD)" for d, name in diffs]
        text += "; also: " + ", ".join(parts)
    return text


def _known_design(frame: pd.DataFrame, adjust_for: Sequence[str]) -> np.ndarray | None:
    """Intercept plus one-hot levels of each known stratum (additive: joint cells of several
    strata hold a handful of rows each and would absorb any effect); None without strata."""
    known = [c for c in adjust_for if c in frame.columns]
    if not known or not len(frame):
        return None
    cols = [np.ones(len(frame))]
    for c in known:
        codes, uniq = pd.factorize(frame[c], use_na_sentinel=False)
        cols += [(codes == k).astype(float) for k in range(1, len(uniq))]
    return np.column_stack(cols)


def _adjusted(design: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``v`` minus the known strata's additive effects (least squares on the finite rows),
    plus its overall mean, so values stay in ``v``'s units; NaN stays NaN."""
    ok = np.isfinite(v)
    out = np.full(len(v), np.nan)
    if ok.sum() > design.shape[1]:
        beta = np.linalg.lstsq(design[ok], v[ok], rcond=None)[0]
        out[ok] = v[ok] - design[ok] @ beta + v[ok].mean()
    else:
        out[ok] = v[ok]
    return out


def _prepare(table: pd.DataFrame, outcome: str, adjust_for: Sequence[str],
             numeric: Sequence[str]) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, np.ndarray]:
    """Usable rows, their frame, the raw outcome and the searched one (residual of the known
    strata's additive effects when ``adjust_for`` names any). With ``numeric`` the frame's
    candidate columns are adjusted alike: a scanner's own bias field is then not "non-uniform",
    only more than that scanner's usual is."""
    y_all = table[outcome].to_numpy(dtype=float)
    use = np.isfinite(y_all)
    if "status" in table:
        use &= (table["status"] == "ok").to_numpy()
    frame = table.loc[use].reset_index(drop=True)
    raw = y_all[use]
    design = _known_design(frame, adjust_for)
    if design is None:
        return use, frame, raw, raw.copy()
    for c in numeric:
        frame[c] = _adjusted(design, frame[c].to_numpy(dtype=float))
    return use, frame, raw, _adjusted(design, raw)


def _cells(frame: pd.DataFrame, adjust_for: Sequence[str]) -> np.ndarray:
    """Joint cell code of the known strata per row (all 0 without strata)."""
    known = [c for c in adjust_for if c in frame.columns]
    if not known:
        return np.zeros(len(frame), dtype=np.int64)
    code = np.zeros(len(frame), dtype=np.int64)
    for c in known:  # mixed-radix code of the levels, then compacted
        levels, uniq = pd.factorize(frame[c], use_na_sentinel=False)
        code = pd.factorize(code * len(uniq) + levels)[0].astype(np.int64)
    return code


class _StratifiedRanks:
    """Van Elteren's stratified rank-sum test on the confirmation half: ranks within each
    known-strata cell, so a group whose mix of strata differs from the rest's is compared
    with its own cells only (a rank test on the residualised outcome pooled over cells is not
    exact then: honest-model nulls reported a group in 7.5% of 120 at alpha 0.05)."""

    def __init__(self, y: np.ndarray, cells: np.ndarray) -> None:
        self.cells = cells
        k = int(cells.max()) + 1 if len(cells) else 0
        self.size = np.bincount(cells, minlength=k).astype(float)
        self.ranks = pd.Series(y).groupby(cells).rank(method="average").to_numpy(dtype=float)
        t = pd.DataFrame({"cell": cells, "y": y}).groupby(["cell", "y"]).size()
        t3 = (t.to_numpy(dtype=float) ** 3 - t.to_numpy(dtype=float))
        self.ties = np.bincount(t.index.get_level_values("cell").to_numpy(dtype=np.int64),
                                weights=t3, minlength=k)  # sum of t^3 - t per cell

    def p_less(self, mask: np.ndarray) -> float:
        """One-sided p that the masked rows rank lower than the others within their cells."""
        from scipy.stats import norm

        k = len(self.size)
        ng = np.bincount(self.cells[mask], minlength=k).astype(float)
        w = np.bincount(self.cells[mask], weights=self.ranks[mask], minlength=k)
        n, nr = self.size, self.size - ng
        ok = (ng > 0) & (nr > 0)
        n, ng, nr, w, ties = n[ok], ng[ok], nr[ok], w[ok], self.ties[ok]
        var = ng * nr / 12.0 * ((n + 1) - ties / np.maximum(n * (n - 1), 1))
        num = ((w - ng * (n + 1) / 2.0) / (n + 1)).sum()
        den = np.sqrt((var / (n + 1) ** 2).sum())
        return float(norm.cdf(num / den)) if den > 0 else 1.0


def _confirm(rules: list[list[_Cond]], frame: pd.DataFrame, medians: dict[str, float],
             outcome: tuple[np.ndarray, np.ndarray, np.ndarray], disc: np.ndarray, min_n: int,
             min_gap: float) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Candidates worse by ``min_gap`` in discovery, tested on the confirmation half
    (``outcome``: searched, raw, known-strata cell per row)."""
    y, raw, cells = outcome
    rows, masks = [], []
    conf = ~disc
    test = _StratifiedRanks(raw[conf], cells[conf])
    for rule in rules:
        mask = np.logical_and.reduce([c.apply(frame, medians) for c in rule])
        d_in, d_out = mask & disc, ~mask & disc
        if not d_in.any() or not d_out.any() or y[d_out].mean() - y[d_in].mean() < min_gap:
            continue  # not worse in discovery: never tested, costs no power
        g, r = y[mask & conf], y[~mask & conf]
        p = test.p_less(mask[conf]) if len(g) >= min_n and len(r) >= min_n else 1.0
        rg, rr = raw[mask & conf], raw[~mask & conf]
        rows.append({"rule": rule, "p_value": p, "n_confirmation": int(len(g)),
                     "adjusted_gap": float(r.mean() - g.mean()) if len(g) and len(r) else np.nan,
                     "mean_group": float(rg.mean()) if len(rg) else np.nan,
                     "mean_rest": float(rr.mean()) if len(rr) else np.nan})
        masks.append(mask)
    return rows, masks


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the smaller group inside the other: a refinement of a reported group (or a
    group around it) repeats it."""
    return float((a & b).sum() / max(min(a.sum(), b.sum()), 1))


def _select(rows: list[dict[str, Any]], masks: list[np.ndarray], p_adj: np.ndarray,
            alpha: float, min_gap: float, rank: str) -> list[int]:
    """Confirmed groups in report order (adjusted p, then raw p, then gap; or gap), each
    dropped when more than half of it, or of an earlier kept group, lies in the other."""
    gaps = np.nan_to_num(np.array([r["adjusted_gap"] for r in rows]), nan=-np.inf)
    raw_p = np.array([r["p_value"] for r in rows])
    order = (np.argsort(-gaps, kind="stable") if rank == "gap"
             else np.lexsort((-gaps, raw_p, p_adj)))
    kept: list[int] = []
    for i in order:
        if p_adj[i] >= alpha or not gaps[i] >= min_gap:
            continue
        if any(_overlap(masks[i], masks[j]) > 0.5 for j in kept):
            continue
        kept.append(i)
        if len(kept) >= _MAX_GROUPS:
            break
    return kept


def _report(kept: list[tuple[int, dict[str, Any], np.ndarray, float]], use: np.ndarray,
            frame: pd.DataFrame, columns: tuple[list[str], list[str]], fail: np.ndarray | None,
            metric: str, words: dict[str, str], n_candidates: int) -> HiddenStrata:
    """The reported groups' rows, masks over all cases and the per-case membership."""
    numeric, categorical = columns

    def rate(m: np.ndarray) -> float:
        return float(np.nanmean(fail[m])) if fail is not None and m.any() else np.nan

    out, membership, out_masks = [], np.full(len(use), "", dtype=object), {}
    positions = np.flatnonzero(use)
    for k, (_, row, mask, p_adj) in enumerate(kept, start=1):
        gid = f"H{k}"
        out_masks[gid] = np.zeros(len(use), bool)
        out_masks[gid][positions[mask]] = True
        free = membership[positions[mask]] == ""
        membership[positions[mask][free]] = gid
        out.append({
            "group_id": gid, "rule": " and ".join(c.text(words) for c in row["rule"]),
            "description": _describe(mask, frame, numeric, categorical, row["rule"], words),
            "n": int(mask.sum()), "n_confirmation": row["n_confirmation"], "metric": metric,
            "mean_group": row["mean_group"], "mean_rest": row["mean_rest"],
            "gap": row["mean_rest"] - row["mean_group"], "adjusted_gap": row["adjusted_gap"],
            "relative_gap": ((row["mean_rest"] - row["mean_group"]) / abs(row["mean_rest"])
                             if row["mean_rest"] else np.nan),
            "failure_rate_group": rate(mask), "failure_rate_rest": rate(~mask),
            "p_value": row["p_value"], "p_adjusted": p_adj, "n_candidates": n_candidates,
            "rule_exact": " and ".join(c.exact() + (  # within_strata: the adjusted column
                " (adjusted for the known strata)" if "(relative to" in words.get(c.column, "")
                else "") for c in row["rule"])})
    return HiddenStrata(pd.DataFrame(out, columns=list(HIDDEN_STRATA_COLUMNS)),
                        pd.Series(membership, dtype=object), n_candidates, out_masks)


@dataclass(frozen=True)
class HiddenStrataSettings:
    """How the hidden-strata search runs (plain data; the defaults are the audit's).

    Attributes
    ----------
    alpha : float
        Level of the adjusted held-out test (the chance that an honest model yields any group is
        at most ``alpha`` with Holm).
    correction : {"holm", "bh"}
        Adjustment over the candidates tested on the confirmation half.
    min_n : int
        Smallest group in each half (and the trees' smallest leaf).
    min_gap : float
        Smallest metric gap (group below the rest) a group must show, in discovery and when
        confirmed.
    max_depth : int
        Most conditions per rule.
    rank : {"p", "gap"}
        Order of the reported groups: adjusted p-value (ties: larger gap first) or gap.
    seed : int
        Seed of the discovery / confirmation split.
    within_strata : bool
        With known strata (``adjust_for``), search the numeric candidates adjusted like the
        outcome (minus the strata's additive effects, plus the overall mean): a scanner whose
        images are always more non-uniform does not make "non-uniformity > t" a hidden group.
        The case-level audit turns it on (validated on Dice); off by default because with a
        binary outcome (lesion detected) and strata defined from a candidate (size bins from
        volume) it raised honest-cohort groups from 3 to 5 of 40 (the rank test on
        residualised binary outcomes is not exact when a group's strata mix differs).
    cross_fit : bool
        Discover on each half and confirm on the other; the candidates of both directions are
        adjusted together (Holm stays valid under any dependence between them).
    """

    alpha: float = 0.05
    correction: str = "holm"
    min_n: int = 10
    min_gap: float = 0.05
    max_depth: int = 2
    rank: str = "p"
    seed: int = 0
    within_strata: bool = False
    cross_fit: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < float(self.alpha) < 1.0:
            raise ValueError(f"hidden strata: alpha: expected a level in (0, 1), got {self.alpha!r}")
        if self.correction not in ("holm", "bh"):
            raise ValueError("hidden strata: correction: expected 'holm' or 'bh', got "
                             f"{self.correction!r}")
        if self.rank not in ("p", "gap"):
            raise ValueError(f"hidden strata: rank: expected 'p' or 'gap', got {self.rank!r}")
        if int(self.min_n) < 2 or int(self.max_depth) < 1:
            raise ValueError("hidden strata: min_n >= 2 and max_depth >= 1 expected, got "
                             f"{self.min_n!r}, {self.max_depth!r}")


def _search(frame: pd.DataFrame, outcome: tuple[np.ndarray, np.ndarray, np.ndarray],
            half: np.ndarray, columns: tuple[list[str], list[str]], hs: HiddenStrataSettings
            ) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Candidates proposed on the discovery half and tested on the other (with ``cross_fit``
    both ways round: one correction then covers both directions' candidates)."""
    min_n = int(hs.min_n)
    x, spec, medians = _design(frame, columns[0], columns[1], min_n)
    rows, masks = [], []
    for disc in ((half, ~half) if hs.cross_fit else (half,)):
        leaf = max(min_n, int(0.02 * disc.sum()))
        rules = _candidates(x[disc], outcome[0][disc], spec, int(hs.max_depth), leaf,
                            int(hs.seed))
        r, m = _confirm(rules, frame, medians, outcome, disc, min_n, float(hs.min_gap))
        rows += r
        masks += m
    return rows, masks


def find_hidden_strata(
    table: pd.DataFrame,
    outcome: str = "dice",
    *,
    numeric: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
    adjust_for: Sequence[str] = (),
    clusters: str | None = "patient_id",
    failed: np.ndarray | None = None,
    labels: dict[str, str] | None = None,
    settings: HiddenStrataSettings | None = None,
) -> HiddenStrata:
    """Groups of rows (cases or lesions) where ``outcome`` (higher = better) is lower,
    confirmed on held-out rows.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per unit (a case, or a lesion); rows with ``status != "ok"`` (when the column
        is present) or a missing outcome are left out of the search and belong to no group.
    outcome : str
        The column compared (higher is better; pass e.g. ``-hd95`` or ``detected`` as its own
        column).
    numeric, categorical : sequence of str
        Candidate columns (default :func:`describable_columns`).
    adjust_for : sequence of str
        Known (audited) strata: the search runs on the outcome minus their additive effects
        (least squares on their levels), so a group is reported only where the model does
        worse than the known strata already say (its ``adjusted_gap``).
    clusters : str or None
        Column whose values keep rows together in the discovery / confirmation split (a
        patient's scans, a case's lesions); ignored when absent or incomplete (rows split
        one by one).
    failed : numpy.ndarray, optional
        Per-row failure indicator (1/0/NaN) for the groups' failure rates.
    labels : dict, optional
        Column -> words for the descriptions (default the properties' labels).
    settings : HiddenStrataSettings, optional
        Level, correction, group size, gap, rule depth, ranking and seed.
    """
    from medseg_xai.audit import stats
    from medseg_xai.audit.properties import PROPERTY_LABELS

    hs = settings if settings is not None else HiddenStrataSettings()
    words = {**PROPERTY_LABELS, **_SCORE_WORDS, **(labels or {})}
    if outcome not in table:
        raise ValueError(f"hidden strata: outcome {outcome!r} not in the table")
    if numeric is None:
        numeric, categorical = describable_columns(table, categorical)
    numeric, categorical = list(numeric), list(categorical)
    within = list(numeric) if hs.within_strata else []
    use, frame, raw, y = _prepare(table, outcome, adjust_for, within)
    known = [words.get(c, c) for c in adjust_for if c in frame.columns]
    if within and known:
        words.update({c: f"{words.get(c, c)} (relative to {', '.join(known)})" for c in within})
    empty = HiddenStrata(pd.DataFrame(columns=list(HIDDEN_STRATA_COLUMNS)),
                         pd.Series("", index=table.index, dtype=object))
    min_n = int(hs.min_n)
    if len(frame) < 4 * min_n:
        return empty
    rows, masks = _search(frame, (y, raw, _cells(frame, adjust_for)),
                          _split(frame, clusters, hs.seed), (numeric, categorical), hs)
    if not rows:
        return HiddenStrata(empty.groups, empty.membership, 0)
    p_adj = (stats.holm if hs.correction == "holm" else stats.bh)(
        np.array([r["p_value"] for r in rows]))
    kept = _select(rows, masks, p_adj, hs.alpha, hs.min_gap, hs.rank)
    fail = None if failed is None else np.asarray(failed, dtype=float)[use]
    found = _report([(i, rows[i], masks[i], float(p_adj[i])) for i in kept], use, frame,
                    (numeric, categorical), fail, outcome, words, len(rows))
    found.membership.index = table.index
    return found
