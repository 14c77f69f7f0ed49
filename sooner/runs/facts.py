"""What a worker reads about a run's job when the run starts, and reuses when the run ends.

A run's end needs its job (retry policy, overlap, notification rules) and the
jobs hooked to the event it emits (``job:<name>:succeeded``/``failed``). Read
when the run ends, that is two queries per run; read with the job when the run
starts (``store.jobs.with_hooks``: one query), it is none. A short run ends
within :data:`FRESH_S` of that read, and a change made meanwhile (a hook added,
the retry policy changed) applies from the next run, as if it had come a moment
later. A longer run reads both again at its end, so no change older than
``FRESH_S`` is ever missed.

When one look at the queue gives a worker several runs to claim, the facts
of all their jobs come in one query with it (:meth:`JobFacts.read_many`), and
a run claimed from that look within :data:`REUSE_S` starts with them: the
worker read them as it saw the run, as it would otherwise read them a few
milliseconds later. A burst of runs then costs one facts query, not one per run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

from sooner.model import RunStatus

if TYPE_CHECKING:
    from sooner.model import Job
    from sooner.store import Store

FRESH_S = 5.0
REUSE_S = 1.0  # how long facts read with a look at the queue serve the runs claimed from that look


@dataclass(frozen=True)
class JobFacts:
    """A run's job and the jobs hooked to its outcome events, as read at ``read_at`` (monotonic seconds)."""

    job: Job | None
    hooked: dict[str, list[Job]]
    read_at: float = field(default_factory=time.monotonic)

    @classmethod
    def read(cls, store: Store, job: str) -> JobFacts:
        return cls.read_many(store, [job])[job]

    @classmethod
    def read_many(cls, store: Store, jobs: Iterable[str]) -> dict[str, JobFacts]:
        """The facts of each of ``jobs``, in one query."""
        names = list(dict.fromkeys(jobs))
        events = {name: RunStatus.outcome_events(name) for name in names}
        found, hooked = store.jobs.named_with_hooks(names, [event for name in names for event in events[name]])
        read_at = time.monotonic()
        return {name: cls(found.get(name), {event: hooked[event] for event in events[name]}, read_at)
                for name in names}

    def reusable(self, now: float | None = None) -> bool:
        """Whether a run claimed now may start with these facts instead of reading its own (:data:`REUSE_S`)."""
        return (time.monotonic() if now is None else now) - self.read_at <= REUSE_S

    def fresh(self, now: float | None = None) -> bool:
        """Whether the facts may still stand for a read made now."""
        return (time.monotonic() if now is None else now) - self.read_at <= FRESH_S

    def hooked_to(self, event: str) -> list[Job] | None:
        """The jobs hooked to ``event`` if it is one of the run's outcome events and still fresh, else None."""
        return self.hooked.get(event) if self.fresh() else None
