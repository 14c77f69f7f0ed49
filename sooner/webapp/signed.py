"""Signed trigger URLs: ``GET /t/<token>[?wait=N]`` queues a run of the signed job with the signed data.

The token is the signature (:mod:`sooner.model.signed_url`), so the route needs
no session; it is rate limited per job. Answers:

- without ``wait`` (or when the run has not ended after ``wait`` seconds, at most 60):
  ``202 {run, url, status}``;
- with ``wait`` and a run that ended: ``200``, the JSON ``{run, status, event: {name, data}}`` of the
  last event the run emitted, or else its output's last 64 KiB as text (headers ``X-Sooner-Run``,
  ``X-Sooner-Status``);
- ``403`` tampered with or expired, ``400`` a bad ``wait``, ``404`` the job is gone, ``429`` too many.
"""

from __future__ import annotations

import threading
import time

from flask import Blueprint, Response, jsonify, request, url_for
from flask.typing import ResponseReturnValue

from sooner.model import FINISHED, Run
from sooner.model.signed_url import InvalidSignedUrl, signing_key, verify, wait_seconds
from sooner.model.trigger import SignedUrlTrigger
from sooner.webapp.auth import retry_after
from sooner.webapp.context import json_error, web_now, web_runs, web_state, web_store
from sooner.webapp.rate import RateLimit

bp = Blueprint("signed", __name__)

OUTPUT_BYTES = 64 * 1024
POLL_S = 0.1
EVENT_PAGES = 10  # pages of a run's events read to find its last emitted one


def signed_limit() -> RateLimit:
    """The app's per-job budget of signed-URL runs (20 at once, then one every 2 s)."""
    state = web_state()
    limit = state.extra.get("signed_rate")
    if limit is None:
        limit = state.extra["signed_rate"] = RateLimit(state.store.clock, burst=20, per_s=0.5)
    return limit


@bp.get("/t/<token>")
def trigger(token: str) -> ResponseReturnValue:
    """Queue the signed run; with ``?wait=N`` wait for its end (see the module docstring)."""
    settings = web_state().settings
    try:
        wait = wait_seconds(request.args.get("wait"))
    except InvalidSignedUrl as exc:
        return json_error(400, str(exc))
    try:
        signed = verify(signing_key(settings.secret_key or ""), token, web_now())
    except InvalidSignedUrl as exc:
        return json_error(403, str(exc))
    pause = signed_limit().take(signed.job)
    if pause:
        response = json_error(429, f"too many runs of {signed.job!r} from signed URLs: try again later")
        response.headers["Retry-After"] = retry_after(pause)
        return response
    job = web_store().jobs.find(signed.job)
    if job is None or job.deleted:
        return json_error(404, f"job {signed.job!r} does not exist (any more)")
    run = web_runs().queue(job, SignedUrlTrigger(expires_at=signed.expires_at), data=signed.data)
    if run is None:
        return json_error(409, f"job {signed.job!r} started no run")
    ended = _wait_for_end(run.id, wait) if wait else None
    if ended is None:
        response = jsonify({"run": run.id, "url": url_for("runs.detail", run_id=run.id, _external=True),
                            "status": (web_store().runs.find(run.id) or run).status.value})
        response.status_code = 202
        return response
    return _result(ended)


def _wait_for_end(run_id: str, wait_s: float) -> Run | None:
    """The run once it ended, polling the store until ``wait_s`` real seconds passed; None if it did not end."""
    deadline = time.monotonic() + wait_s
    pause = threading.Event()
    while True:
        run = web_store().runs.find(run_id)
        if run is not None and run.status in FINISHED:
            return run
        if time.monotonic() >= deadline:
            return None
        pause.wait(min(POLL_S, max(0.0, deadline - time.monotonic())))


def _result(run: Run) -> ResponseReturnValue:
    event = _last_emitted(run)
    if event is not None:
        return jsonify({"run": run.id, "status": run.status.value,
                        "event": {"name": event.get("name"), "data": event.get("data")}})
    chunks, _ = web_store().reads.output_tail(run.id, max_bytes=OUTPUT_BYTES)
    text = "".join(chunk.get("text", "") for chunk in chunks if chunk.get("stream") != "system")
    response = Response(text[-OUTPUT_BYTES:], mimetype="text/plain")
    response.headers["X-Sooner-Run"] = run.id
    response.headers["X-Sooner-Status"] = run.status.value
    response.headers["Cache-Control"] = "no-store"
    return response


def _last_emitted(run: Run) -> dict | None:
    """The last event the run's script emitted (not the end-of-run events the service emits for it)."""
    last, offset = None, 0
    for _ in range(EVENT_PAGES):
        page = web_store().reads.emitted_events(run.id, offset=offset)
        for event in page.events:
            if (event.get("source") or {}).get("type") != "system":  # emit_outcome's events are "system"
                last = event
        if not page.more:
            break
        offset = page.next_offset
    return last
