"""Moving runs to another worker or tag: :meth:`RunService.move` and :meth:`RunService.relocate`.

* A queued or waiting run is re-aimed by one conditional update on its status, so a worker
  that claims it at the same moment either gets it before (the move fails: "started on
  worker X meanwhile") or after (the move wins and only the new target may take it).
* Kill and relocate, for a running run: its worker is asked to stop the script (the run ends
  ``cancelled``, never retried) and a new attempt with the same data is queued on the new
  target, in the run's attempt chain (:meth:`RunService.queue_next_attempt`, which links it
  atomically, so a retry racing with it cannot start a third copy). The new run's trigger is
  ``relocate`` (its ``source`` is the old run), the old run gets ``relocated_to``, and both get
  a note.

Targets are values of :mod:`sooner.model.target` (``*`` for any worker: None would mean the
job's own setting to :meth:`RunService.queue`, which queues the new attempt). A target no online worker serves is allowed
(the worker may start later) and answered with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sooner.errors import RunError
from sooner.model import RelocateTrigger, Run, RunStatus
from sooner.model.target import ANY_WORKER, WORKER_PREFIX, describe_target, matching
from sooner.model.waiting import eligible

if TYPE_CHECKING:
    from sooner.runs.service import RunService

KILL_HINT = 'kill and relocate it instead (--kill; in the API "kill": true)'


@dataclass(frozen=True)
class Moved:
    """What a move did: ``run`` now waits for the new target (the moved run, or the new attempt)."""

    run: Run
    # Kill and relocate: the running run that was cancelled for ``run``.
    relocated_from: Run | None = None
    # Set when no online worker serves the target: the run waits until one does.
    warning: str | None = None


def move_run(service: RunService, run_id: str, target: str | None, *, by: str, kill: bool = False) -> Moved:
    """Aim a queued or waiting run at ``target``; with ``kill``, relocate it if it is running.

    RunError if it finished, or is running (or was claimed meanwhile) and ``kill`` is false.
    """
    from sooner.runs.service import NOT_STARTED

    store = service.store
    run = store.runs.get(run_id)
    where = describe_target(target)
    if run.status in NOT_STARTED:
        note = f"moved from {describe_target(run.target)} to {where} by {by}"
        moved = store.runs.retarget(run.id, target, only_from=NOT_STARTED, note=note)
        if moved is not None:
            return Moved(moved, warning=target_warning(service, target))
        run = store.runs.get(run.id)
        if run.status is RunStatus.RUNNING and not kill:
            raise RunError(f"run {run.id} started on worker {run.worker} meanwhile; it was not moved. "
                           f"To stop it there and run it on {where}, {KILL_HINT}")
    if run.status is RunStatus.RUNNING:
        if not kill:
            raise RunError(f"run {run.id} is running on worker {run.worker}; to stop it there and run it on "
                           f"{where}, {KILL_HINT}")
        new = relocate_run(service, run.id, target, by=by)
        return Moved(new, relocated_from=store.runs.get(run.id), warning=target_warning(service, target))
    raise RunError(f"run {run.id} has already finished ({run.status.value}); there is nothing to move")


def relocate_run(service: RunService, run_id: str, target: str | None, *, by: str) -> Run:
    """Cancel a running run and queue a new attempt of it (same data) on ``target``; returns the new run.

    RunError if the run is not running, ended meanwhile, or its job was removed.
    """
    store = service.store
    run = store.runs.get(run_id)
    where = describe_target(target)
    if run.status is not RunStatus.RUNNING:
        raise RunError(f"run {run.id} is {run.status.value}, not running: "
                       + ("move it instead; nothing needs to be killed" if run.active else "there is nothing to relocate"))
    if store.jobs.get(run.job).deleted:  # checked before the kill: queueing would refuse it afterwards
        raise RunError(f"job {run.job!r} was removed from the repository; run {run.id} cannot run elsewhere")
    if store.runs.flag_cancel(run.id, by=f"{by} (relocated to {where})") is None:
        ended = store.runs.get(run.id)
        raise RunError(f"run {run.id} ended meanwhile ({ended.status.value}); there is nothing to relocate")
    trigger = RelocateTrigger(source=run.id, source_ref=run.ref, author=by, from_worker=run.worker)
    new = service.queue_next_attempt(replace(run, target=target), trigger)
    if new is None:
        again = store.runs.get(run.id)
        raise RunError(f"run {run.id} is being stopped, but no new attempt was queued"
                       + (f": it has one already, run {again.next_attempt}" if again.next_attempt else ""))
    store.runs.mark_relocated(run.id, new.id, note=f"relocating: cancelled by {by}, continues as run {new.ref} on {where}")
    store.runs.add_note(new.id, f"relocated from run {run.ref} on worker {run.worker} by {by}")
    return store.runs.get(new.id)


def target_warning(service: RunService, target: str | None) -> str | None:
    """Why no worker may take a run aimed at ``target`` right now; None when an online worker serves it."""
    workers = service.store.workers.list()
    if eligible(workers, target, service.clock.now(), service.settings.heartbeat_s):  # the wait rule's check
        return None
    serving = [w for w in workers if w.serves(target)]
    name = target[len(WORKER_PREFIX):] if target and target.startswith(WORKER_PREFIX) else "NAME"
    named = target not in (None, ANY_WORKER)
    unknown = " (none is known yet; it may come online later)" if named and not serving else ""
    return f"no worker {matching(target)}is online{unknown}; the run waits until one starts (`sooner worker -n {name}`)"
