"""The pure rules of load-aware dispatch (sooner.model.dispatch) and of the job settings it adds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sooner.model import Job, Run, Worker
from sooner.model.dispatch import (MAX_SPEED, Candidate, FleetView, InvalidLimit, Sample, can_take, eligible,
                                   fleet_speeds, hold_order, limit_keys, missing_tags, parse_limits, run_fields,
                                   run_requires, should_take, speed_of)
from sooner.model.job_settings import InvalidJobSetting, settings_changes
from sooner.model.waiting import WaitCode, WaitFacts, explain

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)


def online(name: str, capacity: int = 1, running: int = 0, speed: float | None = None, tags=(), age_s: float = 0.0):
    return Worker(name, capacity=capacity, running=tuple(f"r{i}" for i in range(running)), speed=speed,
                  tags=tuple(tags), heartbeat_at=NOW - timedelta(seconds=age_s))


# -- speed --------------------------------------------------------------------------------------
def test_speed_is_the_fleet_median_over_the_workers_own_median_for_the_same_job():
    samples = [Sample("a", "j", 1.0), Sample("a", "j", 1.0), Sample("b", "j", 2.0), Sample("c", "j", 4.0)]
    speeds = fleet_speeds(samples)
    assert speeds == pytest.approx({"a": 2.0, "b": 1.0, "c": 0.5})


def test_speed_combines_jobs_weighted_by_samples_and_ignores_jobs_only_one_worker_ran():
    samples = [Sample("a", "j", 1.0), Sample("b", "j", 1.0),  # even on j
               *[Sample("a", "k", 1.0)] * 3, *[Sample("b", "k", 4.0)] * 3,  # a four times as fast on k
               Sample("a", "solo", 100.0)]
    speeds = fleet_speeds(samples)
    # k: fleet median 2.5 → a 2.5, b 0.625; j: 1 each; weights 3:1
    assert speeds["a"] == pytest.approx(2.5 ** 0.75)
    assert speeds["b"] == pytest.approx(0.625 ** 0.75)


def test_a_worker_with_no_comparable_job_has_no_measured_speed_and_counts_as_average():
    assert fleet_speeds([Sample("a", "j", 1.0)]) == {}
    assert speed_of(Worker("a")) == 1.0
    assert speed_of(Worker("a", speed=float("nan"))) == 1.0
    assert speed_of(Worker("a", speed=1e9)) == MAX_SPEED


def test_a_zero_duration_makes_a_worker_fastest_but_bounded():
    assert fleet_speeds([Sample("a", "j", 0.0), Sample("b", "j", 1.0)])["a"] == pytest.approx(MAX_SPEED)


# -- preference --------------------------------------------------------------------------------
def test_should_take_when_no_faster_free_slot_waits_or_the_hold_passed():
    assert should_take(rank=0, claimable_s=0.0, faster_open=0, hold_s=0.1)
    assert not should_take(rank=0, claimable_s=0.05, faster_open=1, hold_s=0.1)
    assert should_take(rank=0, claimable_s=0.1, faster_open=1, hold_s=0.1)  # never starves past the hold
    assert should_take(rank=2, claimable_s=0.0, faster_open=2, hold_s=0.1)  # faster ones have enough before it


def test_faster_open_slots_count_only_online_faster_eligible_workers_with_room_and_never_oneself():
    view = FleetView.of([
        online("me", capacity=4, speed=1.0),
        online("fast", capacity=3, running=1, speed=2.0),  # 2 free
        online("fast-full", capacity=1, running=1, speed=3.0),
        online("fast-gpu", capacity=1, speed=2.0, tags=("gpu",)),
        online("fast-late", capacity=5, speed=2.0, age_s=60),  # heartbeat overdue: not online
        online("slow", capacity=8, speed=0.5),
    ], NOW, heartbeat_s=2.0)
    assert view.faster_open_slots("me", 1.0, None, ()) == 3
    assert view.faster_open_slots("me", 1.0, None, ("gpu",)) == 1
    assert view.faster_open_slots("me", 1.0, "tag:gpu", ()) == 1
    assert view.faster_open_slots("me", 2.0, None, ()) == 0
    assert view.faster_open_slots("fast", 0.1, None, ()) == 4 + 1 + 8  # its own 2 free slots do not count
    assert view.faster_open_slots("me", 1.0, "worker:slow", ()) == 0


def test_hold_order_leaves_the_oldest_runs_to_faster_free_workers_and_takes_the_rest():
    view = FleetView([online("fast", capacity=2, speed=2.0)])
    me = Worker("me", capacity=4, speed=1.0)
    offers = [Candidate(f"r{i}", queued_at=NOW - timedelta(milliseconds=10)) for i in range(4)]
    assert [c.id for c in hold_order(offers, me, view, NOW, hold_s=0.1)] == ["r2", "r3"]
    # once claimable for the hold, or seen that long by this worker (whatever the clocks say), anyone takes it
    old = [Candidate("r0", queued_at=NOW - timedelta(seconds=1)), *offers[1:]]
    assert [c.id for c in hold_order(old, me, view, NOW, hold_s=0.1)] == ["r0", "r2", "r3"]
    future = [Candidate("r0", queued_at=NOW + timedelta(hours=1)), *offers[1:]]  # queued by a host ahead of us
    assert [c.id for c in hold_order(future, me, view, NOW, 0.1, {"r0": 0.2})] == ["r0", "r2", "r3"]


def test_a_retry_is_claimable_from_its_not_before():
    offer = Candidate("r", queued_at=NOW - timedelta(minutes=5), not_before=NOW - timedelta(seconds=0.05))
    assert offer.claimable_for(NOW) == pytest.approx(0.05)
    assert not Candidate("r", not_before=NOW + timedelta(seconds=1)).due(NOW)


# -- requires ----------------------------------------------------------------------------------
def test_a_worker_needs_every_required_tag():
    assert eligible(["gpu", "eu"], ["eu", "gpu", "big"])
    assert not eligible(["gpu", "eu"], ["gpu"])
    assert missing_tags(["gpu", "eu"], ["gpu"]) == ["eu"]
    assert can_take(Worker("w", tags=("gpu",)), "tag:gpu", ["gpu"])
    assert not can_take(Worker("w", tags=("gpu",)), "worker:other", ["gpu"])


def test_a_run_carries_requires_and_max_concurrent_only_when_set():
    assert run_fields((), None) == {}
    assert run_fields(("gpu",), 2) == {"requires": ["gpu"], "max_concurrent": 2}
    run = Run.from_doc({"_id": "r", "job": "j", "status": "queued", "requires": ["gpu", "eu"]})
    assert run_requires(run.extra) == ("gpu", "eu")


def test_requires_and_max_concurrent_are_validated_where_users_type_them():
    job = Job("j")
    assert settings_changes(job, {"requires": "gpu, eu,gpu"}) == {"requires": ["gpu", "eu"]}
    assert settings_changes(job, {"requires": ""}) == {"requires": []}
    assert settings_changes(job, {"max_concurrent": "2"}) == {"max_concurrent": 2}
    assert settings_changes(job, {"max_concurrent": 0}) == {"max_concurrent": None}
    with pytest.raises(InvalidJobSetting, match="requires: invalid tag 'a b'"):
        settings_changes(job, {"requires": "a b"})
    with pytest.raises(InvalidJobSetting, match="requires: must be a list"):
        settings_changes(job, {"requires": 3})
    with pytest.raises(InvalidJobSetting, match="max_concurrent: must be a whole number"):
        settings_changes(job, {"max_concurrent": 1.5})
    assert Job.from_doc({"_id": "j", "requires": ["gpu"], "max_concurrent": 3}).requires == ("gpu",)


def test_a_run_no_online_worker_has_the_tags_for_says_so():
    run = Run.from_doc({"_id": "r", "job": "j", "status": "queued", "queued_at": NOW, "requires": ["gpu"]})
    facts = WaitFacts(runs={"r": run}, workers=[online("cpu-only", capacity=4, tags=("eu",))], queued=[run])
    reason = explain(run, facts, NOW, heartbeat_s=2.0)
    assert reason.code is WaitCode.NO_WORKER
    assert reason.message == "no eligible worker online for tags gpu"
    facts = WaitFacts(runs={"r": run}, workers=[online("g", capacity=1, tags=("gpu",))], queued=[run])
    assert explain(run, facts, NOW, heartbeat_s=2.0).code is WaitCode.STARTING


# -- concurrency limits ---------------------------------------------------------------------------
def test_limit_keys_are_the_jobs_own_limit_matching_globs_and_required_tags_in_one_order():
    limits = {"backup/*": 2, "tag:gpu": 1, "reports/*": 5}
    offer = Candidate("r", job="backup/db.sh", requires=("gpu",), max_concurrent=3)
    assert limit_keys(offer, limits) == [("backup/*", 2), ("job:backup/db.sh", 3), ("tag:gpu", 1)]
    assert limit_keys(Candidate("r", job="other.sh", target="tag:gpu"), limits) == [("tag:gpu", 1)]
    assert limit_keys(Candidate("r", job="other.sh"), limits) == []


def test_site_limits_name_what_is_wrong():
    assert parse_limits({"backup/*": 2, "tag:gpu": 1}) == {"backup/*": 2, "tag:gpu": 1}
    with pytest.raises(InvalidLimit, match=r"concurrency_limits: backup/\*: must be a whole number"):
        parse_limits({"backup/*": 0})
    with pytest.raises(InvalidLimit, match="must be a whole number"):
        parse_limits({"x": True})
    with pytest.raises(InvalidLimit, match="invalid tag"):
        parse_limits({"tag:a:b": 1})
    with pytest.raises(InvalidLimit, match="must be an object"):
        parse_limits(["backup/*"])
