"""``/api/v1/runs/{id}/waiting``: why a run that has not started waits, and roughly how long.

Apart from the run's representation on purpose: that one holds only stored fields, so its ETag
answers a poll without computing anything (architecture, "Polling a run"); a wait reason changes
with the workers and the queue, not with the run's document.
"""

from __future__ import annotations

from flask.typing import ResponseReturnValue

from sooner.model.waiting import wait_reasons
from sooner.webapp.context import web_now, web_state
from sooner.webapp.v1 import schemas as s
from sooner.webapp.v1.common import blp

# The reason changes without the run's document changing: never a stored copy.
WAIT_CACHE_CONTROL = "no-store"


@blp.route("/runs/<path:run_id>/waiting")
@blp.response(200, s.RunWaitingSchema)
def run_waiting(run_id: str) -> ResponseReturnValue:
    """Why the run waits (``no_worker``, ``busy``, ``retry_wait``, ``overlap``, ``starting``); null once started."""
    state = web_state()
    run = state.store.runs.get(run_id)
    reason = wait_reasons(state.store.reads, [run], web_now(), state.settings.heartbeat_s).get(run.id)
    body = {"run": run.id, "status": run.status.value, "waiting": reason.to_doc() if reason else None}
    return body, 200, {"Cache-Control": WAIT_CACHE_CONTROL}
