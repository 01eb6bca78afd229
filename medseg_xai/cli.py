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
    _add_demo(sub)
    _add_audit(sub)
    _add_report(sub)
    _add_explain(sub)
    _add_metrics(sub)
    return parser


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run every job end to end on the bundled synthetic cohort and demo model",
        description=(
            "Generate the synthetic multi-site demo cohort, run the bundled 3D UNet, audit it by "
            "device, site and lesion size against default acceptance criteria, explain the worst "
            "missed lesion and write the HTML report, JSON, CSV tables and figures."
        ),
    )
    p.add_argument("--out", default="medseg-xai-demo", help="output folder (default: %(default)s)")
    p.add_argument("--n-cases", type=int, default=120, help="cohort size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the cohort and the bootstrap")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from medseg_xai.demo.run_demo import run_demo

    run_demo(args.out, n_cases=args.n_cases, seed=args.seed, workers=args.workers,
             progress=not args.quiet, echo=print)
    return 0


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="audit stored predictions (or a model) on a cohort manifest",
        description=(
            "Evaluate every case of a manifest (CSV, Parquet or Decathlon dataset.json), compute "
            "subgroup statistics with bootstrap CIs, check acceptance criteria, and write "
            "audit.json, CSV tables and a self-contained report.html into --out."
        ),
    )
    p.add_argument("manifest", help="CSV / Parquet manifest or Decathlon dataset.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--strata", nargs="*", default=None,
                   help="metadata columns, 'lesion_size', or intersections like 'device x site'")
    p.add_argument("--criteria", default=None,
                   help="acceptance criteria YAML/JSON file, or 'default'")
    p.add_argument("--config", default=None,
                   help="report YAML (intended use, reference standard, limitations...)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, help="local processes")
    group.add_argument("--dask-scheduler", default=None, help="dask.distributed scheduler address")
    p.add_argument("--cache", default=None, help="per-case cache folder (resume an interrupted run)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    p.add_argument("--model", default=None,
                   help="'demo' (the bundled model) or a TorchScript file to run instead of stored "
                        "predictions; a TorchScript file is code: load only files you trust")
    p.add_argument("--feature-layer", default="auto",
                   help="with --model: layer whose pooled output feeds the feature shift and "
                        "ood_score ('auto': deepest encoder output; 'none': off)")
    p.add_argument("--feature-reference", action="append", default=None,
                   metavar="COLUMN=V1,V2",
                   help="reference cases of the feature shift, e.g. the training devices "
                        "(repeatable; default: the whole cohort)")
    p.add_argument("--no-html", action="store_true", help="skip the HTML report")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medseg_xai.audit import audit, write_outputs
    from medseg_xai.audit.io import read_cohort

    adapter = _load_model(args.model) if args.model else None
    cohort = read_cohort(args.manifest)
    result = audit(cohort, strata=args.strata or None, seed=args.seed, criteria=args.criteria,
                   adapter=adapter, workers=args.workers, dask_scheduler=args.dask_scheduler,
                   cache_dir=args.cache, progress=not args.quiet,
                   feature_layer=None if args.feature_layer == "none" else args.feature_layer,
                   feature_reference=args.feature_reference)
    written = write_outputs(result, args.out)
    if not args.no_html:
        from medseg_xai.reports.render import load_config

        config = load_config(args.config)
        config.setdefault("command_line", _command_line())
        written["html"] = Path(result.to_html(Path(args.out) / "report.html", config=config,
                                              adapter=adapter, cohort=cohort))
    _print_audit_summary(result, written)
    return 0


def _print_audit_summary(result, written) -> None:
    cases = result.cases
    n_failed = int((cases["status"] != "ok").sum())
    print(f"audited {len(cases)} cases ({len(cases) - n_failed} evaluated, {n_failed} failed)")
    crit = result.criteria
    if len(crit):
        counts = crit["status"].value_counts().to_dict()
        print("criteria: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for name, path in written.items():
        print(f"  {name:<12} {path}")


def _command_line() -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in ["medseg-xai", *sys.argv[1:]])


def _load_model(spec: str):
    """'demo' -> the bundled demo model; a TorchScript file -> a 3D softmax adapter."""
    if spec == "demo":
        from medseg_xai.demo import load_model

        return load_model()
    import torch

    from medseg_xai.adapters import SegmentationAdapter

    # TorchScript archives hold code and weights without pickle, unlike plain checkpoints,
    # which need the architecture in Python (use the API for those).
    model = torch.jit.load(spec, map_location="cpu")
    return SegmentationAdapter(model, spatial_dims=3, activation="softmax")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="render the HTML report of a saved audit (audit.json)",
        description="Re-render the self-contained HTML report from an audit JSON.",
    )
    p.add_argument("result", help="audit.json written by `medseg-xai audit`")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--config", default=None, help="report YAML (intended use, approvers...)")
    p.add_argument("--manifest", default=None, help="cohort manifest, for the failure gallery")
    p.add_argument("--compare", default=None, help="a second audit.json to compare against")
    p.add_argument("--max-gallery", type=int, default=12, help="cases in the failure gallery")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from medseg_xai.audit import AuditResult, compare
    from medseg_xai.audit.io import read_cohort
    from medseg_xai.reports import write_html

    result = AuditResult.from_json(args.result)
    comparison = None
    if args.compare:
        comparison = compare(AuditResult.from_json(args.compare), result)
    cohort = read_cohort(args.manifest) if args.manifest else None
    path = write_html(result, args.out, config=args.config, cohort=cohort,
                      comparison=comparison, max_gallery=args.max_gallery)
    print(f"wrote {path}")
    return 0


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="explain a model's output on one image (NIfTI) and save the attribution",
        description=(
            "Explain why the model segmented (or missed) a region of one image: the target is "
            "the reference region, its missed part, or the predicted class region. Writes the "
            "attribution as NIfTI (source affine) and a three-plane PNG."
        ),
    )
    p.add_argument("image", help="image NIfTI")
    p.add_argument("--model", default="demo",
                   help="'demo' or a TorchScript file (it is code: load only files you trust)")
    p.add_argument("--ref", default=None, help="reference label NIfTI (for reference / missed)")
    p.add_argument("--target", choices=["missed", "reference", "lesion", "prediction"],
                   default="missed",
                   help="what to explain: the missed voxels (default), the whole reference, one "
                        "reference lesion (--lesion), or the predicted region")
    p.add_argument("--lesion", default=None,
                   help="with --target lesion: its number (1-based, scipy label order) or id "
                        "such as ref-2")
    p.add_argument("--batch-size", type=int, default=None,
                   help="bounds memory for many-pass methods (IG, occlusion, smoothgrad)")
    p.add_argument("--class-index", type=int, default=1)
    p.add_argument("--method", default="gradcam", help="explanation method (default: gradcam)")
    p.add_argument("--layer", default=None, help="layer for Grad-CAM (default: chosen by model)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_run_explain)


def _run_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    import nibabel as nib
    import numpy as np

    from medseg_xai import targets, viz
    from medseg_xai.explain import explain
    from medseg_xai.explain.quality import localisation

    adapter = _load_model(args.model)
    img = nib.load(args.image)
    image = np.asarray(img.dataobj, dtype=np.float32)
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    pred = adapter.predict(image[None]).numpy()[0]
    if args.target == "prediction":
        if not (pred == args.class_index).any():
            raise ValueError(f"the model predicts no voxel of class {args.class_index} in "
                             f"{args.image}; choose --target reference with --ref")
        target = targets.region(args.class_index, pred == args.class_index)
    else:
        if args.ref is None:
            raise ValueError(f"--target {args.target} needs --ref (the reference label NIfTI)")
        ref = np.asarray(nib.load(args.ref).dataobj)
        if args.target == "reference":
            target = targets.reference(args.class_index, ref)
        elif args.target == "lesion":
            if args.lesion is None:
                raise ValueError("--target lesion needs --lesion N (or an id such as ref-2)")
            which = int(args.lesion) if str(args.lesion).isdigit() else args.lesion
            target = targets.lesion(args.class_index, ref, which)
        else:
            target = targets.missed(args.class_index, ref, pred)
    exp = explain(adapter, image[None], target, method=args.method, layer=args.layer,
                  batch_size=args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.method}_{args.target}"
    exp.to_nifti(out / f"{stem}.nii.gz", affine=img.affine)
    fig = viz.three_plane(image, center=viz.lesion_centre(target.mask), ref=None, pred=pred,
                          heatmap=exp.attribution, spacing=spacing)
    (out / f"{stem}.png").write_bytes(viz.fig_to_png_bytes(fig, dpi=100))
    print(f"target: {target.describe()}")
    print(f"method: {exp.method} (layer {exp.layer}), {exp.elapsed_s:.2f} s")
    print(f"share of positive attribution inside the target: "
          f"{localisation(exp.attribution, target.mask):.2f}")
    print(f"wrote {out / (stem + '.nii.gz')} and {out / (stem + '.png')}")
    return 0


def _add_metrics(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "metrics",
        help="evaluate one prediction against its reference (NIfTI files)",
        description="Print every metric of one case as JSON (spacing read from the reference).",
    )
    p.add_argument("prediction", help="predicted label map (NIfTI)")
    p.add_argument("reference", help="reference label map (NIfTI)")
    p.add_argument("--tolerance", type=float, default=1.0, help="NSD tolerance in mm")
    p.add_argument("--percentile", type=float, default=95, help="Hausdorff percentile")
    p.add_argument("--empty", choices=["worst", "nan"], default="worst",
                   help="empty-mask policy (default: %(default)s)")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="foreground labels")
    p.add_argument("--lesions", default=None, metavar="CSV",
                   help="also match lesions; write the lesion table to CSV and print a summary")
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
    values = evaluate_case(pred, ref, spacing=spacing, labels=args.labels,
                           tolerance=args.tolerance, percentile=args.percentile, empty=args.empty)
    if args.lesions:
        from medseg_xai.metrics import lesion_summary, lesions

        table = lesions(pred > 0, ref > 0, spacing=spacing)
        table.to_csv(args.lesions, index=False)
        values["lesions"] = lesion_summary(table)
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
