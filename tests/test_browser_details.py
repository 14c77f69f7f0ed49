"""Issue #10 item 8 where it shows only in a browser: rendering and the pages' scripts, in real headless Chromium.

One `sooner web` process on a site made by `sooner init`; the test changes the
database directly (a run the test itself claims, starts and ends through the
run service) and the live hub pushes the changes to the page. No worker.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from conftest import require_chromium
from sooner.config import load_settings
from sooner.model import ManualTrigger, RunStatus
from sooner.runs.service import RunService
from sooner.site import init_site
from sooner.store import open_store
from sooner.webapp.testing import WebServer, launch_chromium, sign_in
from sooner.worker.testing import deploy_files

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ADMIN, PASSWORD = "admin", "browser-details-password"
LAPTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
AUTHOR = "Ada Lovelace-Byron <ada.lovelace-byron@analytical-engines.example.org>"


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    require_chromium()
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("browser-details")
    settings = init_site(root / "site")
    config = root / "site" / "config.json"
    store = open_store(settings)
    store.users.add(ADMIN, PASSWORD, admin=True)
    deploy_files(store, {"quiet.sh": "#!/bin/sh\n"})
    web = WebServer(config, root / "web.log").wait_ready()
    playwright = sync_playwright().start()
    browser = launch_chromium(playwright)
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.set_default_timeout(15_000)
    sign_in(page, web.base_url, ADMIN, PASSWORD)
    yield type("UI", (), {"page": page, "base": web.base_url, "store": store})
    context.close()
    browser.close()
    playwright.stop()
    web.stop()
    store.close()
    from sooner.store.embedded import EmbeddedServer

    EmbeddedServer(load_settings(config, environ={}).state_dir).stop()


def at_width(page, viewport: dict):
    page.set_viewport_size(viewport)


def test_the_live_badge_goes_and_the_progress_track_comes_as_the_run_changes(ui):
    # given a running run that has not reported progress
    service = RunService(ui.store)
    run = service.queue("quiet.sh", ManualTrigger(author=ADMIN))
    assert service.take(run.id, "elsewhere", lease_s=600) is not None
    ui.store.runs.mark_started(run.id, pid=1, commit=None)
    page = ui.page
    page.goto(f"{ui.base}/runs/{run.id}")
    page.wait_for_selector("#live[data-state=live]")
    assert page.is_visible("#live") and not page.is_visible("#run-progress")
    # when it reports progress, the track appears; when it ends, the LIVE badge goes
    ui.store.runs.set_progress(run.id, 2, 4)
    page.wait_for_selector("#run-progress", state="visible")
    assert "2 / 4 (50%)" in page.text_content("#run-progress")
    service.finish(run.id, RunStatus.SUCCEEDED, exit_code=0)
    page.wait_for_selector("#run-status .st-succeeded")
    page.wait_for_selector("#live", state="hidden")


FITS = """() => {
  const input = document.querySelector('#hooks');
  const style = getComputedStyle(input);
  const ctx = document.createElement('canvas').getContext('2d');
  ctx.font = style.font;
  const inner = input.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  return [ctx.measureText(input.placeholder).width, inner];
}"""


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_the_hooks_placeholder_fits_its_field(ui, viewport):
    page = ui.page
    at_width(page, viewport)
    try:
        page.goto(f"{ui.base}/jobs/quiet.sh")
        text, room = page.evaluate(FITS)
        assert text <= room, f"the placeholder needs {text:.0f}px, the field has {room:.0f}px"
        assert page.is_visible("#hooks-hint")
    finally:
        at_width(page, LAPTOP)


BOXES = """() => {
  const card = (title) => [...document.querySelectorAll('section.card h2')].find(
      (h) => h.textContent.trim() === title).closest('section.card');
  const line = document.querySelector('#deploy .deploy-line');
  const author = line.querySelector('.author');
  return {upcoming: card('Upcoming').getBoundingClientRect().toJSON(),
          deploy: card('Last deploy').getBoundingClientRect().toJSON(),
          lineHeight: line.getBoundingClientRect().height, fontSize: parseFloat(getComputedStyle(line).fontSize),
          authorLines: author.getClientRects().length, lineRight: line.getBoundingClientRect().right,
          cardRight: card('Last deploy').getBoundingClientRect().right, title: author.title};
}"""


@pytest.mark.parametrize("viewport", [LAPTOP, PHONE], ids=["laptop", "phone"])
def test_upcoming_and_the_last_deploy_are_apart_and_a_long_author_stays_on_one_line(ui, viewport):
    page = ui.page
    at_width(page, viewport)
    try:
        ui.store.deploys.record(commit="d" * 40, tree="t" * 40, branch="main", author=AUTHOR, message="first",
                                created=[], updated=[], removed=[], restored=[])
        page.goto(ui.base + "/")
        page.wait_for_selector("#live[data-state=live]")
        # a deploy the live snapshot brings: the line dashboard.js draws is measured too
        message = f"second at {viewport['width']}"
        ui.store.deploys.record(commit="e" * 40, tree="t" * 40, branch="main", author=AUTHOR, message=message,
                                created=[], updated=[], removed=[], restored=[])
        page.wait_for_selector(f"#deploy >> text={message}")
        boxes = page.evaluate(BOXES)
        upcoming, deploy = boxes["upcoming"], boxes["deploy"]
        assert boxes["authorLines"] == 1 and boxes["lineHeight"] < 2 * boxes["fontSize"], boxes
        assert boxes["lineRight"] <= boxes["cardRight"] and boxes["title"] == AUTHOR
        assert upcoming["bottom"] <= deploy["top"] or upcoming["right"] <= deploy["left"], boxes
    finally:
        at_width(page, LAPTOP)


def test_searching_a_queue_sends_no_empty_filter_row(ui):
    queue = ui.store.queues("pages")
    for n in range(3):
        queue.put({"url": f"https://example.com/{n}"})
    page = ui.page
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if request.is_navigation_request() else None)
    # given a page filtered on one field: one row, no blank one to remove by hand
    page.goto(f"{ui.base}/queues/pages?f=data.url&op=contains&v=example")
    assert page.locator("#q-rows .q-row").count() == 1
    # when a search is added and applied
    page.fill("input[name=q]", "example.com/1")
    page.click("#q-filters button[type=submit]")
    page.wait_for_url("**q=example.com*")
    # then the address carries the one filter and the search, and no empty row was sent
    pairs = parse_qsl(urlsplit(page.url).query, keep_blank_values=True)
    assert sorted(pairs) == [("f", "data.url"), ("op", "contains"), ("q", "example.com/1"), ("v", "example")]
    assert not [url for url in sent if "f=&" in url + "&"], sent
    assert page.locator("#q-table tbody tr").count() == 1
