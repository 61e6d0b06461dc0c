"""The report in a real browser: images load, no script errors, the leaderboard sorts.

Chromium is the Debian package (PLATFORM.md, Browsers); Playwright drives it
over file://, since the report is one self-contained file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from study.report.page import write_report
from tests.conftest import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _column(page, header: str) -> list[tuple[str, str]]:
    """(trial id, sort key of the cell) per leaderboard row, in display order."""
    return page.evaluate(
        """(header) => {
          const table = document.getElementById("leaderboard-table");
          const heads = Array.from(table.tHead.rows[0].cells).map(c => c.textContent.trim());
          const idx = heads.findIndex(h => h.startsWith(header));
          return Array.from(table.tBodies[0].rows).map(
            r => [r.cells[1].textContent.trim(),
                  r.cells[idx].getAttribute("data-sort") ?? r.cells[idx].textContent.trim()]);
        }""",
        header,
    )


def test_report_in_chromium(tiny_study: Path, artifacts_dir: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.skip(f"LOUD SKIP: no Chromium at {CHROMIUM} (apt-get install chromium)")
    report = tiny_study / "report.html"
    if not report.is_file():
        write_report(tiny_study)
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:80]}"))
            page.goto(report.resolve().as_uri(), wait_until="load")

            n_img, broken = page.evaluate(
                """() => {
                  const imgs = Array.from(document.images);
                  return [imgs.length,
                          imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)];
                }"""
            )
            assert n_img > 5
            assert broken == [], broken

            before = _column(page, "time")
            header = page.locator("#leaderboard-table thead th", has_text="time")
            header.click()
            asc = _column(page, "time")
            header.click()
            desc = _column(page, "time")
            assert sorted(before) == sorted(asc) == sorted(desc), "sorting lost or mixed rows"
            seconds = {t: float(v) for t, v in before}
            assert [seconds[t] for t, _ in asc] == sorted(seconds[t] for t, _ in asc)
            assert [seconds[t] for t, _ in desc] == sorted(
                (seconds[t] for t, _ in desc), reverse=True
            )
            if len(set(seconds.values())) > 1:
                assert asc != desc
            assert header.get_attribute("aria-sort") == "descending"

            page.click("nav.toc a[href='#leaderboard']")
            page.screenshot(path=str(artifacts_dir / "report_leaderboard.png"))
            page.screenshot(path=str(artifacts_dir / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == [], errors
