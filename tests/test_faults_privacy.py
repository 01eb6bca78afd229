"""Privacy and injection classes of issue 13, end to end through the command line: identifier
columns, metadata that is not kept, spreadsheet formulas, paths with spaces (errors, warnings,
the recorded command line, ``run.cache_dir``), and case ids that would leave the output folder.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medseg_xai._privacy import (
    identifier_tokens,
    is_identifier_column,
    redact_paths,
    safe_file_name,
)
from medseg_xai.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from faults_helpers import write_cohort  # noqa: E402

IDENTIFIER_COLUMNS = {  # column -> one value per case (4 cases)
    "Patient Name": ["DOE^JOHN", "ROE^JANE", "POE^EDGAR", "MOE^ANNA"],
    "PatientID ": ["PID-4411", "PID-4412", "PID-4413", "PID-4414"],
    "mrn": ["MRN-90001", "MRN-90002", "MRN-90003", "MRN-90004"],
    "patient_dob": ["1950-01-01", "1961-02-02", "1972-03-03", "1983-04-04"],
    "SSN": ["123-45-6789", "223-45-6789", "323-45-6789", "423-45-6789"],
    "accession_number": ["ACC-777001", "ACC-777002", "ACC-777003", "ACC-777004"],
    "PatientBirthDate": ["19500101", "19610202", "19720303", "19830404"],
}
FORMULAS = ["=HYPERLINK(\"http://evil\",\"x\")", "+cmd|' /C calc'!A0", "-2+3", "@SUM(1)"]
SECRET_DIR = "John Doe MRN-90001"  # a folder name with spaces that must never be shared


@pytest.mark.parametrize("name", [*IDENTIFIER_COLUMNS, "patient name", "PATIENT-ID", "Patients_Name",
                                  "mother_mrn", "dateOfBirth", "e-mail", "Phone Number",
                                  "patientAddress", "NHS number", "AccessionNo"])
def test_identifier_columns_are_detected_by_normalised_name(name):
    assert is_identifier_column(name), identifier_tokens(name)


@pytest.mark.parametrize("name", ["patient_id", "device", "site", "scanner_name", "field_strength",
                                  "study_date", "age", "patient_age", "sex", "lesion_size",
                                  "manufacturer", "kernel", "slice_thickness"])
def test_metadata_columns_are_not_identifiers(name):
    assert not is_identifier_column(name)


@pytest.mark.parametrize("bad", ["../evil", "a/b", "a\\b", "..", ".", ".hidden", "", " ",
                                 "c:x", "nul\x00byte", "x/../../y"])
def test_case_ids_that_would_leave_the_folder_are_refused(bad, tmp_path):
    with pytest.raises(ValueError, match="case_id: expected a name usable as a file name"):
        safe_file_name(bad, ".nii.gz", folder=tmp_path)


def test_plain_case_ids_are_file_names(tmp_path):
    assert safe_file_name("case-01_a.b", ".nii.gz", folder=tmp_path) == "case-01_a.b.nii.gz"


def test_predict_cohort_refuses_escaping_ids_before_writing(tmp_path):
    from medseg_xai.demo import predict_cohort

    manifest = write_cohort(tmp_path / "c", n=2)
    df = pd.read_csv(manifest)
    df.loc[1, "case_id"] = "../../outside"
    df.to_csv(manifest, index=False)
    with pytest.raises(ValueError, match="case '../../outside': case_id"):
        predict_cohort(manifest, adapter=object(), out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.nii.gz"))
    assert not (tmp_path / "outside.nii.gz").exists()


@given(folder=st.lists(st.text(st.sampled_from("ab Z9^-_"), min_size=1, max_size=6)
                       .filter(lambda s: s.strip() != ""), min_size=1, max_size=3))
def test_unquoted_paths_with_spaces_are_redacted_whole(folder):
    path = "/" + "/".join(f.strip() for f in folder) + "/scan 1.nii.gz"
    out = redact_paths(f"cannot read {path}: bad header")
    assert out == "cannot read scan 1.nii.gz: bad header"


@pytest.fixture(scope="module")
def hostile_audit(tmp_path_factory):
    """A 4-case cohort under a folder with spaces, identifier columns, formulas in a stratum,
    a metadata column that is not kept, one missing file; audited through the CLI."""
    root = tmp_path_factory.mktemp("hostile") / SECRET_DIR
    extra = {**IDENTIFIER_COLUMNS, "site": FORMULAS, "notes": ["free text secret-note"] * 4,
             "scanner": ["S1", "S2", "S1", "S2"]}
    manifest = write_cohort(root / "data", n=4, extra=extra)
    (manifest.parent / "pred3.nii.gz").unlink()
    out, cache = root / "out", root / "cache dir"
    argv = ["audit", str(manifest), "--out", str(out), "--strata", "site", "--workers", "1",
            "--quiet", "--cache", str(cache), "--keep-columns", "scanner", "--max-failed", "1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(argv)
    # embedded images (base64) may hold any three letters by chance: not text, left out
    texts = {p.name: re.sub(r"data:[a-z/+]+;base64,[A-Za-z0-9+/=]+", "",
                            p.read_text(encoding="utf-8"))
             for p in out.iterdir() if p.suffix in (".json", ".csv", ".html")}
    return code, texts, [str(w.message) for w in caught], out


def test_identifier_columns_and_values_never_reach_an_output(hostile_audit):
    code, texts, warned, _ = hostile_audit
    assert code == 0  # one failed row, allowed by --max-failed 1
    assert {"audit.json", "cases.csv", "subgroups.csv", "report.html"} <= set(texts)
    for name, text in texts.items():
        for column, values in IDENTIFIER_COLUMNS.items():
            assert column.strip() not in text, (name, column)
            for value in values:
                assert value not in text, (name, value)
    assert any("dropping 7 direct-identifier column(s)" in w for w in warned)


def test_only_strata_and_declared_columns_are_kept(hostile_audit):
    _, texts, _, out = hostile_audit
    cases = pd.read_csv(out / "cases.csv", keep_default_na=False)
    assert "scanner" in cases and "site" in cases and "notes" not in cases
    assert all("secret-note" not in text for text in texts.values())


def test_formulas_are_neutralised_in_csv_and_kept_as_text_in_json(hostile_audit):
    _, texts, _, out = hostile_audit
    cases = pd.read_csv(out / "cases.csv", keep_default_na=False)
    assert cases["site"].tolist() == ["'" + f for f in FORMULAS]
    for name, text in texts.items():
        if name.endswith(".csv"):
            for formula in FORMULAS:
                for line in text.splitlines():
                    cells = [c.strip('"') for c in line.split(",")]
                    assert formula not in cells, (name, formula)
    doc = json.loads(texts["audit.json"])
    table = doc["tables"]["cases"]
    sites = [row[table["columns"].index("site")] for row in table["data"]]
    assert sites == FORMULAS  # JSON is data: the text exactly as given


def test_paths_with_spaces_are_redacted_everywhere(hostile_audit, capsys):
    _, texts, warned, out = hostile_audit
    doc = json.loads(texts["audit.json"])
    assert doc["run"]["cache_dir"] == "cache dir"
    errors = [e for e in pd.read_csv(out / "cases.csv", keep_default_na=False)["error"] if e]
    assert len(errors) == 1 and "'pred3.nii.gz'" in errors[0]
    for part in ("John", "Doe", "MRN-90001", str(out.parent)):
        for name, text in texts.items():
            assert part not in text, (name, part)
        for w in warned:
            assert part not in w, w
    assert "medseg-xai audit manifest.csv --out out" in texts["report.html"]


def test_stderr_errors_have_no_folders(tmp_path, capsys):
    folder = tmp_path / SECRET_DIR
    folder.mkdir()
    assert main(["audit", str(folder / "missing manifest.csv"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing manifest.csv" in err
    assert "John" not in err and "MRN" not in err


def test_identifier_columns_cannot_be_kept_on_request(tmp_path):
    import medseg_xai as mx

    manifest = write_cohort(tmp_path / "c", n=2, extra={"mrn": ["M1", "M2"], "notes": ["a", "b"]})
    with pytest.warns(UserWarning, match="dropping 1 direct-identifier"):
        cohort = mx.Cohort.from_csv(manifest)
    with pytest.raises(ValueError, match="keep_columns: 'mrn' is a direct-identifier column"):
        mx.audit(cohort, keep_columns=["mrn"], workers=1, progress=False)
    with pytest.raises(ValueError, match="keep_columns: expected metadata columns"):
        mx.audit(cohort, keep_columns=["nonexistent"], workers=1, progress=False)
    kept = mx.audit(cohort, keep_columns=["notes"], workers=1, progress=False, n_resamples=20)
    assert kept.cases["notes"].tolist() == ["a", "b"] and "site" not in kept.cases
    assert kept.provenance["manifest_hash"] == cohort.fingerprint()
