"""Keep patient identifiers and file-system paths out of shared outputs.

Three rules, one module:

- **Paths** (:func:`redact_paths`): hospital folders often carry patient names or record numbers
  (``/data/DOE^JOHN/ct.nii.gz``), so any text that leaves the machine in a result, a report, a
  recorded command line or a warning shows a path as its file name only. The case id and the
  field (image, label, ...) in the same message already say which manifest cell it is.
- **Identifier columns** (:func:`is_identifier_column`): manifest columns whose *normalised* name
  (case, spaces, punctuation and camelCase ignored: ``Patient Name``, ``PatientID ``, ``mrn``,
  ``patient_dob``) says they hold a direct identifier are dropped before anything is computed.
- **File names from case ids** (:func:`safe_file_name`): a case id becomes a file name only when
  it stays inside the output folder (no separators, no ``..``, no NUL, not hidden).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

__all__ = ["free_text_findings", "identifier_tokens", "is_identifier_column", "redact_paths",
           "safe_file_name"]

# An absolute POSIX path of two or more components, a Windows drive path or a UNC path. It must
# start the text or follow white space, a quote, a bracket or one of "=,:;", so "and/or", "1/2",
# "</script>" or "mm /s" stay intact. A quoted path runs to its closing quote (spaces included);
# an unquoted one runs on across spaces while a later word still holds a separator, so
# "/data/John Doe/ct 1.nii.gz" is reduced whole (to "ct 1.nii.gz"), never to "John" + " Doe/...".
_START = r"""(?<![^\s'"`(\[=,:;])"""
_ROOT = r"""(?:[A-Za-z]:[\\/]|\\\\|/[^\s'"`<>|/]+(?:[ \t]+[^\s'"`<>|/]+)*/)"""
_QUOTED = re.compile(r"""(['"])(""" + _ROOT + r"""[^'"\n]*)\1""")
_ABSOLUTE_PATH = re.compile(
    _START + _ROOT + r"""[^\s'"`<>|]*(?:(?:[ \t]+[^\s'"`<>|\\/(\[=,:;]+)+[\\/][^\s'"`<>|]*)*"""
)


def _name(path: str) -> str:
    parts = [p for p in re.split(r"[\\/]+", path.rstrip("\\/")) if p]
    return parts[-1] if parts else path


def redact_paths(text: str, known: Iterable[str | None] = ()) -> str:
    """Replace every absolute path in ``text`` by its last component (the file or folder name).

    Parameters
    ----------
    text : str
        A message that may hold paths (error texts, a command line, a warning).
    known : iterable of str or None
        Paths known to appear (a case's image / label / prediction paths); replaced first and
        whole, so a path with spaces is reduced correctly even unquoted at the end of a word.

    Returns
    -------
    str
        The text with no directory names left; relative paths and other text are unchanged.
    """
    out = str(text)
    for path in sorted({str(p) for p in known if p}, key=len, reverse=True):
        if len(path) > 1 and path in out:
            out = out.replace(path, _name(path))
    out = _QUOTED.sub(lambda m: m.group(1) + _name(m.group(2)) + m.group(1), out)
    return _ABSOLUTE_PATH.sub(lambda m: _name(m.group(0)), out)


# --------------------------------------------------------------------------------------------
# identifier columns

# Normalised names (lower case, letters and digits only) that are direct identifiers on their
# own (HIPAA Safe Harbor identifiers and the DICOM PS3.15 basic profile's patient attributes).
_IDENTIFIER_NAMES = frozenset({
    "name", "fullname", "firstname", "lastname", "surname", "givenname", "familyname",
    "forename", "middlename", "maidenname", "patient", "patientname", "patientsname",
    "patientid", "patientsid", "pid", "mrn", "medicalrecordnumber", "recordnumber",
    "hospitalnumber", "nhsnumber", "chinumber", "healthinsurancenumber", "insurancenumber",
    "ssn", "socialsecuritynumber", "nationalid", "passportnumber", "dob", "dateofbirth",
    "birthdate", "birthday", "patientdob", "patientbirthdate", "patientsbirthdate",
    "accession", "accessionnumber", "accessionno", "address", "patientaddress",
    "patientsaddress", "street", "zipcode", "postcode", "postalcode", "phone", "telephone",
    "phonenumber", "mobile", "email", "emailaddress", "fax", "otherpatientids",
    "otherpatientnames", "patientmothersbirthname", "patienttelephonenumbers",
    "referringphysicianname", "performingphysicianname", "physicianname", "operatorsname",
    "studyinstanceuid", "seriesinstanceuid", "sopinstanceuid", "deviceserialnumber",
})
# The same in German, French, Spanish, Italian, Portuguese and Dutch (accents removed, "ß" as
# "ss"): names, birth dates, national / insurance / hospital record numbers, addresses, phones.
_IDENTIFIER_NAMES |= frozenset({
    # de
    "vorname", "nachname", "familienname", "geburtsname", "geburtsdatum", "geburtstag",
    "gebdatum", "patientenname", "patientennummer", "patientenid", "versichertennummer",
    "krankenversichertennummer", "versicherungsnummer", "fallnummer", "aufnahmenummer",
    "adresse", "anschrift", "strasse", "wohnort", "postleitzahl", "plz", "telefon",
    "telefonnummer", "handynummer",
    # fr
    "nom", "prenom", "nomdefamille", "nomdenaissance", "nomdusage", "datedenaissance",
    "datenaissance", "ddn", "nompatient", "nomdupatient", "numeropatient", "numerodepatient",
    "ipp", "numerosecu", "numerosecuritesociale", "codepostal", "courriel", "numerodossier",
    # es
    "nombre", "apellido", "apellidos", "nombrecompleto", "nombrepaciente",
    "nombredelpaciente", "fechadenacimiento", "fechanacimiento", "historiaclinica",
    "numerohistoria", "numerodehistoria", "nhc", "dni", "curp", "direccion", "domicilio",
    "codigopostal", "telefono", "correo", "correoelectronico",
    # it, pt, nl
    "nome", "cognome", "datadinascita", "codicefiscale", "indirizzo", "cartellaclinica",
    "sobrenome", "datadenascimento", "cpf", "prontuario", "endereco", "naam", "voornaam",
    "achternaam", "geboortedatum", "bsn", "adres", "telefoonnummer", "patientnummer",
})
# Endings of a joined name that are identifiers whatever precedes ("Nº historia clínica").
_IDENTIFIER_SUFFIXES = ("historiaclinica", "cartellaclinica", "numerohistoria", "dossierpatient",
                        "numerodossier", "versichertennummer", "dateofbirth", "datedenaissance",
                        "fechadenacimiento")
# Words that mark an identifier anywhere in a name ("mother_mrn", "patient_dob", "ssn_last4").
_IDENTIFIER_WORDS = frozenset({"mrn", "ssn", "dob", "accession", "nhs", "passport", "email",
                               "phone", "telephone", "address", "birth", "birthdate",
                               "geburtsdatum", "geburtstag", "naissance", "nacimiento",
                               "nascita", "geboortedatum", "telefon", "telefono",
                               "versichertennummer", "codicefiscale", "dni", "curp", "cpf",
                               "bsn", "ipp", "nhc", "prenom", "vorname", "nachname", "apellido",
                               "apellidos", "cognome"})
# With "patient" in the name (in one of the languages above), these words make it an
# identifier too.
_PATIENT_WORDS = frozenset({"name", "id", "ids", "number", "no", "initials", "nom", "nombre",
                            "nome", "naam", "nummer", "numero", "num", "nr"})
_PATIENT = frozenset({"patient", "patients", "patienten", "patiente", "paciente", "pacientes",
                      "paziente", "pazienti", "patientin"})
#: The one patient column that is kept: the grouping key, replaced by a pseudonym.
PATIENT_KEY = "patient_id"


def identifier_tokens(name: object) -> list[str]:
    """Words of a column name: camelCase, digits and punctuation split, lower case."""
    # accents removed (Prénom -> Prenom, Straße -> Strasse) so other languages' names match
    text = unicodedata.normalize("NFKD", str(name).replace("ß", "ss").replace("ẞ", "SS"))
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", text)
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def is_identifier_column(name: object) -> bool:
    """True when a column name says it holds a direct patient identifier.

    ``patient_id`` itself (exactly) is the grouping key and is not an identifier column here:
    the cohort replaces its values by pseudonyms.

    Examples
    --------
    >>> [is_identifier_column(c) for c in ("Patient Name", "PatientID ", "mrn", "device")]
    [True, True, True, False]
    """
    if str(name) == PATIENT_KEY:
        return False
    tokens = identifier_tokens(name)
    joined = "".join(tokens)
    if joined in _IDENTIFIER_NAMES or joined.endswith(_IDENTIFIER_SUFFIXES):
        return True
    words = set(tokens)
    if words & _IDENTIFIER_WORDS:
        return True
    if any(t.startswith(("patient", "paciente", "paziente")) and t != "patient"
           and t[len("patient"):] in {"name", "nummer", "id", "nr"} for t in tokens):
        return True  # German compounds: Patientenname, Patientennummer (one word)
    return bool(words & _PATIENT and words & _PATIENT_WORDS)


# --------------------------------------------------------------------------------------------
# file names from case ids

_BAD_NAME = re.compile(r"[\\/\x00-\x1f\x7f:]")


def safe_file_name(case_id: object, suffix: str = "", *, folder: str | Path | None = None) -> str:
    """``case_id + suffix`` as a file name that cannot leave its output folder.

    Parameters
    ----------
    case_id : object
        The id (converted with ``str``).
    suffix : str
        Appended unchanged (``".nii.gz"``).
    folder : str or Path, optional
        When given, also checks that ``folder / name`` resolves inside ``folder``.

    Raises
    ------
    ValueError
        When the id is empty, ``.`` or ``..``, starts with a dot, or holds a path separator,
        a drive colon or a control character.
    """
    cid = str(case_id)
    if (not cid.strip() or cid in (".", "..") or cid.startswith(".") or _BAD_NAME.search(cid)
            or ".." in cid):
        raise ValueError(
            f"case {cid!r}: case_id: expected a name usable as a file name inside the output "
            "folder (no '/', '\\\\', '..', ':', control characters or leading '.')"
        )
    name = f"{cid}{suffix}"
    if folder is not None:
        root = Path(folder).resolve()
        if (root / name).resolve().parent != root:
            raise ValueError(f"case {cid!r}: case_id: the file name would leave the output folder")
    return name


# --------------------------------------------------------------------------------------------
# identifiers inside free text

# What a name, a record number or a date looks like inside a sentence. Conservative on purpose
# (a warning or a refusal, never a silent edit): honorifics in six languages before a
# capitalised word, DICOM person names (DOE^JOHN), labelled numbers (MRN 123456, Nr. 4711),
# long digit runs, e-mail addresses, phone numbers and calendar dates.
_TEXT_PATTERNS = {
    "name": re.compile(
        r"(?:\b(?:Mr|Mrs|Ms|Miss|Dr|Prof|Herr|Frau|Hr|Fr|Mme|Mlle|Sr|Sra|Srta|Sig|Sig\.ra|Dhr|"
        r"Mevr)\.?\s+[A-ZÀ-Þ][\w'-]+)|(?:\b[A-Z][A-Za-z'-]+\^[A-Z][A-Za-z'-]+)|"
        r"(?:\b(?:name|nom|nombre|nome|naam)\s*[:=]\s*\S+)"),
    "id number": re.compile(
        r"\b(?:MRN|PID|ID|NHS|SSN|DNI|IPP|NHC|BSN|KVNR|Nr|No|N°|Nº|#)\.?\s*[:#]?\s*\d[\d-]{3,}"
        r"|\b\d{6,}\b", re.IGNORECASE),
    "e-mail": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    "phone": re.compile(r"(?:\+\d{1,3}[\s-]?)?\(?\d{2,4}\)?[\s/-]\d{3,4}[\s-]\d{3,4}\b"),
    "date": re.compile(r"\b(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[./]\d{1,2}[./]\d{2,4})\b"),
}


def free_text_findings(values: Iterable[object], max_cells: int = 100_000) -> dict[str, int]:
    """How many cells hold something that looks like an identifier, per kind.

    Parameters
    ----------
    values : iterable
        A column's cells (non-text cells are skipped).
    max_cells : int
        At most this many cells are scanned (a sample of a huge column is enough to warn).

    Returns
    -------
    dict
        Kind (``"name"``, ``"id number"``, ``"e-mail"``, ``"phone"``, ``"date"``) -> number of
        cells; empty when nothing was found. The cells themselves are never returned, so a
        message built from this cannot leak them.
    """
    found: dict[str, int] = {}
    for i, v in enumerate(values):
        if i >= max_cells:
            break
        if not isinstance(v, str) or len(v) < 4:
            continue
        for kind, pattern in _TEXT_PATTERNS.items():
            if pattern.search(v):
                found[kind] = found.get(kind, 0) + 1
    return found


# --------------------------------------------------------------------------------------------
# file names under pseudonymisation

_FILE_EXT = (r"(?:nii(?:\.gz)?|gz|dcm|nrrd|nhdr|mha|mhd|mgz|img|hdr|png|jpe?g|tiff?|npy|npz|"
             r"h5|hdf5|json|csv|parquet|pt|pth|ts|onnx|zip)")
_QUOTED_FILE = re.compile(r"""(['"])[^'"\n]*?(?:[\\/][^'"\n]*|\.""" + _FILE_EXT + r""")\1""",
                          re.IGNORECASE)
_BARE_FILE = re.compile(r"""(?<![\w<^])(?:[\w.~^-]*[\\/])*[\w~^-][\w.~^-]*?\.""" + _FILE_EXT +
                        r"""\b""", re.IGNORECASE)


def strip_file_names(text: str) -> str:
    """Replace every file name and path in ``text`` by ``<file>``.

    With pseudonymised case ids the file names are the last place the original ids (or patient
    names) survive (``DOE_JOHN_ct.nii.gz``); the case id and the field in the same message
    already say which manifest cell is meant.
    """
    out = _QUOTED_FILE.sub(lambda m: f"{m.group(1)}<file>{m.group(1)}", str(text))
    out = _ABSOLUTE_PATH.sub("<file>", out)
    return _BARE_FILE.sub("<file>", out)
