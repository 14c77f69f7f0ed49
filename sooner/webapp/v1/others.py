"""``/api/v1/events``, ``/api/v1/workers`` and ``/api/v1/deploys``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask.typing import ResponseReturnValue

from sooner.model.data import check_run_data
from sooner.model.job_settings import InvalidJobSetting, validate_event_name
from sooner.model.token import ApiAction
from sooner.webapp.context import user_name, web_now, web_runs, web_state, web_store
from sooner.webapp.formatting import iso
from sooner.webapp.v1 import schemas as s
from sooner.webapp.v1.common import allowed, blp, decode_cursor, encode_cursor, refuse


def _time_cursor(query: dict[str, Any]) -> datetime | None:
    text = decode_cursor(query.get("cursor"))
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        raise ValueError("not a cursor from a previous answer's next_cursor") from None


def event_body(event: dict) -> dict[str, Any]:
    return {"id": str(event["_id"]), "name": event["name"], "data": event.get("data"), "source": event.get("source"),
            "depth": event.get("depth"), "t": iso(event.get("t")) or None, "runs": list(event.get("runs") or []),
            "note": event.get("note")}


@blp.route("/events", methods=["POST"])
@blp.arguments(s.EmitSchema)
@blp.response(201, s.EventSchema)
def emit(body: dict[str, Any]) -> ResponseReturnValue:
    """Emit an event: every job hooked to it gets a run (``runs``)."""
    try:
        name = validate_event_name(body["name"], "name")
    except InvalidJobSetting as exc:
        return refuse(422, str(exc), "name")
    jobs = [job.name for job in web_store().jobs.with_hook(name)]
    if (refusal := allowed(ApiAction.RUN, jobs)) is not None:
        return refusal
    data = check_run_data(body.get("data"), "data")  # InvalidData: a 422 naming the part (v1.common)
    event = web_runs().emit(name, data, source={"type": "api", "author": user_name()})
    return event_body(event), 201


@blp.route("/events")
@blp.arguments(s.EventListQuery, location="query")
@blp.response(200, s.EventListSchema)
def list_events(query: dict[str, Any]) -> ResponseReturnValue:
    """Emitted events, newest first (named ``name`` if given); page on with ``cursor``."""
    try:
        before = _time_cursor(query)
    except ValueError as exc:
        return refuse(400, f"cursor: {exc}", "cursor")
    page = web_store().reads.events_page(name=query.get("name"), before_t=before, limit=query["limit"])
    return {"events": [event_body(e) for e in page.items],
            "next_cursor": encode_cursor(iso(page.next_before)) if page.more and page.next_before else None}


@blp.route("/workers")
@blp.response(200, s.WorkerListSchema)
def list_workers() -> ResponseReturnValue:
    """Every worker with its health (online, late, lost, stopped) from its heartbeat."""
    state, now = web_state(), web_now()
    settings = state.settings
    return {"workers": [
        {"name": w.name, "host": w.host, "health": w.health(now, settings.heartbeat_s, settings.lease_s).value,
         "heartbeat_at": iso(w.heartbeat_at) or None, "heartbeat_age_s": w.heartbeat_age(now),
         "capacity": w.capacity, "tags": list(w.tags), "running": list(w.running), "version": w.version,
         "speed": w.speed}
        for w in state.store.workers.list()]}


@blp.route("/deploys")
@blp.arguments(s.PageQuery, location="query")
@blp.response(200, s.DeployListSchema)
def list_deploys(query: dict[str, Any]) -> ResponseReturnValue:
    """Deploys, newest first; page on with ``cursor``."""
    try:
        before = _time_cursor(query)
    except ValueError as exc:
        return refuse(400, f"cursor: {exc}", "cursor")
    page = web_store().reads.deploys_page(before=before, limit=query["limit"])
    return {"deploys": [{"commit": d["commit"], "branch": d.get("branch"), "author": d.get("author"),
                         "message": d.get("message"), "time": iso(d.get("time")) or None,
                         "created": list(d.get("created") or []), "updated": list(d.get("updated") or []),
                         "removed": list(d.get("removed") or [])} for d in page.items],
            "next_cursor": encode_cursor(iso(page.next_before)) if page.more and page.next_before else None}
