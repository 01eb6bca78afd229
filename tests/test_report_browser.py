"""The report of a real audit in headless Chromium: nothing fetched beyond file://, no console
errors, every table and figure shown, and the print layout (A4 pages, a page per section)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from medseg_xai.reports import write_html  # noqa: E402

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def test_report_opens_offline_without_errors(real_audit, tmp_path, chromium):
    report = write_html(real_audit, tmp_path / "report.html",
                        config={"model_name": "<script>x</script>"})
    requests: list[str] = []
    errors: list[str] = []
    page = chromium.new_page(viewport={"width": 1366, "height": 900})
    try:
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri(), wait_until="load")
        n_tables = page.locator("table[id^='subgroup-table-']").count()
        n_rows = page.locator("table[id^='subgroup-table-'] tbody tr").count()
        images = page.eval_on_selector_all(
            "img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
        failed_rows = page.locator("#failed-cases tbody tr").count()
        scripts = page.locator("script").count()
        title = page.locator("#identification-table").inner_text()
        verdict = page.locator("#verdict-status").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=False)
        page.emulate_media(media="print")
        pdf = page.pdf(format="A4", print_background=True)
    finally:
        page.close()
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
    assert errors == []
    sub = real_audit.subgroups
    assert n_tables == len(real_audit.strata)
    assert n_rows == len(sub[sub["stratum"] != "overall"])
    assert len(images) >= 8 and all(c and w > 0 and h > 0 for c, w, h in images)
    assert failed_rows == real_audit.n_failed
    assert verdict == real_audit.verdict
    assert scripts == 0 and "<script>x</script>" in title  # shown as text, never run
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
    assert pdf.startswith(b"%PDF-") and pdf.count(b"/Type /Page") > 10
