"""Command-line interface: ``medseg-xai demo | audit | explain | ...``.

Each sub-command is a thin shell over the public Python API; nothing imports this module.
Heavy imports happen inside the sub-command so ``--help`` and ``--version`` stay instant.

Exit codes (:data:`EXIT_CODES`, also in ``--help`` and the README): 0 every row evaluated;
3 the audit completed with more failed rows than ``--max-failed`` (outputs written, count
printed); 2 bad input or usage (one line on stderr, no traceback); 1 an internal error or an
infrastructure fault (disk full, unwritable folder), one line unless ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from medseg_xai import __version__

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_FAILED_ROWS = 0, 1, 2, 3
EXIT_CODES = (
    "exit codes: 0 every row evaluated; 3 the audit completed with failed rows (outputs written, "
    "count printed; allow some with --max-failed N); 2 bad input or usage (one line, no "
    "traceback); 1 internal error or infrastructure fault (disk full, unwritable folder)"
)


class InputError(ValueError):
    """Bad input or usage found by the command line itself (exit code 2)."""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="medseg-xai",
        description=(
            "Explain and audit medical image segmentation networks: why a lesion was missed, "
            "regulatory audit reports, and subgroup comparison before deployment."
        ),
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"medseg-xai {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_audit(sub)
    _add_report(sub)
    _add_explain(sub)
    _add_metrics(sub)
    _add_plan(sub)
    _add_model_info(sub)
    return parser


def _add_model_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model-info",
        help="print what a model file or folder was recognised as, before a long audit",
        description=("Load MODEL as `audit --model` / `explain --model` would and print its "
                     "format, classes, input channels, spacing, patch size, normalisation, "
                     "folds, divisor, device, fingerprint and the explanation methods it runs."),
    )
    p.add_argument("model", help="model file or folder (see `audit --model`)")
    _add_model_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_model_info)


def _run_model_info(args: argparse.Namespace) -> int:
    import json

    from medseg_xai.models import model_info

    info = model_info(_load_model(args.model, args))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value) if value else "-"
        print(f"{key:<14} {value if value is not None else '-'}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run every job end to end on the bundled synthetic cohort and demo model",
        description=(
            "Generate the synthetic multi-site demo cohort, run the bundled 3D UNet, audit it "
            "with the model by device, site and lesion size against default acceptance criteria "
            "(with per-case uncertainty from a test-time flip, failure detection for 'dice < "
            "0.5', calibration per subgroup, hidden strata and the OOD score against the "
            "training scanners), explain the worst missed lesion and write the HTML report, "
            "JSON, CSV tables and figures."
        ),
    )
    p.add_argument("--out", default="medseg-xai-demo", help="output folder (default: %(default)s)")
    p.add_argument("--n-cases", type=int, default=120, help="cohort size (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed for the cohort and the bootstrap")
    p.add_argument("--workers", type=int, default=None,
                   help="audit processes (default: 1, as for any audit with a model)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", default="cpu",
                   help="where the demo model runs: cpu, cuda, cuda:N or auto (default: "
                        "%(default)s, so the demo's figures are the same on every machine)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from medseg_xai._io import folder_lock
    from medseg_xai.adapters import resolve_device
    from medseg_xai.demo.run_demo import run_demo

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise InputError(f"--device: {exc}") from None
    with folder_lock(_output_folder(args.out), "--out"):  # one run per folder
        run_demo(args.out, n_cases=args.n_cases, seed=args.seed, workers=args.workers,
                 progress=not args.quiet, echo=print, device=device)
    return 0


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="audit stored predictions (or a model) on a cohort manifest",
        description=(
            "Evaluate every case of a manifest (CSV, Parquet or Decathlon dataset.json), compute "
            "subgroup statistics with bootstrap CIs, check acceptance criteria, and write "
            "audit.json, CSV tables and a self-contained report.html into --out. Only metadata "
            "columns used as strata or named in --keep-columns reach the outputs; columns named "
            "like identifiers (Patient Name, mrn, patient_dob...) never do."
        ),
        epilog=EXIT_CODES,
    )
    p.add_argument("manifest", help="CSV / Parquet manifest or Decathlon dataset.json")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--strata", nargs="*", default=None,
                   help="metadata columns, 'lesion_size', or intersections like 'device x site'")
    p.add_argument("--criteria", default=None,
                   help="acceptance criteria YAML/JSON file, 'default' or 'none' (without "
                        "--plan and --criteria: the default criteria, and the run says so)")
    p.add_argument("--config", default=None,
                   help="report YAML (intended use, reference standard, limitations...)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, help="local processes")
    group.add_argument("--dask-scheduler", default=None, help="dask.distributed scheduler address")
    p.add_argument("--cache", default=None, help="per-case cache folder (resume an interrupted run)")
    p.add_argument("--case-timeout", type=float, default=None, metavar="SECONDS",
                   help="fail a case that takes longer than this (loading, inference, metrics); "
                        "each finished case is streamed to --out/cases.jsonl as it completes")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (default: 0)")
    p.add_argument("--model", default=None,
                   help="model to run instead of stored predictions: 'demo', a TorchScript file, "
                        "an .onnx file, a MONAI bundle folder, an nnU-Net v2 results folder or "
                        "zip, or a checkpoint with --model-class (see docs/models.md); model "
                        "files can hold code: load only files you trust")
    _add_model_options(p)
    _add_label_options(p, classes=True)
    p.add_argument("--na-values", nargs="+", default=None, metavar="TEXT",
                   help="CSV cell texts that mean 'missing' besides an empty cell (default: "
                        "none; a case id or site 'NA', 'None' or 'null' stays that text)")
    p.add_argument("--keep-columns", nargs="*", default=None, metavar="COLUMN",
                   help="metadata columns to keep in the outputs besides the strata")
    p.add_argument("--allow-free-text", action="store_true",
                   help="keep text columns that look like they hold names, record numbers or "
                        "dates (default: refused, naming the column)")
    p.add_argument("--pseudonymise", action="store_true",
                   help="replace case and patient ids by salted pseudonyms (salt: --salt-file "
                        "or MEDSEG_XAI_SALT); error texts then name fields, not files")
    p.add_argument("--salt-file", default=None, metavar="FILE",
                   help="file holding the secret salt of --pseudonymise (at least 16 characters)")
    p.add_argument("--max-failed", type=int, default=0, metavar="N",
                   help="failed rows allowed before the exit code is 3 (default: %(default)s)")
    p.add_argument("--lesion-size-bins", nargs="+", default=None, metavar="X",
                   help="lesion_size stratum: one integer (quantile bins) or increasing edges in "
                        "mm3 (default: 3 quantile bins)")
    p.add_argument("--detection-bins", nargs="+", type=float, default=None, metavar="MM3",
                   help="lesion-volume edges (mm3) of the detection table "
                        "(default: 0 100 1000 10000)")
    p.add_argument("--gallery", type=int, default=12,
                   help="cases in the failure gallery (images are read from the manifest)")
    p.add_argument("--no-html", action="store_true", help="skip the HTML report")
    p.add_argument("--pdf", action="store_true", help="also print report.pdf (needs Chromium "
                   "or WeasyPrint)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--failure", default=None, metavar="DEFINITION",
                   help="failure detection, calibration per subgroup and hidden strata for a "
                        "stated failure: 'dice < 0.5', 'missed lesion', any 'METRIC OP VALUE'")
    p.add_argument("--uncertainty-flips", type=int, nargs="+", default=None, metavar="AXIS",
                   help="with --model: per-case uncertainty from test-time flips along these "
                        "spatial axes (e.g. 0 1 2; turns --failure on with 'dice < 0.5')")
    p.add_argument("--mc-dropout", type=int, default=None, metavar="N",
                   help="with --model: N Monte-Carlo dropout passes as uncertainty members")
    _add_member_options(p)
    _add_plan_options(p)
    p.set_defaults(func=_run_audit)


#: Audit options that are fields of the analysis plan: option dest -> AuditPlan keyword.
_PLAN_OPTIONS = {
    "strata": "strata", "seed": "seed", "criteria": "criteria", "labels": "labels",
    "keep_columns": "keep_columns", "convention": "convention", "matching": "matching",
    "iou_threshold": "iou_threshold", "reference": "reference",
    "feature_reference": "feature_reference", "detection_bins": "detection_bins",
    "threshold": "threshold", "connectivity": "connectivity",
    "overlap_threshold": "overlap_threshold", "n_resamples": "n_resamples",
    "confidence": "confidence", "alpha": "alpha", "min_n": "min_n",
    "interval_method": "ci_method", "test": "test", "correction": "correction",
    "metrics": "metrics", "tolerance": "tolerance",
    "reference_threshold": "reference_threshold",
}


def _failure_options(args: argparse.Namespace) -> dict[str, object]:
    """``uncertainty=`` / ``failure=`` of the audit from --uncertainty-flips, --mc-dropout and
    --failure (issue 27)."""
    out: dict[str, object] = {}
    flips, drops = getattr(args, "uncertainty_flips", None), getattr(args, "mc_dropout", None)
    if flips is not None or drops:
        out["uncertainty"] = {"flips": tuple(flips or ()), "mc_dropout": int(drops or 0)}
    if getattr(args, "failure", None):
        out["failure"] = args.failure
    return out


def _add_member_options(p: argparse.ArgumentParser) -> None:
    members = p.add_mutually_exclusive_group()
    members.add_argument("--uncertainty-members", choices=["folds"], default=None,
                         help="with an nnU-Net --model: uncertainty from the disagreement of "
                              "its fold models (each with the --uncertainty-flips given; the "
                              "metrics stay the fold ensemble's)")
    members.add_argument("--ensemble-model", action="append", default=None, metavar="PATH",
                         help="with --model: another model of the same task (repeatable; "
                              "loaded with the --model options); uncertainty from the "
                              "disagreement of --model and these (the metrics stay --model's)")


def _uncertainty_members(args: argparse.Namespace, adapter: object) -> dict[str, object]:
    """``uncertainty_members=`` of the audit from --uncertainty-members / --ensemble-model
    (the extra models loaded with the --model options)."""
    folds, paths = getattr(args, "uncertainty_members", None), getattr(args, "ensemble_model",
                                                                        None)
    if not folds and not paths:
        return {}
    flag = "--uncertainty-members" if folds else "--ensemble-model"
    if adapter is None:
        raise InputError(f"{flag}: expected --model (the members are models run on each "
                         "case), got stored predictions only")
    if folds:
        return {"uncertainty_members": folds}
    return {"uncertainty_members": [adapter, *(_load_model(p, args) for p in paths)]}


def _add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plan", default=None, metavar="PLAN.yaml",
                   help="the pre-specified analysis plan (medseg-xai plan init > plan.yaml); "
                        "options given as well override its fields")
    p.add_argument("--threshold", type=float, default=None,
                   help="with --model: probability above which a voxel is called (default: "
                        "the model's own, else 0.5 / the most probable class)")
    p.add_argument("--connectivity", type=int, default=None,
                   help="lesion components: 1 = face neighbours ... 3 = full (default: full)")
    p.add_argument("--overlap-threshold", type=float, default=None,
                   help="share of a lesion that must be covered to count as detected "
                        "(default: 0.1)")
    p.add_argument("--metrics", nargs="+", default=None, help="metrics summarised per group")
    p.add_argument("--tolerance", type=float, default=None, help="NSD tolerance in mm (1.0)")
    p.add_argument("--n-resamples", type=int, default=None, help="bootstrap resamples (2000)")
    p.add_argument("--confidence", type=float, default=None, help="confidence level (0.95)")
    p.add_argument("--alpha", type=float, default=None, help="significance level (0.05)")
    p.add_argument("--min-n", type=int, default=None, help="smallest group analysed (10)")
    p.add_argument("--interval-method", default=None, help="bootstrap interval (BCa)")
    p.add_argument("--test", default=None, help="group-vs-rest test (mannwhitney)")
    p.add_argument("--correction", default=None, help="multiple-comparison correction (holm)")
    p.add_argument("--convention", default=None,
                   choices=["monai", "medpy", "deepmind", "metricsreloaded", "panoptica"],
                   help="surface-metric definitions (default: monai)")
    p.add_argument("--matching", default=None, choices=["overlap", "hungarian"],
                   help="lesion matching: covered fraction, or one-to-one IoU (default: overlap)")
    p.add_argument("--iou-threshold", type=float, default=None,
                   help="smallest IoU of a match with --matching hungarian (default: 0.5)")
    p.add_argument("--reference", default=None,
                   help="reference standard from reader columns label_<reader>: staple, majority "
                        "or a reader name (default: the label column)")
    p.add_argument("--allow-missing-readers", action="store_true",
                   help="analyse a case with the readers present when a reader file is missing "
                        "(default: that row fails, naming the reader)")
    p.add_argument("--feature-layer", default=None,
                   help="with --model: layer whose pooled output feeds the feature shift and "
                        "ood_score ('auto': deepest encoder output; 'none': off)")
    p.add_argument("--feature-reference", action="append", default=None,
                   metavar="COLUMN=V1,V2",
                   help="reference cases of the feature shift, e.g. the training devices "
                        "(repeatable; default: the whole cohort)")


def _plan_from_args(args: argparse.Namespace):
    """The audit's plan: --plan (or the default) with every plan option given mapped into it."""
    from medseg_xai.audit.plan import AuditPlan

    base = AuditPlan.from_yaml(_input_file(args.plan, "--plan")) if args.plan else None
    given = {kw: getattr(args, dest) for dest, kw in _PLAN_OPTIONS.items()
             if getattr(args, dest, None) is not None}
    if getattr(args, "binarize", False):
        given["binarize"] = True
    if getattr(args, "classes", None) is not None:
        if args.labels is not None:
            raise InputError("--classes and --labels: expected one of them (--classes names "
                             "the values --labels would list)")
        given["labels"] = list(args.classes)
    if args.lesion_size_bins is not None:
        given["lesion_size_bins"] = _lesion_size_bins(args.lesion_size_bins)
    if args.feature_layer is not None:
        given["feature_layer"] = None if args.feature_layer == "none" else args.feature_layer
    if given.get("strata") == []:
        given["strata"] = None
    return AuditPlan.from_options(base, **given)


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", help="write or check an analysis plan (YAML)",
        description="'plan init' prints the default analysis plan as YAML (medseg-xai plan init "
                    "> plan.yaml); 'plan check PLAN.yaml' validates one and prints its hash.",
        epilog=EXIT_CODES)
    p.add_argument("action", choices=["init", "check"])
    p.add_argument("file", nargs="?", default=None, help="the plan to check")
    p.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from medseg_xai.audit.plan import AuditPlan

    if args.action == "init":
        print(AuditPlan().to_yaml(), end="")
        return 0
    if args.file is None:
        raise InputError("plan check: expected a plan file")
    plan = AuditPlan.from_yaml(_input_file(args.file, "plan"))
    print(f"valid plan, sha256 {plan.hash}")
    return 0


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-class", default=None, metavar="PACKAGE.MODULE:CLASS",
                   help="with a PyTorch checkpoint (state dict): the network's class")
    p.add_argument("--model-kwargs", default=None, metavar="JSON",
                   help="keyword arguments of --model-class as a JSON object")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto (CUDA when available; default: %(default)s)")
    p.add_argument("--divisor", default=None, metavar="N",
                   help="multiple the network needs each spatial size to be (e.g. 16 for four 2x "
                        "down-samplings; default: inferred)")
    p.add_argument("--activation", default="auto", choices=["auto", "softmax", "sigmoid"],
                   help="how the model's outputs become probabilities (default auto: sigmoid "
                        "for a one-channel output, else the loader's, softmax for files)")


def _model_options(args: argparse.Namespace) -> dict:
    """The CLI's model options as keyword arguments of mx.load_model (checked here)."""
    import json

    opts: dict = {}
    if getattr(args, "model_class", None):
        opts["model_class"] = args.model_class
    if getattr(args, "model_kwargs", None):
        try:
            kwargs = json.loads(args.model_kwargs)
        except json.JSONDecodeError as exc:
            raise InputError(f"--model-kwargs: expected a JSON object, got "
                             f"{args.model_kwargs!r}") from exc
        if not isinstance(kwargs, dict):
            raise InputError(f"--model-kwargs: expected a JSON object, got {args.model_kwargs!r}")
        opts["model_kwargs"] = kwargs
    if getattr(args, "activation", "auto") not in (None, "auto"):
        opts["activation"] = args.activation
    if getattr(args, "divisor", None) is not None:
        if not str(args.divisor).isdigit() or int(args.divisor) < 1:
            raise InputError(f"--divisor: expected a positive integer, got {args.divisor!r}")
        opts["divisor"] = int(args.divisor)
    return opts


def _add_label_options(p: argparse.ArgumentParser, classes: bool = False) -> None:
    p.add_argument("--labels", type=int, nargs="+", default=None, metavar="VALUE",
                   help="foreground label values of the label maps (default: binary 0/1); a "
                        "file with other values fails with the values found")
    p.add_argument("--binarize", action="store_true",
                   help="count every label value > 0 as foreground instead of failing on "
                        "undeclared values (each case's read_notes says which values)")
    if classes:
        p.add_argument("--classes", nargs="+", default=None, metavar="VALUE=NAME[:KIND]",
                       help="named classes instead of --labels, e.g. 1=liver:structure "
                            "2=tumour:lesion (structure: overlap/surface metrics only; lesion: "
                            "also connected components and detection; default: lesion for one "
                            "class, structure for several)")
        p.add_argument("--reference-threshold", type=float, default=None, metavar="T",
                       help="soft (probabilistic 0..1) references count voxels >= T as "
                            "foreground (default 0.5; recorded in the plan)")


def _lesion_size_bins(values):
    """``--lesion-size-bins``: one integer -> quantile count, else increasing edges."""
    if values is None:
        return 3
    if len(values) == 1 and str(values[0]).isdigit():
        return int(values[0])
    try:
        return [float(v) for v in values]
    except ValueError as err:
        raise ValueError(f"--lesion-size-bins: expected one integer or numbers (mm3), got "
                         f"{' '.join(values)}") from err


def _run_audit(args: argparse.Namespace) -> int:
    from medseg_xai._io import folder_lock

    # every option is checked before any case runs
    if args.max_failed < 0:
        raise InputError(f"--max-failed: expected a count >= 0, got {args.max_failed}")
    config = _load_report_config(args.config)  # checked even with --no-html: a typo is a typo
    if args.criteria is None and not args.plan:
        # no plan, no criteria named: the defaults judge the audit (and the summary says so)
        args.criteria = "default"
        print("criteria: the default acceptance criteria (medseg_xai.audit.criteria."
              "DEFAULT_CRITERIA); --criteria FILE to set your own, --criteria none for none")
    elif args.criteria == "none":
        args.criteria = None
    plan = _plan_from_args(args)  # every plan field checked, named, before any case runs
    out = _output_folder(args.out)
    with folder_lock(out, "--out"):  # one run per folder: never mixed or truncated outputs
        return _audit_into(args, config, out, plan)


def _audit_into(args: argparse.Namespace, config: dict, out, plan) -> int:
    """The audit itself, with ``--out`` locked (see :func:`_run_audit`)."""
    from pathlib import Path

    from medseg_xai.audit import audit, write_outputs
    from medseg_xai.audit.explanations import explain_failures
    from medseg_xai.audit.io import read_cohort

    cohort = read_cohort(_input_file(args.manifest, "manifest", table=True),
                         na_values=args.na_values, **_pseudonymisation(args))
    _check_free_text(cohort, args, plan)
    adapter = _load_model(args.model, args) if args.model else None
    if adapter is not None and getattr(args, "activation", "auto") == "auto":
        adapter.activation_auto = True  # one output channel -> sigmoid (audit's model probe)
    # provenance is the program's: a config file cannot set it (refused by load_config)
    config["command_line"] = _command_line(args.argv)  # stored in audit.json: `report` re-renders
    result = audit(cohort, plan, adapter=adapter, workers=args.workers,
                   dask_scheduler=args.dask_scheduler, cache_dir=args.cache,
                   progress=not args.quiet, report=config, case_timeout=args.case_timeout,
                   stream=out / "cases.jsonl", allow_missing_readers=args.allow_missing_readers,
                   **_failure_options(args), **_uncertainty_members(args, adapter))
    result.explanations = explain_failures(result, cohort, adapter, max_cases=args.gallery,
                                           seed=plan.statistics.seed)
    written = write_outputs(result, out)
    if not args.no_html:
        written["html"] = Path(result.to_html(out / "report.html", pdf=args.pdf))
        if args.pdf:
            written["pdf"] = written["html"].with_suffix(".pdf")
    n_failed = _print_audit_summary(result, written)
    if n_failed > args.max_failed:
        print(f"medseg-xai audit: {n_failed} row(s) failed (allowed: {args.max_failed}); "
              "outputs written, see the error column of cases.csv", file=sys.stderr)
        return EXIT_FAILED_ROWS
    return EXIT_OK


def _pseudonymisation(args: argparse.Namespace) -> dict:
    """``--pseudonymise``: the salt from ``--salt-file`` or ``MEDSEG_XAI_SALT``, never from the
    command line (it is recorded in the report, and shells keep a history)."""
    import os

    if not args.pseudonymise:
        if args.salt_file:
            raise InputError("--salt-file: only used with --pseudonymise")
        return {}
    if args.salt_file:
        from pathlib import Path

        salt = Path(_input_file(args.salt_file, "--salt-file")).read_text(encoding="utf-8").strip()
    else:
        salt = os.environ.get("MEDSEG_XAI_SALT", "")
    if len(salt) < 16:
        raise InputError("--pseudonymise: expected a secret salt of at least 16 characters in "
                         "--salt-file or the MEDSEG_XAI_SALT environment variable, got "
                         + ("none" if not salt else f"{len(salt)} characters"))
    return {"pseudonymise": True, "salt": salt}


def _check_free_text(cohort, args: argparse.Namespace, plan) -> None:
    """Kept text columns (strata, --keep-columns) holding what looks like names, record
    numbers or dates are refused unless --allow-free-text (then the audit warns)."""
    from medseg_xai.audit.strata import parse_strata
    from medseg_xai.cohort import describe_findings

    columns = [c for s in parse_strata(list(plan.strata.strata) or None) for c in s.columns]
    found = cohort.identifier_findings([*columns, *plan.strata.keep_columns])
    if found and not args.allow_free_text:
        raise InputError(f"--keep-columns/--strata: {describe_findings(found)}; these would "
                         "reach audit.json, the CSVs and the report. Drop the column, or pass "
                         "--allow-free-text if it holds no identifiers")


def _load_report_config(path: str | None) -> dict:
    from medseg_xai.reports.render import load_config

    try:
        return load_config(path)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - YAML parse errors have their own types
        raise InputError(f"--config: expected a YAML mapping, could not parse {path!r} "
                         f"({type(exc).__name__})") from exc


def _output_folder(path: str):
    from pathlib import Path

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: expected a folder, got a file at {path!r}")
    out.mkdir(parents=True, exist_ok=True)  # an unwritable parent is an OSError: exit 1
    return out


def _input_file(path: str, what: str, *, table: bool = False, folder: bool = False) -> str:
    """A named input must be a regular file (or, with ``folder``, a DICOM series folder): a
    FIFO or a device would block the reader."""
    from pathlib import Path

    from medseg_xai._io import file_kind

    p = Path(path)
    if not p.exists():
        raise InputError(f"{what}: expected a file, found nothing at {path!r}")
    if not (p.is_file() or (folder and p.is_dir())):
        expected = "a regular file or a DICOM series folder" if folder else "a regular file"
        raise InputError(f"{what}: expected {expected}, got {file_kind(p)} at {path!r}")
    if table and p.stat().st_size == 0:  # volumes: the loader names empty files itself
        raise InputError(f"{what}: expected a table, got an empty file {path!r}")
    return path


def _print_audit_summary(result, written) -> int:
    n_failed = result.n_failed
    print(f"audited {result.n_rows} cases ({result.n_evaluated} evaluated, {n_failed} failed)")
    if len(result.verdicts):
        print(f"verdict: {result.verdict}")
    for r in result.verdicts.to_dict("records"):  # one line per criterion, not per group row
        print(f"  {r['status']:<17} {r['criterion']}: {r['n_pass']} pass, {r['n_fail']} fail, "
              f"{r['n_insufficient']} insufficient data, {r['n_not_evaluated']} not evaluated")
    for name, path in written.items():
        print(f"  {name:<12} {path}")
    return n_failed


def _command_line(argv: Sequence[str]) -> str:
    """The command as recorded in the report: every path argument reduced to its name, so no
    folder name (often a patient's name or record number) is shared."""
    import shlex

    from medseg_xai._privacy import redact_paths

    def name(arg: str) -> str:
        flag, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        if any(sep in value for sep in ("/", "\\")):
            value = [part for part in value.replace("\\", "/").split("/") if part][-1:] or [value]
            value = value[0]
        return f"{flag}{eq}{value}"

    return redact_paths(" ".join(shlex.quote(name(a)) for a in ["medseg-xai", *argv]))


def _load_model(spec: str, args: argparse.Namespace | None = None):
    """``--model`` (+ ``--model-class``, ``--device``, ``--divisor``) -> an adapter through
    :func:`medseg_xai.load_model` (demo, TorchScript, ONNX, MONAI bundle, nnU-Net, checkpoint)."""
    from medseg_xai.models import load_model

    opts = _model_options(args) if args is not None else {}
    device = getattr(args, "device", None) or "auto"
    if spec != "demo":
        from pathlib import Path

        if not Path(spec).exists():
            raise InputError(f"--model: expected 'demo', a model file or a model folder, found "
                             f"nothing at {spec!r}")
        from medseg_xai.models import detect_format

        try:
            opts["format"] = detect_format(spec, opts.get("model_class"))
        except ValueError as exc:
            raise InputError(f"--model: expected 'demo' or a TorchScript archive, an .onnx file, "
                             f"a MONAI bundle folder, an nnU-Net v2 results folder or zip, or a "
                             f"checkpoint with --model-class ({exc})") from exc
    return load_model(spec, device=device, **opts)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="render the HTML report of a saved audit (audit.json)",
        description="Re-render the self-contained HTML report from an audit JSON.",
    )
    p.add_argument("result", help="audit.json written by `medseg-xai audit`")
    p.add_argument("--out", required=True, help="HTML file to write")
    p.add_argument("--config", default=None,
                   help="report YAML merged over the one stored in audit.json")
    p.add_argument("--compare", default=None, metavar="A.json",
                   help="an earlier audit.json of the same cohort: the report compares RESULT "
                        "(model B) against it (model A)")
    p.add_argument("--pdf", action="store_true",
                   help="also print the report to PDF next to --out (Chromium or WeasyPrint)")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medseg_xai.audit import AuditResult, compare
    from medseg_xai.reports import write_html

    result = AuditResult.from_json(args.result)
    comparison = None
    if args.compare:
        comparison = compare(AuditResult.from_json(args.compare), result,
                             name_a=Path(args.compare).name, name_b=Path(args.result).name)
    path = write_html(result, args.out, config=args.config, comparison=comparison, pdf=args.pdf)
    print(f"wrote {path}")
    if args.pdf:
        print(f"wrote {path.with_suffix('.pdf')}")
    return 0


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="explain a model's output on one image (NIfTI): why a lesion was missed, or a map",
        description=(
            "With --lesion ID: why the model missed (or called) that lesion: probes re-run "
            "through the model, gated attribution evidence and a plain verdict "
            "(mx.explain_miss), written as JSON with one attribution NIfTI and PNG per method. "
            "Without --lesion: one attribution map of the target (the missed voxels, the whole "
            "reference, or the predicted region). Every file name starts with the case id; a "
            "map that fails its gates (constant, survives parameter randomisation, incomplete) "
            "is reported with a warning."
        ),
    )
    p.add_argument("image", help="image NIfTI")
    p.add_argument("--model", default="demo",
                   help="'demo', a TorchScript file, an .onnx file, a MONAI bundle folder, an "
                        "nnU-Net v2 results folder or zip, or a checkpoint with --model-class "
                        "(model files can hold code: load only files you trust)")
    _add_model_options(p)
    p.add_argument("--ref", default=None, help="reference label NIfTI (for reference / missed)")
    p.add_argument("--target", choices=["missed", "reference", "lesion", "prediction"],
                   default="missed",
                   help="one map of: the missed voxels (default), the whole reference, one "
                        "lesion (--target lesion --lesion N, no miss analysis) or the predicted "
                        "region")
    p.add_argument("--lesion", default=None,
                   help="why was this lesion missed (or called): ref-N (reference lesion, "
                        "1-based), pred-N (predicted component, also without --ref) or N")
    p.add_argument("--case-id", default=None,
                   help="prefix of every output file (default: the image file name)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="bounds memory for many-pass methods (IG, occlusion, smoothgrad)")
    p.add_argument("--class-index", type=int, default=1)
    p.add_argument("--threshold", type=float, default=0.5,
                   help="probability above which a voxel is called lesion (default: %(default)s)")
    p.add_argument("--method", action="append", default=None,
                   help="explanation method; repeat for several (default: gradcam, and with "
                        "--lesion also integrated_gradients)")
    p.add_argument("--layer", default=None, help="layer for Grad-CAM (default: chosen by model)")
    p.add_argument("--signed", action="store_true",
                   help="Grad-CAM without the final ReLU: negative values are evidence against")
    p.add_argument("--steps", type=int, default=None,
                   help="integration steps (integrated_gradients) or samples (smoothgrad)")
    p.add_argument("--baseline", default=None,
                   help="baseline of IG / DeepLift / occlusion / ablation: a number or "
                        "'local_background' (the target replaced by its local background; the "
                        "default with --lesion)")
    p.add_argument("--window", type=int, default=None,
                   help="occlusion window in voxels per axis")
    p.add_argument("--reference-images", nargs="*", default=None, metavar="NIFTI",
                   help="with --lesion: scans where the model works, for the intensity probe")
    p.add_argument("--out", required=True, help="output folder")
    _add_label_options(p)
    p.set_defaults(func=_run_explain)


def _method_kwargs(args: argparse.Namespace, method: str) -> dict:
    kw: dict = {}
    if method in ("gradcam", "gradcam++") and args.signed:
        kw["relu"] = False
    if args.steps is not None:
        if method == "integrated_gradients":
            kw["n_steps"] = args.steps
        elif method == "smoothgrad":
            kw["n_samples"] = args.steps
    if args.baseline is not None and method in ("integrated_gradients", "deeplift",
                                                "occlusion", "feature_ablation"):
        try:
            kw["baseline"] = float(args.baseline)
        except ValueError:
            kw["baseline"] = args.baseline  # validated by the method
    if args.window is not None and method == "occlusion":
        kw["window"] = args.window
    return kw


def _explain_png(path, image, mask, pred, heatmap, spacing, title: str):
    """Three planes with the target's outline, the prediction and the map, plus a colour bar."""
    from medseg_xai.miss_files import explanation_png

    return explanation_png(path, image, mask, pred, heatmap, spacing, title)


def _explain_miss_files(args: argparse.Namespace, adapter, inputs: tuple, case: str, out,
                        methods: list) -> int:
    """``explain --lesion``: the miss analysis of one lesion, written as files."""
    import nibabel as nib
    import numpy as np

    from medseg_xai.explain.miss import explain_miss
    from medseg_xai.explain.miss_settings import MissSettings
    from medseg_xai.miss_files import write_miss_files

    image, ref, affine, spacing = inputs
    lesion = int(args.lesion) if str(args.lesion).isdigit() else args.lesion
    refs = [np.asarray(nib.load(r).dataobj, dtype=np.float32)
            for r in (args.reference_images or [])]
    settings = MissSettings(
        threshold=args.threshold, methods=tuple(methods), class_index=args.class_index,
        layer=args.layer, method_kwargs={m: _method_kwargs(args, m) for m in methods})
    analysis = explain_miss(adapter, image[None], ref, lesion, spacing=spacing,
                            reference_images=refs or None, case_id=case, settings=settings)
    # the outline drawn at the same --threshold as the analysis (decide.label_map)
    pred = adapter.predict(image[None], threshold=args.threshold).numpy()[0] == args.class_index
    written, warns = write_miss_files(analysis, out, case_id=case, image=image, pred=pred,
                                      affine=affine, spacing=spacing)
    for w in warns:
        print(f"warning: {w}", file=sys.stderr)
    print(analysis.verdict)
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


def _run_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medseg_xai import targets
    from medseg_xai._privacy import safe_file_name
    from medseg_xai.explain import explain
    from medseg_xai.explain.quality import localisation, map_gate

    adapter = _load_model(args.model, args)
    image, ref, affine, spacing = _explain_inputs(args)  # the audit's checks
    adapter = adapter.with_geometry(spacing, affine)  # models with their own resampling need it
    name = Path(args.image).name
    case = args.case_id or name.removesuffix(".gz").removesuffix(".nii")
    out = Path(args.out)
    # The case id names the output files: one with '/' or '..' must not write outside --out.
    safe_file_name(case, folder=out)
    out.mkdir(parents=True, exist_ok=True)
    from medseg_xai.explain.core import default_methods

    methods = args.method or list(default_methods(adapter, miss=args.lesion is not None
                                                  and args.target != "lesion"))

    if args.lesion is not None and args.target != "lesion":
        return _explain_miss_files(args, adapter, (image, ref, affine, spacing), case, out,
                                   methods)

    pred = adapter.predict(image[None], threshold=args.threshold).numpy()[0]
    if args.target == "prediction":
        if not (pred == args.class_index).any():
            raise ValueError(f"the model predicts no voxel of class {args.class_index} in "
                             f"{name}; choose --target reference with --ref")
        target = targets.region(args.class_index, pred == args.class_index)
    else:
        if ref is None:
            raise ValueError(f"--target {args.target} needs --ref (the reference label NIfTI)")
        if args.target == "reference":
            target = targets.reference(args.class_index, ref)
        elif args.target == "lesion":  # one map of one lesion, no miss analysis
            if args.lesion is None:
                raise ValueError("--target lesion needs --lesion N (or an id such as ref-2)")
            which = int(args.lesion) if str(args.lesion).isdigit() else args.lesion
            target = targets.lesion(args.class_index, ref, which)
        else:
            target = targets.missed(args.class_index, pred=pred, ref=ref)
    written = []
    for method in methods:
        exp = explain(adapter, image[None], target, method=method, layer=args.layer,
                      batch_size=args.batch_size, **_method_kwargs(args, method))
        stem = f"{case}_{method}_{args.target}"
        exp.to_nifti(out / f"{stem}.nii.gz", affine=affine)
        _explain_png(out / f"{stem}.png", image, target.mask, pred == args.class_index,
                     exp.attribution, spacing, f"{case}: {method}, {args.target}")
        gate = map_gate(exp.attribution)
        if gate:
            print(f"warning: {method} map fails its gates ({gate}); do not read it as evidence",
                  file=sys.stderr)
        print(f"target: {target.describe()}")
        print(f"method: {exp.method} (layer {exp.layer}), {exp.elapsed_s:.2f} s")
        share = localisation(exp.attribution, target.mask)
        print(f"share of positive attribution inside the target: {share:.2f}")
        written += [out / f"{stem}.nii.gz", out / f"{stem}.png"]
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


def _explain_inputs(args: argparse.Namespace):
    """Image (spatial, float32), reference (or None), affine and spacing of ``explain``, loaded
    with the audit's checks: readable NIfTI, one grid, declared label values."""
    import numpy as np

    from medseg_xai.cohort import load_on_one_grid

    paths = {"image": _input_file(args.image, "image", folder=True),
             "reference": None if args.ref is None else _input_file(args.ref, "reference")}
    from pathlib import Path

    arrays, affine = load_on_one_grid(Path(args.image).name, paths, "image", images=("image",),
                                      labels=args.labels, binarize=args.binarize)
    image = arrays["image"][0]
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:image.ndim, :image.ndim], axis=0))
    return image, arrays.get("reference"), affine, spacing


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
    _add_label_options(p)
    p.add_argument("--lesions", default=None, metavar="CSV",
                   help="also match lesions; write the lesion table to CSV and print a summary")
    p.set_defaults(func=_run_metrics)


def _run_metrics(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np

    from medseg_xai.cohort import load_on_one_grid
    from medseg_xai.metrics import evaluate_case

    # the audit's checks: readable NIfTI, one grid (shape, spacing, orientation), label values
    arrays, affine = load_on_one_grid(
        Path(args.prediction).name,
        {"reference": _input_file(args.reference, "reference"),
         "prediction": _input_file(args.prediction, "prediction")},
        "reference", labels=args.labels, binarize=args.binarize)
    pred, ref = arrays["prediction"], arrays["reference"]
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:ref.ndim, :ref.ndim], axis=0))
    if args.labels is None:
        pred, ref = pred > 0, ref > 0  # checked binary (or --binarize) above
    values = evaluate_case(pred, ref, spacing=spacing, labels=args.labels,
                           tolerance=args.tolerance, percentile=args.percentile, empty=args.empty)
    if args.lesions:
        from medseg_xai._io import write_csv
        from medseg_xai.metrics import lesion_summary, lesions

        table = lesions(pred > 0, ref > 0, spacing=spacing)
        write_csv(table, args.lesions)
        values["lesions"] = lesion_summary(table)
    print(json.dumps(values, indent=2, default=str))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``medseg-xai`` console script (exit codes: :data:`EXIT_CODES`)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: argparse prints one line, exit 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_OK
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        # bad input: the message names the case, the field and what was expected
        _fail(args, f"error: {_one_line(err)}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _fail(args, "interrupted")
        return 130
    except OSError as err:  # disk full, read-only or unwritable folder: the machine, not data
        if args.debug:
            raise
        text = _one_line(err)
        if "rerun" not in text:  # the engine's infrastructure errors already say what to do
            text += " (nothing was left half-written; free space or fix permissions and rerun, "
            text += "--cache resumes)"
        _fail(args, f"error: {text}")
        return EXIT_INTERNAL
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, exit 1
        if args.debug:
            raise
        _fail(args, f"internal error: {type(err).__name__}: {_one_line(err)} (rerun with "
                    "--debug for the traceback)")
        return EXIT_INTERNAL


def _one_line(err: BaseException) -> str:
    from medseg_xai._privacy import redact_paths

    text = str(err) or type(err).__name__
    if type(err).__name__ == "JSONDecodeError":  # json's own text names neither file nor need
        text = f"expected a valid JSON file, could not parse it ({err.msg} at line {err.lineno})"
    if isinstance(err, OSError) and err.strerror:  # no "[Errno 28]" prefix
        text = f"{err.strerror}: {err.filename}" if err.filename else str(err.strerror)
    return redact_paths(" ".join(text.split()))


def _fail(args: argparse.Namespace, message: str) -> None:
    print(f"medseg-xai {args.command}: {message}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
