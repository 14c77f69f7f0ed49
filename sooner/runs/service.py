"""The run service: the only code that changes a run's status.

Every way a run starts (cron tick, manual, API, event, retry) goes through
:meth:`RunService.queue`; every way it ends (script exit, cancel, timeout,
lost lease, cancel before it started) goes through :meth:`RunService.finish`,
which records the end and then calls the end-of-run listeners
(:mod:`sooner.runs.listeners`) in order. Claiming (queued → running) and
releasing a waiting run (waiting → queued) are here too. The scheduler, the
worker, the RPC handler, the CLI and the web app all call this; none of them
writes ``status`` itself.

The service takes its time from one :class:`~sooner.clock.Clock` (the
store's unless another is given), so a fake clock drives a whole scenario.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
import random as _random
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sooner.errors import SoonerError
from sooner.model import ACTIVE, Job, ManualTrigger, Overlap, Run, RunStatus, Trigger
from sooner.model.run import RunUsage
from sooner.model import dispatch
from sooner.model.dedupe import key_expired, validate_dedupe_key
from sooner.runs import doorbell
from sooner.runs.events import emit_event
from sooner.runs.listeners import LISTENERS, ListenerRegistry, RunEnded

if TYPE_CHECKING:
    from sooner.clock import Clock
    from sooner.runs.facts import JobFacts
    from sooner.runs.relocate import Moved
    from sooner.model.failed import BulkResult
    from sooner.config import Settings
    from sooner.store import Store

logger = logging.getLogger(__name__)

NOT_STARTED = frozenset({RunStatus.QUEUED, RunStatus.WAITING})


@dataclass(frozen=True)
class Fire:
    """One fire of a job's time trigger for :meth:`RunService.queue_fires`: its run's trigger record, and
    what to call when overlap=skip drops it."""

    job: Job
    trigger: Trigger
    on_skip: Callable[[Job], object] | None = None


class RunService:
    """Starts, claims, cancels and ends runs for one store; see the module docstring."""

    def __init__(self, store: Store, settings: Settings | None = None, clock: Clock | None = None, *,
                 listeners: ListenerRegistry | None = None, random: Callable[[], float] | None = None) -> None:
        from sooner.config import Settings

        self.store = store
        self.settings = settings or Settings()
        self.clock = clock or store.clock
        self.listeners = LISTENERS if listeners is None else listeners
        # Floats in [0, 1) for retry jitter; tests pass a fixed source, as they pass a clock.
        self.random: Callable[[], float] = random or _random.random

    @property
    def depth_limit(self) -> int:
        return self.settings.chain_depth_limit

    # -- starting ------------------------------------------------------------
    def queue(self, job: Job | str, trigger: Trigger, *, data: Any = None, target: str | None = None,
              depth: int = 0, attempt: int = 1, overlap_check: bool = False, not_before: datetime | None = None,
              now: datetime | None = None, chain: str | None = None, run_id: str | None = None,
              on_skip: Callable[[Job], object] | None = None, dedupe_key: str | None = None) -> Run | None:
        """Create a run of ``job`` at the currently deployed commit.

        ``chain`` is the first attempt's id when this run is a later attempt (a first
        attempt is its own chain); ``run_id`` gives the new run's id (see :meth:`retry`).

        With ``overlap_check`` (scheduler and event triggers) the job's overlap
        policy applies: ``skip`` returns None while a run is active (calling
        ``on_skip(job)`` first, so the scheduler can record the dropped tick), ``queue``
        inserts a ``waiting`` run. Returns None too for a cron tick fired already.

        With ``dedupe_key`` (validated: :func:`~sooner.model.dedupe.validate_dedupe_key`), a run of
        the job queued under the same key less than the job's ``dedupe_window_s`` ago is returned
        instead of a new one, with ``deduplicated`` set; race-free across processes
        (:meth:`~sooner.store.runs.RunRepo.insert_holding_key`). A job without a window ignores keys.
        """
        job = self.store.jobs.get(job) if isinstance(job, str) else job
        if job.deleted:
            raise SoonerError(f"job {job.name!r} was removed from the repository; it cannot run")
        stamp = None if now is not None else self.clock.now  # now is meant: queued at the insert itself
        now = now or self.clock.now()
        key, expired = self._dedupe(job, dedupe_key, now)
        if key is not None and (held := self.store.runs.key_holder(job.name, key)) and not expired(held):
            return replace(held, deduplicated=True)  # before the overlap policy: a duplicate is no new fire
        status = RunStatus.QUEUED
        if overlap_check and job.overlap is not Overlap.ALLOW and self.store.runs.active_count(job.name):
            if job.overlap is Overlap.SKIP:
                logger.info("not starting %s: a run is still active (overlap=skip)", job.name)
                if on_skip is not None:
                    on_skip(job)
                return None
            status = RunStatus.WAITING
        new = self._new_run(job, trigger, status, self.store.deploys.latest(), now, data=data, target=target,
                            depth=depth, attempt=attempt, not_before=not_before, chain=chain, run_id=run_id,
                            dedupe_key=key)
        run = (self.store.runs.insert(new, stamp=stamp) if key is None
               else self.store.runs.insert_holding_key(new, expired, stamp=stamp))
        if run is not None and run.deduplicated:
            return run
        if run is not None and status is RunStatus.QUEUED:
            doorbell.ring(self.store)
        if run is not None and status is RunStatus.WAITING:
            self.store.runs.mark_waiters(job.name)  # so the active run's end releases it
            self.release_waiting(job.name, now=now)  # the active run may have ended between check and insert
        return run

    def queue_fires(self, fires: Sequence[Fire]) -> list[Run | None]:
        """Queue the runs of many time-trigger fires at once (one scheduler tick); one answer per fire.

        As :meth:`queue` with ``overlap_check`` answers for each, in a handful of round trips
        for all of them: the latest deploy once, which of the jobs have an active run in one
        query, and the runs in one bulk insert (:meth:`~sooner.store.runs.RunRepo.insert_fires`).
        A fire of an overlap=``queue`` job that has to wait takes :meth:`queue`'s own path.
        Two fires of one job in the list are treated in order: the second sees the first as
        active. Every run's ``queued_at`` is when it was inserted, not when the tick began
        (``trigger.scheduled_for`` holds the tick).
        """
        checked = [fire.job.name for fire in fires if fire.job.overlap is not Overlap.ALLOW]
        active = self.store.runs.active_jobs(checked) if checked else set()
        answers: list[Run | None] = [None] * len(fires)
        batch: list[tuple[int, Run]] = []
        batched: set[str] = set()
        deploy: dict | None = None
        for index, fire in enumerate(fires):
            job = fire.job
            if job.deleted:
                logger.warning("not starting %s: it was removed from the repository", job.name)
                continue
            status = RunStatus.QUEUED
            if job.overlap is not Overlap.ALLOW and (job.name in active or job.name in batched):
                if job.overlap is Overlap.SKIP:
                    logger.info("not starting %s: a run is still active (overlap=skip)", job.name)
                    if fire.on_skip is not None:
                        fire.on_skip(job)
                    continue
                if job.name in active:  # waits behind a stored run, which may end meanwhile: queue() knows
                    answers[index] = self.queue(job, fire.trigger, overlap_check=True, on_skip=fire.on_skip)
                    continue
                status = RunStatus.WAITING  # behind a run of this batch, which its end releases
                batch = [(i, replace(run, has_waiters=True) if run.job == job.name else run) for i, run in batch]
            batched.add(job.name)
            if deploy is None:
                deploy = self.store.deploys.latest() or {}
            batch.append((index, self._new_run(job, fire.trigger, status, deploy, None)))
        runs = [run for _, run in batch]
        for (index, _), run in zip(batch, self.store.runs.insert_fires(runs, stamp=self.clock.now)):
            answers[index] = run
        if any(answers):
            doorbell.ring(self.store, runs=sum(1 for run in answers if run is not None))
        return answers

    def _new_run(self, job: Job, trigger: Trigger, status: RunStatus, deploy: dict | None, now: datetime | None, *,
                 data: Any = None, target: str | None = None, depth: int = 0, attempt: int = 1,
                 not_before: datetime | None = None, chain: str | None = None, run_id: str | None = None,
                 dedupe_key: str | None = None) -> Run:
        """A new run of ``job`` at ``deploy``'s commit, not stored yet (queued_at ``now``)."""
        run_id = run_id or self.store.runs.new_id()
        return Run(
            id=run_id, chain=chain or run_id, job=job.name, status=status, trigger=trigger, data=data,
            commit=deploy.get("commit") if deploy else None, target=target if target is not None else job.worker,
            attempt=attempt, depth=depth, timeout_s=job.timeout_s, queued_at=now, not_before=not_before or now,
            dedupe_key=dedupe_key, extra=dispatch.run_fields(job.requires, job.max_concurrent))

    @staticmethod
    def _dedupe(job: Job, dedupe_key: str | None, now: datetime) -> tuple[str | None, Callable[[Run], bool]]:
        """The key a new run of ``job`` holds (None: none given, or the job has no window) and when a holder expired."""
        if dedupe_key is not None:
            validate_dedupe_key(dedupe_key)
        window = job.dedupe_window_s or 0.0
        return (dedupe_key if window else None), lambda held: key_expired(held.queued_at, window, now)

    def queue_next_attempt(self, run: Run, trigger: Trigger, *, not_before: datetime | None = None,
                           now: datetime | None = None) -> Run | None:
        """Queue the attempt after ``run`` (same data, target and depth; same chain) and link it as its next one.

        The link is taken first, atomically, so a run gets at most one next attempt however
        many retries race (the retry listener, ``sooner retry``, the Failed view). Returns
        None when ``run`` has a next attempt already, or the new run was not started.
        """
        now = now or self.clock.now()
        new_id = self.store.runs.new_id()
        previous = self.store.failed.link_next_attempt(run.id, new_id)
        if previous is None:
            return None
        try:
            new = self.queue(run.job, trigger, data=run.data, target=run.target, depth=run.depth,
                             attempt=run.attempt + 1, not_before=not_before, now=now, chain=run.chain_root,
                             run_id=new_id)
        except BaseException:
            self.store.failed.unlink_next_attempt(run.id, new_id, failed_view=previous.failed_view)
            raise
        if new is None:
            self.store.failed.unlink_next_attempt(run.id, new_id, failed_view=previous.failed_view)
        return new

    def retry(self, run_id: str, *, by: str, source: str = "cli", now: datetime | None = None) -> Run:
        """Queue a new attempt of a failed, timed-out or lost run now, by hand (``sooner retry``, the Failed view).

        The new run is a manual run (``rerun_of`` the run) in the run's chain, attempt + 1.
        SoonerError if the run did not fail or has a next attempt already.
        """
        run = self.store.runs.get(run_id)
        if not run.status.unsuccessful:
            raise SoonerError(f"run {run.id} is {run.status.value}: only failed, timed-out, lost or poison runs "
                              f"are retried")
        if run.next_attempt:
            raise SoonerError(f"run {run.id} was retried already, as run {run.next_attempt}")
        new = self.queue_next_attempt(run, ManualTrigger(source=source, author=by, rerun_of=run.id, source_ref=run.ref), now=now)
        if new is None:
            again = self.store.runs.get(run.id)
            raise SoonerError(f"run {run.id} was retried already, as run {again.next_attempt}" if again.next_attempt
                              else f"run {run.id}: the retry was not started")
        return new

    def retry_many(self, run_ids: Iterable[str], *, by: str, source: str) -> list[BulkResult]:
        """:meth:`retry` each run (ids, JOB#N: what ``store.runs.get`` takes); one result per distinct id, in order,
        never raising for one run's problem (the Failed view's bulk retry)."""
        from sooner.model.failed import BulkResult

        results = []
        for given in dict.fromkeys(run_ids):
            run_id = given
            try:
                run_id = self.store.runs.get(given).id
                new = self.retry(run_id, by=by, source=source)
            except SoonerError as exc:
                results.append(BulkResult(run_id, False, str(exc)))
            else:
                results.append(BulkResult(run_id, True, f"retried as run {new.ref} (attempt {new.attempt})", run=new.id))
        return results

    def release_waiting(self, job: str, *, now: datetime | None = None) -> Run | None:
        """Move the job's oldest waiting run to queued if nothing of the job is queued or running."""
        run = self.store.runs.promote_waiting(job, now=now or self.clock.now())
        if run is not None:
            doorbell.ring(self.store)
        return run

    # -- moving --------------------------------------------------------------
    def move(self, run_id: str, target: str | None, *, by: str, kill: bool = False) -> Moved:
        """Aim a queued or waiting run at ``target`` (a :mod:`sooner.model.target` value); see :mod:`sooner.runs.relocate`.

        With ``kill`` a running run is relocated (:meth:`relocate`). RunError if it finished,
        or is running (or was claimed meanwhile) without ``kill``.
        """
        from sooner.runs.relocate import move_run

        return move_run(self, run_id, target, by=by, kill=kill)

    def relocate(self, run_id: str, target: str | None, *, by: str) -> Run:
        """Kill and relocate: cancel a running run, queue a new attempt of it on ``target``; returns the new run."""
        from sooner.runs.relocate import relocate_run

        return relocate_run(self, run_id, target, by=by)

    def target_warning(self, target: str | None) -> str | None:
        """Why no worker may take a run aimed at ``target`` right now (None when an online worker serves it)."""
        from sooner.runs.relocate import target_warning

        return target_warning(self, target)

    # -- claiming ------------------------------------------------------------
    def claim_candidates(self, worker: str, tags: Iterable[str]) -> list[str]:
        """Ids of queued runs ``worker`` may take now, oldest first (:meth:`take` claims one)."""
        return self.store.runs.claim_candidates(worker, tags, now=self.clock.now())

    def take(self, run_id: str, worker: str, lease_s: float) -> Run | None:
        """Claim this queued run for ``worker`` (running, leased); None if another worker was faster.

        Takes no concurrency limit slots: claims go through :meth:`take_offer` (tests take runs directly).
        """
        return self.store.runs.take(run_id, worker, lease_s, now=self.clock.now(),
                                    outlives_lease_s=self.settings.outlives_lease_s)

    def claim_offers(self, worker: str, tags: Iterable[str]) -> list[dispatch.Candidate]:
        """Queued runs ``worker`` may take now, oldest first, with what dispatch needs (:meth:`take_offer`)."""
        return self.store.runs.claim_offers(worker, tags, now=self.clock.now())

    @property
    def concurrency_limits(self) -> dict[str, int]:
        """The site's fleet-wide limits (``concurrency_limits``, validated when the settings were loaded)."""
        return dispatch.parse_limits(self.settings.concurrency_limits)

    def take_offer(self, offer: dispatch.Candidate, worker: str, lease_s: float,
                   full: Collection[str] = ()) -> Run | None:
        """Claim a candidate for ``worker``, within the concurrency limits it counts against.

        None if another worker was faster; :class:`~sooner.model.dispatch.LimitReached` if a limit
        is full (the run stays queued), without asking the database when its key is in ``full``
        (found full a moment ago). A run without limits costs the one ``take``.
        """
        now = self.clock.now()
        limits = dispatch.limit_keys(offer, self.concurrency_limits)
        slots: list[str] | None = []
        if limits:
            known = next(((key, limit) for key, limit in limits if key in full), None)
            if known is not None:
                raise dispatch.LimitReached(offer, *known)
            slots, key = self.store.limits.acquire(limits, offer.id, now=now)
            if slots is None:
                raise dispatch.LimitReached(offer, str(key), dict(limits)[str(key)])
        run = self.store.runs.take(offer.id, worker, lease_s, now=now, slots=slots,
                                   outlives_lease_s=self.settings.outlives_lease_s)
        if run is None and slots:
            self.store.limits.release(slots, offer.id)
        return run

    def take_offers(self, offers: Sequence[dispatch.Candidate], worker: str, lease_s: float,
                    full: set[str]) -> list[Run | dispatch.LimitReached | None]:
        """Claim several candidates for ``worker``; for each offer, in order: its Run, None (another
        worker was faster) or the LimitReached that keeps it queued (its key is added to ``full``).

        Those that count against no concurrency limit are claimed together, in one update and one
        read (:meth:`sooner.store.runs.RunRepo.take_many`); the others one by one (:meth:`take_offer`).
        """
        limits = self.concurrency_limits
        free = [offer.id for offer in offers if not dispatch.limit_keys(offer, limits)]
        taken = {run.id: run for run in self.store.runs.take_many(free, worker, lease_s, now=self.clock.now(),
                                                                  outlives_lease_s=self.settings.outlives_lease_s)}
        unlimited = set(free)
        results: list[Run | dispatch.LimitReached | None] = []
        for offer in offers:
            if offer.id in unlimited:
                results.append(taken.get(offer.id))
                continue
            try:
                results.append(self.take_offer(offer, worker, lease_s, full))
            except dispatch.LimitReached as exc:
                full.add(exc.key)
                results.append(exc)
        return results

    def claim(self, worker: str, tags: Iterable[str], lease_s: float) -> Run | None:
        """Claim the oldest queued run ``worker`` may take now (within the concurrency limits), or None."""
        full: set[str] = set()
        for offer in self.claim_offers(worker, tags):
            try:
                run = self.take_offer(offer, worker, lease_s, full)
            except dispatch.LimitReached as exc:
                full.add(exc.key)
                continue
            if run is not None:
                return run
        return None

    # -- ending ----------------------------------------------------------------
    def finish(self, run_id: str, status: RunStatus, *, exit_code: int | None = None, note: str | None = None,
               started_at: datetime | None = None, now: datetime | None = None,
               facts: JobFacts | None = None, usage: RunUsage | None = None,
               start: dict[str, Any] | None = None) -> Run | None:
        """Record how an active run ended, then run the end-of-run listeners. None if it had ended already.

        ``facts``: what the worker read of the job when the run started, which the listeners
        use instead of reading it again while it is fresh (:mod:`sooner.runs.facts`).
        ``usage`` (what its process tree used: peak memory, CPU seconds) and ``start`` (its start
        record, :meth:`~sooner.store.runs.RunRepo.start_fields`, when the script ended before it was
        stored) are recorded in the same write.
        """
        fields = {**(start or {}), **(usage.fields() if usage is not None else {})}
        return self._end(run_id, status, now=now, exit_code=exit_code, note=note, started_at=started_at, facts=facts,
                         fields=fields or None)

    def cancel(self, run_id: str, *, by: str) -> Run:
        """Cancel a run: a queued or waiting one ends now (listeners run); a running one is flagged for its worker.

        Raises SoonerError if the run has finished already.
        """
        run = self.store.runs.get(run_id)
        if run.status in NOT_STARTED:
            ended = self._end(run.id, RunStatus.CANCELLED, note=f"cancelled by {by} before it started",
                              only_from=NOT_STARTED, fields={"cancelled_by": by})
            if ended is not None:
                return ended
            run = self.store.runs.get(run.id)  # it started meanwhile
        if run.status is RunStatus.RUNNING:
            flagged = self.store.runs.flag_cancel(run.id, by=by)
            if flagged is not None:
                return flagged
            run = self.store.runs.get(run.id)
        raise SoonerError(f"run {run.id} has already finished ({run.status.value})")

    def expire_leases(self, now: datetime | None = None, *, trusted: Callable[[], bool] | None = None) -> list[Run]:
        """End running runs whose lease expired as ``lost`` (retried per their job's policy).

        ``trusted`` is asked once the expired leases are listed; False ends none of them
        (the scheduler's "the database was unreachable meanwhile").
        """
        now = now or self.clock.now()
        lost = []
        expired = self.store.runs.expired_leases(now=now)
        if trusted is not None and expired and not trusted():
            return []
        for run in expired:
            lease = run.lease_until
            note = (f"lost: worker {run.worker!r} stopped renewing its lease "
                    f"(expired {lease:%Y-%m-%d %H:%M:%S} UTC)" if lease else "lost: its lease expired")
            ended = self.finish(run.id, RunStatus.LOST, note=note, now=now)
            if ended is not None:  # None: another scheduler (or the worker) ended it first
                logger.warning("run %s of %s %s", run.id, run.job, note)
                lost.append(ended)
        return lost

    def _end(self, run_id: str, status: RunStatus, *, now: datetime | None = None, exit_code: int | None = None,
             note: str | None = None, started_at: datetime | None = None,
             only_from: frozenset[RunStatus] = ACTIVE, fields: dict[str, Any] | None = None,
             facts: JobFacts | None = None) -> Run | None:
        if status.active:
            raise ValueError(f"a run cannot end as {status.value}")
        now = now or self.clock.now()
        run = self.store.runs.finish(run_id, status, now=now, exit_code=exit_code, note=note, started_at=started_at,
                                     only_from=only_from, fields=fields)
        if run is not None and (slots := run.extra.get("limit_slots")):
            self._release_slots(run.id, slots)
        if run is not None:
            self.listeners.notify(RunEnded(run=run, service=self, now=now, facts=facts))
        return run

    def _release_slots(self, run_id: str, slots: list[str]) -> None:
        # Before the listeners: a retry they queue may need the very slot. A failure is logged only:
        # the end is recorded, and LimitRepo.repair frees a slot whose holder ended.
        try:
            self.store.limits.release(slots, run_id)
        except SoonerError as exc:
            logger.warning("run %s: could not free its concurrency limit slots: %s", run_id, exc)

    # -- events ------------------------------------------------------------------
    def emit(self, name: str, data: Any = None, *, source: dict[str, Any], depth: int = 0,
             now: datetime | None = None, event_id: str | None = None, hooked: list[Job] | None = None) -> dict:
        """Store an event and queue a run of every job hooked to it (see :mod:`sooner.runs.events`).

        ``hooked``: those jobs as read a moment ago (a run's end, :mod:`sooner.runs.facts`); None reads them.
        """
        return emit_event(self, name, data, source=source, depth=depth, now=now or self.clock.now(), hooked=hooked,
                          event_id=event_id)
