"""``medseg-xai demo``: the main job end to end on a small cohort, and its choices."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medseg_xai.demo.run_demo import run_demo, worst_missed_lesion


def test_worst_missed_lesion_is_the_largest_missed_one() -> None:
    lesions = pd.DataFrame({
        "case_id": ["a", "a", "b", "c", "d"],
        "lesion_id": ["ref-1", "ref-2", "ref-1", "pred-1", "ref-1"],
        "status": ["detected", "missed", "missed", "false_positive", "missed"],
        "volume_mm3": [5000.0, 40.0, 300.0, 9000.0, 300.0],
    })
    row = worst_missed_lesion(lesions)
    # Largest missed volume is 300 (b and d): the tie goes to the first case id.
    assert (row["case_id"], row["lesion_id"]) == ("b", "ref-1")
    assert worst_missed_lesion(lesions[lesions["status"] != "missed"]) is None
    assert worst_missed_lesion(lesions.iloc[:0]) is None


def test_demo_rejects_a_cohort_too_small(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_cases"):
        run_demo(tmp_path, n_cases=2)


def test_demo_end_to_end(demo_run) -> None:
    # The shared session fixture (tests/conftest.py): run_demo(n_cases=12, seed=1) once.
    out = demo_run
    lines = out.summary
    result = out.result
    # Every manifest row is accounted for, in the tables on disk as in memory.
    manifest = pd.read_csv(out.manifest)
    cases = pd.read_csv(out.files["cases"])
    assert len(manifest) == len(cases) == len(result.cases) == 12
    data = json.loads(out.files["json"].read_text(encoding="utf-8"))
    assert len(data["tables"]["cases"]["data"]) == 12
    assert set(result.subgroups["stratum"]) >= {"device", "site", "lesion_size"}
    # The summary reports what the audit found, not canned text.
    n_ok = int((result.cases["status"] == "ok").sum())
    assert f"cases: 12 ({n_ok} evaluated, {12 - n_ok} failed)" in lines
    assert f"verdict: {data['verdict']}" in lines
    html = out.report.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert "Canon Vantage 1.5T" in html  # the device absent from training is audited
    missed = result.lesions[result.lesions["status"] == "missed"]
    if len(missed):
        e = out.explained
        key = tuple(worst_missed_lesion(result.lesions)[["case_id", "lesion_id"]])
        assert (e["case_id"], e["lesion_id"]) == key
        # One explanation run: the files come from the gallery entry's own MissAnalysis.
        entry = next(g for g in result.explanations
                     if (g["case_id"], g["lesion_id"]) == key and g["analysis"])
        a = e["analysis"]
        assert a.to_dict() == entry["analysis"]
        names = {p.name for p in e["files"]}
        stem = f"{e['case_id']}_{e['lesion_id']}"
        assert f"{stem}_miss.json" in names and all(n.startswith(e["case_id"]) for n in names)
        assert json.loads((out.files["explanations"] / f"{stem}_miss.json").read_text()) == (
            entry["analysis"])
        src = nib.load(str(out.out_dir / "cohort" / "images" / f"{e['case_id']}.nii.gz"))
        for method, attr in a.attributions.items():
            img = nib.load(str(out.files["explanations"] / f"{stem}_{method}.nii.gz"))
            assert img.shape == src.shape[-3:]
            np.testing.assert_allclose(img.affine, src.affine)
            np.testing.assert_allclose(np.asarray(img.dataobj), attr, rtol=1e-6)
            png = out.files["explanations"] / f"{stem}_{method}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # The summary states the analysis' causes and headline, not a second opinion.
        causes = ", ".join(a.causes) if a.causes else "no probe explains it"
        assert any(line.startswith(f"worst missed lesion: {e['lesion_id']} in case "
                                   f"{e['case_id']}") and line.endswith(f"causes: {causes}")
                   for line in lines)
        assert f"  {a.verdict_lines[0]}" in lines
        assert e["case_id"] in html


def test_demo_audit_holds_failure_detection_and_shows_it(demo_run) -> None:
    # Issue 27 in the main job: the demo audits with its model, one test-time flip, failure
    # detection for "dice < 0.5" and the OOD score referenced to the training scanners.
    from medseg_xai.demo import UNSEEN_DEVICE, load_model
    from medseg_xai.demo.run_demo import (
        DEMO_FAILURE,
        DEMO_UNCERTAINTY_FLIPS,
        failure_lines,
        training_devices,
    )

    out, result = demo_run, demo_run.result
    manifest = pd.read_csv(out.manifest, dtype=str)
    trained = training_devices(manifest)
    assert trained and UNSEEN_DEVICE not in trained
    assert result.settings["feature_reference"] == {"device": trained}
    assert tuple(result.settings["uncertainty"]["flips"]) == DEMO_UNCERTAINTY_FLIPS
    assert result.settings["failure"]["failure"] == DEMO_FAILURE
    # the model audited is the one whose predictions are stored, and provenance names it
    assert result.settings["inference"] is True
    fingerprint = load_model().fingerprint
    assert result.provenance["model_fingerprint"] == result.report["model_fingerprint"] == (
        fingerprint)
    ok = result.cases[result.cases["status"] == "ok"]
    # the audit's own pass is the plain member: 1 + one flip = 2 members per scan
    assert (ok["unc_members"] == 1 + len(DEMO_UNCERTAINTY_FLIPS)).all()
    for col in ("unc_entropy", "unc_disagreement", "ood_score", "unc_combined", "ece"):
        assert ok[col].notna().all(), col
    fd, cal = result.failure_detection, result.calibration
    assert len(fd) and len(cal) and len(result.selective) and len(result.risk_coverage)
    assert {"unc_entropy", "unc_disagreement", "unc_volume_cv", "ood_score",
            "unc_combined"} <= set(fd["score"])
    assert fd["best"].any() and "overall" in set(cal["stratum"])  # groups: >= min_n scans
    n_fail = int((ok["dice"] < 0.5).sum())
    assert int(fd.loc[(fd["stratum"] == "overall"), "n_failures"].iloc[0]) == n_fail
    # audit.json and the CSV tables hold them; the report has the section
    data = json.loads(out.files["json"].read_text(encoding="utf-8"))
    for name in ("failure_detection", "calibration", "selective"):
        assert data["tables"][name]["data"], name
        assert len(pd.read_csv(out.files[name])) == len(getattr(result, name)), name
    html = out.report.read_text(encoding="utf-8")
    assert "Failure detection, calibration and hidden strata" in html
    assert 'id="failure-detection-overall"' in html and 'id="calibration-table"' in html
    # the printed summary: the best score's sentence at the target coverage, from the tables
    lines = failure_lines(result)
    assert lines and lines == [x for x in out.summary if x in lines]
    sel = result.selective
    row = sel[sel["best"] & (sel["coverage_target"] == 0.8)].iloc[0]
    assert lines[0].startswith(f"failure detection: Failure was pre-specified as Dice < 0.5 "
                               f"({n_fail} of {len(ok)} scans failed). {row['sentence']} AURC ")
    assert f"above {row['threshold']:.3g}, go to a human" in lines[0]
    assert f"mean Dice {row['retained_metric']:.3f}" in lines[0]
    assert not any(t in x for x in lines for t in ("unc_", "ood_score", "dice"))
    # the worst-caught group (>= MIN_GROUP_FAILURES failures) at the target threshold, recounted
    from medseg_xai.audit.failure import MIN_GROUP_FAILURES, percent

    sub = fd[(fd["stratum"] != "overall") & (fd["score"] == row["score"])
             & (fd["n_failures"] >= MIN_GROUP_FAILURES)]
    if sub.empty:  # the 12-scan session demo: no group with that many failures
        assert row["worst_group"] == "" and len(lines) == 2
    else:
        w = sub.sort_values(["caught", "n_failures"], ascending=[True, False],
                            kind="stable").iloc[0]
        assert lines[1] == (f"  {row['worst_group']}") and row["worst_group"].startswith(
            f"At the threshold for 80% coverage ({row['score_label']} above "
            f"{row['threshold']:.3g}), {w['stratum'].replace('_', ' ')} {w['group']} has the lowest share of its "
            f"failures caught: {percent(w['caught'])} ({int(w['n_caught'])} of "
            f"{int(w['n_failures'])})")
    assert lines[-1].startswith(f"  held-out scanner {UNSEEN_DEVICE}")


def test_demo_stored_predictions_are_the_audited_ones(demo_run) -> None:
    # The files written for the other jobs and the audit's own inference agree case by case.
    from medseg_xai.metrics import dice

    manifest = pd.read_csv(demo_run.manifest, dtype=str)
    cases = demo_run.result.cases.set_index("case_id")
    base = demo_run.manifest.parent
    for row in manifest.itertuples():
        pred = np.asarray(nib.load(str(base / row.prediction)).dataobj) > 0
        ref = np.asarray(nib.load(str(base / row.label)).dataobj) > 0
        expected = cases.loc[row.case_id, "dice"]
        got = dice(pred, ref, empty=demo_run.result.settings["empty"])
        assert got == pytest.approx(expected, abs=1e-9, nan_ok=True), row.case_id
