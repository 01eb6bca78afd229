"""Benchmark: cost of per-case uncertainty (test-time augmentation) against plain inference.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_uncertainty.py [--shape 48 64 64] [--k 1 3 7] [--repeats 5]

With the bundled demo 3D UNet on a demo-cohort image, one thread, the script times in
interleaved, paired rounds

- the plain pass (``adapter.probabilities``: what the audit already runs), and
- the plain pass plus ``case_uncertainty`` with ``k`` flip augmentations reusing it
  (``base_probabilities``), i.e. everything an audit with ``uncertainty=`` runs per case,

and prints per ``k`` the median paired ratio against the target ``k + 1`` (k extra forward
passes plus the aggregation: entropy, member masks, pairwise Dice, lesion table).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[48, 64, 64])
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 7])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import load_model, make_cohort
    from medseg_xai.explain.uncertainty import case_uncertainty

    with tempfile.TemporaryDirectory() as tmp:
        cohort = Cohort.from_csv(make_cohort(Path(tmp), n_cases=2, seed=0, shape=args.shape))
        image = cohort.load_case(cohort.case_ids[0]).image
    adapter = load_model()
    adapter.probabilities(image)  # warm-up
    settings = {1: {"flips": (0,)}, 3: {"flips": (0, 1, 2)},
                7: {"flips": (0, 1, 2), "flip_combinations": True}}
    print(f"image {tuple(image.shape)}, demo 3D UNet, 1 thread, {args.repeats} paired rounds")
    print(f"{'k':>3} {'plain s':>9} {'with TTA s':>11} {'ratio':>7} {'target':>7}")
    for k in args.k:
        if k not in settings:
            raise SystemExit(f"--k: expected some of {sorted(settings)}")
        ratios, plain_t, tta_t = [], [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            base = adapter.probabilities(image).numpy()[0]
            t1 = time.perf_counter()
            base2 = adapter.probabilities(image).numpy()[0]
            case_uncertainty(adapter, image, settings[k], base_probabilities=base2)
            t2 = time.perf_counter()
            del base
            plain_t.append(t1 - t0)
            tta_t.append(t2 - t1)
            ratios.append((t2 - t1) / (t1 - t0))
        print(f"{k:>3} {statistics.median(plain_t):9.3f} {statistics.median(tta_t):11.3f} "
              f"{statistics.median(ratios):7.2f} {k + 1:7d}")


if __name__ == "__main__":
    main()
