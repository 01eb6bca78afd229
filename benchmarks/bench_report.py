"""Report scale: render time and file size of the HTML report of a 1,000-case audit.

Targets (issue 10): under 10 s and under 15 MB, with the failure gallery drawn from the
result (``result.explanations``) and every table of the result shown. Also times the widget's
fast path: a 256 x 256 ``SliceView.update`` + canvas draw against re-creating the view (target
< 50 ms per redraw).

The 1,000-case result is real engine output: a 40-case synthetic cohort is audited with the
bundled model explaining the gallery, then its evaluated cases are repeated (new case and
patient ids) to 1,000 rows and re-analysed by ``build_result`` (the engine's statistics on
1,000 cases, default 2,000 bootstrap resamples).

Run by hand:  MPLBACKEND=Agg python benchmarks/bench_report.py [--cases 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from medseg_xai import viz  # noqa: E402
from medseg_xai.reports import write_html  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_audit_scale import _reset_peak, _status  # noqa: E402


def real_result(n_cases: int, tmp: Path):
    """A real audit of ``n_cases`` rows (see the module docstring)."""
    from medseg_xai.audit import DEFAULT_CRITERIA, audit, build_result
    from medseg_xai.audit.explanations import explain_failures
    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import load_model, make_cohort, predict_cohort

    adapter = load_model()
    manifest = predict_cohort(make_cohort(tmp / "cohort", n_cases=40, seed=0,
                                          shape=(32, 48, 48)), adapter, progress=False)
    cohort = Cohort.from_csv(manifest)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = audit(cohort, strata=["device", "site", "lesion_size"], criteria=DEFAULT_CRITERIA,
                      workers=1, progress=False, lesion_size_bins=(0.0, 250.0, 1000.0))
    reps = -(-n_cases // len(small.cases))
    cases, lesions = [], []
    for k in range(reps):
        c = small.cases.copy()
        c["case_id"] = [f"{cid}-{k}" for cid in c["case_id"]]
        if "patient_id" in c:
            c["patient_id"] = [f"{p}-{k}" for p in c["patient_id"]]
        cases.append(c)
        les = small.lesions.copy()
        les["case_id"] = [f"{cid}-{k}" for cid in les["case_id"]]
        lesions.append(les)
    cases = pd.concat(cases, ignore_index=True).head(n_cases)
    keep = set(cases["case_id"])
    lesions = pd.concat(lesions, ignore_index=True)
    lesions = lesions[lesions["case_id"].isin(keep)].reset_index(drop=True)
    drop = [c for c in ("lesion_size", "lesion_count", "empty_reference") if c in cases]
    result = build_result(cases.drop(columns=drop), lesions, small.settings, small.provenance,
                          small.run, report={"model_name": "demo", "intended_use": "benchmark"})
    gallery = explain_failures(small, cohort, adapter)
    result.explanations = gallery
    return result


def bench_report(n_cases: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = real_result(n_cases, Path(tmp))
        build_s = time.perf_counter() - t0
        path = Path(tmp) / "report.html"
        rss = _reset_peak()
        t0 = time.perf_counter()
        write_html(result, path)
        elapsed = time.perf_counter() - t0
        render_mb = _status("VmHWM:") - rss
        size = path.stat().st_size
        rss = _reset_peak()
        t0 = time.perf_counter()
        result.write_json(Path(tmp) / "audit.json")  # streamed, what the CLI writes
        json_s = time.perf_counter() - t0
        json_peak = _status("VmHWM:") - rss
        rss = _reset_peak()
        t0 = time.perf_counter()
        result.to_json(Path(tmp) / "audit_text.json")  # the whole text in memory (reference)
        text_s = time.perf_counter() - t0
        text_peak = _status("VmHWM:") - rss
        json_mb = (Path(tmp) / "audit.json").stat().st_size / 1e6
        gallery_mb = sum(len(str(e)) for e in result.explanations) / 1e6
    print(f"report for {len(result.cases)} cases ({len(result.subgroups)} subgroup rows, "
          f"{len(result.lesions)} lesion rows, {len(result.explanations)} gallery entries; "
          f"result built in {build_s:.1f} s)")
    print(f"  render time  {elapsed:6.2f} s   target < 10 s    ratio to target {elapsed / 10:.2f}")
    print(f"  file size    {size / 1e6:6.2f} MB  target < 15 MB   ratio to target {size / 15e6:.2f}")
    print(f"  render peak  +{render_mb:.0f} MB above the result")
    print(f"  audit.json   {json_mb:6.2f} MB (gallery payload {gallery_mb:.2f} MB): write_json "
          f"{json_s:.2f} s, peak +{json_peak:.0f} MB; to_json {text_s:.2f} s, peak "
          f"+{text_peak:.0f} MB (streamed / whole text: {json_s / text_s:.2f}x the time)")


def bench_redraw(n: int = 30) -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(size=(256, 256)).astype(np.float32)
    ref = np.zeros((256, 256), bool)
    ref[100:150, 100:160] = True
    heat = rng.normal(size=(256, 256))
    fig = Figure(figsize=(5, 5), dpi=100)
    ax = fig.add_subplot()
    view = viz.show_slice(ax, img, ref, np.roll(ref, 5, 0), heatmap=heat)
    fig.canvas.draw()
    t0 = time.perf_counter()
    for i in range(n):
        view.update(np.roll(img, i, 1), pred=np.roll(ref, i, 0), heatmap=heat, alpha=0.3 + i / 100)
        fig.canvas.draw()
    update_ms = (time.perf_counter() - t0) / n * 1e3
    t0 = time.perf_counter()
    for i in range(n):
        ax.clear()
        viz.show_slice(ax, np.roll(img, i, 1), ref, np.roll(ref, i, 0), heatmap=heat)
        fig.canvas.draw()
    recreate_ms = (time.perf_counter() - t0) / n * 1e3
    print("256 x 256 slice redraw (update + draw, outlines, heatmap)")
    print(
        f"  SliceView.update {update_ms:6.1f} ms   re-create {recreate_ms:6.1f} ms   "
        f"ratio {update_ms / recreate_ms:.2f}   target < 50 ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=1000)
    args = parser.parse_args()
    bench_report(args.cases)
    bench_redraw()


if __name__ == "__main__":
    main()
