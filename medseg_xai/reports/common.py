"""Helpers shared by the report sections: labels and look-ups over an AuditResult (no numbers
are computed here: every value shown comes from the result's tables)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from medseg_xai.metrics.metadata import metric_label
from medseg_xai.reports.tables import ci_label

__all__ = ["ci_text", "config_list", "config_text", "criteria_status", "metric_definition",
           "metric_label", "reference_statement", "statistic_label", "stratum_title"]

def metric_definition(metric: str) -> str:
    """The metric's definition from the one metadata table (``metrics.metadata``)."""
    from medseg_xai.metrics.metadata import metric_info

    info = metric_info(metric)
    return info.definition if info is not None else "see the medseg-xai documentation"


def ci_text(result: Any) -> str:
    """``"95% CI"`` (or the audit's own level)."""
    return ci_label(result.confidence)


def statistic_label(kind: str, statistic: str, metric: str | None, confidence: float) -> str:
    """What a criterion's number is, in words (``lower 90% CI bound of mean dice``)."""
    ci = ci_label(confidence)
    m = metric_label(metric) if metric else ""
    if kind == "metric":
        return {"estimate": f"mean {m}", "median": f"median {m}",
                "ci_low": f"lower {ci} bound of mean {m}",
                "ci_high": f"upper {ci} bound of mean {m}"}.get(statistic, f"{statistic} of {m}")
    if kind == "gap":
        return {"gap": f"largest |difference| of mean {m} to the overall mean",
                "gap_best": f"largest |difference| of mean {m} to the best group"}.get(
                    statistic, statistic)
    what = ("lesion detection rate" if kind == "detection"
            else "share of scans without reference lesions with a false positive")
    return {"rate": what, "ci_low": f"lower {ci} (Clopper-Pearson) bound of the {what}",
            "ci_high": f"upper {ci} (Clopper-Pearson) bound of the {what}"}.get(statistic, what)


def stratum_title(stratum: str) -> str:
    return "Intersection: " + stratum if " x " in stratum else stratum


def criteria_status(result: Any, *, kinds: tuple[str, ...] = ("metric",)) -> dict[tuple, str]:
    """``(stratum, group, metric) -> status`` from the criteria table; FAIL wins over others."""
    out: dict[tuple, str] = {}
    crit = result.criteria
    if crit is None or crit.empty:
        return out
    rank = {"FAIL": 0, "INSUFFICIENT DATA": 1, "NOT EVALUATED": 2, "PASS": 3}
    for rec in crit[crit["kind"].isin(kinds)].to_dict("records"):
        key = (str(rec["stratum"]), str(rec["group"]), str(rec["metric"]))
        if key not in out or rank.get(rec["status"], 9) < rank.get(out[key], 9):
            out[key] = str(rec["status"])
    return out


_RULE_NAMES = {"staple": "the STAPLE consensus", "majority": "the majority vote"}


def reference_statement(result: Any) -> str:
    """What the audit used as the reference standard, in one sentence, from the result (the
    ``reference`` setting and the readers it analysed): the report says it once, the same way,
    wherever it names the reference."""
    settings = result.settings or {}
    rule = settings.get("reference")
    readers = getattr(result, "readers", None)
    names: list[str] = []
    if readers is not None and len(readers) and "reader_a" in readers.columns:
        model = readers[readers["comparison"] == "model"] if "comparison" in readers else readers
        names = [str(r) for r in pd.unique(model["reader_a"]) if r not in ("consensus",
                                                                          "all readers")]
    n = len(names)
    if rule in _RULE_NAMES:
        return f"{_RULE_NAMES[rule]} of {n} readers' masks ({', '.join(names)}) per scan"
    if rule:
        return f"the masks of one reader ({rule}) per scan"
    alongside = (f"; {n} readers' masks ({', '.join(names)}) are compared with it and with the "
                 "model, but are not the reference" if n else "")
    return f"the manifest's label mask of each scan (one reference per scan){alongside}"


def config_text(config: Mapping[str, Any], *keys: str) -> str | None:
    for k in keys:
        v = config.get(k)
        if v not in (None, "", []):
            if isinstance(v, (list, tuple)):
                return "; ".join(str(x) for x in v)
            return str(v)
    return None


def config_list(config: Mapping[str, Any], key: str) -> list[str]:
    v = config.get(key)
    if v in (None, ""):
        return []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    return [str(v)]


def rows_of(df: pd.DataFrame, **eq: Any) -> pd.DataFrame:
    """Rows of ``df`` whose columns equal the given values."""
    sel = pd.Series(True, index=df.index)
    for k, v in eq.items():
        sel &= df[k].astype(str) == str(v)
    return df[sel]
