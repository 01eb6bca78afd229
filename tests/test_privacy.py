"""No patient identifier reaches a result, its JSON or the HTML report.

Identifiers hide in three places: DICOM headers (PatientName / PatientID / PatientBirthDate),
the manifest's ``patient_id`` column, and folder names (``/data/DOE^JOHN/ct.nii.gz``) that
failed cases' error texts would otherwise carry verbatim.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from medseg_xai._privacy import redact_paths  # noqa: E402
from medseg_xai.audit import audit  # noqa: E402
from medseg_xai.cohort import Cohort  # noqa: E402
from medseg_xai.reports import render_html  # noqa: E402

PATIENT_DIR = "DOE^JOHN_MRN778899"
IDENTIFIERS = ("Doe", "DOE", "12345", "19500101", "MRN778899", "PAT-SECRET")
FAST = {"n_resamples": 50, "progress": False, "min_n": 2, "executor": "serial"}

_segment = st.text(st.sampled_from("abcXYZ019^_-. "), min_size=1, max_size=8).filter(
    lambda s: s.strip(" .") != ""
)


@given(dirs=st.lists(_segment, min_size=1, max_size=4), name=_segment)
def test_redact_paths_keeps_only_the_file_name(dirs, name):
    path = "/" + "/".join(d.strip() or "d" for d in dirs) + "/" + name.strip()
    text = f"case 'c1': label file not found: expected a file at {path!r}"
    out = redact_paths(text, [path])
    assert out == f"case 'c1': label file not found: expected a file at {name.strip()!r}"


def test_redact_paths_unknown_paths_windows_and_plain_text():
    assert redact_paths("sidecar /data/DOE^JOHN/x.json: bad") == "sidecar x.json: bad"
    assert redact_paths(r"read C:\Data\Doe John\img.nii", [r"C:\Data\Doe John\img.nii"]) == (
        "read img.nii"
    )
    assert redact_paths(r"at \\server\share\DOE\a.nii.gz") == "at a.nii.gz"
    assert redact_paths("x=/mnt/DOE/y.nii, (/srv/a/b)") == "x=y.nii, (b)"
    for text in ("expected 1/2 and/or a relative dir/file.nii.gz, got 3.5 mm /s",
                 "<script>alert(1)</script> Zürich 'single' & 東京", "root folder / only"):
        assert redact_paths(text) == text


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)


@pytest.fixture(scope="module")
def dicom_audit(tmp_path_factory):
    """A DICOM-derived cohort under a patient-named folder; two of its five rows fail."""
    pytest.importorskip("pydicom")
    from test_cohort import _write_series

    root = tmp_path_factory.mktemp("hospital")
    patient = root / PATIENT_DIR
    _write_series(patient / "series")
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])  # MONAI reads the DICOM series in RAS
    lab = np.zeros((16, 16, 4), np.uint8)
    lab[4:9, 4:9, 1:3] = 1
    rows = []
    for i in range(5):
        pred = lab.copy()
        pred[4:4 + i, 4:9, 1:3] = 0
        _save(patient / f"lab{i}.nii.gz", lab, affine)
        _save(patient / f"pred{i}.nii.gz", pred, affine)
        rows.append({"case_id": f"d{i}", "image": f"{PATIENT_DIR}/series",
                     "label": f"{PATIENT_DIR}/lab{i}.nii.gz",
                     "prediction": str(patient / f"pred{i}.nii.gz"),  # absolute on purpose
                     "patient_id": "PAT-SECRET" if i < 3 else "PAT-OTHER",
                     "PatientBirthDate": "19500101"})
    rows[3]["label"] = f"{PATIENT_DIR}/missing.nii.gz"  # problem found up front
    (patient / "corrupt.nii.gz").write_bytes(b"not a volume")
    rows[4]["prediction"] = str(patient / "corrupt.nii.gz")  # fails while loading
    with pytest.warns(UserWarning):  # identifier column dropped, one row problem
        cohort = Cohort.from_dataframe(pd.DataFrame(rows), root=root)
    result = audit(cohort, strata=["device"], **FAST)
    from medseg_xai.audit.explanations import explain_failures

    result.explanations = explain_failures(result, cohort)  # the gallery travels in the result
    html = render_html(result)
    return cohort, result, result.to_json(), html


def test_dicom_cohort_metadata_comes_from_an_allow_list(dicom_audit):
    cohort, result, _, _ = dicom_audit
    assert cohort.manifest.loc[0, "device"] == "ACME Scan 9"
    assert "PatientBirthDate" not in cohort.manifest.columns
    assert set(result.cases.loc[result.cases["status"] == "ok", "device"]) == {"ACME Scan 9"}


def test_failed_rows_keep_their_reason_but_not_their_folders(dicom_audit):
    _, result, doc, html = dicom_audit
    errors = result.cases.set_index("case_id")["error"]
    assert result.n_failed == 2 and result.n_evaluated == 3
    assert "label file not found" in errors["d3"] and "'missing.nii.gz'" in errors["d3"]
    assert "could not read prediction file 'corrupt.nii.gz': not a NIfTI file" in errors["d4"]
    for text in (*errors, doc, html):
        assert PATIENT_DIR not in text and "MRN778899" not in text
    assert "corrupt.nii.gz" in html  # the reason is still in the report


def test_no_identifier_in_json_or_html(dicom_audit):
    _, result, doc, html = dicom_audit
    # embedded figures are base64 payloads: random runs such as "Doe" occur there by chance
    text = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", "data:", html)
    assert "base64," in html and "base64," not in text
    for ident in IDENTIFIERS:
        assert ident not in doc, ident
        assert ident not in text, ident
    # patients stay grouped (cluster bootstrap) under ids that mean nothing outside the run
    assert result.cases["patient_id"].tolist() == ["p-0001"] * 3 + ["p-0002"] * 2
    assert "p-0001" not in html  # the report shows no patient column at all
    assert json.loads(doc)["provenance"]["pseudonymised"] is False


def test_report_redacts_paths_from_stored_results_and_command_line(real_audit):
    import dataclasses

    result = dataclasses.replace(real_audit, cases=real_audit.cases.copy())  # a real audit
    failed = result.cases["status"] == "failed"
    result.cases.loc[failed, "error"] = "could not read '/data/DOE^JOHN/ct.nii.gz'"
    html = render_html(result, config={"command_line": "medseg-xai audit /data/DOE^JOHN/m.csv"})
    assert "DOE^JOHN" not in html
    assert "could not read &#39;ct.nii.gz&#39;" in html and "medseg-xai audit m.csv" in html
