"""Responsiveness of the CaseExplorer (run by hand: ``python benchmarks/bench_widgets.py``).

Measures, on a 3D case whose axial slice is 256x256, oriented from an affine (letters, scale
bar, legend strip with colour bars), with every overlay on (reference and prediction outlines,
error map, probability, attribution heatmap, selected-lesion outline, crosshair):

1. the median time from a slice change (slider or mouse wheel) to new PNG bytes in the plane
   images (target < 50 ms), with the crosshair on (all three planes redraw) and off (one plane);
2. the median time from a click on a plane (crosshair moves, all three planes redraw) to new
   PNG bytes (target < 80 ms);
3. the median time to switch to an explanation already in the cache (target < 100 ms);

and, as the reference in the same run, the time to draw the same view from scratch with
``viz.three_plane`` (a new figure per change, which is what the persistent figures avoid).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402

from medseg_xai import viz  # noqa: E402
from medseg_xai.adapters import SegmentationAdapter  # noqa: E402
from medseg_xai.widgets import CaseExplorer, ExplorerOptions  # noqa: E402

REDRAW_TARGET_S = 0.050
CLICK_TARGET_S = 0.080
CACHED_TARGET_S = 0.100


def _case(shape: tuple[int, int, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    g = np.indices(shape)
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    for c, r in (((shape[0] // 2, 80, 90), 14), ((shape[0] // 2, 170, 160), 6)):
        ball = sum((gi - ci) ** 2 for gi, ci in zip(g, c)) <= r * r
        ref |= ball
    pred |= sum((gi - ci) ** 2 for gi, ci in zip(g, (shape[0] // 2, 82, 92))) <= 13 ** 2
    pred |= sum((gi - ci) ** 2 for gi, ci in zip(g, (shape[0] // 3, 60, 200))) <= 5 ** 2
    img = rng.normal(100, 10, shape).astype(np.float32) + 25 * ref
    return img, ref, pred


def _median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=32, help="slices along the axial axis")
    parser.add_argument("--repeats", type=int, default=25)
    args = parser.parse_args()
    shape = (args.depth, 256, 256)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,),
               num_res_units=0)
    adapter = SegmentationAdapter(net, spatial_dims=3)
    img, ref, pred = _case(shape)
    t0 = time.perf_counter()
    affine = np.zeros((4, 4))  # the demo's layout: stored axis 0 is the axial slice index
    affine[0, 2], affine[1, 1], affine[2, 0], affine[3, 3] = 0.9, 0.9, 3.0, 1.0
    ex = CaseExplorer(adapter, img, ref, pred, (3.0, 0.9, 0.9), affine=affine, case_id="bench",
                      options=ExplorerOptions(background=False))
    print(f"case {shape}, explorer built in {time.perf_counter() - t0:.2f} s")

    # all overlays on, with an attribution heatmap
    ex.select_lesion("ref-2")
    ex.method.value = "gradcam"
    ex.run_explanation()
    ex.method.value = "saliency"
    ex.run_explanation()
    assert ex.last_error is None, ex.status.value
    ex.toggles["error"].value = True
    ex.toggles["probability"].value = True
    assert all(ex.state.toggles[k] for k in ("reference", "prediction", "error", "heatmap",
                                             "probability", "lesion"))
    assert ex.renderer.highlight is not None and ex.geometry.known

    results = {}
    for crosshair in (True, False):
        ex.toggles["crosshair"].value = crosshair
        times = []
        for i in range(args.repeats):
            before = bytes(ex.plane_images[0].value)
            k = (ex.state.center[0] + 1 + i % 3) % shape[0]
            t = time.perf_counter()
            ex.sliders[0].value = k
            times.append(time.perf_counter() - t)
            assert bytes(ex.plane_images[0].value) != before
        results[crosshair] = _median_ms(times)
    wheel = []
    for i in range(args.repeats):
        t = time.perf_counter()
        ex.on_plane_event(0, {"type": "wheel", "deltaY": 1 if i % 2 == 0 else -1})
        wheel.append(time.perf_counter() - t)
    wheel_ms = _median_ms(wheel)

    clicks = []
    pl = ex.renderer.planes[0]
    height = pl.fig.get_figheight() * pl.fig.dpi
    width = pl.fig.get_figwidth() * pl.fig.dpi
    for i in range(args.repeats):
        before = ex.state.center[1:]
        x, y = width * (0.3 + 0.4 * (i % 2)), height * (0.3 + 0.02 * i)
        t = time.perf_counter()
        ex.on_plane_event(0, {"type": "click", "dataX": x, "dataY": y})
        clicks.append(time.perf_counter() - t)
        assert ex.state.center[1:] != before
    click_ms = _median_ms(clicks)

    switch = []
    for i in range(args.repeats):
        method = "gradcam" if i % 2 == 0 else "saliency"
        if ex.method.value == method:
            method = "saliency" if method == "gradcam" else "gradcam"
        calls = ex.cache.misses
        t = time.perf_counter()
        ex.method.value = method
        switch.append(time.perf_counter() - t)
        assert ex.explanation.method == method and ex.cache.misses == calls
    cached_ms = _median_ms(switch)

    # reference: a new three-plane figure per change (no persistent artists)
    heat = ex.explanation.attribution
    scratch = []
    for i in range(max(5, args.repeats // 3)):
        c = ((ex.state.center[0] + i) % shape[0], ex.state.center[1], ex.state.center[2])
        t = time.perf_counter()
        fig = viz.three_plane(img, center=c, ref=ref, pred=pred, error=True, heatmap=heat,
                              spacing=(3.0, 0.9, 0.9))
        viz.fig_to_png_bytes(fig)
        scratch.append(time.perf_counter() - t)
    scratch_ms = _median_ms(scratch)

    print(f"{'measure':<52}{'median ms':>10}{'target ms':>10}{'ratio':>8}")
    rows = [
        ("slice change, crosshair on (3 planes redraw)", results[True], REDRAW_TARGET_S),
        ("slice change, crosshair off (1 plane redraws)", results[False], REDRAW_TARGET_S),
        ("mouse-wheel step, crosshair off", wheel_ms, REDRAW_TARGET_S),
        ("click to move the crosshair (3 planes redraw)", click_ms, CLICK_TARGET_S),
        ("switch to a cached explanation (3 planes)", cached_ms, CACHED_TARGET_S),
    ]
    for name, ms, target in rows:
        print(f"{name:<52}{ms:>10.1f}{1000 * target:>10.0f}{ms / (1000 * target):>8.2f}")
    print(f"{'reference: viz.three_plane from scratch + PNG':<52}{scratch_ms:>10.1f}")
    print(f"speed-up of a persistent redraw (crosshair on) over drawing from scratch: "
          f"{scratch_ms / results[True]:.1f}x")


if __name__ == "__main__":
    main()
