"""Benchmark: audits at scale (memory per case, cases/s, 2 workers / 1 worker, big volumes).

Run by hand (not a test), from the repository root::

    python benchmarks/bench_audit_scale.py memory --rows 1000 10000 [100000] [--kind process --workers 2]
    python benchmarks/bench_audit_scale.py throughput --rows 2000
    python benchmarks/bench_audit_scale.py volumes [--shape 64 192 192]

Cohorts are synthetic and generated on the fly: a few dozen tiny files (16x32x32, one to three
lesions, predictions shifted by a voxel) repeated under distinct case ids, 1% of the rows
pointing at a corrupt prediction (those rows must fail, never vanish).

``memory``
    One fresh interpreter per size audits serially (``workers=1``) and prints the peak
    resident memory above the start-up footprint (imports and a warm-up audit done) per case
    (target < 2 KB per case; 100,000 cases within 2.5 GB peak), the per-case phase in cases/s,
    the stage seconds summed over cases, and checks n_rows = n_evaluated + n_failed.
``throughput``
    The same rows with a process pool of 1 and of 2 workers, and with Dask: a scheduler and
    1 or 2 worker processes started as separate programs on 127.0.0.1 (how an audit spreads
    over machines). Prints cases/s and the ratio 2 / 1 (target >= 1.8x). Other load on the
    machine lowers the ratio: the load average is printed with it.
``volumes``
    Realistic volumes (default 64x192x192): peak memory of 200 rows against 20 rows (target:
    within 1.1x), i.e. the client never holds a volume.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def generate(folder: Path, n_rows: int, n_files: int = 24, shape: tuple[int, ...] = (16, 32, 32),
             bad_fraction: float = 0.01, seed: int = 0) -> Path:
    """``n_files`` cases written once, repeated over ``n_rows`` manifest rows."""
    import nibabel as nib
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    affine = np.diag([1.0, 0.8, 0.8, 1.0])
    lo = np.array(shape) // 5
    for i in range(n_files):
        if (folder / f"pred_{i}.nii").exists():
            continue
        lab = np.zeros(shape, np.uint8)
        for _ in range(1 + i % 3):
            c = rng.uniform(lo, np.array(shape) - lo)
            r = rng.uniform(1.5, max(2.0, shape[0] / 6))
            lab[((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) <= r * r] = 1
        img = (rng.normal(0, 1, shape) + 2.0 * lab).astype(np.float32)
        pred = np.roll(lab, int(rng.integers(-1, 2)), axis=2)
        nib.save(nib.Nifti1Image(img, affine), folder / f"img_{i}.nii")
        nib.save(nib.Nifti1Image(lab, affine), folder / f"lab_{i}.nii")
        nib.save(nib.Nifti1Image(pred, affine), folder / f"pred_{i}.nii")
    (folder / "corrupt.nii").write_bytes(b"\0" * 64)
    k = np.arange(n_rows) % n_files
    pred = np.array([f"pred_{j}.nii" for j in k], dtype=object)
    if bad_fraction:
        pred[:: max(1, round(1 / bad_fraction))] = "corrupt.nii"
    df = pd.DataFrame({
        "case_id": [f"case-{r:06d}" for r in range(n_rows)],
        "image": [f"img_{j}.nii" for j in k], "label": [f"lab_{j}.nii" for j in k],
        "prediction": pred,
        "device": np.array(list("ABC"))[np.arange(n_rows) % 3],
        "site": np.array(["north", "south"])[(np.arange(n_rows) // 3) % 2],
    })
    path = folder / f"manifest_{n_rows}.csv"
    df.to_csv(path, index=False)
    return path


# -- child: one audit in a fresh interpreter --------------------------------------------------


def _status(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return float(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> float:
    """Reset the peak-RSS counter (Linux) and return the current RSS in MB."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status("VmRSS:")


def child(manifest: str, kind: str, workers: int, scheduler: str | None, resamples: int,
          ci_method: str) -> None:
    import medseg_xai as mx
    from medseg_xai.audit import audit

    small = Path(manifest).with_name("warmup.csv")
    import pandas as pd

    kw: dict = {"executor": "serial"}
    if kind == "process":
        kw = {"executor": "process", "workers": workers}
    elif kind == "dask":
        kw = {"dask_scheduler": scheduler}
    pd.read_csv(manifest).head(12 if kind == "serial" else 200).to_csv(small, index=False)
    # Warm-up on the same executor: imports and lazily loaded libraries in this process and in
    # long-lived Dask workers (a one-off per worker, not part of the steady rate compared).
    audit(mx.Cohort.from_csv(small), strata=["device", "site"], progress=False, n_resamples=50,
          **kw)
    base = _reset_peak()  # peak counter from here on
    t = time.perf_counter()
    cohort = mx.Cohort.from_csv(manifest)
    result = audit(cohort, strata=["device", "site", "lesion_size"], progress=False,
                   n_resamples=resamples, ci_method=ci_method, **kw)
    total = time.perf_counter() - t
    print(json.dumps({
        "base_mb": base, "peak_mb": _status("VmHWM:"), "total_s": total,
        "cases_s": result.run["elapsed_s"], "n_rows": result.n_rows,
        "n_evaluated": result.n_evaluated, "n_failed": result.n_failed,
        "executor": result.run["executor"], "workers": result.run["workers"],
        "stages": result.run["stage_seconds"],
        "tables_mb": float(result.cases.memory_usage(deep=True).sum()
                           + result.lesions.memory_usage(deep=True).sum()) / 2**20,
    }))


def _run_child(manifest: Path, kind: str = "serial", workers: int = 1, scheduler: str | None = None,
               resamples: int = 1000, ci_method: str = "BCa") -> dict:
    cmd = [sys.executable, __file__, "child", "--manifest", str(manifest), "--kind", kind,
           "--workers", str(workers), "--resamples", str(resamples), "--ci-method", ci_method]
    if scheduler:
        cmd += ["--scheduler", scheduler]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load() -> str:
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


# -- modes ------------------------------------------------------------------------------------


def memory(args: argparse.Namespace, folder: Path) -> None:
    seen: list[tuple[int, float]] = []
    for n in args.rows:
        manifest = generate(folder, n)
        ci = args.ci_method if n <= args.bca_max else "percentile"
        r = _run_child(manifest, args.kind, args.workers, resamples=args.resamples, ci_method=ci)
        per_case_kb = (r["peak_mb"] - r["base_mb"]) * 1024 / n
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages"].items())
        print(f"{n:>7} rows: peak {r['peak_mb']:7.1f} MB (start-up {r['base_mb']:.1f} MB, "
              f"+{r['peak_mb'] - r['base_mb']:.1f} MB = {per_case_kb:.2f} KB/case, target < 2); "
              f"tables {r['tables_mb']:.1f} MB; per-case phase {n / r['cases_s']:.0f} cases/s, "
              f"whole audit {r['total_s']:.0f} s (CI {ci}); rows {r['n_rows']} = "
              f"{r['n_evaluated']} evaluated + {r['n_failed']} failed -> "
              f"{'OK' if r['n_rows'] == r['n_evaluated'] + r['n_failed'] == n else 'LOST ROWS'}")
        print(f"         stage seconds summed: {stages}; {_load()}")
        if seen:  # the slope separates what grows with n from fixed working buffers
            n0, p0 = seen[-1]
            slope = (r["peak_mb"] - p0) * 1024 / (n - n0)
            print(f"         marginal memory {n0} -> {n} rows: {slope:.2f} KB per added case "
                  f"(target < 2) -> {'OK' if slope < 2 else 'ABOVE TARGET'}; extrapolated "
                  f"100,000 rows: {p0 + slope * (100_000 - n0) / 1024:.0f} MB peak (target "
                  f"< 2500)")
        seen.append((n, r["peak_mb"]))


def _dask_cluster(folder: Path, n_workers: int) -> tuple[str, list[subprocess.Popen]]:
    dask = Path(sys.executable).with_name("dask")
    sched = folder / f"scheduler-{n_workers}.json"
    sched.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(folder / f"dask-{n_workers}.log", "w")  # noqa: SIM115 - lives with the cluster
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched)],
                              stdout=log, stderr=log, env=env, cwd="/")]
    deadline = time.monotonic() + 120
    while not (sched.exists() and sched.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.2)
    for _ in range(n_workers):
        procs.append(subprocess.Popen(
            [str(dask), "worker", "--scheduler-file", str(sched), "--nthreads", "1",
             "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
            stdout=log, stderr=log, env=env, cwd="/"))
    from distributed import Client

    with Client(scheduler_file=str(sched), timeout=120) as c:
        c.wait_for_workers(n_workers, timeout=300)
        address = c.scheduler.address
    return address, procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def throughput(args: argparse.Namespace, folder: Path) -> None:
    n = args.rows[0]
    manifest = generate(folder, n)
    rates: dict[str, list[float]] = {}
    for rep in range(args.repeats):
        for label, kind, w in (("process x1", "process", 1), ("process x2", "process", 2)):
            r = _run_child(manifest, kind, w, resamples=100, ci_method="percentile")
            rates.setdefault(label, []).append(n / r["cases_s"])
            print(f"[{rep + 1}] {label}: {n / r['cases_s']:.1f} cases/s ({r['executor']} x"
                  f"{r['workers']}); {_load()}")
        if args.skip_dask:
            continue
        for w in (1, 2):
            address, procs = _dask_cluster(folder, w)
            try:
                r = _run_child(manifest, "dask", scheduler=address, resamples=100,
                               ci_method="percentile")
            finally:
                _stop(procs)
            rates.setdefault(f"dask x{w}", []).append(n / r["cases_s"])
            print(f"[{rep + 1}] dask x{w} (external worker processes on 127.0.0.1): "
                  f"{n / r['cases_s']:.1f} cases/s ({r['executor']} x{r['workers']}); {_load()}")
    for kind in ("process", "dask"):
        if f"{kind} x1" not in rates:
            continue
        paired = np.array(rates[f"{kind} x2"]) / np.array(rates[f"{kind} x1"])
        print(f"{kind}: 2 workers / 1 worker = {np.median(paired):.2f}x (median of "
              f"{len(paired)} paired rounds: {', '.join(f'{p:.2f}' for p in paired)}; "
              f"target >= 1.8x) -> {'OK' if np.median(paired) >= 1.8 else 'BELOW TARGET'}")


def volumes(args: argparse.Namespace, folder: Path) -> None:
    shape = tuple(args.shape)
    peaks = {}
    for n in (20, 200):
        manifest = generate(folder / "big", n, n_files=6, shape=shape, bad_fraction=0.0)
        r = _run_child(manifest, resamples=200)
        peaks[n] = r
        print(f"{n:>4} rows of {shape}: peak {r['peak_mb']:.1f} MB (start-up {r['base_mb']:.1f}), "
              f"{n / r['cases_s']:.1f} cases/s, {r['n_failed']} failed; {_load()}")
    ratio = peaks[200]["peak_mb"] / peaks[20]["peak_mb"]
    print(f"peak 200 rows / 20 rows = {ratio:.3f}x (target <= 1.1x) -> "
          f"{'OK' if ratio <= 1.1 else 'ABOVE TARGET'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("memory", "throughput", "volumes", "child"))
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--ci-method", default="BCa")
    parser.add_argument("--bca-max", type=int, default=10**9,
                        help="above this many rows use percentile CIs (BCa's acceleration is "
                             "O(n) now; kept to compare the two)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-dask", action="store_true")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 192, 192))
    parser.add_argument("--folder", default=None, help="keep generated files here")
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="serial", choices=("serial", "process", "dask"),
                        help="memory mode: executor of the audited run (serial: the per-case "
                             "work shares the client's heap; process: only the client's "
                             "records and tables)")
    parser.add_argument("--workers", type=int, default=1, help="memory mode with --kind process")
    parser.add_argument("--scheduler", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "child":
        child(args.manifest, args.kind, args.workers, args.scheduler, args.resamples,
              args.ci_method)
        return
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="bench_scale_"))
    print(f"{os.cpu_count()} cores; {_load()}")
    try:
        {"memory": memory, "throughput": throughput, "volumes": volumes}[args.mode](args, folder)
    finally:
        if not args.folder:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
