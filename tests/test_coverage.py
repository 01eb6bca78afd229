"""Coverage of the audit's own interval function, simulated (the small seeded version of
``benchmarks/bench_coverage.py``, whose full table is in docs/intervals.md).

Tolerance: with C cohorts per cell the coverage estimate has a Monte-Carlo standard error
``sqrt(c (1 - c) / C)``; a cell fails when its coverage is more than three standard errors
below the 0.93 the issue asks for (0.93 - 3 * 0.023 = 0.86 at C = 120: a true 0.93 fails one
cell in ~700). Betting intervals carry a guarantee (>= 0.95), so their cells pooled (1,920
cohorts, SE 0.005) must reach 0.95 - 3 SE.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from medseg_xai.audit import stats

COHORTS = 120


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_coverage.py"
    spec = importlib.util.spec_from_file_location("bench_coverage", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_intervals_cover_where_the_report_shows_them():
    bench = _bench()
    table = bench.coverage_table(COHORTS, settings=("independent", "clustered"),
                                 n_resamples=300, seed=1)
    print("\n" + table.to_string(index=False))
    assert set(table["n"]) == {10, 20, 50, 200}
    shown = table[table["shown"]]
    # bounded metrics: an interval at every n; unbounded: from MIN_INTERVAL_UNITS on
    assert table.loc[table["kind"] == "bounded", "shown"].all()
    unb = table[table["kind"] == "unbounded"]
    assert (unb["shown"] == (unb["n"] >= stats.MIN_INTERVAL_UNITS["studentized"])).all()
    tolerance = 3 * np.sqrt(0.93 * 0.07 / COHORTS)
    low = shown[shown["coverage"] < 0.93 - tolerance]
    assert low.empty, low.to_string()
    betting = shown[shown["method"] == "betting"]
    pooled = betting["coverage"].mean()
    assert pooled >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / (COHORTS * len(betting)))


def test_a_cohort_draw_has_the_stated_structure():
    bench = _bench()
    rng = np.random.default_rng(0)
    values, clusters = bench.draw("bounded", "mixture", 10, "clustered", rng)
    assert np.unique(clusters).size == 10 and values.size == clusters.size
    assert 0 <= values.min() and values.max() <= 1
    values, clusters = bench.draw("unbounded", "bimodal", 10, "no patient ids", rng)
    assert clusters is None and values.size >= 10 and values.min() > 0
    # the stated true means are the distributions' means
    for (kind, dist), (sample, truth) in bench.DISTRIBUTIONS.items():
        big = sample(np.random.default_rng(3), 400_000)
        assert big.mean() == pytest.approx(truth, rel=0.01), (kind, dist)
