"""Coverage of the audit's own interval function (``audit.stats.mean_interval``), measured.

Run by hand (not a test; ``tests/test_coverage.py`` runs a small seeded version in CI)::

    python benchmarks/bench_coverage.py [--cohorts 400] [--resamples 1000] [--compare BCa]

For each metric kind (``bounded``: a Dice-like value in [0, 1], interval method ``betting``;
``unbounded``: an HD95-like distance in mm, ``studentized``), two distributions with a known
true mean, n in {10, 20, 50, 200} and three sampling settings, ``--cohorts`` cohorts are drawn
and the interval the audit would report is computed; printed: the share of intervals holding
the true mean (coverage), its Monte-Carlo standard error ``sqrt(c (1 - c) / cohorts)``, the mean
width, and whether the report shows an interval at that n (``stats.MIN_INTERVAL_UNITS``).

Distributions (the issue's mixture and a bimodal one per kind):

- bounded ``mixture``: 85% Beta(20, 4), 15% Beta(2, 5) (mean 0.7512);
- bounded ``bimodal``: 75% Beta(30, 4), 25% Beta(1, 20) (good scans and near-misses);
- unbounded ``mixture``: 85% LogNormal(log 3, 0.5), 15% LogNormal(log 25, 0.6) (mm: most
  scans close, a few far off);
- unbounded ``bimodal``: 70% Gamma(4, 0.5), 30% Gamma(20, 2).

Settings: ``independent`` (one scan per patient); ``clustered`` (n patients with 1-3 scans
each, scans of a patient correlated; the patient ids are given, so the clustered interval is
used); ``no patient ids`` (the same cohorts, ids withheld: the per-scan interval, which is what
the audit computes when the manifest lacks ``patient_id``; it warns when it suspects this).
``--compare BCa`` adds the old default (BCa; cluster percentile with ids) for reference.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from medseg_xai.audit import stats

NS = (10, 20, 50, 200)
SETTINGS = ("independent", "clustered", "no patient ids")
#: metric name standing for each kind (its metadata decides the interval method)
KIND_METRIC = {"bounded": "dice", "unbounded": "hd95"}

Sampler = Callable[[np.random.Generator, int], np.ndarray]


def _mix(rng: np.random.Generator, n: int, share: float, a: Sampler, b: Sampler) -> np.ndarray:
    return np.where(rng.random(n) < share, a(rng, n), b(rng, n))


DISTRIBUTIONS: dict[tuple[str, str], tuple[Sampler, float]] = {
    ("bounded", "mixture"): (
        lambda r, n: _mix(r, n, 0.85, lambda r, n: r.beta(20, 4, n), lambda r, n: r.beta(2, 5, n)),
        0.85 * 20 / 24 + 0.15 * 2 / 7),
    ("bounded", "bimodal"): (
        lambda r, n: _mix(r, n, 0.75, lambda r, n: r.beta(30, 4, n), lambda r, n: r.beta(1, 20, n)),
        0.75 * 30 / 34 + 0.25 * 1 / 21),
    ("unbounded", "mixture"): (
        lambda r, n: _mix(r, n, 0.85, lambda r, n: r.lognormal(np.log(3), 0.5, n),
                          lambda r, n: r.lognormal(np.log(25), 0.6, n)),
        0.85 * 3 * np.exp(0.5**2 / 2) + 0.15 * 25 * np.exp(0.6**2 / 2)),
    ("unbounded", "bimodal"): (
        lambda r, n: _mix(r, n, 0.7, lambda r, n: r.gamma(4, 0.5, n),
                          lambda r, n: r.gamma(20, 2, n)),
        0.7 * 2.0 + 0.3 * 40.0),
}


def draw(kind: str, dist: str, n: int, setting: str,
         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """One cohort: values and patient ids (None when the interval is computed per scan).

    Clustered cohorts: each of the n patients has a patient-level value drawn from the
    distribution and 1-3 scans around it (bounded: Beta with that mean and concentration 40;
    unbounded: times a mean-one log-normal factor, sd 0.3), so the mean over patients and
    over scans are both the distribution's mean.
    """
    sample, _ = DISTRIBUTIONS[(kind, dist)]
    patient = sample(rng, n)
    if setting == "independent":
        return patient, None
    sizes = rng.integers(1, 4, n)
    ids = np.repeat(np.arange(n), sizes)
    centre = patient[ids]
    if kind == "bounded":
        p = np.clip(centre, 1e-3, 1 - 1e-3)
        values = rng.beta(p * 40, (1 - p) * 40)
    else:
        values = centre * rng.lognormal(-0.3**2 / 2, 0.3, ids.size)
    return values, (ids if setting == "clustered" else None)


def _interval(values: np.ndarray, clusters: np.ndarray | None, metric: str, method: str,
              n_resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    return stats.mean_interval(values, metric=metric, method=method, clusters=clusters,
                               n_resamples=n_resamples, rng=rng)


def coverage_table(
    n_cohorts: int, *, ns: Iterable[int] = NS, settings: Iterable[str] = SETTINGS,
    kinds: Iterable[str] = ("bounded", "unbounded"), methods: Iterable[str] = ("auto",),
    n_resamples: int = 1000, seed: int = 0,
) -> pd.DataFrame:
    """Coverage per (kind, distribution, setting, n, method); seeded, so reproducible.

    ``shown`` says whether the audit reports an interval at that n (n independent units, i.e.
    patients in clustered cells, against ``stats.MIN_INTERVAL_UNITS``).
    """
    rows = []
    for kind in kinds:
        metric = KIND_METRIC[kind]
        for dist in ("mixture", "bimodal"):
            truth = DISTRIBUTIONS[(kind, dist)][1]
            for setting in settings:
                for n in ns:
                    for method in methods:
                        rng = np.random.default_rng([seed, n, len(rows)])
                        hits, widths, shown = 0, [], 0
                        for _ in range(n_cohorts):
                            values, clusters = draw(kind, dist, n, setting, rng)
                            lo, hi = _interval(values, clusters, metric, method, n_resamples, rng)
                            if np.isfinite(lo):
                                shown += 1
                                hits += lo <= truth <= hi
                                widths.append(hi - lo)
                        cov = hits / shown if shown else float("nan")
                        rows.append({
                            "kind": kind, "distribution": dist, "setting": setting, "n": n,
                            "method": stats.interval_method(metric, method),
                            "shown": shown == n_cohorts, "coverage": cov,
                            "mc_se": float(np.sqrt(cov * (1 - cov) / max(shown, 1))),
                            "mean_width": float(np.mean(widths)) if widths else float("nan"),
                        })
    return pd.DataFrame(rows)


def table_timing(n: int, repeats: int = 2, clustered: bool = False) -> dict[str, list[float]]:
    """CPU seconds of ``analysis.subgroup_table`` (n scans, 2 strata, 8 metrics, 1,000
    resamples) with ``ci_method="BCa"`` (the earlier default) and ``"auto"``, interleaved."""
    from medseg_xai.audit import analysis
    from medseg_xai.audit.strata import parse_strata

    rng = np.random.default_rng(0)
    cases = pd.DataFrame({
        "case_id": [f"c{i}" for i in range(n)], "status": "ok",
        "site": rng.choice(list("abcde"), n), "device": rng.choice(list("xyz"), n),
        "dice": rng.beta(8, 2, n), "jaccard": rng.beta(6, 3, n), "nsd": rng.beta(9, 2, n),
        "precision": rng.beta(9, 2, n), "recall": rng.beta(9, 2, n), "hd95": rng.gamma(2, 3, n),
        "assd": rng.gamma(2, 1, n), "abs_volume_diff_mm3": rng.gamma(2, 300, n)})
    if clustered:
        cases["patient_id"] = (np.arange(n) // 2).astype(str)
    metrics = [c for c in cases.columns if c not in ("case_id", "status", "site", "device",
                                                      "patient_id")]
    out: dict[str, list[float]] = {"BCa": [], "auto": []}
    for _ in range(repeats):
        for method in out:
            started = time.process_time()
            analysis.subgroup_table(cases, parse_strata(["site", "device"]), metrics,
                                    n_resamples=1000, ci_method=method)
            out[method].append(time.process_time() - started)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohorts", type=int, default=400)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--compare", nargs="*", default=[], help="other ci_method values, e.g. BCa")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--table-timing", type=int, default=0, metavar="N",
                    help="only time the subgroup table of N scans (BCa against auto)")
    args = ap.parse_args()
    if args.table_timing:
        for clustered in (False, True):
            t = table_timing(args.table_timing, clustered=clustered)
            print(f"{args.table_timing} scans, patient ids: {clustered}: CPU s BCa {t['BCa']}, "
                  f"auto {t['auto']}; ratio auto/BCa "
                  f"{min(t['auto']) / min(t['BCa']):.2f}")
        return
    started = time.perf_counter()
    table = coverage_table(args.cohorts, methods=["auto", *args.compare],
                           n_resamples=args.resamples, seed=args.seed)
    pd.set_option("display.width", 160)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    shown = table[table["shown"] & (table["setting"] != "no patient ids")
                  & (table["method"].isin(["betting", "studentized"]))]
    print(f"\nlowest coverage where the report shows an interval: {shown['coverage'].min():.3f}"
          f" ({len(shown)} cells, {args.cohorts} cohorts each); "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
