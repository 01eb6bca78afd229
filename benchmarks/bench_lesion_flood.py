"""Peak memory of lesion matching under a flood of lesions (issue 28).

A 64^3 case with 10,000 reference lesions and 9,000 predicted components (single voxels on a
grid with gaps, 8,000 of them shared), matched with ``matching="hungarian"`` and "overlap".
Each measurement runs in a fresh interpreter (peak RSS from ``resource.getrusage``) and is
printed against the same interpreter's peak after building the masks (the reference), so the
figure is the matching's own memory. Before issue 28 the dense (n_ref x n_pred) tables peaked
at 3.8 GB for this case.

Run: ``python benchmarks/bench_lesion_flood.py``
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from medseg_xai.metrics.lesions import lesions

rng = np.random.default_rng(0)
slots = np.stack(np.meshgrid(*[np.arange(0, 64, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
pick = rng.permutation(len(slots))
ref = np.zeros((64, 64, 64), bool)
pred = np.zeros((64, 64, 64), bool)
r = slots[pick[:10_000]]
p = np.concatenate([slots[pick[:8_000]], slots[pick[10_000:11_000]]])
ref[tuple(r.T)] = True
pred[tuple(p.T)] = True
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
df = lesions(pred, ref, spacing=(1.0, 1.0, 1.0), matching=sys.argv[1])
elapsed = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"matching": sys.argv[1], "base_mb": base / 1024, "peak_mb": peak / 1024,
                  "seconds": elapsed, "rows": len(df),
                  "detected": int((df["status"] == "detected").sum()),
                  "false_positive": int((df["status"] == "false_positive").sum())}))
"""


def main() -> None:
    for matching in ("hungarian", "overlap"):
        out = subprocess.run([sys.executable, "-c", CHILD, matching], capture_output=True,
                             text=True, check=True)
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        rec["matching_mb"] = rec["peak_mb"] - rec["base_mb"]
        rec["peak_over_reference"] = rec["peak_mb"] / rec["base_mb"]
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rec.items()}))


if __name__ == "__main__":
    main()
