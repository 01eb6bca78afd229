"""The HTML audit report on real engine output: numbers equal the JSON, labels follow the
settings, statements are true, escaping, self-containment, re-rendering, PDF."""

from __future__ import annotations

import dataclasses
import json
import re

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from conftest import REAL_AUDIT_KW  # noqa: E402
from markupsafe import escape  # noqa: E402
from report_html import (  # noqa: E402
    assert_numbers_equal_json,
    by_id,
    json_rows,
    parse,
    records,
    without_provenance_line,
)

from medseg_xai.audit import AuditResult, build_result, compare  # noqa: E402
from medseg_xai.reports import render_html, write_html  # noqa: E402
from medseg_xai.reports.registry import SECTIONS  # noqa: E402
from medseg_xai.reports.tables import ci_label, fmt_p, identifying  # noqa: E402

EVIL = "<script>alert(1)</script> Zürich \"quoted\" 'single' & 東京"


def reanalysed(result: AuditResult, **settings) -> AuditResult:
    """The same evaluated cases re-analysed with other settings (no case is re-evaluated)."""
    out = build_result(result.cases, result.lesions, {**result.settings, **settings},
                       result.provenance, result.run, report=result.report)
    out.explanations = result.explanations
    return out


@pytest.fixture(scope="module")
def html(real_audit) -> str:
    return render_html(real_audit)


@pytest.fixture(scope="module")
def doc(real_audit) -> dict:
    return json.loads(real_audit.to_json())


def test_every_number_shown_equals_the_json(html, doc):
    assert assert_numbers_equal_json(html, doc) > 500


def test_rerendered_from_json_equals_the_original(real_audit, html, tmp_path):
    real_audit.to_json(tmp_path / "audit.json")
    again = render_html(AuditResult.from_json(tmp_path / "audit.json"))
    assert without_provenance_line(again) == without_provenance_line(html)


@pytest.mark.slow
def test_confidence_label_follows_the_setting_everywhere(real_audit):
    r90 = reanalysed(real_audit, confidence=0.9, n_resamples=100)
    html = render_html(r90)
    assert "95%" not in html and "95 %" not in html
    assert html.count("90% CI") >= 10
    doc = json.loads(r90.to_json())
    assert doc["settings"]["confidence"] == 0.9
    assert by_id(html, "verdict-status") == doc["verdict"] == r90.verdict
    assert_numbers_equal_json(html, doc)
    # the default criteria name states no level of its own
    assert all("95" not in c for c in r90.criteria["criterion"])
    assert ci_label(0.9) == "90% CI" and ci_label(0.975) == "97.5% CI"


def test_verdict_block_states_the_verdict_cohort_and_failures(real_audit, html, doc):
    assert by_id(html, "verdict-status") == doc["verdict"] == real_audit.verdict
    assert int(by_id(html, "verdict-n-rows")) == real_audit.n_rows == len(real_audit.cases)
    assert int(by_id(html, "verdict-n-failed")) == real_audit.n_failed == 1
    assert int(by_id(html, "verdict-n-criteria")) == len(REAL_AUDIT_KW["criteria"])
    # the verdict block is the first section
    assert re.search(r'<h2>1\. Verdict</h2>', html)


@pytest.mark.slow
def test_criteria_definitions_apart_from_results_and_not_evaluated_reasons(real_audit):
    # Without strata a gap criterion cannot be checked: NOT EVALUATED with its reason.
    r = reanalysed(real_audit, strata=[])
    gap = r.criteria[r.criteria["kind"] == "gap"]
    assert list(gap["status"]) == ["NOT EVALUATED"] and "no strata" in gap["reason"].iloc[0]
    v = r.verdicts.set_index("criterion").loc[gap["criterion"].iloc[0]]
    assert v["status"] == "INSUFFICIENT DATA" and v["n_not_evaluated"] == 1
    html = render_html(r)
    p = parse(html)
    defs = records(p.tables["criteria-definitions"])
    assert [d["criterion"][0] for d in defs] == [c["name"] for c in r.settings["criteria"]]
    assert [float(d["threshold"][1]) for d in defs] == [c["threshold"] for c in
                                                       r.settings["criteria"]]
    lower = next(d for d in defs if d["criterion"][0].startswith("Dice lower"))
    assert lower["statistic (what is compared)"][0] == "lower 95% CI bound of mean Dice"
    results = records(p.tables["criteria-results"])
    assert any(x["status"][0] == "NOT EVALUATED" and "no strata" in x["reason"][0]
               for x in results)
    assert "not evaluated (no strata were audited" in html


def test_scans_without_reference_lesions_are_their_own_category(real_audit, html):
    cases = real_audit.cases
    empty_ids = set(cases.loc[cases["volume_ref_mm3"] == 0, "case_id"])
    assert empty_ids
    crit = real_audit.criteria
    dice = crit[(crit["metric"] == "dice") & (crit["stratum"] == "lesion_size")
                & (crit["group"] == "empty")]
    assert list(dice["status"]) == ["NOT EVALUATED"] and "no reference lesion" in dice["reason"].iloc[0]
    gallery = real_audit.explanations
    worst = [e for e in gallery if e["category"] == "worst"]
    assert worst and not {e["case_id"] for e in worst} & empty_ids
    fp = [e for e in gallery if e["category"] == "false_positive_scan"]
    assert fp and {e["case_id"] for e in fp} <= empty_ids
    assert "Scans without reference lesions, with false positives" in html
    assert "Scans without reference lesions</h3>" in html  # the choice is written down


def test_statements_are_true_counts_order_p_values_fingerprint(real_audit, html, doc):
    counts = json_rows(doc, "group_counts")
    empty = next(c for c in counts if c["stratum"] == "lesion_size" and c["group"] == "empty")
    assert empty["n_evaluated"] == int((real_audit.cases["volume_ref_mm3"] == 0).sum()) > 0
    for line in re.findall(r"<li>(.*?)</li>", html):
        m = re.search(r"Group (\S+) = (.+?) has (\d+) evaluated", line)
        if m:
            c = next(c for c in counts if c["stratum"] == m.group(1) and c["group"] == m.group(2))
            assert int(m.group(3)) == c["n_evaluated"]
        assert "= –" not in line and "  " not in line  # no empty statistic or metric name
    # lesion-size groups in numeric order, in the data and subgroup sections
    p = parse(html)
    size_idx = doc["settings"]["strata"].index("lesion_size")
    groups = list(dict.fromkeys(r["group"][0] for r in
                                records(p.tables[f"subgroup-table-{size_idx}"])))
    assert groups == ["empty", "[0, 250) mm3", "[250, 1000) mm3", "[1000, inf) mm3"]
    # section numbers without holes, each in the table of contents
    nums = [int(n) for n in re.findall(r"<h2>(\d+)\. ", html)]
    # no comparison; readers if any; model_and_data only for an audit run with a model;
    # failure_detection only for an audit run with failure= (issue 27)
    shown = (len(SECTIONS) - 1 - int(real_audit.readers.empty)
             - int(real_audit.feature_shift.empty and real_audit.model_layers.empty)
             - int(not real_audit.settings.get("failure")))
    assert nums == list(range(1, len(nums) + 1)) and len(nums) == shown
    for anchor in re.findall(r'<section class="report" id="([^"]+)"', html):
        assert f'href="#{anchor}"' in html
    # adjusted p-values below 0.001 print as "< 0.001"
    assert fmt_p(0.0004) == "< 0.001" and fmt_p(0.0123) == "0.012" and fmt_p(None) == "–"
    for t in p.tables.values():
        for rec in records(t):
            if "adjusted p" in rec and rec["adjusted p"][1] not in (None, "nan"):
                assert rec["adjusted p"][0] == fmt_p(float(rec["adjusted p"][1]))
    # one model fingerprint string, the JSON's, wherever it appears
    fp = doc["provenance"]["model_fingerprint"]
    assert fp == REAL_AUDIT_KW["report"]["model_fingerprint"]
    ident = dict((r[0], r[1]) for r in re.findall(r"<tr><th scope=\"row\">(.*?)</th><td>(.*?)</td>",
                                                   html))
    assert ident["Model fingerprint (sha256 of the weights, 16 hex)"] == fp
    assert ident["Model fingerprint"] == fp


def test_flags_mean_something_at_every_level(real_audit):
    det = real_audit.lesion_detection
    tested = det[(det["stratum"] != "overall") & (det["n_lesions"] >= real_audit.settings["min_n"])]
    assert tested["p_value"].notna().any()
    for r in det.to_dict("records"):
        if r["n_lesions"] < real_audit.settings["min_n"]:
            assert r["flag"] == "insufficient data"
        elif pd.isna(r["p_adjusted"]):
            assert r["flag"] == "not tested"
        elif r["p_adjusted"] < real_audit.settings["alpha"]:
            assert r["flag"] in ("worse", "better")
        else:
            assert r["flag"] == "ok"
    for table in (real_audit.false_positives, real_audit.volume_agreement):
        assert {"p_value", "p_adjusted"} <= set(table.columns)
        assert set(table["flag"]) <= {"ok", "worse", "better", "insufficient data", "not tested"}


def test_reference_standard_from_config_or_not_stated(real_audit, html):
    from medseg_xai.reports import sec_reference_standard

    rows = dict(re.findall(r'<tr><th scope="row">(.*?)</th><td>(.*?)</td>', html))
    assert rows["How the reference labels were made"] == "generator masks"
    assert rows["Adjudication of disagreements"] == "not stated"
    cfg = {**real_audit.report, "annotators": "3 neuroradiologists", "adjudication": "majority vote"}
    rows = dict(sec_reference_standard.build(real_audit, cfg)["rows"])
    assert rows["Annotators (number, profession, experience)"] == "3 neuroradiologists"
    assert rows["Adjudication of disagreements"] == "majority vote"


def test_gallery_is_drawn_from_the_result_with_colour_bars(real_audit, html):
    entries = real_audit.explanations
    assert html.count('class="card"') == len(entries)
    explained = [e for e in entries if e["method"]]
    assert explained and all(e["analysis"]["verdict"] for e in explained)
    for e in explained:
        assert all(pl["heatmap"] is not None and pl["target"] is not None
                   for pl in e["figure"]["planes"])
        assert e["case_id"] in html and str(escape(e["analysis"]["verdict"])) in html
    # a 1000-case report stays small: each entry's payload is compact
    assert max(len(json.dumps(e)) for e in entries) < 150_000


@pytest.mark.slow
def test_comparison_names_which_file_is_a_and_which_is_b(real_audit):
    other = reanalysed(real_audit)
    comp = compare(real_audit, other, name_a="old_model.json", name_b="new <model>.json")
    html = render_html(other, comparison=comp)
    assert by_id(html, "comparison-a") == "old_model.json"
    assert by_id(html, "comparison-b") == "new &lt;model&gt;.json"
    p = parse(html)
    cols = p.tables["comparison-subgroups"]["columns"]
    assert "mean A (old_model.json)" in cols and "mean B (new <model>.json)" in cols
    assert "difference B − A" in cols
    rows = records(p.tables["comparison-subgroups"])
    assert len(rows) == len(comp.subgroups)
    assert 'id="comparison"' not in render_html(other)


def test_untrusted_text_is_escaped_and_intact(real_audit):
    r = dataclasses.replace(real_audit, cases=real_audit.cases.copy())
    r.cases.loc[r.cases["status"] == "failed", "error"] = EVIL
    html = render_html(r, config={"model_name": EVIL, "intended_use": "Triage of <b>MS</b>",
                                  "limitations": [EVIL]})
    assert "<script>alert(1)</script>" not in html and "<b>MS</b>" not in html
    assert ("&lt;script&gt;alert(1)&lt;/script&gt; Zürich &#34;quoted&#34; &#39;single&#39; "
            "&amp; 東京") in html
    p = parse(html)
    assert p.scripts == 0
    assert EVIL in [c[0] for t in p.tables.values() for row in t["rows"] for c in row]


def test_self_contained_and_never_shows_patient_ids(real_audit, html):
    assert not re.search(r"https?://", html)
    srcs = re.findall(r"""\bsrc\s*=\s*["']([^"']*)""", html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    hrefs = re.findall(r"""href\s*=\s*["']([^"']*)""", html)
    assert hrefs and all(h.startswith("#") for h in hrefs)
    for pid in real_audit.cases["patient_id"].dropna():
        assert f">{pid}<" not in html
    assert "@page" in html and "counter(page)" in html  # page numbers when printed


def test_failed_rows_listed_with_their_reason(real_audit, html):
    rows = parse(html).tables["failed-cases"]["rows"]
    failed = real_audit.failed
    assert [(r[0][0], r[1][0]) for r in rows] == list(zip(failed["case_id"], failed["error"]))
    assert "/" not in rows[0][1][0].replace("mm3", "")  # file name only, never its folders


def test_write_html_is_atomic_and_bad_arguments_raise(real_audit, tmp_path):
    out = write_html(real_audit, tmp_path / "sub" / "r.html")
    assert out.is_file() and not list(out.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match="result"):
        render_html(object())
    with pytest.raises(ValueError, match="config"):
        render_html(real_audit, config=tmp_path / "missing.yaml")
    with pytest.raises(TypeError):
        render_html(real_audit, cohort=None)  # the report never loads images itself


@pytest.mark.parametrize("column, hidden", [
    ("patient_id", True), ("PatientName", True), ("PatientBirthDate", True), ("image", True),
    ("case_id", False), ("site", False), ("device", False), ("dice", False)])
def test_identifying_columns(column, hidden):
    assert identifying(column) is hidden


def test_write_pdf_says_what_is_missing(real_audit, tmp_path, monkeypatch):
    import builtins

    from medseg_xai.reports import render as R

    html_path = write_html(real_audit, tmp_path / "r.html")
    monkeypatch.setattr(R, "find_chromium", lambda: None)
    real_import = builtins.__import__

    def no_weasyprint(name, *a, **kw):
        if name == "weasyprint":
            raise ImportError("no weasyprint")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_weasyprint)
    with pytest.raises(RuntimeError, match="Chromium.*WeasyPrint"):
        R.write_pdf(html_path, tmp_path / "r.pdf")
    with pytest.raises(ValueError, match="html_path"):
        R.write_pdf(tmp_path / "missing.html", tmp_path / "r.pdf")


def test_command_line_in_the_json_names_files_not_folders(real_audit):
    r = real_audit.with_report({"command_line": "medseg-xai audit /data/DOE^JOHN/m.csv --out x"})
    doc = json.loads(r.to_json())
    assert doc["report"]["command_line"] == "medseg-xai audit m.csv --out x"
    assert "DOE^JOHN" not in r.to_json()


def test_distribution_marks_are_the_results_mean_and_median(real_audit):
    """The histogram's mean/median lines are the overall rows' numbers, not recomputed."""
    from medseg_xai.reports import figures

    sub = real_audit.subgroups
    rows = sub[sub["stratum"] == "overall"].copy()
    ok = real_audit.cases[real_audit.cases["status"] == "ok"]
    metric = str(rows["metric"].iloc[0])
    rows.loc[rows["metric"] == metric, ["estimate", "median"]] = [0.123, 0.456]  # a view recomputing would miss these
    fig = figures.distribution_plot(ok, [metric], rows)
    xs = sorted(float(line.get_xdata()[0]) for line in fig.axes[0].get_lines())
    assert xs == [0.123, 0.456]
    bare = figures.distribution_plot(ok, [metric])  # no result rows: no invented marks
    assert bare.axes[0].get_lines() == []
