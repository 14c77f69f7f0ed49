"""A cursor that moves every tick is stored about once per ``cursor_store_s``, and the lag costs nothing.

A thousand every-second jobs moved a thousand stored cursors every tick. Now each
job's cursor is stored when it crosses its own boundary of a ``cursor_store_s``
grid (spread by job name), and in between only the scheduler remembers it. These
tests hold the consequences: the stored cursors lag by at most one interval; a
scheduler that takes over from stale cursors, or that resumes beside another one
after a stall, calls no fired tick missed and fires none twice (the runs witness
what was fired); a tick that records something stores at once; a job's dead man's
switch never sees the lag as a tick no scheduler fired.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from sooner.clock import FakeClock
from sooner.config import Settings
from sooner.model import RunStatus
from sooner.model.missed import AlertState, MissReason
from sooner.scheduling import alerts
from sooner.scheduling.scheduler import CURSOR_STORE_S, Scheduler
from sooner.scheduling.triggers import GRACE_S

UTC = timezone.utc
START = datetime(2026, 3, 2, 8, 0, 0, tzinfo=UTC)
JOBS = 10


def make_jobs(store, count: int = JOBS, **settings) -> list[str]:
    names = [f"lag/{i:03d}.sh" for i in range(count)]
    for name in names:
        store.jobs.record_deployed(name, commit="c1", blob=f"blob-{name}")
        store.jobs.set_enabled(name, True)
        store.jobs.update_settings(name, {"schedule": "* * * * * *", "overlap": "allow", **settings})
    return names


def stored_cursors(store, names: list[str]) -> dict[str, datetime]:
    cursors = {}
    for name in names:
        state = store.jobs.get(name).scheduler_state or {}
        cursors[name] = state["last_tick_at"].replace(tzinfo=UTC)
    return cursors


def runs_per_tick(store) -> Counter:
    return Counter((run.job, run.trigger.scheduled_for) for run in store.runs.list(limit=100_000)
                   if run.trigger.type == "cron")


def run_ticks(scheduler: Scheduler, clock: FakeClock, seconds: int) -> None:
    for _ in range(seconds):
        clock.advance(1)
        scheduler.tick()


@pytest.fixture
def store(make_mock_store, fake_clock):
    return make_mock_store(clock=fake_clock)


def test_stored_cursors_lag_by_at_most_one_interval_and_are_written_once_per_interval(store) -> None:
    names = make_jobs(store)
    clock = FakeClock(START)
    scheduler = Scheduler(store, Settings(), clock)
    scheduler.tick()  # takes every cursor (stored at once: a new state)
    writes: Counter[str] = Counter()
    last = stored_cursors(store, names)
    seconds = 30
    for _ in range(seconds):
        clock.advance(1)
        scheduler.tick()
        now = stored_cursors(store, names)
        for name in names:
            assert clock.now() - now[name] <= timedelta(seconds=CURSOR_STORE_S), name
            writes[name] += now[name] != last[name]
        last = now
    assert all(3 <= writes[name] <= seconds / CURSOR_STORE_S + 1 for name in names), writes
    fired = runs_per_tick(store)
    assert len(fired) == JOBS * seconds and set(fired.values()) == {1}
    assert store.missed.list() == []


def _stale_takeover(store, **settings) -> tuple[list[str], FakeClock, dict[str, datetime]]:
    """Jobs fired for a while by one scheduler that then stops, at a moment when some stored cursors lag
    more than the grace (so a scheduler reading them alone would call fired ticks missed)."""
    names = make_jobs(store, **settings)
    clock = FakeClock(START)
    first = Scheduler(store, Settings(), clock, name="first")
    first.tick()
    for _ in range(60):
        clock.advance(1)
        first.tick()
        lag = {name: clock.now() - cursor for name, cursor in stored_cursors(store, names).items()}
        if clock.now() > START + timedelta(seconds=15) and max(lag.values()) > timedelta(seconds=GRACE_S + 1):
            return names, clock, stored_cursors(store, names)
    raise AssertionError("no stored cursor lagged more than the grace")


@pytest.mark.parametrize("missed", ["skip", "catch_up_once"])
def test_a_scheduler_taking_over_stale_cursors_calls_no_fired_tick_missed(store, missed: str) -> None:
    names, clock, _ = _stale_takeover(store, missed=missed)
    before = runs_per_tick(store)
    clock.advance(1)
    second = Scheduler(store, Settings(), clock, name="second")
    fired = second.tick()
    assert store.missed.list() == []
    assert sorted(run.job for run in fired) == sorted(names)  # the new tick, once per job; no catch-up run
    assert all(run.trigger.scheduled_for == clock.now().replace(microsecond=0) for run in fired)
    after = runs_per_tick(store)
    assert set(after.values()) == {1} and len(after) == len(before) + len(names)


def test_a_scheduler_resuming_beside_another_after_a_stall_calls_no_fired_tick_missed(store) -> None:
    names = make_jobs(store)
    clocks = [FakeClock(START), FakeClock(START)]
    schedulers = [Scheduler(store, Settings(), clock, name=f"s{i}") for i, clock in enumerate(clocks)]
    for _ in range(25):  # both fire every tick (the unique index keeps one run per tick)
        for scheduler, clock in zip(schedulers, clocks):
            clock.advance(1)
            scheduler.tick()
    for _ in range(int(GRACE_S) + 3):  # s1 stalls; s0 keeps firing
        clocks[0].advance(1)
        schedulers[0].tick()
    clocks[1].advance(int(GRACE_S) + 3)
    schedulers[1].tick()
    assert store.missed.list() == []
    counts = runs_per_tick(store)
    ticks = 25 + int(GRACE_S) + 3 - 1  # the first tick only takes the cursors
    assert set(counts.values()) == {1} and len(counts) == len(names) * ticks


def test_a_tick_that_records_missed_ticks_stores_the_cursor_at_once(store) -> None:
    names = make_jobs(store)
    clock = FakeClock(START)
    scheduler = Scheduler(store, Settings(), clock)
    run_ticks(scheduler, clock, 3)
    clock.advance(int(GRACE_S) + 3)  # this scheduler stalled: the oldest ticks are missed
    scheduler.tick()
    assert {m.job for m in store.missed.list() if m.reason is MissReason.SCHEDULER_DOWN} == set(names)
    assert set(stored_cursors(store, names).values()) == {clock.now().replace(microsecond=0)}


def test_the_dead_mans_switch_of_a_short_alert_grace_never_sees_the_lag(store) -> None:
    names = make_jobs(store, 4, alert_after_s=2)
    clock = FakeClock(START)
    scheduler = Scheduler(store, Settings(), clock)
    scheduler.tick()
    for _ in range(30):
        clock.advance(1)
        scheduler.tick()
        for run in store.runs.list(limit=100):  # a worker takes every run at once
            if run.status is RunStatus.QUEUED:
                store.runs.finish(run.id, RunStatus.SUCCEEDED, exit_code=0, now=clock.now())
        states = alerts.job_alerts(store, [store.jobs.get(name) for name in names], clock.now())
        assert {state.state for state in states.values()} == {AlertState.OK}, states


def test_a_scheduler_that_stops_stores_the_cursors_it_only_remembered(store) -> None:
    names = make_jobs(store)
    clock = FakeClock(START)
    scheduler = Scheduler(store, Settings(), clock, name="stopping")
    run_ticks(scheduler, clock, 13)
    latest = clock.now().replace(microsecond=0)
    assert min(stored_cursors(store, names).values()) < latest  # some only remembered
    stop = threading.Event()
    stop.set()  # run_forever ticks no more, and stores what it remembers on its way out
    scheduler.run_forever(stop)
    assert set(stored_cursors(store, names).values()) == {latest}
    clock.advance(GRACE_S + 3)
    Scheduler(store, Settings(), clock, name="next").tick()  # a late successor, no runs to ask
    assert {m.first for m in store.missed.list()} == {latest + timedelta(seconds=1)}
