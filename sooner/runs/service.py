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
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sooner.errors import SoonerError
from sooner.model import ACTIVE, Job, Overlap, Run, RunStatus, Trigger
from sooner.runs.events import emit_event
from sooner.runs.listeners import LISTENERS, ListenerRegistry, RunEnded

if TYPE_CHECKING:
    from sooner.clock import Clock
    from sooner.config import Settings
    from sooner.store import Store

logger = logging.getLogger(__name__)

NOT_STARTED = frozenset({RunStatus.QUEUED, RunStatus.WAITING})


class RunService:
    """Starts, claims, cancels and ends runs for one store; see the module docstring."""

    def __init__(self, store: Store, settings: Settings | None = None, clock: Clock | None = None, *,
                 listeners: ListenerRegistry | None = None) -> None:
        from sooner.config import Settings

        self.store = store
        self.settings = settings or Settings()
        self.clock = clock or store.clock
        self.listeners = LISTENERS if listeners is None else listeners

    @property
    def depth_limit(self) -> int:
        return self.settings.chain_depth_limit

    # -- starting ------------------------------------------------------------
    def queue(self, job: Job | str, trigger: Trigger, *, data: Any = None, target: str | None = None,
              depth: int = 0, attempt: int = 1, overlap_check: bool = False, not_before: datetime | None = None,
              now: datetime | None = None) -> Run | None:
        """Create a run of ``job`` at the currently deployed commit.

        With ``overlap_check`` (scheduler and event triggers) the job's overlap
        policy applies: ``skip`` returns None while a run is active, ``queue``
        inserts a ``waiting`` run. Returns None too for a cron tick fired already.
        """
        job = self.store.jobs.get(job) if isinstance(job, str) else job
        if job.deleted:
            raise SoonerError(f"job {job.name!r} was removed from the repository; it cannot run")
        now = now or self.clock.now()
        status = RunStatus.QUEUED
        if overlap_check and job.overlap is not Overlap.ALLOW and self.store.runs.active_count(job.name):
            if job.overlap is Overlap.SKIP:
                logger.info("not starting %s: a run is still active (overlap=skip)", job.name)
                return None
            status = RunStatus.WAITING
        deploy = self.store.deploys.latest()
        run = self.store.runs.insert(Run(
            id=self.store.runs.new_id(), job=job.name, status=status, trigger=trigger, data=data,
            commit=deploy["commit"] if deploy else None, target=target if target is not None else job.worker,
            attempt=attempt, depth=depth, timeout_s=job.timeout_s, queued_at=now, not_before=not_before or now))
        if run is not None and status is RunStatus.WAITING:
            self.release_waiting(job.name, now=now)  # the active run may have ended between check and insert
        return run

    def release_waiting(self, job: str, *, now: datetime | None = None) -> Run | None:
        """Move the job's oldest waiting run to queued if nothing of the job is queued or running."""
        return self.store.runs.promote_waiting(job, now=now or self.clock.now())

    # -- claiming ------------------------------------------------------------
    def claim_candidates(self, worker: str, tags: Iterable[str]) -> list[str]:
        """Ids of queued runs ``worker`` may take now, oldest first (:meth:`take` claims one)."""
        return self.store.runs.claim_candidates(worker, tags, now=self.clock.now())

    def take(self, run_id: str, worker: str, lease_s: float) -> Run | None:
        """Claim this queued run for ``worker`` (running, leased); None if another worker was faster."""
        return self.store.runs.take(run_id, worker, lease_s, now=self.clock.now())

    def claim(self, worker: str, tags: Iterable[str], lease_s: float) -> Run | None:
        """Claim the oldest queued run ``worker`` may take now, or None."""
        for run_id in self.claim_candidates(worker, tags):
            run = self.take(run_id, worker, lease_s)
            if run is not None:
                return run
        return None

    # -- ending ----------------------------------------------------------------
    def finish(self, run_id: str, status: RunStatus, *, exit_code: int | None = None, note: str | None = None,
               started_at: datetime | None = None, now: datetime | None = None) -> Run | None:
        """Record how an active run ended, then run the end-of-run listeners. None if it had ended already."""
        return self._end(run_id, status, now=now, exit_code=exit_code, note=note, started_at=started_at)

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

    def expire_leases(self, now: datetime | None = None) -> list[Run]:
        """End running runs whose lease expired as ``lost`` (retried per their job's policy)."""
        now = now or self.clock.now()
        lost = []
        for run in self.store.runs.expired_leases(now=now):
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
             only_from: frozenset[RunStatus] = ACTIVE, fields: dict[str, Any] | None = None) -> Run | None:
        if status.active:
            raise ValueError(f"a run cannot end as {status.value}")
        now = now or self.clock.now()
        run = self.store.runs.finish(run_id, status, now=now, exit_code=exit_code, note=note, started_at=started_at,
                                     only_from=only_from, fields=fields)
        if run is not None:
            self.listeners.notify(RunEnded(run=run, service=self, now=now))
        return run

    # -- events ------------------------------------------------------------------
    def emit(self, name: str, data: Any = None, *, source: dict[str, Any], depth: int = 0,
             now: datetime | None = None) -> dict:
        """Store an event and queue a run of every job hooked to it (see :mod:`sooner.runs.events`)."""
        return emit_event(self, name, data, source=source, depth=depth, now=now or self.clock.now())
