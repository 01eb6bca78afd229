"""Benchmark: ``evaluate_case`` against MONAI, MedPy and DeepMind surface-distance, per size class.

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_metrics.py [--cases 2] [--repeats 3] [--shape 128 256 256]
        [--classes small medium large organ ct] [--no-peers] [--memory]

Size classes (3D, spacing 2.5 x 0.8 x 0.8 mm): ``small`` lesions of radius 2-4 mm,
``medium`` 12-20 mm, ``large`` 35-50 mm (three of each size far apart, plus three small ones,
a missed lesion and a false positive), and ``organ``: one ellipsoid of about 1.5 litres whose
prediction is shifted and rescaled by a few mm. ``ct`` is the organ pair (a liver-sized
ellipsoid, about 1.5 litres) on a CT grid whatever ``--shape`` says: 300 x 512 x 512 voxels
(78.6 M) of 1 x 0.8 x 0.8 mm. For every case all implementations run in the
same process on the same data; the script prints the values side by side with their largest
relative difference, then the best-of-``--repeats`` times and the speed ratio per size class.

- MONAI: the same metrics through its functional API (Dice, IoU, precision, recall, HD95, ASSD,
  NSD), one-hot float tensors prepared outside the timed region, which favours MONAI; compared
  with ``evaluate_case`` under the default convention (``"monai"``).
- MedPy (``medpy.metric.binary.hd``, ``hd95``, ``assd``): compared with
  ``evaluate_case(convention="medpy")``.
- DeepMind surface-distance (robust HD at 100 and 95, surface Dice, mean of the two average
  distances): compared with ``evaluate_case(convention="deepmind")``.

``--memory`` adds the peak resident memory of each implementation above the process baseline,
measured in a forked child per run with a sampling thread (1 ms), so what one run frees cannot
hide another's peak.
"""

from __future__ import annotations

import argparse
import os
import threading
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
SPACING = (2.5, 0.8, 0.8)
CLASSES = {"small": (2.0, 4.0), "medium": (12.0, 20.0), "large": (35.0, 50.0), "organ": None,
           "ct": None}
# The CT class: a 512 x 512 x 300 abdominal CT (0.8 x 0.8 x 1 mm), axes (D, H, W) here.
CT_SHAPE = (300, 512, 512)
CT_SPACING = (1.0, 0.8, 0.8)


def _ellipsoid(shape, centre, radii, spacing):
    """Bool mask of an ellipsoid given centre (voxels) and radii (mm), built in its bbox only."""
    mask = np.zeros(shape, bool)
    lo = [max(int(c - r / s) - 1, 0) for c, r, s in zip(centre, radii, spacing)]
    hi = [min(int(c + r / s) + 2, n) for c, r, s, n in zip(centre, radii, spacing, shape)]
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    inside = sum(((g - c) * s / r) ** 2 for g, c, s, r in zip(grids, centre, spacing, radii)) <= 1
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = inside
    return mask


def make_case(seed: int, shape=(128, 256, 256), spacing=SPACING, large_mm=(12.0, 20.0)):
    """Reference and prediction masks of one synthetic lesion case."""
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, bool)
    pred = np.zeros(shape, bool)
    # lesions far apart: large ones (radius ``large_mm``) and small ones (2-4 mm)
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


def make_organ(seed: int, shape=(128, 256, 256), spacing=SPACING):
    """An organ-sized ellipsoid (about 1.5 litres) and a prediction off by a few mm."""
    rng = np.random.default_rng(seed)
    centre = [n / 2 for n in shape]
    radii = np.array([60.0, 75.0, 80.0]) * rng.uniform(0.97, 1.03, 3)
    ref = _ellipsoid(shape, centre, radii, spacing)
    shift = rng.uniform(-3, 3, 3) / np.asarray(spacing)
    pred = _ellipsoid(shape, [c + d for c, d in zip(centre, shift)],
                      radii * rng.uniform(0.95, 1.05, 3), spacing)
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


def medpy_metrics(pred, ref, spacing) -> dict:
    from medpy.metric import binary

    return {
        "hd": float(binary.hd(pred, ref, spacing)),
        "hd95": float(binary.hd95(pred, ref, spacing)),
        "assd": float(binary.assd(pred, ref, spacing)),
    }


def deepmind_metrics(pred, ref, spacing, tolerance: float) -> dict:
    import surface_distance as sd

    d = sd.compute_surface_distances(ref, pred, list(spacing))
    return {
        "hd": float(sd.compute_robust_hausdorff(d, 100)),
        "hd95": float(sd.compute_robust_hausdorff(d, 95)),
        "masd": float(np.mean(sd.compute_average_surface_distance(d))),
        "nsd": float(sd.compute_surface_dice_at_tolerance(d, tolerance)),
    }


def _best_of(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_mb(fn) -> float:
    """Peak resident memory (MB) of ``fn()`` above the baseline, in a forked child."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        base = _rss()
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], _rss())
                time.sleep(0.001)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        fn()
        stop.set()
        t.join()
        peak[0] = max(peak[0], _rss())
        os.write(w, str((peak[0] - base) / 2**20).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        value = float(f.read() or "nan")
    os.waitpid(pid, 0)
    return value


def _compare(ours: dict, theirs: dict, label: str) -> float:
    worst = 0.0
    print(f"  {'metric':<10}{'medseg-xai':>16}{label:>16}{'rel diff':>12}")
    for key, b in theirs.items():
        a = ours[key]
        rel = abs(a - b) / max(abs(b), 1e-12)
        worst = max(worst, rel)
        print(f"  {key:<10}{a:>16.7g}{b:>16.7g}{rel:>12.1e}")
    return worst


def _run_case(pred, ref, sp, args, tot: dict, mem: dict, worst: dict) -> None:
    """Time (and compare) every implementation on one case, adding to the class totals."""
    tol = args.tolerance
    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yr = torch.from_numpy(ref[None, None].astype(np.float32))

    def ours(convention="monai"):
        return evaluate_case(pred, ref, sp, tolerance=tol, convention=convention)

    t_o, v_o = _best_of(ours, args.repeats)
    t_m, v_m = _best_of(lambda: monai_metrics(yp, yr, sp, tol), args.repeats)
    worst["monai"] = max(worst["monai"], _compare(v_o, v_m, "MONAI"))
    print(f"  time: medseg-xai {t_o * 1e3:8.1f} ms   MONAI {t_m * 1e3:8.1f} ms   "
          f"ratio {t_m / t_o:6.1f}x")
    tot["ours"] += t_o
    tot["monai"] += t_m
    if args.memory:
        m_o = peak_memory_mb(ours)
        m_m = peak_memory_mb(lambda: monai_metrics(yp, yr, sp, tol))
        mem["ours"] = max(mem["ours"], m_o)
        mem["monai"] = max(mem["monai"], m_m)
        print(f"  peak memory above baseline: medseg-xai {m_o:7.1f} MB   MONAI {m_m:7.1f} MB")
    if args.no_peers:
        return
    t_om, v_om = _best_of(lambda: ours("medpy"), 1)
    t_p, v_p = _best_of(lambda: medpy_metrics(pred, ref, sp), 1)
    worst["medpy"] = max(worst["medpy"], _compare(v_om, v_p, "MedPy"))
    print(f"  time: medseg-xai(medpy) {t_om * 1e3:8.1f} ms   MedPy {t_p * 1e3:8.1f} ms   "
          f"ratio {t_p / t_om:6.1f}x")
    t_od, v_od = _best_of(lambda: ours("deepmind"), 1)
    t_d, v_d = _best_of(lambda: deepmind_metrics(pred, ref, sp, tol), 1)
    worst["deepmind"] = max(worst["deepmind"], _compare(v_od, v_d, "DeepMind"))
    print(f"  time: medseg-xai(deepmind) {t_od * 1e3:8.1f} ms   DeepMind {t_d * 1e3:8.1f} ms"
          f"   ratio {t_d / t_od:6.1f}x")
    tot["ours_medpy"] += t_om
    tot["medpy"] += t_p
    tot["ours_dm"] += t_od
    tot["dm"] += t_d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(128, 256, 256))
    parser.add_argument("--tolerance", type=float, default=2.0)
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=list(CLASSES))
    parser.add_argument("--no-peers", action="store_true", help="MONAI only (skip MedPy, DeepMind)")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    args = parser.parse_args()
    torch.set_num_threads(1)  # every side single-threaded: a like-for-like comparison
    warnings.filterwarnings("ignore")
    shape = tuple(args.shape)
    print(f"shape {shape}, spacing {SPACING} mm, best of {args.repeats} runs, "
          f"NSD tolerance {args.tolerance} mm")
    summary = []
    for cls in args.classes:
        tot = {"ours": 0.0, "monai": 0.0, "ours_medpy": 0.0, "medpy": 0.0, "ours_dm": 0.0, "dm": 0.0}
        mem = {"ours": 0.0, "monai": 0.0}
        worst = {"monai": 0.0, "medpy": 0.0, "deepmind": 0.0}
        for seed in range(args.cases):
            if cls == "ct":
                case = make_organ(seed, CT_SHAPE, CT_SPACING)
            elif CLASSES[cls] is None:
                case = make_organ(seed, shape)
            else:
                case = make_case(seed, shape, large_mm=CLASSES[cls])
            print(f"\n[{cls}] case {seed}: ref {int(case[1].sum())} voxels "
                  f"({case[1].sum() * np.prod(case[2]) / 1e6:.3f} l), pred {int(case[0].sum())}")
            _run_case(*case, args, tot, mem, worst)
        summary.append((cls, tot, mem, worst))

    print("\nsize class   MONAI ratio   MedPy ratio   DeepMind ratio   peak MB ours/MONAI   "
          "largest rel diff (MONAI/MedPy/DeepMind)")
    for cls, tot, mem, worst in summary:
        r_p = tot["medpy"] / tot["ours_medpy"] if tot["ours_medpy"] else float("nan")
        r_d = tot["dm"] / tot["ours_dm"] if tot["ours_dm"] else float("nan")
        m = f"{mem['ours']:.0f}/{mem['monai']:.0f}" if args.memory else "-"
        print(f"{cls:<12}{tot['monai'] / tot['ours']:>10.1f}x{r_p:>13.1f}x{r_d:>16.1f}x"
              f"{m:>21}   {worst['monai']:.1e} / {worst['medpy']:.1e} / {worst['deepmind']:.1e}")
    print("(MONAI reports float32: relative differences up to ~1e-7 on overlap ratios are its "
          "rounding)")


if __name__ == "__main__":
    main()
