"""Lesion-level hidden strata, validated on planted lesion faults through the real model.

Run by hand (not a test; about a minute per setting on 2 shared cores)::

    .venv/bin/python benchmarks/bench_lesion_strata.py [--cases 160] [--settings 8] [--null 3]

Each setting generates a demo cohort (``demo.make_cohort``, 48 x 64 x 64), plants a lesion-level
fault with ``demo.planted_lesions.plant_lesions`` (a contrast drop on every lesion of a share of
the scans, or only on the lesions in one region of those scans), runs the bundled demo 3D UNet
inside ``mx.audit(..., adapter=, failure=True)`` (strata device and site; lesion properties
measured from the images) and compares the lesion-level groups with the planted lesions. Printed
per setting: the detection drop the fault caused on the planted lesions, the groups reported, the
best IoU with the planted lesion set and the first group's rule; then recovery (best IoU >= 0.5)
over the settings where detection dropped by at least 0.1, precision@1, the groups reported on
cohorts with nothing planted (real effects of the demo model remain: it misses faint and tiny
lesions), the groups reported for an honest model (each lesion's detection redrawn from its
device x size-bin rate on those audits' real lesions: any group is a false discovery), and the
per-case cost of the lesion properties (``--cost``: the
properties of one clinical-size volume, 512 x 512 x 300 with 20 lesions, timed alone).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def resampled_nulls(r, n: int, seed: int) -> list[int]:
    """Groups reported when each reference lesion's detection is redrawn from its (device,
    lesion-size bin) cell's observed rate: the real lesions, properties, scans and strata of an
    audit, with an outcome that depends on the known strata only (an honest model); any group
    is a false discovery."""
    import pandas as pd

    from medseg_xai.audit.lesion_strata import lesion_hidden_strata
    from medseg_xai.audit.strata import lesion_size_labels

    les = r.lesions.copy()
    ref = (les["source"] == "reference").to_numpy()
    device = les["case_id"].map(dict(zip(r.cases["case_id"], r.cases["device"])))
    size = lesion_size_labels(les["volume_mm3"], (0, 100, 1000, 10000))[0]
    cell = device.astype(str) + "|" + size.astype(str)
    det = (les["status"] == "detected").astype(float)
    rate = det[ref].groupby(cell[ref]).mean()
    p = cell.map(rate).to_numpy(dtype=float)
    groups = [(c, r.cases[c].astype(object), sorted(r.cases[c].astype(str).unique()))
              for c in ("device", "site")]
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        draw = np.where(rng.random(len(les)) < p, "detected", "missed")
        les["status"] = np.where(ref, draw, les["status"].to_numpy())
        table, _, _ = lesion_hidden_strata(les, r.cases, groups, r.settings,
                                           {"seed": k, "min_n": 10}, ["device", "site"])
        out.append(len(table))
    return out if len(pd.unique(cell[ref])) else []


def run_setting(n: int, kind: str, share: float, strength: float, seed: int,
                keep: list | None = None) -> dict:
    from medseg_xai.audit import audit
    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import load_model, make_cohort
    from medseg_xai.demo.planted_lesions import plant_lesions

    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_cohort(Path(tmp), n_cases=n, seed=seed)
        planted = (plant_lesions(manifest, kind, share, strength, seed=seed) if kind != "none"
                   else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            r = audit(Cohort.from_csv(manifest), strata=["device", "site"], adapter=load_model(),
                      seed=seed, progress=False, workers=1, n_resamples=200, failure=True)
            seconds = time.perf_counter() - t0
    if keep is not None:
        keep.append(r)
    les = r.lesions[r.lesions["source"] == "reference"]
    key = les["case_id"].astype(str) + "/" + les["lesion_id"].astype(str)
    is_planted = (key.isin(set(planted["case_id"] + "/" + planted["lesion_id"])).to_numpy()
                  if planted is not None else np.zeros(len(les), bool))
    det = (les["status"] == "detected").to_numpy()
    drop = (float(det[~is_planted].mean() - det[is_planted].mean()) if is_planted.any()
            else 0.0)
    ious = []
    table = r.lesion_hidden_strata
    for g in table["group_id"]:
        m = (les["hidden_stratum"] == g).to_numpy()
        ious.append(float((m & is_planted).sum() / max((m | is_planted).sum(), 1)))
    return {"kind": kind, "share": share, "strength": strength, "drop": drop,
            "groups": len(ious), "best_iou": max(ious, default=0.0),
            "first_iou": ious[0] if ious else 0.0,
            "rule": table["rule"].iloc[0] if len(table) else "",
            "n_planted": int(is_planted.sum()), "n_lesions": len(les), "seconds": seconds,
            "n_candidates": (r.provenance.get("lesion_hidden_strata") or {}).get("n_candidates")}


def clinical_cost(repeats: int = 3) -> tuple[float, float]:
    """Seconds and peak MB (tracemalloc) of the lesion properties of a 512 x 512 x 300 int16
    volume with 20 spherical lesions (the volume itself not counted)."""
    import tracemalloc

    from medseg_xai.audit.lesion_properties import lesion_properties
    from medseg_xai.decide import lesion_table

    rng = np.random.default_rng(0)
    shape = (300, 512, 512)
    x = np.zeros(shape, np.int16)
    x[20:280, 60:450, 60:450] = 1000
    ref = np.zeros(shape, bool)
    zz, yy, xx = np.ogrid[:shape[0], :shape[1], :shape[2]]
    for _ in range(20):
        c = rng.integers([40, 100, 100], [260, 410, 410])
        r = rng.integers(3, 10)
        box = tuple(slice(int(ci - r), int(ci + r + 1)) for ci in c)
        ball = ((zz[box[0]] - c[0]) ** 2 + (yy[:, box[1]] - c[1]) ** 2
                + (xx[:, :, box[2]] - c[2]) ** 2) <= r * r
        ref[box] |= ball
        x[box][ball] = 1300
    x += rng.normal(0, 30, shape).astype(np.int16)
    rows = lesion_table(np.zeros_like(ref), ref, (1.0, 0.7, 0.7)).to_dict("records")
    times = []
    tracemalloc.start()
    for _ in range(repeats):
        t0 = time.perf_counter()
        lesion_properties(x, ref, rows, (1.0, 0.7, 0.7))
        times.append(time.perf_counter() - t0)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return float(np.median(times)), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=160)
    parser.add_argument("--settings", type=int, default=8)
    parser.add_argument("--null", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=25)
    parser.add_argument("--null-seed", type=int, default=900)
    parser.add_argument("--cost", action="store_true")
    args = parser.parse_args()
    if args.cost:
        s, mb = clinical_cost()
        print(f"lesion properties, 512x512x300 int16, 20 lesions: {s:.2f} s, peak {mb:.0f} MB "
              f"above the volume (the volume: {300 * 512 * 512 * 2 / 2**20:.0f} MB)")
    grid = [(k, sh, st) for k in ("contrast", "region") for sh in (0.3, 0.5)
            for st in (0.6, 0.8)]
    rows = []
    for i in range(args.settings):
        kind, share, strength = grid[i % len(grid)]
        row = run_setting(args.cases, kind, share, strength, seed=200 + i)
        rows.append(row)
        print(f"{kind:>8} share {share:.2f} strength {strength:.1f}: detection drop "
              f"{row['drop']:+.2f} on {row['n_planted']}/{row['n_lesions']} lesions, groups "
              f"{row['groups']} (of {row['n_candidates']} candidates), best IoU "
              f"{row['best_iou']:.2f}, first IoU {row['first_iou']:.2f} ({row['seconds']:.0f} s)"
              f"  {row['rule']}", flush=True)
    degraded = [r for r in rows if r["drop"] >= 0.1]
    if degraded:
        print(f"degraded settings: {len(degraded)} of {len(rows)}; recovered (best IoU >= 0.5): "
              f"{np.mean([r['best_iou'] >= 0.5 for r in degraded]):.0%}; precision@1: "
              f"{np.mean([r['first_iou'] >= 0.5 for r in degraded]):.0%}")
    kept: list = []
    nulls = [run_setting(args.cases, "none", 0.0, 0.0, seed=args.null_seed + j, keep=kept)
             for j in range(args.null)]
    print(f"nothing planted: {len(nulls)} cohorts, lesion groups reported "
          f"{[r['groups'] for r in nulls]}  {[r['rule'] for r in nulls]} (real effects of the "
          f"demo model: faint or tiny lesions are missed; not an honest model)")
    counts = [c for j, r in enumerate(kept) for c in resampled_nulls(r, args.resamples, j)]
    if counts:
        print(f"honest model (detection redrawn from the device x size-bin rates, "
              f"{len(counts)} searches on the real lesions): a group in "
              f"{sum(c > 0 for c in counts)} ({np.mean([c > 0 for c in counts]):.1%}), "
              f"{sum(counts)} groups in all")


if __name__ == "__main__":
    main()
