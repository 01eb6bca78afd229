"""Benchmark: audit throughput (1 vs 2 worker processes) and memory (100 vs 1,000 cases).

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_audit.py [--cases 1000] [--throughput-cases 200]
        [--shape 48 64 64] [--workers 2]

The script writes ``--cases`` synthetic 3D cases with stored predictions (uncompressed NIfTI:
image, reference with one or two lesions, prediction with under/over-segmentation and a false
positive now and then) into a temporary folder, then

1. audits the first ``--throughput-cases`` cases serially, with a process pool of 1 worker and
   with ``--workers`` workers (``--repeats`` interleaved rounds), printing cases/s and the
   ratio: the median of the per-round paired ratios (and best-of-each for reference; target:
   2 workers >= 1.7x one);
2. audits 100 and then all ``--cases`` cases serially, each in a fresh interpreter, printing the
   peak resident memory and the ratio (target: within 1.2x, i.e. volumes are streamed, not
   held). The increment over the interpreter's memory after imports is printed too, since the
   imported libraries dominate the absolute figure.

Throughput counts the per-case phase (loading, evaluation, lesion matching: what the workers
parallelise); the whole-audit time including the subgroup statistics (bootstrap with
``--resamples`` resamples, default 1000, run once in the parent) is printed alongside, with the
CPU seconds spent in all processes: equal CPU for 1 and 2 workers means the pool adds no work,
so the wall-clock ratio is bounded only by the free cores. Other load on the machine lowers the
ratio: run it on an idle machine for a clean figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    return float("nan")


def _cpu_s() -> float:
    """CPU seconds of this process and its reaped children (the pool's workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def generate(folder: Path, n: int, shape: tuple[int, int, int], seed: int = 0) -> Path:
    """Write ``n`` cases and a manifest; returns the manifest path."""
    import nibabel as nib
    import pandas as pd

    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 0.8, 0.8, 1.0])
    zz, yy, xx = np.indices(shape)
    rows = []
    for i in range(n):
        lab = np.zeros(shape, np.uint8)
        n_les = 0 if i % 10 == 0 else 1 + i % 2
        for _ in range(n_les):
            c = rng.uniform([4, 6, 6], np.array(shape) - [4, 6, 6])
            r = rng.uniform(2, 5)
            lab[((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= r * r] = 1
        img = (rng.normal(0, 1, shape) + 2.0 * lab).astype(np.float32)
        pred = lab.copy()
        shift = int(rng.integers(-1, 2))
        pred = np.roll(pred, shift, axis=2)
        if i % 7 == 0:
            pred[2:4, 2:4, 2:4] = 1  # a false positive
        name = f"{i:05d}"
        nib.save(nib.Nifti1Image(img, affine), folder / f"img_{name}.nii")
        nib.save(nib.Nifti1Image(lab, affine), folder / f"lab_{name}.nii")
        nib.save(nib.Nifti1Image(pred, affine), folder / f"pred_{name}.nii")
        rows.append({"case_id": f"case-{name}", "image": f"img_{name}.nii",
                     "label": f"lab_{name}.nii", "prediction": f"pred_{name}.nii",
                     "device": "ABC"[i % 3], "site": ["north", "south"][i % 2]})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _subset(manifest: Path, n: int) -> Path:
    import pandas as pd

    out = manifest.with_name(f"manifest_{n}.csv")
    pd.read_csv(manifest).head(n).to_csv(out, index=False)
    return out


def _audit(manifest: Path, resamples: int, **kw) -> tuple[float, object]:
    import medseg_xai as mx

    cohort = mx.Cohort.from_csv(manifest)
    t = time.perf_counter()
    result = mx.audit(cohort, strata=["device", "site", "lesion_size"], n_resamples=resamples,
                      progress=False, **kw)
    return time.perf_counter() - t, result


def memory_run(manifest: str, resamples: int) -> None:
    """Child process: audit serially, print peak RSS (MB) and RSS after imports as JSON."""
    import medseg_xai  # noqa: F401 - measure the baseline with every library imported
    import medseg_xai.metrics  # noqa: F401

    base = _rss_mb()
    elapsed, result = _audit(Path(manifest), resamples, executor="serial")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak, "base_mb": base, "elapsed_s": elapsed,
                      "n": result.n_rows, "failed": result.n_failed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--throughput-cases", type=int, default=200)
    # The demo cohort's grid: tinier cases measure pool overhead rather than audit work.
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 64, 64))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved paired rounds")
    parser.add_argument("--skip-memory", action="store_true", help="throughput part only")
    parser.add_argument("--memory-run", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_run:
        memory_run(args.memory_run, args.resamples)
        return

    with tempfile.TemporaryDirectory(prefix="bench_audit_") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        manifest = generate(folder, args.cases, tuple(args.shape))
        size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 2**20
        print(f"generated {args.cases} cases of shape {tuple(args.shape)} "
              f"({size_mb:.0f} MB on disk) in {time.perf_counter() - t:.1f} s")
        print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")

        # 1. throughput
        sub = _subset(manifest, args.throughput_cases)
        _audit(_subset(manifest, 6), 50, executor="serial")  # warm imports and caches
        rates: dict[str, float] = {}
        per_round: dict[str, list[float]] = {}
        configs = (("serial", {"executor": "serial"}),
                   ("process x1", {"executor": "process", "workers": 1}),
                   (f"process x{args.workers}", {"executor": "process", "workers": args.workers}))
        # Interleaved repeats, best of each: other processes on a shared machine only slow runs.
        for rep in range(args.repeats):
            for label, kw in configs:
                before = _cpu_s()
                elapsed, result = _audit(sub, args.resamples, **kw)
                cpu = _cpu_s() - before
                assert result.n_failed == 0, result.failed
                cases_s = result.run["elapsed_s"]  # per-case phase: load, evaluate, match lesions
                rate = args.throughput_cases / cases_s
                rates[label] = max(rates.get(label, 0.0), rate)
                per_round.setdefault(label, []).append(rate)
                print(f"[{rep + 1}/{args.repeats}] {label:>12}: {args.throughput_cases} cases "
                      f"evaluated in {cases_s:6.2f} s = {rate:6.1f} cases/s (whole audit incl. "
                      f"statistics {elapsed:6.2f} s, CPU {cpu:6.2f} s in all processes)")
        for label, _ in configs:
            print(f"best {label:>12}: {rates[label]:6.1f} cases/s")
        best_ratio = rates[f"process x{args.workers}"] / rates["process x1"]
        # Each round runs 1 and N workers back to back under the same machine load: the median
        # of these paired ratios is robust to one lucky or unlucky run, unlike best-of-each.
        paired = np.array(per_round[f"process x{args.workers}"]) / np.array(per_round["process x1"])
        ratio = float(np.median(paired))
        print(f"paired per-round ratios: {', '.join(f'{r:.2f}' for r in paired)}")
        print(f"throughput ratio {args.workers} workers / 1 worker: median of paired rounds "
              f"{ratio:.2f}x, best-of-each {best_ratio:.2f}x "
              f"(target >= 1.7x) -> {'OK' if ratio >= 1.7 else 'BELOW TARGET'}; "
              f"load average now {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

        if args.skip_memory:
            return
        # 2. memory, fresh interpreter per run
        peaks = {}
        for n in (100, args.cases):
            out = subprocess.run(
                [sys.executable, __file__, "--memory-run", str(_subset(manifest, n)),
                 "--resamples", str(args.resamples)],
                check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()[-1]
            peaks[n] = json.loads(out)
            p = peaks[n]
            print(f"{n:>5} cases serial: peak RSS {p['peak_mb']:7.1f} MB (after imports "
                  f"{p['base_mb']:.1f} MB, increment {p['peak_mb'] - p['base_mb']:.1f} MB), "
                  f"{p['elapsed_s']:.1f} s, {p['n']} rows, {p['failed']} failed")
        mem_ratio = peaks[args.cases]["peak_mb"] / peaks[100]["peak_mb"]
        inc_ratio = ((peaks[args.cases]["peak_mb"] - peaks[args.cases]["base_mb"])
                     / max(peaks[100]["peak_mb"] - peaks[100]["base_mb"], 1e-9))
        print(f"peak memory ratio {args.cases} / 100 cases: {mem_ratio:.2f}x (target <= 1.2x) -> "
              f"{'OK' if mem_ratio <= 1.2 else 'ABOVE TARGET'}; increment ratio {inc_ratio:.2f}x")


if __name__ == "__main__":
    main()
