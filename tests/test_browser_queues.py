"""The queue browser end to end in real headless Chromium against a real `sooner web` process.

Browse a queue with filters, sort and pages, select rows and run a bulk
action through the confirmation dialog; hostile queue data is shown as text.
Screenshots land in tests/artifacts/. Without Chromium these tests skip
locally and fail when CI is set.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from bson import ObjectId

from conftest import require_chromium, wait_for
from sooner.config import load_settings
from sooner.site import init_site
from sooner.store import open_store
from sooner.webapp.testing import WebServer, launch_chromium, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ADMIN, PASSWORD = "admin", "browser-queue-password"
HOSTILE = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    require_chromium()
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("browser-queues")
    settings = init_site(root / "site")
    store = open_store(settings)
    store.users.add(ADMIN, PASSWORD, admin=True)
    queue = store.queues("pages")
    queue._ensure_indexes()
    queue.collection.insert_many([
        {"_id": ObjectId(), "status": "pending" if i % 2 else "done",
         "data": {"url": f"https://example.com/page/{i}", "size": i, "host": f"h{i % 3}"},
         "createdAt": START + timedelta(minutes=i), "updatedAt": START + timedelta(minutes=i)} for i in range(120)])
    queue.put({"url": HOSTILE, HOSTILE: "key", "size": -1, "nested": {"html": HOSTILE}}, status="done")
    web = WebServer(root / "site" / "config.json", root / "web.log").wait_ready()
    playwright = sync_playwright().start()
    browser = launch_chromium(playwright)
    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    sign_in(page, web.base_url, ADMIN, PASSWORD)
    ARTIFACTS.mkdir(exist_ok=True)
    yield type("Live", (), {"page": page, "base": web.base_url, "store": store, "queue": queue, "dialogs": dialogs})
    browser.close()
    playwright.stop()
    web.stop()
    store.close()
    from sooner.store.embedded import EmbeddedServer

    EmbeddedServer(load_settings(root / "site" / "config.json", environ={}).state_dir).stop()


def sizes(page) -> list[int]:
    """The size column of the table, top to bottom."""
    header = page.locator("#q-table thead th").all_text_contents()
    column = next(n for n, text in enumerate(header) if text.strip().startswith("size")) + 1
    return [int(text) for text in page.locator(f"#q-table tbody td:nth-child({column})").all_text_contents()]


def test_browse_filter_sort_and_page_through_a_queue(live):
    page = live.page
    page.goto(f"{live.base}/queues/")
    page.wait_for_selector("#queues-table .q-chip")  # counts by status filled in by script
    assert "pending" in page.locator("#queues-table").text_content()
    page.screenshot(path=str(ARTIFACTS / "queues.png"), full_page=True)
    page.click("#queues-table a[href$='/queues/pages']")
    page.wait_for_url("**/queues/pages")
    page.select_option("#q-rows .q-row >> nth=0 >> select[name=f]", "data.host")
    page.select_option("#q-rows .q-row >> nth=0 >> select[name=op]", "eq")
    page.fill("#q-rows .q-row >> nth=0 >> input[name=v]", "h1")
    page.click("#q-add-row")
    page.select_option("#q-rows .q-row >> nth=1 >> select[name=f]", "data.size")
    page.select_option("#q-rows .q-row >> nth=1 >> select[name=op]", "gte")
    page.fill("#q-rows .q-row >> nth=1 >> input[name=v]", "10")
    page.click("#q-filters button[type=submit]")
    page.wait_for_selector("#q-matching:text('matching')")
    assert page.locator("#q-matching").text_content() == "37 matching"
    page.click("#q-table thead >> text=size")
    page.wait_for_url("**sort=data.size**")
    page.click(".q-per >> text=20")
    expected = [n for n in range(10, 120) if n % 3 == 1]
    assert sizes(page) == expected[:20]
    page.click("#q-next")
    assert sizes(page) == expected[20:]
    page.click("#q-prev")
    assert sizes(page) == expected[:20]
    page.click("#q-table thead >> text=size")  # reverse
    assert sizes(page)[:3] == [118, 115, 112]
    page.click("nav.chips >> text=pending")
    assert all(n % 2 for n in sizes(page)) and sizes(page)[0] == 115
    page.screenshot(path=str(ARTIFACTS / "queue-filtered.png"), full_page=True)


def test_select_rows_and_requeue_them_after_confirming(live):
    page = live.page
    page.goto(f"{live.base}/queues/pages?status=done&sort=data.size&dir=asc&per=20")
    assert page.locator("#q-apply").is_disabled()
    page.check("#q-table tbody tr >> nth=2 >> input.q-pick")
    page.check("#q-table tbody tr >> nth=3 >> input.q-pick")
    assert page.locator("#q-selected").text_content() == "2 selected"
    page.select_option("#q-bulk select[name=action]", "requeue")
    page.click("#q-apply")
    page.wait_for_selector(".flash:text('Requeued 2 entries')")
    assert live.dialogs[-1].startswith("Requeue") and "2 entries" in live.dialogs[-1]
    assert live.queue.counts()["pending"] == 62
    assert sizes(page)[:3] == [-1, 0, 6]  # 2 and 4 went back to pending; same view after the action
    page.check("#q-all")
    assert page.locator("#q-selected").text_content() == "20 selected"


def test_hostile_queue_data_is_text_in_the_table_and_the_json_view(live):
    page = live.page
    page.goto(f"{live.base}/queues/pages?f=data.size&op=eq&v=-1")
    assert HOSTILE in page.locator("#q-table").text_content()
    page.click("#q-table tbody td.mono a")
    page.wait_for_selector("#q-json")
    assert json.dumps(HOSTILE) in page.locator("#q-json").text_content()
    assert page.evaluate("window.__pwned === undefined")
    assert page.locator("main img, main script").count() == 0
    page.screenshot(path=str(ARTIFACTS / "queue-entry.png"), full_page=True)


def test_the_queue_page_fits_a_phone(live):
    page = live.page
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        page.goto(f"{live.base}/queues/pages")
        wait_for(lambda: page.locator("#q-table").count() == 1, timeout=10)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 392, f"the queue page is {width}px wide on a 390px phone"
        page.screenshot(path=str(ARTIFACTS / "phone-queue.png"), full_page=True)
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})
