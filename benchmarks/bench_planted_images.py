"""Planted slices in real images through the real model: hidden-strata recovery end to end.

Run by hand (not a test; on 2 shared cores about 3 minutes per generated cohort of 240 scans
plus 20 s per planted setting; the default 6 cohorts x 4 settings took about 30 minutes)::

    .venv/bin/python benchmarks/bench_planted_images.py [--cases 240] [--settings 24]
        [--bases 6] [--permutations 20] [--seed-base 100] [--out planted_images.jsonl]

``--bases`` demo cohorts are generated (``demo.make_cohort``, 48 x 64 x 64 mm, seeds
``seed-base + b``); the ``--settings`` settings (fault x share 15/25/35% x two strengths,
:data:`medseg_xai.demo.planted.IMAGE_FAULTS`) are dealt out over them. Every audit is
``mx.audit(..., adapter=<bundled demo 3D UNet>, failure=True)`` with strata device and site
(properties measured from the images, OOD score and feature directions from the model's pooled
features):

1. *clean*: each generated cohort as it is, nothing planted. A group reported here is either a
   real effect of the demo beyond device and site (e.g. naturally faint lesions) or a false
   discovery; both are listed. Then ``--permutations`` honest-model nulls: the clean cohort's
   Dice permuted within each device (same scans, properties and features; errors related to
   nothing but the device), where every group is a false discovery;
2. *planted*: per setting, a fresh copy of the clean files with an unrecorded acquisition fault
   written into a random share of the scans across every device (no manifest column says
   which): a smooth multiplicative bias field, a lesion-contrast drop, added Rician noise or a
   blur (:func:`medseg_xai.demo.planted.plant_images`). The clean run's cache (keyed by file
   content) serves the untouched scans, so only the planted ones are predicted again.

Per setting (one JSON line in ``--out`` as it finishes): the paired Dice drop on the planted
scans (clean minus planted, same scans), groups reported, the best IoU of a reported group with
the planted scans (recovered when >= 0.5), precision@1 (the first group has IoU >= 0.5),
precision@k (share of the k reported groups with IoU >= 0.5), the first group's case precision
(planted share of its scans) and rule; then totals. ``--capture DIR`` pickles the inputs of the
failure tables of every audit (for looking at the search offline).
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medseg_xai.demo.planted import IMAGE_FAULTS as FAULTS
from medseg_xai.demo.planted import plant_images

SHARES = (0.15, 0.25, 0.35)


def _audit(manifest: Path, seed: int, cache: Path, capture: Path | None, tag: str,
           inputs: list | None = None):
    """The audit; the inputs of its failure tables pickled to ``capture`` and/or appended to
    ``inputs``."""
    from medseg_xai.audit import audit, failure
    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import load_model

    original = failure.audit_tables

    def keep(*args, **kwargs):
        if capture is not None:
            with open(capture / f"{tag}.pkl", "wb") as fh:
                pickle.dump((args, kwargs), fh)
        if inputs is not None:
            inputs.append((args, kwargs))
        return original(*args, **kwargs)

    failure.audit_tables = keep
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return audit(Cohort.from_csv(manifest), strata=["device", "site"],
                         adapter=load_model(), seed=seed, progress=False, workers=1,
                         n_resamples=200, failure=True, cache_dir=cache)
    finally:
        failure.audit_tables = original


def _scores(result, planted: np.ndarray) -> dict:
    cases = result.cases.reset_index(drop=True)
    ious, prec = [], []
    for g in result.hidden_strata["group_id"]:
        m = (cases["hidden_stratum"] == g).to_numpy()  # first group a case belongs to
        ious.append(float((m & planted).sum() / max((m | planted).sum(), 1)))
        prec.append(float((m & planted).sum() / max(m.sum(), 1)))
    k = len(ious)
    return {"groups": k, "best_iou": max(ious, default=0.0),
            "first_iou": ious[0] if k else 0.0,
            "precision_at_1": float(k > 0 and ious[0] >= 0.5),
            "precision_at_k": float(np.mean([i >= 0.5 for i in ious])) if k else 0.0,
            "first_case_precision": prec[0] if k else 0.0,
            "rules": list(result.hidden_strata["rule"])}


def permutation_nulls(inputs: tuple, reps: int, seed: int) -> list[int]:
    """Groups reported when the clean cohort's Dice is permuted within each device: the same
    scans, properties and model features, and a model whose errors relate to nothing beyond
    the device (an honest model): every group reported is a false discovery."""
    from medseg_xai.audit.failure import audit_tables

    (cases, *rest), kwargs = inputs
    rng = np.random.default_rng([seed, 99])
    found = []
    for _ in range(reps):
        idx = np.arange(len(cases))
        for rows in cases.groupby("device").indices.values():
            idx[rows] = rng.permutation(rows)
        shuffled = cases.copy()
        shuffled["dice"] = cases["dice"].to_numpy()[idx]
        found.append(len(audit_tables(shuffled, *rest, **kwargs)[0]["hidden_strata"]))
    return found


def run_base(n: int, seed: int, settings: list[tuple[str, float, float, int]],
             capture: Path | None = None, permutations: int = 0) -> Iterator[dict]:
    """One generated cohort: its clean audit (nothing planted) and one planted audit per
    setting ``(kind, share, strength, plant_seed)``, each on a fresh copy of the clean files."""
    import shutil

    from medseg_xai.demo import make_cohort

    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_cohort(Path(tmp) / "base", n_cases=n, seed=seed)
        cache = Path(tmp) / "cache"  # keyed by file content: untouched scans are reused
        inputs: list = []
        clean = _audit(manifest, seed, cache, capture, f"{seed}_clean", inputs)
        d0 = clean.cases["dice"].to_numpy(float)
        yield {"run": "clean", "seed": seed, "n": n, **_scores(clean, np.zeros(n, bool)),
               "groups_detail": clean.hidden_strata[["rule", "n", "gap", "adjusted_gap",
                                                     "p_adjusted"]].to_dict("records"),
               "permutation_groups": permutation_nulls(inputs[0], permutations, seed)}
        for kind, share, strength, plant_seed in settings:
            work = Path(tmp) / "planted"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(manifest.parent, work, ignore=shutil.ignore_patterns("cache"))
            planted = plant_images(work / manifest.name, kind, share, strength, plant_seed)
            tag = f"{seed}_{kind}_{share}_{strength}_{plant_seed}"
            dirty = _audit(work / manifest.name, seed, cache, capture, f"{tag}_planted")
            d1 = dirty.cases["dice"].to_numpy(float)
            if capture is not None:
                np.save(capture / f"{tag}_mask.npy", planted)
            yield {"run": "planted", "seed": seed, "n": n, "kind": kind, "share": share,
                   "strength": strength, "plant_seed": plant_seed,
                   "n_planted": int(planted.sum()),
                   "drop": float(np.nanmean(d0[planted] - d1[planted])),
                   "dice_planted": float(np.nanmean(d1[planted])),
                   "dice_rest": float(np.nanmean(d1[~planted])),
                   "from_cache": int(dirty.run.get("n_from_cache", 0)),
                   **_scores(dirty, planted)}


def grid(count: int) -> list[tuple[str, float, float]]:
    """``count`` settings cycling through kind x share x strength (24 distinct)."""
    full = [(k, sh, st) for k, sts in FAULTS.items() for sh in SHARES for st in sts]
    return [full[i % len(full)] for i in range(count)]


def summarise(rows: list[dict]) -> None:
    planted = [r for r in rows if r["run"] == "planted"]
    nulls = [r for r in rows if r["run"] == "clean"]
    degraded = [r for r in planted if r["drop"] >= 0.05]
    print(f"\nsettings {len(planted)}, degraded (paired Dice drop >= 0.05) {len(degraded)}")
    if degraded:
        rec = np.mean([r["best_iou"] >= 0.5 for r in degraded])
        reported = [r for r in degraded if r["groups"]]
        print(f"recovered (best IoU >= 0.5): {rec:.0%}; precision@1 "
              f"{np.mean([r['precision_at_1'] for r in degraded]):.0%}; precision@k "
              f"(settings with a group) {np.mean([r['precision_at_k'] for r in reported]) if reported else 0:.0%}; "
              f"groups reported mean {np.mean([r['groups'] for r in degraded]):.2f}")
        for kind in FAULTS:
            sub = [r for r in degraded if r["kind"] == kind]
            if sub:
                print(f"  {kind:>13}: {sum(r['best_iou'] >= 0.5 for r in sub)}/{len(sub)} "
                      f"recovered, Dice drop {np.mean([r['drop'] for r in sub]):.3f}")
    print(f"nothing planted: {len(nulls)} cohorts, groups {sum(r['groups'] for r in nulls)}, "
          f"cohorts with any {sum(r['groups'] > 0 for r in nulls)}: "
          f"{[rule for r in nulls for rule in r['rules']]}")
    perm = [k for r in nulls for k in r.get("permutation_groups", [])]
    if perm:
        print(f"honest model (Dice permuted within device): {len(perm)} nulls, groups "
              f"{sum(perm)}, nulls with any {sum(k > 0 for k in perm)} "
              f"({np.mean([k > 0 for k in perm]):.1%}; Holm at 0.05 allows 5%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=240)
    parser.add_argument("--settings", type=int, default=24)
    parser.add_argument("--bases", type=int, default=6, help="generated cohorts")
    parser.add_argument("--seed-base", type=int, default=100)
    parser.add_argument("--only", default="", help="comma-separated fault kinds")
    parser.add_argument("--out", type=Path, default=Path("planted_images.jsonl"))
    parser.add_argument("--capture", type=Path, default=None)
    parser.add_argument("--permutations", type=int, default=20,
                        help="honest-model nulls per clean cohort (Dice permuted within device)")
    args = parser.parse_args()
    if args.capture:
        args.capture.mkdir(parents=True, exist_ok=True)
    todo = grid(len(FAULTS) * len(SHARES) * 2 if args.only else args.settings)
    if args.only:
        todo = [s for s in todo if s[0] in args.only.split(",")][:args.settings]
    rows = []
    for b in range(args.bases):
        mine = [(*s, args.seed_base * 100 + i) for i, s in enumerate(todo) if i % args.bases == b]
        t0 = time.perf_counter()
        for r in run_base(args.cases, args.seed_base + b, mine, args.capture,
                          args.permutations):
            rows.append(r)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(r) + "\n")
            what = ("clean" if r["run"] == "clean" else
                    f"{r['kind']:>13} share {r['share']:.2f} strength {r['strength']:.1f}: drop "
                    f"{r['drop']:+.3f} on {r['n_planted']}, best IoU {r['best_iou']:.2f}, "
                    f"P@1 {r['precision_at_1']:.0f}")
            print(f"cohort {args.seed_base + b} {what}, groups {r['groups']} "
                  f"({time.perf_counter() - t0:.0f} s) {r['rules'][:2]}", flush=True)
    summarise(rows)


if __name__ == "__main__":
    main()
