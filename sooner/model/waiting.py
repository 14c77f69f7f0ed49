"""Why a run that has not started yet waits, and roughly how long: the one rule (issues #11, #12).

:func:`explain` looks at a queued or waiting run with the facts the store gathered once
(:class:`WaitFacts`, ``store.reads.waiting_facts``) and answers a :class:`WaitReason`:

* ``no_worker``: no online worker serves the run's target (the claim rule,
  :func:`sooner.model.target.served_targets` through :meth:`Worker.serves`), so it waits silently
  otherwise: "no worker online for tag 'gpu'";
* ``retry_wait``: a worker could take it, but its ``not_before`` (retry backoff) has not passed;
* ``busy``: every slot of the eligible workers is taken, or runs queued before it take the free
  ones; ``position`` is its place among the due queued runs those workers could take (1 = next);
* ``starting``: a slot is free for it, so a worker should take it within a poll;
* ``overlap``: a ``waiting`` run, behind an earlier run of its job (overlap policy ``queue``).

``eta_s`` is a rough number of seconds until it starts: ``(position − free slots) × median
recent duration of its job / eligible capacity`` (0 when starting, the time left for a retry
wait, None when nothing is known, e.g. no worker or no finished run yet).
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Protocol

from sooner.clock import aware
from sooner.model.dispatch import can_take, run_requires
from sooner.model.job import RetryPolicy
from sooner.model.run import Run
from sooner.model.status import Overlap, RunStatus
from sooner.model.target import ANY_WORKER, TAG_PREFIX, WORKER_PREFIX
from sooner.model.worker import Worker

# The statuses this rule explains: a run not taken by a worker yet.
EXPLAINED = frozenset({RunStatus.QUEUED, RunStatus.WAITING})
# How many of a job's finished runs the estimate uses (their median duration).
RECENT_DURATIONS = 20


class WaitCode(str, Enum):
    """Why a run has not started yet."""

    NO_WORKER = "no_worker"
    BUSY = "busy"
    RETRY_WAIT = "retry_wait"
    OVERLAP = "overlap"
    STARTING = "starting"


@dataclass(frozen=True)
class WaitReason:
    """What the API, the UI and ``sooner run --follow`` say about a run that waits."""

    code: WaitCode
    message: str
    position: int | None = None
    eta_s: float | None = None

    def to_doc(self) -> dict[str, Any]:
        """The JSON form: ``{code, message, position, eta_s, eta_text}`` (``eta_text``: :meth:`short`)."""
        return {"code": self.code.value, "message": self.message, "position": self.position, "eta_s": self.eta_s,
                "eta_text": self.short()}

    def line(self) -> str:
        """The message, with the estimate when it adds one: ``…; position 3 in queue; starts in about 40 s``."""
        if self.code in (WaitCode.BUSY, WaitCode.OVERLAP) and self.eta_s is not None:
            return f"{self.message}; starts in about {seconds_text(self.eta_s)}"
        return self.message

    def short(self) -> str:
        """A table cell: ``no worker``, ``now``, ``retry in 12 s``, ``~40 s``, or ``#3`` (position, no estimate)."""
        if self.code is WaitCode.NO_WORKER:
            return "no worker"
        if self.code is WaitCode.STARTING:
            return "now"
        if self.code is WaitCode.RETRY_WAIT:
            return f"retry in {seconds_text(self.eta_s or 0)}"
        if self.eta_s is not None:
            return f"~{seconds_text(self.eta_s)}"
        return f"#{self.position}" if self.position else "-"


@dataclass(frozen=True)
class WaitFacts:
    """What :func:`explain` needs, read once for any number of runs (``store.reads.waiting_facts``).

    ``runs``: the runs asked about that are queued or waiting (with ``target``, ``not_before``,
    ``attempt``, ``queued_at``); ``queued``: queued runs, oldest ``queued_at`` first, at most a
    bounded number (``queued_complete`` false when more exist); ``running``: running runs (``job``,
    ``number``, ``worker``, ``started_at``); ``waiting``: waiting runs oldest first (read only when
    a waiting run is asked about); ``durations``: per job, recent finished durations; ``retry``:
    per job, its retry policy (jobs of runs on a later attempt).
    """

    runs: Mapping[str, Run] = field(default_factory=dict)
    workers: Sequence[Worker] = ()
    queued: Sequence[Run] = ()
    queued_complete: bool = True
    running: Sequence[Run] = ()
    waiting: Sequence[Run] = ()
    durations: Mapping[str, Sequence[float]] = field(default_factory=dict)
    retry: Mapping[str, RetryPolicy] = field(default_factory=dict)


def explained(run: Run) -> bool:
    """Whether :func:`explain` has something to say about ``run`` (queued or waiting)."""
    return run.status in EXPLAINED


def eligible(workers: Iterable[Worker], target: str | None, now: datetime, heartbeat_s: float,
             requires: Sequence[str] = ()) -> list[Worker]:
    """The online workers that may take a run aimed at ``target`` requiring ``requires`` (the claim rule)."""
    return [w for w in workers if w.online(now, heartbeat_s) and can_take(w, target, requires)]


class FactsReader(Protocol):
    """What gathers :class:`WaitFacts` (``store.reads``)."""

    def waiting_facts(self, run_ids: Iterable[str]) -> WaitFacts: ...


def wait_reasons(reads: FactsReader, runs: Iterable[Run], now: datetime, heartbeat_s: float) -> dict[str, WaitReason]:
    """Why each of ``runs`` that is queued or waiting has not started, by id: what pages, the API and the CLI call.

    Asks ``reads`` for the facts only when one of them is queued or waiting.
    """
    ids = [run.id for run in runs if explained(run)]
    return explain_all(reads.waiting_facts(ids), now, heartbeat_s) if ids else {}


def explain_all(facts: WaitFacts, now: datetime, heartbeat_s: float) -> dict[str, WaitReason]:
    """:func:`explain` for every run of ``facts.runs``, by id."""
    reasons = {}
    for run in facts.runs.values():
        reason = explain(run, facts, now, heartbeat_s)
        if reason is not None:
            reasons[run.id] = reason
    return reasons


def explain(run: Run, facts: WaitFacts, now: datetime, heartbeat_s: float) -> WaitReason | None:
    """Why ``run`` waits (None unless it is queued or waiting). ``heartbeat_s``: the online rule's setting."""
    if run.status is RunStatus.WAITING:
        return _overlap(run, facts, now)
    if run.status is not RunStatus.QUEUED:
        return None
    requires = run_requires(run.extra)
    workers = eligible(facts.workers, run.target, now, heartbeat_s, requires)
    if not workers:
        return WaitReason(WaitCode.NO_WORKER, no_worker_message(run.target, requires))
    if not run.due(now):
        return _retry_wait(run, facts, now)
    capacity = sum(max(w.capacity, 0) for w in workers)
    on = Counter(r.worker for r in facts.running)
    busy = sum(min(max(w.capacity, 0), on[w.name]) for w in workers)
    free = capacity - busy
    ahead = [r for r in facts.queued if r.id != run.id and _before(r, run) and r.due(now)
             and any(can_take(w, r.target, run_requires(r.extra)) for w in workers)]
    position = len(ahead) + 1
    lower_bound = not facts.queued_complete and not any(r.id == run.id for r in facts.queued)
    if position <= free:
        return WaitReason(WaitCode.STARTING, f"about to start: {free} of {capacity} slots free on "
                                             f"{_workers_text(workers)}", position, 0.0)
    median = median_duration(facts.durations.get(run.job, ()))
    eta = (position - free) * median / capacity if median is not None and capacity > 0 else None
    place = f"position {position}{'+' if lower_bound else ''} in queue"
    count = f"{len(workers)} eligible worker{'s' if len(workers) != 1 else ''}"
    if free <= 0:
        who = f"all {count}" if len(workers) > 1 else f"the eligible worker {workers[0].name} is"
        message = f"{who} busy ({busy}/{capacity} slot{'s' if capacity != 1 else ''}); {place}"
    else:
        message = f"{place} ({count}, {busy}/{capacity} slots busy)"
    return WaitReason(WaitCode.BUSY, message, position, eta)


def no_worker_message(target: str | None, requires: Sequence[str] = ()) -> str:
    """``no worker online``, ``… for tag 'gpu'``, ``… named 'w2'`` or ``… named or tagged 'gpu'``.

    A run that requires tags: ``no eligible worker online for tags gpu, eu`` (and its target, if any).
    """
    if requires:
        aimed = "" if target is None or target == ANY_WORKER else f" ({no_worker_message(target)[17:]})"
        return f"no eligible worker online for tags {', '.join(requires)}{aimed}"
    if target is None or target == ANY_WORKER:
        return "no worker online"
    if target.startswith(WORKER_PREFIX):
        return f"no worker online named {target[len(WORKER_PREFIX):]!r}"
    if target.startswith(TAG_PREFIX):
        return f"no worker online for tag {target[len(TAG_PREFIX):]!r}"
    return f"no worker online named or tagged {target!r}"


def median_duration(durations: Iterable[float]) -> float | None:
    """The median of the newest :data:`RECENT_DURATIONS` durations given (newest first), None without any."""
    values = [float(d) for d in list(durations)[:RECENT_DURATIONS] if d is not None and d >= 0]
    return statistics.median(values) if values else None


def seconds_text(seconds: float) -> str:
    """``12 s``, ``3 min``, ``2 h``: a wait in words, rounded up."""
    if seconds < 120:
        return f"{max(0, math.ceil(seconds))} s"
    if seconds < 7200:
        return f"{math.ceil(seconds / 60)} min"
    return f"{math.ceil(seconds / 3600)} h"


def _retry_wait(run: Run, facts: WaitFacts, now: datetime) -> WaitReason:
    left = max(0.0, (aware(run.not_before) - aware(now)).total_seconds()) if run.not_before else 0.0
    if run.attempt > 1:
        policy = facts.retry.get(run.job)
        of = f" of {policy.total_attempts}" if policy and run.attempt <= policy.total_attempts else ""
        message = f"waiting for its retry time (in {seconds_text(left)}, attempt {run.attempt}{of})"
    else:
        message = f"waiting for its start time (in {seconds_text(left)})"
    return WaitReason(WaitCode.RETRY_WAIT, message, None, left)


def _overlap(run: Run, facts: WaitFacts, now: datetime) -> WaitReason:
    busy = [r for r in (*facts.running, *facts.queued) if r.job == run.job and r.id != run.id]
    blocker = busy[0] if busy else None  # running ones first: that is what it waits for
    ahead = [r for r in facts.waiting if r.job == run.job and r.id != run.id and _before(r, run)]
    policy = f"overlap: {Overlap.QUEUE.value}"
    message = (f"waiting behind {blocker.ref} ({policy})" if blocker
               else f"waiting behind an earlier run of {run.job} ({policy})")
    if ahead:
        message += f"; {len(ahead)} earlier waiting run{'s' if len(ahead) != 1 else ''} go first"
    median = median_duration(facts.durations.get(run.job, ()))
    eta = None
    if median is not None:
        elapsed = blocker.duration(now) if blocker is not None and blocker.status is RunStatus.RUNNING else None
        eta = max(0.0, median - (elapsed or 0.0)) + len(ahead) * median
    return WaitReason(WaitCode.OVERLAP, message, len(ahead) + 1, eta)


def _workers_text(workers: Sequence[Worker]) -> str:
    names = ", ".join(w.name for w in workers[:3])
    more = f" and {len(workers) - 3} more" if len(workers) > 3 else ""
    return f"{'workers' if len(workers) != 1 else 'worker'} {names}{more}"


def _before(a: Run, b: Run) -> bool:
    """Whether ``a`` was queued before ``b`` (the claim order: oldest ``queued_at`` first, then id)."""
    floor = datetime.min.replace(tzinfo=timezone.utc)
    first = aware(a.queued_at) if a.queued_at else floor
    second = aware(b.queued_at) if b.queued_at else floor
    return (first, a.id) < (second, b.id)

