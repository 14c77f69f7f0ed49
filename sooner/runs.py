"""Starting and ending runs: the rules every trigger and every worker share.

``queue_run`` is the one way a run is created (cron, manual, event, API,
retry); ``end_run`` is the one way a run ends (worker exit, cancel, timeout,
lost lease): it records the result, retries per the job's policy, lets the
next waiting run go, and emits ``job:<name>:succeeded`` / ``job:<name>:failed``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sooner.errors import SoonerError
from sooner.store.jobs import utcnow
from sooner.store.runs import RunStatus

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)


def queue_run(store: Store, job: dict | str, trigger: dict[str, Any], *, data: Any = None,
              target: str | None = None, depth: int = 0, attempt: int = 1, overlap_check: bool = False,
              not_before: datetime | None = None, now: datetime | None = None) -> dict | None:
    """Create a run of ``job`` at the currently deployed commit.

    With ``overlap_check`` (scheduler and event triggers) the job's overlap
    policy applies: ``skip`` returns None while a run is active, ``queue``
    inserts a ``waiting`` run. Returns None too for a cron tick fired already.
    """
    if isinstance(job, str):
        job = store.jobs.get(job)
    if job.get("deleted"):
        raise SoonerError(f"job {job['_id']!r} was removed from the repository; it cannot run")
    status = RunStatus.QUEUED
    if overlap_check and job.get("overlap", "skip") != "allow" and store.runs.active_count(job["_id"]):
        if job.get("overlap", "skip") == "skip":
            logger.info("not starting %s: a run is still active (overlap=skip)", job["_id"])
            return None
        status = RunStatus.WAITING
    deploy = store.deploys.latest()
    run = store.runs.enqueue(job, trigger, data=data, target=target, commit=deploy["commit"] if deploy else None,
                             depth=depth, attempt=attempt, status=status, not_before=not_before, now=now)
    if run is not None and status is RunStatus.WAITING:
        # The active run may have ended between the check and the insert.
        store.runs.promote_waiting(job["_id"])
    return run


def end_run(store: Store, run_id: str, status: RunStatus, *, exit_code: int | None = None,
            note: str | None = None, depth_limit: int = 10, now: datetime | None = None,
            started_at: datetime | None = None) -> dict | None:
    """Record how a run ended and apply what follows from it. Returns the run, or None if it had ended."""
    run = store.runs.finish(run_id, status, exit_code=exit_code, note=note, now=now, started_at=started_at)
    if run is None:
        return None
    if status in (RunStatus.FAILED, RunStatus.LOST, RunStatus.TIMED_OUT):
        job = store.jobs.find(run["job"])
        if job:
            _maybe_retry(store, job, run, now)
    store.runs.promote_waiting(run["job"])
    if status in (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.TIMED_OUT):
        from sooner.events import emit

        outcome = "succeeded" if status is RunStatus.SUCCEEDED else "failed"
        emit(store, f"job:{run['job']}:{outcome}", {"run": run["_id"], "job": run["job"], "status": status.value,
                                                    "exit_code": exit_code, "data": run.get("data")},
             source={"type": "system", "run": run["_id"], "job": run["job"]},
             depth=run.get("depth", 0) + 1, depth_limit=depth_limit)
    return run


def _maybe_retry(store: Store, job: dict, run: dict, now: datetime | None) -> None:
    policy = job.get("retry") or {}
    attempts = int(policy.get("attempts", 0))
    if run.get("attempt", 1) > attempts:
        return
    delay = float(policy.get("delay_s", 30)) * (2 ** (run.get("attempt", 1) - 1))
    retry = queue_run(store, job, {"type": "retry", "source": run["_id"], "previous_status": run["status"]},
                      data=run.get("data"), target=run.get("target"), depth=run.get("depth", 0),
                      attempt=run.get("attempt", 1) + 1,
                      not_before=(now or utcnow()) + timedelta(seconds=min(delay, 3600)))
    if retry:
        retrying = (f"retrying as run {retry['_id']} (attempt {retry['attempt']} of {attempts + 1}) "
                    f"in {min(delay, 3600):.0f}s")
        # Keep why the run ended (lost lease, timeout …) in front of the retry notice.
        store.runs.add_note(run["_id"], f"{run['note']}; {retrying}" if run.get("note") else retrying)
