"""Strata: which column(s) split the cohort into subgroups, and the derived size strata.

A stratum is a metadata column (``"device"``), a derived column (``"lesion_size"``,
``"lesion_count"``, ``"empty_reference"``) or an intersection of columns written
``"device x site"`` (or passed as a tuple ``("device", "site")``). Every stratum turns into one
string label per case; missing metadata becomes the group ``"(missing)"`` rather than silently
dropping the case.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = [
    "DERIVED_STRATA",
    "MISSING",
    "Stratum",
    "add_derived_columns",
    "bin_continuous_strata",
    "group_labels",
    "lesion_size_labels",
    "parse_strata",
]

MISSING = "(missing)"
EMPTY = "empty"
DERIVED_STRATA = ("lesion_size", "lesion_count", "empty_reference")
_SEP = " x "


@dataclass(frozen=True)
class Stratum:
    """One way of splitting the cohort.

    Attributes
    ----------
    name : str
        Display name (``"device x site"`` for intersections).
    columns : tuple of str
        Columns of the cases table whose values define the groups.
    """

    name: str
    columns: tuple[str, ...]
    #: given bin edges of continuous columns, ``(("age", (40.0, 60.0)),)`` ("age:40,60")
    bins: tuple[tuple[str, tuple[float, ...]], ...] = ()

    @property
    def is_intersection(self) -> bool:
        return len(self.columns) > 1


def parse_strata(strata: Sequence[str | Sequence[str]] | str | None) -> list[Stratum]:
    """Normalise the ``strata`` argument of :func:`medseg_xai.audit` into :class:`Stratum`s.

    Parameters
    ----------
    strata : str or sequence of (str or sequence of str), optional
        ``"device"``, ``"device x site"`` or ``("device", "site")``; duplicates are removed.

    Returns
    -------
    list of Stratum
    """
    if strata is None:
        return []
    if isinstance(strata, str):
        strata = [strata]
    out: list[Stratum] = []
    seen: set[tuple] = set()
    for item in strata:
        bins: list[tuple[str, tuple[float, ...]]] = []
        if isinstance(item, str):
            cols = tuple(c.strip() for c in item.split(_SEP))
            cols = tuple(_split_edges(c, bins) for c in cols)
        elif isinstance(item, Sequence) and all(isinstance(c, str) for c in item):
            cols = tuple(c.strip() for c in item)
        else:
            raise ValueError(
                f"strata: expected column names or 'a x b' intersections, got {item!r}"
            )
        if not cols or any(not c for c in cols):
            raise ValueError(f"strata: empty column name in {item!r}")
        if (cols, tuple(bins)) in seen:
            continue
        seen.add((cols, tuple(bins)))
        name = item if isinstance(item, str) and bins else _SEP.join(cols)
        out.append(Stratum(name.strip(), cols, tuple(bins)))
    return out


def _split_edges(column: str, bins: list[tuple[str, tuple[float, ...]]]) -> str:
    """``"age:40,60"`` -> ``"age"``, recording the edges in ``bins``."""
    if ":" not in column:
        return column
    name, _, text = column.partition(":")
    try:
        edges = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"strata: expected 'column:edge,edge,...' with numeric edges, got "
                         f"{column!r}") from None
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"strata: expected increasing edges in {column!r}")
    bins.append((name.strip(), edges))
    return name.strip()


#: A numeric stratum column with more distinct values than this is continuous: it is binned
#: (a column such as age otherwise splits into dozens of groups of one to six scans).
MAX_CATEGORIES = 12
#: Quantile bins of a continuous stratum column when no edges are given.
CONTINUOUS_BINS = 4


def _edge_labels(values: pd.Series, edges: np.ndarray) -> tuple[pd.Series, list[str]]:
    names = [f"< {_fmt(hi)}" if lo == -np.inf else f">= {_fmt(lo)}" if hi == np.inf
             else f"[{_fmt(lo)}, {_fmt(hi)})" for lo, hi in zip(edges[:-1], edges[1:])]
    if len(names) == 1:
        names = ["all"]
    x = values.to_numpy(dtype=float)
    code = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(names) - 1)
    choices = np.array([*names, None], dtype=object)
    code = np.where(np.isfinite(x), code, len(names))
    return pd.Series(choices[code], index=values.index, dtype=object), names


def bin_continuous_strata(
    cases: pd.DataFrame, strata: Sequence[Stratum], orders: dict[str, list[str]],
) -> tuple[pd.DataFrame, list[Stratum], list[str]]:
    """Bin continuous stratum columns: given edges (``"age:40,60"``), else
    :data:`CONTINUOUS_BINS` quantile bins when a numeric column has more than
    :data:`MAX_CATEGORIES` distinct values.

    The binned labels go to a new column ``"<column> (binned)"`` (the raw values stay); the
    stratum keeps its name. Returns the cases (a shallow copy when columns were added), the
    strata pointing at the binned columns, and one warning per column binned by quantiles.
    ``orders`` gets the bins' order.
    """
    out_strata: list[Stratum] = []
    notes: list[str] = []
    out = cases
    for stratum in strata:
        given = dict(stratum.bins)
        cols = []
        for col in stratum.columns:
            if col in DERIVED_STRATA or col not in cases.columns:
                cols.append(col)
                continue
            raw = cases[col]
            values = pd.to_numeric(raw, errors="coerce")
            numeric = bool(values.notna().sum() == raw.notna().sum() and values.notna().any())
            distinct = int(values.nunique()) if numeric else 0
            if col not in given and distinct <= MAX_CATEGORIES:
                cols.append(col)
                continue
            if col in given:
                edges = np.concatenate([[-np.inf], given[col], [np.inf]])
            else:
                qs = np.quantile(values.dropna(), np.linspace(0, 1, CONTINUOUS_BINS + 1)[1:-1])
                edges = np.unique(np.concatenate([[-np.inf], qs, [np.inf]]))
            labels, names = _edge_labels(values, edges)
            binned = (f"{col} ({','.join(_fmt(e) for e in given[col])})" if col in given
                      else f"{col} (binned)")
            if out is cases:
                out = cases.copy(deep=False)
            out[binned] = labels
            orders[binned] = names
            cols.append(binned)
            if col not in given:
                notes.append(f"stratum {col!r}: a continuous column ({distinct} distinct values) "
                             f"was binned into {len(names)} quantile groups {names}; give edges "
                             f"as '{col}:a,b,...' to choose them")
        out_strata.append(Stratum(stratum.name, tuple(cols), stratum.bins))
    return out, out_strata, notes


def _fmt(x: float) -> str:
    if np.isinf(x):
        return "inf"
    return f"{x:g}"


def lesion_size_labels(
    volumes_mm3: pd.Series, bins: int | Sequence[float] = 3
) -> tuple[pd.Series, list[str]]:
    """Bin reference volumes (mm^3) into lesion-size groups.

    Parameters
    ----------
    volumes_mm3 : pandas.Series
        Reference volume per case; 0 means an empty reference (own group ``"empty"``);
        NaN (failed case) stays NaN.
    bins : int or sequence of float
        An int ``q`` gives ``q`` quantile bins of the non-empty volumes; a sequence gives bin
        edges in mm^3 (left-closed, right-open; volumes beyond the last edge fall in an
        open-ended top bin).

    Returns
    -------
    labels : pandas.Series
        Label per case, e.g. ``"[100, 1000) mm3"``.
    order : list of str
        Labels in size order (``"empty"`` first), including bins with no case.
    """
    v = pd.to_numeric(volumes_mm3, errors="coerce").astype(float)
    positive = v[v > 0]
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"lesion_size_bins: expected a positive int or edges, got {bins!r}")
        if positive.empty:
            edges = np.array([0.0, np.inf])
        else:
            qs = np.quantile(positive.to_numpy(), np.linspace(0, 1, int(bins) + 1)[1:-1])
            edges = np.unique(np.concatenate([[0.0], qs, [np.inf]]))
    else:
        edges = np.asarray(list(bins), dtype=float)
        if edges.size < 1 or np.any(np.diff(edges) <= 0):
            raise ValueError(
                f"lesion_size_bins: expected increasing bin edges in mm^3, got {list(bins)!r}"
            )
        if edges[0] > 0:
            edges = np.concatenate([[0.0], edges])
        if not np.isinf(edges[-1]):
            edges = np.concatenate([edges, [np.inf]])
    names = [f"[{_fmt(lo)}, {_fmt(hi)}) mm3" for lo, hi in zip(edges[:-1], edges[1:])]
    x = v.to_numpy()
    # one shared str per label: a list of per-row labels was 37 MB at 150,000 lesions
    code = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(names) - 1)
    code = np.where(x > 0, code, np.where(x == 0, len(names), len(names) + 1))
    choices = np.array([*names, EMPTY, None], dtype=object)
    return pd.Series(choices[code], index=v.index, dtype=object), [EMPTY, *names]


def _count_label(n: float) -> object:
    if not np.isfinite(n):
        return None
    n = int(n)
    return str(n) if n < 3 else "3+"


def add_derived_columns(
    cases: pd.DataFrame, lesion_size_bins: int | Sequence[float] = 3
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Add ``lesion_size``, ``lesion_count`` and ``empty_reference`` to a cases table.

    Uses ``volume_ref_mm3`` and ``n_ref_lesions`` of evaluated cases (failed cases get NaN and
    join no derived group). Existing columns of those names (user metadata) are kept.

    Returns
    -------
    cases : pandas.DataFrame
        A copy with the derived columns.
    orders : dict
        Group order of each derived stratum (size order rather than alphabetical).
    """
    # shallow: only new columns are added, so the cases' data are shared, not copied (tens of
    # MB at 100,000 cases)
    out = cases.copy(deep=False)
    orders: dict[str, list[str]] = {}
    ok = out["status"] == "ok" if "status" in out else pd.Series(True, index=out.index)
    if "lesion_size" not in cases and "volume_ref_mm3" in out:
        vol = pd.to_numeric(out["volume_ref_mm3"], errors="coerce").where(ok)
        out["lesion_size"], orders["lesion_size"] = lesion_size_labels(vol, lesion_size_bins)
    if "lesion_count" not in cases and "n_ref_lesions" in out:
        counts = pd.to_numeric(out["n_ref_lesions"], errors="coerce").where(ok)
        out["lesion_count"] = [_count_label(c) for c in counts]
        orders["lesion_count"] = ["0", "1", "2", "3+"]
    if "empty_reference" not in cases and "volume_ref_mm3" in out:
        vol = pd.to_numeric(out["volume_ref_mm3"], errors="coerce").where(ok)
        out["empty_reference"] = [
            None if not np.isfinite(x) else ("empty" if x == 0 else "non-empty") for x in vol
        ]
        orders["empty_reference"] = ["non-empty", "empty"]
    return out, orders


def group_labels(cases: pd.DataFrame, stratum: Stratum, derived: bool = False) -> pd.Series:
    """String group label of every case for ``stratum``.

    Parameters
    ----------
    cases : pandas.DataFrame
        Cases table holding the stratum's columns.
    stratum : Stratum
        The split.
    derived : bool
        Derived strata only exist for evaluated cases: their missing values stay NaN (the case
        joins no group) instead of forming a ``"(missing)"`` group.

    Raises
    ------
    ValueError
        If a column of the stratum is not in the table.
    """
    missing = [c for c in stratum.columns if c not in cases.columns]
    if missing:
        raise ValueError(
            f"strata: column(s) {missing} of stratum {stratum.name!r} not found; available "
            f"columns: {sorted(map(str, cases.columns))}"
        )
    # Labels are made once per distinct value (and per distinct combination of an
    # intersection) and shared by the rows: a str per row was 100,000 objects per call at
    # 100,000 cases, for every table that splits by the stratum.
    per = []
    for col in stratum.columns:
        codes, uniques = pd.factorize(cases[col], use_na_sentinel=True)  # missing: -1
        per.append((codes, [None if _is_missing(u) else _label(u) for u in uniques]))
    if len(per) == 1:
        codes, names = per[0]
        labels: list[object] = list(names)
    else:
        stacked = np.stack([codes for codes, _ in per], axis=1)
        combos, codes = np.unique(stacked, axis=0, return_inverse=True)
        codes = codes.reshape(-1)
        labels = []
        for combo in combos:
            values = [names[c] if c >= 0 else None for c, (_, names) in zip(combo, per)]
            labels.append(None if derived and any(v is None for v in values) else
                          _SEP.join(MISSING if v is None else str(v) for v in values))
    table = np.array([*labels, None], dtype=object)  # code -1 (missing) takes the last
    if not derived:
        table[[v is None for v in table]] = MISSING
    name = stratum.columns[0] if len(per) == 1 else None
    return pd.Series(table[codes], index=cases.index, dtype=object, name=name)


def _is_missing(x: object) -> bool:
    if x is None:
        return True
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def _label(x: object) -> str:
    # 3.0 and 3 from a CSV are the same group; keep the shortest form.
    if isinstance(x, (float, np.floating)) and float(x).is_integer():
        return str(int(x))
    return str(x)


def check_scalar_columns(manifest: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Refuse a stratum or kept column whose cells are lists, arrays or mappings (a list-typed
    Parquet column): a group label must be one value, and such cells cannot be compared.

    Raises
    ------
    ValueError
        Naming the column, the first case and the type found.
    """
    for col in dict.fromkeys(columns):
        if col not in manifest.columns or manifest[col].dtype != object:
            continue
        for cid, value in zip(manifest["case_id"], manifest[col]):
            if isinstance(value, (list, tuple, dict, set, np.ndarray)):
                raise ValueError(
                    f"{what}: column {col!r}: expected one text or number per case, got a "
                    f"{type(value).__name__} in case {cid!r}; flatten the column first")


def case_clusters(cases: pd.DataFrame) -> tuple[pd.Series, bool]:
    """The resampling unit of each case: its patient when patient ids are known (cases without
    one are their own unit), else the case; and whether patients were used."""
    if "patient_id" in cases.columns and cases["patient_id"].notna().any():
        cl = cases["patient_id"].astype(object).where(cases["patient_id"].notna(),
                                                     "case:" + cases["case_id"].astype(str))
        return cl.astype(str), True
    return cases["case_id"].astype(str), False
