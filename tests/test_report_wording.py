"""The demo report read as a reviewer would: its sentences agree with each other and with the
result (reference standard, empty-reference scans, criteria promised, metric names and units),
and its printed copy is compact and identifiable (issue 26)."""

from __future__ import annotations

import html as html_lib
import re

import pytest
from report_html import parse, records

from medseg_xai.metrics.metadata import metric_label

RAW_NAMES = ("abs_volume_diff_mm3", "fp_per_case", "lesion_sensitivity", "volume_ref_mm3")


def _visible_text(page: str) -> str:
    """The report's text without code, preformatted blocks, tags and attributes."""
    page = re.sub(r"<(style|script|pre|code)\b.*?</\1>", " ", page, flags=re.S)
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", page))


@pytest.fixture(scope="module")
def demo_html(demo_run) -> str:
    return demo_run.report.read_text(encoding="utf-8")


def _kv(page: str, table_id: str) -> dict[str, str]:
    m = re.search(rf'<table class="kv" id="{table_id}">(.*?)</table>', page, re.S)
    assert m, table_id
    rows = re.findall(r"<th[^>]*>(.*?)</th>\s*<td>(.*?)</td>", m.group(1), re.S)
    return {html_lib.unescape(k.strip()): html_lib.unescape(re.sub(r"<[^>]+>", "", v)).strip()
            for k, v in rows}


def test_reference_standard_is_stated_once_and_the_same_everywhere(demo_run, demo_html):
    ref = _kv(demo_html, "reference-standard-table")["Reference standard used by this audit"]
    readers = _kv(demo_html, "readers-table")["Reference standard used by this audit"]
    assert ref == readers
    # the demo audits against the generator's masks; its three readers are compared, not used
    assert ref.startswith("The manifest's label mask") and "3 readers" in ref
    assert "not the reference" in ref
    annotators = _kv(demo_html, "reference-standard-table")[
        "Annotators (number, profession, experience)"]
    assert "not the reference" in annotators and "Three simulated readers" in annotators


def test_empty_reference_scans_make_no_distance_or_overlap_finding(demo_run, demo_html):
    sub = demo_run.result.subgroups
    empty = sub[(sub["stratum"] == "lesion_size") & (sub["group"] == "empty")]
    assert len(empty)
    for metric in ("hd95", "assd", "dice", "nsd", "recall"):
        flag = empty.loc[empty["metric"] == metric, "flag"]
        assert flag.isin(["not tested", "insufficient data"]).all(), (metric, list(flag))
    text = _visible_text(demo_html)
    assert not re.search(r"lesion_size = empty is worse", text)


def test_every_promised_criterion_exists(demo_run, demo_html):
    names = set(demo_run.result.criteria_definitions["criterion"])
    text = _visible_text(demo_html)
    promised = re.findall(r"false-positive criterion '([^']+)'", text)
    assert promised, "the default criteria judge empty-reference scans and say by which"
    assert set(promised) <= names
    assert any(c["kind"] == "false_positive" for c in demo_run.result.settings["criteria"])
    assert "false-positive criteria judge them" not in text


def test_metrics_shown_with_display_names_and_units(demo_run, demo_html):
    p = parse(demo_html)
    metrics = demo_run.result.settings["metrics"]
    shown = {r["metric"][0] for r in records(p.tables["overall-results"])}
    assert shown == {metric_label(m) for m in metrics}
    assert "HD95 (mm)" in shown and "Absolute volume difference (mm³)" in shown
    for key, table in p.tables.items():
        if key.startswith("subgroup-table-"):
            assert {r["metric"][0] for r in records(table)} <= shown
    text = _visible_text(demo_html)
    for raw in RAW_NAMES:
        assert raw not in text, raw


def test_interval_methods_and_sample_size_are_stated(demo_run, demo_html):
    plan = _kv(demo_html, "settings-table")["Confidence intervals"]
    assert "betting confidence interval for a bounded mean" in plan
    assert "studentized (bootstrap-t)" in plan and "Clopper-Pearson" in plan
    crit = demo_run.result.criteria
    rows = crit[crit["n_needed"].notna() | crit["pass_needs_mean"].notna()]
    assert len(rows)
    for r in rows.to_dict("records"):
        if r["statistic"] == "ci_low":  # passes iff the mean clears threshold + (mean - bound)
            assert r["pass_needs_mean"] >= r["threshold"]
    assert "criteria-sample-size" in parse(demo_html).tables


def test_traceability_table_maps_every_item(demo_html):
    from medseg_xai.reports.sec_traceability import ITEMS

    rows = re.findall(r'<table class="data" id="traceability-table">(.*?)</table>', demo_html, re.S)
    assert rows
    cells = re.findall(r"<tr[^>]*><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>",
                       rows[0])
    assert len(cells) == len(ITEMS)
    sections = set(re.findall(r"<h2>(\d+)\. ", demo_html))
    for _, _, _, where in cells:
        where = html_lib.unescape(where)
        assert where.startswith("not provided: ") or where.lstrip("§").split()[0] in sections


@pytest.mark.slow
def test_demo_pdf_is_compact_and_its_footer_identifies_it(demo_run, tmp_path):
    from conftest import require_browser

    require_browser()
    pypdf = pytest.importorskip("pypdf")
    from medseg_xai.reports import write_pdf

    pdf = write_pdf(demo_run.report, tmp_path / "report.pdf")
    pages = pypdf.PdfReader(str(pdf)).pages
    assert len(pages) <= 20
    result = demo_run.result
    for page in (pages[0], pages[-1]):
        text = " ".join(page.extract_text().split())
        assert f"audit {result.audit_id}" in text
        assert str(result.report["model_name"]) in text


@pytest.mark.slow
def test_audit_command_applies_the_default_criteria_and_says_so(demo_run, tmp_path, capsys):
    import json

    from medseg_xai.audit.criteria import DEFAULT_CRITERIA
    from medseg_xai.cli import main

    out = tmp_path / "out"
    code = main(["audit", str(demo_run.manifest), "--out", str(out), "--strata", "device",
                 "--workers", "1", "--no-html", "--n-resamples", "50", "--quiet"])
    assert code in (0, 3)
    assert "criteria: the default acceptance criteria" in capsys.readouterr().out
    doc = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    assert doc["verdict"] != "NO CRITERIA"
    names = {c["name"] for c in doc["settings"]["criteria"]}
    assert names == {c["name"] for c in DEFAULT_CRITERIA}


def test_gallery_budget_sentence_agrees_with_the_explained_cards(demo_run, demo_html):
    # the demo explains 2 picked lesions plus the largest missed one (asked for): the sentence
    # on an unexplained card must give the count the cards show, not only the budget
    text = " ".join(_visible_text(demo_html).split())
    said = {int(n) for n in re.findall(
        r"the gallery's budget of \d+ explanations is spent; it explains (\d+) lesions?", text)}
    assert said, "no gallery card was left unexplained by the budget"
    shown = len(re.findall(r'<table class="kv" id="analysis-', demo_html))
    held = sum(e.get("analysis") is not None for e in demo_run.result.explanations)
    assert said == {shown} == {held}
    asked = re.search(r"it explains \d+ lesions?, (\d+) of them asked for", text)
    n_asked = sum(e.get("analysis") is not None and e.get("category") == "requested"
                  for e in demo_run.result.explanations)
    assert (int(asked.group(1)) if asked else 0) >= n_asked
    assert "explains at most" not in text
