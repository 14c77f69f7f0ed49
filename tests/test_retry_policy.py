"""The retry policy: exponential backoff with a cap and jitter, its validation, and the retry listener on a fake clock.

Delays are checked exactly: the listener takes its random numbers from the
run service (``RunService(random=…)``), so a test fixes them as it fixes the clock.
"""

from __future__ import annotations

import html
import itertools
import math
from datetime import timedelta
from types import SimpleNamespace

import pytest

from conftest import run_sooner, signed_in
from sooner.config import load_settings
from sooner.model import ManualTrigger, RetryPolicy, RunStatus
from sooner.model.job_settings import InvalidJobSetting, settings_changes
from sooner.store import open_store


def deployed(store, name: str = "flaky.sh", **retry):
    store.jobs.record_deployed(name, commit="c1", blob=f"blob-{name}")
    store.jobs.set_enabled(name, True)
    return store.jobs.update_settings(name, {"retry": RetryPolicy(**retry).to_doc()} if retry else {})


def fail(service, run_id: str, status: RunStatus = RunStatus.FAILED):
    """What a worker does with a run whose script fails: claim it, then end it."""
    claimed = service.claim("w1", [], lease_s=30)
    assert claimed is not None and claimed.id == run_id
    return service.finish(run_id, status, exit_code=1 if status is RunStatus.FAILED else None)


def draws(*values: float):
    """A random source that returns these values, in order, then fails the test if asked again."""
    source = iter(values)
    return lambda: next(source)


# -- the model -----------------------------------------------------------------------------------
def test_delays_grow_by_the_factor_from_the_base_and_stop_at_the_cap():
    policy = RetryPolicy(attempts=10, backoff_base_s=5, backoff_factor=3, max_backoff_s=200)
    assert [policy.delay_after(n) for n in range(1, 7)] == [5, 15, 45, 135, 200, 200]
    assert policy.delays() == [5, 15, 45, 135, 200, 200, 200, 200, 200, 200]
    # a factor of 1 is a fixed wait; a huge exponent is the cap, not an overflow
    assert RetryPolicy(3, 7, 1, 100).delays() == [7, 7, 7]
    assert RetryPolicy(100, 1, 10, 3600).delay_after(100) == 3600


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999999])
def test_jitter_multiplies_the_delay_by_a_factor_within_one_minus_and_one_plus_jitter(draw):
    policy = RetryPolicy(attempts=5, backoff_base_s=100, backoff_factor=2, max_backoff_s=10_000, jitter=0.2)
    delay = policy.delay_after(2, random=lambda: draw)
    assert delay == pytest.approx(200 * (0.8 + 0.4 * draw))
    assert 160 <= delay < 240


def test_jitter_never_takes_a_delay_past_the_cap_and_is_not_drawn_without_jitter():
    capped = RetryPolicy(attempts=9, backoff_base_s=100, backoff_factor=2, max_backoff_s=300, jitter=0.5)
    assert capped.delay_after(5, random=lambda: 0.999) == 300
    assert capped.delay_after(5, random=lambda: 0.0) == 150
    assert RetryPolicy(attempts=1).delay_after(1, random=draws()) == 30  # no draw asked for


def test_a_policy_stored_with_the_old_delay_s_reads_it_as_the_base_and_writes_the_new_form():
    old = RetryPolicy.from_doc({"attempts": 2, "delay_s": 10})
    assert old == RetryPolicy(attempts=2, backoff_base_s=10, backoff_factor=2, max_backoff_s=3600, jitter=0)
    assert [old.delay_after(1), old.delay_after(2)] == [10, 20]
    assert old.to_doc() == {"attempts": 2, "backoff_base_s": 10.0, "backoff_factor": 2.0, "max_backoff_s": 3600.0,
                            "jitter": 0.0}
    new = RetryPolicy(3, 1.5, 4, 60, 0.25)
    assert RetryPolicy.from_doc(new.to_doc()) == new


def test_values_no_one_could_have_typed_read_as_the_defaults():
    stored = {"attempts": True, "backoff_base_s": float("nan"), "backoff_factor": "x", "max_backoff_s": -5,
              "jitter": 7}
    assert RetryPolicy.from_doc(stored) == RetryPolicy(attempts=0, jitter=1.0)


def test_attempt_labels_and_descriptions():
    policy = RetryPolicy(attempts=2, backoff_base_s=30, jitter=0.1)
    assert [policy.attempt_label(n) for n in (1, 3, 4)] == ["1/3", "3/3", "4"]
    assert policy.describe() == "2 retries, 30s × 2^n up to 3600s, jitter ±10%"
    assert RetryPolicy().describe() == "no retries"


# -- validation (what the CLI, the web and the API share) -------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"retry_attempts": 101}, "retry: must be a whole number from 0 to 100 retries, got 101"),
    ({"retry_attempts": 1.5}, "retry: must be a whole number"),
    ({"backoff_base_s": float("nan")}, "backoff_base: must be a finite number from 0 to 86400 seconds (1 day), got nan"),
    ({"backoff_base_s": "1e309"}, "backoff_base: must be a finite number"),
    ({"backoff_base_s": -1}, "got -1"),
    ({"backoff_base_s": True}, "got True"),
    ({"backoff_factor": 0.5}, "backoff_factor: must be a finite number from 1 to 10, got 0.5"),
    ({"backoff_factor": "soon"}, "backoff_factor: must be a finite number from 1 to 10, got 'soon'"),
    ({"max_backoff_s": float("inf")}, "max_backoff: must be a finite number from 0 to 604800 seconds (7 days), got inf"),
    ({"jitter": 1.5}, "jitter: must be a finite number from 0 to 1 (a fraction: 0.1 = ±10%), got 1.5"),
    ({"jitter": "-0.1"}, "jitter: must be a finite number from 0 to 1"),
])
def test_invalid_retry_settings_are_refused_with_the_setting_and_the_range(mock_store, options, message):
    job = deployed(mock_store)
    with pytest.raises(InvalidJobSetting) as refused:
        settings_changes(job, options)
    assert message in str(refused.value)


def test_valid_retry_settings_change_only_the_fields_given(mock_store):
    job = deployed(mock_store, attempts=1, backoff_base_s=5)
    changes = settings_changes(job, {"backoff_factor": "3", "jitter": 0.1, "max_backoff_s": 90})
    assert RetryPolicy.from_doc(changes["retry"]) == RetryPolicy(1, 5, 3, 90, 0.1)
    assert "retry" not in settings_changes(job, {"schedule": None})


# -- the retry listener on a fake clock ---------------------------------------------------------------
def test_each_retry_waits_the_policys_jittered_delay_and_the_last_failure_goes_to_the_failed_view(
        clocked_store, make_service, fake_clock):
    # given a job retried 3 times: 10 s × 3^n up to 60 s, ±20 %, and random draws 0, 0.5 and ~1
    deployed(clocked_store, attempts=3, backoff_base_s=10, backoff_factor=3, max_backoff_s=60, jitter=0.2)
    service = make_service(clocked_store)
    service.random = draws(0.0, 0.5, 0.999)
    first = service.queue("flaky.sh", ManualTrigger(author="me"), data={"n": 1})

    # when every attempt fails as soon as it is due
    waits, run = [], first
    for _ in range(4):
        fake_clock.set(run.not_before or fake_clock.now())
        ended = fail(service, run.id)
        later = [r for r in clocked_store.runs.list(job="flaky.sh") if r.attempt == ended.attempt + 1]
        if not later:
            break
        run = later[0]
        waits.append((run.not_before - ended.finished_at).total_seconds())

    # then the waits were 10 × 0.8, 30 × 1.0 and 60 (90 capped, the jitter cannot pass the cap)
    assert waits == pytest.approx([8.0, 30.0, 60.0], abs=0.002)  # BSON keeps milliseconds
    # and the four attempts form one chain, each linked to the next, with the same data
    chain = clocked_store.reads.chain(clocked_store.runs.get(run.id))
    assert [(r.attempt, r.status) for r in chain] == [(n, RunStatus.FAILED) for n in (1, 2, 3, 4)]
    assert {r.chain_root for r in chain} == {first.id}
    assert [r.next_attempt for r in chain] == [r.id for r in chain[1:]] + [None]
    assert all(clocked_store.runs.get(r.id).data == {"n": 1} for r in chain)
    assert "attempt 2 of 4" in clocked_store.runs.get(first.id).note
    # and only the last, which got no further attempt, is in the Failed view
    assert [r.id for r in clocked_store.failed.page().runs] == [chain[-1].id]


def test_a_job_without_retries_sends_its_failed_timed_out_and_lost_runs_straight_to_the_failed_view(
        clocked_store, make_service, fake_clock):
    deployed(clocked_store)
    service = make_service(clocked_store)
    ended = []
    for status in (RunStatus.FAILED, RunStatus.TIMED_OUT, RunStatus.SUCCEEDED, RunStatus.CANCELLED):
        run = service.queue("flaky.sh", ManualTrigger())
        ended.append(fail(service, run.id, status))
    lost = service.queue("flaky.sh", ManualTrigger())
    service.claim("w1", [], lease_s=5)
    fake_clock.advance(10)
    ended += service.expire_leases()
    in_view = {r.id for r in clocked_store.failed.page().runs}
    assert in_view == {ended[0].id, ended[1].id, lost.id}
    assert all(r.next_attempt is None for r in ended)


def test_a_lost_run_waits_at_least_the_cancel_grace_even_with_a_shorter_backoff(clocked_store, make_service,
                                                                                  fake_clock):
    deployed(clocked_store, attempts=1, backoff_base_s=0.5)
    # no outage grace past the lease: the claim says the script cannot outlive it (outlives_lease_s 0)
    service = make_service(clocked_store, cancel_grace_s=4.0, outage_grace_s=0.0)
    run = service.queue("flaky.sh", ManualTrigger())
    service.claim("w1", [], lease_s=5)
    fake_clock.advance(10)
    (lost,) = service.expire_leases()
    retry = clocked_store.runs.get(clocked_store.runs.get(lost.id).next_attempt)
    assert (retry.not_before - lost.finished_at) == timedelta(seconds=4)
    assert retry.chain_root == run.id and retry.trigger.kind == "retry"


def test_the_default_random_source_keeps_jittered_delays_within_bounds(clocked_store, make_service, fake_clock):
    # given the production random source and a ±50 % jitter on 100 s
    deployed(clocked_store, attempts=1, backoff_base_s=100, jitter=0.5)
    service = make_service(clocked_store)
    delays = []
    for _ in range(30):
        run = service.queue("flaky.sh", ManualTrigger())
        ended = fail(service, run.id)
        retry = clocked_store.runs.get(clocked_store.runs.get(ended.id).next_attempt)
        delays.append((retry.not_before - ended.finished_at).total_seconds())
        fake_clock.set(retry.not_before)
        fail(service, retry.id)
    # then each is within [50, 150] and they are not all the same
    assert all(50 <= d <= 150 for d in delays) and len(set(delays)) > 1


# -- the CLI and the web form ------------------------------------------------------------------------------
@pytest.fixture
def site_with_job(site):
    store = open_store(load_settings(site / "config.json", environ={}))
    store.jobs.record_deployed("hello.sh", commit="0123456789abcdef", blob="b1")
    store.close()
    return site


def test_job_set_takes_the_backoff_options_and_job_show_prints_the_policy(site_with_job):
    result = run_sooner("job", "set", "hello.sh", "--retries", "3", "--backoff-base", "30", "--backoff-factor", "2",
                        "--max-backoff", "100", "--jitter", "0.1", cwd=site_with_job)
    assert result.returncode == 0, result.stderr
    assert "retry=3 retries, 30s × 2^n up to 100s, jitter ±10%" in result.stdout
    shown = run_sooner("job", "show", "hello.sh", cwd=site_with_job).stdout
    assert "retry:     3 retries, 30s × 2^n up to 100s, jitter ±10%  (waits 30s, 60s, 100s)" in shown
    # the old option name still works and leaves the backoff as it was
    assert run_sooner("job", "set", "hello.sh", "--retry", "1", cwd=site_with_job).returncode == 0
    store = open_store(load_settings(site_with_job / "config.json", environ={}))
    assert store.jobs.get("hello.sh").retry == RetryPolicy(1, 30, 2, 100, 0.1)
    store.close()


@pytest.mark.parametrize("args, message", [
    (["--jitter", "nan"], "jitter: must be a finite number from 0 to 1"),
    (["--backoff-base", "1e309"], "backoff_base: must be a finite number from 0 to 86400"),
    (["--backoff-factor", "0.5"], "backoff_factor: must be a finite number from 1 to 10, got 0.5"),
    (["--max-backoff", "-inf"], "max_backoff: must be a finite number"),
    (["--retries", "101"], "101 is not in the range 0<=x<=100"),
    (["--jitter", "lots"], "'lots' is not a valid float"),
])
def test_job_set_refuses_bad_backoff_values_in_one_line(site_with_job, args, message):
    result = run_sooner("job", "set", "hello.sh", *args, cwd=site_with_job)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def web(mock_store, mock_web_app):
    app, _, _ = mock_web_app
    mock_store.jobs.record_deployed("reports/daily.sh", commit="c" * 40, blob="b" * 40)
    return SimpleNamespace(app=app, store=mock_store)


def save(client, **fields):
    form = {"csrf_token": client.csrf, "action": "save", "schedule": "", "timezone": "UTC", "worker": "", "hooks": "",
            "timeout_s": "", "overlap": "skip", "missed": "skip", "retry_attempts": "2", **fields}
    return client.post("/jobs/reports/daily.sh", data=form)


def test_the_job_page_form_sets_and_shows_the_backoff(web):
    client = signed_in(web.app, "admin", "admin-password")
    response = save(client, backoff_base_s="12", backoff_factor="1.5", max_backoff_s="20", jitter="0.25")
    assert response.status_code == 302, response.text
    assert web.store.jobs.get("reports/daily.sh").retry == RetryPolicy(2, 12, 1.5, 20, 0.25)
    page = html.unescape(client.get("/jobs/reports/daily.sh").text)
    assert 'name="backoff_factor" value="1.5"' in page and 'name="jitter" value="0.25"' in page
    assert "2 retries, 12s × 1.5^n up to 20s, jitter ±25%: waits 12s, 18s" in page
    # an emptied field is the default again; a form without the fields leaves them alone
    save(client, backoff_base_s="", backoff_factor="1.5", max_backoff_s="20", jitter="0.25")
    assert web.store.jobs.get("reports/daily.sh").retry.backoff_base_s == 30
    save(client)
    assert web.store.jobs.get("reports/daily.sh").retry == RetryPolicy(2, 30, 1.5, 20, 0.25)


@pytest.mark.parametrize("fields, message", [
    ({"jitter": "2"}, "jitter: must be a finite number from 0 to 1"),
    ({"backoff_factor": "NaN"}, "backoff_factor: must be a finite number from 1 to 10, got &#39;NaN&#39;"),
    ({"max_backoff_s": "a week"}, "max_backoff: must be a finite number from 0 to 604800"),
])
def test_the_job_page_form_refuses_bad_backoff_values_next_to_the_field(web, fields, message):
    client = signed_in(web.app, "admin", "admin-password")
    response = save(client, **fields)
    assert response.status_code == 400
    assert message in response.text
    assert web.store.jobs.get("reports/daily.sh").retry == RetryPolicy()


def test_jitter_math_stays_finite_for_the_largest_settings():
    policy = RetryPolicy(attempts=100, backoff_base_s=86400, backoff_factor=10, max_backoff_s=604800, jitter=1)
    values = [policy.delay_after(n, random=lambda: r) for n, r in itertools.product((1, 50, 100), (0.0, 0.999))]
    assert all(math.isfinite(v) and 0 <= v <= 604800 for v in values)
