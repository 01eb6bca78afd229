"""Command-line interface: ``medseg-xai demo | audit | explain | ...``.

Each sub-command is a thin shell over the public Python API; nothing imports this module.
Heavy imports happen inside the sub-command so ``--help`` and ``--version`` stay instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medseg_xai import __version__


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="medseg-xai",
        description=(
            "Explain and audit medical image segmentation networks: why a lesion was missed, "
            "regulatory audit reports, and subgroup comparison before deployment."
        ),
    )
    parser.add_argument("--version", action="version", version=f"medseg-xai {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_metrics(sub)
    return parser


def _add_metrics(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "metrics",
        help="evaluate one prediction against its reference (NIfTI files)",
        description="Print every metric of one case as JSON (spacing read from the reference).",
    )
    p.add_argument("prediction", help="predicted label map (NIfTI)")
    p.add_argument("reference", help="reference label map (NIfTI)")
    p.add_argument("--tolerance", type=float, default=1.0, help="NSD tolerance in mm")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="foreground labels")
    p.set_defaults(func=_run_metrics)


def _run_metrics(args: argparse.Namespace) -> int:
    import json

    import nibabel as nib
    import numpy as np

    from medseg_xai.metrics import evaluate_case

    ref_img = nib.load(args.reference)
    pred = np.asarray(nib.load(args.prediction).dataobj)
    ref = np.asarray(ref_img.dataobj)
    spacing = tuple(float(s) for s in ref_img.header.get_zooms()[: ref.ndim])
    values = evaluate_case(pred, ref, spacing=spacing, labels=args.labels, tolerance=args.tolerance)
    print(json.dumps(values, indent=2, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medseg-xai`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"medseg-xai {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
