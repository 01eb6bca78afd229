"""Identifiers that no column name reveals (issue 28): identifier column names in other
languages, free text kept on request, and pseudonymisation from the command line with no
original id or file name in any output, error texts included."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

from medseg_xai import Cohort
from medseg_xai._privacy import free_text_findings, is_identifier_column, strip_file_names
from medseg_xai.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from faults_helpers import write_cohort  # noqa: E402

SALT = "a-secret-salt-of-32-characters!!"


@pytest.mark.parametrize("name", [
    "Prénom", "Nom", "date_de_naissance", "Date de naissance", "N° IPP", "numéro patient",
    "Vorname", "Nachname", "Geburtsdatum", "Patientennummer", "Straße", "Versichertennummer",
    "Nombre", "Apellidos", "Fecha de nacimiento", "Nº historia clínica", "DNI", "Teléfono",
    "Cognome", "Codice fiscale", "data di nascita", "Voornaam", "Geboortedatum", "BSN",
    "nombre del paciente", "Patient Nr"])
def test_identifier_columns_in_other_languages(name):
    assert is_identifier_column(name)


@pytest.mark.parametrize("name", [
    "device", "site", "scanner_name", "kernel", "nominal_dose", "Geschlecht", "Alter", "sexe",
    "edad", "centre", "Hersteller", "fabricante", "slice_thickness", "study_year", "notes"])
def test_ordinary_metadata_is_not_an_identifier(name):
    assert not is_identifier_column(name)


@pytest.mark.parametrize("text, kinds", [
    ("Mr. John Smith, MRN 1234567, seen 03/04/2021", {"name", "id number", "date"}),
    ("Frau Müller, Nr. 4711", {"name", "id number"}),
    ("Mme Dupont", {"name"}), ("DOE^JOHN", {"name"}), ("j.doe@example.org", {"e-mail"}),
    ("call +49 30 1234 5678", {"phone"}), ("follow-up 2021-03-04", {"date"}),
    ("Siemens Avanto", set()), ("motion artefact, rescanned", set()), ("B30f", set()),
    ("GE Discovery MR750 25.1", set()),
])
def test_free_text_patterns(text, kinds):
    assert set(free_text_findings([text])) == kinds


@pytest.fixture(scope="module")
def notes_manifest(tmp_path_factory) -> Path:
    notes = ["Mr. John Smith MRN 1234567", "fine", "Frau Anna Weber, born 01.02.1960", "ok"]
    return write_cohort(tmp_path_factory.mktemp("ids") / "c", n=4, extra={"notes": notes})


def test_free_text_kept_is_refused_unless_allowed(notes_manifest, tmp_path, capsys):
    code = main(["audit", str(notes_manifest), "--out", str(tmp_path / "a"), "--quiet",
                 "--no-html", "--workers", "1", "--keep-columns", "notes"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "column 'notes' holds what looks like name (2 cells)" in err and "--allow-free-text" in err
    assert "Smith" not in err and "1234567" not in err  # the message never quotes the cells
    assert not (tmp_path / "a" / "audit.json").exists()
    with pytest.warns(UserWarning, match="column 'notes' holds what looks like"):
        code = main(["audit", str(notes_manifest), "--out", str(tmp_path / "b"), "--quiet",
                     "--no-html", "--workers", "1", "--keep-columns", "notes",
                     "--allow-free-text"])
    assert code == 0
    with warnings.catch_warnings():  # a column that is not kept is not scanned
        warnings.simplefilter("error")
        Cohort.from_csv(notes_manifest).with_metadata(["site"])


@pytest.fixture(scope="module")
def named_files(tmp_path_factory) -> Path:
    """Case ids and file names that are patient names; one prediction missing."""
    m = write_cohort(tmp_path_factory.mktemp("pseudo") / "c", n=4)
    folder = m.parent
    df = pd.read_csv(m)
    names = ["DOE_JOHN", "ROE_JANE", "MUSTERMANN_MAX", "DUPONT_MARIE"]
    for col in ("image", "label", "prediction"):
        new = []
        for name, old in zip(names, df[col]):
            target = f"{name}_{old}"
            (folder / old).rename(folder / target)
            new.append(target)
        df[col] = new
    df["case_id"] = names
    df["patient_id"] = [f"P{n}" for n in names]
    df.to_csv(m, index=False)
    (folder / df["prediction"][2]).unlink()
    return m


def test_pseudonymise_from_the_cli_leaves_no_original_anywhere(named_files, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setenv("MEDSEG_XAI_SALT", SALT)
    out = tmp_path / "out"
    code = main(["audit", str(named_files), "--out", str(out), "--quiet", "--workers", "1",
                 "--pseudonymise", "--strata", "site"])
    assert code == 3  # the missing prediction
    cases = pd.read_csv(out / "cases.csv")
    assert all(c.startswith("c-") and len(c) == 18 for c in cases["case_id"])
    err = cases.loc[cases["status"] == "failed", "error"].iloc[0]
    assert "prediction file not found" in err and "<file>" in err, err
    texts = {p.name: p.read_text(errors="replace") for p in out.iterdir() if p.is_file()}
    assert {"audit.json", "cases.csv", "report.html"} <= set(texts)
    import json

    assert json.loads(texts["audit.json"])["provenance"]["manifest_source"] is None
    for name in ("DOE", "ROE", "MUSTERMANN", "DUPONT", "JOHN", "MARIE"):
        leaks = [f for f, t in texts.items() if name in t]
        assert not leaks, (name, leaks)


@pytest.mark.parametrize("env, extra, expected", [
    (None, [], "expected a secret salt of at least 16 characters"),
    ("short", [], "got 5 characters"),
    (SALT, ["--salt-file", "/nonexistent/salt"], "--salt-file: expected a file"),
])
def test_pseudonymise_needs_a_real_salt(named_files, tmp_path, capsys, monkeypatch, env, extra,
                                        expected):
    if env is None:
        monkeypatch.delenv("MEDSEG_XAI_SALT", raising=False)
    else:
        monkeypatch.setenv("MEDSEG_XAI_SALT", env)
    code = main(["audit", str(named_files), "--out", str(tmp_path / "o"), "--quiet",
                 "--pseudonymise", *extra])
    assert code == 2 and expected in capsys.readouterr().err


def test_salt_file(named_files, tmp_path, monkeypatch):
    monkeypatch.delenv("MEDSEG_XAI_SALT", raising=False)
    salt = tmp_path / "salt"
    salt.write_text(SALT + "\n")
    out = tmp_path / "o"
    assert main(["audit", str(named_files), "--out", str(out), "--quiet", "--no-html",
                 "--workers", "1", "--pseudonymise", "--salt-file", str(salt),
                 "--max-failed", "1"]) == 0
    assert SALT not in (out / "audit.json").read_text()


def test_strip_file_names():
    assert strip_file_names("case 'c-1': could not read label file 'DOE_JOHN.nii.gz': x") == \
        "case 'c-1': could not read label file '<file>': x"
    assert strip_file_names("at /data/DOE^JOHN/ct 1.nii.gz now") .count("DOE") == 0
    assert strip_file_names("dice 0.5 at 2.5 mm") == "dice 0.5 at 2.5 mm"
