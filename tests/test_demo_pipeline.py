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
