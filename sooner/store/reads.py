"""Read models: what the web pages, the live hub and the REST API show, each one query the store owns.

``store.reads`` answers with :class:`~sooner.model.Run` values for runs and
plain dicts for events, deploys and output chunks. Every query here is
shaped for the embedded nx-27017 server, which sorts and filters fast only
on single-field indexes (see :mod:`sooner.store.schema`): a job's runs sort
by ``queued_at`` (``job`` + ``queued_at`` is answered from the ``job``
index), every other run list by ``_id``; events page by ``t`` and deploys by
``time``, never by a range on ``_id`` (a collection scan there).

A projected run (``fields=…``) always carries ``_id``, ``job`` and
``status``; the model leaves the other fields at their defaults.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sooner.clock import aware, to_ms
from sooner.model import ApiTrigger, Run, RunStatus
from sooner.model.sample import Sample, SampleKind, downsample, series_of
from sooner.model.trigger import WebhookTrigger
from sooner.model.waiting import WaitFacts, explained
from sooner.store import schema

if TYPE_CHECKING:
    from sooner.store import Store

T = TypeVar("T")

# What a run's status line needs (the live hub, the dashboard, run_summary).
SUMMARY_FIELDS = ("job", "number", "status", "worker", "progress", "queued_at", "started_at", "finished_at", "duration_s",
                  "exit_code", "note", "cancel_requested")
# What a chain of attempts shows of each (store.reads.chain), and at most how many.
CHAIN_FIELDS = (*SUMMARY_FIELDS, "attempt", "chain", "next_attempt", "failed_view", "trigger")
CHAIN_LIMIT = 200
# What the jobs page's last-run and success-rate columns need.
STATS_FIELDS = ("job", "number", "status", "queued_at", "duration_s")
# What the dead man's switch needs of a tick's run (sooner.model.missed.job_alert), and how many queued
# (and waiting) runs it looks at, newest first.
TICK_RUN_FIELDS = {"job": 1, "status": 1, "scheduled_for": 1, "fire_kind": 1, "target": 1, "queued_at": 1}
UNSTARTED_LIMIT = 5000
# Runs as list pages show them: everything but the (possibly large) data.
WITHOUT_DATA = {"data": 0}
# A job's history: neither data nor long trigger messages.
HISTORY_PROJECTION = {"data": 0, "trigger.message": 0}
CHUNK_FIELDS = {"_id": 0, "seq": 1, "stream": 1, "text": 1, "t": 1}
# Longer ``$in`` lists are asked in batches of this many ids.
ID_BATCH = 500
# An output page (the API, the web's JSON pages) carries at most this much JSON of chunks.
OUTPUT_PAGE_BYTES = 1024 * 1024
# Output pages read chunks this many at first, doubling up to MAX_BATCH: enough for pages of small
# chunks in a few queries, while a page of big ones (up to 160K characters each) reads little it drops.
FIRST_BATCH = 8
MAX_BATCH = 512
# What a chunk's JSON carries besides its text: {"seq": …, "stream": "stdout", "text": …}.
CHUNK_JSON_BYTES = 48
# Monitoring charts: a series is read newest first, at most SAMPLE_LIMIT samples (an hour of 5 s samples is 720;
# a long run's newest ones), and merged down to SAMPLE_POINTS; runs per minute counts among the newest RATE_RUNS runs.
SAMPLE_LIMIT = 2000
SAMPLE_POINTS = 400
RATE_RUNS = 5000
# A page of the events one run emitted (the run page, `sooner logs`, the API) holds at most this many.
EMITTED_PAGE = 100
# What the wait rule (sooner.model.waiting) needs of a run, of the queue and of the running runs; how many
# queued, running and waiting runs it reads (oldest first), and how many of a job's newest runs it looks
# at for finished durations (the median of up to RECENT_DURATIONS of them).
WAIT_FIELDS = ("job", "number", "status", "target", "not_before", "attempt", "queued_at", "worker", "started_at",
               "requires")
WAIT_QUEUE_LIMIT = 1000
WAIT_DURATION_RUNS = 50
# At most this many jobs get a duration estimate per waiting_facts call (the dashboard asks about 20 runs),
# and a job's durations are read again after this many seconds.
WAIT_DURATION_JOBS = 20
WAIT_DURATION_CACHE_S = 30.0


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list, newest first; ``next_before`` is what to pass as ``before`` for the next page."""

    items: list[T]
    more: bool
    next_before: datetime | None


@dataclass(frozen=True)
class OutputPage:
    """Output chunks in seq order; ``more``: later ones exist, read them with ``after=next_after``."""

    chunks: list[dict]
    more: bool
    next_after: int


@dataclass(frozen=True)
class Emitted:
    """Events one run emitted, oldest first, and the runs they started (status lines, by id).

    ``more``: later events exist, read them with ``offset=next_offset``.
    """

    events: list[dict]
    runs: dict[str, Run]
    more: bool
    next_offset: int


@dataclass(frozen=True)
class JobUsage:
    """How a job's runs were started: counts by trigger type, by API token and by webhook hook.

    ``tokens`` counts api runs by the token id that started them (None: no token, a signed-in
    session, or a run from before token ids were recorded); ``token_names`` names the tokens that
    still exist; ``hooks`` counts webhook runs by hook name.
    """

    total: int
    triggers: dict[str, int]
    tokens: dict[str | None, int]
    token_names: dict[str, str]
    hooks: dict[str | None, int]


@dataclass(frozen=True)
class RunsPerMinute:
    """Runs finished per minute: (minute's start in epoch seconds, count), oldest first.

    ``capped``: more runs ran in the window than were read, so the counts fall short.
    """

    minutes: list[tuple[int, int]]
    capped: bool


@dataclass(frozen=True)
class DashboardRuns:
    """The dashboard's runs: running (earliest started first), queued (oldest first), the newest ones."""

    running: list[Run]
    queued: list[Run]
    recent: list[Run]


class Reads:
    """Read models of runs, output, events and deploys (``store.reads``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._runs = store.collection(schema.RUNS)
        self._output = store.collection(schema.RUN_OUTPUT)
        self._deploys = store.collection(schema.DEPLOYS)
        self._samples = store.collection(schema.SAMPLES)
        self._durations: dict[str, tuple[float, list[float]]] = {}  # job -> (monotonic time read, durations)

    # -- runs ---------------------------------------------------------------
    def recent_runs(self, limit: int = 15, *, fields: Sequence[str] | None = None) -> list[Run]:
        """The newest ``limit`` runs (by id, i.e. creation), newest first; only ``fields`` if given."""
        return self._find_runs({}, _projection(fields), sort=[("_id", -1)], limit=limit)

    def runs_page(self, *, job: str | None = None, status: RunStatus | str | None = None, limit: int = 50,
                  before: str | None = None, with_data: bool = True) -> list[Run]:
        """Runs newest first, of ``job`` and in ``status`` if given; ``before`` (a run id) pages backwards.

        A job's runs sort by ``queued_at``, the others by ``_id`` (the order
        the embedded server can sort from an index). ``with_data=False``
        leaves out each run's ``data``. ValueError for an unknown status.
        """
        query: dict[str, Any] = {}
        if job:
            query["job"] = job
        if status:
            query["status"] = RunStatus.parse(status).value
        if before:
            query["_id"] = {"$lt": before}
        sort = "queued_at" if job else "_id"
        return self._find_runs(query, None if with_data else WITHOUT_DATA, sort=[(sort, -1)], limit=limit)

    def runs_by_id(self, ids: Iterable[str], fields: Sequence[str] | None = None) -> dict[str, Run]:
        """The runs with these ids that exist, by id; only ``fields`` if given."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, Run] = {}
        for start in range(0, len(wanted), ID_BATCH):
            batch = wanted[start:start + ID_BATCH]
            found.update((run.id, run) for run in self._find_runs({"_id": {"$in": batch}}, _projection(fields)))
        return found

    def job_history(self, name: str, limit: int = 50, *, fields: Sequence[str] | None = None) -> list[Run]:
        """The job's newest runs (by ``queued_at``), without data and trigger messages unless ``fields`` says."""
        if fields is not None:
            return self._find_runs({"job": name}, _projection(fields), sort=[("queued_at", -1)], limit=limit)
        # nx-27017 ignores the nested exclusion: drop the message here too, so every store answers alike.
        return self._find_runs({"job": name}, HISTORY_PROJECTION, sort=[("queued_at", -1)], limit=limit,
                               shape=_without_trigger_message)

    def run_statuses(self, ids: Iterable[str]) -> list[Run]:
        """The status lines (:data:`SUMMARY_FIELDS`) of the runs with these ids that exist."""
        return list(self.runs_by_id(ids, SUMMARY_FIELDS).values())

    def chain(self, run: Run, limit: int = CHAIN_LIMIT) -> list[Run]:
        """Every attempt of ``run``'s chain (its first attempt and all retries), first attempt first.

        Status lines (:data:`SUMMARY_FIELDS`) plus ``attempt``, ``chain``, ``next_attempt``,
        ``failed_view`` and ``trigger``; at most ``limit``. A run from before chains existed
        is a chain of its own.
        """
        root = run.chain_root
        found = {r.id: r for r in self._find_runs({"chain": root}, _projection(CHAIN_FIELDS), limit=limit)}
        if root not in found:  # a first attempt stored before runs carried ``chain``
            found.update(self.runs_by_id([root], CHAIN_FIELDS))
        found.setdefault(run.id, run)
        return sorted(found.values(), key=lambda r: (r.attempt, r.id))[:limit]

    def unstarted_tick_runs(self, fire_kind: str, *, limit: int = UNSTARTED_LIMIT) -> dict[tuple[str, datetime], Run]:
        """Queued and waiting runs fired for a tick by a time trigger of ``fire_kind``, by (job, ``scheduled_for``).

        What the dead man's switch asks of every scheduled job at once: the
        fired ticks no worker took yet. One equality on ``status`` per status
        (its index; the embedded server scans for a date equality), newest
        first, at most ``limit`` each.
        """
        found: dict[tuple[str, datetime], Run] = {}
        for status in (RunStatus.QUEUED, RunStatus.WAITING):
            docs = self.store.retry(lambda: list(self._runs.find(
                {"status": schema.eq(status.value)}, dict(TICK_RUN_FIELDS), sort=[("queued_at", -1)], limit=limit)))
            for doc in docs:
                if doc.get("fire_kind") == fire_kind and isinstance(doc.get("scheduled_for"), datetime):
                    found.setdefault((doc.get("job") or "", doc["scheduled_for"]), Run.from_doc(doc))
        return found

    def tick_runs(self, ticks: Iterable[tuple[str, datetime, str]]) -> dict[tuple[str, datetime, str], Run]:
        """The runs fired for these ``(job, moment, fire_kind)`` ticks, by tick: one query for all of them.

        Equalities on job and date, which the embedded server answers with a scan: for
        rare questions (the scheduler asks once per tick in which overlap=skip dropped fires).
        """
        wanted = {(job, to_ms(aware(moment)), kind): (job, moment, kind) for job, moment, kind in ticks}
        if not wanted:
            return {}
        query = {"job": {"$in": sorted({job for job, _, _ in wanted})},
                 "scheduled_for": {"$in": sorted({moment for _, moment, _ in wanted})}}
        found: dict[tuple[str, datetime, str], Run] = {}
        for doc in self.store.retry(lambda: list(self._runs.find(query, dict(TICK_RUN_FIELDS)))):
            asked = wanted.get((doc["job"], to_ms(aware(doc["scheduled_for"])), doc.get("fire_kind")))
            if asked is not None:
                found[asked] = Run.from_doc(doc)
        return found

    def latest_fire(self, job: str, fire_kind: str, *, after: datetime) -> datetime | None:
        """The latest tick after ``after`` that a time trigger of ``fire_kind`` fired a run of ``job`` for, if any.

        What a scheduler that takes over a cursor stored a few seconds behind asks before it
        calls the ticks since then missed: the runs are the witnesses of the ticks fired.
        """
        doc = self.store.retry(lambda: self._runs.find_one(
            {"job": schema.eq(job), "fire_kind": schema.eq(fire_kind), "scheduled_for": {"$gt": after}},
            {"scheduled_for": 1}, sort=[("scheduled_for", -1)]))
        moment = doc.get("scheduled_for") if doc else None
        return to_ms(aware(moment)) if isinstance(moment, datetime) else None

    def dashboard_runs(self, *, running: int = 100, queued: int = 20, recent: int = 15) -> DashboardRuns:
        """What the dashboard shows: running runs, the oldest queued ones and the newest runs."""
        # Equality on status uses its index; an $in over statuses is a scan on the embedded server.
        busy = self._find_runs({"status": schema.eq(RunStatus.RUNNING.value)}, limit=running)
        waiting = self._find_runs({"status": schema.eq(RunStatus.QUEUED.value)}, sort=[("queued_at", 1)], limit=queued)
        busy.sort(key=lambda run: (run.started_at is None, run.started_at or datetime.min))
        return DashboardRuns(running=busy, queued=waiting, recent=self.recent_runs(recent))

    def waiting_facts(self, run_ids: Iterable[str]) -> WaitFacts:
        """What :func:`sooner.model.waiting.explain` needs about these runs, read once for all of them.

        The asked runs by id (:data:`WAIT_FIELDS`; only the queued and waiting ones are kept), and
        only if there are any: the workers, the queued runs (oldest first, at most
        :data:`WAIT_QUEUE_LIMIT`: one equality on ``status``, sorted by ``queued_at`` as the claim is),
        the running runs, the waiting runs (when a waiting run is asked about), each job's newest
        :data:`WAIT_DURATION_RUNS` runs for their finished durations (one ``job`` equality each, at
        most :data:`WAIT_DURATION_JOBS` jobs), and the retry policy of jobs with a run on a later
        attempt. Five queries for one queued run; never part of an ETag answer.
        """
        asked = {run.id: run for run in self.runs_by_id(run_ids, WAIT_FIELDS).values() if explained(run)}
        if not asked:
            return WaitFacts()
        wanted = {"_id": 1, **{name: 1 for name in WAIT_FIELDS}}

        def by_status(status: RunStatus, sort: list[tuple[str, int]] | None) -> list[Run]:
            return self._find_runs({"status": schema.eq(status.value)}, wanted, sort=sort, limit=WAIT_QUEUE_LIMIT + 1)

        queued = by_status(RunStatus.QUEUED, [("queued_at", 1)])
        running = by_status(RunStatus.RUNNING, None)
        waiting = (by_status(RunStatus.WAITING, [("queued_at", 1)])
                   if any(run.status is RunStatus.WAITING for run in asked.values()) else [])
        jobs = list(dict.fromkeys(run.job for run in asked.values()))[:WAIT_DURATION_JOBS]
        durations = {job: self._recent_durations(job) for job in jobs}
        retry = {}
        for job in dict.fromkeys(run.job for run in asked.values() if run.attempt > 1):
            found = self.store.jobs.find(job)
            if found is not None:
                retry[job] = found.retry
        return WaitFacts(runs=asked, workers=self.store.workers.list(), queued=queued[:WAIT_QUEUE_LIMIT],
                         queued_complete=len(queued) <= WAIT_QUEUE_LIMIT, running=running, waiting=waiting,
                         durations=durations, retry=retry)

    def _recent_durations(self, job: str) -> list[float]:
        """The finished durations among the job's newest :data:`WAIT_DURATION_RUNS` runs, newest first.

        Kept for :data:`WAIT_DURATION_CACHE_S`: a median moves slowly, and the dashboard asks every
        half second (one query per job, ~2-4 ms each on the embedded server at 20,000 runs).
        """
        now = self.store.clock.monotonic()
        cached = self._durations.get(job)
        if cached is not None and now - cached[0] < WAIT_DURATION_CACHE_S:
            return cached[1]
        found = [run.duration_s for run in self._find_runs(
            {"job": job}, {"duration_s": 1, "job": 1, "status": 1}, sort=[("queued_at", -1)], limit=WAIT_DURATION_RUNS)
            if run.duration_s is not None and run.finished]
        if len(self._durations) > 10_000:  # a bound, not an eviction policy: jobs are few
            self._durations.clear()
        self._durations[job] = (now, found)
        return found

    def job_usage(self, job: str, since: datetime | None = None) -> JobUsage:
        """How ``job``'s runs (created at ``since`` or later, if given) were started: see :class:`JobUsage`.

        A ``$group`` on one field per question (trigger type; then the token of api runs and the
        hook of webhook runs, only when there are such runs), since nx-27017 groups by one field
        path only (a document ``_id`` of the group stays a literal). ``since`` matches on the run's
        ``_id`` (an ObjectId, whose first bytes are its creation time): nx-27017's ``$match`` in an
        aggregation ignores a date range.
        """
        match: dict[str, Any] = {"job": job}
        if since is not None:
            match["_id"] = {"$gte": _first_id_at(since)}

        def grouped(path: str, **extra: Any) -> dict[Any, int]:
            pipeline = [{"$match": {**match, **extra}}, {"$group": {"_id": f"${path}", "n": {"$sum": 1}}}]
            return {doc["_id"]: int(doc["n"]) for doc in self.store.retry(lambda: list(self._runs.aggregate(pipeline)))}

        triggers = {str(kind or "unknown"): n for kind, n in grouped("trigger.type").items()}
        tokens = grouped("trigger.token", **{"trigger.type": ApiTrigger.type}) if triggers.get(ApiTrigger.type) else {}
        hooks = (grouped("trigger.source.hook", **{"trigger.type": WebhookTrigger.type})
                 if triggers.get(WebhookTrigger.type) else {})
        ids = [token for token in tokens if isinstance(token, str)]
        names = {str(doc["_id"]): str(doc.get("name") or "") for doc in self.store.retry(lambda: list(
            self.store.collection(schema.TOKENS).find({"_id": {"$in": ids}}, {"name": 1})))} if ids else {}
        return JobUsage(total=sum(triggers.values()), triggers=triggers, tokens=tokens, token_names=names, hooks=hooks)

    # -- output ---------------------------------------------------------------
    def output_after(self, run_id: str, after_seq: int = -1, *, limit: int = 1000,
                     max_bytes: int = OUTPUT_PAGE_BYTES) -> OutputPage:
        """The chunks with seq > ``after_seq`` in seq order: at most ``limit``, and at most ``max_bytes``.

        The size is what the chunks weigh as JSON (:func:`chunk_bytes`); a page
        always holds at least one chunk if there is one, so paging by
        ``next_after`` always progresses (a chunk is at most
        :data:`~sooner.store.output.MAX_CHUNK_CHARS`). The chunks are read a
        few at a time, so a page of a huge output never loads more than it keeps.
        """
        kept: list[dict] = []
        size, batch, cursor = 0, FIRST_BATCH, after_seq
        while True:
            want = min(batch, limit - len(kept) + 1)
            docs = self._chunks({"run": run_id, "seq": {"$gt": cursor}}, 1, want)
            for doc in docs:
                weight = chunk_bytes(doc)
                if kept and (len(kept) >= limit or size + weight > max_bytes):
                    return OutputPage(kept, True, kept[-1]["seq"])
                kept.append(doc)
                size += weight
            if len(docs) < want:
                return OutputPage(kept, False, kept[-1]["seq"] if kept else after_seq)
            cursor, batch = docs[-1]["seq"], min(batch * 2, MAX_BATCH)

    def output_tail(self, run_id: str, *, before: int | None = None, limit: int = 400,
                    max_bytes: int | None = None) -> tuple[list[dict], bool]:
        """The run's newest chunks (with seq < ``before`` if given) in seq order, and whether older exist.

        At most ``limit`` chunks and ``max_bytes`` (as :meth:`output_after` counts, and always the newest chunk).
        """
        kept: list[dict] = []
        size, batch, upper = 0, FIRST_BATCH, before
        while True:
            want = min(batch, limit - len(kept) + 1)
            query: dict[str, Any] = {"run": run_id}
            if upper is not None:
                query["seq"] = {"$lt": upper}
            docs = self._chunks(query, -1, want)
            for doc in docs:
                weight = chunk_bytes(doc)
                if kept and (len(kept) >= limit or (max_bytes is not None and size + weight > max_bytes)):
                    kept.reverse()
                    return kept, True
                kept.append(doc)
                size += weight
            if len(docs) < want:
                kept.reverse()
                return kept, False
            upper, batch = docs[-1]["seq"], min(batch * 2, MAX_BATCH)

    def output_removed(self, run: Run, now: datetime) -> bool:
        """Whether the retention removed this run's output: it finished longer ago than that and has no chunks."""
        retention = self.store.output.policy.retention
        if retention is None or not run.finished or run.finished_at is None or run.finished_at > now - retention:
            return False
        return self.store.retry(lambda: self._output.find_one({"run": run.id}, {"_id": 1})) is None

    def output_between(self, run_id: str, after_seq: int, upto: int, *, newest: int = 5000) -> tuple[list[dict], bool]:
        """Chunks with ``after_seq`` < seq <= ``upto`` in seq order, at most the ``newest`` of them.

        The flag says whether older chunks of that range were left out.
        """
        if upto <= after_seq:
            return [], False
        return self._newest_chunks({"run": run_id, "seq": {"$gt": after_seq, "$lte": upto}}, newest)

    # -- events and deploys -----------------------------------------------------
    def events_page(self, *, name: str | None = None, before_t: datetime | None = None,
                    limit: int = 50) -> Page[dict]:
        """A page of events (named ``name`` if given), newest first by ``t``; see :meth:`EventRepo.list`."""
        events = self.store.events.list(name=name, before=before_t, limit=limit + 1)
        return _page(events, limit, "t")

    def emitted_events(self, run_id: str, *, offset: int = 0, limit: int = EMITTED_PAGE) -> Emitted:
        """The events run ``run_id`` emitted (``source.run``; see :meth:`EventRepo.emitted_by`), from ``offset`` on.

        At most ``limit``, oldest first, with the status lines (:data:`SUMMARY_FIELDS`)
        of the runs each one started; an event's ``note`` says why it started none
        (the chain depth limit).
        """
        offset = max(0, offset)
        events = self.store.events.emitted_by(run_id, offset=offset, limit=limit + 1)
        more = len(events) > limit
        events = events[:limit]
        started = self.runs_by_id((rid for event in events for rid in event.get("runs") or []), SUMMARY_FIELDS)
        return Emitted(events, started, more, offset + len(events))

    def deploys_page(self, *, before: datetime | None = None, limit: int = 50) -> Page[dict]:
        """A page of deploys, newest first by ``time``; ``before`` pages back (deploys strictly older)."""
        query = {"time": {"$lt": before}} if before else {}
        deploys = self.store.retry(lambda: list(self._deploys.find(query).sort("time", -1).limit(limit + 1)))
        return _page(deploys, limit, "time")

    # -- monitoring (the workers and run pages' charts) ---------------------------
    def samples(self, kind: SampleKind, key: str, since: datetime | None = None, *, points: int = SAMPLE_POINTS,
                limit: int = SAMPLE_LIMIT) -> list[Sample]:
        """The samples of one series (``kind``, ``key``) taken after ``since``, oldest first, at most ``points``.

        One equality on the indexed ``series`` sorted by ``t``, newest first, at most ``limit``
        (an hour of 5 s samples is 720); ``since`` is checked here, since a date range scans on
        the embedded server. More than ``points`` are merged (:func:`sooner.model.sample.downsample`).
        """
        docs = self.store.retry(lambda: list(self._samples.find({"series": series_of(kind, key)}, {"_id": 0})
                                             .sort("t", -1).limit(limit)))
        found = [sample for doc in docs if (sample := Sample.from_doc(doc)) is not None
                 and (since is None or sample.t > since)]
        found.reverse()
        return downsample(found, points)

    def runs_per_minute(self, since: datetime, now: datetime | None = None, *,
                        limit: int = RATE_RUNS) -> RunsPerMinute:
        """How many runs finished in each minute from ``since``'s to ``now``'s (the store's clock), oldest first.

        Reads the newest ``limit`` runs by ``_id`` (an ObjectId: its time is the run's queue time),
        projected to ``finished_at``, and counts in Python: on the embedded server a sort on
        ``_id`` with a limit is answered from the index, a range on ``finished_at`` scans every
        run. ``capped``: the window held more runs than were read (the counts are low).
        """
        now = now or self.store.clock.now()
        docs = self.store.retry(lambda: list(self._runs.find({}, {"finished_at": 1}).sort("_id", -1).limit(limit)))
        first = _minute(since)
        counts = dict.fromkeys(range(first, _minute(now) + 1, 60), 0)
        for doc in docs:
            finished = doc.get("finished_at")
            if isinstance(finished, datetime) and (minute := _minute(finished)) in counts:
                counts[minute] += 1
        oldest = docs[-1].get("_id") if len(docs) == limit else None
        capped = oldest is not None and str(oldest) >= _first_id_at(since)
        return RunsPerMinute(minutes=sorted(counts.items()), capped=capped)

    # -- helpers ----------------------------------------------------------------
    def _find_runs(self, query: dict[str, Any], projection: dict[str, Any] | None = None, *,
                   sort: list[tuple[str, int]] | None = None, limit: int = 0,
                   shape: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[Run]:
        def find() -> list[Run]:
            # A copy: mongomock adds ``_id`` to the projection it is given, which would change these constants.
            cursor = self._runs.find(query, dict(projection) if projection else None, sort=sort, limit=limit)
            return [Run.from_doc(shape(doc) if shape else doc) for doc in cursor]
        return self.store.retry(find)

    def _chunks(self, query: dict[str, Any], order: int, limit: int) -> list[dict]:
        return self.store.retry(lambda: list(self._output.find(query, dict(CHUNK_FIELDS)).sort("seq", order)
                                             .limit(limit)))

    def _newest_chunks(self, query: dict[str, Any], limit: int) -> tuple[list[dict], bool]:
        docs = self.store.retry(lambda: list(self._output.find(query, dict(CHUNK_FIELDS)).sort("seq", -1)
                                             .limit(limit + 1)))
        more = len(docs) > limit
        docs = docs[:limit]
        docs.reverse()
        return docs, more


def chunk_bytes(chunk: dict[str, Any]) -> int:
    """What a chunk weighs in a JSON answer: its text as JSON encodes it (``\\u00e9``, ``\\n``) and its fields."""
    return len(json.dumps(chunk.get("text", ""))) + CHUNK_JSON_BYTES + len(str(chunk.get("seq", "")))


def _first_id_at(moment: datetime) -> str:
    """The smallest ObjectId (as run ids are stored) made at ``moment`` or later; times past 2106 clamp to its range."""
    seconds = int(moment.timestamp()) if moment.tzinfo else int(moment.replace(tzinfo=timezone.utc).timestamp())
    return f"{min(max(seconds, 0), 2**32 - 1):08x}" + "0" * 16


def _minute(moment: datetime) -> int:
    """The start of ``moment``'s minute in epoch seconds (a naive time is UTC)."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    return int(aware.timestamp()) // 60 * 60


def _projection(fields: Sequence[str] | None) -> dict[str, Any] | None:
    if fields is None:
        return None
    # job and status always: a Run without them would read as a queued run of no job.
    return {"job": 1, "status": 1, **{name: 1 for name in fields}}


def _without_trigger_message(doc: dict[str, Any]) -> dict[str, Any]:
    trigger = doc.get("trigger")
    if isinstance(trigger, dict):
        trigger.pop("message", None)
    return doc


def _page(docs: list[dict], limit: int, key: str) -> Page[dict]:
    more = len(docs) > limit
    docs = docs[:limit]
    return Page(items=docs, more=more, next_before=docs[-1][key] if more and docs else None)
