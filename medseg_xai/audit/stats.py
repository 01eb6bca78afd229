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
    "INTERVAL_METHOD_NAMES",
    "bca_mean_interval",
    "betting_mean_ci",
    "bh",
    "bland_altman",
    "bootstrap_mean_ci",
    "cluster_weights",
    "group_vs_rest_test",
    "holm",
    "interval_method",
    "kruskal_test",
    "mean_interval",
    "metric_bounds",
    "MIN_INTERVAL_UNITS",
    "cluster_codes",
    "cluster_means",
    "studentized_from_sums",
    "studentized_interval",
    "metric_direction",
    "percentile_interval",
    "rate_interval",
    "studentized_mean_ci",
    "weight_blocks",
    "weighted_means",
    "wilson_ci",
]

#: ``"auto"`` (the default) chooses per metric by measured coverage (:func:`interval_method`,
#: ``benchmarks/bench_coverage.py``); the others apply one method to every metric.
CI_METHODS = ("auto", "betting", "studentized", "BCa", "percentile")
#: How each interval method is named in reports.
INTERVAL_METHOD_NAMES = {
    "betting": "betting confidence interval for a bounded mean (Waudby-Smith & Ramdas 2023; "
               "coverage guaranteed at every n)",
    "studentized": "studentized (bootstrap-t) bootstrap of the mean",
    "BCa": "BCa bootstrap of the mean",
    "percentile": "percentile bootstrap of the mean",
}

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


def _check_method(method: str, allowed: tuple[str, ...] = ("BCa", "percentile")) -> str:
    if method not in allowed:
        raise ValueError(f"ci_method: expected one of {allowed}, got {method!r}")
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
    # n uniform draws per row, counted: the same distribution as a multinomial row, 5x faster
    # than ``rng.multinomial`` (which was most of a 100,000-case audit's statistics time)
    draws = rng.integers(0, n_clusters, size=(n_resamples, n_clusters))
    draws += (np.arange(n_resamples) * n_clusters)[:, None]
    counts = np.bincount(draws.reshape(-1), minlength=n_resamples * n_clusters)
    del draws
    return counts.astype(np.float64).reshape(n_resamples, n_clusters)


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
    return _unclustered_mean_ci(x, n_resamples, confidence, method, rng)


def _unclustered_mean_ci(x: np.ndarray, n_resamples: int, confidence: float, method: str,
                         rng: np.random.Generator) -> tuple[float, float]:
    """SciPy bootstrap interval of the mean of finite ``x`` (BCa with percentile fallback)."""
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


def rate_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a proportion: coverage at least ``confidence`` at
    every n and rate (Wilson's dips below it at small n); NaN when there are no trials."""
    if trials <= 0:
        return (float("nan"), float("nan"))
    ci = stats.binomtest(int(successes), int(trials)).proportion_ci(
        confidence_level=confidence, method="exact")
    return (float(ci.low), float(ci.high))


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


# --- one interval function for every mean the audit reports --------------------------------


def metric_bounds(metric: str | None) -> tuple[float, float] | None:
    """The finite range of ``metric`` from :mod:`medseg_xai.metrics.metadata` (None if
    unbounded or unknown): Dice, Jaccard, NSD, precision, recall, rates -> ``(0, 1)``."""
    if metric is None:
        return None
    from medseg_xai.metrics.metadata import metric_info

    info = metric_info(metric)
    if info is None:
        return None
    lo, hi = (float(v) for v in info.range)
    return (lo, hi) if np.isfinite(lo) and np.isfinite(hi) and hi > lo else None


def interval_method(metric: str | None, ci_method: str = "auto") -> str:
    """The interval method used for ``metric``'s mean.

    ``ci_method="auto"`` chooses by metric kind, by the coverage measured in
    ``benchmarks/bench_coverage.py`` (docs/intervals.md): bounded metrics (a finite range in the
    metric metadata) get the betting interval, whose coverage is guaranteed at every n;
    unbounded ones (HD95, ASSD, volume differences, counts) the studentized bootstrap, which
    covered best where BCa and percentile under-covered, shown from
    :data:`MIN_INTERVAL_UNITS` units. ``"betting"`` applies to bounded metrics (unbounded
    ones get the studentized bootstrap); any other value is returned as is.
    """
    _check_method(ci_method, CI_METHODS)
    bounded = metric_bounds(metric) is not None
    if ci_method == "betting" and not bounded:
        return "studentized"  # betting needs known bounds
    if ci_method != "auto":
        return ci_method
    return "betting" if bounded else "studentized"


#: Fewest independent units (patients; scans without patient ids) from which an interval is
#: reported, per method: where the coverage measured by ``benchmarks/bench_coverage.py``
#: reached 0.93 on every simulated distribution (docs/intervals.md). The betting interval's
#: coverage is guaranteed at any n; no method can guarantee it for an unbounded mean
#: (Bahadur & Savage 1956), and the studentized bootstrap covered 0.79 / 0.88 / 0.94 at
#: n = 10 / 20 / 50 on a distance mixture with 15% far outliers.
MIN_INTERVAL_UNITS = {"betting": 2, "studentized": 50, "BCa": 2, "percentile": 2}


def _predmix_bets(x: np.ndarray, alpha: float) -> np.ndarray:
    """Predictable plug-in bets of Waudby-Smith & Ramdas (2023, eq. 26, fixed-n form): a
    regularised running variance of the values seen *before* each one (prior mean 1/2,
    variance 1/4, one pseudo-observation), as in ``confseq.betting_strategies``."""
    n = x.size
    t = np.arange(1, n + 1)
    mu = np.minimum((0.5 + np.cumsum(x)) / (t + 1), 1.0)
    sigma2 = (0.25 + np.cumsum((x - mu) ** 2)) / (t + 1)
    sigma2_prev = np.concatenate([[0.25], sigma2[:-1]])
    return np.sqrt(2.0 * np.log(1.0 / alpha) / (n * sigma2_prev))


#: Bets are truncated at ``TRUNCATION / m`` (betting that the mean is above m) and
#: ``TRUNCATION / (1 - m)`` (below): the most that keeps every factor positive, scaled by
#: WSR's 3/4. The m-dependent cap is what lets a few observations reject a mean near 0 or 1
#: (a fixed cap of 1 left n = 10 Dice intervals ending at 1.0); every factor still falls
#: (K+) or rises (K-) with m, so the root search stays valid.
TRUNCATION = 0.75


def _max_log_capital(x: np.ndarray, bets: np.ndarray, m: float, sign: float) -> float:
    """``max_t log K_t(m)`` of the capital ``K_t = prod_{i<=t} (1 + sign * bet_i (x_i - m))``,
    each bet capped at :data:`TRUNCATION` over the distance from ``m`` to the bound bet on."""
    room = m if sign > 0 else 1.0 - m
    cap = TRUNCATION / room if room > 0 else np.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.log(np.maximum(1.0 + sign * np.minimum(bets, cap) * (x - m), 0.0))
    steps = np.where(np.isnan(steps), 0.0, steps)
    return float(np.max(np.cumsum(steps)))


def betting_mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
) -> tuple[float, float]:
    """Betting (hedged capital) confidence interval of a bounded mean.

    Waudby-Smith & Ramdas (2023), "Estimating means of bounded random variables by betting",
    JRSS-B, Sec. 4-5: a candidate mean ``m`` is rejected when a gambler betting against it
    (``K^+``: that the mean is above ``m``; ``K^-``: below) multiplies the stake by
    ``2 / alpha`` at any time (Ville's inequality), so the interval covers with probability
    at least ``confidence`` at every n and for every distribution on ``bounds``; no normality,
    no bootstrap. ``K^+`` falls and ``K^-`` rises with ``m`` (each factor does, the bets do
    not depend on ``m``), so each end is one root, found by Brent's method in O(n) per step
    instead of on a grid. The values are taken in a seeded random order (the capital depends
    on the order; the guarantee does not).

    Parameters
    ----------
    values : array-like of float
        Observations in ``bounds``; NaN values are dropped.
    bounds : tuple of float
        The range the values cannot leave (e.g. ``(0, 1)`` for Dice).
    confidence : float
        Two-sided level.
    rng : numpy.random.Generator, optional
        Seeds the order (``default_rng(0)`` when omitted).

    Returns
    -------
    tuple of float
        ``(low, high)`` inside ``bounds``; NaN with fewer than two values.
    """
    from scipy.optimize import brentq

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a number in (0, 1), got {confidence!r}")
    lo_b, hi_b = float(bounds[0]), float(bounds[1])
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return (float("nan"), float("nan"))
    if np.any(x < lo_b - 1e-9) or np.any(x > hi_b + 1e-9):
        raise ValueError(f"values: expected numbers in [{lo_b}, {hi_b}] for a betting interval, "
                         f"got {x.min():.6g} .. {x.max():.6g}")
    rng = np.random.default_rng(0) if rng is None else rng
    z = np.clip((x - lo_b) / (hi_b - lo_b), 0.0, 1.0)[rng.permutation(x.size)]
    alpha = 1.0 - confidence
    bets = _predmix_bets(z, alpha / 2.0)
    level = float(np.log(2.0 / alpha))  # hedged: max(K+/2, K-/2) >= 1/alpha

    def up(m: float) -> float:  # > 0 where m is rejected as too small
        return _max_log_capital(z, bets, m, 1.0) - level

    def down(m: float) -> float:  # > 0 where m is rejected as too large
        return _max_log_capital(z, bets, m, -1.0) - level

    low = 0.0 if up(0.0) < 0 else brentq(up, 0.0, 1.0, xtol=1e-7)
    high = 1.0 if down(1.0) < 0 else brentq(down, 0.0, 1.0, xtol=1e-7)
    return (lo_b + low * (hi_b - lo_b), lo_b + high * (hi_b - lo_b))


def _studentized_pivots(w: np.ndarray, sums: np.ndarray, counts: np.ndarray,
                        estimate: Any) -> np.ndarray:
    """Bootstrap-t pivots ``(r* - r) / se*`` of the ratio mean ``r = sum(S) / sum(C)`` under
    resampling weights ``w`` (``(B, P)``) of units with sums ``S`` and counts ``C``.

    ``se`` is the linearisation (delta-method) standard error of a ratio mean,
    ``sqrt(sum w (S - r C)^2) / sum w C``: with one value per unit it is the usual s / sqrt(n)
    (up to a constant factor, which cancels in the interval).
    """
    a = w @ sums
    c = w @ counts
    q = w @ (sums * sums)
    p = w @ (sums * counts)
    rr = w @ (counts * counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = a / c
        var = np.maximum(q - 2.0 * r * p + r * r * rr, 0.0) / (c * c)
        t = (r - estimate) / np.sqrt(var)
    # a resample of one repeated value has no spread: its pivot is 0 on the estimate, else
    # beyond any finite one (kept, not dropped: dropping them narrows the interval)
    t = np.where(var > 0, t, np.where(np.isclose(r, estimate), 0.0, np.sign(r - estimate) * 1e12))
    return np.where(c > 0, t, np.nan)


def studentized_mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    clusters: Sequence[object] | np.ndarray | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
    bounds: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Studentized (bootstrap-t) interval of the mean, patient-clustered with ``clusters``.

    Efron & Tibshirani (1993, ch. 12): the bootstrap distribution of the pivot
    ``(mean* - mean) / se*`` replaces Student's t, which corrects for skew where the percentile
    and BCa intervals under-cover at small n. With clusters, whole clusters are resampled and
    the mean is the ratio of sums (scans weighted equally), ``se`` its linearisation.

    Returns
    -------
    tuple of float
        ``(low, high)`` (clipped to ``bounds`` when given); NaN with fewer than two units.
    """
    x = np.asarray(values, dtype=float)
    keep = np.isfinite(x)
    x = x[keep]
    if clusters is not None:
        codes = cluster_codes(np.asarray(clusters)[keep])
        n_units = int(codes.max()) + 1 if codes.size else 0
        sums = np.bincount(codes, weights=x, minlength=n_units)
        counts = np.bincount(codes, minlength=n_units).astype(float)
    else:
        sums, counts, n_units = x, np.ones(x.size), x.size
    return studentized_from_sums(sums, counts, n_resamples=n_resamples, confidence=confidence,
                                 rng=rng, bounds=bounds)


def studentized_from_sums(
    sums: np.ndarray, counts: np.ndarray, *, n_resamples: int = 2000,
    confidence: float = 0.95, rng: np.random.Generator | None = None,
    bounds: tuple[float, float] | None = None,
) -> Any:
    """:func:`studentized_mean_ci` from per-unit sums and counts.

    ``sums`` and ``counts`` are ``(P,)`` (one interval) or ``(P, K)`` (K metrics of the same
    P units, e.g. patients: one set of resamples serves them all, drawn in memory-bounded
    blocks). A unit without a value of a metric (count 0) adds nothing to it when drawn.

    Returns
    -------
    tuple of float, or list of K tuples for 2-D input
        NaN where fewer than two units hold a value.
    """
    sums2 = np.asarray(sums, dtype=float)
    counts2 = np.asarray(counts, dtype=float)
    single = sums2.ndim == 1
    if single:
        sums2, counts2 = sums2[:, None], counts2[:, None]
    n_units, n_metrics = sums2.shape
    units = (counts2 > 0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = sums2.sum(axis=0) / counts2.sum(axis=0)
        resid = sums2 - est * counts2
        se = np.sqrt(np.sum(resid * resid, axis=0)) / counts2.sum(axis=0)
    out: list[tuple[float, float]] = [(float("nan"), float("nan"))] * n_metrics
    todo = [k for k in range(n_metrics) if units[k] >= 2 and se[k] > 0]
    for k in range(n_metrics):
        if units[k] >= 2 and se[k] == 0:
            out[k] = (float(est[k]), float(est[k]))
    if todo:
        rng = np.random.default_rng(0) if rng is None else rng
        pivots = np.concatenate([
            _studentized_pivots(w, sums2[:, todo], counts2[:, todo], est[todo])
            for w in weight_blocks(n_units, n_resamples, rng)])
        for i, k in enumerate(todo):
            out[k] = studentized_interval(float(est[k]), float(se[k]), pivots[:, i],
                                          confidence, bounds)
    return out[0] if single else out


def studentized_interval(estimate: float, se: float, pivots: np.ndarray, confidence: float,
                         bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """``(estimate - q_hi * se, estimate - q_lo * se)`` from the bootstrap pivots' quantiles."""
    t = pivots[np.isfinite(pivots)]
    if t.size < 2:
        return (float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2.0
    q_lo, q_hi = np.quantile(t, [alpha, 1.0 - alpha])
    low, high = estimate - q_hi * se, estimate - q_lo * se
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return (float(low), float(high))


def mean_interval(
    values: Sequence[float] | np.ndarray,
    *,
    metric: str | None = None,
    method: str = "auto",
    clusters: Sequence[object] | np.ndarray | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    rng: np.random.Generator | None = None,
    difference: bool = False,
) -> tuple[float, float]:
    """The audit's one interval of a mean: the method :func:`interval_method` chooses for
    ``metric``, patient-clustered when ``clusters`` are given.

    ``difference=True``: the values are paired differences of ``metric`` (model B - model A,
    model - readers), bounded by ``+-(hi - lo)`` when the metric is bounded.

    Clustered versions: the betting interval is computed on the per-cluster means (each
    patient one bounded observation; the estimand is the mean over patients, which equals the
    scan mean when patients contribute equally many scans); the studentized interval resamples
    whole clusters (the ratio-of-sums scan mean); BCa/percentile as in
    :func:`bootstrap_mean_ci`.
    """
    chosen = interval_method(metric, method)
    bounds = metric_bounds(metric)
    if difference and bounds is not None:
        bounds = (bounds[0] - bounds[1], bounds[1] - bounds[0])
    x = np.asarray(values, dtype=float)
    finite = np.isfinite(x)
    units = (np.unique(cluster_codes(np.asarray(clusters)[finite])).size
             if clusters is not None else int(finite.sum()))
    if units < MIN_INTERVAL_UNITS[chosen]:
        return (float("nan"), float("nan"))
    if chosen == "betting":
        if bounds is None:
            raise ValueError(f"ci_method: 'betting' needs a bounded metric, got {metric!r}")
        if clusters is not None:
            x = cluster_means(x, clusters)
        return betting_mean_ci(x, bounds=bounds, confidence=confidence, rng=rng)
    if chosen == "studentized":
        return studentized_mean_ci(x, clusters=clusters, n_resamples=n_resamples,
                                   confidence=confidence, rng=rng, bounds=bounds)
    return bootstrap_mean_ci(x, clusters=clusters, n_resamples=n_resamples,
                             confidence=confidence, method=chosen, rng=rng)


def cluster_codes(clusters: Sequence[object] | np.ndarray) -> np.ndarray:
    """Integer code per observation, one per distinct cluster (integer labels used as they are
    found, without a string conversion per row)."""
    arr = np.asarray(clusters)
    if arr.dtype.kind not in "iu":
        arr = arr.astype(object).astype(str)
    return np.unique(arr, return_inverse=True)[1].reshape(-1)


def cluster_means(values: np.ndarray, clusters: Sequence[object] | np.ndarray) -> np.ndarray:
    """Mean of the finite values of each cluster (clusters without one are left out)."""
    x = np.asarray(values, dtype=float)
    keep = np.isfinite(x)
    codes = cluster_codes(np.asarray(clusters)[keep])
    if codes.size == 0:
        return np.zeros(0)
    return np.bincount(codes, weights=x[keep]) / np.bincount(codes)
