"""Feature shift: do a subgroup's scans look different *to the model*?

Every audited case contributes one pooled feature vector (``explain.features.FeatureHook``,
taken during the audit's own inference pass). From them:

- per case, ``ood_score``: the squared Mahalanobis distance of its features to the reference
  cases, with a Ledoit-Wolf shrinkage covariance (scikit-learn). Reference cases are scored
  leave-one-out (the reference is refitted without the case), so they are not flattered by
  their own presence. Features are z-scored by the reference's per-feature mean and spread
  first (shrinkage pulls towards a scaled identity, which wants comparable scales).
- per subgroup, the test behind ``flag``: are the group's cases less typical of the reference
  than the reference cases outside the group are (their leave-one-out scores)? A one-sided
  permutation test of the group's mean rank of ``ood_score`` (a permutation Mann-Whitney
  test, ``p_value``); the p-values of every tested group are adjusted together (Holm or BH,
  as the metric tests) and ``flag`` is ``"shifted"`` where the adjusted p-value is below
  ``alpha``. Under the null the group's scores and the reference's leave-one-out scores are
  exchangeable (the conformal argument), so a random split of the reference is flagged at
  about the nominal rate.
- per subgroup, descriptive: ``distance``, the squared Mahalanobis distance between the
  group's mean feature vector and that of the reference cases outside it (shrinkage
  covariance of the two pooled) with its own permutation p-value ``distance_p_value`` (the
  pooled covariance is permutation-invariant, so each permutation costs two means). Means of
  64 features differ detectably between any two scanners with enough cases, so this answers
  "did the average move", not "do these scans look unfamiliar"; it does not set the flag.
- ``feature_pc1, feature_pc2``: a 2D PCA projection of the z-scored features for plots.

The reference (``feature_reference={column: [values], ...}``, columns combined with AND) is
e.g. the devices the model was trained on; by default it is the whole cohort, so each group is
compared with all the other cases. Nothing here needs reference segmentations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FEATURE_CASE_COLUMNS", "FEATURE_SHIFT_COLUMNS", "feature_shift", "monitor",
           "ood_scores", "parse_reference", "reference_mask"]

FEATURE_SHIFT_COLUMNS = ("stratum", "group", "n", "n_reference", "in_reference",
                         "median_ood_score", "median_ood_reference", "distance",
                         "distance_p_value", "p_value", "p_adjusted", "flag")
FEATURE_CASE_COLUMNS = ("ood_score", "feature_pc1", "feature_pc2")
_FLOOR = 1e-8


def parse_reference(spec: Any) -> dict[str, list[str]] | None:
    """``{column: [values]}`` from a mapping or CLI strings ``"COLUMN=V1,V2"`` (values as str)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = [spec]
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for s in spec:
            if not isinstance(s, str) or "=" not in s:
                raise ValueError(f"feature_reference: expected COLUMN=V1,V2, got {s!r}")
            col, vals = s.split("=", 1)
            items.append((col.strip(), [v.strip() for v in vals.split(",") if v.strip()]))
    out: dict[str, list[str]] = {}
    for col, vals in items:
        if isinstance(vals, (str, int, float)):
            vals = [vals]
        vals = [str(v) for v in vals]
        if not col or not vals:
            raise ValueError(f"feature_reference: column {col!r} needs at least one value")
        out[str(col)] = vals
    return out


def reference_mask(cases: pd.DataFrame, reference: Mapping[str, Sequence[str]] | None
                   ) -> np.ndarray:
    """Boolean mask of the reference cases (all True without a declared reference)."""
    mask = np.ones(len(cases), dtype=bool)
    for col, vals in (reference or {}).items():
        if col not in cases.columns:
            raise ValueError(f"feature_reference: column {col!r} not in the cases table; "
                             f"expected one of the metadata columns")
        values = cases[col].astype(str)
        unknown = sorted(set(vals) - set(values))
        if unknown:
            raise ValueError(f"feature_reference: {col} value(s) {unknown} not in the cohort; "
                             f"found {sorted(set(values))}")
        mask &= values.isin(list(vals)).to_numpy()
    return mask


def _standardise(ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    mu = ref.mean(0)
    sd = ref.std(0)
    return (x - mu) / np.maximum(sd, _FLOOR * max(1.0, float(np.abs(mu).max(initial=0.0))))


def _shrunk_precision(z: np.ndarray, delta: float | None = None) -> tuple[np.ndarray, float]:
    """Inverse of the Ledoit-Wolf covariance of the rows of ``z`` (as scikit-learn's
    ``LedoitWolf().fit(z).covariance_``), and the shrinkage intensity used."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    centred = z - z.mean(0)
    emp = centred.T @ centred / len(z)
    mu = float(np.trace(emp)) / emp.shape[0]
    if delta is None:
        delta = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
    shrunk = (1.0 - delta) * emp
    shrunk.flat[:: emp.shape[0] + 1] += delta * mu
    try:  # positive definite whenever there is any shrinkage: Cholesky is exact and fast
        from scipy.linalg import cho_factor, cho_solve

        return cho_solve(cho_factor(shrunk), np.eye(len(shrunk))), delta
    except np.linalg.LinAlgError:  # no shrinkage and fewer cases than features
        return np.linalg.pinv(shrunk, hermitian=True), delta


def _sq_mahalanobis(ref: np.ndarray, x: np.ndarray, delta: float | None = None) -> np.ndarray:
    """Squared Mahalanobis distances of rows of ``x`` to ``ref`` (Ledoit-Wolf, z-scored)."""
    z_ref = _standardise(ref, ref)
    precision, _ = _shrunk_precision(z_ref, delta)
    d = _standardise(ref, x) - z_ref.mean(0)
    return np.einsum("ij,jk,ik->i", d, precision, d)


def ood_scores(features: np.ndarray, is_ref: np.ndarray) -> np.ndarray:
    """Per-case ``ood_score``; reference cases leave-one-out.

    Each left-out fit re-estimates the z-scoring, mean and covariance without the case; the
    shrinkage intensity is the one of the whole reference (re-estimating it per case would cost
    most of the time and moves it by O(1/n)).
    """
    x = np.asarray(features, dtype=np.float64)
    ref_idx = np.flatnonzero(is_ref)
    if ref_idx.size < 3:
        raise ValueError(f"feature_reference: expected at least 3 reference cases with "
                         f"features, got {ref_idx.size}")
    out = np.full(len(x), np.nan)
    _, delta = _shrunk_precision(_standardise(x[ref_idx], x[ref_idx]))
    others = np.flatnonzero(~is_ref)
    if others.size:
        out[others] = _sq_mahalanobis(x[ref_idx], x[others], delta)
    for i in ref_idx:
        keep = ref_idx[ref_idx != i]
        out[i] = _sq_mahalanobis(x[keep], x[i:i + 1], delta)[0]
    return out


def _group_test(z: np.ndarray, in_group: np.ndarray, n_permutations: int,
                rng: np.random.Generator) -> tuple[float, float]:
    """Squared Mahalanobis distance between the two groups' means (pooled shrinkage
    covariance) and its permutation p-value."""
    precision, _ = _shrunk_precision(z)
    n, n_g = len(z), int(in_group.sum())

    def stat(masks: np.ndarray) -> np.ndarray:  # masks (P, n) bool
        m = masks.astype(np.float64)
        d = m @ z / n_g - (1.0 - m) @ z / (n - n_g)
        return np.einsum("pi,ij,pj->p", d, precision, d)

    observed = float(stat(in_group[None])[0])
    perms = np.stack([rng.permutation(in_group) for _ in range(n_permutations)])
    return observed, _perm_p(observed, stat(perms))


def _perm_p(observed: float, null: np.ndarray) -> float:
    """One-sided permutation p-value ``(1 + #{null >= observed}) / (1 + n)`` (ties count)."""
    tol = 1e-12 * max(1.0, abs(observed))
    return float((1 + np.sum(null >= observed - tol)) / (1 + len(null)))


def _rank_test(scores: np.ndarray, in_group: np.ndarray, n_permutations: int,
               rng: np.random.Generator) -> float:
    """One-sided permutation p-value of the group's mean rank of ``scores`` (larger = less
    typical): a permutation Mann-Whitney test."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    n_g = int(in_group.sum())
    observed = float(ranks[in_group].mean())
    perms = np.stack([rng.permutation(in_group) for _ in range(n_permutations)])
    null = perms.astype(np.float64) @ ranks / n_g
    return _perm_p(observed, null)


def _median(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    return float(np.median(v)) if v.size else float("nan")


def feature_shift(*args: Any, **kwargs: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature-shift table and per-case scores (see :func:`_feature_shift` for parameters).

    Runs with one BLAS thread: the work is many small (F x F) factorisations, where thread
    start-up and contention cost far more than they win (measured 40 ms per 64x64 eigh with
    threads on a busy 2-core machine).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _feature_shift(*args, **kwargs)


def _feature_shift(
    features: np.ndarray,
    cases: pd.DataFrame,
    groups: Sequence[tuple[str, pd.Series, Sequence[str]]],
    *,
    reference: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    n_permutations: int = 1000,
    correction: str = "holm",
    alpha: float = 0.05,
    min_n: int = 10,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature-shift table and per-case scores.

    Parameters
    ----------
    features : numpy.ndarray
        ``(n, F)``, one row per row of ``cases``; rows of failed cases may be NaN.
    cases : pandas.DataFrame
        The cases table (metadata columns used by ``reference``).
    groups : sequence of (stratum name, labels, group order)
        Group label per case (a Series aligned with ``cases``) for each stratum.
    reference : mapping, optional
        ``{column: [values]}``; default the whole cohort.
    seed, n_permutations, correction, alpha, min_n
        Permutation seed and count, multiple-testing correction (``"holm" | "bh"``), level,
        and the smallest group (and comparison set) that is tested.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        The table (:data:`FEATURE_SHIFT_COLUMNS`; a ``stratum="reference"`` row compares all
        cases outside a declared reference with it) and the per-case columns
        (:data:`FEATURE_CASE_COLUMNS`, index of ``cases``).
    """
    from medseg_xai.audit import stats

    if correction not in ("holm", "bh"):
        raise ValueError(f"correction: expected 'holm' or 'bh', got {correction!r}")
    if int(n_permutations) < 1:
        raise ValueError(f"n_permutations: expected a positive int, got {n_permutations!r}")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(cases):
        raise ValueError(f"features: expected ({len(cases)}, F), got shape {x.shape}")
    has = np.isfinite(x).all(axis=1)
    is_ref_all = reference_mask(cases, reference)
    is_ref = is_ref_all & has
    per_case, z = _case_scores(x, has, is_ref, cases.index)
    ood = per_case["ood_score"].to_numpy()
    rows: list[dict[str, Any]] = []
    tests: list[tuple[str, pd.Series, Sequence[str]]] = list(groups)
    if reference:
        tests.append(("reference",
                      pd.Series(np.where(is_ref_all, None, "outside reference"),
                                index=cases.index, dtype=object), ["outside reference"]))
    for s_idx, (stratum, labels, order) in enumerate(tests):
        lab = labels.reindex(cases.index).astype(object).to_numpy()
        for g_idx, group in enumerate(order):
            in_g = (lab == group) & has
            rows.append(_group_row(stratum, group, in_g, is_ref, ood, z, min_n, n_permutations,
                                   [int(seed), 17, s_idx, g_idx]))
    table = pd.DataFrame(rows, columns=[c for c in FEATURE_SHIFT_COLUMNS if c != "p_adjusted"
                                        ] + ["p_adjusted"])
    adjust = stats.holm if correction == "holm" else stats.bh
    table["p_adjusted"] = adjust(table["p_value"].to_numpy(dtype=float)) if len(table) else []
    tested = table["p_value"].notna()
    table.loc[tested, "flag"] = np.where(table.loc[tested, "p_adjusted"] < alpha, "shifted", "ok")
    return table[list(FEATURE_SHIFT_COLUMNS)], per_case


def _case_scores(x: np.ndarray, has: np.ndarray, is_ref: np.ndarray,
                 index: pd.Index) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-case OOD score and feature PCs, and the features standardised on the reference."""
    from sklearn.decomposition import PCA

    per_case = pd.DataFrame(np.nan, index=index, columns=list(FEATURE_CASE_COLUMNS))
    if is_ref.sum() >= 3:  # too few reference cases (a tiny cohort): scores stay NaN
        per_case.loc[has, "ood_score"] = ood_scores(x[has], is_ref[has])
    z_all = _standardise(x[is_ref] if is_ref.sum() >= 2 else x[has], x[has])
    if has.sum() >= 3:
        pcs = PCA(n_components=2, svd_solver="full").fit_transform(
            _standardise(x[has], x[has]))
        per_case.loc[has, "feature_pc1"] = pcs[:, 0]
        per_case.loc[has, "feature_pc2"] = pcs[:, 1]
    z = np.full_like(x, np.nan)
    z[has] = z_all
    return per_case, z


def _group_row(stratum: str, group: Any, in_g: np.ndarray, is_ref: np.ndarray, ood: np.ndarray,
               z: np.ndarray, min_n: int, n_permutations: int,
               rng_key: list[int]) -> dict[str, Any]:
    """One group's row: sizes, median OOD scores and, when large enough, its two tests."""
    comp = is_ref & ~in_g
    nan = float("nan")
    row: dict[str, Any] = {
        "stratum": stratum, "group": str(group), "n": int(in_g.sum()),
        "n_reference": int(comp.sum()),
        "in_reference": float(is_ref[in_g].mean()) if in_g.any() else nan,
        "median_ood_score": _median(ood[in_g]), "median_ood_reference": _median(ood[comp]),
        "distance": nan, "distance_p_value": nan, "p_value": nan,
        "flag": "insufficient data",
    }
    if min(row["n"], row["n_reference"]) >= max(int(min_n), 2):
        sel = in_g | comp
        rng = np.random.default_rng(rng_key)
        row["distance"], row["distance_p_value"] = _group_test(
            z[sel], in_g[sel], int(n_permutations), rng)
        if np.isfinite(ood[sel]).all():
            row["p_value"] = _rank_test(ood[sel], in_g[sel], int(n_permutations), rng)
    return row


def monitor(
    adapter: Any,
    images: Sequence[Any],
    metadata: pd.DataFrame,
    strata: Sequence[str],
    *,
    feature_reference: Mapping[str, Sequence[Any]] | Sequence[str] | None = None,
    layer: str | None = "auto",
    seed: int = 0,
    n_permutations: int = 2000,
    correction: str = "holm",
    alpha: float = 0.05,
    min_n: int = 10,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature shift without reference segmentations (monitoring incoming scans).

    Parameters
    ----------
    adapter : SegmentationAdapter
    images : sequence of numpy.ndarray
        One ``(C, *spatial)`` image per row of ``metadata`` (e.g. ``case.image`` of a cohort's
        cases); one forward pass each.
    metadata : pandas.DataFrame
        One row per image: the ``strata`` columns and those of ``feature_reference``.
    strata : sequence of str
        Metadata columns to compare groups of.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        The feature-shift table (as ``AuditResult.feature_shift``) and ``metadata`` with the
        :data:`FEATURE_CASE_COLUMNS` added.
    """
    from medseg_xai.explain.features import pooled_features

    meta = metadata.reset_index(drop=True)
    if len(images) != len(meta):
        raise ValueError(f"images: expected one image per metadata row ({len(meta)}), "
                         f"got {len(images)}")
    missing = [c for c in strata if c not in meta.columns]
    if missing:
        raise ValueError(f"strata: column(s) {missing} not in metadata; expected some of "
                         f"{list(meta.columns)}")
    feats = np.stack([pooled_features(adapter, im, layer) for im in images])
    groups = []
    for col in strata:
        labels = meta[col].astype(str).astype(object)
        groups.append((col, labels, sorted(pd.unique(labels))))
    table, per_case = feature_shift(
        feats, meta, groups, reference=parse_reference(feature_reference), seed=seed,
        n_permutations=n_permutations, correction=correction, alpha=alpha, min_n=min_n)
    return table, meta.join(per_case)
