"""The report in a real browser: Debian's headless Chromium, driven by Playwright (which never
downloads a browser of its own here). No console errors (a CSP violation is one), filters, a click
through to a page, keyboard navigation, the overlay toggled, a box linked to its text.

Skipped, saying why, where Chromium or Playwright is absent. DSOCR_SCREENSHOTS=DIR keeps a
screenshot of the index and of a page view in DIR (docs/ holds the ones from the last run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_report import replay_run

CHROMIUM = os.environ.get("DSOCR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
)


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def watched_page(browser):
    """A page that records console errors and uncaught exceptions."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def screenshot(page, name: str) -> None:
    folder = os.environ.get("DSOCR_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / name))


def test_index_filters_and_page_view(browser, tmp_path):
    from playwright.sync_api import expect

    out, summary = replay_run(tmp_path)
    page, errors = watched_page(browser)
    page.goto((out / "report.html").as_uri())
    assert page.locator("#shown").inner_text() == f"{len(summary['items'])} inputs"  # the script ran
    page.get_by_role("button", name="Failed documents").click()
    assert page.locator("tbody tr:visible").count() == summary["documents"]["failed"]
    page.get_by_role("button", name="Pages that looped").click()
    assert page.locator("tbody tr:visible td.doc").all_inner_texts() == ["in/doc.pdf"]
    page.get_by_role("button", name="All").click()
    page.locator("th", has_text="Tokens").click()
    tokens = [int(t) for t in page.locator("tbody tr td:nth-child(6)").all_inner_texts()]
    assert tokens == sorted(tokens)
    screenshot(page, "report-index.png")

    page.get_by_role("link", name="doc.pdf").click()
    page.wait_for_load_state("load")
    first = page.locator("section#p1")
    assert first.is_visible() and page.locator("section#p2").is_hidden()
    assert first.locator("img.page-image").evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
    overlay = first.locator("svg.overlay")
    assert overlay.is_visible()
    first.locator("rect[data-label=text]").hover()
    assert "hot" in first.locator(".block[data-label=text]").get_attribute("class")
    assert first.locator(".hover-label").inner_text() == "text"
    first.locator(".block[data-label=title]").hover()
    assert "hot" in first.locator("rect[data-label=title]").get_attribute("class")
    page.locator("#overlay-toggle").click()
    assert overlay.is_hidden()
    first.locator("h2").click()  # keys typed into the checkbox are its own
    page.keyboard.press("o")
    assert overlay.is_visible()
    page.keyboard.press("r")
    assert first.locator("details.raw pre").is_visible()
    page.keyboard.press("r")
    screenshot(page, "report-page.png")
    page.keyboard.press("ArrowRight")
    expect(page.locator("section#p2")).to_be_visible()  # waits for the page switch the key started
    expect(first).to_be_hidden()
    assert page.url.endswith("#p2")
    assert "finish: repetition" in page.locator("section#p2 .facts").inner_text()
    page.locator("#next").click()
    expect(page.locator("section#p3")).to_be_visible()
    assert page.url.endswith("#p3")
    page.locator("#to-index").click()
    page.wait_for_load_state("load")
    assert page.url.endswith("/report.html")
    assert errors == []
