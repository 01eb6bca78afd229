"""Read manifest tables the way spreadsheets write them (issue 28).

Excel on Windows saves CSV as cp1252 ("CSV") or UTF-16 ("Unicode text"), with a byte-order mark
("CSV UTF-8"), with ``;`` as the separator in locales that use a decimal comma, and with
Windows paths (``images\\case1.nii.gz``). pandas' defaults also read the texts ``NA``, ``None``,
``null``, ``N/A``... as missing, so a case id ``NA`` or a site ``None`` silently disappeared.

- :func:`detect_encoding`: a byte-order mark (UTF-8, UTF-16, UTF-32), UTF-16 without a mark
  (NUL bytes in every other position), strict UTF-8, then cp1252 with a warning; anything else is
  refused naming the file and the byte that no encoding accepts.
- :func:`read_csv_manifest`: ids and paths as text; only empty cells are missing unless the
  caller lists ``na_values``; a column whose cells look like pandas' missing-value words is
  warned about (they stay text).
- :func:`normalise_path`: a manifest path written with ``\\`` separators is found on POSIX.
"""

from __future__ import annotations

import codecs
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["NA_WORDS", "detect_encoding", "normalise_path", "read_csv_manifest"]

#: pandas' default missing-value words: kept as text in manifests unless the user names them.
NA_WORDS = frozenset({"NA", "N/A", "n/a", "NaN", "nan", "-NaN", "-nan", "NULL", "null", "None",
                      "<NA>", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "1.#IND",
                      "1.#QNAN"})
_TEXT_COLUMNS = ("case_id", "patient_id", "image", "label", "prediction", "probability")
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def detect_encoding(path: str | os.PathLike, what: str = "manifest") -> str:
    """The text encoding of a CSV file (see the module docstring for the order tried).

    Raises
    ------
    ValueError
        No encoding tried decodes it, or it holds NUL bytes (a binary file): naming the file,
        the encodings tried and the offending byte.
    """
    p = Path(path)
    data = p.read_bytes()
    for bom, enc in _BOMS:  # UTF-32 LE's mark starts with UTF-16 LE's: longest first
        if data.startswith(bom):
            return _decodes(data, enc, p, what)
    sample = data[:4096]
    if len(sample) >= 4 and sample.count(0) >= len(sample) // 3:  # UTF-16 without a mark
        enc = "utf-16-le" if sample[1::2].count(0) > sample[0::2].count(0) else "utf-16-be"
        return _decodes(data, enc, p, what)
    if b"\x00" in data:
        raise ValueError(f"{what}: expected a text (CSV) file, {p.name!r} holds NUL bytes at "
                         f"offset {data.index(0)} (a binary file or a damaged export)")
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        at = exc.start  # the name bound by "as" is deleted after the block
    try:
        data.decode("cp1252")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{what}: could not decode {p.name!r} as UTF-8 (byte 0x{data[at]:02x} at offset "
            f"{at}) nor as cp1252 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "expected a UTF-8 CSV (save as 'CSV UTF-8')") from None
    warnings.warn(f"{what}: {p.name!r} is not UTF-8 (byte 0x{data[at]:02x} at offset {at}); "
                  "read as cp1252 (Windows Western European). Check accented values, or save "
                  "it as 'CSV UTF-8'", stacklevel=3)
    return "cp1252"


def _decodes(data: bytes, enc: str, p: Path, what: str) -> str:
    try:
        data.decode(enc)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: could not decode {p.name!r} as {enc} (its byte-order mark or "
                         f"layout says so; invalid data at offset {exc.start}); expected a UTF-8 "
                         "or UTF-16 CSV") from None
    return enc


def _separator(path: Path, encoding: str) -> str:
    """``,`` unless the header has none and a ``;`` or a tab (Excel in decimal-comma locales)."""
    with open(path, encoding=encoding, newline="") as fh:
        header = fh.readline()
    if "," in header:
        return ","
    for sep in (";", "\t"):
        if sep in header:
            return sep
    return ","


def read_csv_manifest(path: str | os.PathLike, *, na_values: Sequence[str] | None = None,
                      what: str = "manifest") -> pd.DataFrame:
    """A CSV manifest as a DataFrame: encoding detected, ids and paths as text.

    Parameters
    ----------
    path : str or path-like
    na_values : sequence of str, optional
        Cell texts that mean "missing" besides the empty cell (e.g. ``["NA"]``). By default a
        case id, site or device ``NA``, ``None`` or ``null`` is that text, not a missing value.

    Returns
    -------
    pandas.DataFrame
    """
    p = Path(path)
    encoding = detect_encoding(p, what)
    sep = _separator(p, encoding)
    header = pd.read_csv(p, encoding=encoding, sep=sep, nrows=0).columns
    dtype = {c: str for c in header if c in _TEXT_COLUMNS or str(c).startswith("label_")}
    df = pd.read_csv(p, encoding=encoding, sep=sep, dtype=dtype, keep_default_na=False,
                     na_values=["", *(na_values or ())])
    _warn_na_words(df, na_values, p.name, what)
    return df


def _warn_na_words(df: pd.DataFrame, na_values: Sequence[str] | None, name: str,
                   what: str) -> None:
    """Warn where cells read as text spell a missing value in pandas' defaults: legal (a case
    id ``NA``), but a numeric column holding ``NA`` is text now and cannot be binned."""
    words = sorted(NA_WORDS - set(na_values or ()))
    found = {}
    for col in df.columns:
        if df[col].dtype.kind in "biufcM" or col in _TEXT_COLUMNS:  # ids and paths: text
            continue
        hits = df[col].isin(words)
        if hits.any():
            found[str(col)] = sorted(set(df[col][hits].astype(str)))
    if found:
        shown = "; ".join(f"{c!r}: {v}" for c, v in list(found.items())[:6])
        warnings.warn(f"{what}: {name!r}: cells read as text, not as missing values ({shown}); "
                      "pass na_values= (--na-values) to read them as missing", stacklevel=3)


def normalise_path(value: str, base: Path) -> Path:
    """A manifest path made absolute against ``base``; ``\\`` separators (a manifest written
    on Windows) become ``/`` on POSIX when the path as written does not exist."""
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    if os.sep == "/" and "\\" in value and not p.exists():
        q = Path(value.replace("\\", "/")).expanduser()
        p = q if q.is_absolute() else base / q
    return Path(os.path.normpath(p))
