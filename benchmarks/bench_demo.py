"""Time the demo cohort generator and demo-model inference (run by hand, not in CI).

    .venv/bin/python benchmarks/bench_demo.py [--n-cases 120]

Prints seconds per case for writing the cohort, for predicting it with the bundled model, and the
on-disk size of cohort and weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from medseg_xai.demo import load_model, make_cohort, predict_cohort
from medseg_xai.demo.model import WEIGHTS_FILE, _weights_dir


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-cases", type=int, default=120)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        manifest = make_cohort(Path(tmp) / "cohort", n_cases=args.n_cases, seed=0)
        t_make = time.perf_counter() - t0
        adapter = load_model()
        t1 = time.perf_counter()
        predict_cohort(manifest, adapter, progress=False)
        t_pred = time.perf_counter() - t1
        size = _size(manifest.parent)
    n = args.n_cases
    print(f"make_cohort: {n} cases in {t_make:.1f} s ({t_make / n * 1000:.0f} ms/case)")
    print(f"predict_cohort: {n} cases in {t_pred:.1f} s ({t_pred / n * 1000:.0f} ms/case, "
          f"{args.threads} thread(s))")
    print(f"cohort with predictions on disk: {size / 2**20:.1f} MiB")
    print(f"weights: {(_weights_dir() / WEIGHTS_FILE).stat().st_size / 2**10:.0f} KiB")


if __name__ == "__main__":
    main()
