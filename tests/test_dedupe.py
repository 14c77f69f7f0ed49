"""Dedupe window: run requests with the same key within the job's ``dedupe_window_s`` get one run.

The service and the store on mongomock with a FakeClock (the window expires as the clock
advances), the race between concurrent requests on the embedded nx-27017 server (threads,
each with its own client), the CLI through a real subprocess and the API through the
app's test client.
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from conftest import released_together, run_sooner, signed_in
from sooner.clock import FakeClock
from sooner.config import load_settings
from sooner.model import CronTrigger, ManualTrigger, Missed, Overlap, RunStatus
from sooner.model.dedupe import InvalidDedupeKey, key_expired, validate_dedupe_key
from sooner.model.job_settings import InvalidJobSetting, settings_changes
from sooner.runs.service import RunService
from sooner.store import Store, open_store

JOB = "orders/import.sh"


def with_window(store: Store, window_s: float | None = 600, job: str = JOB) -> None:
    store.jobs.record_deployed(job, commit="c" * 40, blob="b" * 40)
    store.jobs.update_settings(job, {"dedupe_window_s": window_s})


def runs_of(store: Store, job: str = JOB) -> list:
    return store.runs.list(job=job, limit=1000)


# -- the service and the store (mongomock, fake clock) ---------------------------------------

def test_a_second_request_with_the_same_key_within_the_window_gets_the_first_run(clocked_store, service, fake_clock):
    # given a job with a 10-minute dedupe window and a run queued under key "order-42"
    with_window(clocked_store)
    first = service.queue(JOB, ManualTrigger(author="alice"), data={"order": 42}, dedupe_key="order-42")
    # when the same key is asked for again 9 minutes later
    fake_clock.advance(540)
    again = service.queue(JOB, ManualTrigger(author="bob"), data={"order": 42}, dedupe_key="order-42")
    # then the first run comes back, marked deduplicated, and no second run exists
    assert not first.deduplicated
    assert again.id == first.id and again.deduplicated
    assert [r.id for r in runs_of(clocked_store)] == [first.id]
    assert clocked_store.runs.get(first.id).dedupe_key == "order-42"


def test_once_the_window_has_passed_the_key_starts_a_new_run_and_the_old_run_gives_it_up(
        clocked_store, service, fake_clock):
    # given a run queued under a key, in a 10-minute window
    with_window(clocked_store)
    first = service.queue(JOB, ManualTrigger(), dedupe_key="k")
    # when the key comes again exactly 10 minutes later (the window is half-open)
    fake_clock.advance(600)
    second = service.queue(JOB, ManualTrigger(), dedupe_key="k")
    # then it is a new run that now holds the key, and a request just after gets the new run
    assert second.id != first.id and not second.deduplicated
    assert clocked_store.runs.get(first.id).dedupe_key is None
    assert clocked_store.runs.get(first.id).extra["dedupe_key_expired"] == "k"
    assert clocked_store.runs.get(second.id).dedupe_key == "k"
    fake_clock.advance(1)
    assert service.queue(JOB, ManualTrigger(), dedupe_key="k").id == second.id


def test_the_key_comes_back_whatever_the_run_became(clocked_store, service, fake_clock):
    # given a keyed run that already failed
    with_window(clocked_store)
    first = service.queue(JOB, ManualTrigger(), dedupe_key="k")
    service.take(first.id, "w1", lease_s=60)
    service.finish(first.id, RunStatus.FAILED, exit_code=1)
    # when the key is asked for within the window
    again = service.queue(JOB, ManualTrigger(), dedupe_key="k")
    # then the failed run is the answer (the window blacklists the request, as Desaster's timed requeue does)
    assert again.id == first.id and again.status is RunStatus.FAILED and again.deduplicated


def test_keys_belong_to_one_job_and_different_keys_do_not_collide(clocked_store, service):
    with_window(clocked_store)
    with_window(clocked_store, job="other.sh")
    a = service.queue(JOB, ManualTrigger(), dedupe_key="k")
    b = service.queue("other.sh", ManualTrigger(), dedupe_key="k")
    c = service.queue(JOB, ManualTrigger(), dedupe_key="k2")
    assert len({a.id, b.id, c.id}) == 3 and not any(r.deduplicated for r in (a, b, c))


def test_a_job_without_a_window_ignores_keys_and_requests_without_a_key_are_never_deduplicated(
        clocked_store, service):
    # given a job with no window, and one with a window
    with_window(clocked_store, None)
    with_window(clocked_store, job="other.sh")
    # when keyed requests reach the first and unkeyed ones the second
    keyed = [service.queue(JOB, ManualTrigger(), dedupe_key="k") for _ in range(2)]
    plain = [service.queue("other.sh", ManualTrigger()) for _ in range(2)]
    # then every request got its own run, and none stores the key
    assert keyed[0].id != keyed[1].id and plain[0].id != plain[1].id
    assert all(clocked_store.runs.get(r.id).dedupe_key is None for r in keyed + plain)


def test_the_window_comes_from_the_jobs_current_setting(clocked_store, service, fake_clock):
    with_window(clocked_store, 600)
    first = service.queue(JOB, ManualTrigger(), dedupe_key="k")
    fake_clock.advance(120)
    clocked_store.jobs.update_settings(JOB, {"dedupe_window_s": 60})
    assert service.queue(JOB, ManualTrigger(), dedupe_key="k").id != first.id


def test_a_duplicate_is_answered_before_the_overlap_policy_drops_the_request(clocked_store, service):
    # given a job with overlap=skip whose keyed run is still queued
    with_window(clocked_store)
    clocked_store.jobs.update_settings(JOB, {"overlap": Overlap.SKIP.value})
    first = service.queue(JOB, ManualTrigger(), dedupe_key="k")
    # when an overlap-checked request (as events and webhooks make) brings the same key
    again = service.queue(JOB, ManualTrigger(), dedupe_key="k", overlap_check=True)
    # then it gets the run, not None
    assert again is not None and again.id == first.id and again.deduplicated
    assert service.queue(JOB, ManualTrigger(), overlap_check=True) is None  # without the key: skipped as before


def test_a_keyed_time_trigger_fire_is_still_fired_once(clocked_store, service, fake_clock):
    # given a keyed run of a cron tick
    with_window(clocked_store)
    tick = fake_clock.now()
    first = service.queue(JOB, CronTrigger(scheduled_for=tick), dedupe_key="tick")
    # when the same tick fires again under another key (a second scheduler)
    again = service.queue(JOB, CronTrigger(scheduled_for=tick), dedupe_key="tick-copy")
    # then one_run_per_fire refuses it, as without keys
    assert first is not None and again is None
    assert len(runs_of(clocked_store)) == 1


@pytest.mark.parametrize("key, message", [
    ("", "dedupe_key: must not be empty"),
    ("x" * 201, "dedupe_key: is 201 characters long; at most 200 are allowed"),
    ("order 42", "dedupe_key: character ' ' is not allowed"),
    ('{"$gt": ""}', "dedupe_key: character '{' is not allowed"),
    ("ordér", "dedupe_key: character 'é' is not allowed"),
    (42, "dedupe_key: must be a string, got int"),
])
def test_keys_are_bounded_in_length_and_characters(clocked_store, service, key, message):
    with_window(clocked_store)
    with pytest.raises(InvalidDedupeKey) as caught:
        service.queue(JOB, ManualTrigger(), dedupe_key=key)
    assert str(caught.value).startswith(message)
    assert runs_of(clocked_store) == []


def test_the_longest_key_and_every_allowed_character_are_accepted():
    assert validate_dedupe_key("x" * 200) == "x" * 200
    assert validate_dedupe_key("Az09_.:/@+=#-") == "Az09_.:/@+=#-"


def test_key_expiry_is_measured_from_the_holders_queue_time(fake_clock):
    queued = fake_clock.now()
    assert not key_expired(queued, 60, queued + timedelta(seconds=59.999))
    assert key_expired(queued, 60, queued + timedelta(seconds=60))
    assert key_expired(None, 60, queued)


@pytest.mark.parametrize("value, message", [
    ("nan", "dedupe_window: must be a finite number from 0 to"),
    (float("inf"), "got inf"),
    (-1, "got -1"),
    (2592001, "got 2592001"),
    ("ten", "got 'ten'"),
])
def test_the_dedupe_window_setting_is_a_finite_number_of_seconds_up_to_30_days(clocked_store, value, message):
    with_window(clocked_store, None)
    job = clocked_store.jobs.get(JOB)
    with pytest.raises(InvalidJobSetting) as caught:
        settings_changes(job, {"dedupe_window_s": value})
    assert message in str(caught.value) and "seconds (30 days)" in str(caught.value)
    assert settings_changes(job, {"dedupe_window_s": 0}) == {"dedupe_window_s": None}
    assert settings_changes(job, {"dedupe_window_s": "600"}) == {"dedupe_window_s": 600.0}


def test_insert_holding_key_on_every_store(any_store):
    # given a keyed run on mongomock, the embedded server (and a real MongoDB when configured)
    clock = FakeClock(any_store.clock.now())
    store = any_store
    with_window(store)
    service = RunService(store, clock=clock)
    first = service.queue(JOB, ManualTrigger(), dedupe_key="k")
    # then a second run with the key is refused by the index, and many unkeyed runs are not
    assert service.queue(JOB, ManualTrigger(), dedupe_key="k").id == first.id
    assert len({service.queue(JOB, ManualTrigger()).id for _ in range(3)}) == 3
    clock.advance(601)
    assert service.queue(JOB, ManualTrigger(), dedupe_key="k").id != first.id


# -- concurrent requests on the embedded server ------------------------------------------------

def race(embedded_store: Store, clock: FakeClock, key: str, threads: int) -> list:
    """``threads`` requests with ``key``, released together, each through its own client; their answers."""
    stores = [Store(embedded_store.url, embedded_store.database_name, clock=clock) for _ in range(threads)]
    services = [RunService(store, clock=clock) for store in stores]
    try:
        return released_together(threads, lambda i: services[i].queue(JOB, ManualTrigger(author=f"t{i}"),
                                                                        dedupe_key=key))
    finally:
        for store in stores:
            store.close()


def test_concurrent_requests_with_one_key_make_exactly_one_run(embedded_store, fake_clock):
    # given a job with a window on the embedded server
    with_window(embedded_store)
    for round_ in range(5):
        # when 8 clients ask for a run with the same key at the same moment
        answers = race(embedded_store, fake_clock, f"key-{round_}", 8)
        # then exactly one run was made, every client got it, and all but one were told it was a duplicate
        keyed = [r for r in runs_of(embedded_store) if r.dedupe_key == f"key-{round_}"]
        assert len(keyed) == 1
        assert {a.id for a in answers} == {keyed[0].id}
        assert sum(not a.deduplicated for a in answers) == 1
    assert len(runs_of(embedded_store)) == 5


def test_concurrent_requests_after_the_window_make_exactly_one_new_run(embedded_store, fake_clock):
    # given a run holding the key, and its window over
    with_window(embedded_store)
    old = RunService(embedded_store, clock=fake_clock).queue(JOB, ManualTrigger(), dedupe_key="k")
    for _ in range(3):
        fake_clock.advance(601)
        # when 8 clients bring the key at once
        answers = race(embedded_store, fake_clock, "k", 8)
        # then one new run took the key over and all 8 got it
        holders = [r for r in runs_of(embedded_store) if r.dedupe_key == "k"]
        assert len(holders) == 1 and holders[0].id != old.id
        assert {a.id for a in answers} == {holders[0].id}
        old = holders[0]
    assert len(runs_of(embedded_store)) == 4


# -- the CLI (a real subprocess) ----------------------------------------------------------------

@pytest.fixture
def site_store(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    store.jobs.record_deployed("hello.sh", commit="c1", blob="b1")
    yield store
    store.close()


def sooner(site, *args: str):
    return run_sooner(*args, cwd=site, env={"USER": "alice"})


def test_cli_sets_the_window_and_run_with_the_same_key_prints_the_queued_run(site, site_store):
    # given the window set with `sooner job set`
    assert sooner(site, "job", "set", "hello.sh", "--dedupe-window", "600").returncode == 0
    assert "dedupe:    600s window" in sooner(site, "job", "show", "hello.sh").stdout
    # when the same key is run twice
    first = sooner(site, "run", "hello.sh", "--dedupe-key", "order-42")
    second = sooner(site, "run", "hello.sh", "--dedupe-key", "order-42")
    # then both print the same run id and the second says it was queued already
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    run_id = first.stdout.strip()
    assert second.stdout.strip() == run_id
    assert (f"already queued as run hello.sh#1 (queued, id {run_id}; the same --dedupe-key within the job's 600s"
            in second.stderr)
    assert "already queued" not in first.stderr
    assert len(site_store.runs.list(job="hello.sh")) == 1


def test_cli_refuses_a_bad_key_or_window_in_one_line(site, site_store):
    bad_key = sooner(site, "run", "hello.sh", "--dedupe-key", "a b")
    assert bad_key.returncode == 1 and "Traceback" not in bad_key.stderr
    assert "--dedupe-key: character ' ' is not allowed" in bad_key.stderr
    bad_window = sooner(site, "job", "set", "hello.sh", "--dedupe-window", "nan")
    assert bad_window.returncode == 1 and "Traceback" not in bad_window.stderr
    assert "dedupe_window: must be a finite number" in bad_window.stderr
    no_window = sooner(site, "run", "hello.sh", "--dedupe-key", "k")
    assert no_window.returncode == 0
    assert "--dedupe-key has no effect: job hello.sh has no dedupe window" in no_window.stderr
    assert site_store.runs.list(job="hello.sh")[0].dedupe_key is None


# -- the API and the job page (Flask test client) ------------------------------------------------

@pytest.fixture
def web(mock_store, mock_web_app):
    app, _, _ = mock_web_app
    with_window(mock_store)
    token, _ = mock_store.tokens.create("admin")
    return SimpleNamespace(app=app, store=mock_store, headers={"Authorization": f"Bearer {token}"})


def test_api_answers_a_duplicate_with_200_and_the_run_that_holds_the_key(web):
    client = web.app.test_client()
    url = f"/api/jobs/{JOB}/runs"
    created = client.post(url, json={"data": {"n": 1}, "dedupe_key": "order-42"}, headers=web.headers)
    again = client.post(url, json={"data": {"n": 2}, "dedupe_key": "order-42"}, headers=web.headers)
    other = client.post(url, json={"dedupe_key": "order-43"}, headers=web.headers)
    assert created.status_code == 201 and created.json["deduplicated"] is False
    assert again.status_code == 200 and again.json["deduplicated"] is True
    assert again.json["run"]["id"] == created.json["run"]["id"] and again.json["run"]["data"] == {"n": 1}
    assert again.json["run"]["dedupe_key"] == "order-42"
    assert other.status_code == 201 and other.json["run"]["id"] != created.json["run"]["id"]
    assert client.get(f"/api/jobs/{JOB}", headers=web.headers).json["dedupe_window_s"] == 600


@pytest.mark.parametrize("body, message", [
    ({"dedupe_key": ""}, "dedupe_key: must not be empty"),
    ({"dedupe_key": 7}, "dedupe_key: must be a string, got int"),
    ({"dedupe_key": {"$ne": None}}, "dedupe_key: must be a string, got dict"),
    ({"dedupe_key": "a" * 300}, "at most 200"),
    ({"dedupe": "k"}, 'unknown field(s) dedupe: only "data", "dedupe_key" are accepted'),
])
def test_api_refuses_a_bad_key_with_400_and_a_message(web, body, message):
    answer = web.app.test_client().post(f"/api/jobs/{JOB}/runs", json=body, headers=web.headers)
    assert answer.status_code == 400 and message in answer.json["error"]
    assert runs_of(web.store) == []


def test_job_page_form_sets_and_clears_the_window_and_refuses_a_bad_one(web):
    client = signed_in(web.app, "admin", "admin-password", f"/jobs/{JOB}")
    page = client.get(f"/jobs/{JOB}").text
    assert 'name="dedupe_window_s" id="dedupe_window_s" value="600"' in page
    form = {"csrf_token": client.csrf, "action": "save", "timezone": "UTC", "overlap": Overlap.SKIP.value,
            "missed": Missed.SKIP.value, "retry_attempts": "0"}
    bad = client.post(f"/jobs/{JOB}", data={**form, "dedupe_window_s": "-5"})
    assert bad.status_code == 400 and "dedupe_window: must be a finite number" in bad.text
    assert web.store.jobs.get(JOB).dedupe_window_s == 600
    assert client.post(f"/jobs/{JOB}", data={**form, "dedupe_window_s": "90"}).status_code == 302
    assert web.store.jobs.get(JOB).dedupe_window_s == 90
    assert client.post(f"/jobs/{JOB}", data={**form, "dedupe_window_s": ""}).status_code == 302
    assert web.store.jobs.get(JOB).dedupe_window_s is None
    no_csrf = client.post(f"/jobs/{JOB}", data={k: v for k, v in form.items() if k != "csrf_token"})
    assert no_csrf.status_code in (400, 403)
