"""Triggers: the interface a new way of starting runs implements, and the stored trigger records.

The interval kind below lives only in this module: one :class:`TimeTrigger`
subclass, one run-trigger record registered with ``@trigger_kind``, and a
copy of the trigger registry handed to the scheduler. Nothing in ``sooner/``
changes for it, which is the point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest

from sooner.config import Settings
from sooner.model import (ApiTrigger, CronTrigger, EventTrigger, Job, ManualTrigger, OtherTrigger, RetryTrigger, Run,
                          Trigger, trigger_from_doc, trigger_kind)
from sooner.scheduling.scheduler import Scheduler
from sooner.scheduling.triggers import (GRACE_S, TRIGGERS, CronSchedule, DueTicks, EventHooks, JobTrigger,
                                        TimeTrigger, TriggerRegistry)

UTC = timezone.utc
T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def at(minute: int = 0, second: float = 0) -> datetime:
    return T0 + timedelta(minutes=minute, seconds=second)


# -- a new kind, defined here only ------------------------------------------------------------
@trigger_kind
@dataclass(frozen=True)
class IntervalTrigger(Trigger):
    """Run record: the job fired because ``every_s`` seconds had passed; ``scheduled_for`` is that moment."""

    type: ClassVar[str] = "interval"
    scheduled_for: datetime | None = None
    every_s: float | None = None
    missed: int | None = None

    def _details(self) -> list[str]:
        parts = [f"every {self.every_s:g}s"] if self.every_s else []
        if self.scheduled_for:
            parts.append(f"{self.scheduled_for:%H:%M:%S}")
        if self.missed:
            parts.append(f"(catch-up for {self.missed} missed)")
        return parts


@dataclass(frozen=True)
class EveryNSeconds(TimeTrigger):
    """Fires every ``every_s`` seconds, counted from when the scheduler first saw it (job field ``every_s``)."""

    kind: ClassVar[str] = "interval"
    every_s: float

    @classmethod
    def for_job(cls, job: Job) -> list[JobTrigger]:
        every = job.extra.get("every_s")
        return [cls(float(every))] if every else []

    def identity(self) -> dict[str, Any]:
        return {"every_s": self.every_s}

    def next_after(self, moment: datetime) -> datetime | None:
        return moment + timedelta(seconds=self.every_s)

    def due(self, cursor: datetime, now: datetime, grace_s: float = GRACE_S) -> DueTicks | None:
        count = math.floor((now - cursor).total_seconds() / self.every_s)
        if count < 1:
            return None
        latest = cursor + timedelta(seconds=count * self.every_s)
        on_time = (latest,) if (now - latest).total_seconds() <= grace_s else ()  # this kind fires the latest only
        missed = count - len(on_time)
        return DueTicks(latest=latest, on_time=on_time, missed_count=missed, missed_capped=False,
                        missed_first=cursor + timedelta(seconds=self.every_s) if missed else None,
                        missed_latest=(latest if not on_time else latest - timedelta(seconds=self.every_s))
                        if missed else None)

    def cause(self, moment: datetime, *, missed: DueTicks | None = None) -> Trigger:
        return IntervalTrigger(scheduled_for=moment, every_s=self.every_s,
                               missed=missed.missed_count if missed else None)


WITH_INTERVAL = TriggerRegistry([*TRIGGERS, EveryNSeconds])


def interval_job(store, name: str = "poll.sh", every_s: float = 25, **settings: Any) -> Job:
    store.jobs.record_deployed(name, commit="c1", blob=f"blob-{name}")
    store.jobs.set_enabled(name, True)
    store.jobs.update_settings(name, {"overlap": "allow", **settings})
    store.collection("jobs").update_one({"_id": name}, {"$set": {"every_s": every_s}})  # no setting for it (yet)
    return store.jobs.get(name)


def drive(schedulers: list[Scheduler], clock, until: datetime, step_s: float = 5) -> list[list[Run]]:
    """Every ``step_s`` up to ``until``, each scheduler ticks once; the runs fired at each moment."""
    moments = []
    while clock.now() <= until:
        moments.append([run for scheduler in schedulers for run in scheduler.tick()])
        clock.advance(step_s)
    return moments


def fired_at(runs: list[Run], kind: str) -> list[datetime]:
    return sorted(run.trigger.scheduled_for for run in runs if run.trigger.kind == kind)


# -- the interval kind through the scheduler ----------------------------------------------------
def test_the_default_registry_is_untouched_by_a_copy_with_one_more_kind():
    assert [kind.kind for kind in TRIGGERS] == ["cron", "event"]
    assert [kind.kind for kind in WITH_INTERVAL] == ["cron", "event", "interval"]
    with pytest.raises(ValueError, match="'interval' is registered already"):
        TriggerRegistry([*WITH_INTERVAL]).register(EveryNSeconds)


def test_an_interval_trigger_fires_every_n_seconds_once_per_moment(clocked_store, fake_clock):
    # given a job that fires every 25 s, and a scheduler that knows the interval kind
    interval_job(clocked_store, every_s=25)
    scheduler = Scheduler(clocked_store, Settings(), triggers=WITH_INTERVAL)

    # when the scheduler ticks every 5 s for two minutes
    per_tick = drive([scheduler], fake_clock, at(2))

    # then it fired at 12:00:25, 12:00:50 … each moment once, in the tick that reached it
    expected = [at(second=25 * n) for n in range(1, 5)]
    assert [fired_at(runs, "interval") for runs in per_tick if runs] == [[moment] for moment in expected]
    runs = clocked_store.runs.list(job="poll.sh")
    assert sorted(run.trigger.scheduled_for for run in runs) == expected
    # and the stored run says what started it, read back as the record class defined here
    first = min(runs, key=lambda run: run.trigger.scheduled_for)
    assert isinstance(first.trigger, IntervalTrigger) and first.trigger.every_s == 25
    assert first.queued_at == at(second=25)
    assert first.trigger.describe() == "interval every 25s 12:00:25"
    assert first.trigger.source == scheduler.name


def test_the_interval_cursor_lives_in_trigger_state_interval_apart_from_the_cron_cursor(clocked_store, fake_clock):
    # given a job with both a cron schedule and an interval
    interval_job(clocked_store, every_s=25, schedule="* * * * *")
    scheduler = Scheduler(clocked_store, Settings(), triggers=WITH_INTERVAL, name="s1")

    # when the scheduler has run for a while
    drive([scheduler], fake_clock, at(1, 10))

    # then each trigger keeps its own cursor: interval under trigger_state.interval, cron in scheduler_state
    stored = clocked_store.collection("jobs").find_one({"_id": "poll.sh"})
    assert stored["trigger_state"] == {"interval": {"every_s": 25, "last_tick_at": at(second=50), "since": T0,
                                                    "by": "s1"}}
    assert stored["scheduler_state"]["last_tick_at"] == at(1)
    assert (stored["scheduler_state"]["schedule"], stored["scheduler_state"]["timezone"]) == ("* * * * *", "UTC")
    assert scheduler.next_due == at(1, 15)  # the interval's 12:01:15 comes before the cron's 12:02


def test_the_cron_schedule_of_the_same_job_still_fires_on_its_own_ticks(clocked_store, fake_clock):
    # given a job with a cron schedule every minute and an interval of 25 s
    interval_job(clocked_store, every_s=25, schedule="* * * * *")
    scheduler = Scheduler(clocked_store, Settings(), triggers=WITH_INTERVAL)

    # when the scheduler ticks every 5 s for three minutes
    fired = [run for runs in drive([scheduler], fake_clock, at(3)) for run in runs]

    # then both kinds fired, each at its own moments
    assert fired_at(fired, "cron") == [at(1), at(2), at(3)]
    assert fired_at(fired, "interval") == [at(second=25 * n) for n in range(1, 8)]
    # and a scheduler without the interval kind fires the cron ticks only
    plain = Scheduler(clocked_store, Settings())
    fake_clock.advance(minutes=1)
    assert [run.trigger.kind for run in plain.tick()] == ["cron"]


def test_a_cron_tick_and_an_interval_tick_at_the_same_moment_both_fire(clocked_store, fake_clock):
    # given a job firing every minute by cron and every 30 s by interval: at 12:01:00 both are due
    interval_job(clocked_store, every_s=30, schedule="* * * * *")
    scheduler = Scheduler(clocked_store, Settings(), triggers=WITH_INTERVAL)

    # when the scheduler ticks every 5 s up to 12:01
    fired = [run for runs in drive([scheduler], fake_clock, at(1)) for run in runs]

    # then each trigger fired its own run, the cron tick as well as the interval's second tick
    assert fired_at(fired, "interval") == [at(second=30), at(1)]
    assert fired_at(fired, "cron") == [at(1)]


def test_two_schedulers_on_one_store_fire_each_interval_moment_once(clocked_store, fake_clock):
    # given one job every 20 s and two schedulers with the interval kind on the same store and clock
    interval_job(clocked_store, every_s=20)
    schedulers = [Scheduler(clocked_store, Settings(), triggers=WITH_INTERVAL, name=f"s{i}") for i in (1, 2)]

    # when both tick at every moment for a minute and a half
    per_tick = drive(schedulers, fake_clock, at(1, 30))

    # then every moment fired exactly once, reported by the scheduler that won it
    expected = [at(second=20 * n) for n in range(1, 5)]
    assert [fired_at(runs, "interval") for runs in per_tick if runs] == [[moment] for moment in expected]
    assert sorted(run.trigger.scheduled_for for run in clocked_store.runs.list()) == expected


def test_a_moment_fired_again_after_a_crash_before_the_cursor_moved_is_rejected_by_the_index(
        clocked_store, fake_clock):
    # given a job every 20 s and a scheduler that fired 12:00:20
    interval_job(clocked_store, every_s=20)
    first = Scheduler(clocked_store, Settings(), triggers=WITH_INTERVAL, name="s1")
    first.tick()
    before = clocked_store.collection("jobs").find_one({"_id": "poll.sh"})["trigger_state"]
    fake_clock.advance(20)
    assert fired_at(first.tick(), "interval") == [at(second=20)]

    # when its cursor is put back, as if it had crashed between inserting the run and saving the cursor
    clocked_store.collection("jobs").update_one({"_id": "poll.sh"}, {"$set": {"trigger_state": before}})
    second = Scheduler(clocked_store, Settings(), triggers=WITH_INTERVAL, name="s2")

    # then another scheduler firing the same moment inserts nothing, and moves the cursor on
    assert second.tick() == []
    assert [run.trigger.scheduled_for for run in clocked_store.runs.list()] == [at(second=20)]
    state = clocked_store.collection("jobs").find_one({"_id": "poll.sh"})["trigger_state"]["interval"]
    assert (state["last_tick_at"], state["by"]) == (at(second=20), "s2")


def test_changing_the_interval_starts_it_again_from_then_and_disabling_forgets_the_cursor(
        clocked_store, fake_clock):
    # given an interval job the scheduler has been firing
    interval_job(clocked_store, every_s=20)
    scheduler = Scheduler(clocked_store, Settings(), triggers=WITH_INTERVAL)
    drive([scheduler], fake_clock, at(second=45))

    # when its interval changes to 60 s at 12:00:50
    clocked_store.collection("jobs").update_one({"_id": "poll.sh"}, {"$set": {"every_s": 60}})

    # then it starts from that moment: nothing until 12:01:50
    assert fired_at([run for runs in drive([scheduler], fake_clock, at(1, 45)) for run in runs], "interval") == []
    assert fired_at(drive([scheduler], fake_clock, at(1, 50))[0], "interval") == [at(1, 50)]

    # when the job is disabled, the next tick forgets its cursor
    clocked_store.jobs.set_enabled("poll.sh", False)
    scheduler.tick()
    assert not clocked_store.collection("jobs").find_one({"_id": "poll.sh"}).get("trigger_state")


def test_an_interval_removed_for_a_while_does_not_count_that_time_as_missed(clocked_store, fake_clock):
    # given an interval job that catches up missed ticks, fired once at 12:00:20
    interval_job(clocked_store, every_s=20, missed="catch_up_once")
    scheduler = Scheduler(clocked_store, Settings(), triggers=WITH_INTERVAL)
    assert fired_at([run for runs in drive([scheduler], fake_clock, at(second=20)) for run in runs],
                    "interval") == [at(second=20)]

    # when its interval is removed for ten minutes (as a cron job's schedule may be), then set again as before
    clocked_store.collection("jobs").update_one({"_id": "poll.sh"}, {"$unset": {"every_s": ""}})
    drive([scheduler], fake_clock, at(10, 20), step_s=60)
    clocked_store.collection("jobs").update_one({"_id": "poll.sh"}, {"$set": {"every_s": 20}})

    # then it starts from then, like a cron schedule set again: no catch-up run for the time it had none
    assert scheduler.tick() == []
    assert [run.trigger.scheduled_for for run in clocked_store.runs.list()] == [at(second=20)]


# -- the built-in kinds through the interface ------------------------------------------------------
def test_a_jobs_triggers_come_from_its_schedule_and_hooks():
    # given a job with a schedule in Berlin and two hooks, and one with neither
    job = Job(name="a.sh", schedule="*/5 * * * *", timezone="Europe/Berlin", hooks=("data-ready", "job:b.sh:failed"))
    bare = Job(name="b.sh")

    # when the registry reads them, then each setting is one trigger of its kind
    assert TRIGGERS.for_job(job) == [CronSchedule("*/5 * * * *", "Europe/Berlin"),
                                     EventHooks(frozenset({"data-ready", "job:b.sh:failed"}))]
    assert TRIGGERS.time_triggers(job) == [CronSchedule("*/5 * * * *", "Europe/Berlin")]
    assert TRIGGERS.event_triggers(job) == [EventHooks(frozenset({"data-ready", "job:b.sh:failed"}))]
    assert TRIGGERS.for_job(bare) == []
    assert WITH_INTERVAL.for_job(Job(name="c.sh", extra={"every_s": 5})) == [EveryNSeconds(5.0)]


def test_a_cron_schedule_names_its_cursor_finds_due_ticks_and_describes_its_runs():
    # given the cron trigger of a job firing every five minutes, with a stored cursor
    state = {"schedule": "*/5 * * * *", "timezone": "UTC", "last_tick_at": at(5)}
    [cron] = TRIGGERS.time_triggers(Job(name="a.sh", schedule="*/5 * * * *", scheduler_state=state))

    # then its cursor is the documented scheduler_state, named "cron", identified by schedule and timezone
    assert (cron.key, cron.identity()) == ("cron", {"schedule": "*/5 * * * *", "timezone": "UTC"})
    assert cron.saved_state(Job(name="a.sh", schedule="*/5 * * * *", scheduler_state=state)) == state
    assert cron.next_after(at(5)) == at(10)
    # and a tick is due on time within the grace, missed after it, and nothing is due in between
    assert cron.due(at(5), at(9)) is None
    assert cron.due(at(5), at(10, GRACE_S)).on_time == (at(10),)
    late = cron.due(at(5), at(20, GRACE_S + 1))
    assert (late.on_time, late.missed_count, late.missed_first, late.missed_latest) == ((), 3, at(10), at(20))
    # and its run records carry the tick, plain or as a catch-up
    assert cron.cause(at(10)) == CronTrigger(scheduled_for=at(10), schedule="*/5 * * * *", timezone="UTC")
    catch_up = cron.cause(at(20), missed=late)
    assert (catch_up.scheduled_for, catch_up.catch_up, catch_up.missed, catch_up.missed_from) == (
        at(20), True, 3, at(10))
    assert catch_up.message == "catch-up for 3 missed tick(s), 2026-01-05 12:10:00 to 2026-01-05 12:20:00 UTC"


def test_event_hooks_match_their_event_names_and_name_the_event_in_the_run_record():
    # given the event trigger of a job hooked to two events
    [hooks] = TRIGGERS.event_triggers(Job(name="load.sh", hooks=("job:extract.sh:succeeded", "go")))

    # then it matches exactly those names
    assert hooks.matches("go") and hooks.matches("job:extract.sh:succeeded")
    assert not hooks.matches("job:extract.sh:failed") and not hooks.matches("g")
    # and the run record names the event, the run and job that emitted it, and who did
    event = {"_id": "e1", "name": "go", "source": {"type": "run", "run": "r1", "job": "extract.sh", "author": "al"}}
    assert hooks.cause(event) == EventTrigger(event="go", event_id="e1", source="r1", source_job="extract.sh",
                                              author="al")
    assert hooks.cause({"_id": "e2", "name": "go", "source": {"type": "cli", "author": "bo"}}) == EventTrigger(
        event="go", event_id="e2", author="bo")


# -- run trigger records: describe and round trips ---------------------------------------------------
RUN_ID = "0123456789abcdef01234567"

RECORDS = [
    (CronTrigger(scheduled_for=T0, schedule="0 * * * *", timezone="UTC", source="host:1"),
     {"type": "cron", "scheduled_for": T0, "schedule": "0 * * * *", "timezone": "UTC", "source": "host:1"},
     "cron 2026-01-05 12:00:00 UTC"),
    (CronTrigger(scheduled_for=T0, catch_up=True, missed=12, missed_from=T0 - timedelta(hours=3),
                 message="catch-up for 12 missed tick(s)"),
     {"type": "cron", "scheduled_for": T0, "catch_up": True, "missed": 12, "missed_from": T0 - timedelta(hours=3),
      "message": "catch-up for 12 missed tick(s)"},
     "cron 2026-01-05 12:00:00 UTC (catch-up for 12 missed)"),
    (CronTrigger(scheduled_for=T0, catch_up=True, missed=1000, missed_capped=True),
     {"type": "cron", "scheduled_for": T0, "catch_up": True, "missed": 1000, "missed_capped": True},
     "cron 2026-01-05 12:00:00 UTC (catch-up for more than 1000 missed)"),
    (ManualTrigger(author="alice"), {"type": "manual", "author": "alice"}, "manual by alice"),
    (ManualTrigger(author="alice", rerun_of=RUN_ID, source_ref="a.sh#41"),
     {"type": "manual", "author": "alice", "rerun_of": RUN_ID, "source_ref": "a.sh#41"},
     "manual (re-run of a.sh#41) by alice"),  # the run's short form, which every command accepts
    (ManualTrigger(author="alice", rerun_of=RUN_ID), {"type": "manual", "author": "alice", "rerun_of": RUN_ID},
     f"manual (re-run of {RUN_ID}) by alice"),  # stored before run numbers: the full id
    (ManualTrigger(), {"type": "manual"}, "manual"),
    (ApiTrigger(author="bot", message="nightly"), {"type": "api", "author": "bot", "message": "nightly"},
     "api by bot"),
    (EventTrigger(event="data-ready", event_id="e1", source=RUN_ID, source_job="extract.sh"),
     {"type": "event", "event": "data-ready", "event_id": "e1", "source": RUN_ID, "source_job": "extract.sh"},
     "event “data-ready” from extract.sh"),
    (EventTrigger(event="go", author="bo"), {"type": "event", "event": "go", "author": "bo"}, "event “go” by bo"),
    (RetryTrigger(source=RUN_ID, previous_status="lost"), {"type": "retry", "source": RUN_ID, "previous_status": "lost"},
     f"retry of {RUN_ID}"),
    (RetryTrigger(source=RUN_ID, source_ref="a.sh#41", previous_status="lost"),
     {"type": "retry", "source": RUN_ID, "source_ref": "a.sh#41", "previous_status": "lost"}, "retry of a.sh#41"),
    (IntervalTrigger(scheduled_for=T0, every_s=25), {"type": "interval", "scheduled_for": T0, "every_s": 25},
     "interval every 25s 12:00:00"),
]


@pytest.mark.parametrize(("record", "stored", "description"), RECORDS,
                         ids=[f"{record.kind}-{i}" for i, (record, _, _) in enumerate(RECORDS)])
def test_a_run_trigger_record_is_stored_read_back_and_described_as_it_was(record, stored, description):
    # when it is stored and read back
    doc = record.to_doc()
    back = trigger_from_doc(doc)

    # then the stored form is the documented one, it reads back as the same record, and describes itself
    assert doc == stored
    assert type(back) is type(record) and back == record and back.to_doc() == stored
    assert record.describe() == back.describe() == description


def test_a_run_record_of_each_built_in_kind_has_its_type():
    kinds = {cls.type for cls in (CronTrigger, ManualTrigger, ApiTrigger, EventTrigger, RetryTrigger)}
    assert kinds == {"cron", "manual", "api", "event", "retry"}
    assert {record.kind for record, _, _ in RECORDS} == kinds | {"interval"}


def test_fields_a_known_kind_does_not_know_survive_a_round_trip():
    # given a manual trigger written by a newer Sooner, with a field this one does not know
    stored = {"type": "manual", "author": "alice", "client_ip": "10.0.0.7"}

    # when it is read and written back
    record = trigger_from_doc(stored)

    # then the known fields are attributes and the unknown one is kept
    assert isinstance(record, ManualTrigger) and record.author == "alice"
    assert record.extra == {"client_ip": "10.0.0.7"}
    assert record.to_doc() == stored


def test_a_stored_trigger_of_an_unknown_type_is_kept_as_it_was():
    # given a run started by a kind this version does not know
    stored = {"type": "carrier_pigeon", "author": "github", "source": "push", "url": "https://example.com/hook",
              "delivery": {"id": 7}}

    # when it is read
    record = trigger_from_doc(stored)

    # then it keeps its type, its common fields and the rest, writes back unchanged and still describes itself
    assert isinstance(record, OtherTrigger)
    assert (record.kind, record.author, record.source) == ("carrier_pigeon", "github", "push")
    assert record.extra == {"url": "https://example.com/hook", "delivery": {"id": 7}}
    assert record.to_doc() == stored
    assert trigger_from_doc(record.to_doc()).to_doc() == stored
    assert record.describe() == "carrier_pigeon by github"
    # and a missing trigger reads as an unknown one rather than failing
    assert trigger_from_doc(None).kind == "unknown"


def test_a_trigger_type_is_registered_once():
    @dataclass(frozen=True)
    class Impostor(Trigger):
        type: ClassVar[str] = "manual"

    with pytest.raises(ValueError, match="'manual' is empty or registered already"):
        trigger_kind(Impostor)
    assert trigger_kind(IntervalTrigger) is IntervalTrigger  # the same class again is fine
    assert isinstance(trigger_from_doc({"type": "manual"}), ManualTrigger)
