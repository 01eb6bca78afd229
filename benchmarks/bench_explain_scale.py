"""Benchmark: explanations and the miss analysis of a large volume through sliding windows.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_explain_scale.py --device cpu --shape 128 192 192
    .venv/bin/python benchmarks/bench_explain_scale.py --device cuda --shape 192 256 256
    .venv/bin/python benchmarks/bench_explain_scale.py --device cpu --shape 48 64 64 --whole

Network: a MONAI 3D ``UNet``. ``--net large`` (the default on CUDA) is the issue's network: five
levels of 32, 64, 128, 256, 320 channels, two residual units, a 128^3 window and
``sw_batch_size=4``; ``--net small`` (the default on CPU) has four levels of 16-128 channels,
one residual unit and a 48^3 window. Weights are random (seeded): time and memory do not
depend on them. The image is smooth noise with a faint sphere (the lesion, radius 6 voxels).

For each work (forward pass, Grad-CAM, saliency, integrated gradients with 32 steps,
``explain_miss`` with its default probes and methods) the script prints the wall time, the
peak GPU memory (``torch.cuda.max_memory_allocated``) and the peak host memory above the
resident size before the work (a sampling thread, 2 ms). ``--whole`` adds the whole-volume
computation (every window's backward pass kept, the probes run on every window) and prints the
attribution correlation and the largest probe difference between the two.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
import torch
from monai.networks.nets import UNet

import medseg_xai.explain.captum_methods as cm
import medseg_xai.explain.miss as miss_mod
from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.explain.core import explain
from medseg_xai.explain.miss import MissSettings, explain_miss
from medseg_xai.targets import region

NETS = {
    "large": ({"channels": (32, 64, 128, 256, 320), "strides": (2, 2, 2, 2), "num_res_units": 2},
              128, 4),
    "small": ({"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 1}, 48, 4),
}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn, device: str):
    """(result, seconds, peak GPU bytes, peak host bytes above the start)."""
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
    finally:
        dt = time.perf_counter() - t0
        stop.set()
        t.join()
    gpu = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    return out, dt, gpu, max(peak[0], _rss()) - base


def make_case(shape, seed=0):
    """(image (1, *shape), lesion mask): smooth noise and a faint sphere."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    img = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 2.0) * 4
    centre = [int(s * f) for s, f in zip(shape, (0.5, 0.4, 0.6))]
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    mask = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= 36
    img[mask] += 0.3
    return img[None], mask


def _row(name, dt, gpu, host):
    print(f"{name:<34}{dt:>9.2f} s{gpu / 2**30:>10.2f} GB{host / 2**30:>10.2f} GB", flush=True)


def run(args) -> None:
    torch.manual_seed(0)
    kw, roi, swb = NETS[args.net]
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, **kw).eval().to(args.device)
    sw = {"roi_size": (roi,) * 3, "sw_batch_size": swb, "overlap": 0.25}
    ad = SegmentationAdapter(net, sliding_window=sw, device=args.device, divisor=None)
    img, mask = make_case(tuple(args.shape))
    target = region(1, mask, margin=True)
    layer = "model.0"
    print(f"device {args.device}, shape {tuple(args.shape)} ({np.prod(args.shape) / 1e6:.1f} M "
          f"voxels), net {args.net}, window {roi}^3, sw_batch_size {swb}, threads "
          f"{torch.get_num_threads()}")
    print(f"{'work':<34}{'time':>11}{'peak GPU':>13}{'peak host':>13}")
    x = torch.from_numpy(img[None]).to(args.device)
    with torch.no_grad():
        _, dt, gpu, host = measure(lambda: ad.logits(x), args.device)
    _row("forward pass", dt, gpu, host)
    works = [
        ("gradcam", lambda: explain(ad, img, target, "gradcam", layer=layer)),
        ("saliency", lambda: explain(ad, img, target, "saliency")),
        ("integrated_gradients (32, bs 4)",
         lambda: explain(ad, img, target, "integrated_gradients", n_steps=32, batch_size=4)),
    ]
    maps = {}
    for name, fn in works:
        if name.split()[0] not in args.works:
            continue
        e, dt, gpu, host = measure(fn, args.device)
        maps[name] = e.attribution
        _row(name, dt, gpu, host)
    if "explain_miss" in args.works:
        ref = mask.astype(np.uint8)
        a, dt, gpu, host = measure(
            lambda: explain_miss(ad, img, ref, "ref-1",
                                 settings=MissSettings(seed=0, layer=layer)), args.device)
        _row("explain_miss (default)", dt, gpu, host)
        print(f"  status {a.status}, causes {a.causes}, {a.settings['n_model_images']} probe "
              f"images")
    if args.whole:
        whole(args, ad, img, target, layer, maps, mask)


def whole(args, ad, img, target, layer, maps, mask) -> None:
    """The same works with the whole-volume backward pass and whole-volume probes."""
    print("\nwhole-volume computation (the reference)")
    saved = cm.WINDOWED_METHODS
    cm.WINDOWED_METHODS = ()
    miss_mod.LOCAL_PROBES = False
    try:
        for name, fn in [
            ("saliency", lambda: explain(ad, img, target, "saliency")),
            ("integrated_gradients (32, bs 4)",
             lambda: explain(ad, img, target, "integrated_gradients", n_steps=32, batch_size=4)),
        ]:
            if name not in maps:
                continue
            e, dt, gpu, host = measure(fn, args.device)
            _row(name, dt, gpu, host)
            r = np.corrcoef(e.attribution.ravel(), maps[name].ravel())[0, 1]
            print(f"  attribution correlation windowed / whole: {r:.7f}")
        if "explain_miss" in args.works:
            ref = mask.astype(np.uint8)
            b, dt, gpu, host = measure(
                lambda: explain_miss(ad, img, ref, "ref-1",
                                     settings=MissSettings(seed=0, layer=layer)), args.device)
            _row("explain_miss (default)", dt, gpu, host)
            cm.WINDOWED_METHODS = saved
            miss_mod.LOCAL_PROBES = True
            a = explain_miss(ad, img, ref, "ref-1", settings=MissSettings(seed=0, layer=layer))
            diff = np.abs(a.probes["mean_prob"].to_numpy() - b.probes["mean_prob"].to_numpy())
            print(f"  causes local {a.causes} / whole {b.causes}; largest probe difference "
                  f"{diff.max():.2e}")
    finally:
        cm.WINDOWED_METHODS = saved
        miss_mod.LOCAL_PROBES = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 192, 192))
    parser.add_argument("--net", choices=list(NETS), default=None)
    parser.add_argument("--works", nargs="+",
                        default=["gradcam", "saliency", "integrated_gradients", "explain_miss"])
    parser.add_argument("--whole", action="store_true", help="also the whole-volume reference")
    args = parser.parse_args()
    if args.net is None:
        args.net = "large" if args.device == "cuda" else "small"
    run(args)


if __name__ == "__main__":
    main()
