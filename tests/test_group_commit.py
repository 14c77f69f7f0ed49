"""Group commit (sooner.store.group): a lone write goes at once; writes that meet one in flight share the next
command; each writer gets its own answer or the error of the command that carried its write. On real threads,
and through the stores that use it (output, events, starts) on the embedded server."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from conftest import released_together, wait_for
from sooner.model import ManualTrigger
from sooner.runs.service import RunService
from sooner.store.group import GroupCommit
from sooner.worker.testing import deploy_files


class HeldWrite:
    """A write function whose first command waits until released; records what each command carried."""

    def __init__(self, fail_first: bool = False) -> None:
        self.commands: list[list[int]] = []
        self.release = threading.Event()
        self.fail_first = fail_first
        self.group: GroupCommit[int, int] | None = None

    def __call__(self, items: list[int]) -> list[int]:
        self.commands.append(list(items))
        if len(self.commands) == 1:
            assert self.release.wait(15)
            if self.fail_first:
                raise ConnectionError("the database did not answer")
        return [item * 10 for item in items]


def writers(group: GroupCommit, items: list[int]) -> tuple[list[threading.Thread], dict[int, object]]:
    answers: dict[int, object] = {}

    def write(item: int) -> None:
        try:
            answers[item] = group.submit(item)
        except Exception as exc:
            answers[item] = exc
    threads = [threading.Thread(target=write, args=(item,)) for item in items]
    return threads, answers


def meet_one_in_flight(write: HeldWrite, later_items: list[int]) -> tuple[dict[int, object], dict[int, object]]:
    """Write 1 (held in flight), then ``later_items`` from threads of their own; release; every answer."""
    group = write.group = GroupCommit(write)
    first, answers = writers(group, [1])
    first[0].start()
    wait_for(lambda: write.commands, message="the first command in flight")
    others, later = writers(group, later_items)
    for thread in others:
        thread.start()
    wait_for(lambda: group.queued == len(later_items), message=f"{len(later_items)} writes queued")
    write.release.set()
    for thread in first + others:
        thread.join(15)
    return answers, later


def test_a_lone_write_is_sent_at_once_and_alone():
    write = HeldWrite()
    write.release.set()
    group = GroupCommit(write)
    assert group.submit(4) == 40
    assert (write.commands, group.commands) == ([[4]], 1)


def test_writes_that_meet_one_in_flight_share_the_next_command_and_each_gets_its_own_answer():
    write = HeldWrite()
    # when three writes arrive while the first is in flight
    answers, later = meet_one_in_flight(write, [2, 3, 4])
    # then they went together in one command, and each writer has its own answer
    assert write.commands[0] == [1] and sorted(write.commands[1]) == [2, 3, 4] and len(write.commands) == 2
    assert ({**answers, **later}) == {1: 10, 2: 20, 3: 30, 4: 40}


def test_the_error_of_a_command_reaches_every_writer_it_carried_and_the_next_command_still_goes():
    write = HeldWrite(fail_first=True)
    answers, later = meet_one_in_flight(write, [2, 3])
    assert isinstance(answers[1], ConnectionError)
    assert later == {2: 20, 3: 30}
    assert write.group is not None and write.group.submit(5) == 50  # nothing is left in flight


def test_a_write_function_that_answers_wrongly_fails_its_writers_not_the_group():
    group: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 answers for 1 writes"):
        group.submit(1)
    with pytest.raises(RuntimeError):
        group.submit(2)


def test_runs_writing_from_many_threads_store_every_chunk_event_and_start_once(embedded_store):
    threads = 8
    deploy_files(embedded_store, {"noop.sh": "#!/bin/sh\nexit 0\n"})
    service = RunService(embedded_store)
    runs = [service.queue("noop.sh", ManualTrigger()) for _ in range(threads)]
    at = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)

    def write(index: int) -> None:
        run = runs[index]
        for seq in range(5):
            embedded_store.output.append(run.id, [(seq, "stdout", f"line {seq} of {index}\n", at)])
        embedded_store.runs.mark_started(run.id, pid=1000 + index, commit="c1", now=at)
        embedded_store.events.record("job:noop.sh:succeeded", {"i": index}, source={"type": "system"}, depth=0,
                                     now=at, event_id=f"event-{index}")
    released_together(threads, write, timeout=30)

    for index, run in enumerate(runs):
        assert embedded_store.output.text(run.id) == "".join(f"line {seq} of {index}\n" for seq in range(5))
        stored = embedded_store.runs.get(run.id)
        assert (stored.pid, stored.started_at) == (1000 + index, at)  # a date, not a string
    events = embedded_store.events.list(limit=100)
    assert sorted(event["_id"] for event in events) == sorted(f"event-{i}" for i in range(threads))
    # an event recorded again (a journal replay) is the stored one
    again = embedded_store.events.record("job:noop.sh:succeeded", {"i": 0}, source={"type": "system"}, depth=0,
                                         now=at, event_id="event-0")
    assert again["replayed"] is True and again["data"] == {"i": 0}
