"""The smaller things a first hour in the web UI tripped over (issue #10, item 8), through Flask's test client.

Each test reads the page or the JSON a browser or script gets. What only shows
when a browser renders the page (lines that wrap, a cut-off placeholder, the
LIVE badge changing while a run ends) is in tests/test_browser_details.py.
"""

from __future__ import annotations

import html
import re

import pytest

from conftest import signed_in
from sooner.model import ManualTrigger, RunStatus
from sooner.runs.service import RunService

JOB = "reports/daily.sh"
NO_SCHEDULE = "No schedule: runs only on demand or by hooks"


@pytest.fixture
def web(mock_web_app, mock_store):
    app, _, _ = mock_web_app
    mock_store.jobs.record_deployed(JOB, commit="c" * 40, blob="b" * 40)
    return app


@pytest.fixture
def admin(web):
    return signed_in(web, "admin", "admin-password")


def make_run(store, status: RunStatus, progress: tuple[int, int] | None = None) -> str:
    """A run brought to ``status`` the way Sooner does it: queued, claimed by w1, started, ended."""
    service = RunService(store)
    run = service.queue(JOB, ManualTrigger(author="admin"))
    if status is not RunStatus.QUEUED:
        service.take(run.id, "w1", lease_s=60)
        store.runs.mark_started(run.id, pid=1, commit=None)
        if progress:
            store.runs.set_progress(run.id, *progress)
        if status is not RunStatus.RUNNING:
            service.finish(run.id, status, exit_code=0)
    return run.id


def element(page: str, element_id: str) -> str:
    """The start tag of the element with ``element_id``."""
    match = re.search(r'<[a-z]+[^>]*\bid="' + re.escape(element_id) + r'"[^>]*>', page)
    assert match, f"no element #{element_id} on the page"
    return match.group(0)


def save_form(client, **fields):
    form = {"csrf_token": client.csrf, "action": "save", "schedule": "", "timezone": "UTC", "worker": "",
            "hooks": "", "timeout_s": "", "overlap": "skip", "missed": "skip", "retry_attempts": "0", **fields}
    return client.post(f"/jobs/{JOB}", data=form)


def preview_box(page: str) -> str:
    return page.split('id="schedule-preview"', 1)[1].split("</div>", 1)[0]


# -- the job page after a bad cron ------------------------------------------------

def test_a_refused_schedule_is_not_shown_next_to_no_schedule(admin):
    response = save_form(admin, schedule="61 * * * *")
    assert response.status_code == 400
    page = html.unescape(response.text)
    assert "minute field" in page
    assert NO_SCHEDULE not in page
    assert page.count("minute field") == 1  # said once, next to the field


def test_the_preview_after_another_fields_error_shows_the_schedule_typed(admin, mock_store):
    mock_store.jobs.update_settings(JOB, {"schedule": "@daily"})
    response = save_form(admin, schedule="30 2 * * *", timezone="Europe/Berlin", timeout_s="soon")
    assert response.status_code == 400
    box = html.unescape(preview_box(response.text))
    assert "02:30:00" in box and ("CET" in box or "CEST" in box)  # the schedule typed, not the saved @daily
    assert NO_SCHEDULE not in box


# -- the run page: LIVE badge and progress track -------------------------------------

def test_the_live_badge_shows_only_while_the_run_is_active(admin, mock_store):
    running = admin.get(f"/runs/{make_run(mock_store, RunStatus.RUNNING)}").text
    finished = admin.get(f"/runs/{make_run(mock_store, RunStatus.SUCCEEDED)}").text
    assert "hidden" not in element(running, "live")
    assert "hidden" in element(finished, "live")


def test_no_progress_track_for_a_run_that_never_reported_progress(admin, mock_store):
    silent = admin.get(f"/runs/{make_run(mock_store, RunStatus.SUCCEEDED)}").text
    reporting = admin.get(f"/runs/{make_run(mock_store, RunStatus.RUNNING, progress=(3, 10))}").text
    assert "hidden" in element(silent, "run-progress")
    assert "hidden" not in element(reporting, "run-progress")
    assert "3 / 10 (30%)" in reporting


def test_the_dashboard_shows_no_progress_track_for_a_running_run_without_progress(admin, mock_store):
    make_run(mock_store, RunStatus.RUNNING)
    page = admin.get("/").text
    running = page.split('id="running"', 1)[1].split("</ul>", 1)[0]
    assert re.search(r'<div class="progress"[^>]*\bhidden', running)


# -- the jobs list and the dashboard -------------------------------------------------

def test_the_jobs_list_shows_each_schedules_timezone(admin, mock_store):
    mock_store.jobs.update_settings(JOB, {"schedule": "30 2 * * *", "timezone": "Europe/Berlin"})
    mock_store.jobs.record_deployed("utc.sh", commit="c" * 40, blob="b" * 40)
    mock_store.jobs.update_settings("utc.sh", {"schedule": "@hourly"})
    page = admin.get("/jobs").text
    rows = {m.group(1): m.group(2) for m in re.finditer(r'<tr [^>]*data-name="([^"]+)">(.*?)</tr>', page, re.S)}
    visible = {name: re.sub(r"<[^>]+>", " ", row) for name, row in rows.items()}  # text, not attributes
    assert "Europe/Berlin" in visible[JOB]
    assert "UTC" in visible["utc.sh"]


def test_the_dashboard_puts_upcoming_and_the_last_deploy_in_cards_of_their_own(admin, mock_store):
    mock_store.deploys.record(commit="d" * 40, tree="t" * 40, branch="main",
                              author="Ada Lovelace-Byron <ada.lovelace-byron@analytical-engines.example.org>",
                              message="add reports", created=[JOB], updated=[], removed=[], restored=[])
    page = admin.get("/").text
    cards = re.findall(r"<section class=\"card[^\"]*\"[^>]*>(.*?)</section>", page, re.S)
    upcoming = [c for c in cards if "<h2>Upcoming</h2>" in c]
    deploy = [c for c in cards if "<h2>Last deploy</h2>" in c]
    assert len(upcoming) == len(deploy) == 1 and upcoming != deploy
    # the author's name is shown, the whole author line (with the e-mail) is its title
    assert re.search(r'<span class="author" title="Ada Lovelace-Byron &lt;ada.lovelace-byron@analytical-engines'
                     r'.example.org&gt;">Ada Lovelace-Byron</span>', deploy[0])


# -- queues --------------------------------------------------------------------------

def test_a_small_queue_shows_its_exact_size(admin, mock_store):
    queue = mock_store.queues("pages")
    for n in range(30):
        queue.put({"n": n})
    listing = html.unescape(admin.get("/queues/").text)
    table = html.unescape(admin.get("/queues/pages").text)
    assert "≈" not in listing and re.search(r">\s*30\s*<", listing)
    assert "≈" not in table and "30 entries" in table


def test_a_big_queue_still_shows_an_estimate(admin, mock_store, monkeypatch):
    queue = mock_store.queues("big")
    queue.put({"n": 1})
    monkeypatch.setattr(type(queue), "estimated_count", lambda self, max_age_s=0: 2_000_000)
    table = html.unescape(admin.get("/queues/big").text)
    assert "≈ 2,000,000 entries" in table


def test_a_search_with_an_unused_filter_row_goes_to_the_clean_address(admin, mock_store):
    mock_store.queues("pages").put({"url": "https://example.com"})
    response = admin.get("/queues/pages?q=example&f=&op=eq&v=")
    assert response.status_code == 302 and response.headers["Location"] == "/queues/pages?q=example"
    kept = admin.get("/queues/pages?f=data.url&op=contains&v=example&f=&op=eq&v=")
    assert kept.status_code == 302 and "f=&" not in kept.headers["Location"] + "&"
    assert "f=data.url" in kept.headers["Location"]


def test_a_filtered_page_has_no_second_empty_filter_row_for_scripts_to_remove_only(admin, mock_store):
    mock_store.queues("pages").put({"url": "https://example.com"})
    page = admin.get("/queues/pages?f=data.url&op=contains&v=example").text
    rows = re.findall(r'<div class="q-row(?: [^"]*)?"[^>]*>', page)
    assert len(rows) == 2 and "q-blank" in rows[1]  # the blank one is for browsers without scripts
    assert "q-blank" not in admin.get("/queues/pages").text  # with no filter, the one row is the blank one


# -- the API ---------------------------------------------------------------------------

def test_the_api_gives_null_for_times_a_run_does_not_have_yet(web, mock_store):
    token, _ = mock_store.tokens.create("admin")
    run_id = make_run(mock_store, RunStatus.QUEUED)
    answer = web.test_client().get(f"/api/runs/{run_id}", headers={"Authorization": f"Bearer {token}"}).json
    assert answer["status"] == "queued" and answer["queued_at"]
    assert answer["started_at"] is None and answer["finished_at"] is None
    listed = web.test_client().get("/api/runs", headers={"Authorization": f"Bearer {token}"}).json["runs"]
    assert [r["started_at"] for r in listed if r["id"] == run_id] == [None]


# -- not found ---------------------------------------------------------------------------

@pytest.mark.parametrize("url, says, back", [
    ("/runs/" + "0" * 24, "no run with id", "/runs"),
    ("/jobs/nope.sh", "no job named 'nope.sh'", "/jobs"),
])
def test_the_not_found_page_speaks_to_browser_users(admin, url, says, back):
    response = admin.get(url, headers={"Accept": "text/html"})
    assert response.status_code == 404
    page = html.unescape(response.text)
    assert says in page
    assert "sooner runs" not in page and "sooner jobs" not in page and "`" not in page
    assert f'href="{back}"' in page


def test_the_api_not_found_answer_is_json_without_a_cli_hint(web, mock_store):
    token, _ = mock_store.tokens.create("admin")
    answer = web.test_client().get("/api/runs/" + "0" * 24, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 404 and "no run with id" in answer.json["error"]
    assert "`" not in answer.json["error"]


# -- the hooks field -----------------------------------------------------------------------

def test_the_hooks_field_has_a_short_placeholder_and_the_long_example_in_a_hint(admin):
    page = html.unescape(admin.get(f"/jobs/{JOB}").text)
    field = re.search(r'<input name="hooks"[^>]*>', page).group(0)
    assert len(re.search(r'placeholder="([^"]*)"', field).group(1)) <= 24
    assert "job:reports/daily.sh:succeeded" in page  # the example moved to the hint below the field
