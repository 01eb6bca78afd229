"""Shared test settings: a modest hypothesis profile so property tests stay fast on 2 cores,
and the headless Chromium that the browser tests (report, JupyterLab) share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "medseg",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# HYPOTHESIS_PROFILE=thorough for a longer hunt by hand (not in CI).
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "medseg"))

# Debian's Chromium (the Playwright-managed browsers are never downloaded).
CHROMIUM = Path(os.environ.get("MEDSEG_XAI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing_browser_reason() -> str | None:
    if not CHROMIUM.exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium; never `playwright install`)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:  # pragma: no cover - playwright is a dev dependency
        return f"playwright is not importable: {exc}"
    return None


def require_browser() -> None:
    """Skip without Chromium or Playwright, or fail where CI sets MEDSEG_XAI_REQUIRE_BROWSER=1."""
    reason = _missing_browser_reason()
    if reason is None:
        return
    if os.environ.get("MEDSEG_XAI_REQUIRE_BROWSER", "") == "1":
        pytest.fail(f"MEDSEG_XAI_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Chromium (``playwright.sync_api.Browser``) for the tests of one module."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
