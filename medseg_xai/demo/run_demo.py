"""``medseg-xai demo``: every job end to end on the embedded default (cohort + bundled model).

The pipeline: generate the synthetic multi-site cohort, predict it with the bundled 3D UNet
(the prediction and probability files the other jobs read), audit it with the same model by
device, site and lesion size against the default acceptance criteria -- with per-case
uncertainty from a test-time flip, failure detection for "dice < 0.5", calibration per subgroup,
hidden strata and the OOD score referenced to the training scanners --, explain the failure
gallery (``explain_miss`` on the largest missed lesion and the gallery's worst cases: probes,
gated attribution evidence, causes, verdict) in the result, and write the JSON, CSV tables,
report and, from the same analyses, the explanation files.

The report is a view of ``audit.json``: ``medseg-xai report audit.json --out report.html``
re-renders the same page, and ``medseg-xai audit`` on the demo's manifest with the settings
:func:`audit_command` lists reproduces its tables.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.audit.failure import failure_label, percent, score_label

__all__ = ["DemoOutputs", "DEMO_FAILURE", "DEMO_LESION_SIZE_BINS", "DEMO_STRATA",
           "DEMO_UNCERTAINTY_FLIPS", "audit_command", "failure_lines", "run_demo",
           "training_devices", "worst_missed_lesion"]

#: Strata of the demo audit: the acquisition device (one was absent from training), the site
#: (confounded with device and lesion size, as in practice) and the derived lesion-size bins.
DEMO_STRATA: tuple[str, ...] = ("device", "site", "lesion_size")
#: Fixed, readable edges (mm^3 of reference lesion per scan) instead of data-driven quantiles.
DEMO_LESION_SIZE_BINS: tuple[float, ...] = (0.0, 250.0, 1000.0)
#: Simulated readers per scan (``make_cohort(readers=...)``): the report's reader section.
DEMO_READERS = 3
#: Test-time augmentation of the demo audit's uncertainty: one left-right flip (the last axis:
#: the heads' own symmetry, and the bundled model's training augmentation). The audit's own
#: pass is the plain member, so this costs one extra forward pass per scan.
DEMO_UNCERTAINTY_FLIPS: tuple[int, ...] = (2,)
#: The failure the demo's failure detection looks for (``FailureSettings``' default).
DEMO_FAILURE = "dice < 0.5"

_REPORT_CONFIG: dict[str, Any] = {
    "title": "medseg-xai demo: audit of the bundled lesion segmentation model",
    "model_name": "medseg-xai demo 3D UNet",
    "model_version": "bundled",
    "intended_use": (
        "Demonstration only: segmentation of focal lesions on synthetic head MRI-like volumes. "
        "Not for clinical use."
    ),
    "intended_users": "ML engineers and quality / regulatory staff evaluating medseg-xai.",
    "reference_standard": "Synthetic ground truth: the lesion masks the phantom generator drew.",
    "annotators": (
        "No human annotator: the reference labels are the generator's own masks. Three "
        "simulated readers (the generator's masks, perturbed) are compared with the reference "
        "and the model in the readers section; they are not the reference."),
    "adjudication": "Not applicable: the reference is the generator's mask, not a combination "
                    "of readers.",
    "test_set": (
        "A synthetic multi-site cohort generated with its own seed by "
        "medseg_xai.demo.make_cohort; one of its devices was absent from the model's training."
    ),
    "limitations": [
        "Synthetic data: effects are planted on purpose to show what the audit finds.",
    ],
}


@dataclass
class DemoOutputs:
    """Where the demo wrote its outputs and the objects it built."""

    out_dir: Path
    manifest: Path
    report: Path
    files: dict[str, Path] = field(default_factory=dict)
    result: Any = None
    explanation: Any = None
    explained: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)


def worst_missed_lesion(lesions: pd.DataFrame) -> pd.Series | None:
    """The missed reference lesion that matters most: the largest by volume (mm^3).

    Parameters
    ----------
    lesions : pandas.DataFrame
        ``AuditResult.lesions`` (needs ``case_id``, ``status``, ``volume_mm3``).

    Returns
    -------
    pandas.Series or None
        Its row, or None when the model missed no lesion.
    """
    if lesions is None or len(lesions) == 0 or "status" not in lesions:
        return None
    missed = lesions[lesions["status"] == "missed"]
    if missed.empty:
        return None
    # Largest first; ties broken by case id so the choice is deterministic.
    order = missed.sort_values(["volume_mm3", "case_id"], ascending=[False, True], kind="mergesort")
    return order.iloc[0]


def _write_explanations(cohort: Any, analyses: dict[tuple[str, str], Any],
                        out_dir: Path) -> dict[tuple[str, str], list[Path]]:
    """The files of the lesions the gallery explained (no second explanation run): their
    MissAnalysis JSON, and per attribution method a NIfTI on the source affine and a PNG."""
    from medseg_xai.miss_files import write_miss_files

    written: dict[tuple[str, str], list[Path]] = {}
    for (case_id, lesion_id), analysis in analyses.items():
        case = cohort.load_case(case_id)
        pred = None if case.prediction is None else np.asarray(case.prediction) != 0
        written[(case_id, lesion_id)], _ = write_miss_files(
            analysis, out_dir, case_id=case_id, image=case.image, pred=pred,
            affine=getattr(case, "affine", None), spacing=case.spacing)
    return written


def training_devices(manifest: pd.DataFrame) -> list[str]:
    """The demo cohort's scanners the bundled model was trained on (every one but
    ``demo.UNSEEN_DEVICE``), in the cohort: the reference of the audit's feature shift and
    OOD score. Empty when fewer than 3 of its scans come from them (too few to estimate a
    reference: the whole cohort is the reference then)."""
    from medseg_xai.demo import DEVICES, UNSEEN_DEVICE

    present = manifest["device"].astype(str) if "device" in manifest else pd.Series(dtype=str)
    trained = [d for d in DEVICES if d != UNSEEN_DEVICE and (present == d).any()]
    return trained if int(present.isin(trained).sum()) >= 3 else []


def _audit_plan(manifest: pd.DataFrame, seed: int) -> Any:
    """The demo audit's plan: strata, the default criteria, the lesion-size bins and the
    feature-shift reference (the training scanners)."""
    from medseg_xai.audit import DEFAULT_CRITERIA
    from medseg_xai.audit.plan import AuditPlan

    trained = training_devices(manifest)
    return AuditPlan.from_options(strata=list(DEMO_STRATA), seed=seed, criteria=DEFAULT_CRITERIA,
                                  lesion_size_bins=DEMO_LESION_SIZE_BINS,
                                  feature_reference={"device": trained} if trained else None)


def _audit_stage(manifest: Any, adapter: Any, n_cases: int, seed: int, workers: int | None,
                 progress: bool) -> tuple[Any, Any]:
    """The cohort of the predicted manifest and its audit, with the model, by device, site and
    lesion size, with uncertainty and failure detection.

    The stored predictions are the same model's; the audit runs it again (its pooled features
    feed the OOD score, and its probabilities are the plain member of the test-time flips, so
    the flips cost one forward pass each: nothing else is run twice).
    """
    from medseg_xai.audit import audit
    from medseg_xai.cohort import Cohort

    cohort = Cohort.from_csv(manifest)
    config = {**_REPORT_CONFIG, "model_fingerprint": adapter.fingerprint,
              "command_line": f"medseg-xai demo --n-cases {int(n_cases)} --seed {int(seed)}"}
    plan = _audit_plan(cohort.manifest, seed)
    result = audit(cohort, plan, adapter=adapter, workers=workers, progress=progress,
                   report=config, uncertainty={"flips": DEMO_UNCERTAINTY_FLIPS},
                   failure=DEMO_FAILURE)
    return cohort, result


def _explain_stage(result: Any, cohort: Any, adapter: Any, seed: int, figures: Path
                   ) -> tuple[dict[tuple[str, str], list[Path]], dict[str, Any]]:
    """The failure gallery into the result; files and summary of the largest missed lesion."""
    from medseg_xai.audit.explanations import explain_failures

    worst = worst_missed_lesion(result.lesions)
    extra = [] if worst is None else [(str(worst["case_id"]), str(worst["lesion_id"]))]
    # The gallery lives in the result (and audit.json): the report only draws it. The largest
    # missed lesion is one of its entries (explain_miss: probes re-run through the model), and
    # the files below are written from those same analyses.
    analyses: dict[tuple[str, str], Any] = {}
    result.explanations = explain_failures(result, cohort, adapter, extra=extra, seed=seed,
                                           max_explanations=2, analyses=analyses)
    # Files for the largest missed lesion only (PNGs cost ~1 s each); the others are in the JSON.
    written = _write_explanations(cohort, {k: analyses[k] for k in extra if k in analyses},
                                  figures)
    explained: dict[str, Any] = {}
    if extra and extra[0] in analyses:
        a = analyses[extra[0]]
        explained = {"case_id": extra[0][0], "lesion_id": extra[0][1], "analysis": a,
                     "volume_mm3": float(worst["volume_mm3"]), "files": written[extra[0]]}
    return written, explained


def _write_stage(result: Any, out: Path, any_written: bool, figures: Path
                 ) -> tuple[dict[str, Any], Path]:
    """Write the JSON, tables and report; the files written and the report's path."""
    from medseg_xai.audit import write_outputs

    files = write_outputs(result, out)
    if any_written:  # CASE_LESION_miss.json, CASE_LESION_METHOD.nii.gz / .png
        files["explanations"] = figures
    report = Path(result.to_html(out / "report.html"))
    files["html"] = report
    return files, report


def run_demo(
    out_dir: str | Path = "medseg-xai-demo",
    *,
    n_cases: int = 120,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    device: Any = "cpu",
) -> DemoOutputs:
    """Run the whole demo and write its outputs into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created). The cohort goes to ``out_dir/cohort``.
    n_cases : int
        Size of the synthetic cohort.
    seed : int
        Seed of the cohort and of the audit's bootstrap.
    workers : int, optional
        Processes for the audit (default: one, as for any audit with a model: on the demo's
        small scans the workers' start-up, a torch import each, costs more than they save).
    progress : bool
        Show progress bars.
    echo : callable, optional
        Receives one line of summary at a time (``print`` in the CLI).
    device : str or torch.device
        Where the demo model runs (``"cpu"``, ``"cuda"``, ``"cuda:N"``; ``--device`` in the CLI).

    Returns
    -------
    DemoOutputs
    """
    from medseg_xai.demo import load_model, make_cohort, predict_cohort

    say = echo or (lambda _line: None)
    if int(n_cases) < 4:
        raise ValueError(f"n_cases: expected at least 4 cases for a meaningful audit, got {n_cases}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    say(f"[1/5] generating {n_cases} synthetic cases (seed {seed}) ...")
    manifest = make_cohort(out / "cohort", n_cases=n_cases, seed=seed, readers=DEMO_READERS)
    timings["cohort_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("[2/5] predicting with the bundled demo model ...")
    adapter = load_model(device=device)
    manifest = predict_cohort(manifest, adapter, progress=progress)
    timings["predict_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say(f"[3/5] auditing with the model by device, site and lesion size (test-time flips: "
        f"{len(DEMO_UNCERTAINTY_FLIPS)}, failure: {failure_label(DEMO_FAILURE)}) ...")
    cohort, result = _audit_stage(manifest, adapter, n_cases, seed, workers, progress)
    timings["audit_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("[4/5] explaining the worst missed lesion and the failure gallery ...")
    figures = out / "explanations"
    figures.mkdir(exist_ok=True)
    written, explained = _explain_stage(result, cohort, adapter, seed, figures)
    timings["explain_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    say("[5/5] writing the JSON, tables and report ...")
    files, report = _write_stage(result, out, bool(written), figures)
    timings["report_s"] = time.perf_counter() - t0

    outputs = DemoOutputs(out_dir=out, manifest=Path(manifest), report=report, files=files,
                          result=result, explanation=explained.get("analysis"),
                          explained=explained, timings=timings)
    outputs.summary = summary_lines(outputs)
    for line in outputs.summary:
        say(line)
    return outputs


def audit_command(manifest: str | Path, out_dir: str | Path, seed: int = 0) -> list[str]:
    """``medseg-xai audit`` arguments that reproduce the demo's audit tables on its manifest
    (with the demo model, its test-time flip, failure definition and feature reference)."""
    bins = [f"{b:g}" for b in DEMO_LESION_SIZE_BINS]
    trained = training_devices(pd.read_csv(manifest, dtype=str))
    reference = ["--feature-reference", "device=" + ",".join(trained)] if trained else []
    return ["audit", str(manifest), "--out", str(out_dir), "--strata", *DEMO_STRATA,
            "--criteria", "default", "--lesion-size-bins", *bins, "--seed", str(int(seed)),
            "--model", "demo", "--uncertainty-flips", *map(str, DEMO_UNCERTAINTY_FLIPS),
            "--failure", DEMO_FAILURE, *reference]


def summary_lines(outputs: DemoOutputs) -> list[str]:
    """A short plain-text summary of a demo run: key numbers, verdicts and where files are."""
    result = outputs.result
    cases = result.cases
    ok = cases[cases["status"] == "ok"]
    lines = [
        "",
        f"cases: {len(cases)} ({len(ok)} evaluated, {len(cases) - len(ok)} failed)",
    ]
    if "dice" in ok and len(ok):
        lines.append(f"mean Dice: {ok['dice'].mean():.3f}")
    sub = result.subgroups
    if len(sub):
        dice = sub[(sub["metric"] == "dice") & (sub["stratum"] == "device")]
        for _, r in dice.sort_values("estimate").iterrows():
            lines.append(
                f"  device {r['group']}: Dice {r['estimate']:.3f} "
                f"({r['ci_low']:.3f} to {r['ci_high']:.3f}) n={int(r['n'])}"
                + (f"  ({r['flag']})" if isinstance(r.get("flag"), str) and r["flag"] else "")
            )
    ni = getattr(result, "reader_noninferiority", None)
    if ni is not None and len(ni):
        for _, r in ni[(ni["metric"] == "dice") & (ni["stratum"].isin(["overall", "device"]))].iterrows():
            lines.append(f"  readers, {r['group']}: model - reader Dice {r['difference']:+.3f} "
                         f"({r['ci_low']:+.3f} to {r['ci_high']:+.3f}): {r['status']}")
    lines.append(f"verdict: {result.verdict}")
    for r in result.verdicts.to_dict("records"):
        lines.append(f"  {r['status']:<17} {r['criterion']} ({r['n_pass']} pass, {r['n_fail']} "
                     f"fail, {r['n_insufficient']} insufficient, {r['n_not_evaluated']} not "
                     "evaluated)")
    lines += failure_lines(result)
    if outputs.explained:
        e = outputs.explained
        a = e["analysis"]
        causes = ", ".join(a.causes) if a.causes else "no probe explains it"
        lines.append(f"worst missed lesion: {e['lesion_id']} in case {e['case_id']} "
                     f"({e['volume_mm3']:.0f} mm3); causes: {causes}")
        lines.append(f"  {a.verdict_lines[0]}")
    lines.append(f"report: {outputs.report}")
    for name, path in outputs.files.items():
        if name != "html":
            lines.append(f"  {name:<18} {path}")
    total = sum(outputs.timings.values())
    lines.append(f"done in {total:.1f} s")
    return lines


def failure_lines(result: Any) -> list[str]:
    """The failure-detection lines of the summary, shown as ``result`` holds them.

    The best score's sentence at the target coverage (``result.selective``: what is referred
    to a human, the kept scans' mean metric and failures, the failures caught) with its AURC
    and Spearman correlation (``result.failure_detection``, overall), and what that threshold
    does on the held-out scanner (its ``device`` row; with the OOD score's row beside it).
    Empty when the audit ran without failure detection.
    """
    from medseg_xai.demo import UNSEEN_DEVICE
    from medseg_xai.metrics.metadata import metric_label

    settings = result.settings.get("failure") or {}
    sel, fd = result.selective, result.failure_detection
    if not settings or sel is None or sel.empty or fd is None or fd.empty:
        return []
    target = float(settings.get("target_coverage", 0.8))
    rows = sel[sel["best"].astype(bool) & np.isclose(sel["coverage_target"], target)]
    overall = fd[(fd["stratum"] == "overall") & fd["best"].astype(bool)]
    if rows.empty or overall.empty:
        return []
    r, o = rows.iloc[0], overall.iloc[0]
    lines = [f"failure detection: {r['failure_sentence']} {r['sentence']} AURC {o['aurc']:.3f} "
             f"(random {o['aurc_random']:.3f}), Spearman with {metric_label(r['metric'])} "
             f"{o['spearman_metric']:+.2f}."]
    if r.get("worst_group"):
        lines.append(f"  {r['worst_group']}")
    held = fd[(fd["stratum"] == "device") & (fd["group"] == UNSEEN_DEVICE)]
    best = held[held["score"] == r["score"]]
    if best.empty:
        lines.append(f"  held-out scanner {UNSEEN_DEVICE}: no failure-detection row (absent, or "
                     f"fewer than {result.settings.get('min_n')} scans)")
        return lines
    b = best.iloc[0]
    line = (f"  held-out scanner {UNSEEN_DEVICE} ({int(b['n'])} scans, {int(b['n_failures'])} "
            f"failures): that threshold refers {percent(b['referred'])} of its scans and "
            f"catches {_caught(b)} of its failures")
    ood = held[held["score"] == "ood_score"]
    if r["score"] != "ood_score" and len(ood):
        line += (f"; the {score_label('ood_score')}, at its own overall threshold, catches "
                 f"{_caught(ood.iloc[0])}")
    return lines + [line]


def _caught(row: Any) -> str:
    """``"76% (16 of 21)"`` from a failure-detection row (the share alone for old tables)."""
    if "n_caught" in row and pd.notna(row["n_caught"]):
        return f"{percent(row['caught'])} ({int(row['n_caught'])} of {int(row['n_failures'])})"
    return percent(row["caught"])
