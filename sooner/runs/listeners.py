"""What follows a finished run: an ordered list of end-of-run listeners, registered in one place.

:class:`~sooner.runs.service.RunService` records a run's end and then calls
every listener of its registry, in order, with a :class:`RunEnded`. The
default registry, :data:`LISTENERS`, holds (in this order):

1. ``retry`` -- a failed, timed-out or lost run is queued again per its job's
   retry policy, as the next attempt of its chain (a lost run's retry also
   waits until its old process is certainly dead, see
   :func:`old_process_grace_s`); one that gets no further attempt goes to
   the Failed view;
2. ``release-waiting`` -- the oldest ``waiting`` run of the job (overlap
   ``queue``) may go now;
3. ``emit-outcome`` -- ``job:<name>:succeeded`` / ``job:<name>:failed`` is
   emitted, which starts the jobs hooked to it;
4. ``notify`` -- the notifications the end calls for (failure with no retry
   following, recovery, success) go into the outbox, which the scheduler
   process's notifier sends (:mod:`sooner.runs.notifier`).

A later feature (poison list, usage counters, SLA checks, fan-in) is
one more listener: ``LISTENERS.register(listener, after="retry")``. A
listener that raises is logged and skipped; the run's end is recorded
already and the other listeners still run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from sooner.model import Job, RetryTrigger, Run, RunStatus

if TYPE_CHECKING:
    from sooner.runs.facts import JobFacts
    from sooner.runs.service import RunService

logger = logging.getLogger(__name__)


@dataclass
class RunEnded:
    """What a listener is told: the finished run as stored, the service, and the time of the end."""

    run: Run
    service: RunService
    now: datetime
    facts: JobFacts | None = None  # what the worker read when the run started (sooner.runs.facts)

    @cached_property
    def job(self) -> Job | None:
        """The run's job (read once, shared by all listeners; the worker's read if fresh); None if it no longer exists."""
        if self.facts is not None and self.facts.fresh():
            return self.facts.job
        return self.service.store.jobs.find(self.run.job)

    def hooked_to(self, event: str) -> list[Job] | None:
        """The jobs hooked to the run's outcome ``event`` as the worker read them, if still fresh (else None: read)."""
        return self.facts.hooked_to(event) if self.facts is not None else None


class EndOfRunListener(Protocol):
    def __call__(self, ended: RunEnded) -> None: ...


class ListenerRegistry:
    """An ordered, named list of end-of-run listeners."""

    def __init__(self, listeners: list[tuple[str, EndOfRunListener]] | None = None) -> None:
        self._listeners: list[tuple[str, EndOfRunListener]] = list(listeners or [])

    def register(self, name: str, listener: EndOfRunListener, *, after: str | None = None,
                 before: str | None = None) -> Callable[[], None]:
        """Add ``listener`` (at the end, or right after/before another one); returns a function that removes it."""
        if name in self.names():
            raise ValueError(f"an end-of-run listener named {name!r} is registered already")
        position = len(self._listeners)
        if after is not None:
            position = self.names().index(after) + 1
        elif before is not None:
            position = self.names().index(before)
        self._listeners.insert(position, (name, listener))
        return lambda: self.unregister(name)

    def unregister(self, name: str) -> None:
        self._listeners = [(n, listener) for n, listener in self._listeners if n != name]

    @contextmanager
    def added(self, name: str, listener: EndOfRunListener, **where: str) -> Iterator[None]:
        """Register ``listener`` for the duration of a ``with`` block (tests, plug-ins)."""
        remove = self.register(name, listener, **where)
        try:
            yield
        finally:
            remove()

    def names(self) -> list[str]:
        return [name for name, _ in self._listeners]

    def copy(self) -> ListenerRegistry:
        return ListenerRegistry(self._listeners)

    def notify(self, ended: RunEnded) -> None:
        """Call every listener in order; one that fails is logged and the others still run."""
        for name, listener in list(self._listeners):
            try:
                listener(ended)
            except Exception:
                logger.exception("run %s: end-of-run listener %r failed", ended.run.id, name)


def retry_per_policy(ended: RunEnded) -> None:
    """Queue the next attempt of a failed/timed-out/lost run, if its job's retry policy allows one.

    A failed run that gets no further attempt (its attempts are used up, its job has no
    retries or is gone) goes to the Failed view instead.
    """
    run, job = ended.run, ended.job
    if not run.status.failed:
        return
    if job is None or job.deleted or not job.retry.allows(run.attempt):
        ended.service.store.failed.mark_failed_view(run.id)
        return
    delay = max(job.retry.delay_after(run.attempt, ended.service.random), old_process_grace_s(ended))
    retry = ended.service.queue_next_attempt(
        run, RetryTrigger(source=run.id, source_ref=run.ref, previous_status=run.status.value),
        not_before=ended.now + timedelta(seconds=delay), now=ended.now)
    if retry is None:
        if ended.service.store.runs.get(run.id).next_attempt is None:  # not started at all: nothing follows
            ended.service.store.failed.mark_failed_view(run.id)
        return
    retrying = (f"retrying as run {retry.ref} (attempt {retry.attempt} of {job.retry.total_attempts}) "
                f"in {delay:.0f}s")
    # Keep why the run ended (lost lease, timeout …) in front of the retry notice.
    ended.service.store.runs.add_note(run.id, f"{run.note}; {retrying}" if run.note else retrying)


def old_process_grace_s(ended: RunEnded) -> float:
    """Seconds a lost run's retry must wait so it never runs beside the run's old process.

    A run is marked lost once its lease has expired, or when its worker restarts under the
    same name (from another host that needs the old heartbeat, and so the lease, to be
    expired). A worker that could not renew a lease keeps the script going through what may
    be a database outage for ``outlives_lease_s`` past the lease's expiry (recorded on the
    run by its claim: the worker's ``outage_grace_s`` less its ``lease_s``), then SIGTERMs
    it and SIGKILLs it ``cancel_grace_s`` later; so that long after ``now`` (which is past
    the lease's expiry) the old process is dead. No wait is needed once a
    worker on the run's host confirmed its processes gone (``process_gone``).
    """
    run = ended.run
    if run.status is not RunStatus.LOST or run.process_gone:
        return 0.0
    return ended.service.settings.cancel_grace_s + (run.outlives_lease_s or 0.0)


def release_waiting(ended: RunEnded) -> None:
    """Let the oldest waiting run of the job go now that this one is over (overlap ``queue``).

    Only a run something waits behind (``has_waiters``, set by :meth:`RunService.queue`) looks.
    """
    if ended.run.has_waiters:
        ended.service.release_waiting(ended.run.job, now=ended.now)


def emit_outcome(ended: RunEnded) -> None:
    """Emit ``job:<name>:succeeded`` or ``job:<name>:failed`` so hooked jobs chain without code."""
    run = ended.run
    outcome = run.status.outcome
    if outcome is None:
        return
    event = RunStatus.outcome_event(run.job, outcome)
    ended.service.emit(
        event, {"run": run.id, "job": run.job, "status": run.status.value, "exit_code": run.exit_code, "data": run.data},
        source={"type": "system", "run": run.id, "job": run.job}, depth=run.depth + 1, now=ended.now,
        hooked=ended.hooked_to(event))


def notify_outcome(ended: RunEnded) -> None:
    """Put the notifications the end calls for into the outbox (:mod:`sooner.runs.notifier` sends them)."""
    from sooner.runs.notifier import enqueue_run_end  # the notifier imports this module

    enqueue_run_end(ended)


# The one place the default listeners are registered, in the order they run.
LISTENERS = ListenerRegistry([
    ("retry", retry_per_policy),
    ("release-waiting", release_waiting),
    ("emit-outcome", emit_outcome),
    ("notify", notify_outcome),
])
