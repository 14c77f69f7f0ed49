"""Events: emitted by scripts, the CLI/API or Sooner itself; they start hooked jobs.

Every emit is stored. Each enabled job whose ``hooks`` contain the event name
gets a run whose ``data`` is the event's data and whose trigger names the
event and its source. ``depth`` counts how many events led here; past the
limit no runs start and the event carries a note saying so, which stops
cycles (A → B → A …) without losing the record of what happened.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sooner.jobs import validate_event_name

if TYPE_CHECKING:
    from sooner.store import Store

logger = logging.getLogger(__name__)


def emit(store: Store, name: str, data: Any = None, *, source: dict[str, Any], depth: int = 0,
         depth_limit: int = 10) -> dict:
    """Store the event and queue a run of every job hooked to it. Returns the event (with ``runs``)."""
    validate_event_name(name)
    event = store.events.record(name, data, source=source, depth=depth)
    jobs = store.jobs.with_hook(name)
    if not jobs:
        return event
    if depth > depth_limit:
        note = (f"chain depth limit ({depth_limit}) reached: {len(jobs)} hooked job(s) not started "
                f"({', '.join(j['_id'] for j in jobs)}); is there a cycle of events?")
        logger.warning("event %s: %s", name, note)
        store.events.attach_runs(event["_id"], [], note)
        if source.get("run"):
            store.runs.add_note(source["run"], f"event {name!r}: {note}")
        event["note"] = note
        return event
    from sooner.runs import queue_run

    run_ids = []
    for job in jobs:
        trigger = {"type": "event", "event": name, "event_id": event["_id"], "source": source.get("run"),
                   "source_job": source.get("job"), "author": source.get("author")}
        run = queue_run(store, job, trigger, data=data, depth=depth, overlap_check=True)
        if run:
            run_ids.append(run["_id"])
    store.events.attach_runs(event["_id"], run_ids)
    event["runs"] = run_ids
    return event
