"""The wait rule (sooner.model.waiting): every reason a run that has not started gives, pure values only."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from sooner.model import Run, RunStatus, Worker
from sooner.model.job import RetryPolicy
from sooner.model.waiting import (WaitCode, WaitFacts, eligible, explain, explain_all, median_duration,
                                  no_worker_message, seconds_text)

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
HEARTBEAT_S = 1.0


def worker(name: str, *, tags: tuple[str, ...] = (), capacity: int = 1, age_s: float = 0.5,
           stopped: bool = False) -> Worker:
    return Worker(name, capacity=capacity, tags=tags, heartbeat_at=NOW - timedelta(seconds=age_s),
                  stopped_at=NOW if stopped else None)


def run(n: int, *, job: str = "a.sh", status: RunStatus = RunStatus.QUEUED, target: str | None = None,
        queued_s_ago: float | None = None, **fields) -> Run:
    ago = queued_s_ago if queued_s_ago is not None else 100 - n
    return Run(id=f"r{n:02d}", job=job, number=n, status=status, target=target,
               queued_at=NOW - timedelta(seconds=ago), **fields)


def facts(asked: list[Run], *, workers=(), queued=(), running=(), waiting=(), durations=None, retry=None,
          complete: bool = True) -> WaitFacts:
    return WaitFacts(runs={r.id: r for r in asked}, workers=list(workers), queued=list(queued), running=list(running),
                     waiting=list(waiting), durations=durations or {}, retry=retry or {}, queued_complete=complete)


@pytest.mark.parametrize(("target", "message"), [
    (None, "no worker online"),
    ("*", "no worker online"),
    ("tag:gpu", "no worker online for tag 'gpu'"),
    ("worker:w2", "no worker online named 'w2'"),
    ("gpu", "no worker online named or tagged 'gpu'"),
])
def test_a_run_no_online_worker_serves_says_so_for_each_target_form(target, message):
    # given a worker that is online but serves other targets, and one tagged gpu that stopped
    the_run = run(1, target=target)
    others = [worker("w1", tags=("cpu",)), worker("w9", tags=("gpu",), stopped=True)]
    if target in (None, "*"):
        others = [worker("w1", age_s=60)]  # its heartbeat is too old to count as online
    # when it is explained
    reason = explain(the_run, facts([the_run], workers=others, queued=[the_run]), NOW, HEARTBEAT_S)
    # then it is flagged, not left waiting silently
    assert reason is not None and reason.code is WaitCode.NO_WORKER
    assert reason.message == message == no_worker_message(target)
    assert reason.position is None and reason.eta_s is None


def test_eligible_follows_the_claim_rule_and_the_online_rule():
    # given workers by name, by tag, stopped and late
    workers = [worker("w1"), worker("gpu-1", tags=("gpu",)), worker("gpu-2", tags=("gpu",), age_s=30),
               worker("w2", stopped=True)]
    # then each target form picks those a claim would let take it
    assert [w.name for w in eligible(workers, "tag:gpu", NOW, HEARTBEAT_S)] == ["gpu-1"]
    assert [w.name for w in eligible(workers, "worker:w1", NOW, HEARTBEAT_S)] == ["w1"]
    assert [w.name for w in eligible(workers, None, NOW, HEARTBEAT_S)] == ["w1", "gpu-1"]
    assert eligible(workers, "worker:w2", NOW, HEARTBEAT_S) == []


def test_a_run_with_a_free_slot_is_starting():
    # given one worker with two slots, one taken
    the_run = run(5)
    busy = run(1, status=RunStatus.RUNNING, worker="w1")
    reason = explain(the_run, facts([the_run], workers=[worker("w1", capacity=2)], queued=[the_run], running=[busy]),
                     NOW, HEARTBEAT_S)
    # then it should be taken within a poll
    assert reason is not None and reason.code is WaitCode.STARTING
    assert reason.position == 1 and reason.eta_s == 0.0
    assert reason.message == "about to start: 1 of 2 slots free on worker w1"


def test_a_run_behind_full_workers_gets_its_position_and_an_eta():
    # given two eligible workers with 2 slots each, all busy, and two due runs queued before it
    # (one aimed at a worker that cannot take ours, one not due yet: neither counts)
    workers = [worker("w1", capacity=2, tags=("a",)), worker("w2", capacity=2, tags=("a",)), worker("other", tags=("x",))]
    running = [run(i, status=RunStatus.RUNNING, worker=w) for i, w in ((1, "w1"), (2, "w1"), (3, "w2"), (4, "w2"))]
    ahead = [run(10, target="tag:a"), run(11, job="b.sh"), run(12, target="tag:x"),
             run(13, target="tag:a", not_before=NOW + timedelta(seconds=30))]
    ours = run(20, target="tag:a")
    later = run(21, target="tag:a")
    reason = explain(ours, facts([ours], workers=workers, queued=[*ahead, ours, later], running=running,
                                 durations={"a.sh": [10.0, 20.0, 30.0]}), NOW, HEARTBEAT_S)
    # then it is third, and waits about 3 × median (20 s) / 4 slots
    assert reason is not None and reason.code is WaitCode.BUSY
    assert reason.message == "all 2 eligible workers busy (4/4 slots); position 3 in queue"
    assert reason.position == 3 and reason.eta_s == pytest.approx(15.0)


def test_one_busy_worker_is_named():
    ours = run(9)
    reason = explain(ours, facts([ours], workers=[worker("w1")], queued=[run(1), ours],
                                 running=[run(0, status=RunStatus.RUNNING, worker="w1")]), NOW, HEARTBEAT_S)
    assert reason is not None and reason.message == "the eligible worker w1 is busy (1/1 slot); position 2 in queue"


def test_free_slots_taken_by_earlier_runs_leave_it_queued_without_a_known_duration():
    # given one free slot and two runs queued before ours; no finished run of its job yet
    ours = run(9)
    queued = [run(1), run(2), ours]
    reason = explain(ours, facts([ours], workers=[worker("w1", capacity=2)], queued=queued,
                                 running=[run(0, status=RunStatus.RUNNING, worker="w1")]), NOW, HEARTBEAT_S)
    # then it says where it is, and no ETA is made up
    assert reason is not None and reason.code is WaitCode.BUSY
    assert reason.message == "position 3 in queue (1 eligible worker, 1/2 slots busy)"
    assert reason.eta_s is None


def test_a_position_beyond_the_read_queue_is_a_lower_bound():
    ours = run(50)
    reason = explain(ours, facts([ours], workers=[worker("w1")], queued=[run(1), run(2)], complete=False,
                                 running=[run(0, status=RunStatus.RUNNING, worker="w1")]), NOW, HEARTBEAT_S)
    assert reason is not None and "position 3+ in queue" in reason.message


def test_a_retry_waits_for_its_time_and_names_its_attempt():
    # given a second attempt due in 12 s of a job allowing 3 attempts in all
    ours = run(3, attempt=2, not_before=NOW + timedelta(seconds=11.2))
    reason = explain(ours, facts([ours], workers=[worker("w1")], queued=[ours],
                                 retry={"a.sh": RetryPolicy(attempts=2)}), NOW, HEARTBEAT_S)
    # then
    assert reason is not None and reason.code is WaitCode.RETRY_WAIT
    assert reason.message == "waiting for its retry time (in 12 s, attempt 2 of 3)"
    assert reason.eta_s == pytest.approx(11.2)


def test_a_manual_retry_beyond_the_policy_shows_only_its_attempt_number():
    ours = run(3, attempt=5, not_before=NOW + timedelta(minutes=5))
    reason = explain(ours, facts([ours], workers=[worker("w1")], queued=[ours],
                                 retry={"a.sh": RetryPolicy(attempts=1)}), NOW, HEARTBEAT_S)
    assert reason is not None and reason.message == "waiting for its retry time (in 5 min, attempt 5)"


def test_no_worker_comes_before_the_retry_time():
    ours = run(3, attempt=2, not_before=NOW + timedelta(seconds=5), target="tag:gpu")
    reason = explain(ours, facts([ours], workers=[worker("w1")], queued=[ours]), NOW, HEARTBEAT_S)
    assert reason is not None and reason.code is WaitCode.NO_WORKER


def test_a_waiting_run_names_the_run_it_waits_behind():
    # given a running run of the job (started 4 s ago) and one earlier waiting run
    blocker = run(41, status=RunStatus.RUNNING, worker="w1", started_at=NOW - timedelta(seconds=4))
    earlier = run(42, status=RunStatus.WAITING)
    ours = run(43, status=RunStatus.WAITING)
    reason = explain(ours, facts([ours], workers=[worker("w1")], running=[blocker], waiting=[earlier, ours],
                                 durations={"a.sh": [10.0]}), NOW, HEARTBEAT_S)
    # then
    assert reason is not None and reason.code is WaitCode.OVERLAP
    assert reason.message == "waiting behind a.sh#41 (overlap: queue); 1 earlier waiting run go first"
    assert reason.position == 2 and reason.eta_s == pytest.approx(6.0 + 10.0)


def test_a_waiting_run_whose_blocker_ended_meanwhile_still_says_why():
    ours = run(43, status=RunStatus.WAITING)
    reason = explain(ours, facts([ours], waiting=[ours]), NOW, HEARTBEAT_S)
    assert reason is not None and reason.message == "waiting behind an earlier run of a.sh (overlap: queue)"
    assert reason.eta_s is None


@pytest.mark.parametrize("status", [RunStatus.RUNNING, RunStatus.SUCCEEDED, RunStatus.FAILED])
def test_started_and_finished_runs_have_no_wait_reason(status):
    ours = run(1, status=status)
    assert explain(ours, facts([ours], workers=[worker("w1")]), NOW, HEARTBEAT_S) is None
    assert explain_all(facts([ours], workers=[worker("w1")]), NOW, HEARTBEAT_S) == {}


def test_explain_all_answers_per_run_and_to_doc_is_the_json_shape():
    a, b = run(1, target="tag:gpu"), run(2)
    reasons = explain_all(facts([a, b], workers=[worker("w1")], queued=[a, b]), NOW, HEARTBEAT_S)
    assert reasons[a.id].to_doc() == {"code": "no_worker", "message": "no worker online for tag 'gpu'",
                                      "position": None, "eta_s": None, "eta_text": "no worker"}
    assert reasons[b.id].code is WaitCode.STARTING


def test_the_median_uses_the_newest_durations_and_words_round_up():
    assert median_duration([]) is None
    assert median_duration([1.0] * 20 + [100.0] * 5) == 1.0
    assert median_duration([3.0, 1.0, 2.0]) == 2.0
    assert [seconds_text(s) for s in (0.2, 119.5, 121, 7300)] == ["1 s", "120 s", "3 min", "3 h"]
