"""Benchmark: ``evaluate_case`` against the equivalent sequence of MONAI metric calls.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_metrics.py [--cases 3] [--repeats 3] [--shape 128 256 256]

Each synthetic 3D case (anisotropic spacing) holds a few large and small ellipsoidal lesions far
apart; the prediction shifts / grows / shrinks them, misses a small one and adds a false
positive. For every case both implementations run in the same process on the same data; the
script prints the values side by side with their largest relative difference, then the timings
and the speed ratio MONAI / medseg-xai (best of ``--repeats`` runs each). MONAI gets its
one-hot float tensors prepared outside the timed region, which favours MONAI.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
    get_confusion_matrix,
)

from medseg_xai.metrics import evaluate_case

KEYS = ("dice", "jaccard", "precision", "recall", "hd95", "assd", "nsd")


def _ellipsoid(shape, centre, radii, spacing):
    """Bool mask of an ellipsoid given centre (voxels) and radii (mm), built in its bbox only."""
    mask = np.zeros(shape, bool)
    lo = [max(int(c - r / s) - 1, 0) for c, r, s in zip(centre, radii, spacing)]
    hi = [min(int(c + r / s) + 2, n) for c, r, s, n in zip(centre, radii, spacing, shape)]
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    inside = sum(((g - c) * s / r) ** 2 for g, c, s, r in zip(grids, centre, spacing, radii)) <= 1
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = inside
    return mask


def make_case(seed: int, shape=(128, 256, 256), spacing=(2.5, 0.8, 0.8), large_mm=(12.0, 20.0)):
    """Reference and prediction masks of one synthetic case."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    # lesions far apart: large ones (radius ``large_mm``, default 12-20 mm) and small ones (2-4 mm)
    slots = [(0.25, 0.25, 0.25), (0.7, 0.7, 0.3), (0.3, 0.75, 0.75), (0.75, 0.25, 0.7),
             (0.5, 0.5, 0.5), (0.15, 0.85, 0.15)]  # fmt: skip
    for i, frac in enumerate(slots):
        centre = [f * n for f, n in zip(frac, shape)]
        large = i < 3
        radii = rng.uniform(*large_mm, 3) if large else rng.uniform(2, 4, 3)
        ref |= _ellipsoid(shape, centre, radii, spacing)
        if i == 5:
            continue  # a small lesion the prediction misses
        shift = rng.uniform(-2, 2, 3) / np.asarray(spacing)
        scale = rng.uniform(0.85, 1.15, 3)
        pred |= _ellipsoid(shape, [c + d for c, d in zip(centre, shift)], radii * scale, spacing)
    pred |= _ellipsoid(shape, [0.9 * shape[0], 0.5 * shape[1], 0.9 * shape[2]], (5, 5, 5), spacing)
    return pred, ref, spacing


def monai_metrics(yp: torch.Tensor, yr: torch.Tensor, spacing, tolerance: float) -> dict:
    """The same metrics through MONAI's functional API (one foreground channel)."""
    sp = list(spacing)
    cm = get_confusion_matrix(yp, yr, include_background=True)
    return {
        "dice": compute_dice(yp, yr, include_background=True).item(),
        "jaccard": compute_iou(yp, yr, include_background=True).item(),
        "precision": compute_confusion_matrix_metric("precision", cm).item(),
        "recall": compute_confusion_matrix_metric("sensitivity", cm).item(),
        "hd95": compute_hausdorff_distance(
            yp, yr, include_background=True, percentile=95, spacing=sp
        ).item(),
        "assd": compute_average_surface_distance(
            yp, yr, include_background=True, symmetric=True, spacing=sp
        ).item(),
        "nsd": compute_surface_dice(
            yp, yr, [tolerance], include_background=True, spacing=sp
        ).item(),
    }


def _best_of(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 256, 256))
    parser.add_argument("--tolerance", type=float, default=2.0)
    parser.add_argument(
        "--large-mm",
        type=float,
        nargs=2,
        default=(12.0, 20.0),
        help="radius range of large lesions",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # both sides single-threaded: a like-for-like comparison
    warnings.filterwarnings("ignore")

    total_ours = total_monai = 0.0
    worst_rel = 0.0
    print(
        f"shape {tuple(args.shape)}, best of {args.repeats} runs, NSD tolerance {args.tolerance} mm"
    )
    for seed in range(args.cases):
        pred, ref, spacing = make_case(seed, tuple(args.shape), large_mm=tuple(args.large_mm))
        yp = torch.from_numpy(pred[None, None].astype(np.float32))
        yr = torch.from_numpy(ref[None, None].astype(np.float32))
        t_ours, ours = _best_of(
            lambda p=pred, r=ref, s=spacing: evaluate_case(p, r, s, tolerance=args.tolerance),
            args.repeats,
        )
        t_monai, theirs = _best_of(
            lambda a=yp, b=yr, s=spacing: monai_metrics(a, b, s, args.tolerance), args.repeats
        )
        total_ours += t_ours
        total_monai += t_monai
        print(
            f"\ncase {seed}: spacing {spacing}, ref {int(ref.sum())} voxels, pred {int(pred.sum())}"
        )
        print(f"  {'metric':<10}{'medseg-xai':>16}{'MONAI':>16}{'rel diff':>12}")
        for key in KEYS:
            a, b = ours[key], theirs[key]
            rel = abs(a - b) / max(abs(b), 1e-12)
            worst_rel = max(worst_rel, rel)
            print(f"  {key:<10}{a:>16.7g}{b:>16.7g}{rel:>12.1e}")
        print(
            f"  time: medseg-xai {t_ours * 1e3:8.1f} ms   MONAI {t_monai * 1e3:8.1f} ms   "
            f"ratio {t_monai / t_ours:6.1f}x"
        )
    print(
        f"\nall cases: medseg-xai {total_ours:.3f} s, MONAI {total_monai:.3f} s, "
        f"speed ratio {total_monai / total_ours:.1f}x; largest relative difference {worst_rel:.1e} "
        f"(MONAI reports float32)"
    )


if __name__ == "__main__":
    main()
