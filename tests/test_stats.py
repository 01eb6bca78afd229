"""Statistics of the audit engine: bootstrap CIs, corrections, Wilson, Bland-Altman."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from medseg_xai.audit import stats


def test_holm_matches_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    expected = np.array([0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(stats.holm(p), expected, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_holm_and_bh_properties(ps):
    p = np.array(ps)
    h, b = stats.holm(p), stats.bh(p)
    assert np.all(h >= p - 1e-12) and np.all(h <= 1.0)
    assert np.all(b >= p - 1e-12) and np.all(b <= h + 1e-12)  # BH never stricter than Holm
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(h[order]) >= -1e-12)  # monotone in the raw p-values


def test_bh_equals_scipy_and_skips_nan():
    p = np.array([0.2, np.nan, 0.01, 0.03])
    out = stats.bh(p)
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3]], sps.false_discovery_control([0.2, 0.01, 0.03]))


def test_wilson_interval_formula():
    k, n, z = 7, 20, sps.norm.ppf(0.975)
    phat = k / n
    centre = (phat + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(phat * (1 - phat) / n + z**2 / (4 * n**2))
    lo, hi = stats.wilson_ci(k, n)
    assert lo == pytest.approx(centre - half, abs=1e-9)
    assert hi == pytest.approx(centre + half, abs=1e-9)
    assert all(np.isnan(stats.wilson_ci(0, 0)))


def test_bland_altman_against_numpy():
    rng = np.random.default_rng(1)
    ref = rng.uniform(100, 1000, 40)
    meas = ref + rng.normal(5, 10, 40)
    ba = stats.bland_altman(meas, ref)
    d = meas - ref
    assert ba["n"] == 40
    assert ba["bias"] == pytest.approx(d.mean())
    assert ba["loa_high"] - ba["loa_low"] == pytest.approx(2 * 1.96 * d.std(ddof=1))
    t = sps.t.ppf(0.975, 39) * d.std(ddof=1) / np.sqrt(40)
    assert ba["bias_ci_low"] == pytest.approx(d.mean() - t)


def test_bootstrap_matches_scipy_with_same_rng():
    x = np.random.default_rng(3).normal(size=25)
    ours = stats.bootstrap_mean_ci(x, n_resamples=999, rng=np.random.default_rng(5))
    ref = sps.bootstrap((x,), np.mean, n_resamples=999, method="BCa",
                        rng=np.random.default_rng(5)).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high))


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 60), st.integers(0, 10_000), st.sampled_from([0.8, 0.9, 0.95]),
       st.sampled_from(["normal", "skewed", "tied"]))
def test_bca_closed_form_jackknife_equals_scipys_bca(n, seed, confidence, kind):
    """The O(n) acceleration (jackknife of the mean in closed form) gives SciPy's O(n^2) BCa
    interval on the same resamples: skewed and heavily tied data included."""
    rng = np.random.default_rng(seed)
    x = {"normal": rng.normal(size=n), "skewed": rng.exponential(size=n) ** 2,
         "tied": rng.integers(0, 3, size=n).astype(float)}[kind]
    if np.all(x == x[0]):
        return
    ref = sps.bootstrap((x,), np.mean, n_resamples=499, method="BCa", confidence_level=confidence,
                        rng=np.random.default_rng(seed)).confidence_interval
    dist = sps.bootstrap((x,), np.mean, n_resamples=499, method="percentile",
                         rng=np.random.default_rng(seed)).bootstrap_distribution
    ours = stats.bca_mean_interval(x, dist, confidence)
    if np.isfinite(ref.low) and np.isfinite(ref.high):
        np.testing.assert_allclose(ours, (ref.low, ref.high), rtol=1e-9, atol=1e-12)
    else:  # undefined in both (every resample on one side of the estimate)
        assert not np.all(np.isfinite(ours))


def test_bca_at_scale_is_linear_time():
    """100,000 values: SciPy's generic jackknife would build 100,000 means of 99,999 values;
    the closed form needs one pass (asserted by what it computes, not by a clock)."""
    x = np.random.default_rng(0).beta(8, 2, 100_000)
    lo, hi = stats.bootstrap_mean_ci(x, n_resamples=200, rng=np.random.default_rng(1))
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert lo < x.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_bootstrap_degenerate_and_tiny_samples():
    assert stats.bootstrap_mean_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert all(np.isnan(stats.bootstrap_mean_ci([0.5])))
    assert all(np.isnan(stats.bootstrap_mean_ci([0.5, np.nan])))
    with pytest.raises(ValueError, match="ci_method"):
        stats.bootstrap_mean_ci([1.0, 2.0], method="bca-ish")


def test_ci_coverage_simulation():
    rng = np.random.default_rng(1)
    hits = 0
    reps = 200
    for _ in range(reps):
        x = rng.normal(0.8, 0.1, 30)
        lo, hi = stats.bootstrap_mean_ci(x, n_resamples=400, rng=rng)
        hits += lo <= 0.8 <= hi
    assert 0.90 <= hits / reps <= 0.98


def test_cluster_bootstrap_covers_where_case_bootstrap_does_not():
    """Correlated scans per patient: resampling patients keeps nominal coverage."""
    rng = np.random.default_rng(7)
    reps, cover_cluster, cover_case = 150, 0, 0
    for _ in range(reps):
        patient_effect = rng.normal(0, 0.1, 15)
        clusters = np.repeat(np.arange(15), 4)
        x = 0.8 + patient_effect[clusters] + rng.normal(0, 0.02, clusters.size)
        lo, hi = stats.bootstrap_mean_ci(x, clusters=clusters, n_resamples=400, rng=rng)
        cover_cluster += lo <= 0.8 <= hi
        lo, hi = stats.bootstrap_mean_ci(x, n_resamples=400, method="percentile", rng=rng)
        cover_case += lo <= 0.8 <= hi
    assert 0.85 <= cover_cluster / reps <= 0.99
    assert cover_case / reps < cover_cluster / reps - 0.1


def test_weighted_means_equal_explicit_resamples():
    rng = np.random.default_rng(0)
    values = rng.normal(size=12)
    clusters = np.array([0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 5, 5])
    groups = np.array([0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0])
    sums = np.zeros((6, 2))
    counts = np.zeros((6, 2))
    np.add.at(sums, (clusters, groups), values)
    np.add.at(counts, (clusters, groups), 1)
    w = stats.cluster_weights(6, 5, np.random.default_rng(1))
    assert np.all(w.sum(axis=1) == 6)
    means = stats.weighted_means(w, sums, counts)
    for b in range(5):
        drawn = np.repeat(np.arange(6), w[b].astype(int))
        for g in range(2):
            vals = [values[(clusters == c) & (groups == g)] for c in drawn]
            vals = np.concatenate(vals)
            expected = vals.mean() if vals.size else np.nan
            np.testing.assert_allclose(means[b, g], expected, equal_nan=True)


def test_group_tests_against_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 20), rng.normal(1, 1, 30)
    assert stats.group_vs_rest_test(a, b) == pytest.approx(
        sps.mannwhitneyu(a, b, alternative="two-sided").pvalue)
    p_perm = stats.group_vs_rest_test(a, b, test="permutation", n_resamples=999,
                                      rng=np.random.default_rng(0))
    assert p_perm < 0.01
    assert stats.kruskal_test([a, b, b + 1]) == pytest.approx(sps.kruskal(a, b, b + 1).pvalue)
    assert np.isnan(stats.group_vs_rest_test(a, np.array([])))
    with pytest.raises(ValueError, match="test"):
        stats.group_vs_rest_test(a, b, test="t")


@pytest.mark.parametrize(("name", "sign"), [("dice", 1), ("dice_liver", 1), ("hd95", -1),
                                            ("hd", -1), ("assd", -1), ("volume_diff_mm3", 0),
                                            ("nsd", 1), ("abs_volume_diff_mm3", -1)])
def test_metric_direction(name, sign):
    assert stats.metric_direction(name) == sign
