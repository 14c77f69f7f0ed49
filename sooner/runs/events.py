"""Events: emitted by scripts, the CLI/API or Sooner itself; they start hooked jobs.

Every emit is stored. Each enabled job with an event trigger that matches
the name (its ``hooks``, see :class:`sooner.scheduling.triggers.EventHooks`)
gets a run whose ``data`` is the event's data and whose trigger names the
event and its source. ``depth`` counts how many events led here; past the
limit no runs start and the event carries a note saying so, which stops
cycles (A → B → A …) without losing the record of what happened.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sooner.model.job_settings import validate_event_name
from sooner.scheduling.triggers import TRIGGERS

if TYPE_CHECKING:
    from sooner.model import Job
    from sooner.runs.service import RunService

logger = logging.getLogger(__name__)


def emit_event(service: RunService, name: str, data: Any = None, *, source: dict[str, Any], depth: int,
               now: datetime, event_id: str | None = None, hooked: list[Job] | None = None) -> dict:
    """Store the event and queue a run of every job hooked to it. Returns the event (with ``runs``).

    With ``event_id`` (an event a worker journaled during an outage) an event
    stored under that id already is returned as it is: its runs were started
    when it was first stored. ``hooked`` are the jobs hooked to ``name`` as the caller read them
    a moment ago (enabled, not deleted); None reads them.
    """
    validate_event_name(name)
    store = service.store
    event = store.events.record(name, data, source=source, depth=depth, now=now, event_id=event_id)
    if event.get("replayed"):
        return event
    jobs = store.jobs.with_hook(name) if hooked is None else hooked
    hooks = [(job, trigger) for job in jobs for trigger in TRIGGERS.event_triggers(job) if trigger.matches(name)]
    if not hooks:
        return event
    limit = service.depth_limit
    if depth > limit:
        note = (f"chain depth limit ({limit}) reached: {len(hooks)} hooked job(s) not started "
                f"({', '.join(job.name for job, _ in hooks)}); is there a cycle of events?")
        logger.warning("event %s: %s", name, note)
        store.events.attach_runs(event["_id"], [], note)
        if source.get("run"):
            store.runs.add_note(source["run"], f"event {name!r}: {note}")
        event["note"] = note
        return event
    run_ids = []
    for job, trigger in hooks:
        run = service.queue(job, trigger.cause(event), data=data, depth=depth, overlap_check=True, now=now)
        if run:
            run_ids.append(run.id)
    store.events.attach_runs(event["_id"], run_ids)
    event["runs"] = run_ids
    return event
