"""Report scale: render time and file size of the HTML report for a 1,000-case audit.

Targets (issue 6): under 10 s and under 15 MB. Also times the widget's fast path: a 256 x 256
``SliceView.update`` + canvas draw against re-creating the view (target < 50 ms per redraw).

Run by hand:  MPLBACKEND=Agg .venv/bin/python benchmarks/bench_report.py [--cases 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from medseg_xai import viz  # noqa: E402
from medseg_xai.reports import write_html  # noqa: E402
from medseg_xai.reports.sample import synthetic_result  # noqa: E402


class _Case:
    def __init__(self, case_id: str, rng: np.random.Generator) -> None:
        self.case_id = case_id
        self.image = rng.normal(size=(1, 48, 96, 96)).astype(np.float32)
        self.label = np.zeros((48, 96, 96), np.uint8)
        self.label[20:28, 30:50, 30:50] = 1
        self.prediction = np.roll(self.label, 4, axis=2)
        self.spacing = (3.0, 1.0, 1.0)


class _Cohort:
    """Gallery images for the benchmark: one 48 x 96 x 96 volume per requested case."""

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def load_case(self, case_id: str) -> _Case:
        return _Case(case_id, self.rng)


def bench_report(n_cases: int) -> None:
    result = synthetic_result(n_cases, seed=0, n_failed=max(1, n_cases // 100))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.html"
        t0 = time.perf_counter()
        write_html(result, path, cohort=_Cohort())
        elapsed = time.perf_counter() - t0
        size = path.stat().st_size
        t0 = time.perf_counter()
        result.to_json(Path(tmp) / "result.json")
        json_s = time.perf_counter() - t0
    print(
        f"report for {n_cases} cases ({len(result.subgroups)} subgroup rows, "
        f"{len(result.lesions)} lesion rows, gallery with images)"
    )
    print(f"  render time  {elapsed:6.2f} s   target < 10 s    ratio to target {elapsed / 10:.2f}")
    print(
        f"  file size    {size / 1e6:6.2f} MB  target < 15 MB   ratio to target {size / 15e6:.2f}"
    )
    print(f"  JSON write   {json_s:6.2f} s")


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
