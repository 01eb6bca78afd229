"""Explanation cost against plain forward/backward passes (3D MONAI UNet, 96^3, CPU).

Run by hand::

    .venv/bin/python benchmarks/bench_explain.py [--size 96] [--repeats 2]

Prints, in one run:

- Grad-CAM time / (one forward + one backward)            target <= 1.3
- Integrated Gradients (32 steps) / (32 forward+backward)  target <= 1.15
- peak memory of IG with batch_size=4 / one batch-of-4 forward+backward   target <= 1.5

The reference forward+backward is what a user would write by hand: ``target(model(x))``
followed by ``.backward()`` with the model as found (parameters requiring gradients). Each
memory figure is the peak RSS growth (``ru_maxrss`` minus the resident size after building the
model and the input) of a fresh subprocess, because tracemalloc does not see torch's allocator.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def _build(size: int):
    import numpy as np
    from monai.networks.nets import UNet

    import medseg_xai as mx

    torch.manual_seed(0)
    model = UNet(3, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2), num_res_units=1)
    adapter = mx.SegmentationAdapter(model)
    image = np.random.default_rng(0).random((1, size, size, size)).astype(np.float32)
    ref = np.zeros((size,) * 3, bool)
    c = size // 2
    ref[c - 8 : c + 8, c - 8 : c + 8, c - 8 : c + 8] = True
    target = mx.targets.reference(1, ref)
    return mx, model, adapter, image, target


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _fwd_bwd(model, target, x) -> None:
    x = x.clone().requires_grad_(True)
    target(model(x)).sum().backward()
    model.zero_grad(set_to_none=True)


def child(task: str, size: int, repeats: int, warmup: bool) -> dict:
    mx, model, adapter, image, target = _build(size)
    model.eval()
    x1 = torch.from_numpy(image)[None]
    x4 = x1.repeat(4, 1, 1, 1, 1)
    layer = adapter.default_layer(image.shape)  # traced once, cached like in real use

    jobs = {
        "fwd_bwd": lambda: _fwd_bwd(model, target, x1),
        "fwd_bwd_x4": lambda: _fwd_bwd(model, target, x4),
        "fwd_bwd_x32_single": lambda: [_fwd_bwd(model, target, x1) for _ in range(32)],
        "gradcam": lambda: mx.explain(adapter, image, target, "gradcam", layer=layer),
        "ig32_bs4": lambda: mx.explain(adapter, image, target, "integrated_gradients",
                                       n_steps=32, batch_size=4),
    }
    run = jobs[task]
    if warmup:  # one-off kernel/allocator set-up must not count in timings
        _fwd_bwd(model, target, x1)
        if task == "gradcam":
            run()
    base = _rss_mib()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"task": task, "seconds": min(times), "peak_delta_mib": peak - base}


def _spawn(task: str, size: int, repeats: int, warmup: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", task, "--size", str(size),
           "--repeats", str(repeats)] + (["--warmup"] if warmup else [])
    out = subprocess.run(
        cmd,
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", default=None)
    ap.add_argument("--warmup", action="store_true")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.size, args.repeats, args.warmup)))
        return

    print(f"3D MONAI UNet (8,16,32,64), input 1x{args.size}^3, CPU, torch threads="
          f"{torch.get_num_threads()}; each figure from a fresh subprocess")
    # timings: warmed-up process, minimum over repeats
    r = {t: _spawn(t, args.size, args.repeats, True) for t in ("fwd_bwd", "gradcam")}
    r.update({t: _spawn(t, args.size, 1, True) for t in ("fwd_bwd_x32_single", "ig32_bs4")})
    # memory: a fresh process, no warm-up, one run
    m = {t: _spawn(t, args.size, 1, False) for t in ("ig32_bs4", "fwd_bwd_x4")}
    gc = r["gradcam"]["seconds"] / r["fwd_bwd"]["seconds"]
    ig = r["ig32_bs4"]["seconds"] / r["fwd_bwd_x32_single"]["seconds"]
    mem = m["ig32_bs4"]["peak_delta_mib"] / m["fwd_bwd_x4"]["peak_delta_mib"]
    for t, v in r.items():
        print(f"  time   {t:<20} {v['seconds']:8.2f} s")
    for t, v in m.items():
        print(f"  memory {t:<20} peak RSS growth {v['peak_delta_mib']:8.1f} MiB")
    print(f"Grad-CAM / (forward+backward):             {gc:5.2f}   (target <= 1.30)")
    print(f"IG 32 steps (batch_size=4) / 32 x fwd+bwd: {ig:5.2f}   (target <= 1.15)")
    print(f"IG peak memory (batch_size=4) / batch-of-4 fwd+bwd: {mem:5.2f}   (target <= 1.50)")


if __name__ == "__main__":
    main()
