"""End to end in real headless Chromium: a site made by `sooner init`, scripts pushed with real git,
`sooner web` and `sooner worker` as real processes, Playwright driving /usr/bin/chromium.

Screenshots of the main pages land in tests/artifacts/. Without Chromium these
tests skip locally and fail when CI is set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import SCRIPTS, git, require_chromium, wait_for
from sooner.config import load_settings
from sooner.model import RunStatus
from sooner.site import init_site
from sooner.store import open_store
from sooner.webapp.testing import Process, WebServer, launch_chromium, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ADMIN, PASSWORD = "admin", "browser-test-password"
PUSHED = ("web_progress.sh", "web_sleeper.sh", "web_hostile.sh")


@pytest.fixture(scope="module")
def chromium_ok() -> None:
    require_chromium()


@pytest.fixture(scope="module")
def live(chromium_ok, tmp_path_factory):
    """A site with `sooner web` and a worker running, the scripts pushed with git, and a signed-in page."""
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("browser")
    settings = init_site(root / "site")
    config = root / "site" / "config.json"
    store = open_store(settings)
    store.users.add(ADMIN, PASSWORD, admin=True)
    web = WebServer(config, root / "web.log").wait_ready()
    worker = Process(["worker", "-n", "w1"], config, root / "worker.log")
    clone = root / "clone"
    git("clone", "-q", str(settings.repo_path), str(clone), cwd=root)
    git("checkout", "-q", "-B", "main", cwd=clone)
    for name in PUSHED:
        shutil.copy2(SCRIPTS / name, clone / name)
    git("add", ".", cwd=clone)
    git("commit", "-qm", "Add web test scripts", cwd=clone)
    push = git("push", "origin", "main", cwd=clone)
    wait_for(lambda: store.workers.get("w1"), timeout=30, message="worker w1 to register")
    playwright = sync_playwright().start()
    browser = launch_chromium(playwright)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    sign_in(page, web.base_url, ADMIN, PASSWORD)
    ARTIFACTS.mkdir(exist_ok=True)
    yield type("Live", (), {"page": page, "base": web.base_url, "store": store, "root": root, "push": push,
                            "dialogs": dialogs, "browser": browser, "web": web, "worker": worker})
    context.close()
    browser.close()
    playwright.stop()
    worker.stop(hurry=True)
    web.stop()
    store.close()
    from sooner.store.embedded import EmbeddedServer

    EmbeddedServer(load_settings(config, environ={}).state_dir).stop()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def output_text(page) -> str:
    return page.locator("#output").text_content() or ""


def run_now(live, job: str, data: object = None) -> str:
    page = live.page
    page.goto(f"{live.base}/jobs/{job}")
    if data is not None:
        page.fill("#run-form textarea[name=data]", json.dumps(data))
    page.click("#run-now")
    page.wait_for_url(f"{live.base}/runs/*")
    return page.url.rsplit("/", 1)[1]


def test_pushed_scripts_appear_disabled_and_highlighted(live):
    assert "created job web_progress.sh (disabled)" in live.push.stderr
    page = live.page
    page.goto(live.base + "/jobs")
    for name in PUSHED:
        row = page.locator(f'tr[data-name="{name}"]')
        assert "is-new" in (row.get_attribute("class") or "")
        assert row.locator("button.switch").get_attribute("aria-checked") == "false"
        assert row.locator(".badge.new").is_visible()
    shot(page, "jobs")


def test_toggle_a_job_from_the_list_without_leaving_the_page(live):
    page = live.page
    page.goto(live.base + "/jobs")
    switch = page.locator('tr[data-name="web_hostile.sh"] button.switch')
    switch.click()
    page.wait_for_selector('tr[data-name="web_hostile.sh"] button.switch[aria-checked=true]')
    assert page.url == live.base + "/jobs"
    assert "is-new" not in (page.locator('tr[data-name="web_hostile.sh"]').get_attribute("class") or "")
    assert live.store.jobs.get("web_hostile.sh").enabled is True
    switch.click()
    page.wait_for_selector('tr[data-name="web_hostile.sh"] button.switch[aria-checked=false]')
    assert live.store.jobs.get("web_hostile.sh").enabled is False


def test_enable_and_schedule_a_job_in_the_form_with_a_live_preview(live):
    page = live.page
    page.goto(live.base + "/jobs/web_progress.sh")
    page.fill("#schedule", "61 * * * *")
    page.wait_for_selector("#schedule-preview[data-state=error] .field-error")
    assert "minute field" in page.locator("#schedule-preview").text_content()
    page.fill("#schedule", "*/10 * * * *")
    page.fill("#timezone", "Europe/Berlin")
    # Answers to earlier keystrokes may show first; wait for the one with the Berlin timezone.
    page.wait_for_selector("#schedule-preview[data-state=ok] .fires li:nth-child(5) >> text=/CES?T/")
    assert "Every 10 minutes" in page.locator("#schedule-preview").text_content()
    page.check("#enabled")
    page.click("#save")
    page.wait_for_selector(".flash")
    job = live.store.jobs.get("web_progress.sh")
    assert (job.enabled, job.schedule, job.timezone, job.new) == (True, "*/10 * * * *", "Europe/Berlin", False)
    shot(page, "job")


def test_run_now_streams_output_and_progress_live_and_a_reload_shows_everything_once(live):
    page = live.page
    gate = live.root / "gate"
    run_id = run_now(live, "web_progress.sh", str(gate))
    page.wait_for_selector("#output >> text=line 10 of 20", timeout=30_000)
    page.wait_for_selector('#run-progress progress[value="50"]')  # the progress bar advanced live
    page.wait_for_selector("#live[data-state=live]")
    page.reload()
    page.wait_for_selector("#output >> text=line 10 of 20")
    text = output_text(page)
    assert [text.count(f"line {i} of 20\n") for i in range(1, 11)] == [1] * 10
    assert "line 11 of 20" not in text
    page.wait_for_selector("#live[data-state=live]")
    assert page.locator("#move-form").is_visible()  # a running run can be moved
    gate.touch()  # from here on, every line reaches this page over Socket.IO only
    page.wait_for_selector("#run-status[data-status=succeeded]", timeout=30_000)
    page.wait_for_selector("#move-form", state="hidden")  # a finished run cannot, without a reload
    page.wait_for_selector("#output >> text=done")
    text = output_text(page)
    assert [text.count(f"line {i} of 20\n") for i in range(1, 21)] == [1] * 20
    assert text.index("line 11 of 20") > text.index("line 10 of 20")
    page.wait_for_selector('#run-progress progress[value="100"]')
    assert page.locator("#output .s-stderr").count() >= 1  # "waiting at the gate" went to stderr
    assert page.locator("#output .ansi-fg-2").text_content() == "done"
    assert live.store.output.text(run_id).count("line 20 of 20") == 1
    shot(page, "run")


def test_cancel_a_running_run(live):
    page = live.page
    run_id = run_now(live, "web_sleeper.sh")
    page.wait_for_selector("#output >> text=started", timeout=30_000)
    page.wait_for_selector("#run-status[data-status=running]")
    page.click("#cancel")
    page.wait_for_selector("#run-status[data-status=cancelled]", timeout=30_000)
    assert page.locator("#cancel-form").is_hidden()
    assert live.store.runs.get(run_id).status is RunStatus.CANCELLED


def test_hostile_output_is_shown_as_text_and_never_runs(live):
    page = live.page
    run_now(live, "web_hostile.sh")
    page.wait_for_selector("#run-status[data-status=succeeded]", timeout=30_000)
    page.wait_for_selector("#output >> text=xss-break")
    text = output_text(page)
    assert '<script>alert("xss-stdout")</script>' in text
    assert '<img src=x onerror=alert("xss-img")>' in text
    assert '</script><script>alert("xss-break")</script>' in text
    assert "<b onmouseover=alert(1)>red</b>" in text and "\x1b" not in text
    assert page.locator("#output script, #output img, #output b, #output a").count() == 0
    assert page.locator("#output .ansi-fg-1").text_content() == "<b onmouseover=alert(1)>red</b>"
    page.reload()  # the embedded tail goes through the same renderer
    page.wait_for_selector("#output >> text=xss-break")
    assert page.locator("#output script, #output img").count() == 0
    assert live.dialogs == []
    shot(page, "run-hostile")


def test_main_pages_render_on_laptop_and_phone(live):
    page = live.page
    for path, name in (("/", "dashboard"), ("/workers", "workers"), ("/events", "events"), ("/deploys", "deploys"),
                       ("/runs", "runs"), ("/account", "account")):
        page.goto(live.base + path)
        assert page.locator("h1").count() == 1
        shot(page, name)
    page.goto(live.base + "/")
    page.wait_for_selector("#live[data-state=live]")
    assert "w1" in page.locator("#workers").text_content()
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        for path, name in (("/", "phone-dashboard"), ("/jobs", "phone-jobs"), ("/jobs/web_progress.sh", "phone-job")):
            page.goto(live.base + path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 392, f"{path} is {width}px wide on a 390px phone"
            shot(page, name)
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})
    assert live.dialogs == []
