"""Benchmark: AuditDashboard switch times at 1,000, 10,000 and 100,000 cases.

Run by hand (not a test), from the repository root::

    python benchmarks/bench_dashboard.py [--rows 1000 10000 100000]

The result is built the way ``bench_audit_scale.py`` builds its cohorts (its ``generate``: a
few dozen tiny files repeated under distinct case ids, 1% corrupt predictions): the first files
are evaluated for real, then their records are replayed under every other row's id through the
real engine (stream, table builders, statistics), so the 100,000-case result takes minutes, not
hours. For each size it prints the build time and every switch (each stratum, each metric, each
group of the worst-case list, and a switch back to a view already shown), the slowest, and the
ratio of the slowest to the 1,000-case slowest. Target: every switch < 1 s at 100,000 cases.
Other load on the machine slows everything: the load average is printed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_audit_scale import _reset_peak, _status, generate  # noqa: E402


def build_result(folder: Path, n_rows: int, n_files: int = 24, n_resamples: int = 50):
    """An AuditResult of ``n_rows`` cases: ``n_files`` real evaluations, replayed records."""
    import medseg_xai as mx
    from medseg_xai.audit import engine

    manifest = generate(folder, n_rows, n_files=n_files)
    real = engine.run_tasks

    def replay(tasks, settings, *, sink, **kw):
        tasks = iter(tasks)
        templates: list[dict] = []
        first = list(itertools.islice(tasks, n_files))
        info = real(first, settings, sink=templates.append, **{**kw, "n_tasks": len(first)})
        for rec in templates:
            sink(rec)
        for t in tasks:  # row k repeats file k % n_files (generate's layout)
            rec = dict(templates[t.row % n_files])
            rec["row"], rec["case_id"] = t.row, t.case_id
            sink(rec)
            info.n_cases += 1
        return info

    engine.run_tasks = replay
    try:
        return mx.audit(mx.Cohort.from_csv(manifest), strata=["device", "site", "lesion_size"],
                        executor="serial", progress=False, n_resamples=n_resamples,
                        ci_method="percentile")
    finally:
        engine.run_tasks = real


def switches(result) -> tuple[float, list[tuple[str, float]]]:
    from medseg_xai.widgets import AuditDashboard

    t = time.perf_counter()
    d = AuditDashboard(result)
    build = time.perf_counter() - t
    times: list[tuple[str, float]] = []

    def timed(label: str, widget, value) -> None:
        t = time.perf_counter()
        widget.value = value
        times.append((label, time.perf_counter() - t))
        if d.last_error is not None:
            raise d.last_error

    for s in [*d.stratum.options[1:], d.stratum.options[0]]:
        timed(f"stratum={s}", d.stratum, s)
    for m in [*d.metric.options[1:], d.metric.options[0]]:
        timed(f"metric={m}", d.metric, m)
    for g in [*d.group.options[1:], *d.group.options[:1]]:
        timed(f"worst-cases group={g}", d.group, g)
    timed("stratum back (cached)", d.stratum, d.stratum.options[1])
    return build, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--resamples", type=int, default=50)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_dashboard_"))
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    ref = None
    for n in args.rows:
        t = time.perf_counter()
        result = build_result(folder, n, n_resamples=args.resamples)
        made = time.perf_counter() - t
        rss = _reset_peak()
        build, times = switches(result)
        extra_mb = _status("VmHWM:") - rss
        slowest = max(s for _, s in times)
        ref = ref or slowest
        print(f"{n:>7} cases ({result.n_evaluated} evaluated, {result.n_failed} failed; result "
              f"built in {made:.0f} s): dashboard built in {build:.2f} s; slowest switch "
              f"{slowest:.3f} s = {slowest / ref:.1f}x the {args.rows[0]}-case slowest "
              f"(target < 1 s) -> {'OK' if slowest < 1 else 'ABOVE TARGET'}; dashboard and "
              f"switches peak +{extra_mb:.0f} MB above the result; load average "
              f"{os.getloadavg()[0]:.2f}")
        print("         " + "; ".join(f"{lab} {s:.3f}" for lab, s in times))


if __name__ == "__main__":
    main()
