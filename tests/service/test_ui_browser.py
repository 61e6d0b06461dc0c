"""The browser pages (/ and /review) in Debian's Chromium, against a real embedded-mode service.

One service (uvicorn API + Celery worker subprocesses over SQLite, tiny winner)
and one Chromium serve the whole module, to stay within a few minutes on two
slow cores; each test gets a fresh browser context. Every test fails on a
console error, an uncaught page error, a failed request or a CSP violation,
except the HTTP error statuses the test itself provokes.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS
from tests.service_support import API_KEY, Stack, running_stack

pytestmark = [pytest.mark.browser, pytest.mark.services]

JOB_TIMEOUT_MS = 150_000  # upload -> done on a busy machine; the tiny model itself takes < 1 s
# Runs before the page's own scripts (Playwright injects it; CSP does not apply to it), so a CSP
# violation becomes a console error like any other.
REPORT_CSP = """
document.addEventListener("securitypolicyviolation", (e) =>
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI}`));
"""


@pytest.fixture(scope="module")
def ui_stack(tiny_winner: Path, artifacts_dir: Path) -> Iterator[Stack]:
    """This module's own service, so the review queue holds only what these tests uploaded."""
    logs = artifacts_dir / "service-logs" / "ui"
    shutil.rmtree(logs, ignore_errors=True)
    # File names are shown to reviewers only when kept (off by default: README, privacy).
    env = {"MODEL_PATH": str(tiny_winner), "STORE_CLIENT_FILENAMES": "true"}
    with running_stack("pneumoscope-ui-", env, logs) as stack:
        yield stack


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.skip(f"LOUD SKIP: no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    """A page plus everything it complained about."""

    page: Any
    problems: list[str] = field(default_factory=list)

    def assert_clean(self, *allowed: str) -> None:
        """No problems except those matching one of the ``allowed`` regexes (provoked ones)."""
        left = [m for m in self.problems if not any(re.search(a, m) for a in allowed)]
        assert left == [], left


@pytest.fixture
def tab(chromium: Any) -> Iterator[Tab]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    context.add_init_script(REPORT_CSP)
    page = context.new_page()
    page.set_default_timeout(30_000)
    # Turn on file-chooser interception now, not at the first expect_file_chooser (a race).
    page.on("filechooser", lambda _: None)
    t = Tab(page)
    page.on(
        "console", lambda m: t.problems.append(f"console: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: t.problems.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: t.problems.append(f"request failed: {r.url} {r.failure}"))
    try:
        yield t
    finally:
        context.close()


def _img_loaded(page: Any, selector: str, timeout: float = 30_000) -> None:
    page.wait_for_function(
        "(sel) => { const i = document.querySelector(sel);"
        " return !!i && i.complete && i.naturalWidth > 0; }",
        arg=selector,
        timeout=timeout,
    )


def test_upload_chest_xray_shows_answer_and_heatmap(
    tab: Tab, ui_stack: Stack, full_res_jpegs: list[Path], artifacts_dir: Path
) -> None:
    page = tab.page
    resp = page.goto(ui_stack.base + "/")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp
    assert "unsafe-inline" not in csp
    # Keyboard only: the drop zone is a button that opens the file picker.
    page.locator("#drop").focus()
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(str(full_res_jpegs[0]))

    page.locator("#result").wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    _img_loaded(page, "#result-heatmap")
    _img_loaded(page, "#result .base-img")  # the user's own file, from a blob: URL
    assert page.locator("#upload-progress").evaluate("p => p.value") == 100
    assert page.locator("#result-label").inner_text() in ("NORMAL", "PNEUMONIA")
    assert page.locator("#model-name").inner_text() == "tiny-test"
    assert page.locator("#model-version").inner_text() == "tiny0001"
    assert page.locator("#status").inner_text().startswith("Done:")
    assert page.locator("#result .bar-threshold").inner_text() == "threshold 50.0%"
    assert page.get_by_text("Not for clinical use.").first.is_visible()

    heat = page.locator("#result-heatmap")
    page.locator("#result-opacity").fill("40")
    assert heat.evaluate("i => i.style.opacity") == "0.4"
    assert page.locator("#result-opacity-out").inner_text() == "40%"
    page.get_by_label("Show heatmap").uncheck()
    assert heat.evaluate("i => i.style.opacity") == "0"
    page.get_by_label("Show heatmap").check()
    page.locator("#result-opacity").fill("100")
    page.screenshot(path=str(artifacts_dir / "ui_upload_result.png"), full_page=True)
    tab.assert_clean()


def test_photo_is_rejected_as_not_xray_with_its_checks(
    tab: Tab, ui_stack: Stack, samples_dir: Path, artifacts_dir: Path
) -> None:
    page = tab.page
    page.goto(ui_stack.base + "/")
    data = (samples_dir / "natural" / "coffee.png").read_bytes()
    # Drag and drop: a real DataTransfer holding the file, dropped on the zone.
    page.evaluate(
        """([b64, name]) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const dt = new DataTransfer();
          dt.items.add(new File([bytes], name, { type: "image/png" }));
          const zone = document.getElementById("drop");
          for (const type of ["dragenter", "dragover", "drop"]) {
            const init = { dataTransfer: dt, bubbles: true, cancelable: true };
            zone.dispatchEvent(new DragEvent(type, init));
          }
        }""",
        [base64.b64encode(data).decode(), "coffee.png"],
    )
    page.locator("#rejection").wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    assert page.locator("#rejection-title").inner_text() == "not an X-ray"
    assert "does not look like an X-ray" in page.locator("#rejection-sentence").inner_text()
    assert "not an X-ray" in page.locator("#rejection-message").inner_text()  # the API's words
    table = page.locator("#rejection-checks table.checks")
    assert table.locator("thead th").all_inner_texts() == ["Check", "Value", "Threshold", "Result"]
    assert table.locator("tbody tr.fail").count() >= 1
    assert table.locator("tbody tr.pass").count() >= 1
    assert page.locator("#result").is_hidden()
    _img_loaded(page, "#rejection-thumb")
    page.screenshot(path=str(artifacts_dir / "ui_upload_not_xray.png"), full_page=True)
    tab.assert_clean()


def test_non_image_shows_the_error(tab: Tab, ui_stack: Stack, artifacts_dir: Path) -> None:
    page = tab.page
    page.goto(ui_stack.base + "/")
    page.set_input_files(
        "#file",
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an x-ray\n" * 50}],
    )
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=60_000)
    text = error.inner_text()
    assert "The file was refused" in text
    assert "not an image this service can read" in text and "HTTP 415" in text
    assert "Stopped" in page.locator("#status").inner_text()
    assert page.locator("#result").is_hidden() and page.locator("#rejection").is_hidden()
    page.screenshot(path=str(artifacts_dir / "ui_upload_error.png"), full_page=True)
    tab.assert_clean(r"status of 415")  # Chromium logs the refused upload itself


def test_dicom_result_shows_the_heatmap_image_alone(
    tab: Tab, ui_stack: Stack, samples_dir: Path, artifacts_dir: Path
) -> None:
    """The browser cannot draw a DICOM: no plain preview, the overlay PNG carries the X-ray."""
    page = tab.page
    page.goto(ui_stack.base + "/")
    page.set_input_files("#file", str(samples_dir / "dicom" / "chest_DX_nih_nofinding.dcm"))
    page.locator("#result").wait_for(state="visible", timeout=JOB_TIMEOUT_MS)
    _img_loaded(page, "#result-heatmap")
    assert page.locator("#result .base-img").count() == 0
    assert page.locator("#result-opacity").count() == 0
    assert "plain preview is not available" in page.locator("#result .viewer-controls").inner_text()
    page.screenshot(path=str(artifacts_dir / "ui_upload_dicom.png"), full_page=True)
    tab.assert_clean()


def test_review_labels_by_key_and_click_and_feeds_export(
    tab: Tab,
    ui_stack: Stack,
    full_res_jpegs: list[Path],
    artifacts_dir: Path,
    tmp_path: Path,
) -> None:
    files = {"PNEUMONIA": full_res_jpegs[1].read_bytes(), "NORMAL": full_res_jpegs[2].read_bytes()}
    ids: dict[str, str] = {}
    for label, data in files.items():
        r = ui_stack.upload(data, name=f"review-{label.lower()}.jpeg")
        assert r.status_code == 202, r.text
        body = ui_stack.wait_status(r.json()["id"], ("done", "rejected", "failed"))
        assert body["status"] == "done", body
        ids[label] = body["upload_id"]
    before = ui_stack.client.get("/v1/uploads/stats", headers={"X-API-Key": API_KEY}).json()

    page = tab.page
    page.goto(ui_stack.base + "/review")
    # A wrong key: a clear error, nothing stored, no queue.
    page.get_by_label("Reviewer API key").fill("not-the-key")
    page.get_by_role("button", name="Use key").click()
    page.locator("#error").wait_for(state="visible")
    assert "Wrong API key" in page.locator("#error").inner_text()
    assert "refused this API key" in page.locator("#error").inner_text()
    assert page.locator("#queue-card").is_hidden()
    assert page.evaluate("() => sessionStorage.length") == 0
    page.screenshot(path=str(artifacts_dir / "ui_review_wrong_key.png"))

    page.get_by_label("Reviewer API key").fill(API_KEY)
    page.get_by_role("button", name="Use key").click()
    page.locator("#queue-card").wait_for(state="visible")
    assert page.locator("#error").is_hidden()
    assert page.locator("#ready-count").inner_text() == str(before["reviewed"])
    assert page.get_by_text("N", exact=True).first.is_visible()  # the keys are documented
    item = {k: page.locator(f"li.item[data-upload-id='{v}']") for k, v in ids.items()}
    for loc in item.values():
        assert loc.count() == 1
    # Newest first: the NORMAL one was uploaded last.
    order = page.locator("li.item").evaluate_all("els => els.map(e => e.dataset.uploadId)")
    assert order.index(ids["NORMAL"]) < order.index(ids["PNEUMONIA"])
    for k in ids:
        _img_loaded(page, f"li.item[data-upload-id='{ids[k]}'] .heat-img")
        _img_loaded(page, f"li.item[data-upload-id='{ids[k]}'] .base-img")
    page.screenshot(path=str(artifacts_dir / "ui_review.png"), full_page=True)

    item["PNEUMONIA"].focus()
    page.keyboard.press("p")  # a key press on the focused upload
    item["PNEUMONIA"].wait_for(state="detached")
    item["NORMAL"].get_by_role("button", name="NORMAL").click()  # a click
    item["NORMAL"].wait_for(state="detached")
    page.wait_for_function(
        "(n) => document.getElementById('ready-count').textContent === String(n)",
        arg=before["reviewed"] + 2,
    )
    assert "Labelled review-normal.jpeg as NORMAL" in page.locator("#queue-status").inner_text()
    page.screenshot(path=str(artifacts_dir / "ui_review_after.png"), full_page=True)

    # The key lives in sessionStorage: a reload keeps the reviewer signed in, the queue stays
    # without the labelled uploads.
    # Every remaining upload's picture loads (a DICOM's preview too); only then reload, which
    # would abort previews still in flight.
    for li in page.locator("li.item").all():
        li.scroll_into_view_if_needed()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.item-media')]"
        ".every((m) => m.dataset.state === 'loaded')"
    )
    assert page.locator(".item-media .warn-text").count() == 0  # no preview failed
    page.reload()
    page.locator("#queue-card").wait_for(state="visible")
    page.locator("#queue-status").get_by_text("to label").wait_for()
    for v in ids.values():
        assert page.locator(f"li.item[data-upload-id='{v}']").count() == 0
    tab.assert_clean(r"status of 403")  # the wrong key, provoked above

    from service.feedback import main as export_feedback

    data_dir = Path(ui_stack.env["DATA_DIR"])
    out = tmp_path / "feedback"
    assert (
        export_feedback(
            [
                "--database-url",
                f"sqlite:///{data_dir / 'service.db'}",
                "--storage-dir",
                str(data_dir / "storage"),
                "--out",
                str(out),
            ]
        )  # fmt: skip
        == 0
    )
    from study.serving import sniff_format, strip_metadata

    for label, data in files.items():  # named by the stored (metadata-free) bytes' hash
        sha = hashlib.sha256(strip_metadata(data, sniff_format(data) or "")).hexdigest()
        assert (out / "train" / label / f"{sha}.png").is_file(), sorted(out.rglob("*"))
    for log in ui_stack.log_dir.glob("*.log"):
        assert API_KEY not in log.read_text(errors="replace"), f"API key in {log.name}"
