"""Sample-size statements for criteria on a confidence bound (FDA draft guidance, Sec. X.A asks
for a sample-size justification).

For every criterion row that judges a group's lower (or upper) confidence bound of a mean:

- ``pass_needs_mean``: with this group's n and spread, the bound passes only if the mean is at
  least (at most) this value: the threshold plus the observed distance from the mean to the
  bound (``estimate - ci_low``), i.e. the interval this group actually got;
- ``assumed_mean``: the stated true mean the sample size is computed for: the criterion's
  ``assumed_mean`` if it states one, else the whole cohort's mean of the metric;
- ``n_needed``: units (patients; scans without patient ids) for the bound to clear the threshold
  at that true mean with this spread: ``2 s^2 log(2/alpha) / d^2`` for the betting interval (its
  width for large n, Waudby-Smith & Ramdas 2023, Sec. 5), ``(z s / d)^2`` (at least
  ``stats.MIN_INTERVAL_UNITS``) for the bootstrap intervals, with ``s`` the standard deviation of
  the group's unit means and ``d`` the distance from the assumed mean to the threshold; NaN when
  the assumed mean does not clear the threshold (no n suffices).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from medseg_xai.audit import stats

__all__ = ["SAMPLE_SIZE_COLUMNS", "add_sample_size"]

SAMPLE_SIZE_COLUMNS = ["pass_needs_mean", "assumed_mean", "n_needed"]


def _unit_sd(values: pd.Series, clusters: pd.Series | None) -> float:
    x = pd.to_numeric(values, errors="coerce")
    keep = np.isfinite(x.to_numpy(dtype=float))
    x = x[keep]
    if clusters is not None:
        x = x.groupby(clusters[keep].astype(str).to_numpy()).mean()
    return float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def _n_needed(method: str, sd: float, distance: float, confidence: float) -> float:
    if not (np.isfinite(sd) and np.isfinite(distance)) or distance <= 0:
        return float("nan")
    alpha = 1.0 - confidence
    if method == "betting":
        n = 2.0 * sd * sd * np.log(2.0 / alpha) / distance**2
    else:
        z = float(sps.norm.ppf(1.0 - alpha / 2.0))
        n = (z * sd / distance) ** 2
    return float(max(np.ceil(n), stats.MIN_INTERVAL_UNITS.get(method, 2)))


def add_sample_size(
    criteria_table: pd.DataFrame, criteria: list[Mapping[str, Any]], subgroups: pd.DataFrame,
    cases: pd.DataFrame, group_index: Mapping[tuple[str, str], pd.Index], *,
    confidence: float, ci_method: str,
) -> pd.DataFrame:
    """``criteria_table`` with :data:`SAMPLE_SIZE_COLUMNS` (NaN on rows they do not apply to)."""
    if criteria_table.empty:  # no criteria: the table keeps its columns (JSON round trip)
        return criteria_table
    out = criteria_table.copy()
    for col in SAMPLE_SIZE_COLUMNS:
        out[col] = np.nan
    if subgroups.empty:
        return out
    assumed_by_name = {str(c.get("name")): c.get("assumed_mean") for c in criteria}
    sub = subgroups.set_index(["stratum", "group", "metric"])
    clusters = cases["patient_id"] if "patient_id" in cases.columns and \
        cases["patient_id"].notna().any() else None
    for i, row in out.iterrows():
        if row["kind"] != "metric" or row["statistic"] not in ("ci_low", "ci_high"):
            continue
        key = (row["stratum"], row["group"], row["metric"])
        if key not in sub.index or ("overall", "all", row["metric"]) not in sub.index:
            continue
        r = sub.loc[key]
        lower = row["statistic"] == "ci_low"
        sign = 1.0 if lower else -1.0
        half = sign * (float(r["estimate"]) - float(r[row["statistic"]]))
        threshold = float(row["threshold"])
        stated = assumed_by_name.get(str(row["criterion"]))
        assumed = float(stated) if stated is not None else \
            float(sub.loc[("overall", "all", row["metric"]), "estimate"])
        idx = group_index.get((row["stratum"], row["group"]), pd.Index([]))
        sd = _unit_sd(cases.loc[idx, row["metric"]],
                      None if clusters is None else clusters.loc[idx])
        method = stats.interval_method(row["metric"], ci_method)
        out.at[i, "pass_needs_mean"] = threshold + sign * half if np.isfinite(half) else np.nan
        out.at[i, "assumed_mean"] = assumed
        out.at[i, "n_needed"] = _n_needed(method, sd, sign * (assumed - threshold), confidence)
    return out
