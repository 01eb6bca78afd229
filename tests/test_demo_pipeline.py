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


def test_demo_end_to_end(tmp_path: Path) -> None:
    lines: list[str] = []
    out = run_demo(tmp_path / "demo", n_cases=12, seed=1, workers=1, progress=False,
                   echo=lines.append)
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
    html = out.report.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert "Canon Vantage 1.5T" in html  # the device absent from training is audited
    missed = result.lesions[result.lesions["status"] == "missed"]
    if len(missed):
        e = out.explained
        assert (e["case_id"], e["lesion_id"]) == tuple(
            worst_missed_lesion(result.lesions)[["case_id", "lesion_id"]])
        img = nib.load(str(out.files["explanation_nifti"]))
        src = nib.load(str(tmp_path / "demo" / "cohort" / "images" / f"{e['case_id']}.nii.gz"))
        assert img.shape == src.shape[-3:]
        np.testing.assert_allclose(img.affine, src.affine)
        # Share of positive attribution inside the lesion; undefined (NaN) only when the
        # signed Grad-CAM has no positive value anywhere.
        if (e["attribution"] > 0).any():
            assert 0.0 <= e["localisation"] <= 1.0
        else:
            assert np.isnan(e["localisation"])
        assert e["explanation"].params["relu"] is False
        assert out.files["explanation_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert e["case_id"] in html
