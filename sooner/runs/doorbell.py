"""A doorbell inside one process: queueing a run wakes the process's idle workers at once.

A worker looks for queued runs every ``POLL_S`` (25 ms) when idle, so a run
waited half of that on average before a worker even saw it. Under ``sooner up``
the web server, the scheduler and the local worker share one process, so runs
started from the UI, the API, webhooks, signed URLs, events and cron ticks can
ring the worker directly; workers elsewhere still find them by polling. A ring
only wakes a worker to look: claiming stays the atomic update it always was,
and a ring that finds nothing costs one query.
"""

from __future__ import annotations

import threading
import weakref

_listeners: weakref.WeakSet[threading.Event] = weakref.WeakSet()
_lock = threading.Lock()


def listen(event: threading.Event) -> None:
    """Set ``event`` whenever this process queues a run (held weakly: a dropped event stops listening)."""
    with _lock:
        _listeners.add(event)


def ring() -> None:
    """A run was queued: wake the listeners."""
    with _lock:
        events = list(_listeners)
    for event in events:
        event.set()
