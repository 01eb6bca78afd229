"""Start-up cost: ``import medseg_xai``, ``import medseg_xai.metrics``, ``medseg-xai --help``.

Each statement runs in a fresh interpreter (best of ``--rounds``); the reference is a bare
``python -c pass`` and ``import pandas`` (the floor any pandas-based toolkit pays), measured in the
same run. Peak RSS comes from ``resource.getrusage(RUSAGE_SELF)`` in a second run of each
statement, which also lists the heavy modules (torch, captum, matplotlib, monai) each statement loads are listed.

Targets (issue 13): ``medseg-xai --help`` < 0.5 s; ``import medseg_xai.metrics`` loads no torch,
captum or matplotlib.

    MPLBACKEND=Agg python benchmarks/bench_startup.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "captum", "matplotlib", "monai")

STATEMENTS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import pandas": [sys.executable, "-c", "import pandas"],
    "import medseg_xai": [sys.executable, "-c", "import medseg_xai"],
    "import medseg_xai.metrics": [sys.executable, "-c", "import medseg_xai.metrics"],
    "metrics.dice on 8^3": [sys.executable, "-c",
                            "import numpy as np, medseg_xai as mx\n"
                            "a = np.zeros((8, 8, 8), bool); a[2:5] = True\n"
                            "mx.metrics.dice(a, a)"],
    "medseg-xai --help": [sys.executable, "-m", "medseg_xai", "--help"],
    "import medseg_xai.audit": [sys.executable, "-c", "import medseg_xai.audit"],
    "import medseg_xai.explain (torch, captum)": [sys.executable, "-c",
                                                  "import medseg_xai.explain"],
}


def _time(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


_PROBE = """
import contextlib, io, resource, runpy, sys
with contextlib.redirect_stdout(io.StringIO()):
    try:
        if sys.argv[1] == "-m":
            sys.argv = ["medseg-xai", *sys.argv[3:]]
            runpy.run_module("medseg_xai", run_name="__main__")
        else:
            exec(compile(sys.argv[2], "<statement>", "exec"), {})
    except SystemExit:
        pass
heavy = sorted(m for m in sys.modules if m in HEAVY)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, *heavy)
"""


def _probe(cmd: list[str], env: dict[str, str]) -> tuple[float, list[str]]:
    """Peak RSS (MB) and heavy modules loaded by one statement, in its own interpreter."""
    code = f"HEAVY = {HEAVY!r}" + _PROBE
    out = subprocess.run([sys.executable, "-c", code, *cmd[1:]], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[0]), out[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    rows = []
    for label, cmd in STATEMENTS.items():
        best = min(_time(cmd, env) for _ in range(args.rounds))
        rss, heavy = _probe(cmd, env)
        rows.append((label, best, heavy, rss))
    floor = rows[1][1]
    print(f"{'statement':<44} {'best s':>7} {'/ pandas':>9} {'peak MB':>8}  heavy modules loaded")
    for label, best, heavy, rss in rows:
        print(f"{label:<44} {best:7.3f} {best / floor:9.2f} {rss:8.0f}  {', '.join(heavy) or '-'}")
    helps = dict((r[0], r[1]) for r in rows)["medseg-xai --help"]
    print(f"\nmedseg-xai --help: {helps:.3f} s (target < 0.5 s): "
          f"{'PASS' if helps < 0.5 else 'FAIL'}")
    lean = [r for r in rows if r[0] in ("import medseg_xai", "import medseg_xai.metrics")]
    print("lean import (no torch/captum/matplotlib): "
          f"{'PASS' if all(not r[2] for r in lean) else 'FAIL'}")


if __name__ == "__main__":
    main()
