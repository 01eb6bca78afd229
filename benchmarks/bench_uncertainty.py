"""Benchmark: cost of per-case uncertainty (test-time augmentation) against plain inference.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_uncertainty.py [--shape 48 64 64] [--k 1 3 7]
        [--repeats 7] [--threads 1 2] [--baseline OLD/uncertainty.py] [--memory 96 128 128]
        [--audit 12]

With the bundled demo 3D UNet on a demo-cohort image, the script times in interleaved, paired
rounds (for each torch thread count and each ``k``)

- the plain pass (``adapter.probabilities``: what the audit already runs), and
- the plain pass plus ``case_uncertainty`` with ``k`` flip augmentations reusing it
  (``base_probabilities``), i.e. everything an audit with ``uncertainty=`` runs per case,
- with ``--baseline``, the same with another version of ``medseg_xai/explain/uncertainty.py``
  (e.g. ``git show OLD:medseg_xai/explain/uncertainty.py > /tmp/old.py``) in the same rounds,
  so machine load hits both versions alike,
- with ``--standalone`` (row ``no-base``), ``case_uncertainty`` alone without
  ``base_probabilities``: the plain member goes in the batch with the copies,

and prints per ``k`` the median paired ratio (plain + uncertainty) / plain against the target
``k + 1``, and the aggregation's share of one plain pass: ``case_uncertainty`` timed with the
model's real outputs replayed instantly (flips, sums, codes, scores; no forward pass).

``--memory D H W`` also measures, in fresh processes, the peak resident memory of the plain pass
alone and with the uncertainty of ``k`` flips at that size (VmHWM; one process per
measurement, so each starts from the same state). ``--audit N`` runs ``mx.audit`` on ``N``
demo cases (one worker, the first ``--threads`` value) in paired rounds (``--audit-rounds``):
per ``k`` and round an audit without uncertainty (the plain pass alone: ``inference_s``), then
the audit with the uncertainty with the plain pass batched with the copies ("joint", what the
audit does) and with it run alone before them ("separate", the code before; order
alternating); it prints per round the median over cases of all the model time of a case with
the uncertainty (``inference_s + uncertainty_s``) over its plain pass alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STANDALONE = "no-base"
SETTINGS = {1: {"flips": (0,)}, 3: {"flips": (0, 1, 2)},
            7: {"flips": (0, 1, 2), "flip_combinations": True}}


def _image(shape: list[int]) -> Any:
    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import make_cohort

    with tempfile.TemporaryDirectory() as tmp:
        cohort = Cohort.from_csv(make_cohort(Path(tmp), n_cases=2, seed=0, shape=shape))
        return cohort.load_case(cohort.case_ids[0]).image


def _load(path: str) -> Any:
    """Another version of the uncertainty module, imported under its own name."""
    spec = importlib.util.spec_from_file_location("baseline_uncertainty", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _aggregation_s(fn: Any, adapter: Any, image: Any, settings: dict, base: Any,
                   repeats: int) -> float:
    """Median seconds of ``fn`` with the model's outputs recorded once and replayed."""
    record: list[Any] = []
    real = adapter.probabilities

    def recording(x: Any) -> Any:
        record.append(real(x))
        return record[-1]

    adapter.probabilities = recording
    try:
        fn(adapter, image, settings, base_probabilities=base)
        calls = iter(record * (repeats + 1))
        adapter.probabilities = lambda x: next(calls)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(adapter, image, settings, base_probabilities=base)
            times.append(time.perf_counter() - t0)
    finally:
        del adapter.probabilities  # the bound method again
    return statistics.median(times)


def _rounds(versions: dict[str, Any], adapter: Any, image: Any, k: int, repeats: int
            ) -> tuple[list[float], dict[str, list[float]], dict[str, list[float]]]:
    """Paired rounds: a plain pass, then each version (order alternating) after its own.
    Ratios in wall-clock and in CPU time of this process (``time.process_time``: not what
    other processes on shared cores take, so steadier; with one thread, the work done)."""
    plain, ratios = [], {name: [] for name in versions}
    cpu = {name: [] for name in versions}
    names = list(versions)
    for r in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        adapter.probabilities(image)
        plain_s, plain_c = time.perf_counter() - t0, time.process_time() - c0
        plain.append(plain_s)
        for name in (names if r % 2 == 0 else names[::-1]):
            t1, c1 = time.perf_counter(), time.process_time()
            if name == STANDALONE:  # the plain member computed inside, with the copies
                versions[name](adapter, image, SETTINGS[k])
            else:
                base = adapter.probabilities(image).numpy()[0]
                versions[name](adapter, image, SETTINGS[k], base_probabilities=base)
            ratios[name].append((time.perf_counter() - t1) / plain_s)
            cpu[name].append((time.process_time() - c1) / plain_c)
    return plain, ratios, cpu


def _timing(args: argparse.Namespace) -> None:
    import torch

    from medseg_xai.demo import load_model
    from medseg_xai.explain.uncertainty import case_uncertainty

    versions = {"new": case_uncertainty}
    if args.standalone:
        versions[STANDALONE] = case_uncertainty
    if args.baseline:
        versions["baseline"] = _load(args.baseline).case_uncertainty
    image = _image(args.shape)
    adapter = load_model()
    for threads in args.threads:
        torch.set_num_threads(threads)
        adapter.probabilities(image)  # warm-up
        print(f"\nimage {tuple(image.shape)}, demo 3D UNet, {threads} thread(s), "
              f"{args.repeats} paired rounds")
        print(f"{'k':>3} {'version':>9} {'plain s':>8} {'ratio':>6} {'target':>6} "
              f"{'ratio-(k+1)':>11} {'cpu ratio':>9} {'agg s':>7} {'agg/plain':>9}")
        for k in args.k:
            plain, ratios, cpu = _rounds(versions, adapter, image, k, args.repeats)
            p = statistics.median(plain)
            for name, fn in versions.items():
                r, c = statistics.median(ratios[name]), statistics.median(cpu[name])
                row = f"{k:>3} {name:>9} {p:8.3f} {r:6.2f} {k + 1:6d} {r - (k + 1):+11.2f} {c:9.2f}"
                if name == STANDALONE:
                    print(row)
                    continue
                agg = _aggregation_s(fn, adapter, image, SETTINGS[k], adapter.probabilities(
                    image).numpy()[0], args.repeats)
                print(f"{row} {agg:7.3f} {agg / p:9.3f}")


def _peak_mb() -> float:
    """This process's peak resident memory, MB: ``VmHWM`` (its own address space's high-water
    mark; ru_maxrss would start at the parent's peak when a large parent forked it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(shape: list[int], k: int, baseline: str | None) -> None:
    """One measurement: peak RSS after the plain pass, then after the uncertainty (MB)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from medseg_xai.demo import load_model

    if baseline:
        fn = _load(baseline).case_uncertainty
    else:
        from medseg_xai.explain.uncertainty import case_uncertainty as fn
    rng = np.random.default_rng(0)
    image = (100 + 20 * rng.standard_normal((1, *shape))).astype(np.float32)
    adapter = load_model()
    start = _peak_mb()
    base = adapter.probabilities(image).numpy()[0]
    plain = _peak_mb()
    t0 = time.perf_counter()
    if k:
        fn(adapter, image, SETTINGS[k], base_probabilities=base)
    seconds = time.perf_counter() - t0
    peak = _peak_mb()
    print(json.dumps({"start": start, "plain": plain, "peak": peak, "seconds": seconds}))


def _memory(args: argparse.Namespace) -> None:
    print(f"\npeak resident memory (MB, VmHWM), image {tuple([1, *args.memory])}, 1 thread; "
          "'plain' = the plain pass alone, '+uncertainty' = extra peak over it")
    print(f"{'k':>3} {'version':>9} {'plain pass':>10} {'+uncertainty':>12} {'seconds':>8}")
    versions = [("new", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    for k in args.k:
        for name, path in versions:
            cmd = [sys.executable, __file__, "--memory-child", str(k),
                   *(["--baseline", path] if path else []), "--shape", *map(str, args.memory)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            m = json.loads(out.strip().splitlines()[-1])
            print(f"{k:>3} {name:>9} {m['plain'] - m['start']:10.0f} "
                  f"{m['peak'] - m['plain']:12.0f} {m['seconds']:8.2f}")


def _audit_once(cohort: Any, adapter: Any, k: int | None, joint: bool) -> Any:
    """``mx.audit`` of the cohort, one worker: without uncertainty (``k`` None), or with ``k``
    flips, the plain pass batched with the copies (``joint``) or run alone before them."""
    import warnings

    from medseg_xai.audit import audit, runner

    real = runner._joint_tta
    if not joint:
        runner._joint_tta = lambda *a: None  # the separate plain pass (main before this change)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = audit(cohort, adapter=adapter, progress=False, workers=1, n_resamples=50,
                      uncertainty=None if k is None else SETTINGS[k])
    finally:
        runner._joint_tta = real
    ok = r.cases[r.cases["status"] == "ok"].set_index("case_id")
    if k is None:
        return ok["inference_s"]
    return ok["inference_s"] + ok["uncertainty_s"]


def _audit(args: argparse.Namespace) -> None:
    """Per case inside ``mx.audit`` (one worker): all model time of a case with the
    uncertainty (``inference_s + uncertainty_s``) over its plain pass alone (``inference_s``
    of an audit without uncertainty), in paired rounds: per ``k`` and round, an audit without
    uncertainty, then the audit with it twice, the plain pass batched with the copies
    ("joint") and run alone before them ("separate", the code before), order alternating."""
    import statistics

    import torch

    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import load_model, make_cohort

    torch.set_num_threads(args.threads[0])
    adapter = load_model()
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Cohort.from_csv(make_cohort(Path(tmp), n_cases=args.audit, seed=1,
                                             shape=args.shape))
        _audit_once(cohort, adapter, None, True)  # warm-up
        print(f"\nmx.audit, {args.audit} demo cases {tuple(args.shape)}, {args.threads[0]} "
              f"thread(s), {args.audit_rounds} paired rounds; per round the median over cases "
              "of (inference_s + uncertainty_s) / inference_s of the audit without uncertainty")
        print(f"{'k':>3} {'plain s':>8} {'joint: rounds':>24} {'separate: rounds':>24} "
              f"{'target':>6}")
        for k in args.k:
            plains, ratios = [], {"joint": [], "separate": []}
            for r in range(args.audit_rounds):
                plain = _audit_once(cohort, adapter, None, True)
                plains.append(plain.mean())
                for name in (("joint", "separate") if r % 2 == 0 else ("separate", "joint")):
                    total = _audit_once(cohort, adapter, k, name == "joint")
                    ratios[name].append(float((total / plain).median()))
            cells = {n: ", ".join(f"{v:.2f}" for v in vals) for n, vals in ratios.items()}
            print(f"{k:>3} {statistics.median(plains):8.3f} {cells['joint']:>24} "
                  f"{cells['separate']:>24} {k + 1:6d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 64, 64])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 7])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--baseline", help="another uncertainty.py timed in the same rounds")
    parser.add_argument("--standalone", action="store_true",
                        help="also time case_uncertainty without base_probabilities (the plain "
                             "member batched with the copies: CaseExplorer, standalone use)")
    parser.add_argument("--memory", type=int, nargs=3, metavar=("D", "H", "W"),
                        help="also measure peak memory at this image size")
    parser.add_argument("--audit", type=int, metavar="N",
                        help="also time uncertainty inside mx.audit on N demo cases")
    parser.add_argument("--audit-rounds", type=int, default=3,
                        help="paired rounds of --audit (default 3)")
    parser.add_argument("--no-timing", action="store_true", help="skip the paired rounds")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    bad = [k for k in args.k if k not in SETTINGS]
    if bad:
        raise SystemExit(f"--k: expected some of {sorted(SETTINGS)}, got {bad}")
    if args.memory_child is not None:
        _memory_child(args.shape, args.memory_child, args.baseline)
        return
    if not args.no_timing:
        _timing(args)
    if args.memory:
        _memory(args)
    if args.audit:
        _audit(args)


if __name__ == "__main__":
    main()
