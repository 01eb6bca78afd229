"""Benchmark: per-case cost of an audit with three readers against the single-reference audit.

Run by hand (not a test)::

    /work/venv/bin/python benchmarks/bench_readers.py [--cases 24] [--shape 48 64 64]
        [--repeats 3]

Writes the demo cohort with three simulated readers (``make_cohort(readers=3)``) and stored
predictions (the generator's truth, eroded or dilated, so no model runs), then times, serially
and interleaved over ``--repeats`` rounds:

- ``single``: the audit of the same manifest without the reader columns (``label`` reference);
- ``readers``: the audit with ``label_r1..r3`` and ``--reference`` (default ``staple``: the
  STAPLE consensus as reference, plus the per-case agreement of 3 reader pairs, the model against
  3 readers and the consensus, the readers' lesion counts).

Printed: per-case seconds of the case phase (load + evaluate: what ``audit.runner`` does per
case) for both, the median of the per-round paired ratios (target: <= 4x) and the whole-audit
ratio including the subgroup statistics. Ratios measured in the same run are what count; other
load on the machine moves the absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _cohort(folder: Path, n: int, shape: tuple[int, int, int]) -> tuple[Path, Path]:
    import nibabel as nib
    import numpy as np
    import pandas as pd
    from scipy import ndimage

    from medseg_xai.demo import make_cohort

    manifest = make_cohort(folder, n_cases=n, seed=0, shape=shape, readers=3)
    df = pd.read_csv(manifest)
    (folder / "pred").mkdir()
    for i, row in df.iterrows():
        img = nib.load(str(folder / row["label"]))
        truth = np.asarray(img.dataobj) > 0
        pred = ndimage.binary_dilation(truth) if i % 2 else ndimage.binary_erosion(truth)
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), img.affine),
                 str(folder / "pred" / f"{row['case_id']}.nii.gz"))
    df["prediction"] = [f"pred/{c}.nii.gz" for c in df["case_id"]]
    readers = folder / "readers.csv"
    single = folder / "single.csv"
    df.to_csv(readers, index=False)
    df.drop(columns=["label_r1", "label_r2", "label_r3"]).to_csv(single, index=False)
    return single, readers


def _time(manifest: Path, reference: str | None, resamples: int) -> tuple[float, float]:
    """(case-phase seconds, whole-audit seconds) of one serial audit."""
    import medseg_xai as mx
    from medseg_xai.audit import runner

    cohort = mx.Cohort.from_csv(manifest)
    spent = [0.0]
    original = runner._compute_case

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t

    runner._compute_case = timed
    try:
        t0 = time.perf_counter()
        res = mx.audit(cohort, strata=["device"], workers=1, progress=False,
                       n_resamples=resamples, reference=reference)
        whole = time.perf_counter() - t0
    finally:
        runner._compute_case = original
    assert res.n_failed == 0, res.failed
    return spent[0], whole


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--shape", type=int, nargs=3, default=(48, 64, 64))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--reference", default="staple",
                    help="reference of the three-reader audit: staple (default), majority, r1 "
                         "or label (the label column; the consensus is then one more comparison)")
    args = ap.parse_args()
    ref = None if args.reference == "label" else args.reference
    with tempfile.TemporaryDirectory() as tmp:
        single, readers = _cohort(Path(tmp), args.cases, tuple(args.shape))
        _time(single, None, 10)  # warm-up: imports, MONAI loaders
        _time(readers, ref, 10)
        rows = []
        for _ in range(args.repeats):
            s_case, s_all = _time(single, None, args.resamples)
            r_case, r_all = _time(readers, ref, args.resamples)
            rows.append((s_case, r_case, s_all, r_all))
    n = args.cases
    print(f"{n} cases of shape {tuple(args.shape)} (demo cohort, 3 simulated readers, reference "
          f"{args.reference}), serial, {args.repeats} interleaved rounds")
    for s_case, r_case, s_all, r_all in rows:
        print(f"  single {s_case / n * 1000:7.1f} ms/case   readers {r_case / n * 1000:7.1f} "
              f"ms/case   ratio {r_case / s_case:4.2f}x   (whole audit {s_all:5.1f} s vs "
              f"{r_all:5.1f} s, {r_all / s_all:4.2f}x)")
    ratio = statistics.median(r / s for s, r, _, _ in rows)
    whole = statistics.median(r / s for _, _, s, r in rows)
    print(f"per-case cost with three readers: {ratio:.2f}x the single-reference audit "
          f"(median of paired rounds; target <= 4x); whole audit {whole:.2f}x")


if __name__ == "__main__":
    main()
