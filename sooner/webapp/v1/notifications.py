"""``/api/v1/runs/{id}/notifications``: whom a run's end notified, and how each delivery went.

Targets are shown as their labels (:func:`sooner.model.notify.target_label`): an apprise URL may hold
a token or a password, which is never shown.
"""

from __future__ import annotations

from flask.typing import ResponseReturnValue

from sooner.webapp.context import web_store
from sooner.webapp.formatting import iso
from sooner.webapp.v1 import schemas as s
from sooner.webapp.v1.common import blp

# A retry or a send changes the answer without the run's document changing: never a stored copy.
NOTIFICATIONS_CACHE_CONTROL = "no-store"
_TIMES = ("created_at", "sent_at", "next_attempt_at")


@blp.route("/runs/<path:run_id>/notifications")
@blp.response(200, s.RunNotificationsSchema)
def run_notifications(run_id: str) -> ResponseReturnValue:
    """The run's notifications, oldest first: target, state (pending/sent/failed/suppressed), attempts, error."""
    store = web_store()
    run = store.runs.get(run_id)
    entries = [{**shown, **{key: iso(shown[key]) or None for key in _TIMES}}
               for shown in (entry.to_api() for entry in store.notifications.for_run(run.id))]
    body = {"run": run.id, "notifications": entries}
    return body, 200, {"Cache-Control": NOTIFICATIONS_CACHE_CONTROL}
