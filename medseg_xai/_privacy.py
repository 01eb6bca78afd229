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
from collections.abc import Iterable
from pathlib import Path

__all__ = ["identifier_tokens", "is_identifier_column", "redact_paths", "safe_file_name"]

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
# Words that mark an identifier anywhere in a name ("mother_mrn", "patient_dob", "ssn_last4").
_IDENTIFIER_WORDS = frozenset({"mrn", "ssn", "dob", "accession", "nhs", "passport", "email",
                               "phone", "telephone", "address", "birth", "birthdate"})
# With "patient" (or "patients") in the name, these words make it an identifier too.
_PATIENT_WORDS = frozenset({"name", "id", "ids", "number", "no", "initials"})
#: The one patient column that is kept: the grouping key, replaced by a pseudonym.
PATIENT_KEY = "patient_id"


def identifier_tokens(name: object) -> list[str]:
    """Words of a column name: camelCase, digits and punctuation split, lower case."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
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
    if "".join(tokens) in _IDENTIFIER_NAMES:
        return True
    words = set(tokens)
    if words & _IDENTIFIER_WORDS:
        return True
    return bool(words & {"patient", "patients"} and words & _PATIENT_WORDS)


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
