"""The report in headless Chromium: nothing fetched beyond file://, no console errors, content shown."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from medseg_xai.reports import write_html  # noqa: E402
from medseg_xai.reports.sample import synthetic_result  # noqa: E402

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def _require_browser() -> None:
    required = os.environ.get("MEDSEG_XAI_REQUIRE_BROWSER") == "1"
    if not Path(CHROMIUM).exists():
        msg = f"{CHROMIUM} is missing (install Debian's chromium; never `playwright install`)"
        if required:
            pytest.fail(f"MEDSEG_XAI_REQUIRE_BROWSER=1 but {msg}")
        pytest.skip(msg)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:  # pragma: no cover - playwright is a dev dependency
        if required:
            pytest.fail(f"MEDSEG_XAI_REQUIRE_BROWSER=1 but playwright is not importable: {err}")
        pytest.skip(f"playwright is not importable: {err}")


def test_report_opens_offline_without_errors(tmp_path):
    _require_browser()
    from playwright.sync_api import sync_playwright

    result = synthetic_result(60, seed=5, n_failed=2)
    report = write_html(
        result, tmp_path / "report.html", config={"model_name": "<script>x</script>"}
    )
    requests: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri(), wait_until="load")
            n_tables = page.locator("table[id^='subgroup-table-']").count()
            n_rows = page.locator("table[id^='subgroup-table-'] tbody tr").count()
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])"
            )
            failed_rows = page.locator("#failed-cases tbody tr").count()
            scripts = page.locator("script").count()
            title = page.locator("#identification-table").inner_text()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=False)
        finally:
            browser.close()
    # Only the report itself was requested: the data-URI images make no request at all.
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == []
    assert errors == []
    assert n_tables == 3
    assert n_rows == len(result.subgroups[result.subgroups["stratum"] != "overall"])
    assert len(images) >= 5 and all(c and w > 0 and h > 0 for c, w, h in images)
    assert failed_rows == 2
    assert scripts == 0 and "<script>x</script>" in title  # shown as text, never run
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000
