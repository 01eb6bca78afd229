"""The audit's one interval function (``stats.mean_interval``) and its methods, checked against
independent transcriptions: the betting interval against a grid search over candidate means
(the construction of Waudby-Smith & Ramdas 2023, Sec. 4), the studentized bootstrap against an
explicit resample loop, the rate interval against the Beta quantiles of Clopper-Pearson."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from medseg_xai.audit import stats


def _grid_betting(x: np.ndarray, order: np.ndarray, confidence: float) -> tuple[float, float]:
    """Betting interval by brute force: every candidate mean on a fine grid, capital as a
    running product (no logs, no root search), hedged at theta = 1/2."""
    z = x[order]
    n = z.size
    alpha = 1 - confidence
    t = np.arange(1, n + 1)
    mu = np.minimum((0.5 + np.cumsum(z)) / (t + 1), 1)
    var = (0.25 + np.cumsum((z - mu) ** 2)) / (t + 1)
    lam = np.sqrt(2 * np.log(2 / alpha) / (n * np.concatenate([[0.25], var[:-1]])))
    kept = []
    for m in np.linspace(0.0005, 0.9995, 1000):
        kp = np.cumprod(1 + np.minimum(lam, 0.75 / m) * (z - m)).max()
        km = np.cumprod(1 - np.minimum(lam, 0.75 / (1 - m)) * (z - m)).max()
        if max(kp, km) / 2 < 1 / alpha:
            kept.append(m)
    return (min(kept), max(kept))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_betting_interval_equals_a_grid_search(seed):
    rng = np.random.default_rng(seed)
    n = [10, 25, 60][seed]
    x = np.where(rng.random(n) < 0.85, rng.beta(20, 4, n), rng.beta(2, 5, n))
    lo, hi = stats.betting_mean_ci(x, rng=np.random.default_rng(42))
    glo, ghi = _grid_betting(x, np.random.default_rng(42).permutation(n), 0.95)
    assert abs(lo - glo) < 1.5e-3 and abs(hi - ghi) < 1.5e-3
    assert lo <= x.mean() <= hi


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=40), st.integers(0, 5))
def test_betting_interval_properties(values, seed):
    x = np.array(values)
    lo, hi = stats.betting_mean_ci(x, rng=np.random.default_rng(seed))
    assert 0.0 <= lo <= hi <= 1.0
    # rescaling the data rescales the interval (bounds given)
    lo2, hi2 = stats.betting_mean_ci(10 * x - 5, bounds=(-5.0, 5.0),
                                     rng=np.random.default_rng(seed))
    assert lo2 == pytest.approx(10 * lo - 5, abs=1e-5)
    assert hi2 == pytest.approx(10 * hi - 5, abs=1e-5)


def test_betting_rejects_values_outside_bounds():
    with pytest.raises(ValueError, match=r"expected numbers in \[0.0, 1.0\]"):
        stats.betting_mean_ci([0.5, 1.5])
    assert all(np.isnan(stats.betting_mean_ci([0.5])))


def test_studentized_interval_equals_an_explicit_resample_loop():
    rng = np.random.default_rng(4)
    x = rng.lognormal(1, 0.8, 30)
    lo, hi = stats.studentized_mean_ci(x, n_resamples=3000, rng=np.random.default_rng(1))
    # bootstrap-t by hand: resample, studentize with s / sqrt(n), invert the pivot quantiles
    r = np.random.default_rng(11)
    m, se = x.mean(), x.std(ddof=1) / np.sqrt(x.size)
    piv = []
    for _ in range(3000):
        b = r.choice(x, x.size)
        piv.append((b.mean() - m) / (b.std(ddof=1) / np.sqrt(x.size)))
    q_lo, q_hi = np.quantile(piv, [0.025, 0.975])
    ref = (m - q_hi * se, m - q_lo * se)
    width = ref[1] - ref[0]
    assert abs(lo - ref[0]) < 0.08 * width and abs(hi - ref[1]) < 0.08 * width
    # skewed data: the interval reaches further up than down
    assert hi - m > m - lo


def test_clustered_studentized_uses_ratio_of_sums_and_patients():
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(60), 3)
    x = rng.gamma(2, 2, 60)[clusters] + rng.normal(0, 0.1, 180)
    lo_c, hi_c = stats.studentized_mean_ci(x, clusters=clusters, rng=np.random.default_rng(0))
    lo_s, hi_s = stats.studentized_mean_ci(x, rng=np.random.default_rng(0))
    assert lo_c < x.mean() < hi_c
    # three near-copies per patient: the scan-level interval is ~sqrt(3) too narrow
    assert (hi_c - lo_c) > 1.4 * (hi_s - lo_s)


def test_mean_interval_chooses_by_metric_kind():
    assert stats.interval_method("dice") == "betting"
    assert stats.interval_method("nsd_liver") == "betting"
    assert stats.interval_method("lesion_sensitivity") == "betting"
    assert stats.interval_method("hd95") == "studentized"
    assert stats.interval_method("abs_volume_diff_mm3") == "studentized"
    assert stats.interval_method("hd95", "betting") == "studentized"  # no bounds to bet in
    assert stats.interval_method("dice", "BCa") == "BCa"
    with pytest.raises(ValueError, match="ci_method"):
        stats.interval_method("dice", "bca")
    rng = np.random.default_rng(0)
    x = rng.beta(8, 2, 30)
    assert stats.mean_interval(x, metric="dice", rng=np.random.default_rng(3)) == \
        stats.betting_mean_ci(x, rng=np.random.default_rng(3))
    # unbounded metric below the units it needs: no interval
    assert all(np.isnan(stats.mean_interval(rng.gamma(2, 2, 30), metric="hd95")))
    assert np.isfinite(stats.mean_interval(rng.gamma(2, 2, 60), metric="hd95")[0])
    # clustered betting: one bounded value per patient (its mean)
    cl = np.repeat(np.arange(15), 2)
    assert stats.mean_interval(x, metric="dice", clusters=cl, rng=np.random.default_rng(3)) == \
        stats.betting_mean_ci(stats.cluster_means(x, cl), rng=np.random.default_rng(3))
    # paired differences of a bounded metric live in [-1, 1]
    lo, hi = stats.mean_interval(x - 0.5, metric="dice", difference=True)
    assert -1.0 <= lo < (x - 0.5).mean() < hi <= 1.0


def test_rate_interval_is_clopper_pearson():
    k, n = 7, 20
    lo, hi = stats.rate_interval(k, n)
    assert lo == pytest.approx(sps.beta.ppf(0.025, k, n - k + 1))
    assert hi == pytest.approx(sps.beta.ppf(0.975, k + 1, n - k))
    assert stats.rate_interval(0, 5)[0] == 0.0 and stats.rate_interval(5, 5)[1] == 1.0
    assert all(np.isnan(stats.rate_interval(0, 0)))


def test_repeated_patients_without_patient_id_warn(tmp_path):
    import pandas as pd

    from medseg_xai import Cohort
    from medseg_xai._patients import repeated_patient_columns

    df = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "image": "i.nii.gz", "label": "l.nii.gz",
                       "PatientID": ["1", "1", "2", "3"], "subject_age": [50, 50, 60, 70],
                       "site": ["x", "x", "y", "y"]})
    assert repeated_patient_columns(df) == ["PatientID"]  # age columns are not keys
    assert repeated_patient_columns(df.assign(PatientID=["1", "2", "3", "4"])) == []
    assert repeated_patient_columns(df.rename(columns={"PatientID": "patient_id"})) == []
    with pytest.warns(UserWarning, match=r"repeated patients .*\['PatientID'\].*patient_id"):
        cohort = Cohort.from_dataframe(df, root=tmp_path)
    # the identifier column itself is dropped; what it told survives
    assert "PatientID" not in cohort.manifest.columns
    assert cohort.repeated_patient_columns == ["PatientID"]
