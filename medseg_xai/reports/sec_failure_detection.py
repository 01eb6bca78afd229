"""Failure detection, calibration per subgroup and hidden strata (issue 27): a view of
``result.selective``, ``failure_detection``, ``risk_coverage``, ``calibration``,
``reliability``, ``hidden_strata`` and ``lesion_hidden_strata``. Left out when the audit ran
without ``failure=``."""

from __future__ import annotations

from typing import Any

from medseg_xai.audit.failure import failure_label, percent, score_label
from medseg_xai.metrics.metadata import metric_label
from medseg_xai.reports import figures
from medseg_xai.reports.common import stratum_title
from medseg_xai.reports.figures_failure import reliability_plot, risk_coverage_plot
from medseg_xai.reports.tables import table_from_frame

TITLE = "Failure detection, calibration and hidden strata"
#: Subgroups below this many scans get no reliability panel (and are marked in the table).
CAVEAT_N = 30


def _sentences(result: Any) -> list[str]:
    """The best score's sentences as ``result.selective`` holds them (each coverage target,
    then the group whose failures the target threshold catches least)."""
    sel = result.selective
    if sel is None or sel.empty or "sentence" not in sel:
        return []
    best = sel[sel["best"]].to_dict("records")
    return [r["sentence"] for r in best] + [r["worst_group"] for r in best if r.get("worst_group")]


def _failure_sentence(result: Any, failure: str) -> str:
    """The stated failure (``selective.failure_sentence``; without scores, its words)."""
    sel = result.selective
    if sel is not None and len(sel) and "failure_sentence" in sel:
        return str(sel["failure_sentence"].iloc[0])
    return f"Failure was pre-specified as {failure_label(failure)}."


def _labelled(frame: Any) -> Any:
    """``score_label`` for tables read from an audit.json written before it was stored."""
    if "score_label" in frame:
        return frame
    return frame.assign(score_label=frame["score"].map(score_label))


def _subgroup_table(best: Any, metric: str) -> Any:
    """The per-subgroup rows with the shares as the sentences print them (percentages)."""
    view = _labelled(best).copy()
    view["referred"] = view["referred"].map(percent)
    if "n_caught" in view:
        view["caught"] = [f"{percent(c)} ({int(k)} of {int(f)})" if f else "no failures"
                          for c, k, f in zip(view["caught"], view["n_caught"],
                                             view["n_failures"])]
    else:
        view["caught"] = view["caught"].map(percent)
    return table_from_frame(
        view, "failure-detection-subgroups",
        ["stratum", "group", "score_label", "n", "n_failures", "aurc", "auroc", "referred",
         "caught", "retained_metric"],
        headers={"score_label": "score", "n_failures": "failures", "aurc": "AURC",
                 "auroc": "AUROC", "referred": "referred at the overall threshold",
                 "caught": "failures caught", "retained_metric": f"mean {metric_label(metric)} of the kept"})


def _calibration(result: Any) -> dict[str, Any] | None:
    cal = result.calibration
    if cal is None or cal.empty:
        return None
    table = table_from_frame(cal, "calibration-table", ["stratum", "group", "class", "n",
                                                        "n_voxels", "ece", "ace", "mce",
                                                        "ece_pooled", "ace_pooled"],
                             headers={"n": "scans", "n_voxels": "voxels",
                                      "ece": "ECE (mean of scans)", "ace": "ACE (mean of scans)",
                                      "mce": "MCE (mean of scans)",
                                      "ece_pooled": "ECE (voxels pooled)",
                                      "ace_pooled": "ACE (voxels pooled)"})
    blocks = []
    rel = result.reliability
    for stratum in dict.fromkeys(cal["stratum"]):
        big = cal[(cal["stratum"] == stratum) & (cal["n"] >= CAVEAT_N)]
        pts = rel[(rel["stratum"] == stratum) & rel["group"].isin(big["group"])]
        if len(pts):
            blocks.append({"title": stratum_title(stratum), "figure": figures.to_uri(
                reliability_plot(pts, f"Reliability: {stratum}"))})
    return {"table": table, "blocks": blocks, "caveat_n": CAVEAT_N,
            "bins": result.settings.get("failure", {}).get("calibration_bins")}


def lesion_sentences(result: Any) -> list[str]:
    """One sentence per lesion-level hidden stratum, as ``result.lesion_hidden_strata``
    holds it."""
    ls = getattr(result, "lesion_hidden_strata", None)
    if ls is None or ls.empty or "sentence" not in ls:
        return []
    return [str(t) for t in ls["sentence"]]


def _hidden_sentences(result: Any) -> list[str]:
    """One sentence per case-level hidden stratum (``result.hidden_strata.sentence``)."""
    hs = result.hidden_strata
    if hs is None or hs.empty or "sentence" not in hs:
        return []
    return [str(t) for t in hs["sentence"]]


def _lesion_hidden(result: Any) -> dict[str, Any] | None:
    info = result.provenance.get("lesion_hidden_strata")
    ls = getattr(result, "lesion_hidden_strata", None)
    if not info and (ls is None or ls.empty):
        return None
    table = None
    if ls is not None and len(ls):
        table = table_from_frame(
            ls, "lesion-hidden-strata",
            ["group_id", "description", "n", "n_cases", "mean_group", "mean_rest",
             "adjusted_gap", "failure_rate_group", "failure_rate_rest", "dice_group",
             "dice_rest", "p_adjusted", "rule_exact"],
            headers={"group_id": "group", "n": "lesions", "n_cases": "scans",
                     "rule_exact": "rule (lesion-table columns, exact thresholds)",
                     "mean_group": "detection in group (held-out)",
                     "mean_rest": "detection elsewhere (held-out)",
                     "adjusted_gap": "gap beyond strata and size",
                     "failure_rate_group": "missed in group",
                     "failure_rate_rest": "missed elsewhere", "dice_group": "lesion Dice in group",
                     "dice_rest": "lesion Dice elsewhere", "p_adjusted": "adjusted p"})
    return {"info": info, "sentences": lesion_sentences(result), "table": table}


def build(result: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    fd = result.failure_detection
    settings = result.settings.get("failure")
    searched = (result.provenance.get("hidden_strata")
                or result.provenance.get("lesion_hidden_strata"))
    if not settings or (fd is None or fd.empty) and (
            result.calibration is None or result.calibration.empty) and not searched:
        return None
    out: dict[str, Any] = {"failure": settings.get("failure"), "sentences": _sentences(result),
                           "failure_sentence": _failure_sentence(result,
                                                                 settings.get("failure")),
                           "target": percent(settings.get("target_coverage", 0.8)),
                           "overall": None,
                           "figure": None, "subgroups": None, "calibration": _calibration(result),
                           "hidden": None, "hidden_info": result.provenance.get("hidden_strata"),
                           "hidden_sentences": _hidden_sentences(result),
                           "lesion_hidden": _lesion_hidden(result),
                           "alpha": result.settings.get("alpha"),
                           "min_gap": settings.get("min_gap")}
    if fd is not None and len(fd):
        overall = _labelled(fd[fd["stratum"] == "overall"])
        out["overall"] = table_from_frame(
            overall, "failure-detection-overall",
            ["score_label", "score", "n", "n_failures", "aurc", "e_aurc", "aurc_random",
             "auroc", "spearman_metric", "best"],
            headers={"score_label": "score", "score": "column (audit.json)",
                     "n_failures": "failures", "aurc": "AURC", "e_aurc": "excess AURC",
                     "aurc_random": "AURC of a random score", "auroc": "AUROC",
                     "spearman_metric": f"Spearman with {metric_label(settings.get('metric'))}",
                     "best": "lowest AURC"})
        curves = result.risk_coverage
        curves = curves[curves["stratum"] == "overall"]
        if len(curves):
            out["figure"] = figures.to_uri(risk_coverage_plot(curves, out["failure"]))
        best = fd[fd["best"] & (fd["stratum"] != "overall")]
        if len(best):
            out["subgroups"] = _subgroup_table(best, settings.get("metric", "dice"))
    hs = result.hidden_strata
    if hs is not None and len(hs):
        out["hidden"] = table_from_frame(
            hs, "hidden-strata",
            ["group_id", "description", "n", "mean_group", "mean_rest", "gap", "adjusted_gap",
             "failure_rate_group", "failure_rate_rest", "p_adjusted", "rule_exact"],
            headers={"group_id": "group", "mean_group": "mean in group",
                     "rule_exact": "rule (audit.json columns, exact thresholds)",
                     "mean_rest": "mean elsewhere", "adjusted_gap": "gap beyond known strata",
                     "failure_rate_group": "failure rate in group",
                     "failure_rate_rest": "failure rate elsewhere", "p_adjusted": "adjusted p"})
    # where the uncertainty scores come from (augmentations, fold models, several models)
    out["source"] = (result.settings.get("uncertainty_source") or {}).get("description")
    return out
