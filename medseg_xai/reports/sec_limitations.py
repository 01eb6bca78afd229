"""Limitations: found in the result (each number labelled with what it is) and stated ones."""

from __future__ import annotations

from typing import Any

from medseg_xai.reports.common import config_list, metric_label, statistic_label
from medseg_xai.reports.tables import fmt, fmt_p

TITLE = "Limitations and residual risks"


def build(result: Any, config: dict[str, Any]) -> dict[str, Any]:
    auto: list[str] = []
    conf = result.confidence
    min_n = int(result.settings.get("min_n", 10))
    if result.n_rows and result.n_failed == result.n_rows:
        auto.append(f"Every one of the {result.n_rows} cases failed to evaluate: no performance "
                    "claim can be made.")
    elif result.n_failed:
        auto.append(f"{result.n_failed} of {result.n_rows} manifest rows failed to evaluate and "
                    "are left out of the statistics (reasons in the Data section); results may "
                    "be biased if failures are not random.")
    counts = result.group_counts
    if counts is not None and len(counts):
        small = counts[(counts["stratum"] != "overall") & (counts["n_evaluated"] < min_n)]
        if len(small):  # one statement, every group named with its count
            groups = "; ".join(f"Group {r['stratum']} = {r['group']} has {r['n_evaluated']} "
                               "evaluated scans" for r in small.to_dict("records"))
            auto.append(f"{groups} (each < minimum n {min_n}): their estimates are imprecise "
                        "and they are not tested.")
    for r in result.criteria[result.criteria["status"] == "FAIL"].to_dict("records"):
        where = "overall" if r["stratum"] == "overall" else f"{r['stratum']} = {r['group']}"
        label = statistic_label(r["kind"], r["statistic"], r["metric"], conf)
        auto.append(f"Acceptance criterion failed: {r['criterion']} ({where}: {label} = "
                    f"{fmt(r['value'])}, required {r['op']} {fmt(r['threshold'])}, n = {r['n']}).")
    for r in result.verdicts[result.verdicts["n_not_evaluated"] > 0].to_dict("records"):
        auto.append(f"Criterion {r['criterion']}: {r['n_not_evaluated']} check(s) not evaluated "
                    f"({r['reason']}).")
    sub = result.subgroups
    flagged = sub[(sub["stratum"] != "overall") & (sub["flag"] == "worse")]
    for r in flagged.to_dict("records"):
        auto.append(f"Subgroup {r['stratum']} = {r['group']} is worse than the rest on mean "
                    f"{metric_label(r['metric'])}: difference to the overall mean {fmt(r['gap'])}, adjusted "
                    f"p {fmt_p(r['p_adjusted'])}.")
    det = result.lesion_detection
    for r in det[det["flag"] == "worse"].to_dict("records"):
        auto.append(f"Lesion detection in {r['stratum']} = {r['group']} (lesion size "
                    f"{r['size_bin']}) is worse than the rest: {r['n_detected']} of "
                    f"{r['n_lesions']} detected, adjusted p {fmt_p(r['p_adjusted'])}.")
    fp = result.false_positives
    for r in fp[fp["flag"] == "worse"].to_dict("records"):
        auto.append(f"False positives on scans without reference lesions in {r['stratum']} = "
                    f"{r['group']}: {r['n_with_fp']} of {r['n_scans']} scans, more than the rest "
                    f"(adjusted p {fmt_p(r['p_adjusted'])}).")
    va = result.volume_agreement
    for r in va[va["flag"] == "worse"].to_dict("records"):
        auto.append(f"Volume bias in {r['stratum']} = {r['group']}: {fmt(r['bias'])} mm³, "
                    f"further from zero than the rest (adjusted p {fmt_p(r['p_adjusted'])}).")
    ref = result.lesions[result.lesions["source"] == "reference"] if len(result.lesions) else []
    if len(ref) == 0:
        auto.append("No reference lesions among the evaluated scans: lesion-level detection is "
                    "not assessed.")
    if not result.strata:
        auto.append("No strata were audited: differences between sites, devices or patient "
                    "groups are not assessed.")
    if result.verdicts.empty:
        auto.append("No pre-specified acceptance criteria were given.")
    for note in result.settings.get("statistics_warnings") or []:
        auto.append(f"Statistics: {note[0].upper()}{note[1:]}.")
    return {"automatic": auto, "user": config_list(config, "limitations")}
