"""The notification outbox and its notifier, on mongomock and a fake clock: enqueue at a run's end, idempotent
ids, retries with backoff, failures recorded, the per-target rate limit and its summary, missed ticks."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sooner.model import ManualTrigger, RunStatus
from sooner.model.notify import Notification, NotifyEvent, NotifyState
from sooner.runs.listeners import RunEnded
from sooner.runs.notifier import Notifier, NotifyFailed, enqueue_run_end

TARGET = "json://127.0.0.1:9/hook"


class Receiver:
    """A sender that records what it was asked to send and fails the first ``failures`` times."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[Notification] = []
        self.tries = 0

    def __call__(self, entry: Notification, now) -> None:
        self.tries += 1
        if self.tries <= self.failures:
            raise NotifyFailed("Connection refused")
        self.sent.append(entry)


def deployed(store, name: str = "hello.sh", **settings):
    store.jobs.record_deployed(name, commit="c1", blob=f"blob-{name}")
    store.jobs.set_enabled(name, True)
    return store.jobs.update_settings(name, settings)


def ended(service, status: RunStatus, name: str = "hello.sh"):
    run = service.queue(name, ManualTrigger())
    assert service.claim("w1", [], lease_s=30).id == run.id
    return service.finish(run.id, status, exit_code=0 if status is RunStatus.SUCCEEDED else 1)


@pytest.fixture
def notify_service(clocked_store, make_service):
    deployed(clocked_store, notify=[{"on": ["failure", "recovery"], "to": [TARGET]}])
    return make_service(clocked_store, notify_backoff_s=30.0, notify_attempts=3, notify_rate_per_target=2,
                        notify_rate_window_s=600.0)


def test_a_failed_run_puts_one_entry_in_the_outbox_and_a_replayed_end_adds_none(notify_service, fake_clock):
    # given a job that notifies on failure
    store = notify_service.store
    # when a run fails
    run = ended(notify_service, RunStatus.FAILED)
    # then one pending entry names the run and the target
    entries = store.notifications.for_run(run.id)
    assert [(e.event, e.state, e.target, e.label) for e in entries] == [
        (NotifyEvent.FAILURE, NotifyState.PENDING, TARGET, TARGET)]
    assert entries[0].message.title == f"{run.ref} failed"
    # and the same end told again (a replayed journal) enqueues nothing more
    enqueue_run_end(RunEnded(run=run, service=notify_service, now=fake_clock.now()))
    assert len(store.notifications.for_run(run.id)) == 1


def test_a_success_notifies_nobody_unless_it_follows_a_failure(notify_service):
    store = notify_service.store
    first = ended(notify_service, RunStatus.SUCCEEDED)
    assert store.notifications.for_run(first.id) == []
    ended(notify_service, RunStatus.FAILED)
    recovered = ended(notify_service, RunStatus.SUCCEEDED)
    assert [e.event for e in store.notifications.for_run(recovered.id)] == [NotifyEvent.RECOVERY]


def test_a_failure_that_will_be_retried_is_not_notified(clocked_store, make_service):
    deployed(clocked_store, notify=[{"on": ["failure"], "to": [TARGET]}], retry={"attempts": 1})
    service = make_service(clocked_store)
    run = ended(service, RunStatus.FAILED)
    assert clocked_store.notifications.for_run(run.id) == []


def test_a_failing_target_is_retried_with_backoff_and_then_sent(notify_service, fake_clock):
    # given a failed run's entry and a receiver that refuses twice
    store = notify_service.store
    run = ended(notify_service, RunStatus.FAILED)
    receiver = Receiver(failures=2)
    notifier = Notifier(store, notify_service.settings, fake_clock, send=receiver)
    # when the notifier steps: the first try fails and the entry waits 30 s
    [entry] = notifier.step()
    assert (entry.state, entry.attempts, entry.error) == (NotifyState.PENDING, 1, "Connection refused")
    assert entry.describe() == f"{TARGET} failed (Connection refused), retrying"
    assert notifier.step() == []  # not due yet
    fake_clock.advance(30)
    [entry] = notifier.step()
    assert entry.attempts == 2 and entry.not_before == fake_clock.now() + timedelta(seconds=60)
    fake_clock.advance(59)
    assert notifier.step() == []
    fake_clock.advance(1)
    # then the third try is sent, and recorded with its time
    [entry] = notifier.step()
    assert (entry.state, entry.attempts, entry.sent_at) == (NotifyState.SENT, 3, fake_clock.now())
    assert [e.id for e in receiver.sent] == [entry.id]
    assert store.notifications.for_run(run.id)[0].describe().startswith(f"{TARGET} sent ")


def test_a_target_that_never_answers_is_recorded_failed_after_the_last_attempt(notify_service, fake_clock):
    store = notify_service.store
    run = ended(notify_service, RunStatus.FAILED)
    notifier = Notifier(store, notify_service.settings, fake_clock, send=Receiver(failures=99))
    for _ in range(3):
        notifier.step()
        fake_clock.advance(3600)
    [entry] = store.notifications.for_run(run.id)
    assert (entry.state, entry.attempts) == (NotifyState.FAILED, 3)
    assert entry.describe() == f"{TARGET} failed (Connection refused) after 3 attempts"
    assert notifier.step() == []


def test_a_claimed_entry_is_not_sent_twice(notify_service, fake_clock):
    store = notify_service.store
    ended(notify_service, RunStatus.FAILED)
    [seen] = store.notifications.pending()
    first = Notifier(store, notify_service.settings, fake_clock, send=Receiver())
    assert first.deliver(seen, fake_clock.now()) is not None
    # a second notifier that listed the entry before the first claimed it gets nothing
    second = Receiver()
    assert Notifier(store, notify_service.settings, fake_clock, send=second).deliver(seen, fake_clock.now()) is None
    assert second.sent == []


def test_over_the_rate_limit_entries_are_suppressed_and_then_summarized_once(notify_service, fake_clock):
    # given a limit of 2 per 10 minutes and 5 failures in a row
    store = notify_service.store
    receiver = Receiver()
    notifier = Notifier(store, notify_service.settings, fake_clock, send=receiver)
    for _ in range(5):
        ended(notify_service, RunStatus.FAILED)
        fake_clock.advance(1)
        notifier.step()
    # then 2 were sent and 3 suppressed
    states = sorted(e.state.value for e in _all(store))
    assert states.count(NotifyState.SENT.value) == 2 and states.count(NotifyState.SUPPRESSED.value) == 3
    assert len(receiver.sent) == 2
    # when the window has passed, one summary says how many were suppressed
    fake_clock.advance(600)
    notifier.step()
    assert len(receiver.sent) == 3
    assert receiver.sent[-1].message.title == "3 notifications suppressed"
    notifier.step()
    fake_clock.advance(600)
    notifier.step()
    assert len(receiver.sent) == 3


def _all(store) -> list[Notification]:
    return [entry for entry in (store.notifications.find(doc_id) for doc_id in _ids(store)) if entry]


def _ids(store) -> list[str]:
    runs = store.runs.list(limit=100)
    return [e.id for run in runs for e in store.notifications.for_run(run.id)]


def test_a_missed_tick_is_notified_once(clocked_store, make_service, fake_clock):
    # given a job scheduled every minute, watched with a missed rule, and no scheduler firing it
    deployed(clocked_store, "tick.sh", schedule="* * * * *",
             notify=[{"on": ["missed"], "to": [TARGET]}])
    service = make_service(clocked_store)
    receiver = Receiver()
    notifier = Notifier(clocked_store, service.settings, fake_clock, send=receiver)
    # when time passes beyond the grace of a tick
    fake_clock.advance(300)
    notifier.step()
    # then one notification says the job missed its run, and stepping again adds none for that tick
    assert [e.event for e in receiver.sent] == [NotifyEvent.MISSED]
    assert "was expected at" in receiver.sent[0].message.body
    assert notifier.check_missed(fake_clock.now(), force=True) == 0


def test_the_outbox_repository_behaves_alike_on_every_store(any_store):
    # given two entries of one run, one due later (on mongomock, the embedded server, a real MongoDB)
    from datetime import datetime, timezone

    from sooner.model.notify import Message

    now = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
    repo = any_store.notifications

    def entry(name: str, due: datetime) -> Notification:
        return Notification(id=f"run1/{name}", job="hello.sh", event=NotifyEvent.FAILURE, target=f"json://h/{name}",
                            label=f"json://h/{name}", message=Message("t", "b", {"k": 1}), run="run1",
                            created_at=now, not_before=due)
    later, soon = entry("later", now + timedelta(minutes=5)), entry("soon", now)
    # when they are enqueued twice
    assert repo.enqueue([later, soon]) == 2
    assert repo.enqueue([later, soon]) == 0
    # then pending lists the due one first, and a claim is taken once
    assert [e.id for e in repo.pending()] == ["run1/soon", "run1/later"]
    taken = repo.take(soon, claim="c1", lease_until=now + timedelta(minutes=1))
    assert taken is not None and taken.attempts == 1 and taken.lease_until == now + timedelta(minutes=1)
    assert repo.take(soon, claim="c2", lease_until=now) is None
    repo.record_sent(soon.id, "c1", now=now)
    repo.record_sent(soon.id, "stale-claim", now=now + timedelta(hours=1))  # not the holder: nothing changes
    sent = repo.find(soon.id)
    assert (sent.state, sent.sent_at) == (NotifyState.SENT, now)
    assert repo.sent_times(soon.key, 5) == [now]
    # and a suppressed entry is due for a summary until it is reported
    claimed = repo.take(later, claim="c3", lease_until=now)
    repo.record_suppressed(claimed.id, "c3", now=now)
    assert [e.id for e in repo.unreported_suppressed()] == [later.id]
    repo.mark_reported([later.id])
    assert repo.unreported_suppressed() == []
    assert sorted(e.id for e in repo.for_run("run1")) == ["run1/later", "run1/soon"]
