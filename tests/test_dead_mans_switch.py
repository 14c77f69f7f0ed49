"""The dead man's switch: a scheduled job whose tick got no run a worker took is ``overdue``; one whose
latest tick was recorded missed is ``missed``; shown on the job page, the jobs list, the dashboard, the
API and the CLI.

Scenarios run on a FakeClock with the real scheduler and run service, on mongomock and on the
embedded server (the alert's queries go through ``$in`` on ``scheduled_for``).
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from argon2 import PasswordHasher

from sooner.clock import FakeClock, utcnow
from sooner.config import Settings, load_settings
from sooner.model import CronTrigger, Job, Run, RunStatus
from sooner.model.missed import AlertState, JobAlert, MissedTick, MissReason, alert_after_s, job_alert
from sooner.runs.service import RunService
from sooner.scheduling.alerts import TickCache, alert_of, job_alerts, watched_since
from sooner.scheduling.cron import last_fire_at_or_before
from sooner.scheduling.scheduler import Scheduler
from sooner.store import open_store
from sooner.webapp import create_app

from conftest import run_sooner, signed_in

UTC = timezone.utc


def at(hour: int, minute: int = 0, second: int = 0, day: int = 5) -> datetime:
    return datetime(2026, 1, day, hour, minute, second, tzinfo=UTC)


def make_job(store, name: str = "hourly.sh", schedule: str | None = "0 * * * *", **settings) -> Job:
    store.jobs.record_deployed(name, commit="c1", blob=f"blob-{name}")
    store.jobs.set_enabled(name, True)
    return store.jobs.update_settings(name, {"schedule": schedule, **settings})


@pytest.fixture(params=["mock", "embedded"])
def store(request, fake_clock, make_mock_store, embedded_site):
    """A store on the test's FakeClock: mongomock, or the embedded server with its own database."""
    if request.param == "mock":
        yield make_mock_store(clock=fake_clock)
        return
    import uuid

    settings = load_settings(embedded_site / "config.json", environ={},
                             overrides={"database": f"t{uuid.uuid4().hex[:12]}"})
    embedded = open_store(settings, clock=fake_clock)
    yield embedded
    embedded.client.drop_database(settings.database)
    embedded.close()


@pytest.fixture
def mock(clocked_store):
    return clocked_store


def alert(store, name: str = "hourly.sh") -> JobAlert:
    return alert_of(store, store.jobs.get(name), store.clock.now())


# -- the rule ------------------------------------------------------------------------------------
def test_the_default_grace_is_a_tenth_of_the_interval_within_a_minute_and_an_hour():
    assert alert_after_s(None, 60) == 60
    assert alert_after_s(None, 3600) == 360
    assert alert_after_s(None, 86400) == 3600
    assert alert_after_s(None, None) == 60
    assert alert_after_s(90.0, 86400) == 90


def test_the_rule_over_its_facts():
    job = Job("a.sh", enabled=True, schedule="0 * * * *")
    queued = Run(id="q", job="a.sh", status=RunStatus.QUEUED)
    waiting = Run(id="w", job="a.sh", status=RunStatus.WAITING)
    gpu = Run(id="g", job="a.sh", status=RunStatus.QUEUED, target="gpu")
    skipped = MissedTick.of("a.sh", MissReason.OVERLAP_SKIP, at(13))
    caught_up = MissedTick.of("a.sh", MissReason.CAUGHT_UP, at(10), at(13), count=4, run="q")

    def judge(unstarted=None, missed=None, latest=at(13), expected=at(13), handled=None, of=job) -> JobAlert:
        return job_alert(of, latest=latest, expected=expected, grace_s=360, handled_until=handled,
                         unstarted=unstarted or {}, missed=missed or {})

    # Not fired by any scheduler (the cursor is before the tick), or fired and not taken yet:
    assert (judge().state, judge().reason) == (AlertState.OVERDUE, "no scheduler fired it")
    assert judge(handled=at(12)).state is AlertState.OVERDUE
    assert judge({at(13): queued}, handled=at(13)).reason == "queued, but no worker took it"
    assert judge({at(13): queued}, handled=at(13)).run == "q"
    assert judge({at(13): gpu}, handled=at(13)).reason == "queued, but no worker took it (it needs worker 'gpu')"
    assert judge({at(13): waiting}, handled=at(13)).reason == "waiting behind an earlier run (overlap=queue)"
    # Fired, and its run is neither queued nor waiting: a worker took it.
    assert judge(handled=at(13)).state is AlertState.OK
    # Recorded missed:
    assert judge(missed={at(13): skipped}, handled=at(13)).state is AlertState.MISSED
    assert judge(missed={at(13): skipped}, handled=at(13)).message() == (
        "expected at 2026-01-05 13:00:00 UTC, did not run: a run was still active (overlap=skip)")
    # Folded into a catch-up run: that run decides.
    assert judge({at(13): queued}, {at(13): caught_up}, handled=at(13)).state is AlertState.OVERDUE
    assert judge(missed={at(13): caught_up}, handled=at(13)).state is AlertState.OK
    # The latest tick is within the grace: nothing to say about it yet, unless it was recorded missed.
    assert judge(latest=at(13), expected=None).state is AlertState.OK
    assert judge(missed={at(13): skipped}, latest=at(13), expected=None, handled=at(13)).state is AlertState.MISSED
    assert judge({at(13): queued}, latest=at(13), expected=at(12), handled=at(13)).state is AlertState.OK
    assert judge(latest=at(13), expected=at(12), handled=at(11)).expected_at == at(12)
    assert judge(latest=None, expected=None).state is AlertState.OK
    assert judge(of=Job("a.sh", enabled=False, schedule="0 * * * *")).state is AlertState.OFF
    assert judge(of=Job("a.sh", enabled=True)).state is AlertState.OFF


def test_tick_cache_answers_the_same_as_the_cron_functions():
    cache = TickCache()
    for moment in (at(12, 30), at(12, 59, 59), at(13), at(13, 0, 1), at(12, 30)):
        previous, latest, upcoming = cache.around("0 * * * *", "UTC", moment)
        assert latest == last_fire_at_or_before("0 * * * *", "UTC", moment)
        assert previous == latest - timedelta(hours=1) and upcoming == latest + timedelta(hours=1)


# -- transitions, driven by the scheduler on a fake clock -----------------------------------------
def test_an_hourly_job_goes_overdue_when_no_worker_takes_its_run_and_ok_once_one_does(store):
    clock = store.clock
    make_job(store)
    scheduler = Scheduler(store, Settings(), clock)
    service = scheduler.service
    scheduler.tick()  # 12:00: the scheduler starts following the schedule

    clock.set(at(12, 30))
    assert alert(store).state is AlertState.OK  # nothing was due since then
    clock.set(at(13))
    [run] = scheduler.tick()
    clock.set(at(13, 5, 59))
    assert alert(store).state is AlertState.OK  # queued, but within the grace (6 min for hourly)

    clock.set(at(13, 6, 1))
    overdue = alert(store)
    assert (overdue.state, overdue.expected_at, overdue.run, overdue.grace_s) == (AlertState.OVERDUE, at(13),
                                                                                   run.id, 360)
    assert overdue.message() == "expected at 2026-01-05 13:00:00 UTC, did not run: queued, but no worker took it"

    assert service.claim("w1", [], lease_s=30).id == run.id
    assert alert(store).state is AlertState.OK


def test_a_job_goes_overdue_while_no_scheduler_runs_and_missed_once_one_records_it(store):
    clock = store.clock
    make_job(store)
    scheduler = Scheduler(store, Settings(), clock)
    scheduler.tick()
    clock.set(at(13))
    [run] = scheduler.tick()
    scheduler.service.claim("w1", [], lease_s=3600)
    scheduler.service.finish(run.id, RunStatus.SUCCEEDED, exit_code=0)

    clock.set(at(14, 6, 1))  # the scheduler died before 14:00
    assert (alert(store).state, alert(store).reason) == (AlertState.OVERDUE, "no scheduler fired it")

    clock.set(at(14, 30))  # a scheduler comes back: 14:00 is 30 minutes late, recorded missed
    assert Scheduler(store, Settings(), clock).tick() == []
    missed = alert(store)
    assert (missed.state, missed.expected_at, missed.reason) == (AlertState.MISSED, at(14), "no scheduler was running")
    assert missed.missed is not None and missed.missed.reason is MissReason.SCHEDULER_DOWN

    clock.set(at(15))
    [later] = Scheduler(store, Settings(), clock).tick()
    scheduler.service.claim("w1", [], lease_s=30)
    assert (alert(store).state, alert(store).expected_at) == (AlertState.OK, at(15))
    assert later.trigger.scheduled_for == at(15)


def test_a_tick_dropped_by_overlap_skip_makes_the_job_missed(store):
    clock = store.clock
    make_job(store, "five.sh", "*/5 * * * *", overlap="skip")
    scheduler = Scheduler(store, Settings(), clock)
    scheduler.tick()
    clock.set(at(12, 5))
    [run] = scheduler.tick()
    scheduler.service.claim("w1", [], lease_s=3600)  # still running at 12:10
    clock.set(at(12, 10))
    assert scheduler.tick() == []

    missed = alert(store, "five.sh")
    assert (missed.state, missed.expected_at, missed.reason) == (AlertState.MISSED, at(12, 10),
                                                                 "a run was still active (overlap=skip)")


def test_a_catch_up_run_left_queued_is_overdue_not_missed(mock, fake_clock):
    make_job(mock, missed="catch_up_once")
    scheduler = Scheduler(mock, Settings(), fake_clock)
    scheduler.tick()
    fake_clock.set(at(15, 30))
    [catch_up] = scheduler.tick()  # 13:00, 14:00 and 15:00 folded into one run for 15:00
    fake_clock.set(at(15, 36, 1))

    overdue = alert(mock)
    assert (overdue.state, overdue.expected_at, overdue.run) == (AlertState.OVERDUE, at(15), catch_up.id)
    assert overdue.missed is not None and overdue.missed.reason is MissReason.CAUGHT_UP
    RunService(mock).claim("w1", [], lease_s=30)
    assert alert(mock).state is AlertState.OK


def test_a_job_no_scheduler_ever_saw_is_overdue_from_when_it_was_enabled(mock, fake_clock):
    fake_clock.set(at(11, 30))
    make_job(mock)
    assert watched_since(mock.jobs.get("hourly.sh")) == at(11, 30)
    fake_clock.set(at(12, 5))
    assert alert(mock).state is AlertState.OK
    fake_clock.set(at(12, 6, 1))
    assert (alert(mock).state, alert(mock).expected_at) == (AlertState.OVERDUE, at(12))


def test_the_jobs_grace_setting_replaces_the_default(mock, fake_clock):
    from sooner.model.job_settings import InvalidJobSetting, settings_changes

    job = make_job(mock)
    changes = settings_changes(job, {"alert_after_s": "30"})
    assert changes == {"alert_after_s": 30.0}
    mock.jobs.update_settings("hourly.sh", changes)
    Scheduler(mock, Settings(), fake_clock).tick()
    fake_clock.set(at(13, 0, 31))
    assert (alert(mock).state, alert(mock).grace_s) == (AlertState.OVERDUE, 30)
    assert settings_changes(job, {"alert_after_s": 0}) == {"alert_after_s": None}
    for bad in ("nan", "inf", -1, "soon", 1e309):
        with pytest.raises(InvalidJobSetting, match="alert_after: must be a finite number"):
            settings_changes(job, {"alert_after_s": bad})


def test_disabled_and_unscheduled_jobs_are_not_watched(mock, fake_clock):
    make_job(mock)
    make_job(mock, "manual.sh", None)
    Scheduler(mock, Settings(), fake_clock).tick()
    mock.jobs.set_enabled("hourly.sh", False)
    fake_clock.set(at(18))
    alerts = job_alerts(mock, mock.jobs.list(), fake_clock.now())
    assert {name: a.state for name, a in alerts.items()} == {"hourly.sh": AlertState.OFF,
                                                            "manual.sh": AlertState.OFF}


def test_alerts_of_many_jobs_ask_the_store_once(mock, fake_clock, monkeypatch):
    for i in range(30):
        make_job(mock, f"j{i}.sh", "0 * * * *" if i % 2 else "*/10 * * * *")
    Scheduler(mock, Settings(), fake_clock).tick()
    fake_clock.set(at(13, 10, 30))
    calls = []
    for repo, name in ((mock.reads, "unstarted_tick_runs"), (mock.missed, "at_ticks")):
        original = getattr(repo, name)
        monkeypatch.setattr(repo, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k))

    alerts = job_alerts(mock, mock.jobs.list(), fake_clock.now())
    assert calls == ["unstarted_tick_runs", "at_ticks"]
    assert {a.state for a in alerts.values()} == {AlertState.OVERDUE}


# -- the web and the API -----------------------------------------------------------------------
@pytest.fixture
def web(make_mock_store, monkeypatch):
    """The web app on a FakeClock that starts at the current hour (sign-in cookies expire on real time)."""
    monkeypatch.setattr("sooner.store.users._passwords", PasswordHasher(time_cost=1, memory_cost=64, parallelism=1))
    start = utcnow().replace(minute=0, second=0, microsecond=0)
    clock = FakeClock(start)
    store = make_mock_store(clock=clock)
    settings = load_settings(None, environ={}, overrides={"secret_key": "k" * 40, "mongo_url": store.url})
    app, _ = create_app(settings, store, live=False)
    app.config["TESTING"] = True
    store.users.add("admin", "admin-password", admin=True)
    token, _ = store.tokens.create("admin")
    return SimpleNamespace(app=app, store=store, clock=clock, client=signed_in(app, "admin", "admin-password"),
                           token={"Authorization": f"Bearer {token}"},
                           t=lambda hours=0, minutes=0, seconds=0: start + timedelta(hours=hours, minutes=minutes,
                                                                                     seconds=seconds))


def utc_text(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def iso_text(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%S}Z"


def overdue_job(web) -> Run:
    """hourly.sh's run of the next hour is queued and no worker takes it; it is 6 minutes and a second later."""
    make_job(web.store)
    scheduler = Scheduler(web.store, Settings(), web.clock)
    scheduler.tick()
    web.clock.set(web.t(1))
    [run] = scheduler.tick()
    web.clock.set(web.t(1, 6, 1))
    return run


def test_the_job_page_shows_the_banner_and_the_missed_ticks(web):
    run = overdue_job(web)
    web.store.missed.record(MissedTick.of("hourly.sh", MissReason.SCHEDULER_DOWN, web.t(-10), web.t(-3), count=8,
                                          recorded_at=web.t(-2)))

    page = web.client.get("/jobs/hourly.sh").text
    banner = html.unescape(re.sub(r"<[^>]+>|\s+", " ", re.search(r'id="job-alert".*?</p>', page, re.S).group(0)))
    assert (f"Overdue : expected at {utc_text(web.t(1))} , did not run: queued, but no worker took it"
            in re.sub(r"\s+", " ", banner))
    assert f"/runs/{run.id}" in page
    table = re.search(r'id="missed-table".*?</table>', page, re.S).group(0)
    assert "scheduler down" in table and "no scheduler was running" in table and ">8<" in table
    assert 'id="alert-state">overdue<' in page


def test_the_job_page_pages_through_missed_ticks(web):
    make_job(web.store, "five.sh", "*/5 * * * *")
    for i in range(25):
        web.store.missed.record(MissedTick.of("five.sh", MissReason.OVERLAP_SKIP, web.t(-3, 5 * i)))

    first = web.client.get("/jobs/five.sh").text
    rows = re.findall(r"<tr>\s*<td><time", re.search(r'id="missed-table".*?</table>', first, re.S).group(0))
    assert len(rows) == 20 and utc_text(web.t(-3, 120)) in first and utc_text(web.t(-3, 20)) not in first
    older = html.unescape(re.search(r'href="([^"]+)#missed" id="missed-older"', first).group(1))
    second = web.client.get(older).text
    table = re.search(r'id="missed-table".*?</table>', second, re.S).group(0)
    assert len(re.findall(r"<tr>\s*<td><time", table)) == 5 and utc_text(web.t(-3, 20)) in table
    assert 'id="missed-older"' not in second and 'id="missed-newest"' in second
    bad = web.client.get("/jobs/five.sh?missed_before=yesterday")
    assert bad.status_code == 400 and "missed_before: not an ISO-8601 time" in bad.text


def test_the_jobs_list_marks_alerting_jobs_and_the_dashboard_counts_them(web):
    overdue_job(web)
    make_job(web.store, "quiet.sh", None)

    jobs = web.client.get("/jobs").text
    row = html.unescape(re.search(r'data-name="hourly.sh".*?</tr>', jobs, re.S).group(0))
    assert (f'class="badge st-failed alert-badge" title="expected at {utc_text(web.t(1))}, did not run: queued, '
            f'but no worker took it">overdue</a>') in row
    assert "alert-badge" not in re.search(r'data-name="quiet.sh".*?</tr>', jobs, re.S).group(0)

    dashboard = web.client.get("/").text
    assert re.search(r'id="overdue-count" title="hourly.sh"\s+class="badge st-failed">1 job overdue</a>', dashboard)
    assert web.app.test_client().get("/healthz").json == {"ok": True}


def test_the_api_shows_the_alert_and_pages_the_missed_ticks(web):
    run = overdue_job(web)
    web.store.missed.record(MissedTick.of("hourly.sh", MissReason.OVERLAP_SKIP, web.t(-1)))
    web.store.missed.record(MissedTick.of("hourly.sh", MissReason.SCHEDULER_DOWN, web.t(-10), web.t(-3), count=8))
    client = web.app.test_client()

    job = client.get("/api/jobs/hourly.sh", headers=web.token).json
    assert job["alert"] == {"state": "overdue", "expected_at": iso_text(web.t(1)),
                            "reason": "queued, but no worker took it", "grace_s": 360, "run": run.id, "missed": None,
                            "message": f"expected at {utc_text(web.t(1))}, did not run: queued, but no worker took it"}
    assert client.get("/api/jobs", headers=web.token).json["jobs"][0]["alert"]["state"] == "overdue"

    first = client.get("/api/jobs/hourly.sh/missed?limit=1", headers=web.token).json
    assert [m["reason"] for m in first["missed"]] == ["overlap_skip"] and first["more"]
    assert first["next_before"] == iso_text(web.t(-1))
    second = client.get(f"/api/jobs/hourly.sh/missed?limit=1&before={first['next_before']}", headers=web.token).json
    [down] = second["missed"]
    assert (down["count"], down["first"], down["scheduled_for"], second["more"]) == (
        8, iso_text(web.t(-10)), iso_text(web.t(-3)), False)

    assert client.get("/api/jobs/hourly.sh/missed").status_code == 401
    assert client.get("/api/jobs/nope.sh/missed", headers=web.token).status_code == 404
    for query, message in (("limit=0", "limit: must be a whole number from 1 to 500"),
                           ("limit=abc", "limit: must be a whole number"),
                           ("before=%24gt", "before: not an ISO-8601 time")):
        answer = client.get(f"/api/jobs/hourly.sh/missed?{query}", headers=web.token)
        assert answer.status_code == 400 and message in answer.json["error"], query


def test_the_grace_is_a_field_of_the_job_form(web):
    make_job(web.store)
    form = {"csrf_token": web.client.csrf, "action": "save", "schedule": "0 * * * *", "timezone": "UTC",
            "enabled": "on", "overlap": "skip", "missed": "skip", "alert_after_s": "120"}
    saved = web.client.post("/jobs/hourly.sh", data=form)
    assert saved.status_code == 302, saved.text
    assert web.store.jobs.get("hourly.sh").alert_after_s == 120
    bad = web.client.post("/jobs/hourly.sh", data={**form, "alert_after_s": "nan"})
    assert bad.status_code == 400 and "alert_after: must be a finite number" in html.unescape(bad.text)
    assert web.store.jobs.get("hourly.sh").alert_after_s == 120


# -- the CLI, through real `sooner` processes ------------------------------------------------------
def test_the_cli_shows_the_alert_and_the_missed_ticks(site):
    now = utcnow()
    schedule = f"0 {(now.hour + 12) % 24} * * *"  # daily, 12 hours away from now: its latest tick is long past
    tick = last_fire_at_or_before(schedule, "UTC", now)
    store = open_store(load_settings(site / "config.json", environ={}), clock=FakeClock(now - timedelta(days=2)))
    make_job(store, "daily.sh", schedule)
    make_job(store, "manual.sh", None)
    RunService(store).queue("daily.sh", CronTrigger(scheduled_for=tick))
    store.missed.record(MissedTick.of("daily.sh", MissReason.SCHEDULER_DOWN, tick - timedelta(days=1)))
    store.close()

    listed = run_sooner("jobs", cwd=site)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split()[-1] == "ALERT"
    assert next(line for line in lines if line.startswith("daily.sh")).split()[-1] == "overdue"
    assert next(line for line in lines if line.startswith("manual.sh")).split()[-1] == "-"

    shown = run_sooner("job", "show", "daily.sh", cwd=site)
    assert shown.returncode == 0, shown.stderr
    assert (f"alert:     overdue: expected at {tick:%Y-%m-%d %H:%M:%S} UTC, did not run: queued, but no worker "
            f"took it") in shown.stdout
    assert "missed ticks (newest first):" in shown.stdout
    assert f"{tick - timedelta(days=1):%Y-%m-%d %H:%M:%S} UTC: no scheduler was running" in shown.stdout

    assert run_sooner("job", "set", "daily.sh", "--alert-after", "90", cwd=site).stdout.strip() == \
        "updated daily.sh: alert_after_s=90.0"
    for bad in ("nan", "1e309", "-5"):
        refused = run_sooner("job", "set", "daily.sh", "--alert-after", bad, cwd=site)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert "alert_after: must be a finite number of seconds from 0 to 2592000" in refused.stderr, refused.stderr
