"""Reference standard from several readers: who read, the rule that combined them, how much they
agree, how each reader performed (STAPLE), and whether the model lies within reader variability.

A view: every number comes from the :class:`~medseg_xai.audit.AuditResult` reader tables
(``reader_subgroups``, ``reader_noninferiority``, ``reader_detection``, ``readers``); this module
only selects, reshapes and formats them. Left out (``None``) when the audit had no readers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medseg_xai.reports.common import reference_statement
from medseg_xai.reports.tables import fmt, table_from_frame

TITLE = "Reference standard: readers and agreement"

_METRICS = ("dice", "hd95", "assd", "nsd", "lesion_f1")
_METRIC_HEAD = {"dice": "Dice", "hd95": "HD95 (mm)", "assd": "ASSD (mm)", "nsd": "NSD",
                "lesion_f1": "lesion F1", "sensitivity": "sensitivity",
                "specificity": "specificity"}
_RULES = {"staple": "STAPLE consensus of the readers (the algorithm of SimpleITK's "
                    "STAPLEImageFilter; posterior probability >= 0.5)",
          "majority": "majority vote of the readers (a voxel marked by exactly half of them is "
                      "background)"}


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _est_ci(est: Any, lo: Any, hi: Any) -> str:
    if est is None or (isinstance(est, float) and not np.isfinite(est)):
        return "–"
    if lo is None or not np.isfinite(float(lo)) or not np.isfinite(float(hi)):
        return fmt(est)
    return f"{fmt(est)} ({fmt(lo)} to {fmt(hi)})"


def _label(row: pd.Series) -> str:
    a, b, comp = str(row["reader_a"]), str(row["reader_b"]), str(row["comparison"])
    if comp == "staple":
        return a
    if a == "all readers":
        return "every reader pair (mean per case)" if comp == "reader" else \
            "model vs each reader (mean per case)"
    if comp == "model":
        return f"model vs {a}"
    return f"{a} vs {b}"


def _wide(sub: pd.DataFrame, metrics: tuple[str, ...], table_id: str, caption: str) -> Any:
    """One row per comparison, one column per metric: ``estimate (CI)`` and n."""
    if sub.empty:
        return None
    rows = []
    for _, g in sub.groupby(["comparison", "reader_a", "reader_b"], sort=False):
        rec: dict[str, Any] = {"comparison": _label(g.iloc[0]), "n": int(g["n"].max())}
        for m in metrics:
            r = g[g["metric"] == m]
            rec[_METRIC_HEAD[m]] = (_est_ci(r["estimate"].iloc[0], r["ci_low"].iloc[0],
                                            r["ci_high"].iloc[0]) if len(r) else "–")
        rows.append(rec)
    df = pd.DataFrame(rows)
    return table_from_frame(df, table_id, caption=caption)


def _figure(ni: pd.DataFrame, ci: str) -> str | None:
    """Difference (model vs readers minus reader vs reader Dice) with CI per group, and -margin."""
    from matplotlib.figure import Figure

    from medseg_xai.reports import figures

    d = ni[ni["metric"] == "dice"]
    if d.empty:
        return None
    labels = [("all cases" if s == "overall" else f"{s}: {g}") + f" (n={n})"
              for s, g, n in zip(d["stratum"], d["group"], d["n"])]
    y = np.arange(len(d))[::-1]
    fig = Figure(figsize=(6.4, 0.3 * len(d) + 1.1))
    ax = fig.subplots()
    est = pd.to_numeric(d["difference"], errors="coerce").to_numpy(float)
    lo = pd.to_numeric(d["ci_low"], errors="coerce").to_numpy(float)
    hi = pd.to_numeric(d["ci_high"], errors="coerce").to_numpy(float)
    colours = np.array(["#009E73" if s == "within reader variability" else
                        "#999999" if s == "insufficient data" else "#D55E00"
                        for s in d["status"]], dtype=object)
    ok = np.isfinite(lo) & np.isfinite(hi)
    ax.hlines(y[ok], lo[ok], hi[ok], colors=colours[ok], lw=1.6)
    ax.scatter(est, y, c=list(colours), s=18, zorder=3)
    ax.axvline(0.0, color="#333333", lw=0.8)
    for margin in sorted(set(pd.to_numeric(d["margin"], errors="coerce").dropna())):
        ax.axvline(-margin, color="#0072B2", lw=1, ls="--")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize="x-small")
    ax.tick_params(axis="x", labelsize="x-small")
    ax.set_xlabel(f"Dice: model vs readers minus reader vs reader (mean, {ci}); dashed: -margin",
                  fontsize="x-small")
    ax.grid(axis="x", alpha=0.3)
    fig.subplots_adjust(left=0.42, right=0.98, bottom=0.75 / fig.get_figheight(),
                        top=1 - 0.2 / fig.get_figheight())
    return figures.to_uri(fig)


def build(result: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    """Section data, or None when the audit had a single reference per case."""
    readers = getattr(result, "readers", None)
    sub = getattr(result, "reader_subgroups", None)
    if readers is None or readers.empty or sub is None or sub.empty:
        return None
    settings = result.settings or {}
    ci = f"{float(settings.get('confidence', 0.95)) * 100:g}% CI"
    names = [str(r) for r in pd.unique(readers.loc[readers["comparison"] == "model", "reader_a"])
             if r != "consensus"]
    rule = settings.get("reference")
    cases = result.cases
    rows = [
        ("Readers", f"{len(names)}: {', '.join(names)}"),
        ("Reference standard used by this audit", _capital(reference_statement(result))),
        ("Consensus the model is also compared with",
         _RULES["majority" if rule == "majority" else "staple"]),
        ("Missing reader files", "allowed: a case is analysed with the readers present"
         if settings.get("allow_missing_readers") else "not allowed: such a row fails"),
    ]
    missing = (cases.loc[cases["readers_missing"].fillna("").astype(str) != "",
                         ["case_id", "readers_missing"]]
               if "readers_missing" in cases.columns else pd.DataFrame())
    overall = sub[sub["stratum"] == "overall"]
    inter = overall[overall["comparison"] == "reader"]
    model = overall[overall["comparison"] == "model"]
    staple = overall[overall["comparison"] == "staple"]
    ni = result.reader_noninferiority
    ni_view = ni.copy()
    if len(ni_view):
        ni_view["group"] = ni_view["group"].astype(str)
        ni_view["difference"] = [_est_ci(e, lo, hi) for e, lo, hi in
                                 zip(ni_view["difference"], ni_view["ci_low"],
                                     ni_view["ci_high"])]
    det = result.reader_detection
    margins = sorted(set(pd.to_numeric(ni["margin"], errors="coerce").dropna())) if len(ni) else []
    return {
        "ci": ci,
        "rows": rows,
        "missing": (table_from_frame(missing, "readers-missing",
                                     headers={"readers_missing": "missing readers"})
                    if len(missing) else None),
        "agreement": _wide(inter, _METRICS, "reader-agreement",
                           f"Inter-reader agreement, all cases: mean over cases ({ci})."),
        "staple": _wide(staple, ("sensitivity", "specificity"), "reader-staple",
                        f"Each reader's STAPLE-estimated voxel sensitivity and specificity "
                        f"({ci})."),
        "model": _wide(model, _METRICS, "model-vs-readers",
                       f"The model against each reader and the consensus ({ci})."),
        "noninferiority": table_from_frame(
            ni_view, "reader-noninferiority",
            ["stratum", "group", "metric", "n", "model_vs_readers", "reader_vs_reader",
             "difference", "margin", "status"],
            headers={"model_vs_readers": "model vs readers", "reader_vs_reader":
                     "reader vs reader", "difference": f"difference ({ci})"}).hide_in_print(
                list((ni["stratum"] != "overall") & (ni["metric"] != "dice")),
                "of metrics other than Dice in subgroups") if len(ni) else None,
        "margins": ", ".join(fmt(m) for m in margins),
        "margin_prespecified": any(c.get("kind") == "noninferiority"
                                   for c in (settings.get("criteria") or [])
                                   if isinstance(c, dict)),
        "figure": _figure(ni, ci) if len(ni) else None,
        "detection": table_from_frame(
            det, "reader-detection",
            ["stratum", "group", "lesion_set", "n_lesions", "n_detected", "rate", "ci_low",
             "ci_high"],
            headers={"lesion_set": "lesions marked by", "ci_low": f"{ci} low",
                     "ci_high": f"{ci} high", "rate": "detection rate"}).hide_in_print(
                list((det["n_lesions"] == 0) | ((det["stratum"] != "overall")
                                                & (det["lesion_set"] != "any reader"))),
                "without lesions, or of subgroups for lesion sets other than 'any reader'")
            if len(det) else None,
    }
