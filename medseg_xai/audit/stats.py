"""Statistics for subgroup audits: bootstrap CIs, tests, multiple-comparison control.

All randomness comes from an explicit ``numpy.random.Generator`` so that the same seed gives the
same numbers. When a cohort has several scans per patient, resampling must happen at the patient
level (cluster bootstrap): scans of one patient are correlated and treating them as independent
makes the intervals too narrow. :func:`cluster_weights` draws the resampling as multinomial
counts per cluster, so every statistic that is a ratio of weighted sums (group means, gaps to the
overall mean, gaps between groups) is one matrix product over all resamples at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "CI_METHODS",
    "bca_mean_interval",
    "bh",
    "bland_altman",
    "bootstrap_mean_ci",
    "cluster_weights",
    "group_vs_rest_test",
    "holm",
    "kruskal_test",
    "metric_direction",
    "percentile_interval",
    "weight_blocks",
    "weighted_means",
    "wilson_ci",
]

CI_METHODS = ("BCa", "percentile")

def metric_direction(metric: str) -> int:
    """Return +1 if larger is better, -1 if smaller is better, 0 if closest to zero is best.

    Delegates to :func:`medseg_xai.metrics.metadata.metric_direction`, where every metric's
    metadata lives.

    Parameters
    ----------
    metric : str
        Metric name as in :func:`medseg_xai.metrics.evaluate_case`, optionally with a class
        suffix (``"dice_liver"``).
    """
    from medseg_xai.metrics.metadata import metric_direction as _direction

    return _direction(metric)


def _check_method(method: str) -> str:
    if method not in CI_METHODS:
        raise ValueError(f"ci_method: expected one of {CI_METHODS}, got {method!r}")
    return method


def cluster_weights(n_clusters: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap resampling as counts: row ``b`` says how often each cluster was drawn.

    Parameters
    ----------
    n_clusters : int
        Number of independent units (patients, or cases when no patient id is known).
    n_resamples : int
        Number of bootstrap resamples ``B``.
    rng : numpy.random.Generator
        Seeded generator.

    Returns
    -------
    numpy.ndarray
        ``(B, n_clusters)`` float array of draw counts; every row sums to ``n_clusters``.
    """
    if n_clusters < 1:
        return np.zeros((n_resamples, 0))
    counts = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_resamples)
    # to float in place, a row at a time (int64 and float64 are both 8 bytes): ``astype``
    # would hold a second (B, n) array, 8 MB per block at 100,000 cases
    weights = counts.view(np.float64)
    for row in range(counts.shape[0]):
        weights[row] = counts[row]
    return weights


def weighted_means(weights: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Means of resampled data from per-cluster sums and counts.

    Parameters
    ----------
    weights : numpy.ndarray
        ``(B, P)`` draw counts from :func:`cluster_weights`.
    sums, counts : numpy.ndarray
        ``(P, G)`` (or ``(P,)``) sum of the values and number of values of each cluster in each
        group.

    Returns
    -------
    numpy.ndarray
        ``(B, G)`` (or ``(B,)``) resampled means; NaN where a resample holds no value of a group.
    """
    num = weights @ sums
    den = weights @ counts
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


#: Bootstrap work is done in blocks of at most this many (resample x unit) cells, so memory is
#: bounded whatever the cohort size (2000 resamples x 100,000 cases would be 1.6 GB at once;
#: a block is 8 MB of weights).
#: Blocks draw from the same random stream in the same order: results do not depend on it.
MAX_BOOTSTRAP_CELLS = 1 << 20
#: SciPy's resamples of one group (``bootstrap_mean_ci``) are drawn in batches of at most this
#: many cells: its index and value arrays are several times the cell count, and smaller
#: batches cost no time (at 100,000 cases the audit's peak fell by 16 MB).
MAX_RESAMPLE_CELLS = 1 << 18


def weight_blocks(n_clusters: int, n_resamples: int,
                  rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The rows of ``cluster_weights(n_clusters, n_resamples, rng)`` in blocks of at most
    :data:`MAX_BOOTSTRAP_CELLS` cells, drawn from ``rng`` in the same order."""
    step = max(1, MAX_BOOTSTRAP_CELLS // max(n_clusters, 1))
    for start in range(0, n_resamples, step):
        yield cluster_weights(n_clusters, min(step, n_resamples - start), rng)


def blocked_weighted_means(
    n_clusters: int, n_resamples: int, rng: np.random.Generator,
    *pairs: tuple[np.ndarray, np.ndarray],
) -> list[np.ndarray]:
    """:func:`weighted_means` of each ``(sums, counts)`` pair under the same resamples.

    Equal to ``weighted_means(cluster_weights(n_clusters, n_resamples, rng), sums, counts)``
    for every pair, but the weights are drawn in blocks of rows (:func:`weight_blocks`), so the
    ``(B, n_clusters)`` matrix never exists at once.
    """
    out: list[list[np.ndarray]] = [[] for _ in pairs]
    for w in weight_blocks(n_clusters, n_resamples, rng):
        for i, (sums, counts) in enumerate(pairs):
            out[i].append(weighted_means(w, sums, counts))
    return [np.concatenate(parts) if parts else weighted_means(
        np.zeros((0, n_clusters)), sums, counts) for parts, (sums, counts) in zip(out, pairs)]


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap samples along axis 0, ignoring NaN resamples."""
    samples = np.asarray(samples, dtype=float)
    finite = samples[np.isfinite(samples)]
    if finite.size < 2:
        return (float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def bootstrap_mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    clusters: Sequence[object] | np.ndarray | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: str = "BCa",
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean.

    Without ``clusters`` this is :func:`scipy.stats.bootstrap` (``method`` BCa or percentile).
    With ``clusters`` (e.g. patient ids) whole clusters are resampled and the interval is the
    percentile interval of the ratio-of-sums mean (vectorised, see :func:`cluster_weights`).

    Parameters
    ----------
    values : array-like of float
        Observations; NaN values are dropped first.
    clusters : array-like, optional
        Cluster label per observation (same length as ``values``).
    n_resamples : int
        Number of bootstrap resamples.
    confidence : float
        Confidence level in (0, 1).
    method : {"BCa", "percentile"}
        Interval method for the unclustered case.
    rng : numpy.random.Generator, optional
        Seeded generator (a fresh ``default_rng(0)`` when omitted).

    Returns
    -------
    tuple of float
        ``(low, high)``; NaN when fewer than two observations (or clusters) remain; a
        zero-width interval when every observation is equal.
    """
    _check_method(method)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    x = np.asarray(values, dtype=float)
    keep = np.isfinite(x)
    x = x[keep]
    if clusters is not None:
        codes = np.unique(np.asarray(clusters, dtype=object)[keep].astype(str), return_inverse=True)[1]
        n_units = int(codes.max()) + 1 if codes.size else 0
    else:
        codes = None
        n_units = x.size
    if n_units < 2:
        return (float("nan"), float("nan"))
    if np.all(x == x[0]):
        # Degenerate data: every resample has the same mean (BCa would return NaN).
        return (float(x[0]), float(x[0]))
    if codes is not None:
        sums = np.bincount(codes, weights=x, minlength=n_units)
        counts = np.bincount(codes, minlength=n_units).astype(float)
        (means,) = blocked_weighted_means(n_units, n_resamples, rng, (sums, counts))
        return percentile_interval(means, confidence)
    # bounded memory (the resampled values are 2 MB per batch); same numbers as unbatched
    batch = max(1, MAX_RESAMPLE_CELLS // x.size)
    # SciPy draws the resamples (identically for both methods); BCa's correction is done here
    # with the closed-form jackknife of the mean: SciPy's generic jackknife is O(n^2) time
    # (n leave-one-out means of n - 1 values), hours for every group of a 100,000-case audit.

    def draw() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning on near-constant data
            return stats.bootstrap((x,), np.mean, n_resamples=n_resamples,
                                   confidence_level=confidence, method="percentile",
                                   vectorized=True, rng=rng, batch=batch)

    res = draw()
    if method == "percentile":
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    else:
        low, high = bca_mean_interval(x, res.bootstrap_distribution, confidence)
    if not (np.isfinite(low) and np.isfinite(high)):
        # BCa can fail on heavily tied data; fall back to the percentile interval (new draws).
        res = draw()
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return (low, high)


def bca_mean_interval(x: np.ndarray, boot_means: np.ndarray,
                      confidence: float = 0.95) -> tuple[float, float]:
    """Bias-corrected and accelerated interval of the mean from its bootstrap distribution.

    The same interval as ``scipy.stats.bootstrap(..., method="BCa")`` (Efron and Tibshirani
    1993, 14.3 and 15.4, eq. 14.15), but the acceleration uses the closed form of the mean's
    jackknife: the leave-one-out means are ``(S - x_i) / (n - 1)``, so the jackknife influence
    values are ``U_i = x_i - mean`` and ``a = sum(U^3) / (6 * sum(U^2)^1.5)``: O(n) instead of
    SciPy's O(n^2).

    Parameters
    ----------
    x : numpy.ndarray
        The finite observations.
    boot_means : numpy.ndarray
        ``(B,)`` means of the bootstrap resamples of ``x``.
    confidence : float
        Two-sided confidence level.

    Returns
    -------
    tuple of float
        ``(low, high)``; NaN where BCa is undefined (e.g. every resample on one side of the
        estimate).
    """
    from scipy.special import ndtr, ndtri

    x = np.asarray(x, dtype=float)
    theta_b = np.asarray(boot_means, dtype=float)
    theta = float(np.mean(x))
    # proportion of resamples below the estimate, ties counted half (SciPy's convention)
    share = (np.count_nonzero(theta_b < theta) + np.count_nonzero(theta_b <= theta)) / (
        2 * theta_b.size)
    u = x - theta
    with np.errstate(invalid="ignore", divide="ignore"):
        z0 = ndtri(share)
        accel = float(np.sum(u**3) / (6.0 * np.sum(u**2) ** 1.5))
        z_alpha = float(ndtri((1.0 - confidence) / 2.0))
        levels = []
        for z in (z_alpha, -z_alpha):
            num = z0 + z
            levels.append(float(ndtr(z0 + num / (1.0 - accel * num))))
    if not all(np.isfinite(levels)):
        return (float("nan"), float("nan"))
    low, high = np.quantile(theta_b, levels)
    return (float(low), float(high))


def group_vs_rest_test(
    group: np.ndarray,
    rest: np.ndarray,
    *,
    test: str = "mannwhitney",
    n_resamples: int = 2000,
    rng: np.random.Generator | None = None,
) -> float:
    """Two-sided p-value for a difference between one group and the rest of the cohort.

    Parameters
    ----------
    group, rest : numpy.ndarray
        Values of the group and of every other evaluated case (NaN dropped).
    test : {"mannwhitney", "permutation"}
        Mann-Whitney U (ranks, no distribution assumption) or a permutation test of the
        difference in means.
    n_resamples : int
        Permutations for ``test="permutation"``.
    rng : numpy.random.Generator, optional
        Seeded generator for the permutation test.

    Returns
    -------
    float
        The p-value; NaN when either side is empty or all values are identical.
    """
    a = np.asarray(group, dtype=float)
    b = np.asarray(rest, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return float("nan")
    if np.all(np.concatenate([a, b]) == a[0]):
        return 1.0
    if test == "mannwhitney":
        return float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    if test == "permutation":
        rng = np.random.default_rng(0) if rng is None else rng

        def diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.mean(x, axis=axis) - np.mean(y, axis=axis)

        res = stats.permutation_test(
            (a, b), diff, n_resamples=n_resamples, vectorized=True, rng=rng
        )
        return float(res.pvalue)
    raise ValueError(f"test: expected 'mannwhitney' or 'permutation', got {test!r}")


def kruskal_test(groups: Sequence[np.ndarray]) -> float:
    """Kruskal-Wallis p-value across groups (NaN dropped); NaN with fewer than two groups."""
    arrays = [np.asarray(g, dtype=float) for g in groups]
    arrays = [g[np.isfinite(g)] for g in arrays]
    arrays = [g for g in arrays if g.size > 0]
    if len(arrays) < 2:
        return float("nan")
    if np.all(np.concatenate(arrays) == arrays[0][0]):
        return 1.0
    return float(stats.kruskal(*arrays).pvalue)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control); NaN entries are skipped.

    The adjusted value of the i-th smallest of m p-values is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))``.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def bh(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate); NaN entries are skipped."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.isfinite(p)
    if valid.any():
        out[valid] = stats.false_discovery_control(p[valid], method="bh")
    return out


def wilson_ci(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (NaN when there are no trials)."""
    if trials <= 0:
        return (float("nan"), float("nan"))
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    return (float(ci.low), float(ci.high))


def bland_altman(
    measured: np.ndarray, reference: np.ndarray, confidence: float = 0.95
) -> dict[str, float]:
    """Bland-Altman agreement of two measurements of the same quantity (e.g. volumes).

    Returns
    -------
    dict
        ``n``, ``bias`` (mean of measured - reference), ``sd`` of the differences,
        ``loa_low`` / ``loa_high`` (bias -/+ 1.96 sd) and a t-interval of the bias
        (``bias_ci_low``, ``bias_ci_high``); NaN where undefined.
    """
    m = np.asarray(measured, dtype=float)
    r = np.asarray(reference, dtype=float)
    keep = np.isfinite(m) & np.isfinite(r)
    d = m[keep] - r[keep]
    n = int(d.size)
    nan = float("nan")
    if n == 0:
        return {"n": 0, "bias": nan, "sd": nan, "loa_low": nan, "loa_high": nan,
                "bias_ci_low": nan, "bias_ci_high": nan}
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else nan
    if n > 1:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)
    else:
        half = nan
    return {
        "n": n,
        "bias": bias,
        "sd": sd,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "bias_ci_low": bias - half,
        "bias_ci_high": bias + half,
    }
