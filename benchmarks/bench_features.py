"""Benchmark: cost of the audit's feature extraction (feature shift, ood_score).

Run by hand (not a test)::

    .venv/bin/python benchmarks/bench_features.py [--cases 40] [--repeats 3] [--seed 0]

On a demo cohort (``medseg_xai.demo.make_cohort``) with the bundled 3D UNet, the script audits
the cohort serially with ``feature_layer=None`` (no features) and ``feature_layer="auto"``
(pooled bottleneck features through a forward hook in the same inference pass), in
``--repeats`` interleaved rounds whose order alternates, and prints

- the inference ratio: the summed per-case ``inference_s`` with features over without (the
  hook's cost inside the forward pass; target <= 1.2),
- the whole-audit wall-clock ratio (adds the one tracing pass that picks the layer, the
  per-layer weight table and the feature-shift statistics: leave-one-out Ledoit-Wolf fits and
  permutation tests),

each as the median of the per-round paired ratios, and, on one case, the forward pass with and
without the hook (``--passes`` interleaved pairs; median paired ratio): the hook's own cost
free of the audit's noise. Other load on the machine adds noise to
both; the paired, interleaved design keeps the ratio meaningful.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=20, help="paired forward passes")
    args = parser.parse_args()

    import medseg_xai as mx
    from medseg_xai.audit import audit

    with tempfile.TemporaryDirectory() as tmp:
        manifest = mx.demo.make_cohort(Path(tmp) / "cohort", n_cases=args.cases, seed=args.seed)
        cohort = mx.Cohort.from_csv(manifest)
        adapter = mx.demo.load_model()
        kw = {"strata": ["device", "site"], "adapter": adapter, "progress": False,
              "n_resamples": args.resamples, "workers": 1}
        audit(cohort, feature_layer=None, **kw)  # warm-up: imports, allocator, caches
        runs: dict[str, list[tuple[float, float]]] = {"none": [], "auto": []}
        for r in range(args.repeats):
            order = ("none", "auto") if r % 2 == 0 else ("auto", "none")
            for name in order:
                t = time.perf_counter()
                res = audit(cohort, feature_layer=None if name == "none" else "auto", **kw)
                wall = time.perf_counter() - t
                runs[name].append((float(res.cases["inference_s"].sum()), wall))
                print(f"round {r + 1} {name:>4}: inference {runs[name][-1][0]:.2f} s, "
                      f"wall {wall:.2f} s", flush=True)
        inf = [a[0] / b[0] for a, b in zip(runs["auto"], runs["none"])]
        wall = [a[1] / b[1] for a, b in zip(runs["auto"], runs["none"])]
        print(f"\n{args.cases} cases, layer {res.settings.get('feature_layer')!r}")
        print(f"inference with / without features: median paired ratio "
              f"{statistics.median(inf):.3f} (rounds {', '.join(f'{x:.3f}' for x in inf)}; "
              "target <= 1.2)")
        print(f"whole audit with / without features: median paired ratio "
              f"{statistics.median(wall):.3f} (rounds {', '.join(f'{x:.3f}' for x in wall)})")
        print(f"forward pass with / without the hook (one case, {args.passes} pairs): median "
              f"paired ratio {_hook_ratio(adapter, cohort, args.passes):.3f}")


def _hook_ratio(adapter, cohort, passes: int) -> float:
    import torch

    from medseg_xai.explain.features import FeatureHook, feature_layer

    image = cohort.load_case(cohort.case_ids[0]).image
    layer = feature_layer(adapter, image.shape)
    ratios = []
    with torch.no_grad():
        adapter.probabilities(image)
        for i in range(passes):
            times = {}
            for hooked in ((False, True) if i % 2 == 0 else (True, False)):
                t = time.perf_counter()
                if hooked:
                    with FeatureHook(adapter, layer):
                        adapter.probabilities(image)
                else:
                    adapter.probabilities(image)
                times[hooked] = time.perf_counter() - t
            ratios.append(times[True] / times[False])
    return statistics.median(ratios)


if __name__ == "__main__":
    main()
