"""Failure detection from an ensemble vs test-time flips on the demo cohort (issue 27).

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_ensemble_demo.py [--cases 80] [--members 3]
        [--steps 1200] [--weights DIR] [--k 3] [--seed 0]

Members: the bundled demo model plus ``members - 1`` demo models trained from scratch with other
seeds (``medseg_xai.demo.train``, ``steps`` steps each; cached under ``--weights`` so a rerun
reuses them; their validation Dice is printed from their training record). The demo cohort is
audited three times with ``failure="dice < 0.5"`` and the OOD score referenced to the training
devices (as ``bench_failure_demo.py``):

- **flips**: the bundled model with ``k`` test-time flips (``k`` extra passes per scan);
- **ensemble**: ``uncertainty_members=[bundled, *others]`` without flips (``members - 1`` extra
  passes: the audited model's own pass is reused);
- **ensemble + flip**: the same members each with one flip along ``--member-flip`` (default
  axis 2, the left-right flip the demo models were trained with; ``2 * members - 1`` extra
  passes).

Printed: per score AURC, AUROC and Spearman with Dice (overall); the held-out scanner's failures
caught at the overall 80%-coverage threshold; the per-case seconds (inference, uncertainty) and
their ratio; a check that the case metrics are the same in every audit (members only feed
the uncertainty); and a paired bootstrap (scans resampled, 2000 times) of the AURC difference
of each score between each audit and the flips audit.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

SCORES = ["unc_disagreement", "unc_entropy", "unc_volume_cv", "ood_score", "unc_combined"]


def _members(n: int, steps: int, folder: Path) -> list:
    """The bundled model and ``n - 1`` others trained with seeds 1001, 1002, ... (cached)."""
    import json

    from medseg_xai.demo import load_model
    from medseg_xai.demo.train import TrainConfig, save, train

    out = [load_model()]
    for seed in range(1001, 1000 + n):
        where = folder / f"seed{seed}-steps{steps}"
        if not (where / "demo_unet.pt").is_file():
            t0 = time.perf_counter()
            model, record = train(TrainConfig(seed=seed, steps=steps), progress=False)
            save(model, record, where)
            print(f"trained seed {seed} ({steps} steps) in {time.perf_counter() - t0:.0f} s")
        record = json.loads((where / "demo_unet.json").read_text())
        val = record["validation"]
        print(f"member seed {seed}: validation Dice {val['overall']['dice']:.3f} "
              f"(seen devices {val['seen_devices']['dice']:.3f}, held-out "
              f"{val['unseen_device']['dice']:.3f}); train {record['time_s']['train']:.0f} s")
        out.append(load_model(where / "demo_unet.pt"))
    return out


def _audit(cohort, adapter, seed: int, **how):
    from medseg_xai.audit import audit
    from medseg_xai.demo import DEVICES, UNSEEN_DEVICE

    trained = [d for d in DEVICES if d != UNSEEN_DEVICE]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = audit(cohort, strata=["device"], adapter=adapter, seed=seed, progress=False,
                  workers=1, n_resamples=200, feature_reference={"device": trained},
                  failure={"hidden_strata": False}, **how)
    return r, time.perf_counter() - t0


def _print(name: str, r, elapsed: float) -> None:
    from medseg_xai.demo import UNSEEN_DEVICE

    ok = r.cases[r.cases["status"] == "ok"]
    inf, unc = ok["inference_s"].mean(), ok["uncertainty_s"].mean()
    src = r.settings["uncertainty_source"]
    print(f"\n== {name}: {src['description']}")
    print(f"   audit {elapsed:.0f} s; per case inference {inf:.3f} s, uncertainty {unc:.3f} s "
          f"(ratio (inference + uncertainty) / inference {(inf + unc) / inf:.2f})")
    fd = r.failure_detection
    overall = fd[(fd["stratum"] == "overall") & fd["score"].isin(SCORES)]
    print(overall[["score", "n", "n_failures", "aurc", "e_aurc", "auroc", "spearman_metric",
                   "best"]].to_string(index=False))
    unseen = fd[(fd["stratum"] == "device") & (fd["group"] == UNSEEN_DEVICE)
                & fd["score"].isin(SCORES)]
    print("   held-out scanner at the overall 80%-coverage threshold: "
          + ", ".join(f"{s} {c:.0%}" for s, c in zip(unseen["score"], unseen["caught"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=80)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--weights", default=str(Path(tempfile.gettempdir()) / "ens_members"))
    parser.add_argument("--k", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--member-flip", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import torch

    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import make_cohort

    torch.set_num_threads(1)
    pd.set_option("display.width", 200)
    members = _members(args.members, args.steps, Path(args.weights))
    with tempfile.TemporaryDirectory() as tmp:
        cohort = Cohort.from_csv(make_cohort(Path(tmp), n_cases=args.cases, seed=args.seed))
        runs = {
            f"flips ({args.k})": _audit(cohort, members[0], args.seed,
                                        uncertainty={"flips": tuple(range(args.k))}),
            f"ensemble ({args.members} models)": _audit(
                cohort, members[0], args.seed, uncertainty_members=members),
            f"ensemble ({args.members} models) + flip {args.member_flip}": _audit(
                cohort, members[0], args.seed, uncertainty_members=members,
                uncertainty={"flips": (args.member_flip,)}),
        }
    ok = [r.cases.loc[r.cases["status"] == "ok", "dice"].to_numpy() for r, _ in runs.values()]
    print(f"demo cohort: {len(ok[0])} scans; case Dice identical across the audits: "
          f"{all(np.array_equal(ok[0], o) for o in ok)}")
    for name, (r, elapsed) in runs.items():
        _print(name, r, elapsed)
    _paired(runs)


def _paired(runs: dict, n_boot: int = 2000) -> None:
    """AURC(audit) - AURC(flips) per score, with a paired bootstrap 95% interval over scans."""
    import numpy as np

    from medseg_xai.audit.failure import aurc

    tables = [r.cases[r.cases["status"] == "ok"].reset_index(drop=True) for r, _ in runs.values()]
    failed = (tables[0]["dice"] < 0.5).to_numpy()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(failed), size=(n_boot, len(failed)))
    names = list(runs)
    print("\nAURC difference to the flips audit (negative: better), paired bootstrap 95% CI:")
    for name, t in zip(names[1:], tables[1:]):
        for score in ("unc_disagreement", "unc_entropy", "unc_combined"):
            a, b = t[score].to_numpy(), tables[0][score].to_numpy()
            d = aurc(a, failed) - aurc(b, failed)
            boot = [aurc(a[i], failed[i]) - aurc(b[i], failed[i]) for i in idx]
            lo, hi = np.percentile(boot, [2.5, 97.5])
            print(f"  {name:32s} {score:17s} {d:+.4f} [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    main()
