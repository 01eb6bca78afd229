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

from medseg_xai.status import CRITERION_STATUSES

__all__ = ["Cell", "Table", "ci_label", "fmt", "fmt_p", "identifying", "kv_rows", "p_cell",
           "safe_columns", "table_from_frame"]

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
    if isinstance(v, str) and v in CRITERION_STATUSES:
        cls = (cls + " status-" + v.split()[0].lower()).strip()
    if isinstance(v, str) and v in ("worse", "better"):
        cls = (cls + " flag-" + v).strip()
    return Cell(fmt(v), None, cls)


def fmt_p(v: Any) -> str:
    """A p-value as text: ``< 0.001`` below 0.001, else three decimals; ``–`` when missing."""
    if v is None or _scalar_na(v):
        return "–"
    x = float(v)
    return "< 0.001" if x < 0.001 else f"{x:.3f}"


def p_cell(v: Any) -> Cell:
    """A p-value cell: readable text, exact value kept in ``data-value``."""
    c = cell(v)
    c.text = fmt_p(v)
    return c


def ci_label(confidence: float) -> str:
    """``"95% CI"`` for 0.95, ``"90% CI"`` for 0.9, ``"97.5% CI"`` for 0.975."""
    return f"{float(confidence) * 100:g}% CI"


def kv_rows(pairs: Iterable[tuple[str, Any]]) -> list[tuple[str, str]]:
    """Key / value rows with values as text."""
    return [(str(k), v if isinstance(v, str) else fmt(v)) for k, v in pairs]


@dataclass
class Table:
    """A table for the template: ``id`` (HTML anchor / test hook), header, rows of cells."""

    id: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""
    note: str = ""
    #: CSS class per row ("print-hide": left out of the printed copy, kept in the HTML)
    row_classes: list[str] = field(default_factory=list)
    #: said under the table in the printed copy only (what the print leaves out)
    print_note: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    def hide_in_print(self, hide: Sequence[bool], what: str) -> Table:
        """Leave the rows where ``hide`` is true out of the printed copy (the HTML and the JSON
        keep them) and say so under the table; returns the table."""
        hide = list(hide)
        if any(hide):
            self.row_classes = ["print-hide" if h else "" for h in hide]
            self.print_note = (f"Printed copy: {sum(hide)} row(s) {what} are left out; the HTML "
                               "report and audit.json hold every row.")
        return self


def table_from_frame(
    df: pd.DataFrame | None,
    id: str,
    columns: Sequence[str] | None = None,
    *,
    caption: str = "",
    headers: dict[str, str] | None = None,
    max_rows: int | None = None,
    p_columns: Sequence[str] = ("p_value", "p_adjusted", "p_kruskal"),
) -> Table:
    """Turn a DataFrame into a :class:`Table`, dropping identifying columns.

    ``max_rows`` truncates and says so in the table's note; ``p_columns`` print as p-values.
    """
    if df is None:
        df = pd.DataFrame()
    cols = [c for c in (columns if columns is not None else df.columns) if c in df.columns]
    cols = safe_columns(cols)
    headers = headers or {}
    rows = []
    n_total = len(df)
    view = df if max_rows is None else df.head(max_rows)
    is_p = [c in p_columns for c in cols]
    for rec in view[cols].itertuples(index=False, name=None):
        rows.append([p_cell(v) if p else cell(v) for v, p in zip(rec, is_p)])
    note = ""
    if max_rows is not None and n_total > max_rows:
        note = f"First {max_rows} of {n_total} rows shown; all rows are in the JSON."
    return Table(id, [headers.get(c, c) for c in cols], rows, caption, note)
