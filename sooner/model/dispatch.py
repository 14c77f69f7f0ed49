"""Load-aware dispatch: which worker should take a queued run, and fleet-wide concurrency limits (issue #12).

Claiming stays pull-based and atomic (docs/architecture.md, "Dispatch"): every worker with a free
slot lists the due candidates it may run and takes one with a conditional update. This module
owns the rules that decide, in that worker, whether to take a candidate *now* or to leave it for
a faster worker for a moment:

* :func:`fleet_speeds`: a worker's ``speed`` is how much faster it finishes the same jobs than
  the fleet (median duration of the job over the fleet ÷ the worker's median, combined over jobs
  as a sample-weighted geometric mean; 1.0 = average, unknown = 1.0, > 1 = faster).
* :class:`FleetView`: the online workers as their last heartbeat described them (capacity,
  running, tags, speed), read once per heartbeat; :meth:`FleetView.faster_open_slots` counts the
  free slots of workers faster than this one that may take a run.
* :func:`should_take`: a worker takes the candidate of rank ``k`` (0 = the oldest it may take)
  when ``k`` is at least the number of faster free slots (they have enough runs before it), or
  once the run has been claimable for ``hold_s``. So the fastest workers with room get the oldest
  runs, nobody holds back more than ``hold_s``, and a worker with room never idles while more runs
  wait than faster workers could take.
* :func:`eligible`: a run's ``requires`` tags must all be the worker's tags (the claim filter).
* :func:`limit_keys`: the fleet-wide concurrency limits a run counts against: its job's
  ``max_concurrent`` and the site's ``concurrency_limits`` (``{"backup/*": 2, "tag:gpu": 1}``).
"""

from __future__ import annotations

import bisect
import fnmatch
import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sooner.model.run import due_by, ready_for_s
from sooner.errors import SoonerError
from sooner.model.target import TAG_PREFIX
from sooner.model.worker import Worker

# A speed is kept within these bounds: one odd sample must not make a worker look 1000× faster.
MIN_SPEED, MAX_SPEED = 0.05, 20.0
# How many recent durations of one job on one worker (and over the fleet) a speed uses.
RECENT_PER_JOB = 20
# The largest concurrency limit anyone means; more is a typo.
MAX_LIMIT = 10_000
# Limit keys: a job's own limit, and a tag limit of the site's concurrency_limits.
JOB_LIMIT_PREFIX = "job:"


class InvalidLimit(SoonerError, ValueError):
    """A concurrency limit (site setting or job setting) is not valid."""


class LimitReached(SoonerError):
    """A run cannot start now: a fleet-wide concurrency limit it counts against is full."""

    def __init__(self, candidate: Candidate, key: str, limit: int) -> None:
        self.candidate, self.key, self.limit = candidate, key, limit
        super().__init__(f"run {candidate.id} of {candidate.job} waits: concurrency limit {key} (at most {limit}) "
                         f"is full")


@dataclass(frozen=True)
class Candidate:
    """A queued run as a claim sees it: what the candidates query projects, nothing more."""

    id: str
    job: str = ""
    target: str | None = None
    queued_at: datetime | None = None
    not_before: datetime | None = None
    requires: tuple[str, ...] = ()
    max_concurrent: int | None = None

    # The fields the candidates query asks for.
    FIELDS = ("job", "target", "queued_at", "not_before", "requires", "max_concurrent")

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Candidate:
        limit = doc.get("max_concurrent")
        return cls(id=str(doc["_id"]), job=doc.get("job") or "", target=doc.get("target"),
                   queued_at=doc.get("queued_at"), not_before=doc.get("not_before"),
                   requires=tuple(doc.get("requires") or ()),
                   max_concurrent=limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
                   else None)

    def due(self, now: datetime) -> bool:
        """Whether it may start at ``now`` (a retry waits for its ``not_before``)."""
        return due_by(self.not_before, now)

    def claimable_for(self, now: datetime) -> float:
        """Seconds since it could first be claimed (queued, or its retry time); 0 when unknown or in the future."""
        return ready_for_s(self.queued_at, self.not_before, now)


def run_fields(requires: Sequence[str], max_concurrent: int | None) -> dict[str, Any]:
    """What a new run carries from its job for dispatch (written only when set, so other runs look as before)."""
    fields: dict[str, Any] = {}
    if requires:
        fields["requires"] = list(requires)
    if max_concurrent:
        fields["max_concurrent"] = max_concurrent
    return fields


def run_requires(extra: Mapping[str, Any]) -> tuple[str, ...]:
    """The tags a stored run requires (its ``requires`` field, kept in :attr:`Run.extra`)."""
    value = extra.get("requires")
    return tuple(str(tag) for tag in value) if isinstance(value, (list, tuple)) else ()


# -- eligibility -------------------------------------------------------------------------------
def eligible(requires: Iterable[str], tags: Iterable[str]) -> bool:
    """Whether a worker with ``tags`` may run something that ``requires`` these tags (all of them)."""
    return set(requires) <= set(tags)


def missing_tags(requires: Iterable[str], tags: Iterable[str]) -> list[str]:
    """The required tags a worker with ``tags`` lacks, in the order required."""
    have = set(tags)
    return [tag for tag in requires if tag not in have]


def can_take(worker: Worker, target: str | None, requires: Iterable[str]) -> bool:
    """The whole claim rule for one worker: it serves ``target`` and has every required tag."""
    return worker.serves(target) and eligible(requires, worker.tags)


# -- speed -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One finished run's duration: which worker ran which job for how long (seconds)."""

    worker: str
    job: str
    duration_s: float


def fleet_speeds(samples: Iterable[Sample]) -> dict[str, float]:
    """Every sampled worker's speed (1.0 = the fleet's average, 2.0 = finishes the same jobs in half the time).

    ``samples`` are recent finished runs, newest first; per (worker, job) the newest
    :data:`RECENT_PER_JOB` count. Per job, a worker's ratio is the fleet's median of the per-worker
    medians over its own median (so a worker that runs a job 1,000 times does not define "average"
    for it); ratios combine as a geometric mean weighted by the worker's samples of each job. Jobs
    only one worker ran say nothing about speed and are left out; a worker without any comparable
    job is not in the answer (callers use 1.0).
    """
    own: dict[tuple[str, str], list[float]] = defaultdict(list)
    for sample in samples:
        values = own[(sample.worker, sample.job)]
        if len(values) < RECENT_PER_JOB and math.isfinite(sample.duration_s) and sample.duration_s >= 0:
            values.append(sample.duration_s)
    medians: dict[str, dict[str, float]] = defaultdict(dict)  # job -> worker -> median duration
    for (worker, job), values in own.items():
        if values:
            medians[job][worker] = statistics.median(values)
    logs: dict[str, list[tuple[float, int]]] = defaultdict(list)  # worker -> (log ratio, weight)
    for job, by_worker in medians.items():
        if len(by_worker) < 2:
            continue
        fleet = statistics.median(by_worker.values())
        for worker, median in by_worker.items():
            ratio = (fleet / median) if median > 0 else MAX_SPEED if fleet > 0 else 1.0
            logs[worker].append((math.log(_bounded(ratio)), len(own[(worker, job)])))
    return {worker: _bounded(math.exp(sum(v * w for v, w in pairs) / sum(w for _, w in pairs)))
            for worker, pairs in logs.items()}


def _bounded(speed: float) -> float:
    return min(MAX_SPEED, max(MIN_SPEED, speed)) if math.isfinite(speed) else 1.0


def speed_of(worker: Worker) -> float:
    """The speed the worker advertised in its heartbeat (1.0 when it has none or it is not a sane number)."""
    value = worker.speed
    return _bounded(float(value)) if isinstance(value, (int, float)) and value > 0 else 1.0


# -- the preference rule -------------------------------------------------------------------------
@dataclass
class FleetView:
    """The workers as one read of ``workers`` saw them (once per heartbeat), for :func:`should_take`.

    Only online workers count (:meth:`Worker.online`). A worker's free slots are its capacity
    minus the runs it reported in its last heartbeat, so they may be stale by up to a heartbeat:
    that is why a hold is bounded by ``hold_s`` and never by the view.
    """

    workers: Sequence[Worker] = ()
    # (target, requires) -> the eligible workers' speeds ascending, and the free slots at or above each.
    _groups: dict[tuple[str | None, tuple[str, ...]], tuple[list[float], list[int], dict[str, tuple[float, int]]]] = \
        field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, workers: Iterable[Worker], now: datetime, heartbeat_s: float) -> FleetView:
        return cls([w for w in workers if w.online(now, heartbeat_s)])

    def faster_open_slots(self, me: str, my_speed: float, target: str | None, requires: Sequence[str]) -> int:
        """Free slots of online workers faster than ``my_speed`` (not ``me``) that may take such a run."""
        speeds, free_from, by_name = self._group(target, tuple(requires))
        index = bisect.bisect_right(speeds, my_speed)
        faster = free_from[index] if index < len(speeds) else 0
        own = by_name.get(me)
        if own is not None and own[0] > my_speed:  # its own record (speed of the last heartbeat) is no rival
            faster -= own[1]
        return faster

    def _group(self, target: str | None, requires: tuple[str, ...]) -> tuple[list[float], list[int],
                                                                             dict[str, tuple[float, int]]]:
        key = (target, requires)
        if key not in self._groups:
            rows = sorted((speed_of(w), max(0, w.capacity - len(w.running)), w.name) for w in self.workers
                          if can_take(w, target, requires))
            free_from = list(itertools.accumulate((free for _, free, _ in reversed(rows))))[::-1]
            self._groups[key] = ([speed for speed, _, _ in rows], free_from,
                                 {name: (speed, free) for speed, free, name in rows})
        return self._groups[key]


def should_take(rank: int, claimable_s: float, faster_open: int, hold_s: float) -> bool:
    """Whether a worker with a free slot takes its candidate of ``rank`` now (see the module docstring).

    ``rank``: 0 for the oldest due run this worker may take, 1 for the next …; ``claimable_s``: how
    long the run has been claimable; ``faster_open``: :meth:`FleetView.faster_open_slots` for it.
    """
    return claimable_s >= hold_s or rank >= faster_open


def hold_order(candidates: Sequence[Candidate], me: Worker, view: FleetView, now: datetime, hold_s: float,
               seen_s: Mapping[str, float] | None = None) -> list[Candidate]:
    """The candidates ``me`` should try now, in claim order (those it holds back for faster workers left out).

    ``seen_s``: per candidate id, how long ago this worker first saw it (its own monotonic clock), so a
    clock skew between the queuing host and this one can never make a hold longer than ``hold_s``.
    """
    speed = speed_of(me)
    chosen = []
    for rank, candidate in enumerate(candidates):
        waited = max(candidate.claimable_for(now), (seen_s or {}).get(candidate.id, 0.0))
        faster = view.faster_open_slots(me.name, speed, candidate.target, candidate.requires)
        if should_take(rank, waited, faster, hold_s):
            chosen.append(candidate)
    return chosen


# -- concurrency limits --------------------------------------------------------------------------
def parse_limits(value: Any, where: str = "concurrency_limits") -> dict[str, int]:
    """The site's ``concurrency_limits``: ``{"backup/*": 2, "tag:gpu": 1}`` (a job glob or ``tag:TAG`` → max)."""
    if not isinstance(value, Mapping):
        raise InvalidLimit(f"{where}: must be an object of job globs or tag:TAG to a number of runs, "
                           f"e.g. {{\"backup/*\": 2, \"tag:gpu\": 1}}")
    limits = {}
    for key, limit in value.items():
        if not isinstance(key, str) or not key.strip() or len(key) > 200:
            raise InvalidLimit(f"{where}: {key!r} is not a job glob or tag:TAG (1-200 characters)")
        if key.startswith(TAG_PREFIX):
            from sooner.model.job_settings import InvalidJobSetting, validate_worker_name

            try:
                validate_worker_name(key[len(TAG_PREFIX):], f"{where}: {key}", "tag")
            except InvalidJobSetting as exc:
                raise InvalidLimit(str(exc)) from None
        limits[key] = check_limit(limit, f"{where}: {key}")
    return limits


def check_limit(value: Any, where: str) -> int:
    """A number of runs at once: a whole number from 1 to :data:`MAX_LIMIT` (bools and text refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidLimit(f"{where}: must be a whole number of runs from 1 to {MAX_LIMIT}, got {value!r}")
    return value


def limit_keys(candidate: Candidate, site_limits: Mapping[str, int]) -> list[tuple[str, int]]:
    """The limits a run counts against, as (key, max) sorted by key (every claimer takes them in one order).

    Keys: ``job:<name>`` for the job's ``max_concurrent``; a site glob that matches the job name
    (``fnmatch``: ``backup/*``); ``tag:TAG`` when the run requires TAG or is aimed at ``tag:TAG``.
    """
    keys: dict[str, int] = {}
    if candidate.max_concurrent:
        keys[JOB_LIMIT_PREFIX + candidate.job] = candidate.max_concurrent
    for key, limit in site_limits.items():
        if key.startswith(TAG_PREFIX):
            applies = key[len(TAG_PREFIX):] in candidate.requires or candidate.target == key
        else:
            applies = fnmatch.fnmatchcase(candidate.job, key)
        if applies:
            keys[key] = min(limit, keys.get(key, limit))
    return sorted(keys.items())


def slot_ids(key: str, limit: int) -> list[str]:
    """The ``limits`` documents of one limit: one per slot, ``<key>#0`` … ``<key>#<limit-1>``."""
    return [f"{key}#{n}" for n in range(limit)]

