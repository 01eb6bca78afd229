"""Failure detection on the demo cohort and model: the figures issue 27 asks for.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_failure_demo.py [--cases 120] [--seed 0] [--k 3 | --flips 2]

Generates the demo cohort (``demo.make_cohort``, default size 48 x 64 x 64), audits it with the
bundled 3D UNet as the adapter, ``uncertainty`` = flips along ``k`` axes (or ``--flips``: the
demo itself flips axis 2, left-right), ``failure`` =
"dice < 0.5", features for the OOD score with the training devices as the reference (the
held-out scanner, ``demo.UNSEEN_DEVICE``, is not in it), and prints

- per score: AURC, excess AURC, AUROC and Spearman correlation with Dice (overall);
- the best score's sentences at 50 / 80 / 90% coverage;
- for the held-out scanner at the overall 80%-coverage threshold of each score: its scans,
  failures, and the share of its failures referred to a human ("caught");
- calibration (ECE) overall and per device, hidden strata found, and the wall time with and
  without uncertainty (per-case inference and uncertainty seconds).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=3, choices=(1, 2, 3),
                        help="flips along the first k axes (ignored with --flips)")
    parser.add_argument("--flips", type=int, nargs="+", default=None, metavar="AXIS",
                        help="flip these spatial axes instead (the demo: 2, left-right)")
    args = parser.parse_args()

    import pandas as pd

    from medseg_xai.audit import audit
    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import DEVICES, UNSEEN_DEVICE, load_model, make_cohort

    pd.set_option("display.width", 200)
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Cohort.from_csv(make_cohort(Path(tmp), n_cases=args.cases, seed=args.seed))
        adapter = load_model()
        trained = [d for d in DEVICES if d != UNSEEN_DEVICE]
        flips = tuple(args.flips) if args.flips else tuple(range(args.k))
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = audit(cohort, strata=["device", "site"], adapter=adapter, seed=args.seed,
                      progress=False, workers=1, n_resamples=500,
                      feature_reference={"device": trained},
                      uncertainty={"flips": flips}, failure=True)
        elapsed = time.perf_counter() - t0
    fd = r.failure_detection
    ok = r.cases[r.cases["status"] == "ok"]
    print(f"demo cohort: {len(ok)} scans, failures (dice < 0.5): {int((ok['dice'] < 0.5).sum())}"
          f"; audit {elapsed:.0f} s; per case inference {ok['inference_s'].mean():.3f} s, "
          f"uncertainty (flips {flips}) {ok['uncertainty_s'].mean():.3f} s")
    overall = fd[fd["stratum"] == "overall"]
    print(overall[["score", "n", "n_failures", "aurc", "e_aurc", "aurc_random", "auroc",
                   "spearman_metric", "best"]].to_string(index=False))
    sel = r.selective
    print(sel[sel["best"]][["score", "coverage_target", "threshold", "coverage", "referred",
                            "caught", "retained_metric", "retained_risk"]].to_string(index=False))
    unseen = fd[(fd["stratum"] == "device") & (fd["group"] == UNSEEN_DEVICE)]
    print(f"held-out scanner {UNSEEN_DEVICE} at the overall {r.settings['failure']['target_coverage']:.0%}"
          "-coverage threshold:")
    print(unseen[["score", "n", "n_failures", "referred", "caught", "retained_metric"]]
          .to_string(index=False))
    cal = r.calibration
    print(cal[["stratum", "group", "n", "ece", "ace", "mce", "ece_pooled"]].to_string(index=False))
    print("hidden strata:", r.provenance.get("hidden_strata", {}).get("n_candidates"),
          "candidates")
    print(r.hidden_strata[["group_id", "description", "n", "gap", "adjusted_gap",
                           "p_adjusted"]].to_string(index=False))


if __name__ == "__main__":
    main()
