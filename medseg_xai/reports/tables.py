"""Table cells for the report: display text plus the exact value, so numbers can be checked.

Every numeric cell carries its full-precision value in a ``data-value`` attribute (``repr`` of the
float, which round-trips) next to the rounded text a reader sees; tests compare those values with
the JSON. Columns that could identify a patient are never rendered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Cell", "Table", "fmt", "identifying", "safe_columns", "table_from_frame"]

# Direct identifiers (DICOM PatientName / PatientID / PatientBirthDate and friends).
_IDENTIFYING = re.compile(
    r"patient|birth|^dob$|^mrn$|^name$|accession|^ssn$|other_?patient|"
    r"^(image|label|prediction|probability|path|file)(_path)?$",
    re.IGNORECASE,
)


def identifying(column: str) -> bool:
    """True for columns never shown in a report (patient identifiers, birth dates, file paths).

    File paths are hidden too: directory names often carry patient names or accession numbers.
    """
    return bool(_IDENTIFYING.search(str(column)))


def safe_columns(columns: Iterable[Any]) -> list[str]:
    """The columns that may be shown, in order."""
    return [str(c) for c in columns if not identifying(str(c))]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
        v, (bool, np.bool_)
    )


def fmt(v: Any, digits: int = 3) -> str:
    """Rounded text of a value: 3 decimals below 10, 2 below 100, 1 above; ``–`` for missing."""
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if _is_number(v):
        x = float(v)
        if math.isnan(x):
            return "–"
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        if x.is_integer() and abs(x) >= 1000:
            return f"{x:.0f}"
        a = abs(x)
        d = digits if a < 10 else max(digits - 1, 0) if a < 100 else max(digits - 2, 0)
        return f"{x:.{d}f}"
    if isinstance(v, float) or (hasattr(pd, "isna") and _scalar_na(v)):
        return "–"
    return str(v)


def _scalar_na(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


@dataclass
class Cell:
    """One table cell: what the reader sees, the exact value (numbers), a CSS class."""

    text: str
    value: str | None = None
    cls: str = ""


def cell(v: Any, cls: str = "") -> Cell:
    """Cell for any value; numbers keep their exact value in ``value``."""
    if _is_number(v):
        x = float(v) if not isinstance(v, (int, np.integer)) else int(v)
        return Cell(
            fmt(v),
            repr(x) if not (isinstance(x, float) and math.isnan(x)) else "nan",
            (cls + " num").strip(),
        )
    if isinstance(v, str) and v in ("PASS", "FAIL", "INSUFFICIENT DATA"):
        cls = (cls + " status-" + v.split()[0].lower()).strip()
    return Cell(fmt(v), None, cls)


@dataclass
class Table:
    """A table for the template: ``id`` (HTML anchor / test hook), header, rows of cells."""

    id: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""
    note: str = ""

    def __len__(self) -> int:
        return len(self.rows)


def table_from_frame(
    df: pd.DataFrame | None,
    id: str,
    columns: Sequence[str] | None = None,
    *,
    caption: str = "",
    headers: dict[str, str] | None = None,
    max_rows: int | None = None,
) -> Table:
    """Turn a DataFrame into a :class:`Table`, dropping identifying columns.

    ``max_rows`` truncates and says so in the table's note.
    """
    if df is None:
        df = pd.DataFrame()
    cols = [c for c in (columns if columns is not None else df.columns) if c in df.columns]
    cols = safe_columns(cols)
    headers = headers or {}
    rows = []
    n_total = len(df)
    view = df if max_rows is None else df.head(max_rows)
    for rec in view[cols].itertuples(index=False, name=None):
        rows.append([cell(v) for v in rec])
    note = ""
    if max_rows is not None and n_total > max_rows:
        note = f"First {max_rows} of {n_total} rows shown; all rows are in the JSON."
    return Table(id, [headers.get(c, c) for c in cols], rows, caption, note)
