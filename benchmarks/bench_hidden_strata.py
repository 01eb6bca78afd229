"""Benchmark: hidden-strata discovery, planted-slice recovery and scale.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_hidden_strata.py [--sizes 10000 30000 100000]
        [--recovery-n 1000 5000] [--null 100]

1. Recovery on planted-slice feature tables (:mod:`medseg_xai.demo.planted`): the 24 settings
   (bias field / contrast drop / noise x 5-30% of scans x Dice drop 0.1 / 0.2) at each
   ``--recovery-n`` and proxy separation 2, 3 and 4 SD; per cell the share of settings whose
   best reported group has IoU >= 0.5 with the planted scans, precision@1 (the first reported
   group is the planted one), precision@k (share of the k reported groups that are the planted
   one, over settings with a group) and the mean number of groups reported. The search runs as
   in the audit (candidates relative to the known strata). The audit's own strata
   (device, lesion-size tertiles) are the known strata the search goes beyond.
2. False discoveries: ``--null`` honest cohorts (nothing planted, no known effect): groups
   reported in total and cohorts with any.
3. Scale: the whole failure part of an audit (``audit.failure.audit_tables``: failure
   detection for two scores per subgroup, risk-coverage curves, hidden strata) on planted
   tables of ``--sizes`` cases: seconds and peak memory above the input (tracemalloc, Python and
   numpy allocations), and that peak per case.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import pandas as pd


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def recovery(sizes: list[int]) -> None:
    from medseg_xai.audit.hidden_strata import HiddenStrataSettings, find_hidden_strata
    from medseg_xai.demo.planted import planted_settings, planted_table

    print("planted-slice recovery (24 settings per cell)")
    print(f"{'n':>6} {'sep SD':>6} {'recovered':>10} {'precision@1':>12} {'precision@k':>12} "
          f"{'groups':>7} {'s':>6}")
    for n in sizes:
        for sep in (2.0, 3.0, 4.0):
            hits, first, groups, at_k = [], [], [], []
            t0 = time.perf_counter()
            for s in planted_settings(n):
                pc = planted_table(**s, separation=sep)
                pc.cases["lesion_size"] = pd.qcut(pc.cases["prop_lesion_volume_mm3"], 3,
                                                  labels=False)
                found = find_hidden_strata(pc.cases, categorical=["device", "site"],
                                           adjust_for=["device", "lesion_size"],
                                           settings=HiddenStrataSettings(
                                               seed=s["seed"], within_strata=True))
                ious = [_iou(m, pc.planted) for m in found.masks.values()]
                hits.append(max(ious, default=0.0) >= 0.5)
                first.append(bool(ious) and ious[0] >= 0.5)
                groups.append(len(ious))
                if ious:
                    at_k.append(np.mean([i >= 0.5 for i in ious]))
            print(f"{n:>6} {sep:>6.0f} {np.mean(hits):>10.0%} {np.mean(first):>12.0%} "
                  f"{np.mean(at_k) if at_k else 0:>12.0%} {np.mean(groups):>7.2f} "
                  f"{time.perf_counter() - t0:>6.1f}")


def null(count: int) -> None:
    from medseg_xai.audit.hidden_strata import HiddenStrataSettings, find_hidden_strata
    from medseg_xai.demo.planted import planted_table

    total, any_group = 0, 0
    for i in range(count):
        pc = planted_table(1000, effect=0.0, honest=True, seed=10_000 + i)
        k = len(find_hidden_strata(pc.cases, categorical=["device", "site"],
                                   adjust_for=["device"],
                                   settings=HiddenStrataSettings(seed=i, within_strata=True)
                                   ).groups)
        total += k
        any_group += k > 0
    print(f"honest cohorts (n=1000, searched beyond device): {count}, groups reported {total}, cohorts with any "
          f"{any_group} ({any_group / count:.1%}; Holm at alpha 0.05 allows 5%)")


def scale(sizes: list[int]) -> None:
    from medseg_xai.audit.failure import audit_tables
    from medseg_xai.demo.planted import planted_table

    print("scale: failure detection + risk-coverage + hidden strata (audit_tables)")
    print(f"{'cases':>8} {'seconds':>8} {'peak MB':>8} {'KB/case':>8} {'input MB':>9}")
    for n in sizes:
        pc = planted_table(n, kind="bias_field", fraction=0.1, effect=0.2, seed=1)
        cases = pc.cases
        cases["ood_score"] = np.random.default_rng(0).gamma(2.0, 2.0, n)
        labels = cases["device"].astype(object)
        groups = [("device", labels, sorted(labels.unique()))]
        settings = {"failure": {"failure": "dice < 0.5"}}
        input_mb = cases.memory_usage(deep=True).sum() / 2**20
        tracemalloc.start()
        t0 = time.perf_counter()
        tables, per_case, _ = audit_tables(cases, groups, settings, categorical=["device", "site"],
                                        stat={"seed": 0, "min_n": 10})
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        found = tables["hidden_strata"]
        best = max((_iou((per_case["hidden_stratum"] == g).to_numpy(), pc.planted)
                    for g in found["group_id"]), default=0.0)
        print(f"{n:>8} {elapsed:>8.1f} {peak / 2**20:>8.1f} {peak / n / 1024:>8.2f} "
              f"{input_mb:>9.1f}   groups {len(found)}, best IoU {best:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    parser.add_argument("--recovery-n", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--null", type=int, default=100)
    args = parser.parse_args()
    if any(args.recovery_n):  # --recovery-n 0 / --null 0 / --sizes 0: skip that part
        recovery([n for n in args.recovery_n if n])
    if args.null:
        null(args.null)
    if any(args.sizes):
        scale([n for n in args.sizes if n])


if __name__ == "__main__":
    main()
