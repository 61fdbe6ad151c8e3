"""The report in a real browser: Chromium through Playwright, offline.

Skipped where Playwright or Debian's ``/usr/bin/chromium`` is missing (``pip install -e ".[dev]"`` brings
Playwright; ``apt-get install chromium`` the browser; Playwright's own browser download is not used).
The report is built from the small real run of ``test_report`` (two samples, three presets, an occlusion
reference and a hand-written faithfulness summary).
"""

from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from stages.report.build import build_report

CHROMIUM = Path("/usr/bin/chromium")
#: Viewport widths of the screenshots: a desktop and a phone.
WIDTHS = (1400, 390)

pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)

from test_report import run_dir  # noqa: E402,F401  (the module-scoped toy run, built once here)


@pytest.fixture(scope="module")
def page_results(run_dir, tmp_path_factory):  # noqa: F811
    from playwright.sync_api import sync_playwright

    report = build_report(run_dir, tmp_path_factory.mktemp("browser") / "report")
    shots = report.parent / "screenshots"
    shots.mkdir()
    results = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        for width in WIDTHS:
            page = browser.new_page(viewport={"width": width, "height": 900})
            errors, requests = [], []
            page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.on("request", lambda r, requests=requests: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            results[width] = {
                "errors": errors,
                "requests": requests,
                "images": page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt])"),
                "links": page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"),
                "overflow": page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth"),
                "shot": shots / f"report-{width}.png",
            }
            page.screenshot(path=str(results[width]["shot"]), full_page=True)
            if width == WIDTHS[0]:
                results["sorted"] = _sort_by_f3(page)
            page.close()
        browser.close()
    return report, results


def _sort_by_f3(page) -> list[list[float]]:
    """F3 column of the plausibility table, top to bottom, before and after one and two clicks on its header."""
    table = "table.metrics.sortable >> nth=0"
    col = page.eval_on_selector(table, "t => Array.from(t.tHead.rows[0].cells).findIndex(c => c.textContent.startsWith('F3'))")
    order = f"t => Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[{col}].getAttribute('data-v')))"
    orders = [page.eval_on_selector(table, order)]
    for _ in range(2):
        page.locator(table).locator("thead th", has_text="F3").locator("button").click()
        orders.append(page.eval_on_selector(table, order))
    return orders


def test_no_console_errors_and_nothing_fetched_from_outside(page_results):
    _, results = page_results
    for width in WIDTHS:
        assert results[width]["errors"] == []
        assert all(url.startswith(("file://", "data:")) for url in results[width]["requests"])


def test_every_image_loads(page_results):
    _, results = page_results
    images = results[WIDTHS[0]]["images"]
    assert len(images) > 10
    assert all(complete and width > 0 for complete, width, _ in images)
    assert all(alt for _, _, alt in images)


def test_every_link_resolves(page_results):
    report, results = page_results
    links = results[WIDTHS[0]]["links"]
    page = report.read_text()
    assert any(h.startswith("overlays/") for h in links) and any(h.startswith("#s-") for h in links)
    for href in links:
        if href.startswith("#"):
            assert f"id='{href[1:]}'" in page
        else:
            target = report.parent / unquote(urlparse(href).path)
            assert target.is_file(), href


def test_no_horizontal_overflow_and_screenshots_taken(page_results):
    from PIL import Image

    _, results = page_results
    for width in WIDTHS:
        assert results[width]["overflow"] <= 0
        with Image.open(results[width]["shot"]) as im:
            assert im.width == width and im.height > 900  # the full page, at the viewport's width


def test_metrics_table_sorts_on_click(page_results):
    _, results = page_results
    before, ascending, descending = results["sorted"]
    assert len(before) == 4 and len(set(before)) > 1  # gradcam, two ablations, occlusion
    assert ascending == sorted(before) and descending == sorted(before, reverse=True)
