"""``/api/v1/queues``: list queues, browse a queue's entries as the Queues page does, put, get, patch, delete.

Browsing takes the Queues page's own query parameters (``status``, ``f``/``op``/``v``, ``q``, ``sort``/``dir``,
``page``/``per``) and hands them to the page's parser (:func:`sooner.store.queue_filters.parse_view`):
one owner of the rules, whitelisted fields and operators only, so nothing typed becomes a MongoDB operator.
Entry ids in URLs are the page's tokens (:func:`sooner.webapp.queues.encode_id`: an ObjectId's hex,
``s:<text>``, ``i:<integer>``). Reading needs a signed-in user or any token; changing entries needs the
admin role and a token of scope ``admin`` (as the page's bulk actions need the admin role).
"""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import request, url_for
from flask.typing import ResponseReturnValue
from marshmallow import fields as mf
from marshmallow import validate as mv
from werkzeug.exceptions import HTTPException

from sooner.model.data import InvalidData, check_data
from sooner.model.token import ApiAction
from sooner.store.queue_filters import MAX_ROWS, OPERATORS, PAGE_SIZES, QueueFilterError, parse_view
from sooner.store.queues import InvalidEntryStatus, InvalidQueueName, Queue, QueueQueryTimeout, validate_entry_status
from sooner.webapp.context import web_store
from sooner.webapp.formatting import iso
from sooner.webapp.queues import decode_id, encode_id, fetch_rows, jsonable, open_queue, prepare_sort, shape_of
from sooner.webapp.v1.common import allowed, blp, refuse
from sooner.webapp.v1.schemas import StrictSchema

_TIME = {"format": "date-time", "description": "ISO 8601, UTC"}
_ID = {"description": "the entry's id as the Queues page writes it: an ObjectId's hex, s:<text> or i:<integer>"}


# -- schemas -------------------------------------------------------------------------------------------------------

class QueueSchema(ma.Schema):
    name = mf.String(required=True)
    browsable = mf.Boolean(required=True, metadata={"description": "false: a collection name Sooner cannot open"})
    size = mf.Integer(allow_none=True, metadata={"description": "entries: counted when small, else an estimate"})
    exact = mf.Boolean(required=True, metadata={"description": "whether size is a count (false: an estimate)"})


class QueueListSchema(ma.Schema):
    queues = mf.List(mf.Nested(QueueSchema), required=True)


class EntrySchema(ma.Schema):
    id = mf.String(allow_none=True, metadata=_ID)
    status = mf.Raw(allow_none=True)
    data = mf.Raw(allow_none=True, metadata={"description": "any JSON"})
    createdAt = mf.String(allow_none=True, metadata=_TIME)
    updatedAt = mf.String(allow_none=True, metadata=_TIME)


class ColumnSchema(ma.Schema):
    field = mf.String(required=True)
    kind = mf.String(required=True)


class EntryPageSchema(ma.Schema):
    queue = mf.String(required=True)
    size = mf.Integer(required=True)
    exact = mf.Boolean(required=True)
    page = mf.Integer(required=True)
    per = mf.Integer(required=True)
    has_next = mf.Boolean(required=True)
    columns = mf.List(mf.Nested(ColumnSchema), required=True,
                      metadata={"description": "data keys of the newest entries, usable in f and sort"})
    notices = mf.List(mf.String(), required=True)
    entries = mf.List(mf.Nested(EntrySchema), required=True)


class EntryQuery(ma.Schema):
    """The Queues page's parameters; anything else is refused (400)."""

    status = mf.List(mf.String(validate=mv.Length(max=64)), metadata={"description": "any of these statuses"})
    field = mf.List(mf.String(validate=mv.Length(max=70)), data_key="f",
                    metadata={"description": "filter fields: status, createdAt, updatedAt, _id, data, data.<key>"})
    op = mf.List(mf.String(validate=mv.OneOf(list(OPERATORS))), metadata={"description": "one per f"})
    value = mf.List(mf.String(validate=mv.Length(max=200)), data_key="v", metadata={"description": "one per f"})
    q = mf.String(validate=mv.Length(max=100), metadata={"description": "case-insensitive text search"})
    sort = mf.String(validate=mv.Length(max=70), metadata={"description": "a field (default createdAt)"})
    dir = mf.String(validate=mv.OneOf(["asc", "desc"]))
    page = mf.Integer(validate=mv.Range(1, MAX_ROWS // min(PAGE_SIZES)))
    per = mf.Integer(validate=mv.OneOf(list(PAGE_SIZES)))


class EntryPutSchema(StrictSchema):
    data = mf.Raw(required=True, allow_none=True, metadata={"description": "any JSON (at most 256 KiB)"})
    status = mf.String(validate=mv.Length(min=1, max=64), metadata={"description": "default: pending"})


class EntryPatchSchema(StrictSchema):
    """Only the fields given change; ``data`` replaces the entry's data."""

    data = mf.Raw(allow_none=False, metadata={"description": "any JSON but null (at most 256 KiB)"})
    status = mf.String(validate=mv.Length(min=1, max=64))


# -- views ---------------------------------------------------------------------------------------------------------

def entry_body(entry: dict) -> dict[str, Any]:
    return {"id": encode_id(entry.get("_id")), "status": jsonable(entry.get("status")),
            "data": jsonable(entry.get("data")), "createdAt": iso(entry.get("createdAt")) or None,
            "updatedAt": iso(entry.get("updatedAt")) or None}


@blp.route("/queues")
@blp.response(200, QueueListSchema)
def list_queues() -> ResponseReturnValue:
    """Every queue with its size as the Queues page shows it (exact when small, else an estimate)."""
    store = web_store()
    queues = []
    for name in store.queues.names():
        try:
            size, exact = store.queues(name).size()
        except InvalidQueueName:
            queues.append({"name": name, "browsable": False, "size": None, "exact": False})
            continue
        queues.append({"name": name, "browsable": True, "size": size, "exact": exact})
    return {"queues": queues}


@blp.route("/queues/<name>/entries")
@blp.arguments(EntryQuery, location="query")
@blp.response(200, EntryPageSchema)
def list_entries(query: dict[str, Any], name: str) -> ResponseReturnValue:
    """Entries as the Queues page selects them: filters, search, sort and pages (the page's parameters)."""
    queue = open_queue(name)
    columns, _, statuses = shape_of(queue)
    try:
        view = parse_view(request.args, columns, statuses)
    except QueueFilterError as exc:
        return refuse(400, str(exc), "query")
    notices = prepare_sort(queue, view, columns)
    try:
        rows, notes = fetch_rows(queue, view)
    except QueueQueryTimeout as exc:
        return refuse(503, str(exc))
    size, exact = queue.size()
    return {"queue": queue.name, "size": size, "exact": exact, "page": view.page, "per": view.per,
            "has_next": len(rows) > view.per, "notices": notices + notes,
            "columns": [{"field": c.field, "kind": c.kind} for c in columns if c.usable],
            "entries": [entry_body(e) for e in rows[:view.per]]}


@blp.route("/queues/<name>/entries", methods=["POST"])
@blp.arguments(EntryPutSchema)
@blp.response(201, EntrySchema, headers={"Location": {"description": "the new entry", "schema": {"type": "string"}}})
def put_entry(body: dict[str, Any], name: str) -> ResponseReturnValue:
    """Add an entry (a queue that does not exist yet is made by its first entry)."""
    if (refusal := allowed(ApiAction.ADMIN)) is not None:
        return refusal
    try:
        queue = web_store().queues(name)
    except InvalidQueueName as exc:
        return refuse(404, str(exc))
    try:
        data, status = _checked(body)
    except (InvalidEntryStatus, InvalidData) as exc:
        return refuse(422, str(exc), "status" if isinstance(exc, InvalidEntryStatus) else "data")
    entry = queue.put(data, **({"status": status} if status is not None else {}))
    location = url_for("v1.get_entry", name=queue.name, entry_id=encode_id(entry["_id"]))
    return entry_body(entry), 201, {"Location": location}


@blp.route("/queues/<name>/entries/<path:entry_id>")
@blp.response(200, EntrySchema)
def get_entry(name: str, entry_id: str) -> ResponseReturnValue:
    """One entry, whole."""
    queue, key = _entry_key(name, entry_id)
    entry = queue.get_exact(key)
    return entry_body(entry) if entry is not None else _no_entry(queue, entry_id)


@blp.route("/queues/<name>/entries/<path:entry_id>", methods=["PATCH"])
@blp.arguments(EntryPatchSchema)
@blp.response(200, EntrySchema)
def patch_entry(body: dict[str, Any], name: str, entry_id: str) -> ResponseReturnValue:
    """Set the entry's status and/or replace its data."""
    if (refusal := allowed(ApiAction.ADMIN)) is not None:
        return refusal
    queue, key = _entry_key(name, entry_id)
    if not body:
        return refuse(400, "nothing to change: give status and/or data", "body")
    try:
        data, status = _checked(body)
    except (InvalidEntryStatus, InvalidData) as exc:
        return refuse(422, str(exc), "status" if isinstance(exc, InvalidEntryStatus) else "data")
    entry = queue.update(key, status=status, data=data, exact=True)
    return entry_body(entry) if entry is not None else _no_entry(queue, entry_id)


@blp.route("/queues/<name>/entries/<path:entry_id>", methods=["DELETE"])
@blp.response(204)
def delete_entry(name: str, entry_id: str) -> ResponseReturnValue:
    """Delete the entry."""
    if (refusal := allowed(ApiAction.ADMIN)) is not None:
        return refusal
    queue, key = _entry_key(name, entry_id)
    if not queue.delete_many([key]):
        return _no_entry(queue, entry_id)
    return "", 204


def _checked(body: dict[str, Any]) -> tuple[Any, str | None]:
    """The body's data and status as the store may keep them; InvalidEntryStatus or InvalidData otherwise."""
    status = body.get("status")
    if status is not None:
        validate_entry_status(status)
    return (check_data(body["data"], "data") if "data" in body else None), status


def _entry_key(name: str, entry_id: str) -> tuple[Queue, Any]:
    queue = open_queue(name)
    try:
        return queue, decode_id(entry_id)
    except HTTPException as exc:
        exc.data = {"messages": {"entry_id": [exc.description or "not an entry id"]}}  # type: ignore[attr-defined]
        raise


def _no_entry(queue: Queue, entry_id: str) -> ResponseReturnValue:
    return refuse(404, f"queue {queue.name!r} has no entry {entry_id[:80]!r}")
