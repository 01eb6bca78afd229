"""convention= and matching= through mx.audit and the CLI, recorded in the result settings."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import medseg_xai as mx
from medseg_xai.cli import main
from medseg_xai.cohort import Cohort
from medseg_xai.metrics import evaluate_case, lesion_summary, lesions

AFFINE = np.diag([0.8, 0.8, 2.0, 1.0])
SHAPE = (10, 14, 14)


def _manifest(folder: Path, n: int = 4) -> Path:
    rng = np.random.default_rng(7)
    rows = []
    for i in range(n):
        lab = np.zeros(SHAPE, np.uint8)
        lab[2:6, 3:8, 4:9] = 1
        lab[7:9, 10:12, 10:12] = 1
        pred = np.roll(lab, i % 3, axis=2)
        pred[1, 1:3, 1:3] = 1
        img = rng.random(SHAPE).astype(np.float32)
        for name, arr in (("img", img), ("lab", lab), ("pred", pred)):
            nib.save(nib.Nifti1Image(arr, AFFINE), folder / f"{name}{i}.nii.gz")
        rows.append({"case_id": f"c{i}", "image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz",
                     "prediction": f"pred{i}.nii.gz", "device": "AB"[i % 2]})
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return _manifest(tmp_path_factory.mktemp("cohort"))


def test_audit_passes_convention_and_matching_through_and_records_them(manifest, tmp_path):
    cohort = Cohort.from_csv(manifest)
    result = mx.audit(cohort, workers=1, n_resamples=50, progress=False, min_n=1,
                      convention="panoptica", matching="hungarian", iou_threshold=0.3)
    assert result.settings["convention"] == "panoptica"
    assert result.settings["matching"] == "hungarian"
    assert result.settings["iou_threshold"] == 0.3
    case = cohort.load_case("c1")
    expected = evaluate_case(case.prediction > 0, case.label > 0, case.spacing,
                             convention="panoptica")
    row = result.cases.set_index("case_id").loc["c1"]
    for key in ("hd95", "assd", "masd", "nsd", "mcc"):
        assert row[key] == pytest.approx(expected[key], rel=1e-12)
    table = lesions(case.prediction > 0, case.label > 0, case.spacing, matching="hungarian",
                    iou_threshold=0.3)
    assert row["pq"] == pytest.approx(lesion_summary(table, n_cases=1)["pq"], nan_ok=True)
    result.to_json(tmp_path / "audit.json")
    settings = json.loads((tmp_path / "audit.json").read_text())["settings"]
    assert (settings["convention"], settings["matching"]) == ("panoptica", "hungarian")
    # default audit: MONAI's convention, covered-fraction matching
    default = mx.audit(cohort, workers=1, n_resamples=50, progress=False, min_n=1)
    assert (default.settings["convention"], default.settings["matching"]) == ("monai", "overlap")


def test_audit_rejects_unknown_names_before_running(manifest):
    cohort = Cohort.from_csv(manifest)
    with pytest.raises(ValueError, match=r"plan.metrics.convention: expected one of \['monai'"):
        mx.audit(cohort, workers=1, progress=False, convention="itk")
    with pytest.raises(ValueError, match=r"plan.decision.matching: expected one of \['overlap', 'hungarian'\]"):
        mx.audit(cohort, workers=1, progress=False, matching="greedy")


def test_cli_audit_convention_and_matching(manifest, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["audit", str(manifest), "--out", str(out), "--no-html", "--quiet",
                 "--workers", "1", "--convention", "medpy", "--matching", "hungarian"])
    assert code == 0
    settings = json.loads((out / "audit.json").read_text())["settings"]
    assert settings["convention"] == "medpy" and settings["matching"] == "hungarian"
    with pytest.raises(SystemExit) as err:
        main(["audit", str(manifest), "--out", str(out), "--convention", "itk"])
    assert err.value.code == 2
    assert "invalid choice: 'itk'" in capsys.readouterr().err
